"""
One joined write per connection per reactor turn.

Fan-out hands a connection many small frames in one turn (one per event,
per source). Writing each to the transport costs a Python call into
Twisted's buffering per frame; joining them and writing once per turn
costs one. The frames of a turn are collected per connection and written,
joined, when the reactor comes round again (C{callLater(0)}).

Only public API is used (C{ITransport.write}); ordering is kept because
every frame Kiwi sends goes through the same batch.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class _Flushable(Protocol):
    def flush_batch(self) -> None: ...


class Coalescer:
    """
    Collects the connections that have frames waiting this turn, and has
    each write them once the turn is over.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._dirty: list[_Flushable] = []
        self._call: IDelayedCall | None = None

    def mark(self, connection: _Flushable) -> None:
        """
        C{connection} started a batch this turn.
        """
        self._dirty.append(connection)
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Have every marked connection write its batch now.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        dirty, self._dirty = self._dirty, []
        for connection in dirty:
            connection.flush_batch()
