"""
Signals under twistd: SIGTERM and SIGINT stop Kiwi gracefully and exit 0;
SIGHUP reloads the configuration.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from kiwi.logs import logger

log = logger(__name__)


def install_signal_handlers(
    reactor: Any, reload: Callable[[], object], shutdown_timeout_s: Callable[[], float]
) -> None:
    """
    Replace the reactor's signal handlers once it runs. SIGHUP, which the
    reactor leaves alone, is handled from now on: until the reactor runs,
    its default action would kill the process, and a reload requested
    between "listening" and the first reactor turn simply waits for it.

    By default twistd re-raises SIGTERM after stopping and exits 143, which
    service managers count as a failure; here a graceful stop exits 0. If
    the stop takes longer than C{shutdown_timeout_s()} (read when the
    signal arrives, so reloads count), Kiwi exits 1 anyway. A second
    signal during the stop is only logged.
    """
    stopping: list[str] = []

    def stop(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if stopping:
            reactor.callFromThread(log.info, "received {signal}: already shutting down", signal=name)
            return
        stopping.append(name)
        reactor.callFromThread(_stop, reactor, name, shutdown_timeout_s())

    def hangup(signum: int, frame: object) -> None:
        # Only schedule: the reload itself runs on the reactor.
        reactor.callFromThread(_hangup, reload)

    def install() -> None:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hangup)

    signal.signal(signal.SIGHUP, hangup)
    reactor.callWhenRunning(install)


def _hangup(reload: Callable[[], object]) -> None:
    log.info("received SIGHUP")
    reload()


def _stop(reactor: Any, name: str, timeout: float) -> None:
    log.info("received {signal}, shutting down", signal=name)
    if not reactor.running:
        return
    # A last resort: a stop that hangs must not keep the process alive.
    reactor.callLater(timeout + 1.0, _give_up, timeout)
    reactor.stop()


def _give_up(timeout: float) -> None:
    log.error("shutdown did not finish within {timeout}s; exiting", timeout=timeout)
    os._exit(1)
