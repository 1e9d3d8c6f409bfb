"""
Events as sources produce them, before they are encoded for clients.
"""

from __future__ import annotations

from typing import Literal

import attrs

PayloadFormat = Literal["base64", "utf8", "json"]
"""
How a Kafka source renders record keys and payloads for clients (see
C{docs/protocol.md}).
"""

Headers = tuple[tuple[str, bytes | None], ...]


@attrs.frozen
class KafkaEvent:
    """
    One Kafka record.

    @ivar timestamp: Milliseconds since the epoch, if the record has one.
    @ivar payload_format: How C{payload} is rendered for clients (the
        source's C{format}).
    @ivar key_format: How C{key} is rendered (the source's C{key_format}).
    @ivar headers: The record's headers, or C{None} when the source does
        not pass headers through.
    """

    source_id: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    payload: bytes | None
    timestamp: int | None
    payload_format: PayloadFormat = "base64"
    key_format: PayloadFormat = "base64"
    headers: Headers | None = None


@attrs.frozen
class CounterEvent:
    """
    One value of a counter source.
    """

    source_id: str
    count: int


Event = KafkaEvent | CounterEvent
