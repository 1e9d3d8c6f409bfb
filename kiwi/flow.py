"""
Flow control as pure state, no Twisted, so it can be tested exhaustively:
L{PullFlow} for one pull subscription (credits, a bounded buffer and lag
accounting) and L{Outbox} for one connection (what waits to be written,
within a byte budget).

Pull rules (see C{docs/flow-control.md}):
  - an event that arrives while the subscription has credit is delivered
    and spends one credit;
  - otherwise it is kept in the buffer, if there is one; a full buffer drops
    its oldest event to make room;
  - otherwise it is dropped;
  - every dropped event counts as missed until the subscription receives
    an event again; each time the missed count reaches a multiple of the
    lag notice threshold, a C{LAG} notice reports the count so far (so at
    most one notice per C{threshold} dropped events: no storm);
  - C{REQUEST n} adds C{n} credits (the total saturates at 2^53) and
    immediately delivers what the buffer holds, oldest first, up to the
    credit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_CREDITS = 2**53
"""
Outstanding credit saturates here, so C{REQUEST_OK}'s C{requests} stays
exact for JavaScript clients.
"""


class PullFlow(Generic[T]):
    """
    The state of one pull-mode subscription.

    @ivar credits: Events the client has asked for and not yet received.
    @ivar missed: Events dropped since the client last received one.
    """

    def __init__(self, buffer_capacity: int | None, lag_notice_threshold: int | None) -> None:
        self.credits = 0
        self.missed = 0
        self._buffer: deque[T] = deque()
        self._capacity = buffer_capacity or 0
        self._threshold = lag_notice_threshold

    @property
    def buffered(self) -> int:
        """
        How many events wait in the buffer.
        """
        return len(self._buffer)

    def offer(
        self, event: T, deliver: Callable[[T], None], notify_lag: Callable[[int], None]
    ) -> str | None:
        """
        An event arrived from the source: deliver it, buffer it or drop it.

        @return: Why an event was dropped (C{"buffer_full"}: the oldest
            buffered one; C{"no_credit"}: this one), or C{None}.
        """
        if self.credits > 0:
            self.credits -= 1
            self._delivered()
            deliver(event)
            return None
        reason = "no_credit"
        if self._capacity:
            if len(self._buffer) < self._capacity:
                self._buffer.append(event)
                return None
            self._buffer.popleft()
            self._buffer.append(event)
            reason = "buffer_full"
        self.missed += 1
        if self._threshold is not None and self.missed % self._threshold == 0:
            notify_lag(self.missed)
        return reason

    def request(self, n: int, deliver: Callable[[T], None]) -> int:
        """
        Add C{n} credits and deliver buffered events they cover.

        @return: The credits still outstanding.
        """
        self.credits = min(self.credits + n, MAX_CREDITS)
        while self.credits and self._buffer:
            self.credits -= 1
            self._delivered()
            deliver(self._buffer.popleft())
        return self.credits

    def _delivered(self) -> None:
        self.missed = 0


class Outbox(Generic[T]):
    """
    What waits to be written to one connection, within a byte budget.

    The connection's transport pauses and resumes the outbox (Twisted's
    push-producer signals): while it is not paused and nothing waits, items
    are written at once. Otherwise they queue, oldest first. Event items
    (those put with a C{source_id}) that would take the queue over
    C{budget} bytes are dropped instead and counted per source. Everything
    else (replies, notices) queues even over the budget, so that nothing
    the client asked for is lost and order is kept, up to a hard C{limit}
    (twice the budget by default): a client that lets that much pile up is
    not reading at all, and the caller should disconnect it.

    @ivar dropped: Events dropped per source since the queue last drained.
    @ivar overflowed: Whether a reply or notice was refused because the
        queue had reached the hard limit.
    """

    def __init__(self, budget: int, write: Callable[[T], None], limit: int | None = None) -> None:
        self.paused = False
        self.pending_bytes = 0
        self.dropped: dict[str, int] = {}
        self.overflowed = False
        self._budget = budget
        self._limit = 2 * budget if limit is None else limit
        self._write = write
        self._queue: deque[tuple[T, int, str | None]] = deque()

    @property
    def pending(self) -> int:
        """
        How many items wait.
        """
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """
        Whether an item put now would be written at once.
        """
        return not self.paused and not self._queue

    @property
    def over_budget(self) -> bool:
        """
        Whether events have been dropped since the queue last drained, or
        the queue holds more than the budget.
        """
        return bool(self.dropped) or self.pending_bytes > self._budget

    def put(self, item: T, size: int, source_id: str | None = None) -> bool:
        """
        Write, queue or refuse C{item}: an event over the budget is dropped
        and counted; a reply or notice over the hard limit is refused and
        sets L{overflowed}.

        @return: C{False} if the item was dropped or refused.
        """
        if not self.paused and not self._queue:
            self._write(item)
            return True
        if source_id is not None:
            if self.pending_bytes + size > self._budget:
                self.dropped[source_id] = self.dropped.get(source_id, 0) + 1
                return False
        elif self.pending_bytes + size > self._limit:
            self.overflowed = True
            return False
        self._queue.append((item, size, source_id))
        self.pending_bytes += size
        return True

    def pause(self) -> None:
        """
        The transport has enough to write: hold further items.
        """
        self.paused = True

    def resume(self) -> dict[str, int]:
        """
        The transport drained: write what waits until it pauses us again.

        @return: The drop counts per source if the queue emptied (the caller
            owes each source a lag notice); otherwise an empty mapping.
        """
        self.paused = False
        while self._queue and not self.paused:
            item, size, _ = self._queue.popleft()
            self.pending_bytes -= size
            self._write(item)
        if self._queue or self.paused or not self.dropped:
            return {}
        dropped, self.dropped = self.dropped, {}
        return dropped

    def clear(self) -> dict[str, int]:
        """
        Forget everything that waits (the connection is closing: nothing
        more will be written), releasing its memory at once.

        @return: The events forgotten, per source (the caller counts them
            as dropped rather than delivered).
        """
        forgotten: dict[str, int] = {}
        for _, _, source_id in self._queue:
            if source_id is not None:
                forgotten[source_id] = forgotten.get(source_id, 0) + 1
        self._queue.clear()
        self.pending_bytes = 0
        self.dropped = {}
        return forgotten
