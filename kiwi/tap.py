"""
The C{twistd kiwi} command: options and service construction.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from kiwi.config import DEFAULT_CONFIG_PATH, KiwiConfig, load_config
from kiwi.errors import ConfigErrors
from kiwi.logs import LEVELS, set_level


class Options(usage.Options):
    """
    C{twistd kiwi} options.
    """

    synopsis = "[--config PATH] [--check]"
    longdesc = (
        "Kiwi streams Kafka topics and other event sources to WebSocket clients. "
        "The configuration file is validated before anything starts; SIGHUP reloads it."
    )
    optParameters = [
        ["config", "c", DEFAULT_CONFIG_PATH, "Path to the YAML configuration file."],
        ["log-level", None, "info", "Lowest level of Kiwi's log lines: " + ", ".join(LEVELS) + "."],
    ]
    optFlags = [
        ["check", None, "Validate the configuration file, print the outcome and exit (0: valid)."],
    ]
    # Internal: set by the supervisor when it starts a worker process.
    optParameters.append(["worker", None, None, "(internal) INDEX:RUNDIR of a worker process."])

    config: KiwiConfig

    def postOptions(self) -> None:
        """
        Load and validate the configuration, so that a bad file stops twistd
        before it daemonizes or binds anything.
        """
        from twisted.internet import reactor

        if self["log-level"] not in LEVELS:
            raise usage.UsageError(f"--log-level must be one of {', '.join(LEVELS)}")
        try:
            self.config = load_config(self["config"], reactor)
        except ConfigErrors as e:
            # Not a UsageError: twistd would print the whole usage text
            # first and bury the problem.
            raise SystemExit(f"kiwi: {e}") from None
        if self["check"]:
            print(f"kiwi: configuration in {self['config']} is valid")
            raise SystemExit(0)
        parent = getattr(self, "parent", None)
        if self.config.logging.format == "json" and parent is not None:
            parent["logger"] = "kiwi.logs.json_observer"


def _parse_worker(value: str | None) -> tuple[int, str] | None:
    if value is None:
        return None
    index, _, directory = value.partition(":")
    return int(index), directory


def freeze_startup_heap() -> None:
    """
    Take what is alive once Kiwi has started (modules, classes, the
    configuration, compiled plugins: half or more of the objects the
    process will ever hold) out of the cyclic garbage collector's view.

    A full collection walks every tracked object and stops the event loop
    while it does: with the start-up heap included, one took 100-180 ms
    with 1,000 connections on the benchmark machine, the p99 of a whole
    latency run. Frozen objects are never scanned again; they live as long
    as the process anyway.
    """
    gc.collect()
    gc.freeze()


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build Kiwi's service tree from parsed options: the gateway, plus the
    configuration file watcher when C{reload.watch} is on; SIGHUP reloads.
    Once the reactor runs, the start-up heap is frozen
    (L{freeze_startup_heap}).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from kiwi.reload import FileWatcher, Reloader
    from kiwi.service import KiwiService
    from kiwi.signals import install_signal_handlers

    set_level(options["log-level"])
    config = options.config
    worker = _parse_worker(options["worker"])
    if config.server.workers > 1 and worker is None:
        from kiwi.workers import Supervisor

        supervisor = Supervisor(
            reactor,
            options["config"],
            config.server.listen,
            config.server.workers,
            options["log-level"],
            config.server.shutdown_timeout_s,
        )
        install_signal_handlers(reactor, supervisor.reload, lambda: supervisor.shutdown_timeout_s + 2)
        reactor.callWhenRunning(freeze_startup_heap)
        return supervisor
    service = KiwiService(config, reactor, worker)
    reloader = Reloader(service, options["config"], reactor)
    service.reloader = reloader
    install_signal_handlers(reactor, reloader.request, lambda: service.config.server.shutdown_timeout_s)
    # After the signal handlers: a first collection can take a while.
    reactor.callWhenRunning(freeze_startup_heap)
    if not config.reload.watch:
        return service
    root = MultiService()
    service.setServiceParent(root)
    watcher = FileWatcher(options["config"], config.reload.watch_interval_ms / 1000.0, reloader.request, reactor)
    watcher.setServiceParent(root)
    return root
