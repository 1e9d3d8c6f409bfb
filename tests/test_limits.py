"""
Tests for L{kiwi.limits}: the connection guard (limits, refusals, the
handshake deadline) over in-memory transports, and the token bucket.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from kiwi.limits import REFUSAL_BACKLOG, ConnectionGuard, TokenBucket

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"


class _Echo(Protocol):
    """
    Answers every chunk it receives, like a server that responds.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"answer")


def _address(host: str, port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


class ConnectionGuardTests(SynchronousTestCase):
    """
    L{ConnectionGuard} counts, refuses and times out connections.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.guard = ConnectionGuard(Factory.forProtocol(_Echo), self.clock, 3, 2, 10.0)

    def connect(self, host: str = "127.0.0.1") -> tuple[Protocol, StringTransport]:
        """
        Accept a connection from C{host}.
        """
        address = _address(host)
        protocol = self.guard.buildProtocol(address)
        assert protocol is not None
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def close(self, protocol: Protocol) -> None:
        """
        The connection went away.
        """
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_guard_passesThrough(self) -> None:
        """
        Under the limits, connections reach the wrapped factory's protocol
        and are counted per address.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(REQUEST)
        self.assertEqual(transport.value(), b"answer")
        self.assertEqual((self.guard.count, self.guard.per_host), (1, {"127.0.0.1": 1}))
        self.close(protocol)
        self.assertEqual((self.guard.count, self.guard.per_host), (0, {}))

    def test_guard_perAddressLimit(self) -> None:
        """
        A third connection from one address gets 429 once its request has
        arrived, and is closed; other addresses still get through.
        """
        self.connect()
        self.connect()
        refused, transport = self.connect()
        self.assertEqual(transport.value(), b"")
        refused.dataReceived(REQUEST[:10])
        self.assertEqual(transport.value(), b"")
        refused.dataReceived(REQUEST[10:])
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), response)
        self.assertIn(b"\r\nConnection: close\r\n", response)
        self.assertTrue(response.endswith(b"too many connections from your address\n"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.guard.count, 2)
        other, other_transport = self.connect("127.0.0.2")
        other.dataReceived(REQUEST)
        self.assertEqual(other_transport.value(), b"answer")

    def test_guard_totalLimit(self) -> None:
        """
        Over C{max_connections}, connections get 503; once one closes, new
        ones get through again.
        """
        first, _ = self.connect("127.0.0.1")
        self.connect("127.0.0.2")
        self.connect("127.0.0.3")
        refused, transport = self.connect("127.0.0.4")
        refused.dataReceived(REQUEST)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.close(refused)
        self.close(first)
        accepted, transport = self.connect("127.0.0.4")
        accepted.dataReceived(REQUEST)
        self.assertEqual(transport.value(), b"answer")

    def test_guard_refusalBacklog(self) -> None:
        """
        When too many refused connections are waiting for their requests,
        further ones are closed without an answer.
        """
        for _ in range(2):
            self.connect()
        for _ in range(REFUSAL_BACKLOG):
            self.connect()
        self.assertIsNone(self.guard.buildProtocol(_address("127.0.0.1")))

    def test_guard_refusalTimesOut(self) -> None:
        """
        A refused connection that never sends its request is dropped at the
        handshake deadline.
        """
        self.connect()
        self.connect()
        refused, transport = self.connect()
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.close(refused)
        self.assertEqual(self.guard.refusing, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deadline_silentClient(self) -> None:
        """
        A client that says nothing is dropped after the handshake timeout.
        """
        protocol, transport = self.connect()
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_deadline_slowClient(self) -> None:
        """
        A client that trickles its request is dropped at the deadline too,
        however often it sends a byte.
        """
        protocol, transport = self.connect()
        for _ in range(20):
            self.clock.advance(0.5)
        self.assertTrue(transport.disconnecting)

    def test_deadline_answered(self) -> None:
        """
        Once the server has answered, the deadline no longer applies.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(REQUEST)
        self.clock.advance(100)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deadline_cancelledOnClose(self) -> None:
        """
        A connection that goes away leaves no timer behind.
        """
        protocol, transport = self.connect()
        self.close(protocol)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_guard_unlimitedPerAddress(self) -> None:
        """
        Without a per-address limit only the total applies.
        """
        guard = ConnectionGuard(Factory.forProtocol(_Echo), self.clock, 2, None, 10.0)
        for _ in range(2):
            protocol = guard.buildProtocol(_address("127.0.0.1"))
            assert protocol is not None
            protocol.makeConnection(StringTransport(peerAddress=_address("127.0.0.1")))
        self.assertEqual(guard.count, 2)
        refused = guard.buildProtocol(_address("127.0.0.1"))
        transport = StringTransport()
        assert refused is not None
        refused.makeConnection(transport)
        refused.dataReceived(REQUEST)
        self.assertIn(b" 503 ", transport.value())


class TokenBucketTests(SynchronousTestCase):
    """
    L{TokenBucket} allows a burst, then the rate.
    """

    def test_bucket_burstThenRate(self) -> None:
        """
        C{burst} events pass at once, then C{rate} per second.
        """
        clock = Clock()
        bucket = TokenBucket(10, 5, clock)
        self.assertEqual([bucket.take() for _ in range(6)], [True] * 5 + [False])
        clock.advance(0.1)
        self.assertEqual([bucket.take() for _ in range(2)], [True, False])
        clock.advance(100)
        self.assertEqual(sum(bucket.take() for _ in range(10)), 5)
