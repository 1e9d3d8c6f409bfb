"""
Replay and resume (C{from} in C{SUBSCRIBE}) through a real Kiwi process, a
real broker and the Python client L{kiwi.client.KiwiClient}.

The switch-over from history to the live stream is checked exactly: every
partition's offsets arrive as one contiguous run, none missing, none twice.
"""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.integration import broker
from tests.integration.base import IntegrationTestCase
from tests.integration.polling import wait_until


def produce_timed(bootstrap: str, topic: str, records: list[tuple[bytes, int, int]]) -> None:
    """
    Produce C{(value, partition, timestamp_ms)} records with explicit
    timestamps and wait for them. Blocking.
    """
    from confluent_kafka import Producer

    errors: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False})
    for value, partition, timestamp in records:
        producer.produce(
            topic,
            value=value,
            partition=partition,
            timestamp=timestamp,
            on_delivery=lambda e, m: errors.append(str(e)) if e else None,
        )
    remaining = producer.flush(30)
    assert not remaining and not errors, (remaining, errors)


def by_partition(results: list[dict[str, Any]]) -> dict[int, list[int]]:
    """
    Offsets received per partition, in arrival order.
    """
    grouped: dict[int, list[int]] = defaultdict(list)
    for result in results:
        grouped[result["partition"]].append(result["offset"])
    return dict(grouped)


def payloads(results: list[dict[str, Any]]) -> list[bytes]:
    return [base64.b64decode(r["payload"]) for r in results]


class ReplayTests(IntegrationTestCase):
    """
    Subscriptions that start in the past, then follow the live stream.
    """

    timeout = 180

    async def _running_topic(self, partitions: int, **subscriber: Any) -> tuple[str, Any]:
        topic = await self.create_topic(partitions=partitions)
        config = self.kafka_config(topic)
        if subscriber:
            config["subscriber"] = subscriber
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state(topic, "running")
        return topic, kiwi

    async def _records_seen(self, kiwi: Any, topic: str, count: int) -> None:
        """
        Wait until Kiwi's live stream has read C{count} records of C{topic}.
        """
        deadline = time.monotonic() + 60
        while True:
            health = await kiwi.health()
            if health["sources"][topic]["records"] >= count:
                return
            assert time.monotonic() < deadline, f"live stream never read {count} records: {health}"
            await deferLater(reactor, 0.05, lambda: None)

    async def test_earliest_switchOverExact(self) -> None:
        """
        From earliest on three partitions, with records retained from
        before Kiwi started, records the live stream read before the
        subscription, and records produced while the replay runs: every
        partition's offsets arrive exactly once, contiguous from 0, in
        order, with the right payloads.
        """
        topic = await self.create_topic(partitions=3)
        await self.produce(topic, [(None, f"old-{i}".encode(), i % 3) for i in range(60)])
        kiwi = await self.start_kiwi(self.kafka_config(topic))
        await kiwi.wait_source_state(topic, "running")
        await self.produce(topic, [(None, f"mid-{i}".encode(), i % 3) for i in range(30)])
        await self._records_seen(kiwi, topic, 30)

        client = await self.kiwi_client(kiwi.port)
        results: list[dict[str, Any]] = []
        client.on("result", results.append)
        reply = await client.subscribe(topic, start="earliest")
        self.assertEqual(reply, {"type": "SUBSCRIBE_OK", "sourceId": topic})
        # Produced while the replay runs: the live stream holds these back.
        await self.produce(topic, [(None, f"new-{i}".encode(), i % 3) for i in range(30)])
        await wait_until(lambda: len(results) >= 120, 60, what=lambda: f"120 results, have {len(results)}")
        await self.produce(topic, [(None, b"after", 0)])
        await wait_until(lambda: len(results) >= 121, 30, what="the record after the switch-over")

        grouped = by_partition(results)
        self.assertEqual(sorted(grouped), [0, 1, 2])
        self.assertEqual(grouped[0], list(range(41)))
        self.assertEqual(grouped[1], list(range(40)))
        self.assertEqual(grouped[2], list(range(40)))
        expected_0 = [f"old-{i}".encode() for i in range(0, 60, 3)]
        expected_0 += [f"mid-{i}".encode() for i in range(0, 30, 3)]
        expected_0 += [f"new-{i}".encode() for i in range(0, 30, 3)] + [b"after"]
        self.assertEqual(payloads([r for r in results if r["partition"] == 0]), expected_0)
        health = await kiwi.health()
        self.assertEqual(health["sources"][topic]["subscribers"], 1)

    async def test_offsets_perPartition(self) -> None:
        """
        From given offsets: each listed partition from its offset, an
        unlisted partition from the latest only; then live records.
        """
        topic, kiwi = await self._running_topic(3)
        await self.produce(topic, [(None, f"r{i}".encode(), i % 3) for i in range(30)])
        await self._records_seen(kiwi, topic, 30)
        client = await self.kiwi_client(kiwi.port)
        results: list[dict[str, Any]] = []
        client.on("result", results.append)
        await client.subscribe(topic, start={"offsets": {"0": 7, "2": 3}})
        # Produced while the replay runs.
        await self.produce(topic, [(None, b"live0", 0), (None, b"live1", 1), (None, b"live2", 2)])
        await wait_until(lambda: len(results) >= 13, 30, what="replayed and live records")
        await self.produce(topic, [(None, b"later", 2)])
        await wait_until(lambda: len(results) >= 14, 30, what="the record after the switch-over")
        grouped = by_partition(results)
        self.assertEqual(grouped[0], [7, 8, 9, 10])
        self.assertEqual(grouped[1], [10])
        self.assertEqual(grouped[2], [3, 4, 5, 6, 7, 8, 9, 10, 11])

    async def test_timestamp_firstRecordAtOrAfter(self) -> None:
        """
        From a timestamp: in every partition, the first record whose
        timestamp is at or after it, and everything after.
        """
        topic, kiwi = await self._running_topic(2)
        # Recent timestamps: the broker may delete records older than its
        # retention time at any moment.
        base = int(time.time() * 1000) - 100_000
        records = [(f"t{i}".encode(), i % 2, base + i * 1000) for i in range(20)]
        await deferToThread(produce_timed, self.bootstrap, topic, records)
        await self._records_seen(kiwi, topic, 20)
        client = await self.kiwi_client(kiwi.port)
        results: list[dict[str, Any]] = []
        client.on("result", results.append)
        # Records 11 (partition 1, offset 5) onwards.
        await client.subscribe(topic, start={"timestamp": base + 10_500})
        # Produced while the replay runs.
        await self.produce(topic, [(None, b"live", 0), (None, b"live", 1)])
        await wait_until(
            lambda: len(results) >= 11,
            30,
            what=lambda: f"replayed and live records; have {by_partition(results)}\n{kiwi.output[-3000:]}",
        )
        grouped = by_partition(results)
        self.assertEqual(grouped[0], [6, 7, 8, 9, 10])
        self.assertEqual(grouped[1], [5, 6, 7, 8, 9, 10])
        self.assertTrue(all(r["timestamp"] >= base + 10_500 for r in results if r["payload"] != "bGl2ZQ=="))

    async def test_pull_honoursCredits(self) -> None:
        """
        A pull-mode replay sends no more than the credit given, and
        continues where it stopped when more comes.
        """
        topic, kiwi = await self._running_topic(1)
        await self.produce(topic, [(None, f"p{i}".encode(), 0) for i in range(25)])
        await self._records_seen(kiwi, topic, 25)
        client = await self.kiwi_client(kiwi.port)
        results: list[dict[str, Any]] = []
        client.on("result", results.append)
        await client.subscribe(topic, mode="pull", start="earliest")
        await client.request(topic, 7)
        await wait_until(lambda: len(results) >= 7, 30, what="7 results")
        # A round trip later there is still nothing beyond the credit.
        reply = await client.send_raw({"type": "REQUEST", "sourceId": "nope", "n": 1})
        self.assertEqual(len(results), 7)
        self.assertEqual(reply["type"], "REQUEST_ERROR")
        await client.request(topic, 100)
        await wait_until(lambda: len(results) >= 25, 30, what="25 results")
        await self.produce(topic, [(None, b"live", 0)])
        await wait_until(lambda: len(results) >= 26, 30, what="the live record")
        self.assertEqual(by_partition(results)[0], list(range(26)))

    async def test_maxReplayEvents_lagNoticeThenLive(self) -> None:
        """
        A replay longer than subscriber.max_replay_events delivers that
        many past events, tells the subscriber how many it skipped with a
        LAG notice, and continues with the live stream.
        """
        topic, kiwi = await self._running_topic(1, max_replay_events=10)
        await self.produce(topic, [(None, f"h{i}".encode(), 0) for i in range(30)])
        await self._records_seen(kiwi, topic, 30)
        client = await self.kiwi_client(kiwi.port)
        results: list[dict[str, Any]] = []
        notices: list[dict[str, Any]] = []
        client.on("result", results.append)
        client.on("notice", notices.append)
        await client.subscribe(topic, start="earliest")
        await wait_until(lambda: notices, 30, what="a LAG notice")
        self.assertEqual(notices, [{"type": "LAG", "sourceId": topic, "count": 20}])
        await self.produce(topic, [(None, b"live", 0)])
        await wait_until(lambda: len(results) >= 11, 30, what="the live record")
        self.assertEqual(by_partition(results)[0], list(range(10)) + [30])

    async def test_concurrentReplays_takeTurns(self) -> None:
        """
        With max_concurrent_replays 1, three clients replaying at once each
        get the whole history and then the live stream, exactly once.
        """
        topic, kiwi = await self._running_topic(2, max_concurrent_replays=1)
        await self.produce(topic, [(None, f"h{i}".encode(), i % 2) for i in range(40)])
        await self._records_seen(kiwi, topic, 40)
        collected: list[list[dict[str, Any]]] = []
        for _ in range(3):
            client = await self.kiwi_client(kiwi.port)
            results: list[dict[str, Any]] = []
            client.on("result", results.append)
            collected.append(results)
            await client.subscribe(topic, start="earliest")
        await self.produce(topic, [(None, b"live", 0), (None, b"live", 1)])
        for results in collected:
            await wait_until(lambda r=results: len(r) >= 42, 60, what="history and live records")
            self.assertEqual(by_partition(results), {0: list(range(21)), 1: list(range(21))})

    async def test_badFrom_refused(self) -> None:
        """
        A malformed from, a from on a counter source, and offsets for a
        partition the topic lacks are refused with SUBSCRIBE_ERROR naming
        the problem; the connection stays usable.
        """
        topic = await self.create_topic(partitions=2)
        config = self.kafka_config(topic)
        config["sources"].append({"type": "counter", "id": "tick", "interval_ms": 1000, "min": 0})
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state(topic, "running")
        client = await self.kiwi_client(kiwi.port)
        cases = [
            (topic, "yesterday", 'from must be "latest", "earliest"'),
            (topic, {"timestamp": -1}, "from.timestamp must be an integer >= 0"),
            (topic, {"offsets": {"zero": 1}}, "from.offsets keys must be partition numbers"),
            (topic, {"offsets": {"5": 1}}, "from.offsets names partition 5, which the topic does not have"),
            ("tick", "earliest", "from is supported for Kafka sources only"),
        ]
        for source_id, start, message in cases:
            reply = await client.send_raw({"type": "SUBSCRIBE", "sourceId": source_id, "from": start})
            self.assertEqual(reply["type"], "SUBSCRIBE_ERROR", reply)
            self.assertIn(message, reply["error"])
        reply = await client.send_raw({"type": "SUBSCRIBE", "sourceId": "tick", "from": "latest"})
        self.assertEqual(reply["type"], "SUBSCRIBE_OK")


class ResumeTests(IntegrationTestCase):
    """
    A client that loses its connection resumes from its last offsets + 1.
    """

    timeout = 240

    async def test_restart_resumesWithoutLoss(self) -> None:
        """
        Kiwi restarts (same port) while records keep being produced; the
        Python client reconnects by itself, re-subscribes from its last
        offsets + 1, and ends up with every record exactly once.
        """
        topic = await self.create_topic(partitions=2)
        port = broker.free_port()
        config = self.kafka_config(topic)
        config["server"] = {"listen": f"tcp:{port}:interface=127.0.0.1"}
        first = await self.start_kiwi(config)
        await first.wait_source_state(topic, "running")
        client = await self.kiwi_client(port)
        results: list[dict[str, Any]] = []
        client.on("result", results.append)
        await client.subscribe(topic)
        await self.produce(topic, [(None, f"a{i}".encode(), i % 2) for i in range(10)])
        await wait_until(lambda: len(results) >= 10, 30, what="the first records")

        self.assertEqual(await first.stop(), 0)
        await wait_until(lambda: client.state == "waiting", 30, what="the client to notice")
        # Produced while Kiwi is down.
        await self.produce(topic, [(None, f"b{i}".encode(), i % 2) for i in range(10)])
        second = await self.start_kiwi(config)
        await second.wait_source_state(topic, "running")
        await client.when_open()
        await wait_until(lambda: len(results) >= 20, 60, what="the records produced while down")
        await self.produce(topic, [(None, f"c{i}".encode(), i % 2) for i in range(10)])
        await wait_until(lambda: len(results) >= 30, 60, what="the records after the restart")
        grouped = by_partition(results)
        self.assertEqual(grouped, {0: list(range(15)), 1: list(range(15))})
        self.assertEqual(client.offsets(topic), {0: 14, 1: 14})

    async def test_drop_resumesWithoutLoss(self) -> None:
        """
        A dropped connection (Kiwi keeps running) is reopened and renewed
        from the last offsets + 1; records produced around the drop arrive
        exactly once.
        """
        topic = await self.create_topic(partitions=2)
        kiwi = await self.start_kiwi(self.kafka_config(topic))
        await kiwi.wait_source_state(topic, "running")
        client = await self.kiwi_client(kiwi.port, min_delay=1.0)
        results: list[dict[str, Any]] = []
        client.on("result", results.append)
        await client.subscribe(topic)
        await self.produce(topic, [(None, f"a{i}".encode(), i % 2) for i in range(10)])
        await wait_until(lambda: len(results) >= 10, 30, what="the first records")
        client.drop()
        await wait_until(lambda: client.state != "open", 10, what="the drop")
        await self.produce(topic, [(None, f"b{i}".encode(), i % 2) for i in range(10)])
        await client.when_open()
        await self.produce(topic, [(None, f"c{i}".encode(), i % 2) for i in range(10)])
        await wait_until(lambda: len(results) >= 30, 60, what="every record")
        self.assertEqual(by_partition(results), {0: list(range(15)), 1: list(range(15))})
