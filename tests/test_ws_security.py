"""
Tests for the security side of L{kiwi.ws}: the handshake gate (tokens,
C{Origin}), authorization of subscriptions, token expiry and
C{AUTHENTICATE}, the hardening limits, and a fuzz test of whole WebSocket
frames through a real connection. Everything runs in memory (iosim, a
L{Clock}).
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from kiwi import protocol
from kiwi.auth import AuthError, IAuthenticator, Identity
from kiwi.config import JWTConfig, ServerConfig, SubscriberConfig
from kiwi.auth.jwt import JWTAuthenticator
from kiwi.registry import Registry
from kiwi.ws import CLOSE_INTERNAL_ERROR, CLOSE_POLICY_VIOLATION, KiwiServerFactory, KiwiServerProtocol, build_site
from tests import pki
from tests.test_protocol import _command_like
from tests.test_ws import CLIENT_ADDRESS, SERVER_ADDRESS, FakeSource, RecordingClient, WebSocketTestMixin

NOW = 1_800_000_000.0
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@implementer(IAuthenticator)
class FakeAuthenticator:
    """
    Knows a few tokens; answers at once or when told.

    @ivar answers: What each token gets: an L{Identity}, an L{AuthError},
        an exception to raise, or a L{Deferred}.
    """

    enabled = True

    def __init__(self) -> None:
        self.answers: dict[str | None, Any] = {None: AuthError("token missing", error="invalid_request")}
        self.seen: list[str | None] = []

    def authenticate(self, token: str | None) -> Deferred[Identity]:
        self.seen.append(token)
        answer = self.answers.get(token, AuthError("token malformed"))
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


def handshake(path: str = "/", **headers: str) -> bytes:
    """
    The bytes of a WebSocket opening handshake request.
    """
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: localhost:8000",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


class SecurityTestMixin(WebSocketTestMixin):
    """
    A factory with an authenticator and server limits, and clients that go
    through the site.
    """

    authenticator: Any

    def setUpSecurity(
        self,
        server: ServerConfig = ServerConfig(listen=""),
        subscriber: SubscriberConfig = SubscriberConfig(),
        authenticator: Any = None,
    ) -> None:
        """
        Build the factory with C{server} limits and C{authenticator}.
        """
        self.setUpWebSocket(subscriber)
        self.clock.advance(NOW)
        self.authenticator = authenticator if authenticator is not None else FakeAuthenticator()
        self.factory = KiwiServerFactory(self.registry, self.clock, server, self.authenticator)

    def site_connection(self, url: str = "ws://localhost:8000/", **client: Any) -> tuple[RecordingClient, iosim.IOPump]:
        """
        An Autobahn client talking to the whole site (so through the gate).
        """
        site = build_site(self.factory, healthcheck=True)
        site.reactor = self.clock
        client_factory = WebSocketClientFactory(url=url, reactor=self.clock, **client)
        client_factory.protocol = RecordingClient
        client_protocol = client_factory.buildProtocol(SERVER_ADDRESS)
        server = site.buildProtocol(CLIENT_ADDRESS)
        server_io = iosim.FakeTransport(server, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=CLIENT_ADDRESS)
        client_io = iosim.FakeTransport(
            client_protocol, isServer=False, hostAddress=CLIENT_ADDRESS, peerAddress=SERVER_ADDRESS
        )
        pump = iosim.connect(server, server_io, client_protocol, client_io, clock=self.clock)
        self.addCleanup(self.disconnect, client_protocol, pump)  # type: ignore[attr-defined]
        return client_protocol, pump

    def raw(self, request: bytes) -> tuple[bytes, iosim.FakeTransport, Any]:
        """
        Send raw bytes to the site; return what it answered, the server's
        transport and its channel.
        """
        site = build_site(self.factory, healthcheck=True)
        site.reactor = self.clock
        channel = site.buildProtocol(CLIENT_ADDRESS)
        transport = iosim.FakeTransport(channel, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=CLIENT_ADDRESS)
        channel.makeConnection(transport)
        channel.dataReceived(request)
        self.addCleanup(self._lose, channel, transport)
        return transport.getOutBuffer(), transport, channel

    def _lose(self, channel: Any, transport: iosim.FakeTransport) -> None:
        if not transport.disconnected:
            transport.disconnected = True
            transport.protocol.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(120)

    def protocol_with(self, identity: Identity) -> tuple[RecordingClient, KiwiServerProtocol, iosim.IOPump]:
        """
        A connection admitted with C{identity}.
        """
        server = self.factory.admit(CLIENT_ADDRESS, identity, "c-test")
        client, pump = self.connect_protocol(server)
        return client, server, pump

    def replies(self, client: RecordingClient) -> list[dict[str, Any]]:
        """
        The messages received since the last call, decoded.
        """
        return [json.loads(m) for m in client.take()]


def _head(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


class HandshakeGateTests(SecurityTestMixin, SynchronousTestCase):
    """
    Tokens and origins are checked before the WebSocket handshake.
    """

    def setUp(self) -> None:
        self.setUpSecurity()
        self.identity = Identity(claims={"sub": "a"}, patterns=("c",), expires_at=NOW + 60)
        self.authenticator.answers["good"] = self.identity

    def test_gate_noToken401(self) -> None:
        """
        A handshake without a token gets 401 with a C{WWW-Authenticate}
        header that says why, and the connection is closed; no WebSocket
        is opened.
        """
        response, transport, _ = self.raw(handshake())
        status, headers, body = _head(response)
        self.assertEqual(status, "HTTP/1.1 401 Unauthorized")
        self.assertEqual(
            headers["www-authenticate"],
            'Bearer realm="kiwi", error="invalid_request", error_description="token missing"',
        )
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(headers["server"], "Kiwi")
        self.assertEqual(body, b"401 Unauthorized: token missing\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.connections, set())

    def test_gate_badToken401(self) -> None:
        """
        A refused token gets 401 naming the reason; the token is never
        echoed.
        """
        response, _, _ = self.raw(handshake(Authorization="Bearer s3cr3t-garbage"))
        status, headers, body = _head(response)
        self.assertEqual(status, "HTTP/1.1 401 Unauthorized")
        self.assertIn('error_description="token malformed"', headers["www-authenticate"])
        self.assertNotIn(b"s3cr3t", response)
        self.assertEqual(self.authenticator.seen, ["s3cr3t-garbage"])

    def test_gate_otherScheme(self) -> None:
        """
        An C{Authorization} header with another scheme is refused.
        """
        response, _, _ = self.raw(handshake(Authorization="Basic dXNlcjpwYXNz"))
        self.assertIn(b"Authorization header must use the Bearer scheme", response)
        self.assertEqual(self.authenticator.seen, [])

    def test_gate_tokenTwice(self) -> None:
        """
        A token in both the header and the query is refused.
        """
        response, _, _ = self.raw(handshake("/?access_token=good", Authorization="Bearer good"))
        self.assertTrue(response.startswith(b"HTTP/1.1 401 "))
        self.assertIn(b"token given in both", response)

    def test_gate_headerToken(self) -> None:
        """
        With a good token in the header the connection opens with the
        token's identity, and its claims are the connection's context.
        """
        client, pump = self.site_connection(headers={"Authorization": "Bearer good"})
        self.assertTrue(client.opened)
        (server,) = self.factory.connections
        self.assertIs(server.identity, self.identity)
        self.assertEqual(server.auth_context, b'{"sub":"a"}')
        self.assertRegex(server.conn_id, r"^c\d+$")

    def test_gate_queryToken(self) -> None:
        """
        The token may come as the C{access_token} query parameter.
        """
        client, pump = self.site_connection(url="ws://localhost:8000/?access_token=good")
        self.assertTrue(client.opened)
        self.assertEqual(self.authenticator.seen, ["good"])

    def test_gate_waitsForAuthenticator(self) -> None:
        """
        While the token is being checked nothing is answered; then the
        handshake completes.
        """
        pending: Deferred[Identity] = Deferred()
        self.authenticator.answers["slow"] = pending
        client, pump = self.site_connection(headers={"Authorization": "Bearer slow"})
        self.assertFalse(client.opened)
        pending.callback(self.identity)
        pump.flush()
        self.assertTrue(client.opened)
        self.assertEqual(len(self.factory.connections), 1)

    def test_gate_clientLeavesWhileChecking(self) -> None:
        """
        A client that leaves while its token is checked is forgotten.
        """
        pending: Deferred[Identity] = Deferred()
        self.authenticator.answers["slow"] = pending
        _, transport, channel = self.raw(handshake(Authorization="Bearer slow"))
        transport.disconnected = True
        channel.connectionLost(Failure(ConnectionDone()))
        pending.callback(self.identity)
        self.assertEqual(self.factory.connections, set())
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_gate_keysUnavailable503(self) -> None:
        """
        When Kiwi cannot check tokens, the handshake gets 503 with
        C{Retry-After}, not 401.
        """
        self.authenticator.answers["good"] = AuthError("keys unavailable", status=503)
        status, headers, body = _head(self.raw(handshake(Authorization="Bearer good"))[0])
        self.assertEqual(status, "HTTP/1.1 503 Service Unavailable")
        self.assertEqual(headers["retry-after"], "10")
        self.assertNotIn("www-authenticate", headers)

    def test_gate_authenticatorBug(self) -> None:
        """
        A bug in the authenticator is logged; the client gets a bare 500.
        """
        self.authenticator.answers["good"] = RuntimeError("boom at line 12")
        response, _, _ = self.raw(handshake(Authorization="Bearer good"))
        self.assertTrue(response.startswith(b"HTTP/1.1 500 "), response)
        self.assertNotIn(b"boom", response)
        self.assertNotIn(b"Traceback", response)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_gate_foreignOrigin403(self) -> None:
        """
        A browser handshake from a foreign origin gets 403 before the token
        is looked at.
        """
        response, _, _ = self.raw(handshake(Origin="https://evil.example", Authorization="Bearer good"))
        status, _, body = _head(response)
        self.assertEqual(status, "HTTP/1.1 403 Forbidden")
        self.assertEqual(body, b"403 Forbidden: origin not allowed\n")
        self.assertEqual(self.authenticator.seen, [])

    def test_gate_sameOrigin(self) -> None:
        """
        By default, a page from the same host and port may connect.
        """
        client, pump = self.site_connection(origin="http://localhost:8000", headers={"Authorization": "Bearer good"})
        self.assertTrue(client.opened)

    def test_gate_allowedOrigins(self) -> None:
        """
        With C{allowed_origins}, listed origins (with wildcards) may
        connect and others may not.
        """
        server = ServerConfig(listen="", allowed_origins=("https://*.example.com",))
        self.setUpSecurity(server)
        self.authenticator.answers["good"] = self.identity
        client, _ = self.site_connection(origin="https://app.example.com", headers={"Authorization": "Bearer good"})
        self.assertTrue(client.opened)
        response, _, _ = self.raw(handshake(Origin="http://localhost:8000", Authorization="Bearer good"))
        self.assertTrue(response.startswith(b"HTTP/1.1 403 "))

    def test_gate_realJwt(self) -> None:
        """
        With the JWT authenticator, an expired token's 401 says so.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(pki.public_pem(pki.rsa_key()))
        authenticator = JWTAuthenticator(JWTConfig(algorithms=("RS256",), public_key=path), (), self.clock, {})
        self.setUpSecurity(authenticator=authenticator)
        expired = pki.token(pki.claims(NOW - 700, 600), pki.rsa_key())
        _, headers, _ = _head(self.raw(handshake(Authorization=f"Bearer {expired}"))[0])
        self.assertEqual(
            headers["www-authenticate"], 'Bearer realm="kiwi", error="invalid_token", error_description="token expired"'
        )
        good = pki.token(pki.claims(NOW, sources=["c"]), pki.rsa_key())
        client, _ = self.site_connection(headers={"Authorization": f"Bearer {good}"})
        self.assertTrue(client.opened)

    def test_gate_throughGuard(self) -> None:
        """
        Behind the connection guard (as in production) the upgraded
        connection is still counted by the guard, its handshake deadline is
        cancelled, and closing it frees its place.
        """
        from kiwi.limits import ConnectionGuard

        site = build_site(self.factory, healthcheck=True)
        site.reactor = self.clock
        guard = ConnectionGuard(site, self.clock, 10, 10, 5.0)
        client_factory = WebSocketClientFactory(
            url="ws://localhost:8000/", reactor=self.clock, headers={"Authorization": "Bearer good"}
        )
        client_factory.protocol = RecordingClient
        client = client_factory.buildProtocol(SERVER_ADDRESS)
        server = guard.buildProtocol(CLIENT_ADDRESS)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=CLIENT_ADDRESS),
            client,
            iosim.FakeTransport(client, isServer=False, hostAddress=CLIENT_ADDRESS, peerAddress=SERVER_ADDRESS),
            clock=self.clock,
        )
        self.assertTrue(client.opened)
        self.assertEqual(guard.count, 1)
        self.clock.advance(6)
        pump.flush()
        self.assertIsNone(client.close_info)
        self.assertEqual(self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"}), [protocol.subscribe_ok("c")])
        client.sendClose(1000)
        pump.flush()
        self.clock.advance(10)
        pump.flush()
        self.assertEqual((guard.count, self.factory.connections), (0, set()))

    def test_health_serverHeader(self) -> None:
        """
        Plain HTTP answers name Kiwi, not the web framework's version.
        """
        response, _, _ = self.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"\r\nServer: Kiwi\r\n", response)
        self.assertNotIn(b"TwistedWeb", response)


class AuthorizationTests(SecurityTestMixin, SynchronousTestCase):
    """
    What an admitted connection may subscribe to, and its token's life.
    """

    def setUp(self) -> None:
        self.setUpSecurity()
        self.first = Identity(claims={"sub": "a"}, patterns=("c", "d"), expires_at=NOW + 60)

    def test_subscribe_notAuthorized(self) -> None:
        """
        C{SUBSCRIBE} to a source the token does not cover is refused, even
        if the source does not exist (no probing for source ids).
        """
        client, server, pump = self.protocol_with(Identity(claims={}, patterns=("c",), expires_at=NOW + 60))
        for source_id in ("d", "nope"):
            self.assertEqual(
                self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": source_id}),
                [protocol.command_error("SUBSCRIBE", source_id, "not authorized to subscribe to this source")],
            )
        self.assertEqual(self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"}), [protocol.subscribe_ok("c")])

    def test_expiry_closes(self) -> None:
        """
        When the token expires the connection is closed with 1008 and
        C{token expired}.
        """
        client, server, pump = self.protocol_with(self.first)
        self.clock.advance(59.9)
        pump.flush()
        self.assertIsNone(client.close_info)
        self.clock.advance(0.1)
        pump.flush()
        assert client.close_info is not None
        self.assertEqual(client.close_info[1:], (CLOSE_POLICY_VIOLATION, "token expired"))

    def test_authenticate_replaces(self) -> None:
        """
        C{AUTHENTICATE} with a good token replaces the identity, closes the
        subscriptions it no longer allows with C{SUBSCRIPTION_CLOSED}, and
        replies C{AUTHENTICATE_OK}; the connection then lives on past the
        old expiry.
        """
        client, server, pump = self.protocol_with(self.first)
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "d"})
        second = Identity(claims={"sub": "a", "v": 2}, patterns=("c",), expires_at=NOW + 600)
        self.authenticator.answers["fresh"] = second
        self.assertEqual(
            self.send(client, pump, {"type": "AUTHENTICATE", "token": "fresh"}),
            [
                protocol.subscription_closed("d", "not authorized by the new token"),
                protocol.authenticate_ok(NOW + 600),
            ],
        )
        self.assertIs(server.identity, second)
        self.assertEqual(self.registry.subscriptions_of(server), ["c"])
        self.clock.advance(100)
        pump.flush()
        self.assertIsNone(client.close_info)
        self.clock.advance(500)
        pump.flush()
        assert client.close_info is not None
        self.assertEqual(client.close_info[2], "token expired")

    def test_authenticate_refused(self) -> None:
        """
        A refused C{AUTHENTICATE} replies C{AUTHENTICATE_ERROR} with the
        reason and keeps the old token, which still expires.
        """
        client, server, pump = self.protocol_with(self.first)
        self.authenticator.answers["old"] = AuthError("token expired")
        self.assertEqual(
            self.send(client, pump, {"type": "AUTHENTICATE", "token": "old"}),
            [protocol.authenticate_error("token expired")],
        )
        self.assertIs(server.identity, self.first)
        self.clock.advance(60)
        pump.flush()
        assert client.close_info is not None
        self.assertEqual(client.close_info[1], CLOSE_POLICY_VIOLATION)

    def test_authenticate_badField(self) -> None:
        """
        An C{AUTHENTICATE} without a usable token gets C{AUTHENTICATE_ERROR}.
        """
        client, server, pump = self.protocol_with(self.first)
        self.assertEqual(
            self.send(client, pump, {"type": "AUTHENTICATE", "token": 5}),
            [protocol.authenticate_error("AUTHENTICATE command's token must be a non-empty string")],
        )

    def test_authenticate_notConfigured(self) -> None:
        """
        Without authentication, C{AUTHENTICATE} is refused.
        """
        self.setUpWebSocket()
        client, server, pump = self.connect()
        self.assertEqual(
            self.send(client, pump, {"type": "AUTHENTICATE", "token": "x"}),
            [protocol.authenticate_error("authentication is not configured")],
        )

    def test_authenticate_holdsLaterCommands(self) -> None:
        """
        Commands sent while a token is checked wait for it, so replies stay
        in order.
        """
        client, server, pump = self.protocol_with(self.first)
        pending: Deferred[Identity] = Deferred()
        self.authenticator.answers["slow"] = pending
        self.authenticator.answers["slow2"] = self.first
        self.assertEqual(self.send(client, pump, {"type": "AUTHENTICATE", "token": "slow"}), [])
        self.assertEqual(self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"}), [])
        self.assertEqual(self.send(client, pump, {"type": "AUTHENTICATE", "token": "slow2"}), [])
        self.assertEqual(self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "d"}), [])
        pending.callback(Identity(claims={}, patterns=("c",), expires_at=NOW + 600))
        pump.flush()
        self.assertEqual(
            client.take(),
            [
                protocol.authenticate_ok(NOW + 600),
                protocol.subscribe_ok("c"),
                protocol.authenticate_ok(NOW + 60),
                protocol.subscribe_ok("d"),
            ],
        )

    def test_authenticate_authenticatorBug(self) -> None:
        """
        A bug while checking a token closes the connection with 1011 and
        is logged.
        """
        client, server, pump = self.protocol_with(self.first)
        self.authenticator.answers["bug"] = RuntimeError("boom")
        self.assertEqual(self.send(client, pump, {"type": "AUTHENTICATE", "token": "bug"}), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        assert client.close_info is not None
        self.assertEqual(client.close_info[1], CLOSE_INTERNAL_ERROR)


class LimitTests(SecurityTestMixin, SynchronousTestCase):
    """
    Message size, command rate, subscriptions per connection.
    """

    def test_rateLimit_closes(self) -> None:
        """
        A connection that sends commands faster than allowed (beyond the
        burst) is closed with 1008.
        """
        self.setUpSecurity(ServerConfig(listen="", max_commands_per_s=1, max_command_burst=3))
        client, server, pump = self.connect()
        for _ in range(3):
            self.assertEqual(len(self.send(client, pump, {"type": "UNSUBSCRIBE", "sourceId": "c"})), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.send(client, pump, {"type": "UNSUBSCRIBE", "sourceId": "c"})), 1)
        self.assertEqual(self.send(client, pump, {"type": "UNSUBSCRIBE", "sourceId": "c"}), [])
        assert client.close_info is not None
        self.assertEqual(client.close_info[1:], (CLOSE_POLICY_VIOLATION, "command rate limit exceeded"))

    def test_maxMessageSize_closes1009(self) -> None:
        """
        A message larger than C{max_message_size} closes the connection
        with 1009.
        """
        self.setUpSecurity(ServerConfig(listen="", max_message_size=256))
        client, server, pump = self.connect()
        self.assertEqual(len(self.send(client, pump, b"x" * 256)), 1)
        self.assertEqual(self.send(client, pump, b"x" * 257), [])
        assert client.close_info is not None
        self.assertEqual(client.close_info[1], 1009)

    def test_maxMessageSize_fragmented(self) -> None:
        """
        The limit applies to the whole message, however it is fragmented.
        """
        self.setUpSecurity(ServerConfig(listen="", max_message_size=256))
        client, server, pump = self.connect()
        client.beginMessage(isBinary=False)
        for _ in range(3):
            client.beginMessageFrame(100)
            client.sendMessageFrameData(b"y" * 100)
        client.endMessage()
        pump.flush()
        assert client.close_info is not None
        self.assertEqual(client.close_info[1], 1009)

    def test_maxSubscriptions(self) -> None:
        """
        A connection may hold at most C{max_subscriptions} subscriptions.
        """
        self.setUpSecurity(subscriber=SubscriberConfig(max_subscriptions=1))
        client, server, pump = self.connect()
        self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "c"})
        self.assertEqual(
            self.send(client, pump, {"type": "SUBSCRIBE", "sourceId": "d"}),
            [protocol.command_error("SUBSCRIBE", "d", "too many subscriptions (at most 1 per connection)")],
        )

    def test_options_fromConfig(self) -> None:
        """
        The factory hands the size limit and handshake timeout to Autobahn.
        """
        self.setUpSecurity(ServerConfig(listen="", max_message_size=1000, handshake_timeout_s=3))
        self.assertEqual(
            (self.factory.maxMessagePayloadSize, self.factory.maxFramePayloadSize, self.factory.openHandshakeTimeout),
            (1000, 1000, 3),
        )


_frames = st.one_of(
    st.tuples(st.text(max_size=200), st.just(False)),
    st.tuples(st.binary(max_size=200), st.just(True)),
    st.tuples(
        st.builds(
            lambda d, t: json.dumps(dict(d, **t)),
            _command_like,
            st.fixed_dictionaries(
                {}, optional={"type": st.just("AUTHENTICATE"), "token": st.text(max_size=20) | st.integers()}
            ),
        ),
        st.just(False),
    ),
)


class FrameFuzzTests(SecurityTestMixin, SynchronousTestCase):
    """
    Whatever frames a client sends, each gets exactly one reply (an error
    or a command response) and nothing is logged as a failure.
    """

    def setUp(self) -> None:
        self.setUpSecurity(authenticator=FakeAuthenticator())
        self.registry.add_source(FakeSource("c"))
        self.authenticator.answers["good"] = Identity(claims={}, patterns=("*",), expires_at=NOW + 3600)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(_frames, min_size=1, max_size=6))
    def test_frames_oneReplyEach(self, frames: list[tuple[Any, bool]]) -> None:
        """
        Arbitrary text and binary frames, and command-shaped JSON with
        arbitrary values.
        """
        client, server, pump = self.protocol_with(Identity(claims={}, patterns=("c", "x*"), expires_at=NOW + 3600))
        for payload, is_binary in frames:
            data = payload if isinstance(payload, bytes) else payload.encode("utf-8")
            client.sendMessage(data, isBinary=is_binary)
            pump.flush()
            replies = [json.loads(m) for m in client.take()]
            self.assertEqual(len(replies), 1, (payload, replies))
            self.assertIn(replies[0]["type"], ("ERROR", "COMMAND_RESPONSE"))
        self.assertEqual(server.state, server.STATE_OPEN)
        self.assertEqual(self.flushLoggedErrors(), [])


class OnConnectTests(SecurityTestMixin, SynchronousTestCase):
    """
    A failure inside the WebSocket handshake shows the client nothing of
    it.
    """

    def test_onConnect_bug(self) -> None:
        """
        An exception in C{onConnect} denies the handshake with a bare 500
        and is logged.
        """
        self.setUpSecurity()
        server = self.factory.buildProtocol(CLIENT_ADDRESS)

        def broken() -> str:
            raise RuntimeError("secret detail")

        import kiwi.ws

        self.patch(kiwi.ws, "next_conn_id", broken)
        transport = iosim.FakeTransport(server, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=CLIENT_ADDRESS)
        server.makeConnection(transport)
        server.dataReceived(handshake())
        response = transport.getOutBuffer()
        self.assertTrue(response.startswith(b"HTTP/1.1 500 internal error\r\n"), response)
        self.assertNotIn(b"secret detail", response)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        server.connectionLost(Failure(ConnectionDone()))
