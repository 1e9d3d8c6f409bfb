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

from kiwi.events import CounterEvent, Event, Headers, KafkaEvent, PayloadFormat

Mode = Literal["push", "pull"]

MAX_REQUEST = 2**53
"""
The largest C{n} a C{REQUEST} may carry: the largest integer every
JavaScript client can represent exactly.
"""


MAX_OFFSET = 2**63 - 1
"""
The largest Kafka offset or timestamp a C{from} may name.
"""


@attrs.frozen
class StartFrom:
    """
    Where a subscription starts reading (our extension, C{from}).

    @ivar kind: C{latest} (new events only, the default), C{earliest} (the
        first retained record of every partition), C{timestamp} (the first
        record at or after C{timestamp}, in every partition) or C{offsets}
        (the given offset in each listed partition; unlisted partitions
        start at the latest).
    @ivar timestamp: Milliseconds since the epoch, for C{timestamp}.
    @ivar offsets: C{(partition, offset)} pairs, for C{offsets}.
    """

    kind: Literal["latest", "earliest", "timestamp", "offsets"] = "latest"
    timestamp: int | None = None
    offsets: tuple[tuple[int, int], ...] = ()

    @property
    def is_latest(self) -> bool:
        """
        Whether this is the default: no replay.
        """
        return self.kind == "latest"


LATEST = StartFrom()


@attrs.frozen
class Subscribe:
    """
    Start receiving a source's events.

    @ivar start: Where to start (C{from} on the wire).
    """

    source_id: str
    mode: Mode = "push"
    start: StartFrom = LATEST


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
    """
    Compact JSON text, as UTF-8.

    @raise ValueError: for a float out of JSON's range (C{inf}, C{nan}).
    @raise RecursionError: for data nested too deeply to encode.
    """
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (possible in JSON text) cannot be UTF-8: escape it.
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def parse_command(text: str) -> Command:
    """
    Parse one text frame into a command.

    Unknown fields are ignored, so that clients written for later versions
    keep working.

    @raise ProtocolError: naming what is wrong with the frame.
    """
    try:
        document = json.loads(text, parse_constant=_no_constants)
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
        return Subscribe(source_id, mode, _parse_from(document.get("from"), source_id))
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


_FROM_FORMS = 'from must be "latest", "earliest", {"timestamp": ms} or {"offsets": {"<partition>": offset}}'


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_from(value: object, source_id: str) -> StartFrom:
    def fail(message: str) -> ProtocolError:
        return ProtocolError(message, "SUBSCRIBE", source_id)

    if value is None or value == "latest":
        return LATEST
    if value == "earliest":
        return StartFrom("earliest")
    if not isinstance(value, dict) or len(value) != 1:
        raise fail(f"{_FROM_FORMS}, got {_short(value)}")
    if "timestamp" in value:
        timestamp = value["timestamp"]
        if not _is_integer(timestamp) or not 0 <= timestamp <= MAX_OFFSET:
            raise fail(f"from.timestamp must be an integer >= 0 (milliseconds since the epoch), got {_short(timestamp)}")
        return StartFrom("timestamp", timestamp=timestamp)
    if "offsets" in value:
        offsets = value["offsets"]
        if not isinstance(offsets, dict) or not offsets:
            raise fail(f"from.offsets must be a non-empty object of partition to offset, got {_short(offsets)}")
        pairs = []
        for partition, offset in offsets.items():
            if not (partition.isascii() and partition.isdigit()) or len(partition) > 9:
                raise fail(f"from.offsets keys must be partition numbers such as \"0\", got {_short(partition)}")
            if not _is_integer(offset) or not 0 <= offset <= MAX_OFFSET:
                raise fail(f"from.offsets[\"{int(partition)}\"] must be an integer >= 0, got {_short(offset)}")
            pairs.append((int(partition), offset))
        return StartFrom("offsets", offsets=tuple(sorted(pairs)))
    raise fail(f"{_FROM_FORMS}, got {_short(value)}")


def _short(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _render(data: bytes | None, form: PayloadFormat) -> tuple[object, bool]:
    """
    C{data} as C{form} asks: the value for the frame, and whether it had
    to fall back to base64 because it does not decode.
    """
    if data is None or form == "base64":
        return _b64(data), False
    try:
        text = data.decode("utf-8")
        if form == "utf8":
            return text, False
        # NaN and Infinity are not JSON: a browser could not parse the frame.
        return json.loads(text, parse_constant=_reject_constant), False
    except (ValueError, RecursionError):
        return _b64(data), True


def _render_headers(headers: Headers, form: PayloadFormat) -> list[dict[str, object]]:
    result: list[dict[str, object]] = []
    for key, value in headers:
        rendered, fallback = _render(value, "base64" if form == "base64" else "utf8")
        item: dict[str, object] = {"key": key, "value": rendered}
        if fallback:
            item["valueEncoding"] = "base64"
        result.append(item)
    return result


def encode_result(event: Event) -> bytes:
    """
    The C{RESULT} frame payload for one event.

    Kafka keys and payloads are rendered as the event's source asks
    (C{base64}, C{utf8} or C{json}); what does not decode falls back to
    base64, flagged with C{keyEncoding} or C{payloadEncoding}.
    """
    data: dict[str, object]
    if isinstance(event, KafkaEvent):
        key, key_fallback = _render(event.key, event.key_format)
        payload, payload_fallback = _render(event.payload, event.payload_format)
        data = {
            "sourceType": "kafka",
            "sourceId": event.source_id,
            "key": key,
            "payload": payload,
            "partition": event.partition,
            "offset": event.offset,
            "timestamp": event.timestamp,
        }
        if key_fallback:
            data["keyEncoding"] = "base64"
        if payload_fallback:
            data["payloadEncoding"] = "base64"
        if event.headers is not None:
            data["headers"] = _render_headers(event.headers, event.payload_format)
    elif isinstance(event, CounterEvent):
        data = {"sourceType": "counter", "sourceId": event.source_id, "count": event.count}
    else:
        raise TypeError(f"not an event: {event!r}")
    try:
        return _dumps({"type": "RESULT", "data": data})
    except (ValueError, RecursionError):
        # JSON that decodes but cannot be sent as JSON: a number beyond a
        # double's range (1e400 decodes as inf) or nesting that fits the
        # decoder's depth but not the encoder's. Such values go as base64.
        assert isinstance(event, KafkaEvent)
        for field, flag, raw in (("key", "keyEncoding", event.key), ("payload", "payloadEncoding", event.payload)):
            try:
                _dumps(data[field])
            except (ValueError, RecursionError):
                data[field] = _b64(raw)
                data[flag] = "base64"
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
