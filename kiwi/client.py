"""
A Python client for Kiwi, for scripts and tests. It runs on Twisted.

    from kiwi.client import KiwiClient

    client = KiwiClient("ws://127.0.0.1:8000/", token="...")
    client.on("result", lambda data: print(data))
    await client.connect()
    await client.subscribe("prices", start="earliest")
    ...
    await client.close()

It subscribes in push or pull mode, sends C{REQUEST}s, calls handlers for
results, notices and replies, and reconnects by itself when the connection
drops: with exponential backoff and jitter, renewing every subscription,
Kafka ones from the last seen offsets + 1 (C{from}, see
C{docs/protocol.md}), and pull ones with the credit not yet used. See
C{docs/clients.md}.
"""

from __future__ import annotations

import json
import random as _random
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from kiwi.logs import logger

EVENTS = ("result", "notice", "reply", "error", "open", "close", "state")

Handler = Callable[..., None]


class KiwiCommandError(Exception):
    """
    The server refused a command (C{SUBSCRIBE_ERROR}, C{REQUEST_ERROR},
    C{UNSUBSCRIBE_ERROR}) or the frame (C{ERROR}).

    @ivar reply: The reply's C{data}.
    """

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(reply.get("error", "error"))
        self.reply = reply


class ConnectionClosed(Exception):
    """
    The connection closed before the reply arrived, or there was none.
    """


def backoff_delay(
    attempt: int,
    min_delay: float = 0.5,
    max_delay: float = 30.0,
    jitter: float = 0.5,
    random: Callable[[], float] = _random.random,
) -> float:
    """
    Seconds to wait before reconnect attempt C{attempt} (0-based):
    exponential from C{min_delay} up to C{max_delay}, less up to C{jitter}
    of it at random so that many clients do not reconnect in step.
    """
    base = min(max_delay, min_delay * 2.0 ** min(attempt, 30))
    return float(base * (1 - jitter * random()))


def with_token(url: str, token: str | None, param: str = "access_token") -> str:
    """
    C{url} with the token as a query parameter (browsers cannot send
    headers with a WebSocket, so Kiwi's clients all pass it this way).
    """
    if not token:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != param]
    query.append((param, token))
    return urlunsplit(parts._replace(query=urlencode(query)))


@attrs.define
class Subscription:
    """
    A subscription the client keeps alive across reconnects.

    @ivar start: The C{from} asked for first.
    @ivar offsets: The last offset seen per partition (Kafka sources).
    @ivar credits: Pull credits asked for and not yet used.
    """

    source_id: str
    mode: str
    start: Any = None
    offsets: dict[int, int] = attrs.Factory(dict)
    credits: int = 0
    received: int = 0
    confirmed: bool = False
    waiters: list[Deferred[dict[str, Any]]] = attrs.Factory(list)


class _Protocol(WebSocketClientProtocol):
    client: KiwiClient

    def onOpen(self) -> None:
        self.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:
            self.client._received(self, payload.decode("utf-8"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.client._closed(self, code, reason)


class _Factory(WebSocketClientFactory):
    protocol = _Protocol

    def __init__(self, client: KiwiClient, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.client = client

    def buildProtocol(self, addr: Any) -> _Protocol:
        protocol = super().buildProtocol(addr)
        assert isinstance(protocol, _Protocol)
        protocol.client = self.client
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.client._failed(reason)


class KiwiClient:
    """
    One logical connection to Kiwi that survives reconnects.

    @ivar state: C{idle}, C{connecting}, C{open}, C{waiting} (to
        reconnect) or C{closed}.
    @ivar attempt: Reconnect attempts since the connection was last open.
    @ivar subscriptions: By source id.
    """

    log = logger()

    def __init__(
        self,
        url: str,
        token: str | None = None,
        reactor: Any = None,
        reconnect: bool = True,
        min_delay: float = 0.5,
        max_delay: float = 30.0,
        jitter: float = 0.5,
        random: Callable[[], float] = _random.random,
        token_param: str = "access_token",
        tls_options: Any = None,
        open_timeout: float = 10.0,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.url = url
        self._reactor = reactor
        self._token = token
        self._token_param = token_param
        self._reconnect = reconnect
        self._delays = (min_delay, max_delay, jitter)
        self._random = random
        self._tls_options = tls_options
        self._open_timeout = open_timeout
        self.state = "idle"
        self.attempt = 0
        self.subscriptions: dict[str, Subscription] = {}
        self._handlers: dict[str, list[Handler]] = {name: [] for name in EVENTS}
        self._connection: _Protocol | None = None
        self._pending: list[Deferred[dict[str, Any]]] = []
        self._timer: IDelayedCall | None = None
        self._closing = False
        self._open_waiters: list[Deferred[None]] = []
        self._closed_waiters: list[Deferred[None]] = []

    # Handlers

    def on(self, name: str, handler: Handler) -> Callable[[], None]:
        """
        Call C{handler} on C{result} (with the result's C{data}), C{notice}
        (its C{data}), C{reply} (every command reply's C{data}), C{error}
        (an exception), C{open}, C{close} (code, reason) or C{state} (the
        new state).

        @return: A function that removes the handler.
        """
        if name not in self._handlers:
            raise ValueError(f"unknown event {name!r}; expected one of {', '.join(EVENTS)}")
        self._handlers[name].append(handler)
        return lambda: self._handlers[name].remove(handler)

    def _emit(self, name: str, *args: Any) -> None:
        for handler in list(self._handlers[name]):
            try:
                handler(*args)
            except Exception:
                self.log.failure("a {name} handler failed", name=name)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._emit("state", state)

    # Connecting

    def connect(self) -> Deferred[None]:
        """
        Open the connection, and keep reopening it until L{close}.

        @return: Fires once the connection is open (with C{reconnect}
            false, fails if it cannot be opened).
        """
        self._closing = False
        waiter: Deferred[None] = Deferred()
        if self.state == "open":
            waiter.callback(None)
            return waiter
        self._open_waiters.append(waiter)
        if self._connection is None and self._timer is None and self.state != "connecting":
            self._open()
        return waiter

    def when_open(self) -> Deferred[None]:
        """
        Fires the next time the connection is open (now, if it is).
        """
        waiter: Deferred[None] = Deferred()
        if self.state == "open":
            waiter.callback(None)
        else:
            self._open_waiters.append(waiter)
        return waiter

    def _open(self) -> None:
        self._set_state("connecting")
        factory = _Factory(self, with_token(self.url, self._token, self._token_param), reactor=self._reactor)
        options: Any = factory.setProtocolOptions
        options(autoPingInterval=0)
        connectWS(factory, contextFactory=self._tls_options, timeout=self._open_timeout)

    def _opened(self, connection: _Protocol) -> None:
        self._connection = connection
        if self._closing:
            connection.sendClose(1000)
            return
        self.attempt = 0
        # Renew first: a handler or waiter that subscribes must not see
        # its new subscription sent twice.
        renew = list(self.subscriptions.values())
        self._set_state("open")
        for subscription in renew:
            self._send_subscribe(subscription, renewal=subscription.confirmed)
        self._emit("open")
        waiters, self._open_waiters = self._open_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _failed(self, reason: Failure) -> None:
        self._emit("error", reason.value)
        self._lost()

    def _closed(self, connection: _Protocol, code: int | None, reason: str | None) -> None:
        if self._connection is not None and connection is not self._connection:
            return
        was_open = self._connection is not None
        self._connection = None
        pending, self._pending = self._pending, []
        for d in pending:
            d.errback(ConnectionClosed("the connection closed before the reply arrived"))
        if was_open:
            self._emit("close", code, reason)
        self._lost()

    def _lost(self) -> None:
        if self._closing or not self._reconnect:
            self._set_state("closed")
            if not self._closing:
                waiters, self._open_waiters = self._open_waiters, []
                for waiter in waiters:
                    waiter.errback(ConnectionClosed("could not connect"))
            closed, self._closed_waiters = self._closed_waiters, []
            for d in closed:
                d.callback(None)
            return
        min_delay, max_delay, jitter = self._delays
        delay = backoff_delay(self.attempt, min_delay, max_delay, jitter, self._random)
        self.attempt += 1
        self._set_state("waiting")
        self.log.debug("reconnecting to {url} in {delay:.2f}s", url=self.url, delay=delay)
        self._timer = self._reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._timer = None
        if not self._closing:
            self._open()

    def drop(self) -> None:
        """
        Drop the TCP connection abruptly (as a network failure would); the
        client then reconnects. For tests and demonstrations.
        """
        transport: Any = self._connection.transport if self._connection is not None else None
        if transport is not None:
            transport.abortConnection()

    def close(self) -> Deferred[None]:
        """
        Close the connection for good.

        @return: Fires once it is closed.
        """
        self._closing = True
        done: Deferred[None] = Deferred()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._connection is None and self.state != "connecting":
            self._set_state("closed")
            done.callback(None)
            return done
        self._closed_waiters.append(done)
        if self._connection is not None:
            self._connection.sendClose(1000)
        return done

    # Messages

    def _received(self, connection: _Protocol, text: str) -> None:
        try:
            message = json.loads(text)
            kind = message.get("type")
            data = message.get("data") or {}
        except (ValueError, AttributeError):
            self._emit("error", ValueError(f"not a Kiwi message: {text[:80]!r}"))
            return
        if kind == "RESULT":
            subscription = self.subscriptions.get(str(data.get("sourceId")))
            if subscription is not None:
                if data.get("sourceType") == "kafka":
                    subscription.offsets[data["partition"]] = data["offset"]
                if subscription.mode == "pull" and subscription.credits > 0:
                    subscription.credits -= 1
                subscription.received += 1
            self._emit("result", data)
        elif kind == "NOTICE":
            if data.get("type") == "SUBSCRIPTION_CLOSED":
                self.subscriptions.pop(str(data.get("sourceId")), None)
            self._emit("notice", data)
        elif kind == "COMMAND_RESPONSE":
            self._emit("reply", data)
            if self._pending:
                d = self._pending.pop(0)
                if str(data.get("type", "")).endswith("_ERROR"):
                    d.errback(KiwiCommandError(data))
                else:
                    d.callback(data)
        elif kind == "ERROR":
            error = KiwiCommandError(data)
            self._emit("error", error)
            if self._pending:
                self._pending.pop(0).errback(error)

    def _command(self, command: dict[str, Any]) -> Deferred[dict[str, Any]]:
        if self._connection is None or self.state != "open":
            return fail(ConnectionClosed("not connected"))
        d: Deferred[dict[str, Any]] = Deferred()
        self._pending.append(d)
        connection: Any = self._connection
        connection.sendMessage(json.dumps(command).encode("utf-8"))
        return d

    def send_raw(self, command: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """
        Send any command and return the C{data} of its reply, whether the
        command succeeded or not (for tests of bad input).
        """

        def unwrap(failure: Failure) -> dict[str, Any]:
            failure.trap(KiwiCommandError)
            error = failure.value
            assert isinstance(error, KiwiCommandError)
            return error.reply

        return self._command(command).addErrback(unwrap)

    # Commands

    def subscribe(self, source_id: str, mode: str = "push", start: Any = None) -> Deferred[dict[str, Any]]:
        """
        Subscribe to a source, and keep the subscription across reconnects.

        @param start: C{from}: C{None} or C{"latest"}, C{"earliest"},
            C{{"timestamp": ms}} or C{{"offsets": {"0": 12}}}.
        @return: Fires with C{SUBSCRIBE_OK}'s data (once connected), or
            fails with L{KiwiCommandError}.
        """
        if source_id in self.subscriptions:
            return fail(ValueError(f"already subscribed to {source_id!r}"))
        subscription = Subscription(source_id, mode, start)
        self.subscriptions[source_id] = subscription
        d: Deferred[dict[str, Any]] = Deferred()
        subscription.waiters.append(d)
        if self.state == "open":
            self._send_subscribe(subscription)
        return d

    def resume_from(self, source_id: str) -> Any:
        """
        Where a renewed subscription starts: after the last offsets seen,
        or where it first asked to if it saw none.
        """
        subscription = self.subscriptions.get(source_id)
        if subscription is None:
            return None
        if not subscription.offsets:
            return subscription.start
        return {"offsets": {str(p): offset + 1 for p, offset in sorted(subscription.offsets.items())}}

    def _send_subscribe(self, subscription: Subscription, renewal: bool = False) -> None:
        command: dict[str, Any] = {"type": "SUBSCRIBE", "sourceId": subscription.source_id, "mode": subscription.mode}
        start = self.resume_from(subscription.source_id)
        if start is not None and start != "latest":
            command["from"] = start

        def ok(reply: dict[str, Any]) -> None:
            subscription.confirmed = True
            if renewal and subscription.mode == "pull" and subscription.credits > 0:
                # Renew the credit the subscriber had not used yet (before
                # the waiters run: what they request is sent by them).
                self._command(
                    {"type": "REQUEST", "sourceId": subscription.source_id, "n": subscription.credits}
                ).addErrback(lambda _: None)
            waiters, subscription.waiters = subscription.waiters, []
            for waiter in waiters:
                waiter.callback(reply)

        def refused(failure: Failure) -> None:
            if failure.check(ConnectionClosed):
                return  # renewed on reconnect
            if self.subscriptions.get(subscription.source_id) is subscription:
                del self.subscriptions[subscription.source_id]
            waiters, subscription.waiters = subscription.waiters, []
            for waiter in waiters:
                waiter.errback(failure)
            if not waiters:
                self._emit("error", failure.value)

        self._command(command).addCallbacks(ok, refused)

    def request(self, source_id: str, n: int) -> Deferred[dict[str, Any]]:
        """
        Give a pull subscription C{n} more credits.

        @return: Fires with C{REQUEST_OK}'s data.
        """
        subscription = self.subscriptions.get(source_id)
        if subscription is not None:
            subscription.credits += n
        return self._command({"type": "REQUEST", "sourceId": source_id, "n": n})

    def unsubscribe(self, source_id: str) -> Deferred[dict[str, Any]]:
        """
        End a subscription.

        @return: Fires with C{UNSUBSCRIBE_OK}'s data.
        """
        subscription = self.subscriptions.pop(source_id, None)
        if subscription is not None:
            waiters, subscription.waiters = subscription.waiters, []
            for waiter in waiters:
                waiter.errback(ConnectionClosed("unsubscribed before the subscription was confirmed"))
        return self._command({"type": "UNSUBSCRIBE", "sourceId": source_id})

    def offsets(self, source_id: str) -> dict[int, int]:
        """
        The last offset seen per partition of a Kafka subscription.
        """
        subscription = self.subscriptions.get(source_id)
        return dict(subscription.offsets) if subscription is not None else {}


def decode(data: dict[str, Any], field: str = "payload", format: str = "base64") -> Any:
    """
    A Kafka result's payload (or C{key}) as Python: C{bytes} when it was
    sent as base64 (C{format} C{base64}, the default, or a message that did
    not decode), else the text or JSON value as sent. C{format} is the
    source's C{format} (or C{key_format}).
    """
    import base64

    value = data.get(field)
    encoding = data.get("payloadEncoding" if field == "payload" else "keyEncoding")
    if isinstance(value, str) and (encoding == "base64" or format == "base64"):
        return base64.b64decode(value)
    return value
