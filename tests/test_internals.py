"""
Tests for L{kiwi._internals}: straight to the socket when Twisted's
buffer is empty, through C{transport.write} otherwise; framed messages
shared between Autobahn connections.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import abstract
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from kiwi import _internals
from tests.test_ws import WebSocketTestMixin


class FakeTCPTransport(abstract.FileDescriptor):
    """
    A file descriptor transport around a real socket that records what
    goes through C{write} instead of buffering it.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(reactor=MemoryReactor())
        self.socket = sock
        self.connected = 1
        self.buffered: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.buffered.append(data)

    def fileno(self) -> int:
        return self.socket.fileno()


class ErrorSocket(socket.socket):
    """
    A socket whose C{send} fails with C{error}.
    """

    error: OSError

    def send(self, data: Any, flags: int = 0) -> int:
        raise self.error


class DirectWriteTests(SynchronousTestCase):
    """
    L{_internals.write} in each case it meets.
    """

    def pair(self) -> tuple[socket.socket, socket.socket]:
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        left.setblocking(False)
        right.setblocking(False)
        return left, right

    def test_emptyBuffer_straightToSocket(self) -> None:
        """
        With nothing buffered, the data goes to the socket at once and
        nothing passes through C{transport.write}.
        """
        left, right = self.pair()
        transport = FakeTCPTransport(left)
        self.assertEqual(_internals.write(transport, b"hello"), 5)
        self.assertEqual(transport.buffered, [])
        self.assertEqual(right.recv(100), b"hello")

    def test_partialSend_restBuffered(self) -> None:
        """
        What the kernel does not take is handed to C{transport.write}, in
        order, so nothing is lost.
        """
        left, right = self.pair()
        left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport = FakeTCPTransport(left)
        data = bytes(range(256)) * 8192
        sent = _internals.write(transport, data)
        self.assertTrue(0 < sent < len(data), sent)
        self.assertEqual(transport.buffered, [data[sent:]])
        received = b""
        while len(received) < sent:
            received += right.recv(65536)
        self.assertEqual(received, data[:sent])

    def test_eagain_allBuffered(self) -> None:
        """
        C{EAGAIN} hands everything to C{transport.write}.
        """
        sock = ErrorSocket()
        self.addCleanup(sock.close)
        sock.error = BlockingIOError(errno.EAGAIN, "try again")
        transport = FakeTCPTransport(sock)
        self.assertEqual(_internals.write(transport, b"data"), 0)
        self.assertEqual(transport.buffered, [b"data"])

    def test_reset_leftToTwisted(self) -> None:
        """
        A reset peer is not handled here: the data goes to
        C{transport.write}, whose own write path meets the error and closes
        the connection the usual way; nothing is raised.
        """
        sock = ErrorSocket()
        self.addCleanup(sock.close)
        sock.error = ConnectionResetError(errno.ECONNRESET, "reset")
        transport = FakeTCPTransport(sock)
        self.assertEqual(_internals.write(transport, b"data"), 0)
        self.assertEqual(transport.buffered, [b"data"])

    def test_bufferNotEmpty_keepsOrder(self) -> None:
        """
        When Twisted already buffers data for the socket, new data goes
        behind it through C{transport.write}.
        """
        left, right = self.pair()
        transport = FakeTCPTransport(left)
        transport._tempDataBuffer.append(b"earlier")
        self.assertEqual(_internals.write(transport, b"later"), 0)
        self.assertEqual(transport.buffered, [b"later"])
        self.assertRaises(BlockingIOError, right.recv, 100)

    def test_notPlainTCP_fallsBack(self) -> None:
        """
        Any other transport (TLS, a wrapper, a test transport) is written
        through C{write}.
        """
        transport = StringTransport()
        self.assertEqual(_internals.write(transport, b"data"), 0)
        self.assertEqual(transport.value(), b"data")

    def test_disconnecting_fallsBack(self) -> None:
        """
        A transport that is closing is left to Twisted.
        """
        left, _ = self.pair()
        transport = FakeTCPTransport(left)
        transport.disconnecting = True
        self.assertEqual(_internals.write(transport, b"data"), 0)
        self.assertEqual(transport.buffered, [b"data"])


class SharedFramesTests(WebSocketTestMixin, SynchronousTestCase):
    """
    The Autobahn attributes that L{_internals.shares_framed_bytes} and
    L{_internals.framed_bytes} read exist and mean what they assume: an
    Autobahn upgrade that renamed them would otherwise go unnoticed, since
    a missing attribute reads as "no compression, nothing queued".
    """

    def setUp(self) -> None:
        self.setUpWebSocket()

    def test_attributesExist(self) -> None:
        """
        An open connection has C{_perMessageCompress} and C{send_queue}, and
        shares framed bytes while neither is in use.
        """
        client, server, pump = self.connect()
        self.assertIsNone(server._perMessageCompress)
        self.assertEqual(len(server.send_queue), 0)
        self.assertTrue(_internals.shares_framed_bytes(server))

    def test_queuedWrites_notShared(self) -> None:
        """
        While Autobahn has writes of its own queued, framed bytes would
        overtake them: not shared.
        """
        client, server, pump = self.connect()
        server.send_queue.append((b"x", False))
        self.assertFalse(_internals.shares_framed_bytes(server))
        server.send_queue.clear()

    def test_compressing_notShared(self) -> None:
        """
        A connection that compresses needs its own frames.
        """
        client, server, pump = self.connect()
        server._perMessageCompress = object()
        self.assertFalse(_internals.shares_framed_bytes(server))
        server._perMessageCompress = None

    def test_framedBytes_areTheWireFrame(self) -> None:
        """
        L{_internals.framed_bytes} is the complete frame: written to the
        transport, the client receives the message.
        """
        client, server, pump = self.connect()
        prepared = self.factory.prepareMessage(b'{"a":1}', isBinary=False)
        data = _internals.framed_bytes(prepared)
        self.assertIsInstance(data, bytes)
        assert server.transport is not None
        server.transport.write(data)
        pump.flush()
        self.assertEqual(client.take(), [b'{"a":1}'])
