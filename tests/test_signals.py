"""
Tests for how Kiwi runs as a process: signals (L{kiwi.signals}), its log
level and JSON log lines (L{kiwi.logs}), and the C{twistd kiwi} options
that act on the process (C{--check}, C{logging.format}).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from kiwi.logs import json_observer, logger, set_level
from kiwi.signals import install_signal_handlers
from kiwi.tap import Options

VALID = """\
sources:
  - {type: counter, id: ticks, interval_ms: 1000, min: 0}
server: {listen: "tcp:0"}
"""


class ThreadedMemoryReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} with C{callFromThread}, which runs the call on
    the next C{runCalls}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.from_thread: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def callFromThread(self, f: Callable[..., object], *args: Any) -> None:
        self.from_thread.append((f, args))

    def runCalls(self) -> None:
        """
        Run what signal handlers handed to the reactor thread.
        """
        calls, self.from_thread = self.from_thread, []
        for f, args in calls:
            f(*args)

    def runWhenRunningHooks(self) -> None:
        """
        Become running, as the real reactor does after installing its own
        signal handlers.
        """
        self.running = True
        for f, args, kwargs in self.whenRunningHooks:
            f(*args, **kwargs)


class SignalTests(SynchronousTestCase):
    """
    L{install_signal_handlers} maps SIGTERM, SIGINT and SIGHUP.
    """

    def setUp(self) -> None:
        self.installed: dict[int, Callable[[int, object], None]] = {}
        self.patch(signal, "signal", lambda signum, handler: self.installed.__setitem__(signum, handler))
        self.exits: list[int] = []
        self.patch(os, "_exit", self.exits.append)
        self.reactor = ThreadedMemoryReactor()
        self.reloads = 0
        install_signal_handlers(self.reactor, self.reload, lambda: 10.0)

    def reload(self) -> None:
        """
        Count reload requests.
        """
        self.reloads += 1

    def deliver(self, signum: int) -> None:
        """
        Deliver C{signum} to its handler and let the reactor run the result.
        """
        self.installed[signum](signum, None)
        self.reactor.runCalls()

    def test_install_waitsForReactor(self) -> None:
        """
        Only SIGHUP is handled before the reactor runs; SIGTERM and SIGINT
        are installed once it does (twistd installs its own handlers then,
        which Kiwi's replace).
        """
        self.assertEqual(set(self.installed), {signal.SIGHUP})
        self.reactor.runWhenRunningHooks()
        self.assertEqual(set(self.installed), {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

    def test_sighup_beforeRunning_waitsForReactor(self) -> None:
        """
        A SIGHUP that arrives before the reactor runs does not kill the
        process: the reload is requested on the reactor's first turns.
        """
        self.installed[signal.SIGHUP](signal.SIGHUP, None)
        self.assertEqual(self.reloads, 0)
        self.reactor.runCalls()
        self.assertEqual(self.reloads, 1)

    def test_sighup_requestsReload(self) -> None:
        """
        SIGHUP logs C{received SIGHUP} and requests one reload, on the
        reactor thread; the reactor keeps running.
        """
        self.reactor.runWhenRunningHooks()
        self.installed[signal.SIGHUP](signal.SIGHUP, None)
        self.assertEqual(self.reloads, 0)
        with capturedLogs() as events:
            self.reactor.runCalls()
        self.assertEqual(self.reloads, 1)
        self.assertIn("received SIGHUP", [formatEvent(e) for e in events])
        self.assertFalse(self.reactor.hasStopped)

    def test_sigterm_stopsReactor(self) -> None:
        """
        SIGTERM logs that Kiwi is shutting down and stops the reactor; no
        exit is forced while the stop is within its time.
        """
        self.reactor.runWhenRunningHooks()
        with capturedLogs() as events:
            self.deliver(signal.SIGTERM)
        self.assertTrue(self.reactor.hasStopped)
        self.assertIn("received SIGTERM, shutting down", [formatEvent(e) for e in events])
        self.reactor.advance(10.9)
        self.assertEqual(self.exits, [])

    def test_sigint_stopsReactor(self) -> None:
        """
        SIGINT (Ctrl-C) stops the reactor too.
        """
        self.reactor.runWhenRunningHooks()
        with capturedLogs() as events:
            self.deliver(signal.SIGINT)
        self.assertTrue(self.reactor.hasStopped)
        self.assertIn("received SIGINT, shutting down", [formatEvent(e) for e in events])

    def test_sigterm_hardExitAfterTimeout(self) -> None:
        """
        A stop still going one second after the shutdown timeout ends the
        process with status 1, logging why at error level.
        """
        self.reactor.runWhenRunningHooks()
        self.deliver(signal.SIGTERM)
        with capturedLogs() as events:
            self.reactor.advance(11)
        self.assertEqual(self.exits, [1])
        [event] = [e for e in events if e.get("log_namespace") == "kiwi.signals"]
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertEqual(formatEvent(event), "shutdown did not finish within 10.0s; exiting")

    def test_sigterm_notRunning(self) -> None:
        """
        A SIGTERM handled when the reactor no longer runs does nothing more.
        """
        self.reactor.runWhenRunningHooks()
        self.reactor.running = False
        self.deliver(signal.SIGTERM)
        self.assertFalse(self.reactor.hasStopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class LogLevelTests(SynchronousTestCase):
    """
    L{set_level} filters the events of every L{logger}.
    """

    def setUp(self) -> None:
        self.addCleanup(set_level, "info")

    def test_setLevel_filters(self) -> None:
        """
        Below the level, events are dropped; at and above it, they pass.
        """
        set_level("warn")
        log = logger("kiwi.test")
        with capturedLogs() as events:
            log.info("quiet")
            log.warn("loud")
            log.error("louder")
        self.assertEqual([formatEvent(e) for e in events], ["loud", "louder"])

    def test_setLevel_debug(self) -> None:
        """
        At C{debug}, per-message lines pass; the default C{info} drops them.
        """
        log = logger("kiwi.test")
        with capturedLogs() as events:
            log.debug("hidden")
            set_level("debug")
            log.debug("shown")
        self.assertEqual([formatEvent(e) for e in events], ["shown"])


class JsonObserverTests(SynchronousTestCase):
    """
    L{json_observer} writes one JSON object per event to the real standard
    output.
    """

    def setUp(self) -> None:
        self.stream = io.StringIO()
        self.patch(sys, "__stdout__", self.stream)

    def lines(self) -> list[dict[str, Any]]:
        """
        The JSON objects written so far, one per line.
        """
        text = self.stream.getvalue()
        self.assertTrue(text.endswith("\n"))
        return [json.loads(line) for line in text.splitlines()]

    def test_observe_kiwiFields(self) -> None:
        """
        An event with Kiwi's fields gives one line with time, level,
        namespace, the formatted message and those fields.
        """
        json_observer()(
            {
                "log_time": 1700000000.25,
                "log_level": LogLevel.warn,
                "log_namespace": "kiwi.ws.KiwiServerProtocol",
                "log_format": "{conn_id} on {source_id}: {what}",
                "conn_id": "c7",
                "source_id": "orders",
                "peer": "tcp4:127.0.0.1:5000",
                "what": "slow",
            }
        )
        self.assertEqual(
            self.lines(),
            [
                {
                    "time": 1700000000.25,
                    "level": "warn",
                    "namespace": "kiwi.ws.KiwiServerProtocol",
                    "message": "c7 on orders: slow",
                    "conn_id": "c7",
                    "source_id": "orders",
                    "peer": "tcp4:127.0.0.1:5000",
                }
            ],
        )

    def test_observe_withoutKiwiFields(self) -> None:
        """
        Fields the event lacks are left out; other event keys are not
        copied.
        """
        json_observer()(
            {
                "log_time": 5.0,
                "log_level": LogLevel.info,
                "log_namespace": "twisted",
                "log_format": "Server Shut Down. {n}",
                "n": 1,
            }
        )
        self.assertEqual(
            self.lines(), [{"time": 5.0, "level": "info", "namespace": "twisted", "message": "Server Shut Down. 1"}]
        )

    def test_observe_failure(self) -> None:
        """
        An event with a failure carries its traceback, still on one line.
        """
        try:
            raise ValueError("boom")
        except ValueError:
            failure = Failure()
        json_observer()(
            {
                "log_time": 5.0,
                "log_level": LogLevel.critical,
                "log_namespace": "kiwi",
                "log_format": "it broke",
                "log_failure": failure,
            }
        )
        [line] = self.lines()
        self.assertEqual(line["message"], "it broke")
        self.assertIn("ValueError: boom", line["traceback"])

    def test_observe_oneLinePerEvent(self) -> None:
        """
        A message with line breaks still gives one line per event.
        """
        observe = json_observer()
        for text in ("one\ntwo", "three"):
            observe({"log_time": 1.0, "log_level": LogLevel.info, "log_namespace": "k", "log_format": text})
        self.assertEqual([line["message"] for line in self.lines()], ["one\ntwo", "three"])


class CheckOptionTests(SynchronousTestCase):
    """
    C{twistd kiwi --check} validates and exits; C{logging.format} picks
    twistd's log observer.
    """

    def write(self, text: str) -> str:
        """
        Write C{text} to a new file and return its path.
        """
        path: str = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_check_valid(self) -> None:
        """
        A valid file: a message naming it on standard output, then
        C{SystemExit(0)}.
        """
        path = self.write(VALID)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        error = self.assertRaises(SystemExit, Options().parseOptions, ["--config", path, "--check"])
        self.assertEqual(error.code, 0)
        self.assertEqual(out.getvalue(), f"kiwi: configuration in {path} is valid\n")

    def test_check_invalid(self) -> None:
        """
        An invalid file: C{SystemExit} with every problem (status 1), and
        nothing on standard output.
        """
        path = self.write(VALID.replace("min: 0", "min: -1") + "reload: {watch: maybe}\n")
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        error = self.assertRaises(SystemExit, Options().parseOptions, ["--config", path, "--check"])
        message = str(error.code)
        self.assertTrue(message.startswith(f"kiwi: invalid configuration in {path}:\n"), message)
        self.assertIn("sources[0].min: expected an integer >= 0, got -1 (int)", message)
        self.assertIn("reload.watch: expected true or false, got 'maybe' (str)", message)
        self.assertEqual(out.getvalue(), "")

    def test_loggingFormat_jsonSetsLogger(self) -> None:
        """
        With C{logging.format: json}, the options tell twistd to log through
        L{json_observer}.
        """
        path = self.write(VALID + "logging: {format: json}\n")
        options = Options()
        parent: dict[str, Any] = {}
        options.parent = parent  # type: ignore[assignment]
        options.parseOptions(["--config", path])
        self.assertEqual(parent["logger"], "kiwi.logs.json_observer")

    def test_loggingFormat_textLeavesLogger(self) -> None:
        """
        With the default C{text} format, twistd's logger is left alone.
        """
        path = self.write(VALID)
        options = Options()
        parent: dict[str, Any] = {}
        options.parent = parent  # type: ignore[assignment]
        options.parseOptions(["--config", path])
        self.assertNotIn("logger", parent)

    def test_loggingFormat_jsonWithoutParent(self) -> None:
        """
        Options parsed on their own (no twistd) accept C{json} too.
        """
        path = self.write(VALID + "logging: {format: json}\n")
        options = Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options.config.logging.format, "json")
