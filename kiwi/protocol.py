"""
Kiwi's wire format: JSON text frames, compatible with the original Kiwi.

Commands arrive as C{{"type": "SUBSCRIBE" | "UNSUBSCRIBE" | "REQUEST", ...}}
(and our extension C{{"type": "AUTHENTICATE", "token": ...}});
replies are wrapped in C{COMMAND_RESPONSE}, events in C{RESULT}, and
asynchronous information in C{NOTICE}. See C{docs/protocol.md}.

This module knows nothing of Twisted or WebSockets: it turns text into
command objects and values into frame payloads (UTF-8 JSON bytes).
"""

from __future__ import annotations

import base64
import json
from typing import Literal

import attrs

from kiwi.events import CounterEvent, Event, KafkaEvent

Mode = Literal["push", "pull"]

MAX_REQUEST = 2**53
"""
The largest C{n} a C{REQUEST} may carry: the largest integer every
JavaScript client can represent exactly.
"""


@attrs.frozen
class Subscribe:
    """
    Start receiving a source's events.
    """

    source_id: str
    mode: Mode = "push"


@attrs.frozen
class Unsubscribe:
    """
    Stop receiving a source's events.
    """

    source_id: str


@attrs.frozen
class Request:
    """
    Add C{n} credits to a pull subscription.
    """

    source_id: str
    n: int


@attrs.frozen
class Authenticate:
    """
    Our extension: replace the connection's token (before it expires).
    """

    token: str = attrs.field(repr=False)


Command = Subscribe | Unsubscribe | Request | Authenticate

MAX_TOKEN_LENGTH = 16 * 1024
"""
The longest token an C{AUTHENTICATE} may carry.
"""

_ERROR_TYPES = {"SUBSCRIBE": "SUBSCRIBE_ERROR", "UNSUBSCRIBE": "UNSUBSCRIBE_ERROR", "REQUEST": "REQUEST_ERROR"}


class ProtocolError(Exception):
    """
    A frame is not a valid command.

    When the frame names a known command and a source, the reply is that
    command's C{*_ERROR} response; otherwise it is a generic C{ERROR} frame.
    """

    def __init__(self, message: str, command_type: str | None = None, source_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.command_type = command_type
        self.source_id = source_id

    def reply(self) -> bytes:
        """
        The frame payload that tells the client what was wrong.
        """
        if self.command_type == "AUTHENTICATE":
            return authenticate_error(self.message)
        if self.command_type in _ERROR_TYPES and self.source_id is not None:
            return command_error(self.command_type, self.source_id, self.message)
        return error_frame(self.message)


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_command(text: str) -> Command:
    """
    Parse one text frame into a command.

    Unknown fields are ignored, so that clients written for later versions
    keep working.

    @raise ProtocolError: naming what is wrong with the frame.
    """
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"frame is not valid JSON: {e}") from None
    if not isinstance(document, dict):
        raise ProtocolError("command must be a JSON object with a type field")
    command_type = document.get("type")
    if command_type == "AUTHENTICATE":
        return _parse_authenticate(document)
    if command_type is None:
        raise ProtocolError("command has no type field (expected SUBSCRIBE, UNSUBSCRIBE or REQUEST)")
    if not isinstance(command_type, str) or command_type not in _ERROR_TYPES:
        raise ProtocolError(
            f"unknown command type {_short(command_type)} (expected SUBSCRIBE, UNSUBSCRIBE or REQUEST)"
        )
    source_id = document.get("sourceId")
    if "sourceId" not in document:
        raise ProtocolError(f"{command_type} command has no sourceId field")
    if not isinstance(source_id, str) or not source_id:
        raise ProtocolError(f"{command_type} command's sourceId must be a non-empty string")
    if command_type == "SUBSCRIBE":
        mode = document.get("mode", "push")
        if mode is None:
            mode = "push"
        if mode not in ("push", "pull"):
            raise ProtocolError(f"mode must be \"push\" or \"pull\", got {_short(mode)}", command_type, source_id)
        return Subscribe(source_id, mode)
    if command_type == "UNSUBSCRIBE":
        return Unsubscribe(source_id)
    return Request(source_id, _parse_n(document, source_id))


def _parse_authenticate(document: dict[str, object]) -> Authenticate:
    token = document.get("token")
    if "token" not in document:
        raise ProtocolError("AUTHENTICATE command has no token field", "AUTHENTICATE")
    if not isinstance(token, str) or not token:
        raise ProtocolError("AUTHENTICATE command's token must be a non-empty string", "AUTHENTICATE")
    if len(token) > MAX_TOKEN_LENGTH:
        raise ProtocolError("token too large", "AUTHENTICATE")
    return Authenticate(token)


def _parse_n(document: dict[str, object], source_id: str) -> int:
    if "n" not in document:
        raise ProtocolError("REQUEST command has no n field", "REQUEST", source_id)
    n = document["n"]
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise ProtocolError(f"n must be a positive integer, got {_short(n)}", "REQUEST", source_id)
    if isinstance(n, float):
        raise ProtocolError(f"n must be a whole number, got {_short(n)}", "REQUEST", source_id)
    if n <= 0:
        raise ProtocolError(f"n must be at least 1, got {n}", "REQUEST", source_id)
    if n > MAX_REQUEST:
        raise ProtocolError(f"n must be at most 2^53 ({MAX_REQUEST})", "REQUEST", source_id)
    return n


def _short(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def encode_result(event: Event) -> bytes:
    """
    The C{RESULT} frame payload for one event.
    """
    data: dict[str, object]
    if isinstance(event, KafkaEvent):
        data = {
            "sourceType": "kafka",
            "sourceId": event.source_id,
            "key": _b64(event.key),
            "payload": _b64(event.payload),
            "partition": event.partition,
            "offset": event.offset,
            "timestamp": event.timestamp,
        }
    elif isinstance(event, CounterEvent):
        data = {"sourceType": "counter", "sourceId": event.source_id, "count": event.count}
    else:
        raise TypeError(f"not an event: {event!r}")
    return _dumps({"type": "RESULT", "data": data})


def _response(data: dict[str, object]) -> bytes:
    return _dumps({"type": "COMMAND_RESPONSE", "data": data})


def subscribe_ok(source_id: str) -> bytes:
    """
    Reply to a successful C{SUBSCRIBE}.
    """
    return _response({"type": "SUBSCRIBE_OK", "sourceId": source_id})


def unsubscribe_ok(source_id: str) -> bytes:
    """
    Reply to a successful C{UNSUBSCRIBE}.
    """
    return _response({"type": "UNSUBSCRIBE_OK", "sourceId": source_id})


def request_ok(source_id: str, requests: int) -> bytes:
    """
    Reply to a successful C{REQUEST}: C{requests} credits remain.
    """
    return _response({"type": "REQUEST_OK", "sourceId": source_id, "requests": requests})


def command_error(command_type: str, source_id: str, error: str) -> bytes:
    """
    The C{*_ERROR} reply to a command of C{command_type}.
    """
    return _response({"type": _ERROR_TYPES[command_type], "sourceId": source_id, "error": error})


def authenticate_ok(expires_at: float | None) -> bytes:
    """
    Our extension: the reply to a successful C{AUTHENTICATE}; C{expiresAt}
    is when the new token expires (POSIX seconds), or C{null}.
    """
    expiry = None if expires_at is None else int(expires_at)
    return _response({"type": "AUTHENTICATE_OK", "expiresAt": expiry})


def authenticate_error(error: str) -> bytes:
    """
    Our extension: the reply to a refused C{AUTHENTICATE}.
    """
    return _response({"type": "AUTHENTICATE_ERROR", "error": error})


def error_frame(error: str) -> bytes:
    """
    Our extension: the reply to a frame that is no command at all.
    """
    return _dumps({"type": "ERROR", "data": {"error": error}})


def lag_notice(source_id: str, count: int) -> bytes:
    """
    Tell a subscriber that it missed C{count} events.
    """
    return _dumps({"type": "NOTICE", "data": {"type": "LAG", "sourceId": source_id, "count": count}})


def subscription_closed(source_id: str, message: str) -> bytes:
    """
    Tell a subscriber that the server ended its subscription.
    """
    return _dumps(
        {"type": "NOTICE", "data": {"type": "SUBSCRIPTION_CLOSED", "sourceId": source_id, "message": message}}
    )
