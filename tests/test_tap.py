"""
Tests for L{kiwi.tap}: C{twistd kiwi} options and the service tree.
"""

from __future__ import annotations

import signal

from twisted.application.service import IService, MultiService
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from kiwi.config import CounterSourceConfig, KafkaSourceConfig
from kiwi.logs import set_level
from kiwi.service import KiwiService
from kiwi.tap import Options, freeze_startup_heap, makeService

GOOD_CONFIG = """\
sources:
  - {type: counter, id: ticks, interval_ms: 1000, min: 0}
  - {type: kafka, topic: orders}
kafka:
  bootstrap_servers: [k:9092]
server:
  address: 127.0.0.1:8000
"""

COUNTER_ONLY_CONFIG = """\
sources:
  - {type: counter, id: ticks, interval_ms: 1000, min: 0}
  - {type: counter, id: lazy, interval_ms: 1000, min: 0, lazy: true}
server:
  listen: "tcp:8123"
"""


class TapTestMixin:
    """
    Writes configuration files and parses options.
    """

    def write(self, text: str) -> str:
        """
        Write C{text} to a new temporary file and return its path.
        """
        path: str = self.mktemp()  # type: ignore[attr-defined]
        with open(path, "w") as f:
            f.write(text)
        return path

    def options(self, *args: str) -> Options:
        """
        Parse C{args} as C{twistd kiwi} options.
        """
        options = Options()
        options.parseOptions(list(args))
        return options


class OptionsTests(TapTestMixin, SynchronousTestCase):
    """
    Option parsing validates the configuration before anything starts.
    """

    def test_options_goodConfig(self) -> None:
        """
        A good file is loaded into C{options.config}.
        """
        path = self.write(GOOD_CONFIG)
        options = self.options("--config", path)
        self.assertEqual(options["config"], path)
        self.assertEqual(options.config.path, path)
        self.assertEqual(
            options.config.sources,
            (
                CounterSourceConfig(id="ticks", interval_ms=1000, min=0),
                KafkaSourceConfig(id="orders", topic="orders"),
            ),
        )
        self.assertEqual(options.config.server.listen, "tcp:8000:interface=127.0.0.1")
        self.assertEqual(options["log-level"], "info")

    def test_options_shortFlag(self) -> None:
        """
        C{-c} is short for C{--config}.
        """
        path = self.write(GOOD_CONFIG)
        self.assertEqual(self.options("-c", path).config.path, path)

    def test_options_defaultPath(self) -> None:
        """
        The default configuration path is the original Kiwi's.
        """
        self.assertEqual(Options()["config"], "/etc/kiwi/config/kiwi.yml")

    def test_options_badConfig(self) -> None:
        """
        A bad file stops with C{SystemExit} whose message names the file and
        the key path of each problem.
        """
        path = self.write("sources:\n  - {type: kafka, topic: 5}\nserver: {listen: 'tcp:0', port: 1}\n")
        error = self.assertRaises(SystemExit, self.options, "--config", path)
        message = str(error.code)
        self.assertTrue(message.startswith(f"kiwi: invalid configuration in {path}:\n"), message)
        self.assertIn("server.port: unknown key", message)
        self.assertIn("sources[0].topic: expected a non-empty string, got 5 (int)", message)

    def test_options_missingConfig(self) -> None:
        """
        A file that does not exist stops with C{SystemExit} naming it.
        """
        path = self.mktemp()
        error = self.assertRaises(SystemExit, self.options, "--config", path)
        self.assertIn(path, str(error.code))
        self.assertIn("cannot read the file", str(error.code))

    def test_options_logLevel(self) -> None:
        """
        C{--log-level} accepts Kiwi's levels.
        """
        path = self.write(GOOD_CONFIG)
        for level in ("debug", "info", "warn", "error", "critical"):
            self.assertEqual(self.options("--config", path, "--log-level", level)["log-level"], level)

    def test_options_badLogLevel(self) -> None:
        """
        An unknown log level is a usage error, listing the levels.
        """
        path = self.write(GOOD_CONFIG)
        error = self.assertRaises(usage.UsageError, self.options, "--config", path, "--log-level", "verbose")
        self.assertEqual(str(error), "--log-level must be one of debug, info, warn, error, critical")


class MakeServiceTests(TapTestMixin, SynchronousTestCase):
    """
    L{makeService} builds the whole service tree.
    """

    def setUp(self) -> None:
        self.addCleanup(set_level, "info")
        # makeService handles SIGHUP at once; not in the test process.
        self.patch(signal, "signal", lambda signum, handler: None)

    def test_makeService_tree(self) -> None:
        """
        The root is a L{KiwiService} with a C{plugins} child, a C{sources}
        child holding one service per source, then the C{listener}, last.
        """
        options = self.options("--config", self.write(GOOD_CONFIG))
        service = makeService(options, reactor=MemoryReactor())
        self.assertIsInstance(service, KiwiService)
        assert isinstance(service, KiwiService)
        self.assertEqual([child.name for child in service], ["plugins", "sources", "listener"])
        self.assertIs(service.getServiceNamed("listener"), service.listener)
        sources = service.getServiceNamed("sources")
        assert isinstance(sources, MultiService)
        self.assertEqual([child.name for child in sources], ["source:ticks", "source:orders"])
        self.assertEqual([s.source_id for s in service.registry.sources()], ["ticks", "orders"])
        self.assertEqual(service.listener.description, "tcp:8000:interface=127.0.0.1")
        self.assertFalse(service.running)

    def test_makeService_nothingListensBeforeStart(self) -> None:
        """
        Building the tree binds nothing.
        """
        reactor = MemoryReactor()
        makeService(self.options("--config", self.write(GOOD_CONFIG)), reactor=reactor)
        self.assertEqual(reactor.tcpServers, [])

    def test_makeService_startAndStop(self) -> None:
        """
        Starting listens on the configured endpoint and starts the sources;
        stopping completes.
        """
        reactor = MemoryReactorClock()
        service = makeService(self.options("--config", self.write(COUNTER_ONLY_CONFIG)), reactor=reactor)
        assert isinstance(service, KiwiService)
        IService(service).startService()
        self.assertEqual(len(reactor.tcpServers), 1)
        self.assertEqual(reactor.tcpServers[0][0], 8123)
        port = self.successResultOf(service.listener.when_listening())
        self.assertEqual(port.getHost().port, 8123)
        self.assertEqual(service.registry.sources()[0].status()["state"], "running")
        self.assertEqual(service.registry.sources()[1].status()["state"], "waiting for first subscriber")
        d = service.stopService()
        self.assertIsNone(self.successResultOf(d))
        self.assertFalse(service.running)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_makeService_freezesHeapOnceRunning(self) -> None:
        """
        The start-up heap is frozen when the reactor runs, not before.
        """
        reactor = MemoryReactor()
        makeService(self.options("--config", self.write(GOOD_CONFIG)), reactor=reactor)
        self.assertIn((freeze_startup_heap, (), {}), reactor.whenRunningHooks)

    def test_freezeStartupHeap(self) -> None:
        """
        L{freeze_startup_heap} moves the live objects to the collector's
        permanent generation.
        """
        import gc

        self.addCleanup(gc.unfreeze)
        freeze_startup_heap()
        self.assertGreater(gc.get_freeze_count(), 0)

    def test_makeService_logLevel(self) -> None:
        """
        C{--log-level} sets Kiwi's log level.
        """
        from kiwi.logs import _level
        from twisted.logger import LogLevel

        makeService(
            self.options("--config", self.write(GOOD_CONFIG), "--log-level", "debug"), reactor=MemoryReactor()
        )
        self.assertEqual(_level.logLevelForNamespace("kiwi.anything"), LogLevel.debug)
