"""
Tests for L{kiwi.client}: the Python client against Kiwi's own WebSocket
server in memory (an L{iosim} pump and a L{MemoryReactorClock}): no
sockets, no real time.
"""

from __future__ import annotations

from typing import Any

import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from kiwi.client import ConnectionClosed, KiwiClient, KiwiCommandError, backoff_delay, decode, with_token
from kiwi.config import SubscriberConfig
from kiwi.events import CounterEvent
from kiwi.registry import Registry
from kiwi.ws import KiwiServerFactory
from tests.test_registry_replay import FakeKafkaSource
from kiwi.events import KafkaEvent
from tests.test_replay import FakeReader
from tests.test_ws import FakeSource

def record(partition: int, offset: int) -> KafkaEvent:
    return KafkaEvent("k", "topic", partition, offset, None, b"v", None)


SERVER = IPv4Address("TCP", "127.0.0.1", 8000)
CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)


class HelperTests(SynchronousTestCase):
    """
    Backoff, tokens and payload decoding.
    """

    def test_backoff_exponentialCappedJittered(self) -> None:
        """
        The delay doubles from min_delay up to max_delay, less up to jitter
        of it.
        """
        delays = [backoff_delay(a, 0.5, 4.0, 0.5, lambda: 0.0) for a in range(6)]
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0])
        self.assertEqual(backoff_delay(1, 0.5, 4.0, 0.5, lambda: 1.0), 0.5)
        self.assertEqual(backoff_delay(1000, 0.5, 4.0, 0.0), 4.0)

    def test_withToken_queryParameter(self) -> None:
        """
        The token is added (or replaced) as a query parameter.
        """
        self.assertEqual(with_token("ws://h:1/", None), "ws://h:1/")
        self.assertEqual(with_token("ws://h:1/", "a b"), "ws://h:1/?access_token=a+b")
        self.assertEqual(with_token("ws://h:1/?x=1&access_token=old", "new"), "ws://h:1/?x=1&access_token=new")
        self.assertEqual(with_token("ws://h:1/", "t", "jwt"), "ws://h:1/?jwt=t")

    def test_decode_formats(self) -> None:
        """
        decode gives bytes for base64 (the default, or a fallback) and the
        value as sent otherwise.
        """
        self.assertEqual(decode({"payload": "aGk="}), b"hi")
        self.assertEqual(decode({"payload": {"a": 1}}, format="json"), {"a": 1})
        self.assertEqual(decode({"payload": "aGk=", "payloadEncoding": "base64"}, format="json"), b"hi")
        self.assertEqual(decode({"key": "/w==", "keyEncoding": "base64"}, "key", "utf8"), b"\xff")
        self.assertEqual(decode({"key": "k"}, "key", "utf8"), "k")
        self.assertIsNone(decode({"payload": None}))


class KiwiClientTests(SynchronousTestCase):
    """
    The client against a real L{KiwiServerFactory} in memory.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.patch(txaio.config, "loop", self.reactor)  # type: ignore[attr-defined]
        self.registry = Registry(SubscriberConfig(max_replay_events=100))
        self.registry.add_source(FakeSource("c"))
        self.kafka = FakeKafkaSource("k", FakeReader({0: 0, 1: 0}), {0: 0, 1: 0})
        self.kafka.clock = self.reactor
        self.registry.add_source(self.kafka)
        self.server_factory = KiwiServerFactory(self.registry, self.reactor)
        self.client = KiwiClient("ws://127.0.0.1:8000/", reactor=self.reactor, random=lambda: 0.5, min_delay=1.0)
        self.results: list[dict[str, Any]] = []
        self.notices: list[dict[str, Any]] = []
        self.states: list[str] = []
        self.client.on("result", self.results.append)
        self.client.on("notice", self.notices.append)
        self.client.on("state", self.states.append)
        self.pumps: list[iosim.IOPump] = []

    def accept(self) -> Any:
        """
        Complete the connection attempt the client made last.
        """
        host, port, factory, timeout, bind = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), ("127.0.0.1", 8000))
        client = factory.buildProtocol(SERVER)
        server = self.server_factory.buildProtocol(CLIENT)
        server_io = iosim.FakeTransport(server, isServer=True, hostAddress=SERVER, peerAddress=CLIENT)
        client_io = iosim.FakeTransport(client, isServer=False, hostAddress=CLIENT, peerAddress=SERVER)
        pump = iosim.connect(server, server_io, client, client_io, clock=self.reactor)
        self.pumps.append(pump)
        return server

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    def test_connect_subscribeAndResults(self) -> None:
        """
        connect() fires once open; subscribe() with SUBSCRIBE_OK; results
        and their offsets reach the client.
        """
        opened = self.client.connect()
        self.assertNoResult(opened)
        self.accept()
        self.successResultOf(opened)
        d = self.client.subscribe("k")
        self.flush()
        self.assertEqual(self.successResultOf(d), {"type": "SUBSCRIBE_OK", "sourceId": "k"})
        self.registry.publish("k", [record(0, 0), record(1, 0), record(0, 1)])
        self.flush()
        self.assertEqual([(r["partition"], r["offset"]) for r in self.results], [(0, 0), (1, 0), (0, 1)])
        self.assertEqual(self.client.offsets("k"), {0: 1, 1: 0})
        self.assertEqual(self.states, ["connecting", "open"])

    def test_subscribe_refused(self) -> None:
        """
        A SUBSCRIBE_ERROR fails subscribe() with L{KiwiCommandError}
        and the subscription is not kept.
        """
        self.client.connect()
        self.accept()
        d = self.client.subscribe("c", start="earliest")
        self.flush()
        error = self.failureResultOf(d, KiwiCommandError).value
        self.assertEqual(error.reply["type"], "SUBSCRIBE_ERROR")
        self.assertIn("Kafka sources only", str(error))
        self.assertEqual(self.client.subscriptions, {})

    def test_reconnect_resumesFromOffsets(self) -> None:
        """
        When the connection drops the client waits (backoff with jitter),
        reconnects, and renews its subscriptions: Kafka ones from the last
        offsets + 1. Pending commands fail with L{ConnectionClosed}.
        """
        self.client.connect()
        server = self.accept()
        self.client.subscribe("k")
        self.client.subscribe("c")
        self.flush()
        self.registry.publish("k", [record(0, 3), record(1, 7)])
        self.flush()
        pending = self.client.request("c", 1)
        server.dropConnection(abort=True)
        self.flush()
        self.failureResultOf(pending, ConnectionClosed)
        self.assertEqual(self.client.state, "waiting")
        self.assertEqual(self.registry.subscriber_count("k"), 0)
        self.reactor.advance(0.74)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(0.01)  # 1.0 less half of the 50% jitter
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.accept()
        self.flush()
        self.assertEqual(self.registry.subscriber_count("k"), 1)
        self.assertEqual(self.registry.subscriber_count("c"), 1)
        replay = self.kafka.replays[-1]
        self.assertEqual(replay.start_from.offsets, ((0, 4), (1, 8)))
        self.assertEqual(self.client.attempt, 0)

    def test_connectionRefused_backsOff(self) -> None:
        """
        Failed attempts are retried with growing delays until one works.
        """
        self.client.connect()
        for expected in (0.75, 1.5, 3.0):
            _, _, factory, _, _ = self.reactor.tcpClients[-1]
            factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
            self.assertEqual(self.reactor.getDelayedCalls()[0].getTime() - self.reactor.seconds(), expected)
            self.reactor.advance(expected)
        self.assertEqual(len(self.reactor.tcpClients), 4)
        self.assertEqual(self.client.attempt, 3)

    def test_pull_renewsCredit(self) -> None:
        """
        A pull subscription asks again, after a reconnect, for the credit
        it had not used.
        """
        self.client.connect()
        server = self.accept()
        self.client.subscribe("c", mode="pull")
        self.flush()
        self.client.request("c", 5)
        self.flush()
        self.registry.publish("c", [CounterEvent("c", 1), CounterEvent("c", 2)])
        self.flush()
        self.assertEqual(len(self.results), 2)
        server.dropConnection(abort=True)
        self.flush()
        self.reactor.advance(1)
        self.accept()
        self.flush()
        self.registry.publish("c", [CounterEvent("c", n) for n in range(3, 10)])
        self.flush()
        self.assertEqual([r["count"] for r in self.results], [1, 2, 3, 4, 5])

    def test_close_noReconnect(self) -> None:
        """
        close() ends the connection for good.
        """
        self.client.connect()
        self.accept()
        closed = self.client.close()
        self.flush()
        self.reactor.advance(30)
        self.flush()
        self.successResultOf(closed)
        self.assertEqual(self.client.state, "closed")
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_notices_andUnsubscribe(self) -> None:
        """
        Notices reach the handler; unsubscribe() stops renewal.
        """
        self.client.connect()
        server = self.accept()
        self.client.subscribe("c")
        self.flush()
        self.registry.close_source("c", "source ended: done")
        self.flush()
        self.assertEqual(self.notices[0]["type"], "SUBSCRIPTION_CLOSED")
        self.assertEqual(self.client.subscriptions, {})
        self.client.subscribe("k")
        self.flush()
        d = self.client.unsubscribe("k")
        self.flush()
        self.assertEqual(self.successResultOf(d)["type"], "UNSUBSCRIBE_OK")
        server.dropConnection(abort=True)
        self.flush()
        self.reactor.advance(1)
        self.accept()
        self.flush()
        self.assertEqual(self.registry.subscriber_count("k"), 0)

    def test_on_unknownEvent(self) -> None:
        """
        on() refuses unknown event names, and its result removes the
        handler.
        """
        self.assertRaises(ValueError, self.client.on, "nope", print)
        seen: list[str] = []
        off = self.client.on("state", seen.append)
        off()
        self.client.connect()
        self.assertEqual(seen, [])
