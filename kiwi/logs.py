"""
Kiwi's log level: one filter in front of the global log publisher.

Every Kiwi logger is made by L{logger}, so C{twistd kiwi --log-level} (or a
test) can silence per-message debug lines without touching the observers
twistd installs.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogPublisher,
)

_level = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_level])

LEVELS = ("debug", "info", "warn", "error", "critical")


def set_level(name: str) -> None:
    """
    Emit Kiwi's log events at level C{name} and above.
    """
    _level.setLogLevelForNamespace("", LogLevel.levelWithName(name))


def logger() -> Logger:
    """
    A logger whose events pass Kiwi's level filter. Use it as a class
    attribute, as with a plain L{Logger}.
    """
    return Logger(observer=_observer)
