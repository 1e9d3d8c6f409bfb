"""
Events as sources produce them, before they are encoded for clients.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class KafkaEvent:
    """
    One Kafka record.

    @ivar timestamp: Milliseconds since the epoch, if the record has one.
    """

    source_id: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    payload: bytes | None
    timestamp: int | None


@attrs.frozen
class CounterEvent:
    """
    One value of a counter source.
    """

    source_id: str
    count: int


Event = KafkaEvent | CounterEvent
