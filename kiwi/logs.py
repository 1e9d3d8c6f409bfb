"""
Kiwi's log level: one filter in front of the global log publisher.

Every Kiwi logger is made by L{logger}, so C{twistd kiwi --log-level} (or a
test) can silence per-message debug lines without touching the observers
twistd installs.
"""

from __future__ import annotations

from typing import Any

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


def logger(namespace: str | None = None) -> Logger:
    """
    A logger whose events pass Kiwi's level filter. Use it as a class
    attribute, as with a plain L{Logger}; at module level, pass
    C{__name__} as the namespace.
    """
    return Logger(namespace=namespace, observer=_observer)


def json_observer() -> Any:
    """
    A log observer that writes one JSON object per line to standard output:
    C{time}, C{level}, C{namespace}, C{message}, and Kiwi's fields
    (C{conn_id}, C{source_id}, C{peer}) when the event has them.

    twistd builds it from C{--logger kiwi.logs.json_observer}, which Kiwi
    selects itself when C{logging.format} is C{json}.
    """
    import json
    import sys

    from twisted.logger import formatEvent

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": event.get("log_time"),
            "level": level.name if level is not None else None,
            "namespace": event.get("log_namespace"),
            "message": formatEvent(event),
        }
        for field in ("conn_id", "source_id", "peer"):
            if field in event:
                record[field] = str(event[field])
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        # twistd points sys.stdout at the log itself; write to the real one.
        stream = sys.__stdout__
        if stream is not None:
            stream.write(json.dumps(record, default=str) + "\n")
            stream.flush()

    return observe
