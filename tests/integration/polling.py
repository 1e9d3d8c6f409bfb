"""
Waiting in tests: poll a condition against a deadline, never sleep blindly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: Any = "condition"
) -> Any:
    """
    Return C{predicate()}'s first true value, checking every C{interval}
    seconds; raise C{AssertionError} naming C{what} after C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            description = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {description}")
        await deferLater(reactor, interval, lambda: None)
