"""
Tests for L{kiwi.coalesce}: one joined write per connection per turn.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kiwi import protocol
from kiwi.coalesce import Coalescer
from kiwi.config import ServerConfig
from kiwi.events import CounterEvent
from kiwi.registry import Frame
from tests.test_ws import WebSocketTestMixin


class FakeConnection:
    """
    Counts how often it was asked to flush.
    """

    def __init__(self) -> None:
        self.flushes = 0

    def flush_batch(self) -> None:
        self.flushes += 1


class CoalescerTests(SynchronousTestCase):
    """
    L{Coalescer} flushes every marked connection once, on the next turn.
    """

    def test_mark_flushedNextTurn(self) -> None:
        """
        Marked connections are flushed when the clock turns, once each,
        and one delayed call serves them all.
        """
        clock = Clock()
        coalescer = Coalescer(clock)
        first, second = FakeConnection(), FakeConnection()
        coalescer.mark(first)
        coalescer.mark(second)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual((first.flushes, second.flushes), (0, 0))
        clock.advance(0)
        self.assertEqual((first.flushes, second.flushes), (1, 1))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_flush_now(self) -> None:
        """
        C{flush} writes at once and cancels the pending turn.
        """
        clock = Clock()
        coalescer = Coalescer(clock)
        connection = FakeConnection()
        coalescer.mark(connection)
        coalescer.flush()
        self.assertEqual(connection.flushes, 1)
        self.assertEqual(clock.getDelayedCalls(), [])


class JoinedWriteTests(WebSocketTestMixin, SynchronousTestCase):
    """
    A connection writes the frames of one turn with one transport write.
    """

    def setUp(self) -> None:
        self.setUpWebSocket(server_config=ServerConfig(listen="", coalesce_writes=True))

    def test_frames_oneWritePerTurn(self) -> None:
        """
        Several frames handed over in one turn reach the transport as one
        write, after the turn, in order.
        """
        client, server, pump = self.connect()
        assert server.transport is not None
        writes: list[bytes] = []
        original = server.transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            original(data)

        self.patch(server.transport, "write", write)
        for count in range(5):
            server.send_frame(Frame(protocol.encode_result(CounterEvent("c", count)), "c"))
        self.assertEqual(writes, [])
        self.clock.advance(0)
        self.assertEqual(len(writes), 1)
        pump.flush()
        counts = [json.loads(m)["data"]["count"] for m in client.take()]
        self.assertEqual(counts, [0, 1, 2, 3, 4])

    def test_close_flushesFirst(self) -> None:
        """
        Frames of the turn go out before a close frame the server sends.
        """
        client, server, pump = self.connect()
        server.send_frame(Frame(protocol.encode_result(CounterEvent("c", 7)), "c"))
        server.close_with(1001, "going away")
        pump.flush()
        self.assertEqual([json.loads(m)["data"]["count"] for m in client.take()], [7])

    def test_switchedOff_writesAtOnce(self) -> None:
        """
        With C{server.coalesce_writes: false}, frames are written at once.
        """
        self.factory.apply_config(ServerConfig(listen="", coalesce_writes=False), self.factory.subscriber_config)
        client, server, pump = self.connect()
        server.send_frame(Frame(protocol.encode_result(CounterEvent("c", 1)), "c"))
        pump.flush()
        self.assertEqual(len(client.take()), 1)


class DeflateTests(WebSocketTestMixin, SynchronousTestCase):
    """
    permessage-deflate is off unless C{server.permessage_deflate} is set.
    """

    def offer(self) -> list[object]:
        from autobahn.websocket.compress import PerMessageDeflateOffer

        return [PerMessageDeflateOffer()]

    def test_default_declined(self) -> None:
        """
        By default a client's deflate offer is declined.
        """
        self.setUpWebSocket(server_config=ServerConfig(listen=""))
        self.assertIsNone(self.factory.perMessageCompressionAccept(self.offer()))

    def test_configured_accepted(self) -> None:
        """
        With C{permessage_deflate: true} the offer is accepted, and frames
        still reach the client.
        """
        self.setUpWebSocket(server_config=ServerConfig(listen="", permessage_deflate=True))
        self.assertIsNotNone(self.factory.perMessageCompressionAccept(self.offer()))

    def test_configured_runsCompressedPerFrame(self) -> None:
        """
        A connection that compresses gets each event of a published batch
        as a message of its own (compressed for it alone), in order.
        """
        from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponseAccept

        self.setUpWebSocket(server_config=ServerConfig(listen="", permessage_deflate=True))
        server = self.factory.buildProtocol(None)
        client, pump = self.connect_protocol(
            server,
            {
                "perMessageCompressionOffers": [PerMessageDeflateOffer()],
                "perMessageCompressionAccept": PerMessageDeflateResponseAccept,
            },
        )
        self.assertIsNotNone(server._perMessageCompress)
        client.sendMessage(b'{"type":"SUBSCRIBE","sourceId":"c"}')
        pump.flush()
        client.take()
        self.registry.publish("c", [CounterEvent("c", n) for n in (1, 2, 3)])
        self.clock.advance(0)
        pump.flush()
        self.assertEqual([json.loads(m)["data"]["count"] for m in client.take()], [1, 2, 3])
