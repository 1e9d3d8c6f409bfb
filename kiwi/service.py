"""
Kiwi's root service: builds the service tree from a configuration.

Children, in start order: C{sources} (one child per source), then the
C{listener}. Twisted stops children in reverse order, so clients are told
to go away before the sources stop.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList
from kiwi.logs import logger

from kiwi.config import CounterSourceConfig, KiwiConfig, SourceConfig
from kiwi.endpoints import ListenerService
from kiwi.registry import Registry
from kiwi.sources import IEventSink, ISource
from kiwi.ws import KiwiServerFactory, build_site


def build_source(config: SourceConfig, kiwi: KiwiConfig, sink: IEventSink, reactor: Any) -> ISource:
    """
    The source service for one source configuration.
    """
    if isinstance(config, CounterSourceConfig):
        from kiwi.sources.counter import CounterSource

        return CounterSource(config, sink, reactor)
    from kiwi.sources.kafka import KafkaSource

    assert kiwi.kafka is not None, "validated by kiwi.config"
    # A reader at full speed must never see a whole turn's fan-out exceed
    # its outbox budget.
    turn_bytes = max(4096, kiwi.subscriber.max_pending_bytes // 4)
    return KafkaSource(
        config,
        kiwi.kafka,
        sink,
        reactor,
        max_turn_bytes=turn_bytes,
        max_concurrent_replays=kiwi.subscriber.max_concurrent_replays,
    )


class KiwiService(MultiService):
    """
    The whole gateway for one configuration.

    @ivar registry: Sources and subscriptions.
    @ivar listener: The listening service; C{listener.when_listening()}
        gives the bound port.
    """

    log = logger()

    def __init__(self, config: KiwiConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.registry = Registry(config.subscriber)
        sources = MultiService()
        sources.setName("sources")
        sources.setServiceParent(self)
        for source_config in config.sources:
            source = build_source(source_config, config, self.registry, reactor)
            self.registry.add_source(source)
            IService(source).setServiceParent(sources)
        self.factory = KiwiServerFactory(self.registry, reactor, config.server)
        site = build_site(self.factory, config.server.healthcheck, config.server.ui, config.server.ui_path)
        self.listener = ListenerService(reactor, config.server.listen, site, self.factory)
        # The listener goes last, so that it stops first.
        self.listener.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        """
        Stop every child (listener first), logging any that fails.
        """
        self.running = 0
        stops = []
        for child in reversed(list(self)):
            d = Deferred.fromCoroutine(_stop(child))
            d.addErrback(
                lambda f, name=child.name: self.log.failure("{service} failed to stop", f, service=name)
            )
            stops.append(d)
        return DeferredList(stops).addCallback(lambda _: None)


async def _stop(service: IService) -> None:
    await _maybe(service.stopService())


async def _maybe(result: object) -> None:
    if isinstance(result, Deferred):
        await result


def exit_cleanly_on_signals(reactor: Any) -> None:
    """
    Make SIGTERM and SIGINT stop the reactor like any shutdown, so that
    twistd exits 0 after a graceful stop (by default it re-raises the
    signal and exits 143 or 130, which service managers count as failure).

    Installed once the reactor runs, replacing the reactor's own handlers.
    """
    import signal

    def stop(signum: int, frame: object) -> None:
        reactor.callFromThread(_stop_reactor, reactor, signal.Signals(signum).name)

    def hangup(signum: int, frame: object) -> None:
        # TODO(#6): reload the configuration.
        reactor.callFromThread(
            KiwiService.log.warn,
            "received SIGHUP: configuration reload is not supported yet; restart Kiwi to apply changes",
        )

    def install() -> None:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hangup)

    reactor.callWhenRunning(install)


def _stop_reactor(reactor: Any, name: str) -> None:
    KiwiService.log.info("received {signal}, shutting down", signal=name)
    if reactor.running:
        reactor.stop()
