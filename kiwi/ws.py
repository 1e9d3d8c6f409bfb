"""
The WebSocket and HTTP face of Kiwi.

One L{KiwiServerProtocol} per client turns commands into registry calls and
registry frames into WebSocket messages. L{build_site} puts the WebSocket
endpoint at C{/} and C{GET /health} beside it, on one port.

A WebSocket upgrade passes the gate of L{kiwi.auth.handshake} (origin,
token) before Autobahn sees it; the connection then carries the
L{Identity} it was admitted with (its token's claims and the sources it may
read), which an C{AUTHENTICATE} command can replace.
"""

from __future__ import annotations

import itertools
from time import perf_counter
import json
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.twisted.util import peer2str
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.task import deferLater
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from kiwi import protocol
from kiwi.auth import OPEN, AuthError, IAuthenticator, Identity, OpenAccess
from kiwi.auth.handshake import Gate, refuse
from kiwi.auth.origin import OriginPolicy
from kiwi.config import ServerConfig, SubscriberConfig
from kiwi.errors import ClientError
from kiwi import _internals
from kiwi.coalesce import Coalescer
from kiwi.flow import Outbox
from kiwi.limits import GuardedConnection, TokenBucket
from kiwi.logs import logger
from kiwi.plugins import REJECT, HttpRequest, WithContext
from kiwi.plugins import IAuthenticator as IAuthenticatePlugin
from kiwi.plugins.host import PluginHost
from kiwi.protocol import Authenticate, ProtocolError, Request as RequestCommand, Subscribe, Unsubscribe
from kiwi.registry import Frame, FrameRun, ISubscriber, Registry

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011

FRAME_OVERHEAD = 10
"""
Bytes a WebSocket frame header adds to a payload (at most), for budgets.
"""

MAX_HELD_FRAMES = 1000
"""
Frames a connection may send while its C{AUTHENTICATE} is being checked
(they are handled, in order, once it has been).
"""

_conn_ids = itertools.count(1)


def next_conn_id() -> str:
    """
    A new connection id for logs (C{c1}, C{c2}, ...).
    """
    return f"c{next(_conn_ids)}"


@implementer(ISubscriber, IPushProducer)
class KiwiServerProtocol(WebSocketServerProtocol):
    """
    One client connection.

    Everything Kiwi sends goes through an L{Outbox} that the transport
    pauses and resumes (the protocol is the transport's push producer), so
    a client that reads slowly costs at most the outbox budget (twice it
    with replies and notices) plus the transport's own buffer. A client
    over budget for C{slow_client_timeout_s}, or whose unread replies reach
    the outbox's hard limit, is closed with 1008; see
    C{docs/flow-control.md}.

    Autobahn owns C{log}, so our logger is C{_log}. Every entry point that
    Autobahn calls catches everything: Autobahn mishandles what escapes.

    @ivar identity: What the connection may do: its token's claims, the
        sources it may subscribe to, when the token expires.
    """

    _log = logger()
    factory: KiwiServerFactory

    conn_id = "-"
    peer_address = "-"
    identity: Identity = OPEN
    _plugin_context: bytes | None = None
    plugin_addr: str | None = None
    """
    The peer as C{ip:port} (C{[ip]:port} for IPv6), for intercept calls.
    """
    _outbox: Outbox[Frame] | None = None
    _batch: list[bytes] | None = None
    _slow_timer: IDelayedCall | None = None
    _expiry: IDelayedCall | None = None
    _commands: TokenBucket | None = None
    _held: deque[tuple[bytes, bool]] | None = None

    @property
    def auth_context(self) -> bytes | None:
        """
        What intercept calls receive as C{auth}: the authenticate plugin's
        C{with-context} bytes, or else the token's claims as compact JSON;
        C{None} without either.
        """
        if self._plugin_context is not None:
            return self._plugin_context
        return self.identity.context

    def onConnect(self, request: ConnectionRequest) -> Deferred[None] | None:  # type: ignore[override]
        try:
            if self.conn_id == "-":
                self.conn_id = next_conn_id()
            self.peer_address = request.peer
            self.plugin_addr = _socket_address(self.transport)
            self._log.debug("{conn_id} handshake from {peer}", conn_id=self.conn_id, peer=request.peer)
            plugins = self.factory.plugins
            authenticator = plugins.authenticate.current if plugins is not None else None
        except Exception:
            self._log.failure("{conn_id} failed in the handshake", conn_id=self.conn_id)
            # Autobahn would put the exception's text in the status line.
            raise ConnectionDeny(ConnectionDeny.INTERNAL_SERVER_ERROR, "internal error") from None
        if plugins is not None and authenticator is not None:
            return Deferred.fromCoroutine(self._run_authenticate(plugins, authenticator, request))
        return None
    async def _run_authenticate(
        self, plugins: PluginHost, authenticator: IAuthenticatePlugin, request: ConnectionRequest
    ) -> None:
        """
        Let the authenticate plugin decide on this handshake; refuse it
        with 401 unless the plugin lets the client in.
        """
        try:
            started = perf_counter()
            outcome = await plugins.run_authenticate(authenticator, self._http_request(request), self.conn_id)
            self.factory.time_authenticate(perf_counter() - started)
        except Exception:
            self._log.failure("{conn_id} failed authenticating", conn_id=self.conn_id)
            outcome = REJECT
        if outcome == REJECT:
            self._log.warn(
                "{conn_id} handshake from {peer} refused by the authenticate plugin",
                conn_id=self.conn_id,
                peer=self.peer_address,
            )
            self.factory.count_refusal("authenticate plugin")
            raise ConnectionDeny(401, "Unauthorized")
        if isinstance(outcome, WithContext):
            self._plugin_context = outcome.context

    def _http_request(self, request: ConnectionRequest) -> HttpRequest:
        """
        The handshake request as an authenticate plugin sees it.
        """
        headers = tuple((name, str(value).encode("utf-8")) for name, value in request.headers.items())
        authority = request.headers.get("host")
        secure = ISSLTransport.providedBy(self.transport)
        return HttpRequest(
            method="GET",
            path_with_query=getattr(self, "http_request_uri", None) or request.path,
            scheme=("https" if secure else "http") if authority else None,
            authority=authority,
            headers=headers,
        )

    def onOpen(self) -> None:
        try:
            self._log.info("{conn_id} connected from {peer}", conn_id=self.conn_id, peer=self.peer_address)
            self.factory.connections.add(self)
            self._outbox = Outbox(self.factory.subscriber_config.max_pending_bytes, self._write_frame)
            config = self.factory.server_config
            self._commands = TokenBucket(config.max_commands_per_s, config.max_command_burst, self.factory.clock)
            self._schedule_expiry()
            self._become_producer()
        except Exception:
            self._log.failure("{conn_id} failed opening", conn_id=self.conn_id)
            self.close_with(CLOSE_INTERNAL_ERROR, "internal error")

    def _become_producer(self) -> None:
        # Twisted Web's HTTP channel registered itself as the transport's
        # producer before the connection was handed to us.
        transport = cast(IConsumer, self.transport)
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self, True)

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
                self.factory.registry.stats.lag_notices[source_id] += 1
                notice = Frame(protocol.lag_notice(source_id, count))
                self._outbox.put(notice, len(notice.payload) + FRAME_OVERHEAD)
            if not self._outbox.over_budget:
                self._stop_slow_timer()
        except Exception:
            self._log.failure("{conn_id} failed resuming", conn_id=self.conn_id)

    def stopProducing(self) -> None:
        pass

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            if self._commands is not None and not self._commands.take():
                self._log.warn(
                    "{conn_id} closed: more than {rate} commands per second",
                    conn_id=self.conn_id,
                    rate=self.factory.server_config.max_commands_per_s,
                )
                self._commands = None
                self.close_with(CLOSE_POLICY_VIOLATION, "command rate limit exceeded")
                return
            if self.state != self.STATE_OPEN:
                return
            if self._held is not None:
                if len(self._held) >= MAX_HELD_FRAMES:
                    self.close_with(CLOSE_POLICY_VIOLATION, "too many commands while authenticating")
                    return
                self._held.append((payload, isBinary))
                return
            self._handle(payload, isBinary)
        except Exception:
            self._log.failure("{conn_id} failed handling a message", conn_id=self.conn_id)
            self.close_with(CLOSE_INTERNAL_ERROR, "internal error")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        try:
            self._stop_slow_timer()
            if self._expiry is not None and self._expiry.active():
                self._expiry.cancel()
            self._expiry = None
            self._held = None
            self._discard_outbox()
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
            self._reply(protocol.error_frame("binary frames are not supported; send commands as JSON text"))
            return
        try:
            command = protocol.parse_command(payload.decode("utf-8"))
        except ProtocolError as e:
            self._log.debug("{conn_id} sent a bad frame: {error}", conn_id=self.conn_id, error=e.message)
            self._reply(e.reply())
            return
        if isinstance(command, Authenticate):
            self._authenticate(command.token)
            return
        registry = self.factory.registry
        try:
            if isinstance(command, Subscribe):
                if not self.identity.allows(command.source_id):
                    raise ClientError("not authorized to subscribe to this source")
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
        self._reply(reply)

    # Tokens

    def _schedule_expiry(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        expires_at = self.identity.expires_at
        if expires_at is not None:
            clock = self.factory.clock
            self._expiry = clock.callLater(max(0.0, expires_at - clock.seconds()), self._token_expired)

    def _token_expired(self) -> None:
        self._expiry = None
        self._log.info("{conn_id} closed: token expired", conn_id=self.conn_id)
        self.close_with(CLOSE_POLICY_VIOLATION, "token expired")

    def _authenticate(self, token: str) -> None:
        """
        Check a new token; meanwhile hold later frames, to keep replies in
        order.
        """
        authenticator = self.factory.authenticator
        if not authenticator.enabled:
            self._reply(protocol.authenticate_error("authentication is not configured"))
            return
        self._held = deque()
        d = authenticator.authenticate(token)
        d.addCallbacks(self._reauthenticated, self._reauthentication_refused)
        d.addErrback(self._reauthentication_failed)
        d.addBoth(self._release_held)

    def _reauthenticated(self, identity: Identity) -> None:
        if self.state != self.STATE_OPEN:
            return
        self.identity = identity
        registry = self.factory.registry
        for source_id in registry.subscriptions_of(self):
            if not identity.allows(source_id):
                registry.end_subscription(self, source_id, "not authorized by the new token")
        self._schedule_expiry()
        self._log.info("{conn_id} authenticated again", conn_id=self.conn_id)
        self._reply(protocol.authenticate_ok(identity.expires_at))

    def _reauthentication_refused(self, failure: Failure) -> None:
        failure.trap(AuthError)
        reason = failure.value.reason  # type: ignore[union-attr]
        self._log.warn("{conn_id} AUTHENTICATE refused: {reason}", conn_id=self.conn_id, reason=reason)
        self._reply(protocol.authenticate_error(reason))

    def _reauthentication_failed(self, failure: Failure) -> None:
        self._log.failure("{conn_id} failed checking a token", failure, conn_id=self.conn_id)
        self.close_with(CLOSE_INTERNAL_ERROR, "internal error")

    def _release_held(self, _: object) -> None:
        waiting, self._held = self._held or deque(), None
        while waiting:
            if self._held is not None:
                # Another AUTHENTICATE is being checked: keep holding.
                self._held.extendleft(reversed(waiting))
                return
            payload, is_binary = waiting.popleft()
            if self.state != self.STATE_OPEN:
                return
            try:
                self._handle(payload, is_binary)
            except Exception:
                self._log.failure("{conn_id} failed handling a message", conn_id=self.conn_id)
                self.close_with(CLOSE_INTERNAL_ERROR, "internal error")
                return

    @property
    def pending_bytes(self) -> int:
        """
        Bytes of messages waiting in this connection's outbox.
        """
        return self._outbox.pending_bytes if self._outbox is not None else 0

    def _discard_outbox(self) -> None:
        """
        Forget what waits in the outbox (the connection is closing), moving
        the events among it from delivered to dropped (C{closed}).
        """
        if self._outbox is None:
            return
        stats = self.factory.registry.stats
        for source_id, count in self._outbox.clear().items():
            stats.undeliver(source_id, "closed", count)

    def close_with(self, code: int, reason: str) -> None:
        """
        Start a closing handshake with any code, including the protocol
        codes (1001, 1008, 1011) that Autobahn's C{sendClose} reserves.

        Nothing queued is written after the close frame, so the outbox is
        released at once. If the client does not answer within Autobahn's
        C{closeHandshakeTimeout}, the TCP connection is aborted.
        """
        self._discard_outbox()
        # What was already handed over this turn goes out before the close.
        self.flush_batch()
        self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)

    def _reply(self, payload: bytes) -> None:
        # Not "_send": Autobahn's own _send() drains its queue of chunked or
        # synchronous writes, and an override would break it.
        self.send_frame(Frame(payload))

    # ISubscriber

    def send_frame(self, frame: Frame) -> None:
        """
        Hand a frame to the outbox: written now, queued, or (an event, when
        this connection is over its budget) dropped and counted. Frames
        for a connection that is closing are ignored.
        """
        outbox = self._outbox
        if outbox is None or self.state != self.STATE_OPEN:
            return
        source_id = frame.event_source
        kept = outbox.put(frame, len(frame.payload) + FRAME_OVERHEAD, source_id)
        if source_id is not None and not kept:
            # The registry counted it as delivered when it handed it over.
            self.factory.registry.stats.undeliver(source_id, "slow_client")
        if not kept and outbox.overflowed:
            # Replies and notices are never dropped; this many unread ones
            # mean the client does not read at all.
            self._log.warn("{conn_id} disconnected: not reading its replies", conn_id=self.conn_id)
            self._stop_slow_timer()
            self.close_with(CLOSE_POLICY_VIOLATION, "client too slow: too many unread replies and notices")
            return
        if self._slow_timer is None and outbox.over_budget:
            config = self.factory.subscriber_config
            timeout = config.slow_client_timeout_s
            self._log.warn(
                "{conn_id} cannot keep up: over its budget of {budget} bytes, dropping events"
                " (disconnecting in {timeout}s unless it catches up)",
                conn_id=self.conn_id,
                budget=config.max_pending_bytes,
                timeout=timeout,
            )
            self._slow_timer = self.factory.clock.callLater(timeout, self._too_slow)

    def send_frames(self, run: FrameRun) -> None:
        """
        Hand a run of frames over: when nothing waits and the transport
        takes writes, all of them at once, as the bytes every such
        connection shares; otherwise one by one, as L{send_frame} does.
        """
        outbox = self._outbox
        if outbox is None or self.state != self.STATE_OPEN:
            return
        if outbox.idle and self._writes_prepared():
            wire = run.prepared
            if wire is None:
                framed = [_internals.framed_bytes(self._prepared(frame)) for frame in run.frames]
                wire = run.prepared = b"".join(framed)
            self._write_bytes(wire)
            return
        for frame in run.frames:
            self.send_frame(frame)

    def _stop_slow_timer(self) -> None:
        if self._slow_timer is not None and self._slow_timer.active():
            self._slow_timer.cancel()
        self._slow_timer = None

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
        prepared = self._prepared(frame)
        if self._writes_prepared():
            self._write_bytes(_internals.framed_bytes(prepared))
        else:
            self.flush_batch()
            self.sendPreparedMessage(prepared)

    def _prepared(self, frame: Frame) -> Any:
        prepared = frame.prepared
        if prepared is None:
            prepared = frame.prepared = self.factory.prepareMessage(frame.payload, isBinary=False)
        return prepared

    def _writes_prepared(self) -> bool:
        """
        Whether frames framed once for every connection can go to this
        transport as they are: not when the connection compresses, nor
        while Autobahn has writes of its own queued.
        """
        return self.transport is not None and _internals.shares_framed_bytes(self)

    def _write_bytes(self, data: bytes) -> None:
        """
        Write framed bytes: with this turn's batch, or at once when writes
        are not joined. This is what C{sendPreparedMessage} does without
        compression, minus the debug line Autobahn formats for every write:
        most of its cost, paid for every connection and event.
        """
        coalescer = self.factory.coalescer
        if coalescer is None:
            assert self.transport is not None  # checked by _writes_prepared()
            self.transport.write(data)
            return
        if self._batch is None:
            self._batch = []
            coalescer.mark(self)
        self._batch.append(data)

    def flush_batch(self) -> None:
        """
        Write this turn's frames, joined, in one transport write.
        """
        batch, self._batch = self._batch, None
        if not batch or self.state != self.STATE_OPEN or self.transport is None:
            return
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        if self.factory.server_config.direct_write:
            _internals.write(self.transport, data)
        else:
            self.transport.write(data)


def _accept_deflate(offers: list[Any]) -> Any:
    """
    Accept a client's first permessage-deflate offer (C{server.permessage_deflate}).
    """
    from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


class KiwiServerFactory(WebSocketServerFactory):
    """
    Builds L{KiwiServerProtocol}s sharing one registry.

    @ivar connections: The open connections, for shutdown and statistics.
    """

    # Twisted types a protocol's factory as Factory[Self]; ours narrows it.
    protocol = KiwiServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        registry: Registry,
        clock: IReactorTime | None = None,
        server_config: ServerConfig | None = None,
        authenticator: IAuthenticator | None = None,
        plugins: PluginHost | None = None,
    ) -> None:
        # No url: Autobahn then checks no Host header port, which behind
        # proxies and with port 0 in tests would be wrong anyway.
        super().__init__(server="Kiwi")
        self.registry = registry
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        self.server_config: ServerConfig = server_config or ServerConfig(listen="")
        self.authenticator: IAuthenticator = authenticator or OpenAccess()
        self.gate = Gate(OriginPolicy(self.server_config.allowed_origins), self.authenticator, self.count_refusal)
        self.plugins = plugins
        self.connections: set[KiwiServerProtocol] = set()
        self.coalescer: Coalescer | None = None
        # Set by the service to feed kiwi_plugin_call_seconds.
        self.time_authenticate: Callable[[float], None] = lambda seconds: None
        self.setProtocolOptions(webStatus=False)
        self.apply_config(server_config, registry.subscriber_config)

    def count_refusal(self, reason: str) -> None:
        """
        Count a refused handshake for C{kiwi_handshake_refusals_total}.
        """
        self.registry.stats.handshake_refusals[reason] += 1

    def replace_authenticator(self, authenticator: IAuthenticator) -> None:
        """
        Authenticate handshakes made from now on with C{authenticator}.
        """
        self.authenticator = authenticator
        self.gate = Gate(OriginPolicy(self.server_config.allowed_origins), authenticator, self.count_refusal)

    def apply_config(self, server: ServerConfig | None, subscriber: SubscriberConfig) -> None:
        """
        Use these settings for connections opened from now on.
        """
        self.subscriber_config = subscriber
        if server is not None:
            self.server_config = server
            if server.coalesce_writes and self.coalescer is None:
                self.coalescer = Coalescer(self.clock)
            elif not server.coalesce_writes and self.coalescer is not None:
                self.coalescer.flush()
                self.coalescer = None
            self.gate = Gate(OriginPolicy(server.allowed_origins), self.authenticator, self.count_refusal)
        config = self.server_config
        self.setProtocolOptions(
            # Compression costs CPU per client and message (frames can no
            # longer be shared), so it is only offered when configured.
            perMessageCompressionAccept=_accept_deflate if config.permessage_deflate else (lambda offers: None),
            # Larger messages and frames close the connection with 1009.
            maxMessagePayloadSize=config.max_message_size,
            maxFramePayloadSize=config.max_message_size,
            # Protocol violations get a close frame with the code that says
            # why (1009, 1007, 1002) instead of a dropped connection.
            failByDrop=False,
            openHandshakeTimeout=config.handshake_timeout_s,
        )
        if server is not None and server.ping_interval_s > 0:
            # Pings find half-open connections; the timeout drops them.
            self.setProtocolOptions(
                autoPingInterval=server.ping_interval_s, autoPingTimeout=server.ping_timeout_s
            )
        else:
            self.setProtocolOptions(autoPingInterval=0)

    def admit(self, addr: Any, identity: Identity, conn_id: str) -> KiwiServerProtocol:
        """
        A new connection that was admitted with C{identity}.
        """
        connection: KiwiServerProtocol = self.buildProtocol(addr)  # type: ignore[assignment]
        connection.identity = identity
        connection.conn_id = conn_id
        return connection

    def close_all(self, code: int, reason: str) -> None:
        """
        Start a closing handshake with every client.
        """
        for connection in list(self.connections):
            connection.close_with(code, reason)


class _WebSocketEntry(Resource):
    """
    C{/}: WebSocket upgrades pass the origin and token checks and go to
    Autobahn; a plain C{GET} gets the dashboard when it is served here,
    anything else C{426}.
    """

    isLeaf = True
    _log = logger()

    def __init__(self, factory: KiwiServerFactory, page: Resource | None = None) -> None:
        super().__init__()
        self._factory = factory
        self._page = page

    def render(self, request: Request) -> Any:
        upgrade = request.getHeader("upgrade") or ""
        if upgrade.lower() == "websocket":
            conn_id = next_conn_id()
            peer = peer2str(request.transport) if request.transport is not None else "-"
            d = Deferred.fromCoroutine(self._factory.gate.admit(request, conn_id, peer))
            d.addCallback(self._upgrade, request, conn_id)
            d.addErrback(self._failed, request, conn_id)
            return NOT_DONE_YET
        if self._page is not None and request.method in (b"GET", b"HEAD"):
            return self._page.render(request)
        request.setResponseCode(426, b"Upgrade Required")
        request.setHeader(b"upgrade", b"websocket")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"This is a Kiwi WebSocket endpoint: connect with a WebSocket client.\n"

    def _upgrade(self, identity: Identity | None, request: Request, conn_id: str) -> None:
        """
        Hand the connection over from Twisted Web to a new Kiwi protocol,
        which then answers the handshake (as Autobahn's own resource does,
        but giving the protocol its identity, and the TLS transport itself
        rather than the connection guard wrapped around the site).
        """
        channel = getattr(request, "channel", None)
        if identity is None or channel is None or request.finished or channel.transport is None:
            # Refused, or the client left while its token was checked.
            return
        transport = channel.transport
        connection = self._factory.admit(transport.getPeer(), identity, conn_id)
        channel.transport = None
        try:
            if isinstance(transport, ProtocolWrapper):
                transport.wrappedProtocol = connection
            else:
                transport.protocol = connection
            if isinstance(transport, GuardedConnection):
                # The guard keeps counting the connection and passing data
                # in; the protocol writes to the transport beneath it (TLS,
                # which Autobahn wants to see as such).
                transport.mark_answered()
                transport = transport.transport
            connection.makeConnection(transport)
            if hasattr(transport, "resumeProducing"):
                transport.resumeProducing()
            head = request.method + b" " + request.uri + b" HTTP/1.1\r\n"
            for name, values in request.requestHeaders.getAllRawHeaders():
                head += name + b": " + b",".join(values) + b"\r\n"
            connection.dataReceived(head + b"\r\n" + request.content.read())  # type: ignore[union-attr]
        except Exception:
            self._log.failure("{conn_id} failed taking over the connection", conn_id=conn_id)
            transport.abortConnection()

    def _failed(self, failure: Failure, request: Request, conn_id: str) -> None:
        self._log.failure("{conn_id} failed during the handshake", failure, conn_id=conn_id)
        channel = getattr(request, "channel", None)
        if channel is not None and channel.transport is not None and not request.finished:
            refuse(request, 500, "internal error")


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
    WebSocket connection would flood the log; connections log themselves),
    shows no tracebacks and does not name its software's version.
    """

    displayTracebacks = False

    def log(self, request: http.Request) -> None:
        pass

    def getResourceFor(self, request: Request) -> IResource:
        request.setHeader(b"server", b"Kiwi")
        resource: IResource = super().getResourceFor(request)
        return resource


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
    result: dict[str, Any] = {
        "status": "ok",
        "connections": len(factory.connections),
        "pending_bytes": pending,
        "sources": sources,
    }
    plugins = factory.plugins.status() if factory.plugins is not None else {}
    if plugins:
        result["plugins"] = plugins
    return result


def _socket_address(transport: Any) -> str | None:
    """
    The peer of C{transport} as C{ip:port} (C{[ip]:port} for IPv6), or
    C{None} when it has no IP address (a Unix socket).
    """
    try:
        peer = transport.getPeer()
    except Exception:
        return None
    host = getattr(peer, "host", None)
    port = getattr(peer, "port", None)
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    # The site's idle timeouts run on the same clock as everything else.
    site = _QuietSite(root, reactor=factory.clock)
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
