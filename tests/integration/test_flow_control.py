"""
Flow control through a real Kiwi: pull credits and buffers, lag notices,
and clients that stop reading.
"""

from __future__ import annotations

import base64
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.integration.base import IntegrationTestCase
from tests.integration.rawclient import StalledClient


def _payloads(results: list[dict[str, object]]) -> list[bytes]:
    return [base64.b64decode(str(r["payload"])) for r in results]


class PullModeTests(IntegrationTestCase):
    """
    Pull subscriptions: credit, buffer and lag notices.
    """

    async def _setup(self, **subscriber: object) -> tuple[str, object, object]:
        topic = await self.create_topic()
        config = self.kafka_config(topic)
        config["subscriber"] = subscriber
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state(topic, "running")
        client = await self.connect(kiwi)
        await client.subscribe(topic, mode="pull")
        return topic, kiwi, client

    async def _records_seen(self, kiwi: object, topic: str, count: int) -> None:
        async def seen() -> None:
            pass

        from tests.integration.polling import wait_until

        last = {}

        async def check() -> bool:
            nonlocal last
            last = await kiwi.health()  # type: ignore[attr-defined]
            return bool(last["sources"][topic]["records"] >= count)

        import time

        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        deadline = time.monotonic() + 30
        while not await check():
            assert time.monotonic() < deadline, last
            await deferLater(reactor, 0.05, lambda: None)

    async def test_request_deliversBufferedAtOnce(self) -> None:
        """
        Events that arrived without credit wait in the buffer and are
        delivered as soon as REQUEST adds credit, with no new source event;
        REQUEST_OK reports the credit left.
        """
        topic, kiwi, client = await self._setup(buffer_capacity=10)
        await self.produce(topic, [(None, f"r{i}".encode(), None) for i in range(5)])
        await self._records_seen(kiwi, topic, 5)
        self.assertEqual(client.results(), [])  # type: ignore[attr-defined]
        reply = await client.command({"type": "REQUEST", "sourceId": topic, "n": 3})  # type: ignore[attr-defined]
        self.assertEqual(reply, {"type": "REQUEST_OK", "sourceId": topic, "requests": 0})
        self.assertEqual(_payloads(client.results(topic)), [b"r0", b"r1", b"r2"])  # type: ignore[attr-defined]
        reply = await client.command({"type": "REQUEST", "sourceId": topic, "n": 5})  # type: ignore[attr-defined]
        self.assertEqual(reply["requests"], 3)
        self.assertEqual(
            _payloads(client.results(topic)), [b"r0", b"r1", b"r2", b"r3", b"r4"]  # type: ignore[attr-defined]
        )
        await self.produce(topic, [(None, b"r5", None)])
        await client.wait_for(lambda: len(client.results(topic)) == 6, 20)  # type: ignore[attr-defined]

    async def test_overflow_dropsOldestWithLagNotice(self) -> None:
        """
        A full buffer drops its oldest events; crossing the lag threshold
        yields one LAG notice with the count.
        """
        topic, kiwi, client = await self._setup(buffer_capacity=3, lag_notice_threshold=4)
        await self.produce(topic, [(None, f"r{i}".encode(), None) for i in range(10)])
        await self._records_seen(kiwi, topic, 10)
        await client.wait_for(lambda: client.notices(), 10)  # type: ignore[attr-defined]
        self.assertEqual(client.notices(), [{"type": "LAG", "sourceId": topic, "count": 4}])  # type: ignore[attr-defined]
        await client.command({"type": "REQUEST", "sourceId": topic, "n": 10})  # type: ignore[attr-defined]
        self.assertEqual(_payloads(client.results(topic)), [b"r7", b"r8", b"r9"])  # type: ignore[attr-defined]

    async def test_noBuffer_dropsWithoutCredit(self) -> None:
        """
        Without a buffer, events that arrive without credit are dropped.
        """
        topic, kiwi, client = await self._setup()
        await self.produce(topic, [(None, b"lost", None)])
        await self._records_seen(kiwi, topic, 1)
        reply = await client.command({"type": "REQUEST", "sourceId": topic, "n": 1})  # type: ignore[attr-defined]
        self.assertEqual(reply["requests"], 1)
        await self.produce(topic, [(None, b"kept", None)])
        await client.wait_for(lambda: client.results(topic), 20)  # type: ignore[attr-defined]
        self.assertEqual(_payloads(client.results(topic)), [b"kept"])  # type: ignore[attr-defined]


class SlowClientTests(IntegrationTestCase):
    """
    A client that stops reading is held to its budget and disconnected,
    while others on the same source miss nothing.
    """

    timeout = 180

    async def test_stalledClient_boundedThenDisconnected(self) -> None:
        """
        A raw client that completes the handshake and never reads costs at
        most its budget, is disconnected after slow_client_timeout_s, and a
        normal client on the same source receives every event.
        """
        topic = await self.create_topic()
        config = self.kafka_config(topic)
        # Room for the reading test client to fall behind on a busy machine
        # without losing events; the stalled one still overflows it.
        budget = 1024 * 1024
        config["subscriber"] = {"max_pending_bytes": budget, "slow_client_timeout_s": 2}
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state(topic, "running")
        reader = await self.connect(kiwi)
        await reader.subscribe(topic)
        assert kiwi.port is not None
        stalled = await deferToThread(StalledClient, kiwi.port)
        self.addCleanup(stalled.close)
        stalled.send({"type": "SUBSCRIBE", "sourceId": topic})

        count = 1500
        value = b"x" * 10_000
        peak = 0

        async def produce() -> None:
            await self.produce(topic, [(None, value + str(i).encode(), None) for i in range(count)])

        from twisted.internet.defer import Deferred

        producing = Deferred.fromCoroutine(produce())
        while not producing.called:
            health = await kiwi.health()
            peak = max(peak, health["pending_bytes"])
            from twisted.internet import reactor
            from twisted.internet.task import deferLater

            await deferLater(reactor, 0.05, lambda: None)
        await producing
        await reader.wait_for(lambda: len(reader.results(topic)) >= count, 60)
        self.assertEqual(len(reader.results(topic)), count)
        self.assertEqual(
            [r["offset"] for r in reader.results(topic)], list(range(count))
        )
        # Neither outbox ever exceeds its budget (plus one reply or notice
        # that is never dropped); two connections share the figure.
        self.assertLessEqual(peak, 2 * (budget + 1024))

        async def stalled_gone() -> bool:
            health = await kiwi.health()
            return bool(health["connections"] == 1)

        from tests.integration.polling import wait_until

        import time

        deadline = time.monotonic() + 30
        while not await stalled_gone():
            self.assertLess(time.monotonic(), deadline, kiwi.output)
            await deferLater(reactor, 0.1, lambda: None)
        self.assertIn("disconnected: too slow", kiwi.output)
        # The TCP connection is really gone (the peer never answered the
        # close frame, so Kiwi aborted it), and so is its outbox.
        self.assertTrue(await deferToThread(stalled.wait_dropped, 30))
        health = await kiwi.health()
        self.assertEqual(health["pending_bytes"], 0)
        self.assertEqual(health["sources"][topic]["subscribers"], 1)


class KeepaliveTests(IntegrationTestCase):
    """
    WebSocket pings find connections whose peer stopped answering.
    """

    async def test_halfOpen_droppedByPingTimeout(self) -> None:
        """
        A raw client that completes the handshake and subscribes, then
        neither reads nor answers pings, is disconnected after
        ping_interval_s + ping_timeout_s: /health's connections drops and
        its socket is closed. A normal client, which answers pings, stays.
        """
        topic = await self.create_topic()
        config = self.kafka_config(topic)
        config["server"] = {"listen": "tcp:0:interface=127.0.0.1", "ping_interval_s": 0.5, "ping_timeout_s": 1}
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state(topic, "running")
        reader = await self.connect(kiwi)
        await reader.subscribe(topic)
        assert kiwi.port is not None
        silent = await deferToThread(StalledClient, kiwi.port)
        self.addCleanup(silent.close)
        silent.send({"type": "SUBSCRIBE", "sourceId": topic})

        # The handshake has completed, so Kiwi counts two connections
        # until the silent one is dropped.
        deadline = time.monotonic() + 30
        while (await kiwi.health())["connections"] != 1:
            self.assertLess(time.monotonic(), deadline, kiwi.output)
            await deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(await deferToThread(silent.wait_dropped, 30))
        health = await kiwi.health()
        self.assertEqual(health["sources"][topic]["subscribers"], 1)
        self.assertEqual(health["pending_bytes"], 0)
        # The normal client is still there and still served.
        await self.produce(topic, [(None, b"after", None)])
        await reader.wait_for(lambda: reader.results(topic), 20)
        self.assertFalse(reader.factory.is_closed)
