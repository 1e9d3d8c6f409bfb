"""
Limits against hostile clients, below the HTTP and WebSocket layers.

L{ConnectionGuard} wraps the site's factory:

  - it counts open connections, in total and per client address. A
    connection over C{server.max_connections} gets C{503 Service
    Unavailable}, one over C{server.max_connections_per_ip} C{429 Too Many
    Requests}, as soon as its request has arrived, and is closed; it never
    reaches the site;
  - every connection must get its first answer (the WebSocket C{101}, or
    any HTTP response) within C{server.handshake_timeout_s} of being
    accepted, or it is dropped. With TLS the guard sits inside the TLS
    layer, so the TLS handshake counts too. This covers clients that
    connect and say nothing, and those that send their request a byte at a
    time.

L{TokenBucket} is the per-connection command rate limit.
"""

from __future__ import annotations

from collections.abc import Callable

from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocolFactory,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from kiwi.logs import logger

REFUSAL_BACKLOG = 64
"""
Connections being refused at once (waiting for their request to be read);
beyond that, new connections over a limit are closed without an answer.
"""

MAX_REQUEST_HEAD = 16 * 1024


def _host(address: IAddress) -> str | None:
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


def _peer(address: IAddress) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


class TokenBucket:
    """
    Allows C{rate} events per second on average and C{burst} at once.
    """

    def __init__(self, rate: float, burst: int, clock: IReactorTime) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock.seconds()

    def take(self) -> bool:
        """
        Spend one token if there is one.
        """
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class GuardedConnection(ProtocolWrapper):
    """
    One accepted connection: counted, and dropped if it is not answered in
    time.
    """

    factory: ConnectionGuard
    _deadline: IDelayedCall | None = None
    answered = False
    host: str | None = None

    def makeConnection(self, transport: Any) -> None:
        self._deadline = self.factory.clock.callLater(self.factory.handshake_timeout_s, self._too_slow)
        super().makeConnection(transport)

    def mark_answered(self) -> None:
        """
        The connection got its first answer: the deadline no longer applies.
        """
        self.answered = True
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def write(self, data: bytes) -> None:
        if not self.answered:
            self.mark_answered()
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        if not self.answered:
            self.mark_answered()
        super().writeSequence(data)

    def _too_slow(self) -> None:
        self._deadline = None
        self.factory.log.info(
            "dropped {peer}: no handshake within {timeout}s",
            peer=_peer(self.getPeer()),
            timeout=self.factory.handshake_timeout_s,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        super().connectionLost(reason)


class _Refusal(Protocol):
    """
    Reads a connection's request head, answers it with a refusal and
    closes; dropped if the request does not arrive in time.
    """

    def __init__(self, guard: ConnectionGuard, status: int, phrase: str, body: str) -> None:
        self._guard = guard
        body_bytes = body.encode("utf-8")
        self._response = (
            f"HTTP/1.1 {status} {phrase}\r\n"
            "Server: Kiwi\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body_bytes)}\r\n"
            "Retry-After: 10\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii") + body_bytes
        self._received = b""
        self._done = False
        self._deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._guard.refusing += 1
        self._deadline = self._guard.clock.callLater(self._guard.handshake_timeout_s, self._abort)

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        self._received += data
        if b"\r\n\r\n" in self._received or len(self._received) > MAX_REQUEST_HEAD:
            self._done = True
            self._received = b""
            assert self.transport is not None
            self.transport.write(self._response)
            self.transport.loseConnection()

    def _abort(self) -> None:
        self._deadline = None
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._guard.refusing -= 1
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None


@implementer(IProtocolNegotiationFactory)
class ConnectionGuard(WrappingFactory):
    """
    Wraps a protocol factory (the site) with connection limits and the
    handshake deadline.

    Under TLS it passes on the site's ALPN protocols (C{http/1.1}): Twisted's
    TLS layer asks the factory it wraps, and without an answer it fails the
    handshake of every client that offers ALPN (every browser).

    @ivar count: Connections open now (refused ones excluded).
    @ivar per_host: Open connections per client address.
    """

    protocol = GuardedConnection
    log = logger()
    noisy = False

    def __init__(
        self,
        wrapped: IProtocolFactory,
        clock: IReactorTime,
        max_connections: int,
        max_per_host: int | None,
        handshake_timeout_s: float,
        count_refusal: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(wrapped)
        self._count_refusal = count_refusal or (lambda reason: None)
        self.clock = clock
        self.max_connections = max_connections
        self.max_per_host = max_per_host
        self.handshake_timeout_s = handshake_timeout_s
        self.count = 0
        self.per_host: dict[str, int] = {}
        self.refusing = 0

    def acceptableProtocols(self) -> list[bytes]:
        """
        The ALPN protocols of the wrapped factory (C{http/1.1} by default).
        """
        inner = IProtocolNegotiationFactory(self.wrappedFactory, None)
        return list(inner.acceptableProtocols()) if inner is not None else [b"http/1.1"]

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        host = _host(addr) if addr is not None else None
        refusal: tuple[int, str, str] | None = None
        if self.count >= self.max_connections:
            refusal = (503, "Service Unavailable", "503 Service Unavailable: too many connections\n")
            what = f"server.max_connections ({self.max_connections}) reached"
        elif self.max_per_host is not None and host is not None and self.per_host.get(host, 0) >= self.max_per_host:
            refusal = (429, "Too Many Requests", "429 Too Many Requests: too many connections from your address\n")
            what = f"server.max_connections_per_ip ({self.max_per_host}) reached"
        if refusal is None:
            return super().buildProtocol(addr)
        if self.refusing >= REFUSAL_BACKLOG:
            return None
        self.log.warn("refused a connection from {peer}: {limit}", peer=_peer(addr) if addr is not None else "?", limit=what)
        self._count_refusal("too many connections" if refusal[0] == 503 else "too many connections from address")
        return _Refusal(self, *refusal)

    def registerProtocol(self, p: GuardedConnection) -> None:
        super().registerProtocol(p)
        self.count += 1
        p.host = host = _host(p.getPeer())
        if host is not None:
            self.per_host[host] = self.per_host.get(host, 0) + 1

    def unregisterProtocol(self, p: GuardedConnection) -> None:
        super().unregisterProtocol(p)
        self.count -= 1
        host = p.host
        if host is not None:
            left = self.per_host.get(host, 0) - 1
            if left > 0:
                self.per_host[host] = left
            else:
                self.per_host.pop(host, None)
