"""
Kiwi's root service: builds the service tree from a configuration and
applies new configurations to it at run time.

Children, in start order: C{plugins}, C{sources} (one child per source),
C{auth} (when JWT authentication is configured), then the C{listener}.
Twisted stops children in reverse order, so clients are told to go away
before the sources stop.

Start-up and reload share one path: L{KiwiService.apply} compares the
running configuration with the new one and adds, removes or re-creates
sources by id, leaving unchanged ones alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from kiwi.auth import IAuthenticator, OpenAccess
from kiwi.config import (
    AuthConfig,
    CounterSourceConfig,
    KiwiConfig,
    SourceConfig,
    diff_sources,
    keep_restart_only,
    restart_required,
)
from kiwi.endpoints import ListenerService
from kiwi.logs import logger
from kiwi.metrics import Metrics, MetricsResource, Stats
from kiwi.limits import ConnectionGuard
from kiwi.plugins.host import PluginHost
from kiwi.registry import Registry
from kiwi.sources import IEventSink, ISource
from kiwi.status import JsonResource, readiness
from kiwi.ws import KiwiServerFactory, build_site, health_status

REMOVED = "source removed from the configuration"
CHANGED = "source configuration changed; subscribe again"


def build_source(config: SourceConfig, kiwi: KiwiConfig, sink: IEventSink, reactor: Any) -> ISource:
    """
    The source service for one source configuration.
    """
    if isinstance(config, CounterSourceConfig):
        from kiwi.sources.counter import CounterSource

        return CounterSource(config, sink, reactor)
    from kiwi.sources.kafka import MAX_TURN_BYTES, KafkaSource

    assert kiwi.kafka is not None, "validated by kiwi.config"
    # Per reactor turn, fan out no more than a connection writes in one
    # turn, and well within the outbox budget, so that a reader at full
    # speed keeps up with large batches.
    turn_bytes = max(4096, min(MAX_TURN_BYTES, kiwi.subscriber.max_pending_bytes // 4))
    return KafkaSource(
        config,
        kiwi.kafka,
        sink,
        reactor,
        max_turn_bytes=turn_bytes,
        max_concurrent_replays=kiwi.subscriber.max_concurrent_replays,
    )


def build_authenticator(config: AuthConfig | None, reactor: Any) -> IAuthenticator:
    """
    The authenticator for an C{auth} section (none: open access).
    """
    if config is None or config.jwt is None:
        return OpenAccess()
    import os

    from kiwi.auth.jwt import JWTAuthenticator

    return JWTAuthenticator(config.jwt, config.anonymous_sources, reactor, os.environ)


@attrs.frozen
class ReloadOutcome:
    """
    What became of one configuration reload.

    @ivar outcome: C{applied}, C{partially_applied} or C{rejected}.
    @ivar problems: What was wrong or not applied, each naming its key.
    """

    outcome: str
    problems: tuple[str, ...] = ()
    at: float = attrs.field(factory=time.time)

    @property
    def phrase(self) -> str:
        """
        The outcome as logged: C{config applied}, C{config partially
        applied} or C{config rejected}.
        """
        return "config " + self.outcome.replace("_", " ")


class KiwiService(MultiService):
    """
    The whole gateway for one configuration.

    @ivar registry: Sources and subscriptions.
    @ivar listener: The listening service; C{listener.when_listening()}
        gives the bound port.
    @ivar last_reload: The latest reload's outcome, for C{/health}.
    """

    log = logger()
    reloader: Any = None

    def __init__(self, config: KiwiConfig, reactor: Any, worker: tuple[int, str] | None = None) -> None:
        """
        @param worker: In a worker process (C{server.workers} > 1), its index
            and the supervisor's run directory: the listener then adopts
            the shared socket, and C{/health} and C{/metrics} cover every
            worker.
        """
        super().__init__()
        self._reactor = reactor
        self.config = config
        self.stats = Stats()
        self.plugins = PluginHost(config.hooks, reactor)
        self.plugins.setServiceParent(self)
        self.registry = Registry(config.subscriber, self.stats, self.plugins.intercept, self.plugins.count_failure)
        self._sources = MultiService()
        self._sources.setName("sources")
        self._sources.setServiceParent(self)
        self.last_reload: ReloadOutcome | None = None
        self._add_sources(config.sources, config)
        self.authenticator = build_authenticator(config.auth, reactor)
        if IService.providedBy(self.authenticator):
            IService(self.authenticator).setServiceParent(self)
        self.factory = KiwiServerFactory(self.registry, reactor, config.server, self.authenticator, self.plugins)
        self.metrics = Metrics(self.stats, self._live_metrics)
        self.registry.time_intercept = self.metrics.plugin_seconds.labels("intercept").observe
        self.factory.time_authenticate = self.metrics.plugin_seconds.labels("authenticate").observe
        site = self.site = build_site(self.factory, False, config.server.ui, config.server.ui_path)
        root = site.resource
        health: Resource = JsonResource(self._health)
        metrics: Resource = MetricsResource(self.metrics)
        endpoint = None
        if worker is not None:
            from kiwi.workers import LISTEN_FD, AcrossWorkers, AdoptedEndpoint, PortFile

            index, directory = worker
            across = AcrossWorkers(reactor, directory, index)
            health = _AcrossWorkersResource(health, across, "/health", self._merged_health)
            metrics = _AcrossWorkersResource(metrics, across, "/metrics", self._merged_metrics)
            endpoint = AdoptedEndpoint(reactor, config.server.listen, LISTEN_FD)
            PortFile(reactor, site, directory, index).setServiceParent(self)
        root.putChild(b"health", health)
        root.putChild(b"ready", JsonResource(self._ready))
        root.putChild(b"metrics", metrics)
        server = config.server
        guard = ConnectionGuard(
            site,
            reactor,
            server.max_connections,
            server.max_connections_per_ip,
            server.handshake_timeout_s,
            self.factory.count_refusal,
        )
        self.listener = ListenerService(
            reactor, server.listen, guard, self.factory, server.tls, server.shutdown_timeout_s, endpoint
        )
        # The listener goes last, so that it stops first.
        self.listener.setServiceParent(self)

    # Sources

    def _add_sources(self, sources: tuple[SourceConfig, ...], config: KiwiConfig) -> None:
        for source_config in sources:
            source = build_source(source_config, config, self.registry, self._reactor)
            self.registry.add_source(source)
            # Starts it at once when Kiwi is already running.
            IService(source).setServiceParent(self._sources)

    async def _remove_source(self, source_id: str, message: str) -> None:
        self.registry.remove_source(source_id, message)
        service = self._sources.getServiceNamed(f"source:{source_id}")
        await maybeDeferred(self._sources.removeService, service)

    async def apply(self, new: KiwiConfig) -> ReloadOutcome:
        """
        Make the running gateway match C{new}, which has been validated.

        Sources are compared by id: added ones can be subscribed at once,
        removed ones close their subscriptions with C{SUBSCRIPTION_CLOSED},
        changed ones are closed the same way and re-created, unchanged ones
        are not touched. What cannot change without a restart (the
        listening endpoint) is kept and reported.
        """
        old = self.config
        needs_restart = restart_required(old, new)
        new = keep_restart_only(old, new)
        changes = diff_sources(old, new)
        for source_id in changes.removed:
            await self._remove_source(source_id, REMOVED)
        for source in changes.changed:
            await self._remove_source(source.id, CHANGED)
        problems = [f"{key}: changed, but needs a restart; keeping the old value" for key in needs_restart]
        if new.auth != old.auth:
            self._replace_authenticator(new)
        # Always: a plugin file may have changed behind the same path. The
        # new plugins were compiled and checked when the file was loaded.
        self.plugins.apply(new.hooks)
        if new.server.tls != old.server.tls and new.server.tls is not None and self.listener.tls is not None:
            from kiwi.tls import load_server_options

            try:
                self.listener.tls.update(load_server_options(new.server.tls))
                self.log.info("TLS certificate and key replaced for new connections")
            except Exception as e:
                problems.append(f"server.tls: cannot load ({e}); keeping the old certificate")
                new = attrs.evolve(new, server=attrs.evolve(new.server, tls=old.server.tls))
        self.config = new
        self.registry.subscriber_config = new.subscriber
        self.factory.apply_config(new.server, new.subscriber)
        self.listener.shutdown_timeout_s = new.server.shutdown_timeout_s
        self._add_sources(changes.added + changes.changed, new)
        self.log.info(
            "sources: {added} added, {removed} removed, {changed} re-created, {unchanged} unchanged",
            added=len(changes.added),
            removed=len(changes.removed),
            changed=len(changes.changed),
            unchanged=len(changes.unchanged),
        )
        if problems:
            return ReloadOutcome("partially_applied", tuple(problems))
        return ReloadOutcome("applied")

    def _replace_authenticator(self, new: KiwiConfig) -> None:
        """
        Use the new C{auth} settings (keys, JWKS, rules) for handshakes and
        C{AUTHENTICATE} from now on; open connections keep their identity.
        """
        old = self.authenticator
        self.authenticator = build_authenticator(new.auth, self._reactor)
        if IService.providedBy(old):
            IService(old).disownServiceParent()
        if IService.providedBy(self.authenticator):
            IService(self.authenticator).setServiceParent(self)
        self.factory.replace_authenticator(self.authenticator)
        self.log.info("authentication settings replaced")

    def record_reload(self, outcome: ReloadOutcome) -> None:
        """
        Remember a reload's outcome for C{/health} and C{/metrics}.
        """
        self.last_reload = outcome
        self.stats.reloads[outcome.outcome] += 1

    # Operator endpoints

    def _sources_status(self) -> dict[str, dict[str, Any]]:
        return health_status(self.registry, self.factory)["sources"]  # type: ignore[no-any-return]

    def _health(self) -> tuple[int, dict[str, Any]] | None:
        if not self.config.server.healthcheck:
            return None
        body = health_status(self.registry, self.factory)
        if self.last_reload is not None:
            body["last_reload"] = {
                "outcome": self.last_reload.outcome,
                "at": self.last_reload.at,
                "problems": list(self.last_reload.problems),
            }
        return 200, body

    def _merged_health(self, own: str, siblings: dict[str, bytes | None]) -> tuple[bytes, bytes]:
        from kiwi.workers import json_or_none, merge_health

        status = self._health()
        bodies: dict[str, dict[str, Any] | None] = {own: status[1] if status is not None else None}
        for worker, body in siblings.items():
            bodies[worker] = json_or_none(body) if body is not None else None
        return json.dumps(merge_health(bodies)).encode("utf-8") + b"\n", b"application/json"

    def _merged_metrics(self, own: str, siblings: dict[str, bytes | None]) -> tuple[bytes, bytes]:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        from kiwi.workers import merge_expositions

        texts = {own: self.metrics.exposition().decode("utf-8")}
        for worker, body in siblings.items():
            if body is not None:
                texts[worker] = body.decode("utf-8")
        return merge_expositions(texts), CONTENT_TYPE_LATEST.encode("ascii")

    def _ready(self) -> tuple[int, dict[str, Any]] | None:
        if not self.config.server.healthcheck:
            return None
        return readiness(self._sources_status(), bool(self.running))

    def _live_metrics(self) -> dict[str, Any]:
        consumer_lag: dict[tuple[str, int], int] = {}
        for source in self.registry.sources():
            for partition, lag in getattr(source, "consumer_lag", {}).items():
                consumer_lag[source.source_id, partition] = lag
        return {
            "connections": len(self.factory.connections),
            "pending_bytes": sum(c.pending_bytes for c in self.factory.connections),
            "subscriptions": self.registry.subscription_counts(),
            "consumer_lag": consumer_lag,
        }

    # Stopping

    def stopService(self) -> Deferred[None]:
        """
        Stop every child (listener first), logging any that fails.
        """
        self.running = 0
        stops = []
        for child in reversed(list(self)):
            d = Deferred.fromCoroutine(_stop(child))
            d.addErrback(lambda f, name: self.log.failure("{service} failed to stop", f, service=name), child.name)
            stops.append(d)
        return DeferredList(stops).addCallback(lambda _: None)


async def _stop(service: IService) -> None:
    await maybeDeferred(service.stopService)


class _AcrossWorkersResource(Resource):
    """
    C{/health} or C{/metrics} for every worker: this worker's own answer
    (served alone for C{?local=1}) merged with its siblings'.
    """

    isLeaf = True
    log = logger()

    def __init__(
        self,
        local: Resource,
        across: Any,
        path: str,
        merge: Callable[[str, dict[str, bytes | None]], tuple[bytes, bytes]],
    ) -> None:
        super().__init__()
        self._local = local
        self._across = across
        self._path = path
        self._merge = merge

    def render_GET(self, request: Request) -> Any:
        if b"local" in request.args:
            return self._local.render(request)
        Deferred.fromCoroutine(self._render(request)).addErrback(
            lambda f: self.log.failure("merging {path} across workers failed", f, path=self._path)
        )
        return NOT_DONE_YET

    async def _render(self, request: Request) -> None:
        siblings = await self._across.fetch(self._path)
        body, content_type = self._merge(str(self._across.index), siblings)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-store")
        request.write(body)
        request.finish()
