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
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from kiwi.logs import logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from kiwi import protocol
from kiwi.errors import ClientError
from kiwi.protocol import ProtocolError, Request as RequestCommand, Subscribe, Unsubscribe
from kiwi.registry import Frame, ISubscriber, Registry

CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011

_conn_ids = itertools.count(1)


@implementer(ISubscriber)
class KiwiServerProtocol(WebSocketServerProtocol):
    """
    One client connection.

    Autobahn owns C{log}, so our logger is C{_log}. Every entry point that
    Autobahn calls catches everything: Autobahn mishandles what escapes.
    """

    _log = logger()
    factory: KiwiServerFactory

    conn_id = "-"
    peer_address = "-"

    def onConnect(self, request: ConnectionRequest) -> None:
        self.conn_id = f"c{next(_conn_ids)}"
        self.peer_address = request.peer
        self._log.debug("{conn_id} handshake from {peer}", conn_id=self.conn_id, peer=request.peer)

    def onOpen(self) -> None:
        self._log.info("{conn_id} connected from {peer}", conn_id=self.conn_id, peer=self.peer_address)
        self.factory.connections.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            self._handle(payload, isBinary)
        except Exception:
            self._log.failure("{conn_id} failed handling a message", conn_id=self.conn_id)
            self.close_with(CLOSE_INTERNAL_ERROR, "internal error")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        try:
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
                registry.subscribe(self, command.source_id, command.mode)
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

    def close_with(self, code: int, reason: str) -> None:
        """
        Start a closing handshake with any code, including the protocol
        codes (1001, 1008, 1011) that Autobahn's C{sendClose} reserves.
        """
        self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)

    def _send(self, payload: bytes) -> None:
        self.sendMessage(payload, isBinary=False)

    # ISubscriber

    def send_frame(self, frame: Frame) -> None:
        """
        Queue a shared frame, framing it once for all connections.
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

    def __init__(self, registry: Registry) -> None:
        # No url: Autobahn then checks no Host header port, which behind
        # proxies and with port 0 in tests would be wrong anyway.
        super().__init__(server="Kiwi")
        self.registry = registry
        self.connections: set[KiwiServerProtocol] = set()
        self.setProtocolOptions(
            # Kiwi answers pings and closes itself; no extra server banners.
            webStatus=False,
            # Frames are written as they come; coalescing happens in the
            # transport.
            autoFragmentSize=0,
        )

    def close_all(self, code: int, reason: str) -> None:
        """
        Start a closing handshake with every client.
        """
        for connection in list(self.connections):
            connection.close_with(code, reason)


class _WebSocketEntry(Resource):
    """
    C{/}: WebSocket upgrades go to Autobahn; anything else gets C{426}.
    """

    isLeaf = True

    def __init__(self, factory: KiwiServerFactory) -> None:
        super().__init__()
        self._websocket = WebSocketResource(factory)

    def render(self, request: Request) -> Any:
        upgrade = request.getHeader("upgrade") or ""
        if upgrade.lower() == "websocket":
            return self._websocket.render(request)
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
    return {"status": "ok", "connections": len(factory.connections), "sources": sources}


def build_site(factory: KiwiServerFactory, healthcheck: bool) -> Site:
    """
    The HTTP site that serves Kiwi on one port.
    """
    root = Resource()
    root.putChild(b"", _WebSocketEntry(factory))
    if healthcheck:
        root.putChild(b"health", HealthResource(lambda: health_status(factory.registry, factory)))
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
