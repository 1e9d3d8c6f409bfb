"""
Tests for L{kiwi.reload}: the L{Reloader} (one reload at a time, outcome
phrases) and the L{FileWatcher}.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from kiwi.config import KiwiConfig
from kiwi.errors import ConfigErrors
from kiwi.reload import FileWatcher, Reloader
from kiwi.service import KiwiService, ReloadOutcome
from tests.test_service import counters

PATH = "/etc/kiwi/config/kiwi.yml"


class FakeLoader:
    """
    A C{load(path, reactor)} whose Deferreds the test fires.

    @ivar calls: The C{(path, reactor)} of each call.
    @ivar pending: The Deferreds handed out and not yet fired.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.pending: list[Deferred[KiwiConfig]] = []

    def __call__(self, path: str, reactor: Any) -> Deferred[KiwiConfig]:
        self.calls.append((path, reactor))
        d: Deferred[KiwiConfig] = Deferred()
        self.pending.append(d)
        return d

    def succeed(self, config: KiwiConfig) -> None:
        """
        Fire the oldest pending load with C{config}.
        """
        self.pending.pop(0).callback(config)

    def fail(self, error: Exception) -> None:
        """
        Fail the oldest pending load with C{error}.
        """
        self.pending.pop(0).errback(error)


class ReloaderTestMixin:
    """
    A running L{KiwiService} with one counter, and a L{Reloader} for it
    that loads through a L{FakeLoader}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = KiwiService(counters("a"), self.reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)  # type: ignore[attr-defined]
        self.loader = FakeLoader()
        self.reloader = Reloader(self.service, PATH, self.reactor, self.loader)


def messages(events: Sequence[LogEvent]) -> list[str]:
    """
    The formatted text of captured log events.
    """
    return [formatEvent(event) for event in events]


class ReloaderTests(ReloaderTestMixin, SynchronousTestCase):
    """
    L{Reloader.request} loads, applies and reports one configuration.
    """

    def test_request_loadsPathWithReactor(self) -> None:
        """
        The loader gets the configuration path and the reactor, and the
        request waits for it.
        """
        d = self.reloader.request()
        self.assertEqual(self.loader.calls, [(PATH, self.reactor)])
        self.assertNoResult(d)

    def test_request_applied(self) -> None:
        """
        A valid file is applied, recorded as C{applied} and logged at info
        level as C{config applied}.
        """
        new = counters("a", "b")
        with capturedLogs() as events:
            d = self.reloader.request()
            self.loader.succeed(new)
        self.successResultOf(d)
        self.assertEqual(self.service.config, new)
        assert self.service.last_reload is not None
        self.assertEqual(self.service.last_reload.outcome, "applied")
        self.assertEqual(self.service.stats.reloads["applied"], 1)
        outcome = [e for e in events if formatEvent(e) == "config applied"]
        self.assertEqual(len(outcome), 1)
        self.assertEqual(outcome[0]["log_level"], LogLevel.info)

    def test_request_rejected(self) -> None:
        """
        An invalid file leaves the running configuration alone, is recorded
        as C{rejected} with its problems, and is logged at error level as
        C{config rejected} with every problem.
        """
        before = self.service.config
        problems = ["sources[0].id: required key is missing", "server.port: unknown key"]
        with capturedLogs() as events:
            d = self.reloader.request()
            self.loader.fail(ConfigErrors(PATH, problems))
        self.successResultOf(d)
        self.assertIs(self.service.config, before)
        self.assertEqual([s.source_id for s in self.service.registry.sources()], ["a"])
        assert self.service.last_reload is not None
        self.assertEqual(self.service.last_reload.outcome, "rejected")
        self.assertEqual(self.service.last_reload.problems, tuple(problems))
        self.assertEqual(dict(self.service.stats.reloads), {"rejected": 1})
        rejected = [e for e in events if formatEvent(e).startswith("config rejected")]
        self.assertEqual(len(rejected), 1)
        self.assertEqual(rejected[0]["log_level"], LogLevel.error)
        text = formatEvent(rejected[0])
        self.assertIn(PATH, text)
        for problem in problems:
            self.assertIn(problem, text)

    def test_request_loadBug(self) -> None:
        """
        An unexpected exception while loading is C{rejected} and logged with
        its traceback.
        """
        with capturedLogs() as events:
            d = self.reloader.request()
            self.loader.fail(RuntimeError("boom"))
        self.successResultOf(d)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        assert self.service.last_reload is not None
        self.assertEqual(self.service.last_reload.outcome, "rejected")
        self.assertTrue(any(text.startswith("config rejected") for text in messages(events)))

    def test_request_partiallyApplied(self) -> None:
        """
        A file that changes the listening endpoint is partially applied and
        logged at warn level as C{config partially applied}, naming the key.
        """
        with capturedLogs() as events:
            d = self.reloader.request()
            self.loader.succeed(counters("a", "b", listen="tcp:9999"))
        self.successResultOf(d)
        assert self.service.last_reload is not None
        self.assertEqual(self.service.last_reload.outcome, "partially_applied")
        self.assertEqual(self.service.stats.reloads["partially_applied"], 1)
        partial = [e for e in events if formatEvent(e).startswith("config partially applied")]
        self.assertEqual(len(partial), 1)
        self.assertEqual(partial[0]["log_level"], LogLevel.warn)
        self.assertIn("server.listen", formatEvent(partial[0]))
        self.assertEqual([s.source_id for s in self.service.registry.sources()], ["a", "b"])

    def test_request_applyBug(self) -> None:
        """
        An unexpected exception while applying is recorded as
        C{partially_applied} (part of it may have happened) and logged with
        its traceback.
        """

        async def broken(config: KiwiConfig) -> ReloadOutcome:
            raise ValueError("bug")

        self.patch(self.service, "apply", broken)
        d = self.reloader.request()
        self.loader.succeed(counters("a"))
        self.successResultOf(d)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        assert self.service.last_reload is not None
        self.assertEqual(self.service.last_reload.outcome, "partially_applied")

    def test_request_oneOutcomePhrasePerReload(self) -> None:
        """
        Each reload logs exactly one of the three outcome phrases.
        """
        phrases = ("config applied", "config rejected", "config partially applied")
        with capturedLogs() as events:
            self.reloader.request()
            self.loader.succeed(counters("a"))
            self.reloader.request()
            self.loader.fail(ConfigErrors(PATH, ["x: bad"]))
            self.reloader.request()
            self.loader.succeed(counters("a", listen="tcp:1"))
        found = [text for text in messages(events) if text.startswith(phrases)]
        self.assertEqual(
            [text.split(":")[0] for text in found],
            ["config applied", "config rejected", "config partially applied"],
        )


class ReloaderCoalescingTests(ReloaderTestMixin, SynchronousTestCase):
    """
    One reload runs at a time; requests during it cause a single rerun.
    """

    def test_request_coalescesIntoOneRerun(self) -> None:
        """
        Three requests while a reload runs cause exactly one more load,
        which starts once the first reload is done; every request's
        Deferred fires when the rerun is done.
        """
        first = self.reloader.request()
        waiting = [self.reloader.request() for _ in range(3)]
        self.assertEqual(len(self.loader.calls), 1)
        self.loader.succeed(counters("a", "b"))
        self.assertEqual(len(self.loader.calls), 2)
        for d in [first, *waiting]:
            self.assertNoResult(d)
        self.loader.succeed(counters("a", "b", "c"))
        for d in [first, *waiting]:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(self.loader.calls), 2)
        self.assertEqual(self.service.stats.reloads["applied"], 2)
        self.assertEqual([s.source_id for s in self.service.registry.sources()], ["a", "b", "c"])

    def test_request_noRerunWithoutRequest(self) -> None:
        """
        A reload with no request during it does not run again.
        """
        d = self.reloader.request()
        self.loader.succeed(counters("a"))
        self.successResultOf(d)
        self.assertEqual(len(self.loader.calls), 1)

    def test_request_rerunAfterRejection(self) -> None:
        """
        A request during a reload that gets rejected still causes the
        rerun, which can then succeed.
        """
        self.reloader.request()
        self.reloader.request()
        self.loader.fail(ConfigErrors(PATH, ["x: bad"]))
        self.assertEqual(len(self.loader.calls), 2)
        self.loader.succeed(counters("a", "b"))
        self.assertEqual(dict(self.service.stats.reloads), {"rejected": 1, "applied": 1})

    def test_request_laterRequestRunsAgain(self) -> None:
        """
        A request after the previous reload has finished starts a new one.
        """
        self.reloader.request()
        self.loader.succeed(counters("a"))
        d = self.reloader.request()
        self.assertEqual(len(self.loader.calls), 2)
        self.loader.succeed(counters("a", "b"))
        self.successResultOf(d)
        self.assertEqual(self.service.stats.reloads["applied"], 2)

    def test_request_synchronousLoaderRunsEveryTime(self) -> None:
        """
        With a loader whose Deferred has already fired, each request after
        the previous one finished still reloads.
        """
        calls = []

        def load(path: str, reactor: Any) -> Deferred[KiwiConfig]:
            calls.append(path)
            return succeed(counters("a", str(len(calls))))

        reloader = Reloader(self.service, PATH, self.reactor, load)
        self.successResultOf(reloader.request())
        self.successResultOf(reloader.request())
        self.assertEqual(len(calls), 2)



class FileWatcherTests(SynchronousTestCase):
    """
    L{FileWatcher} requests a reload once a changed file has settled.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        with open(self.path, "w") as f:
            f.write("sources: []\n")
        os.utime(self.path, (1000, 1000))
        self.clock = Clock()
        self.requests = 0
        self.watcher = FileWatcher(self.path, 1.0, self.request, self.clock)
        self.watcher.startService()
        self.addCleanup(self.watcher.stopService)

    def request(self) -> None:
        """
        Count reload requests.
        """
        self.requests += 1

    def touch(self, mtime: float) -> None:
        """
        Set the file's modification time to C{mtime}.
        """
        os.utime(self.path, (mtime, mtime))

    def test_check_unchangedFile(self) -> None:
        """
        An unchanged file requests nothing.
        """
        for _ in range(5):
            self.clock.advance(1)
        self.assertEqual(self.requests, 0)

    def test_check_reloadAfterOneStableCheck(self) -> None:
        """
        A change is seen at the next check and acted on at the one after,
        once the file has stayed the same; then nothing more happens.
        """
        self.touch(2000)
        self.clock.advance(1)
        self.assertEqual(self.requests, 0)
        self.clock.advance(1)
        self.assertEqual(self.requests, 1)
        for _ in range(3):
            self.clock.advance(1)
        self.assertEqual(self.requests, 1)

    def test_check_noCheckBeforeInterval(self) -> None:
        """
        The file is first checked one interval after start.
        """
        self.touch(2000)
        self.clock.advance(0.99)
        self.clock.advance(0.99)
        self.assertEqual(self.requests, 0)
        self.clock.advance(0.02)
        self.assertEqual(self.requests, 1)

    def test_check_debounceRepeatedWrites(self) -> None:
        """
        Writes at every check postpone the reload until the file stays the
        same for one check; they give one request.
        """
        for mtime in (2000, 2001, 2002):
            self.touch(mtime)
            self.clock.advance(1)
            self.assertEqual(self.requests, 0)
        self.clock.advance(1)
        self.assertEqual(self.requests, 1)
        self.clock.advance(1)
        self.assertEqual(self.requests, 1)

    def test_check_sizeChange(self) -> None:
        """
        A change of size alone (same modification time) is a change.
        """
        with open(self.path, "a") as f:
            f.write("# more\n")
        self.touch(1000)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(self.requests, 1)

    def test_check_eachSettledChange(self) -> None:
        """
        Two changes far apart give two requests.
        """
        self.touch(2000)
        self.clock.advance(1)
        self.clock.advance(1)
        self.touch(3000)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(self.requests, 2)

    def test_check_fileRemoved(self) -> None:
        """
        A removed file is a change too: the reload then reports that it
        cannot be read.
        """
        os.remove(self.path)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(self.requests, 1)

    def test_stopService_stopsChecking(self) -> None:
        """
        A stopped watcher schedules nothing and requests nothing.
        """
        self.successResultOf(self.watcher.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.touch(2000)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(self.requests, 0)
