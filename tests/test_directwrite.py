"""
Tests for L{kiwi._directwrite}: straight to the socket when Twisted's
buffer is empty, through C{transport.write} otherwise.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import abstract
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from kiwi import _directwrite


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
    L{_directwrite.write} in each case it meets.
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
        self.assertEqual(_directwrite.write(transport, b"hello"), 5)
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
        sent = _directwrite.write(transport, data)
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
        self.assertEqual(_directwrite.write(transport, b"data"), 0)
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
        self.assertEqual(_directwrite.write(transport, b"data"), 0)
        self.assertEqual(transport.buffered, [b"data"])

    def test_bufferNotEmpty_keepsOrder(self) -> None:
        """
        When Twisted already buffers data for the socket, new data goes
        behind it through C{transport.write}.
        """
        left, right = self.pair()
        transport = FakeTCPTransport(left)
        transport._tempDataBuffer.append(b"earlier")
        self.assertEqual(_directwrite.write(transport, b"later"), 0)
        self.assertEqual(transport.buffered, [b"later"])
        self.assertRaises(BlockingIOError, right.recv, 100)

    def test_notPlainTCP_fallsBack(self) -> None:
        """
        Any other transport (TLS, a wrapper, a test transport) is written
        through C{write}.
        """
        transport = StringTransport()
        self.assertEqual(_directwrite.write(transport, b"data"), 0)
        self.assertEqual(transport.value(), b"data")

    def test_disconnecting_fallsBack(self) -> None:
        """
        A transport that is closing is left to Twisted.
        """
        left, _ = self.pair()
        transport = FakeTCPTransport(left)
        transport.disconnecting = True
        self.assertEqual(_directwrite.write(transport, b"data"), 0)
        self.assertEqual(transport.buffered, [b"data"])
