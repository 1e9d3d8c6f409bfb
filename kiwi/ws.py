"""
The WebSocket and HTTP face of Kiwi.

One L{KiwiServerProtocol} per client turns commands into registry calls and
registry frames into WebSocket messages. L{build_site} puts the WebSocket
endpoint at C{/} and C{GET /health} beside it, on one port.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.task import deferLater
from kiwi.logs import logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from kiwi import protocol
from kiwi.config import ServerConfig, SubscriberConfig
from kiwi.errors import ClientError
from kiwi.flow import Outbox
from kiwi.protocol import ProtocolError, Request as RequestCommand, Subscribe, Unsubscribe
from kiwi.registry import Frame, ISubscriber, Registry

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011

FRAME_OVERHEAD = 10
"""
Bytes a WebSocket frame header adds to a payload (at most), for budgets.
"""

_conn_ids = itertools.count(1)


@implementer(ISubscriber, IPushProducer)
class KiwiServerProtocol(WebSocketServerProtocol):
    """
    One client connection.

    Everything Kiwi sends goes through an L{Outbox} that the transport
    pauses and resumes (the protocol is the transport's push producer), so
    a client that reads slowly costs at most the outbox budget plus the
    transport's own buffer; see C{docs/flow-control.md}.

    Autobahn owns C{log}, so our logger is C{_log}. Every entry point that
    Autobahn calls catches everything: Autobahn mishandles what escapes.
    """

    _log = logger()
    factory: KiwiServerFactory

    conn_id = "-"
    peer_address = "-"
    _outbox: Outbox[Frame] | None = None
    _slow_timer: IDelayedCall | None = None

    def onConnect(self, request: ConnectionRequest) -> None:
        self.conn_id = f"c{next(_conn_ids)}"
        self.peer_address = request.peer
        self._log.debug("{conn_id} handshake from {peer}", conn_id=self.conn_id, peer=request.peer)

    def onOpen(self) -> None:
        try:
            self._log.info("{conn_id} connected from {peer}", conn_id=self.conn_id, peer=self.peer_address)
            self.factory.connections.add(self)
            self._outbox = Outbox(self.factory.subscriber_config.max_pending_bytes, self._write_frame)
            self._become_producer()
        except Exception:
            self._log.failure("{conn_id} failed opening", conn_id=self.conn_id)
            self.close_with(CLOSE_INTERNAL_ERROR, "internal error")

    def _become_producer(self) -> None:
        # Twisted Web's HTTP channel registered itself as the transport's
        # producer before the connection was handed to us.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)

    # IPushProducer: the transport's signals about its write buffer.

    def pauseProducing(self) -> None:
        if self._outbox is not None:
            self._outbox.pause()

    def resumeProducing(self) -> None:
        if self._outbox is None:
            return
        try:
            for source_id, count in self._outbox.resume().items():
                self._log.info(
                    "{conn_id} dropped {count} events of {source_id} while slow",
                    conn_id=self.conn_id,
                    count=count,
                    source_id=source_id,
                )
                self._outbox.put(Frame(protocol.lag_notice(source_id, count)), 64)
            if not self._outbox.over_budget and self._slow_timer is not None:
                self._slow_timer.cancel()
                self._slow_timer = None
        except Exception:
            self._log.failure("{conn_id} failed resuming", conn_id=self.conn_id)

    def stopProducing(self) -> None:
        pass

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            self._handle(payload, isBinary)
        except Exception:
            self._log.failure("{conn_id} failed handling a message", conn_id=self.conn_id)
            self.close_with(CLOSE_INTERNAL_ERROR, "internal error")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        try:
            if self._slow_timer is not None and self._slow_timer.active():
                self._slow_timer.cancel()
            self._slow_timer = None
            self._outbox = None
            self.factory.connections.discard(self)
            self.factory.registry.disconnect(self)
            if self.conn_id != "-":
                self._log.info(
                    "{conn_id} disconnected (code {code})", conn_id=self.conn_id, code=code
                )
        except Exception:
            self._log.failure("{conn_id} failed cleaning up", conn_id=self.conn_id)

    def _handle(self, payload: bytes, is_binary: bool) -> None:
        if is_binary:
            self._send(protocol.error_frame("binary frames are not supported; send commands as JSON text"))
            return
        try:
            command = protocol.parse_command(payload.decode("utf-8"))
        except ProtocolError as e:
            self._log.debug("{conn_id} sent a bad frame: {error}", conn_id=self.conn_id, error=e.message)
            self._send(e.reply())
            return
        registry = self.factory.registry
        try:
            if isinstance(command, Subscribe):
                registry.subscribe(self, command.source_id, command.mode, command.start)
                reply = protocol.subscribe_ok(command.source_id)
            elif isinstance(command, Unsubscribe):
                registry.unsubscribe(self, command.source_id)
                reply = protocol.unsubscribe_ok(command.source_id)
            else:
                assert isinstance(command, RequestCommand)
                # Buffered events are delivered by request(); REQUEST_OK
                # follows them, reporting the credit left.
                remaining = registry.request(self, command.source_id, command.n)
                reply = protocol.request_ok(command.source_id, remaining)
        except ClientError as e:
            command_type = {Subscribe: "SUBSCRIBE", Unsubscribe: "UNSUBSCRIBE"}.get(type(command), "REQUEST")
            self._log.debug(
                "{conn_id} {command} {source_id} refused: {error}",
                conn_id=self.conn_id,
                command=command_type,
                source_id=command.source_id,
                error=str(e),
            )
            reply = protocol.command_error(command_type, command.source_id, str(e))
        self._send(reply)

    @property
    def pending_bytes(self) -> int:
        """
        Bytes of messages waiting in this connection's outbox.
        """
        return self._outbox.pending_bytes if self._outbox is not None else 0

    def close_with(self, code: int, reason: str) -> None:
        """
        Start a closing handshake with any code, including the protocol
        codes (1001, 1008, 1011) that Autobahn's C{sendClose} reserves.
        """
        self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)

    def _send(self, payload: bytes) -> None:
        self.send_frame(Frame(payload))

    # ISubscriber

    def send_frame(self, frame: Frame) -> None:
        """
        Hand a frame to the outbox: written now, queued, or (an event, when
        this connection is over its budget) dropped and counted.
        """
        if self._outbox is None:
            return
        if self._outbox.put(frame, len(frame.payload) + FRAME_OVERHEAD, frame.event_source):
            return
        if self._slow_timer is None:
            timeout = self.factory.subscriber_config.slow_client_timeout_s
            self._log.warn(
                "{conn_id} cannot keep up; dropping events (disconnecting in {timeout}s unless it catches up)",
                conn_id=self.conn_id,
                timeout=timeout,
            )
            self._slow_timer = self.factory.clock.callLater(timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._slow_timer = None
        self._log.warn("{conn_id} disconnected: too slow", conn_id=self.conn_id)
        self.close_with(CLOSE_POLICY_VIOLATION, "client too slow: could not keep up with its subscriptions")

    def _write_frame(self, frame: Frame) -> None:
        """
        Write one frame to the transport, framing it once for all
        connections that share it.
        """
        if self.state != self.STATE_OPEN:
            return
        if frame.prepared is None:
            frame.prepared = self.factory.prepareMessage(frame.payload, isBinary=False)
        self.sendPreparedMessage(frame.prepared)


class KiwiServerFactory(WebSocketServerFactory):
    """
    Builds L{KiwiServerProtocol}s sharing one registry.

    @ivar connections: The open connections, for shutdown and statistics.
    """

    protocol = KiwiServerProtocol

    def __init__(
        self,
        registry: Registry,
        clock: IReactorTime | None = None,
        server_config: ServerConfig | None = None,
    ) -> None:
        # No url: Autobahn then checks no Host header port, which behind
        # proxies and with port 0 in tests would be wrong anyway.
        super().__init__(server="Kiwi")
        self.registry = registry
        if clock is None:
            from twisted.internet import reactor

            clock = reactor  # type: ignore[assignment]
        self.clock: IReactorTime = clock
        self.subscriber_config: SubscriberConfig = registry.subscriber_config
        self.connections: set[KiwiServerProtocol] = set()
        options: dict[str, Any] = {"webStatus": False}
        if server_config is not None and server_config.ping_interval_s > 0:
            # Pings find half-open connections; the timeout drops them.
            options["autoPingInterval"] = server_config.ping_interval_s
            options["autoPingTimeout"] = server_config.ping_timeout_s
        self.setProtocolOptions(**options)

    def close_all(self, code: int, reason: str) -> None:
        """
        Start a closing handshake with every client.
        """
        for connection in list(self.connections):
            connection.close_with(code, reason)


class _WebSocketEntry(Resource):
    """
    C{/}: WebSocket upgrades go to Autobahn; a plain C{GET} gets the
    dashboard when it is served here, anything else C{426}.
    """

    isLeaf = True

    def __init__(self, factory: KiwiServerFactory, page: Resource | None = None) -> None:
        super().__init__()
        self._websocket = WebSocketResource(factory)
        self._page = page

    def render(self, request: Request) -> Any:
        upgrade = request.getHeader("upgrade") or ""
        if upgrade.lower() == "websocket":
            return self._websocket.render(request)
        if self._page is not None and request.method in (b"GET", b"HEAD"):
            return self._page.render(request)
        request.setResponseCode(426, b"Upgrade Required")
        request.setHeader(b"upgrade", b"websocket")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"This is a Kiwi WebSocket endpoint: connect with a WebSocket client.\n"


class HealthResource(Resource):
    """
    C{GET /health}: 200 and JSON with every source's state while Kiwi runs.
    """

    isLeaf = True

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._status = status

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._status(), separators=(",", ":")).encode("utf-8") + b"\n"


class _QuietSite(Site):
    """
    A L{Site} that writes no access log line per request (one per
    WebSocket connection would flood the log; connections log themselves).
    """

    def log(self, request: Request) -> None:
        pass


def health_status(registry: Registry, factory: KiwiServerFactory) -> dict[str, Any]:
    """
    The body of C{/health}.
    """
    sources = {}
    for source in registry.sources():
        detail = source.status()
        detail["subscribers"] = registry.subscriber_count(source.source_id)
        sources[source.source_id] = detail
    pending = sum(c.pending_bytes for c in factory.connections)
    return {
        "status": "ok",
        "connections": len(factory.connections),
        "pending_bytes": pending,
        "sources": sources,
    }


def build_site(factory: KiwiServerFactory, healthcheck: bool, ui: bool = False, ui_path: str = "/") -> Site:
    """
    The HTTP site that serves Kiwi on one port: the WebSocket endpoint at
    C{/}, C{/health}, C{/kiwi.js} and, with C{ui}, the dashboard at
    C{ui_path} (see L{kiwi.dashboard}).
    """
    from kiwi import dashboard

    root = Resource()
    page = dashboard.page() if ui else None
    root.putChild(b"", _WebSocketEntry(factory, page if ui_path == "/" else None))
    if healthcheck:
        root.putChild(b"health", HealthResource(lambda: health_status(factory.registry, factory)))
    dashboard.install(root, factory, ui, ui_path)
    site = _QuietSite(root)
    site.noisy = False
    return site


async def wait_closed(factory: KiwiServerFactory, clock: IReactorTime, timeout: float) -> None:
    """
    Return once every connection of C{factory} is gone, dropping those still
    there after C{timeout} seconds.
    """
    deadline = clock.seconds() + timeout
    while factory.connections and clock.seconds() < deadline:
        await deferLater(clock, 0.05, lambda: None)
    for connection in list(factory.connections):
        connection.dropConnection(abort=True)
    factory.connections.clear()
