"""
Per-subscription flow control for pull mode: credits, a bounded buffer and
lag accounting. Pure state, no Twisted, so it can be tested exhaustively.

Rules (see C{docs/flow-control.md}):
  - an event that arrives while the subscription has credit is delivered
    and spends one credit;
  - otherwise it is kept in the buffer, if there is one; a full buffer drops
    its oldest event to make room;
  - otherwise it is dropped;
  - every dropped event counts as missed; when the missed count reaches the
    lag notice threshold, one C{LAG} notice reports it, and no other until
    the subscription has received an event again (one notice per crossing);
  - C{REQUEST n} adds C{n} credits and immediately delivers what the buffer
    holds, oldest first, up to the credit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


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
        self._lag_reported = False

    @property
    def buffered(self) -> int:
        """
        How many events wait in the buffer.
        """
        return len(self._buffer)

    def offer(self, event: T, deliver: Callable[[T], None], notify_lag: Callable[[int], None]) -> None:
        """
        An event arrived from the source: deliver it, buffer it or drop it.
        """
        if self.credits > 0:
            self.credits -= 1
            self._delivered()
            deliver(event)
            return
        if self._capacity:
            if len(self._buffer) < self._capacity:
                self._buffer.append(event)
                return
            self._buffer.popleft()
            self._buffer.append(event)
        self.missed += 1
        if self._threshold is not None and not self._lag_reported and self.missed >= self._threshold:
            self._lag_reported = True
            notify_lag(self.missed)

    def request(self, n: int, deliver: Callable[[T], None]) -> int:
        """
        Add C{n} credits and deliver buffered events they cover.

        @return: The credits still outstanding.
        """
        self.credits += n
        while self.credits and self._buffer:
            self.credits -= 1
            self._delivered()
            deliver(self._buffer.popleft())
        return self.credits

    def _delivered(self) -> None:
        self.missed = 0
        self._lag_reported = False
