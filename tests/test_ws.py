"""
Tests for L{kiwi.ws}: the WebSocket protocol driven through real handshakes
in memory (an Autobahn client over an L{iosim} pump), C{/health} and the
C{426} reply.

Autobahn's timers go through txaio; its loop is pointed at a L{Clock} for
each test, so nothing is scheduled on the global reactor.
"""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any

import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kiwi import protocol
from kiwi.config import ServerConfig, SubscriberConfig
from kiwi.events import CounterEvent
from kiwi.registry import Frame, FrameRun, ISubscriber, Registry
from kiwi.sources import ISource
from kiwi.ws import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    FRAME_OVERHEAD,
    HealthResource,
    KiwiServerFactory,
    KiwiServerProtocol,
    _WebSocketEntry,
    build_site,
    health_status,
    wait_closed,
)

SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 8000)
CLIENT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


@implementer(ISource)
class FakeSource:
    """
    A source whose status is fixed.
    """

    source_type = "counter"

    def __init__(self, source_id: str, finished: bool = False) -> None:
        self.source_id = source_id
        self.finished = finished

    def subscriber_added(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"type": "counter", "state": "running", "next": 1}


class RecordingClient(WebSocketClientProtocol):
    """
    An Autobahn client that records what it receives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.opened = False
        self.received: list[tuple[bytes, bool]] = []
        self.close_info: tuple[bool, int | None, str | None] | None = None

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_info = (wasClean, code, reason)

    def take(self) -> list[bytes]:
        """
        The text messages received since the last call.
        """
        messages = []
        for payload, is_binary in self.received:
            assert not is_binary
            messages.append(payload)
        self.received = []
        return messages


class WebSocketTestMixin:
    """
    Builds a factory over a registry and connects clients to it in memory.
    """

    clock: Clock
    registry: Registry
    factory: KiwiServerFactory

    def setUpWebSocket(
        self, subscriber_config: SubscriberConfig = SubscriberConfig(), server_config: ServerConfig | None = None
    ) -> None:
        """
        Point txaio at a fresh clock and build the server factory.
        """
        self.clock = Clock()
        self.patch(txaio.config, "loop", self.clock)  # type: ignore[attr-defined]
        self.registry = Registry(subscriber_config)
        self.registry.add_source(FakeSource("c"))
        self.registry.add_source(FakeSource("d"))
        self.factory = KiwiServerFactory(self.registry, self.clock, server_config)

    def connect_protocol(
        self, server: Any, client_options: dict[str, Any] | None = None
    ) -> tuple[RecordingClient, iosim.IOPump]:
        """
        Connect a new client to the server-side protocol C{server} and
        complete the handshake.

        @param client_options: Autobahn protocol options for the client.
        """
        client_factory = WebSocketClientFactory(url="ws://localhost:8000/", reactor=self.clock)
        if client_options:
            client_factory.setProtocolOptions(**client_options)
        client_factory.protocol = RecordingClient
        client = client_factory.buildProtocol(SERVER_ADDRESS)
        server_io = iosim.FakeTransport(server, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=CLIENT_ADDRESS)
        client_io = iosim.FakeTransport(client, isServer=False, hostAddress=CLIENT_ADDRESS, peerAddress=SERVER_ADDRESS)
        pump = iosim.connect(server, server_io, client, client_io, clock=self.clock)
        self.addCleanup(self.disconnect, client, pump)  # type: ignore[attr-defined]
        return client, pump

    def connect(self) -> tuple[RecordingClient, KiwiServerProtocol, iosim.IOPump]:
        """
        A client connected straight to a L{KiwiServerProtocol}.
        """
        server = self.factory.buildProtocol(CLIENT_ADDRESS)
        client, pump = self.connect_protocol(server)
        self.assertTrue(client.opened)  # type: ignore[attr-defined]
        return client, server, pump

    def disconnect(self, client: RecordingClient, pump: iosim.IOPump) -> None:
        """
        Close the connection if it is open, and let every timer run out.
        """
        if client.state == client.STATE_OPEN:
            client.sendClose()
        pump.flush()
        self.clock.advance(120)
        pump.flush()

    def send(self, client: RecordingClient, pump: iosim.IOPump, command: object) -> list[bytes]:
        """
        Send C{command} (JSON-encoded unless bytes) and return the replies.
        """
        payload = command if isinstance(command, bytes) else json.dumps(command).encode("utf-8")
        client.sendMessage(payload, isBinary=False)
        pump.flush()
        return client.take()


class KiwiServerProtocolTests(WebSocketTestMixin, SynchronousTestCase):
    """
    Commands over a real WebSocket connection.
    """

    def setUp(self) -> None:
        self.setUpWebSocket(SubscriberConfig(buffer_capacity=3))

    def test_protocol_providesISubscriber(self) -> None:
        """
        A connection is an L{ISubscriber} for the registry.
        """
        client, server, pump = self.connect()
        self.assertTrue(verifyObject(ISubscriber, server))

    def test_handshake_opens(self) -> None:
        """
        After the handshake the connection is open, counted by the factory
        and has a connection id and the peer address.
        """
        client, server, pump = self.connect()
        self.assertEqual(server.state, server.STATE_OPEN)
        self.assertEqual(self.factory.connections, {server})
        self.assertRegex(server.conn_id, r"^c\d+$")
        self.assertEqual(server.peer_address, "tcp4:127.0.0.1:40000")
        self.assertEqual(client.take(), [])

    def test_handshake_distinctIds(self) -> None:
        """
        Each connection gets its own id.
        """
        first = self.connect()[1]
        second = self.connect()[1]
        self.assertNotEqual(first.conn_id, second.conn_id)
        self.assertEqual(len(self.factory.connections), 2)

    def test_subscribe_ok(self) -> None:
        """
        C{SUBSCRIBE} to a known source replies C{SUBSCRIBE_OK} and registers
        the subscription.
        """
        client, server, pump = self.connect()
        self.assertEqual(self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"}), [protocol.subscribe_ok("c")])
        self.assertEqual(self.registry.subscriber_count("c"), 1)

    def test_subscribe_unknownSource(self) -> None:
        """
        C{SUBSCRIBE} to an unknown source replies C{SUBSCRIBE_ERROR}.
        """
        client, server, pump = self.connect()
        self.assertEqual(
            self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "nope"}),
            [b'{"type":"COMMAND_RESPONSE","data":{"type":"SUBSCRIBE_ERROR","sourceId":"nope","error":"source not found"}}'],
        )
        self.assertEqual(server.state, server.STATE_OPEN)

    def test_subscribe_twice(self) -> None:
        """
        A second C{SUBSCRIBE} to the same source is refused.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        self.assertEqual(
            self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"}),
            [protocol.command_error("SUBSCRIBE", "c", "already subscribed to this source")],
        )

    def test_subscribe_badMode(self) -> None:
        """
        A bad mode gets a C{SUBSCRIBE_ERROR} naming the source.
        """
        client, server, pump = self.connect()
        self.assertEqual(
            self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c", "mode": "x"}),
            [protocol.command_error("SUBSCRIBE", "c", 'mode must be "push" or "pull", got "x"')],
        )
        self.assertEqual(self.registry.subscriber_count("c"), 0)

    def test_unsubscribe_ok(self) -> None:
        """
        C{UNSUBSCRIBE} ends a subscription with C{UNSUBSCRIBE_OK}.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        self.assertEqual(
            self.send(client, pump, {"type": "UNSUBSCRIBE", "sourceId": "c"}), [protocol.unsubscribe_ok("c")]
        )
        self.assertEqual(self.registry.subscriber_count("c"), 0)

    def test_unsubscribe_notSubscribed(self) -> None:
        """
        C{UNSUBSCRIBE} without a subscription replies C{UNSUBSCRIBE_ERROR}.
        """
        client, server, pump = self.connect()
        self.assertEqual(
            self.send(client, pump, {"type": "UNSUBSCRIBE", "sourceId": "nope"}),
            [protocol.command_error("UNSUBSCRIBE", "nope", "not subscribed to this source")],
        )

    def test_push_events(self) -> None:
        """
        Events published to a push subscription arrive as C{RESULT} frames,
        in order.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        self.registry.publish("c", [CounterEvent("c", 1), CounterEvent("c", 2)])
        pump.flush()
        self.assertEqual(
            client.take(),
            [protocol.encode_result(CounterEvent("c", 1)), protocol.encode_result(CounterEvent("c", 2))],
        )

    def test_push_framePreparedOnce(self) -> None:
        """
        A frame sent to several connections is framed once and shared.
        """
        one, server_one, pump_one = self.connect()
        two, server_two, pump_two = self.connect()
        self.send(one, pump_one, {"type": "SUBSCRIBE", "sourceId": "c"})
        self.send(two, pump_two, {"type": "SUBSCRIBE", "sourceId": "c"})
        prepared = []
        original = self.factory.prepareMessage

        def prepare(payload: bytes, isBinary: bool = False, **kwargs: Any) -> Any:
            result = original(payload, isBinary=isBinary, **kwargs)
            prepared.append(result)
            return result

        self.patch(self.factory, "prepareMessage", prepare)
        self.registry.publish("c", [CounterEvent("c", 7)])
        pump_one.flush()
        pump_two.flush()
        self.assertEqual(len(prepared), 1)
        expected = [protocol.encode_result(CounterEvent("c", 7))]
        self.assertEqual(one.take(), expected)
        self.assertEqual(two.take(), expected)

    def test_push_runWrittenAsSharedBytes(self) -> None:
        """
        Connections that can write at once get a published batch as one
        joined piece of framed bytes, built once and shared by all of them.
        """
        one, server_one, pump_one = self.connect()
        two, server_two, pump_two = self.connect()
        self.send(one, pump_one, {"type": "SUBSCRIBE", "sourceId": "c"})
        self.send(two, pump_two, {"type": "SUBSCRIBE", "sourceId": "c"})
        written: list[bytes] = []
        for server in (server_one, server_two):
            assert server.transport is not None
            original = server.transport.write

            def write(data: bytes, original: Any = original) -> None:
                written.append(data)
                original(data)

            self.patch(server.transport, "write", write)
        runs: list[FrameRun] = []
        original_send = server_one.send_frames

        def send_frames(run: FrameRun) -> None:
            runs.append(run)
            original_send(run)

        self.patch(server_one, "send_frames", send_frames)
        self.registry.publish("c", [CounterEvent("c", n) for n in (1, 2, 3)])
        self.clock.advance(0)
        self.assertEqual(len(written), 2)
        self.assertIs(written[0], written[1])
        self.assertIs(written[0], runs[0].prepared)
        pump_one.flush()
        pump_two.flush()
        expected = [_result("c", n) for n in (1, 2, 3)]
        self.assertEqual(one.take(), expected)
        self.assertEqual(two.take(), expected)

    def test_push_runAfterReplyKeepsOrder(self) -> None:
        """
        A run handed over in the same turn as a reply follows it.
        """
        client, server, pump = self.connect()
        client.sendMessage(json.dumps({"type": "SUBSCRIBE", "sourceId": "c"}).encode())
        pump.flush()
        self.registry.publish("c", [CounterEvent("c", 1), CounterEvent("c", 2)])
        self.clock.advance(0)
        pump.flush()
        self.assertEqual(client.take(), [protocol.subscribe_ok("c"), _result("c", 1), _result("c", 2)])

    def test_sendFrames_notOpen(self) -> None:
        """
        A run for a connection that is no longer open is ignored.
        """
        client, server, pump = self.connect()
        client.sendClose(1000)
        pump.flush()
        self.clock.advance(10)
        pump.flush()
        run = FrameRun([Frame(b"{}", "c")])
        server.send_frames(run)
        self.assertIsNone(run.prepared)
        self.assertIsNone(run.frames[0].prepared)

    def test_request_deliversBufferThenReplies(self) -> None:
        """
        C{REQUEST} on a pull subscription delivers buffered events first,
        then C{REQUEST_OK} with the credit left.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c", "mode": "pull"})
        self.registry.publish("c", [CounterEvent("c", n) for n in (1, 2)])
        pump.flush()
        self.assertEqual(client.take(), [])
        self.assertEqual(
            self.send(client, pump, {"type": "REQUEST", "sourceId": "c", "n": 5}),
            [
                protocol.encode_result(CounterEvent("c", 1)),
                protocol.encode_result(CounterEvent("c", 2)),
                protocol.request_ok("c", 3),
            ],
        )
        self.registry.publish("c", [CounterEvent("c", 3)])
        pump.flush()
        self.assertEqual(client.take(), [protocol.encode_result(CounterEvent("c", 3))])

    def test_request_pushSubscription(self) -> None:
        """
        C{REQUEST} on a push subscription replies C{REQUEST_ERROR}.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        self.assertEqual(
            self.send(client, pump, {"type": "REQUEST", "sourceId": "c", "n": 1}),
            [
                protocol.command_error(
                    "REQUEST", "c", "subscription is in push mode; REQUEST applies to pull mode only"
                )
            ],
        )

    def test_request_notSubscribed(self) -> None:
        """
        C{REQUEST} for an unknown subscription replies C{REQUEST_ERROR}.
        """
        client, server, pump = self.connect()
        self.assertEqual(
            self.send(client, pump, {"type": "REQUEST", "sourceId": "zz", "n": 1}),
            [protocol.command_error("REQUEST", "zz", "not subscribed to this source")],
        )

    def test_request_badN(self) -> None:
        """
        An invalid C{n} replies C{REQUEST_ERROR}, and the connection stays
        open.
        """
        client, server, pump = self.connect()
        self.assertEqual(
            self.send(client, pump, {"type": "REQUEST", "sourceId": "c", "n": 0}),
            [protocol.command_error("REQUEST", "c", "n must be at least 1, got 0")],
        )
        self.assertEqual(server.state, server.STATE_OPEN)

    def test_message_malformed(self) -> None:
        """
        A frame that is not JSON gets an C{ERROR} frame; the connection
        stays open and keeps working.
        """
        client, server, pump = self.connect()
        replies = self.send(client, pump, b"{not json")
        self.assertEqual(len(replies), 1)
        reply = json.loads(replies[0])
        self.assertEqual(reply["type"], "ERROR")
        self.assertTrue(reply["data"]["error"].startswith("frame is not valid JSON"))
        self.assertEqual(server.state, server.STATE_OPEN)
        self.assertEqual(self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"}), [protocol.subscribe_ok("c")])

    def test_message_unknownType(self) -> None:
        """
        An unknown command type gets an C{ERROR} frame.
        """
        client, server, pump = self.connect()
        self.assertEqual(
            self.send(client, pump, {"type": "PUBLISH", "sourceId": "c"}),
            [protocol.error_frame('unknown command type "PUBLISH" (expected SUBSCRIBE, UNSUBSCRIBE or REQUEST)')],
        )

    def test_message_typeNotString(self) -> None:
        """
        A C{type} that is a list gets an C{ERROR} frame, not a closed
        connection.
        """
        client, server, pump = self.connect()
        self.assertEqual(
            self.send(client, pump, {"type": ["SUBSCRIBE"], "sourceId": "c"}),
            [protocol.error_frame("unknown command type list (expected SUBSCRIBE, UNSUBSCRIBE or REQUEST)")],
        )
        self.assertEqual(server.state, server.STATE_OPEN)

    def test_message_binary(self) -> None:
        """
        A binary frame gets an C{ERROR} frame; the connection stays open.
        """
        client, server, pump = self.connect()
        client.sendMessage(b'{"type":"SUBSCRIBE","sourceId":"c"}', isBinary=True)
        pump.flush()
        self.assertEqual(
            client.take(),
            [protocol.error_frame("binary frames are not supported; send commands as JSON text")],
        )
        self.assertEqual(server.state, server.STATE_OPEN)
        self.assertEqual(self.registry.subscriber_count("c"), 0)

    def test_message_internalError(self) -> None:
        """
        An unexpected error while handling a message is logged and closes
        the connection with code 1011, without details.
        """
        client, server, pump = self.connect()

        def broken(*args: object) -> None:
            raise RuntimeError("registry bug")

        self.patch(self.registry, "subscribe", broken)
        self.assertEqual(self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"}), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIsNotNone(client.close_info)
        assert client.close_info is not None
        self.assertEqual(client.close_info[1], CLOSE_INTERNAL_ERROR)
        self.assertEqual(self.factory.connections, set())

    def test_autobahnQueuedWrites(self) -> None:
        """
        Autobahn's own queue of synchronous writes still works: Kiwi does
        not override its C{_send}.
        """
        client, server, pump = self.connect()
        server.sendMessage(b'{"type":"x"}', isBinary=False, sync=True)
        pump.flush()
        self.clock.advance(1)
        pump.flush()
        self.assertEqual(client.take(), [b'{"type":"x"}'])

    def test_closeSource_notice(self) -> None:
        """
        When a source ends, subscribers get a C{SUBSCRIPTION_CLOSED} notice.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        self.registry.close_source("c", "source ended")
        pump.flush()
        self.assertEqual(client.take(), [protocol.subscription_closed("c", "source ended")])

    def test_close_cleansUp(self) -> None:
        """
        When a client goes away its subscriptions and its place in the
        factory are forgotten.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "d", "mode": "pull"})
        client.sendClose(1000)
        pump.flush()
        self.clock.advance(10)
        pump.flush()
        self.assertEqual(self.registry.subscriber_count("c"), 0)
        self.assertEqual(self.registry.subscriber_count("d"), 0)
        self.assertEqual(self.factory.connections, set())
        assert client.close_info is not None
        self.assertEqual(client.close_info[:2], (True, 1000))

    def test_sendFrame_notOpen(self) -> None:
        """
        Frames for a connection that is no longer open are dropped.
        """
        client, server, pump = self.connect()
        client.sendClose(1000)
        pump.flush()
        self.clock.advance(10)
        pump.flush()
        frame = Frame(b"{}")
        server.send_frame(frame)
        self.assertIsNone(frame.prepared)

    def test_closeAll_goingAway(self) -> None:
        """
        C{close_all} starts a closing handshake with every client.
        """
        one, _, pump_one = self.connect()
        two, _, pump_two = self.connect()
        self.factory.close_all(CLOSE_GOING_AWAY, "server shutting down")
        for client, pump in ((one, pump_one), (two, pump_two)):
            pump.flush()
            self.clock.advance(10)
            pump.flush()
            assert client.close_info is not None
            self.assertEqual(client.close_info[1:], (CLOSE_GOING_AWAY, "server shutting down"))
        self.assertEqual(self.factory.connections, set())


BUDGET = 1000
SLOW_TIMEOUT = 5.0
SLOW_REASON = "client too slow: could not keep up with its subscriptions"


def _size(payload: bytes) -> int:
    return len(payload) + FRAME_OVERHEAD


def _result(source_id: str, n: int) -> bytes:
    return protocol.encode_result(CounterEvent(source_id, n))


class ProducerTests(WebSocketTestMixin, SynchronousTestCase):
    """
    Each connection is its transport's push producer: while the transport
    has paused it, messages wait in its outbox, events over the budget are
    dropped and counted, a C{LAG} notice follows the drain, and a client
    that stays over budget is closed with 1008.

    The in-memory transport never pauses by itself, so the tests call
    C{pauseProducing} and C{resumeProducing} as a real transport would.
    """

    def setUp(self) -> None:
        self.setUpWebSocket(
            SubscriberConfig(max_pending_bytes=BUDGET, slow_client_timeout_s=SLOW_TIMEOUT, buffer_capacity=5)
        )

    def kept(self, payloads: list[bytes]) -> int:
        """
        How many of C{payloads} (of one source, queued in order while
        paused) fit in the budget: the rest are dropped.
        """
        total = 0
        for index, payload in enumerate(payloads):
            total += _size(payload)
            if total > BUDGET:
                return index
        return len(payloads)

    def test_producer_registeredOnOpen(self) -> None:
        """
        Once open, the connection is its transport's streaming producer.
        """
        client, server, pump = self.connect()
        self.assertTrue(verifyObject(IPushProducer, server))
        transport = server.transport
        self.assertIs(transport.producer, server)  # type: ignore[union-attr]
        self.assertTrue(transport.streamingProducer)  # type: ignore[union-attr]

    def test_pause_queuesThenResumeWrites(self) -> None:
        """
        While paused nothing is written; resuming writes what waited, in
        order, and the outbox is empty again.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        server.pauseProducing()
        self.registry.publish("c", [CounterEvent("c", n) for n in (1, 2, 3)])
        pump.flush()
        self.assertEqual(client.take(), [])
        self.assertEqual(server.pending_bytes, sum(_size(_result("c", n)) for n in (1, 2, 3)))
        server.resumeProducing()
        pump.flush()
        self.assertEqual(client.take(), [_result("c", n) for n in (1, 2, 3)])
        self.assertEqual(server.pending_bytes, 0)

    def test_pause_dropsEventsOverBudget(self) -> None:
        """
        While paused, events beyond the budget are dropped: the outbox
        stays within it (a published run is queued frame by frame), the
        events dropped move from delivered to dropped in the statistics,
        and after the drain the client gets the events that were kept and
        then one C{LAG} notice with the number dropped.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        server.pauseProducing()
        payloads = [_result("c", n) for n in range(40)]
        self.registry.publish("c", [CounterEvent("c", n) for n in range(40)])
        kept = self.kept(payloads)
        self.assertLess(kept, 40)
        self.assertLessEqual(server.pending_bytes, BUDGET)
        stats = self.registry.stats
        self.assertEqual(stats.delivered["c"], kept)
        self.assertEqual(stats.dropped["c", "slow_client"], 40 - kept)
        server.resumeProducing()
        pump.flush()
        self.assertEqual(client.take(), payloads[:kept] + [protocol.lag_notice("c", 40 - kept)])

    def test_queued_runWaitsBehindQueue(self) -> None:
        """
        While frames wait in the outbox, a run queues behind them even if
        the transport is no longer paused, so that order is kept.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        server.pauseProducing()
        self.registry.publish("c", [CounterEvent("c", 1)])
        assert server._outbox is not None
        server._outbox.paused = False
        self.registry.publish("c", [CounterEvent("c", 2)])
        self.assertEqual(server._outbox.pending, 2)
        server.resumeProducing()
        self.clock.advance(0)
        pump.flush()
        self.assertEqual(client.take(), [_result("c", 1), _result("c", 2)])

    def test_lag_countPerSource(self) -> None:
        """
        Drops are counted per source, and each source gets its own
        C{LAG} notice after the drain.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "d"})
        server.pauseProducing()
        for n in range(30):
            self.registry.publish("c", [CounterEvent("c", n)])
            self.registry.publish("d", [CounterEvent("d", n)])
        payloads = [_result(source, n) for n in range(30) for source in "cd"]
        kept = self.kept(payloads)
        # Events of both sources grow with n, so once one is dropped all
        # later ones are too; notices come in the order of the first drop.
        dropped: dict[str, int] = {}
        for payload in payloads[kept:]:
            source = "c" if b'"sourceId":"c"' in payload else "d"
            dropped[source] = dropped.get(source, 0) + 1
        self.assertEqual(set(dropped), {"c", "d"})
        server.resumeProducing()
        pump.flush()
        self.assertEqual(
            client.take(),
            payloads[:kept] + [protocol.lag_notice(source, count) for source, count in dropped.items()],
        )

    def test_lag_onlyOncePerDrain(self) -> None:
        """
        The drop counts start again from zero after the notice: a later
        drain without drops sends no notice.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        server.pauseProducing()
        self.registry.publish("c", [CounterEvent("c", n) for n in range(40)])
        server.resumeProducing()
        pump.flush()
        client.take()
        server.pauseProducing()
        self.registry.publish("c", [CounterEvent("c", 99)])
        server.resumeProducing()
        pump.flush()
        self.assertEqual(client.take(), [_result("c", 99)])

    def test_replies_neverDroppedOrderKept(self) -> None:
        """
        Replies are queued even when the outbox is over budget, in order
        with the events that were kept; events after them are still
        dropped and counted.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        server.pauseProducing()
        payloads = [_result("c", n) for n in range(30)]
        self.registry.publish("c", [CounterEvent("c", n) for n in range(30)])
        kept = self.kept(payloads)
        self.assertEqual(self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "d"}), [])
        self.assertEqual(self.send(client, pump, {"type": "UNSUBSCRIBE", "sourceId": "zz"}), [])
        self.registry.publish("c", [CounterEvent("c", n) for n in range(30, 35)])
        self.assertGreater(server.pending_bytes, BUDGET - 100)
        server.resumeProducing()
        pump.flush()
        self.assertEqual(
            client.take(),
            payloads[:kept]
            + [
                protocol.subscribe_ok("d"),
                protocol.command_error("UNSUBSCRIBE", "zz", "not subscribed to this source"),
                protocol.lag_notice("c", 35 - kept),
            ],
        )
        self.assertEqual(server.state, server.STATE_OPEN)

    def test_pull_droppedByOutboxCountsTowardLag(self) -> None:
        """
        A pull event that the outbox drops has spent its credit, and is
        counted in the C{LAG} notice sent after the drain.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c", "mode": "pull"})
        self.assertEqual(
            self.send(client, pump, {"type": "REQUEST", "sourceId": "c", "n": 100}), [protocol.request_ok("c", 100)]
        )
        server.pauseProducing()
        payloads = [_result("c", n) for n in range(40)]
        self.registry.publish("c", [CounterEvent("c", n) for n in range(40)])
        kept = self.kept(payloads)
        server.resumeProducing()
        pump.flush()
        self.assertEqual(client.take(), payloads[:kept] + [protocol.lag_notice("c", 40 - kept)])
        self.assertEqual(
            self.send(client, pump, {"type": "REQUEST", "sourceId": "c", "n": 1}), [protocol.request_ok("c", 61)]
        )

    def test_pull_bufferedDeliveryRespectsBudget(self) -> None:
        """
        Buffered pull events delivered by C{REQUEST} while the connection
        is paused go through the outbox like any event; the C{REQUEST_OK}
        reply is never dropped and follows them.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c", "mode": "pull"})
        self.registry.publish("c", [CounterEvent("c", n) for n in range(5)])
        server.pauseProducing()
        self.assertEqual(self.send(client, pump, {"type": "REQUEST", "sourceId": "c", "n": 2}), [])
        server.resumeProducing()
        pump.flush()
        self.assertEqual(client.take(), [_result("c", 0), _result("c", 1), protocol.request_ok("c", 0)])

    def test_slowTimer_startedOnFirstDrop(self) -> None:
        """
        The slow-client timer starts when the first event is dropped, for
        C{slow_client_timeout_s}, and further drops do not restart it.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        server.pauseProducing()
        payloads = [_result("c", n) for n in range(40)]
        kept = self.kept(payloads)
        self.registry.publish("c", [CounterEvent("c", n) for n in range(kept)])
        self.assertIsNone(server._slow_timer)
        self.clock.advance(1)
        self.registry.publish("c", [CounterEvent("c", kept)])
        timer = server._slow_timer
        assert timer is not None
        self.assertEqual(timer.getTime(), self.clock.seconds() + SLOW_TIMEOUT)
        self.clock.advance(1)
        self.registry.publish("c", [CounterEvent("c", kept + 1)])
        self.assertIs(server._slow_timer, timer)
        self.assertTrue(timer.active())

    def test_slowTimer_cancelledOnDrain(self) -> None:
        """
        A connection that drains its outbox before the timeout is not
        closed: the timer is cancelled.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        server.pauseProducing()
        self.registry.publish("c", [CounterEvent("c", n) for n in range(40)])
        timer = server._slow_timer
        assert timer is not None
        self.clock.advance(SLOW_TIMEOUT - 1)
        server.resumeProducing()
        self.assertFalse(timer.active())
        self.assertIsNone(server._slow_timer)
        self.clock.advance(SLOW_TIMEOUT * 2)
        pump.flush()
        self.assertEqual(server.state, server.STATE_OPEN)
        self.assertIsNone(client.close_info)

    def test_slowTimer_notCancelledByPartialDrain(self) -> None:
        """
        A resume that the transport pauses again before the outbox has
        drained leaves the timer running.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        server.pauseProducing()
        self.registry.publish("c", [CounterEvent("c", n) for n in range(40)])
        timer = server._slow_timer
        assert timer is not None
        transport = server.transport
        assert transport is not None
        write = transport.write

        def write_then_pause(data: bytes) -> None:
            write(data)
            server.pauseProducing()

        self.patch(transport, "write", write_then_pause)
        server.resumeProducing()
        self.assertGreater(server.pending_bytes, 0)
        self.assertTrue(timer.active())

    def test_slowTimer_expiryClosesWith1008(self) -> None:
        """
        A connection still over budget when the timer fires is closed with
        code 1008 and a reason; its outbox is released at once, and the
        close frame goes ahead of anything that was queued.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        server.pauseProducing()
        self.registry.publish("c", [CounterEvent("c", n) for n in range(40)])
        self.clock.advance(SLOW_TIMEOUT)
        self.assertEqual(server.pending_bytes, 0)
        self.assertEqual(server.state, server.STATE_CLOSING)
        pump.flush()
        self.assertEqual(client.take(), [])
        assert client.close_info is not None
        self.assertEqual(client.close_info[1:], (CLOSE_POLICY_VIOLATION, SLOW_REASON))
        self.assertEqual(self.factory.connections, set())
        self.assertEqual(self.registry.subscriber_count("c"), 0)

    def test_slowTimer_unresponsivePeerAborted(self) -> None:
        """
        If the slow client never answers the close frame, the TCP
        connection is aborted after Autobahn's close handshake timeout.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        transport = server.transport
        assert transport is not None
        aborted = []
        abort = transport.abortConnection  # type: ignore[attr-defined]
        self.patch(transport, "abortConnection", lambda: (aborted.append(True), abort()))
        server.pauseProducing()
        self.registry.publish("c", [CounterEvent("c", n) for n in range(40)])
        self.clock.advance(SLOW_TIMEOUT)
        self.assertEqual(aborted, [])
        # The client reads nothing (no pump): after the close handshake
        # timeout the server gives up on it.
        self.clock.advance(self.factory.closeHandshakeTimeout + 0.5)
        self.assertEqual(aborted, [True])
        pump.flush()
        self.assertEqual(self.factory.connections, set())

    def test_slowTimer_cancelledOnClose(self) -> None:
        """
        A connection that goes away while its timer runs leaves no timer
        behind.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        server.pauseProducing()
        self.registry.publish("c", [CounterEvent("c", n) for n in range(40)])
        timer = server._slow_timer
        assert timer is not None
        client.sendClose(1000)
        pump.flush()
        self.assertFalse(timer.active())
        self.assertEqual(self.factory.connections, set())

    def test_overflow_unreadRepliesClose(self) -> None:
        """
        A client that keeps sending commands without reading the replies is
        closed with 1008 once they pass twice the budget, instead of
        holding them without bound.
        """
        client, server, pump = self.connect()
        server.pauseProducing()
        reply = protocol.command_error("UNSUBSCRIBE", "zz", "not subscribed to this source")
        limit = 2 * BUDGET
        for _ in range(limit // _size(reply) + 5):
            client.sendMessage(json.dumps({"type": "UNSUBSCRIBE", "sourceId": "zz"}).encode(), isBinary=False)
        pump.flush()
        self.assertEqual(client.take(), [])
        assert client.close_info is not None
        self.assertEqual(
            client.close_info[1:], (CLOSE_POLICY_VIOLATION, "client too slow: too many unread replies and notices")
        )
        self.assertEqual(self.factory.connections, set())

    def test_close_releasesOutbox(self) -> None:
        """
        When a stalled connection closes, what waited in its outbox is
        released.
        """
        client, server, pump = self.connect()
        server.pauseProducing()
        frame = Frame(b'{"type":"RESULT"}', "c")
        server.send_frame(frame)
        self.assertEqual(server.pending_bytes, _size(frame.payload))
        queued = weakref.ref(frame)
        del frame
        gc.collect()
        self.assertIsNotNone(queued())
        client.sendClose(1000)
        pump.flush()
        gc.collect()
        self.assertIsNone(queued())
        self.assertIsNone(server._outbox)
        self.assertEqual(server.pending_bytes, 0)

    def test_close_queuedEventsCountedAsDropped(self) -> None:
        """
        Events still in the outbox when the connection closes, from either
        side, move from delivered to dropped (C{closed}).
        """
        for closer in ("server", "client"):
            self.setUpWebSocket(SubscriberConfig(max_pending_bytes=BUDGET))
            client, server, pump = self.connect()
            self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
            server.pauseProducing()
            self.registry.publish("c", [CounterEvent("c", n) for n in range(3)])
            stats = self.registry.stats
            self.assertEqual(stats.delivered["c"], 3)
            if closer == "server":
                server.close_with(CLOSE_GOING_AWAY, "bye")
            else:
                server.connectionLost(Failure(ConnectionDone()))
            self.assertEqual((stats.delivered["c"], stats.dropped["c", "closed"]), (0, 3), closer)

    def test_sendFrame_afterCloseIgnored(self) -> None:
        """
        Once the closing handshake has started nothing more is queued.
        """
        client, server, pump = self.connect()
        server.pauseProducing()
        server.close_with(CLOSE_GOING_AWAY, "bye")
        server.send_frame(Frame(b"{}", "c"))
        server.send_frame(Frame(b"{}"))
        self.assertEqual(server.pending_bytes, 0)


class KeepaliveTests(WebSocketTestMixin, SynchronousTestCase):
    """
    WebSocket pings find peers that stopped answering.
    """

    def setUp(self) -> None:
        self.setUpWebSocket(server_config=ServerConfig(listen="tcp:0", ping_interval_s=2, ping_timeout_s=1))

    def test_factory_pingOptions(self) -> None:
        """
        C{server.ping_interval_s} and C{server.ping_timeout_s} become
        Autobahn's auto-ping options.
        """
        self.assertEqual((self.factory.autoPingInterval, self.factory.autoPingTimeout), (2, 1))

    def test_factory_pingsOff(self) -> None:
        """
        C{ping_interval_s: 0} turns pings off; without a server
        configuration there are none either.
        """
        off = KiwiServerFactory(self.registry, self.clock, ServerConfig(listen="tcp:0", ping_interval_s=0))
        self.assertEqual(off.autoPingInterval, 0)
        self.assertEqual(KiwiServerFactory(self.registry, self.clock).autoPingInterval, 0)

    def test_ping_answeredKeepsConnection(self) -> None:
        """
        A client that answers pings stays connected.
        """
        client, server, pump = self.connect()
        for _ in range(10):
            self.clock.advance(1)
            pump.flush()
        self.assertEqual(server.state, server.STATE_OPEN)
        self.assertEqual(self.factory.connections, {server})

    def test_ping_silentPeerDropped(self) -> None:
        """
        A peer that stops answering (a half-open connection: nothing is
        pumped) is dropped after the ping interval and timeout, and its
        connection is forgotten.
        """
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        transport = server.transport
        assert transport is not None
        self.clock.advance(2.5)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.5)
        self.assertTrue(transport.disconnecting)
        pump.flush()
        self.assertEqual(self.factory.connections, set())
        self.assertEqual(self.registry.subscriber_count("c"), 0)
        self.assertIsNone(server._outbox)


class HttpTests(WebSocketTestMixin, SynchronousTestCase):
    """
    C{/health}, the C{426} reply and the site as a whole.
    """

    def setUp(self) -> None:
        self.setUpWebSocket()

    def test_healthStatus_counts(self) -> None:
        """
        C{health_status} reports every source's status with its subscriber
        count, and the number of open connections.
        """
        self.registry.subscribe(_Subscriber(), "c", "push")
        self.connect()
        status = health_status(self.registry, self.factory)
        self.assertEqual(status["status"], "ok")
        self.assertEqual(status["connections"], 1)
        self.assertEqual(
            status["sources"],
            {
                "c": {"type": "counter", "state": "running", "next": 1, "subscribers": 1},
                "d": {"type": "counter", "state": "running", "next": 1, "subscribers": 0},
            },
        )
        self.assertEqual(json.loads(json.dumps(status)), status)

    def test_health_renders(self) -> None:
        """
        C{GET /health} answers compact JSON, uncached.
        """
        resource = HealthResource(lambda: {"status": "ok", "sources": {}})
        request = DummyRequest([b""])
        body = resource.render(request)
        self.assertEqual(body, b'{"status":"ok","sources":{}}\n')
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])

    def test_entry_plainGet(self) -> None:
        """
        A plain C{GET /} gets C{426 Upgrade Required}.
        """
        request = DummyRequest([b""])
        body = _WebSocketEntry(self.factory).render(request)
        self.assertEqual(request.responseCode, 426)
        self.assertEqual(request.responseMessage, b"Upgrade Required")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"upgrade"), [b"websocket"])
        self.assertIn(b"WebSocket", body)

    def test_site_healthOverHttp(self) -> None:
        """
        Through the site, C{GET /health} answers 200 and the status JSON.
        """
        response = self.http(build_site(self.factory, healthcheck=True), b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = response.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertIn(b"application/json", head.lower())
        self.assertEqual(json.loads(body)["sources"]["c"]["subscribers"], 0)

    def test_site_rootOverHttp(self) -> None:
        """
        Through the site, a plain C{GET /} answers 426.
        """
        response = self.http(build_site(self.factory, healthcheck=True), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(response.startswith(b"HTTP/1.1 426 Upgrade Required\r\n"), response)
        self.assertIn(b"\r\nUpgrade: websocket\r\n", response)

    def test_site_healthDisabled(self) -> None:
        """
        Without the healthcheck, C{/health} is not found.
        """
        response = self.http(build_site(self.factory, healthcheck=False), b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(response.startswith(b"HTTP/1.1 404 "), response)

    def test_site_websocketUpgrade(self) -> None:
        """
        A WebSocket handshake at C{/} through the site reaches Kiwi's
        protocol.
        """
        site = self.site(build_site(self.factory, healthcheck=True))
        client, pump = self.connect_protocol(site.buildProtocol(CLIENT_ADDRESS))
        self.assertTrue(client.opened)
        self.assertEqual(len(self.factory.connections), 1)
        # The protocol replaced the HTTP channel as the transport's producer.
        server = next(iter(self.factory.connections))
        self.assertIs(server.transport.producer, server)  # type: ignore[union-attr]
        self.assertEqual(self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"}), [protocol.subscribe_ok("c")])

    def site(self, site: Site) -> Site:
        """
        Make C{site} keep its timers on the test clock.
        """
        site.reactor = self.clock
        return site

    def http(self, site: Site, request: bytes) -> bytes:
        """
        Send one raw HTTP request through C{site} and return the response.
        """
        channel = self.site(site).buildProtocol(CLIENT_ADDRESS)
        transport = iosim.FakeTransport(channel, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=CLIENT_ADDRESS)
        channel.makeConnection(transport)
        channel.dataReceived(request)
        response = transport.getOutBuffer()
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        return response


@implementer(ISubscriber)
class _Subscriber:
    conn_id = "x"

    def send_frame(self, frame: Frame) -> None:
        pass

    def send_frames(self, run: FrameRun) -> None:
        pass


class _FakeConnection:
    """
    Stands in for a connection in L{wait_closed} tests.
    """

    def __init__(self, connections: set[Any]) -> None:
        self.connections = connections
        self.dropped = False

    def dropConnection(self, abort: bool = False) -> None:
        self.dropped = abort


class WaitClosedTests(SynchronousTestCase):
    """
    L{wait_closed} waits for connections to go, up to a timeout.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.patch(txaio.config, "loop", self.clock)
        self.factory = KiwiServerFactory(Registry(), self.clock)

    def wait(self, timeout: float) -> Deferred[None]:
        """
        Start waiting.
        """
        return Deferred.fromCoroutine(wait_closed(self.factory, self.clock, timeout))

    def test_waitClosed_noConnections(self) -> None:
        """
        Without connections it returns at once.
        """
        self.assertIsNone(self.successResultOf(self.wait(5)))

    def test_waitClosed_connectionsLeave(self) -> None:
        """
        It returns once the last connection has gone.
        """
        connection = _FakeConnection(self.factory.connections)
        self.factory.connections.add(connection)  # type: ignore[arg-type]
        d = self.wait(5)
        self.clock.advance(1)
        self.assertNoResult(d)
        self.factory.connections.clear()
        self.clock.advance(0.05)
        self.successResultOf(d)
        self.assertFalse(connection.dropped)

    def test_waitClosed_timeoutDrops(self) -> None:
        """
        Connections still there after the timeout are aborted.
        """
        connection = _FakeConnection(self.factory.connections)
        self.factory.connections.add(connection)  # type: ignore[arg-type]
        d = self.wait(1)
        self.clock.pump([0.05] * 25)
        self.successResultOf(d)
        self.assertTrue(connection.dropped)
        self.assertEqual(self.factory.connections, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])
