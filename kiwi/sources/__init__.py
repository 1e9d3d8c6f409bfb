"""
Event sources: what Kiwi streams to clients.

A source is a service that hands batches of events to an L{IEventSink} (the
subscription registry) on the reactor thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from zope.interface import Attribute, Interface

from kiwi.events import Event


class IEventSink(Interface):
    """
    Where sources deliver their events.
    """

    def publish(source_id: str, events: Sequence[Event]) -> None:
        """
        Fan C{events}, in order, out to the source's subscribers.
        """

    def close_source(source_id: str, message: str) -> None:
        """
        End every subscription to the source with C{message}.
        """


class ISource(Interface):
    """
    A configured source of events.
    """

    source_id: str = Attribute("The id clients subscribe to.")
    source_type: str = Attribute("'kafka' or 'counter'.")
    finished: bool = Attribute("True once a finite source has sent its last event.")

    def subscriber_added() -> None:
        """
        A client subscribed (lazy sources start now).
        """

    def status() -> dict[str, Any]:
        """
        A JSON-ready description of the source's state for C{/health}.
        """
