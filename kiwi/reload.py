"""
Run-time configuration reload.

A reload is only ever requested (by SIGHUP, or by the file watcher); the
L{Reloader} runs one at a time, and requests that arrive meanwhile cause a
single rerun. Each reload loads and validates the whole file off the
reactor thread, then applies it through the same path as start-up, and
logs one outcome phrase: C{config applied}, C{config rejected} or
C{config partially applied}.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread

from kiwi.config import KiwiConfig, load_config
from kiwi.errors import ConfigErrors
from kiwi.logs import logger
from kiwi.service import KiwiService, ReloadOutcome


def load_in_thread(path: str, reactor: Any) -> Deferred[KiwiConfig]:
    """
    Load and validate C{path} in the reactor's thread pool.
    """
    return deferToThread(load_config, path, reactor)


class Reloader:
    """
    Reloads the configuration of a L{KiwiService} on request.

    @param load: How to load a file; tests pass one that needs no thread.
    """

    log = logger()

    def __init__(
        self,
        service: KiwiService,
        path: str,
        reactor: Any,
        load: Callable[[str, Any], Deferred[KiwiConfig]] = load_in_thread,
    ) -> None:
        self._service = service
        self._path = path
        self._reactor = reactor
        self._load = load
        self._running: Deferred[None] | None = None
        self._waiting: list[Deferred[None]] = []
        self._again = False

    def request(self) -> Deferred[None]:
        """
        Ask for a reload; fires once it (and any rerun) is done.
        """
        if self._running is not None:
            self._again = True
            result: Deferred[None] = Deferred()
            self._waiting.append(result)
            return result
        running = Deferred.fromCoroutine(self._run())
        if not running.called:
            self._running = running
        return running

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                await self._reload_once()
                if not self._again:
                    return
        finally:
            self._running = None
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    async def _reload_once(self) -> None:
        self.log.info("reloading configuration from {path}", path=self._path)
        try:
            config = await self._load(self._path, self._reactor)
        except ConfigErrors as e:
            outcome = ReloadOutcome("rejected", tuple(e.problems))
            self._service.record_reload(outcome)
            self.log.error(
                "config rejected: {path} is not valid, keeping the running configuration:\n{problems}",
                path=self._path,
                problems="\n".join(f"  {problem}" for problem in e.problems),
            )
            return
        except Exception:
            self._service.record_reload(ReloadOutcome("rejected", ("internal error while loading",)))
            self.log.failure("config rejected: loading {path} failed", path=self._path)
            return
        try:
            outcome = await self._service.apply(config)
        except Exception:
            self._service.record_reload(ReloadOutcome("partially_applied", ("internal error while applying",)))
            self.log.failure("config partially applied: applying {path} failed", path=self._path)
            return
        self._service.record_reload(outcome)
        if outcome.problems:
            self.log.warn(
                "{phrase}: {problems}", phrase=outcome.phrase, problems="; ".join(outcome.problems)
            )
        else:
            self.log.info("{phrase}", phrase=outcome.phrase)


class FileWatcher(Service):
    """
    Requests a reload when the configuration file changes (C{reload.watch}).

    The file is checked every C{interval} seconds; a change is acted on once
    the file has stayed the same for one more check, so an editor's several
    writes give one reload.
    """

    name = "config-watcher"
    log = logger()

    def __init__(self, path: str, interval: float, request: Callable[[], object], clock: Any) -> None:
        self._path = path
        self._interval = interval
        self._request = request
        self._clock = clock
        self._loop: LoopingCall | None = None
        self._seen = self._stamp()
        self._pending: tuple[float, int] | None = None

    def _stamp(self) -> tuple[float, int]:
        try:
            info = os.stat(self._path)
        except OSError:
            return (0.0, -1)
        return (info.st_mtime, info.st_size)

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._check)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return succeed(None)

    def _check(self) -> None:
        stamp = self._stamp()
        if stamp == self._seen:
            self._pending = None
            return
        if stamp != self._pending:
            # Changed since the last check: wait until it settles.
            self._pending = stamp
            return
        self._seen = stamp
        self._pending = None
        self.log.info("{path} changed", path=self._path)
        self._request()
