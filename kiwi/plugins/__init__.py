"""
Plugins: the authenticate and intercept hooks, as Kiwi's other modules see
them.

Kiwi runs WebAssembly plugins compatible with the original Kiwi's
C{kiwi:kiwi@0.1.0} interface (see C{kiwi/plugins/wit/} and
C{docs/plugins.md}). This module defines the seams (L{IInterceptor},
L{IAuthenticator}), the values that cross them, and L{PluginSlot}, the holder
through which the registry and the WebSocket protocol reach the plugin of
the moment, so that a reload can swap it atomically. Only
L{kiwi.plugins.wasm} imports wasmtime.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import attrs
from zope.interface import Attribute, Interface

from kiwi.events import CounterEvent, Event, KafkaEvent


class PluginError(Exception):
    """
    A plugin call failed: it trapped, ran out of time or memory, or
    returned a value Kiwi cannot use.

    @ivar reason: A short word for counters and logs: C{"trap"},
        C{"timeout"} or C{"malformed"}.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PluginLoadError(Exception):
    """
    A plugin file cannot be used; the message says what was expected and
    what was found.
    """


# Intercept actions


@attrs.frozen
class Forward:
    """
    Deliver the event unchanged.
    """


@attrs.frozen
class Discard:
    """
    Do not deliver the event to this subscriber.
    """


@attrs.frozen
class TransformKafka:
    """
    Deliver a Kafka event with another payload (C{None}: a null value).
    """

    payload: bytes | None

    def apply(self, event: Event) -> Event:
        """
        The transformed event.

        @raise PluginError: if C{event} is not a Kafka event.
        """
        if not isinstance(event, KafkaEvent):
            raise PluginError("malformed", "the plugin returned a Kafka transform for a counter event")
        return attrs.evolve(event, payload=self.payload)


@attrs.frozen
class TransformCounter:
    """
    Deliver a counter event with another count.
    """

    count: int

    def apply(self, event: Event) -> Event:
        """
        The transformed event.

        @raise PluginError: if C{event} is not a counter event.
        """
        if not isinstance(event, CounterEvent):
            raise PluginError("malformed", "the plugin returned a counter transform for a Kafka event")
        return attrs.evolve(event, count=self.count)


FORWARD = Forward()
DISCARD = Discard()

Action = Forward | Discard | TransformKafka | TransformCounter


# Authenticate


@attrs.frozen
class HttpRequest:
    """
    The parts of a WebSocket upgrade request an authenticate plugin sees.

    @ivar scheme: C{"http"} or C{"https"}, or C{None}.
    @ivar headers: Names in lower case, in arrival order.
    """

    method: str
    path_with_query: str | None
    scheme: str | None
    authority: str | None
    headers: tuple[tuple[str, bytes], ...]


@attrs.frozen
class Authenticate:
    """
    Let the client in.
    """


@attrs.frozen
class Reject:
    """
    Refuse the handshake.
    """


@attrs.frozen
class WithContext:
    """
    Let the client in, attaching C{context} to the connection.
    """

    context: bytes


AUTHENTICATE = Authenticate()
REJECT = Reject()

Outcome = Authenticate | Reject | WithContext


class IInterceptor(Interface):
    """
    Decides, per event and per subscriber, whether and how an event is
    delivered. Called on the reactor thread; each call is bounded in time.
    """

    description: str = Attribute("What was loaded, for logs and /health: path and kind.")

    def intercept(event: Event, auth: bytes | None, addr: str | None) -> Action:
        """
        The action for C{event} on a connection whose authentication context
        is C{auth} and whose peer is C{addr} (C{ip:port}).

        @raise PluginError: if the plugin failed; the event is then dropped
            for this subscriber.
        """


class IAuthenticator(Interface):
    """
    Decides whether a WebSocket handshake may proceed. Its method blocks;
    Kiwi calls it in a thread pool.
    """

    description: str = Attribute("What was loaded, for logs and /health: path and kind.")

    def thd_authenticate(request: HttpRequest) -> Outcome:
        """
        The verdict on C{request}. Safe to call from several threads.

        @raise PluginError: if the plugin failed; the handshake is then
            refused.
        """


T = TypeVar("T")


class PluginSlot(Generic[T]):
    """
    The plugin currently in force for one hook, or C{None}.

    Readers fetch C{current} once per call, so a swap never affects a call
    in flight: it finishes on the plugin it started with.
    """

    def __init__(self, current: T | None = None) -> None:
        self.current: T | None = current

    def swap(self, plugin: T | None) -> T | None:
        """
        Install C{plugin} (or none) and return the one it replaces.
        """
        previous, self.current = self.current, plugin
        return previous
