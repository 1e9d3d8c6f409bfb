"""
Counters for operators, exported at C{GET /metrics} in Prometheus format.

The hot path only bumps plain integers in L{Stats} (no locks, no label
lookups per event); a collector turns them into metric families when
Prometheus scrapes. Scrapes are served on the reactor thread, because the
counters belong to it: prometheus-client's own Twisted resource runs its
WSGI app in a thread pool, which would read them while they change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request

PLUGIN_BUCKETS = (0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1)


class Stats:
    """
    Plain counters, bumped where things happen.

    @ivar received: Events received per source.
    @ivar delivered: Events handed to client connections, per source.
    @ivar dropped: Events dropped, per (source, reason); reasons are
        C{no_credit} and C{buffer_full} (pull mode) and C{slow_client}
        (the connection was over its budget).
    @ivar lag_notices: C{LAG} notices sent, per source.
    @ivar handshake_refusals: Refused WebSocket handshakes, per reason.
    @ivar reloads: Configuration reloads, per outcome.
    """

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        self.dropped: Counter[tuple[str, str]] = Counter()
        self.lag_notices: Counter[str] = Counter()
        self.handshake_refusals: Counter[str] = Counter()
        self.reloads: Counter[str] = Counter()


class _Collector:
    """
    Reads L{Stats} and live state when Prometheus scrapes.
    """

    def __init__(self, stats: Stats, live: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats
        self._live = live

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        live = self._live()

        connections = GaugeMetricFamily("kiwi_connections", "Open WebSocket connections.")
        connections.add_metric([], live["connections"])
        yield connections

        pending = GaugeMetricFamily("kiwi_pending_bytes", "Bytes waiting in connection outboxes.")
        pending.add_metric([], live["pending_bytes"])
        yield pending

        subscriptions = GaugeMetricFamily(
            "kiwi_subscriptions", "Subscriptions per source and mode.", labels=["source_id", "mode"]
        )
        for (source_id, mode), count in sorted(live["subscriptions"].items()):
            subscriptions.add_metric([source_id, mode], count)
        yield subscriptions

        received = CounterMetricFamily("kiwi_events_received", "Events received from sources.", labels=["source_id"])
        for source_id, count in sorted(stats.received.items()):
            received.add_metric([source_id], count)
        yield received

        delivered = CounterMetricFamily(
            "kiwi_events_delivered", "Events handed to client connections.", labels=["source_id"]
        )
        for source_id, count in sorted(stats.delivered.items()):
            delivered.add_metric([source_id], count)
        yield delivered

        dropped = CounterMetricFamily(
            "kiwi_events_dropped", "Events dropped for a subscriber, by reason.", labels=["source_id", "reason"]
        )
        for (source_id, reason), count in sorted(stats.dropped.items()):
            dropped.add_metric([source_id, reason], count)
        yield dropped

        lag = CounterMetricFamily("kiwi_lag_notices", "LAG notices sent.", labels=["source_id"])
        for source_id, count in sorted(stats.lag_notices.items()):
            lag.add_metric([source_id], count)
        yield lag

        consumer_lag = GaugeMetricFamily(
            "kiwi_kafka_consumer_lag",
            "Records behind the partition's end, from librdkafka statistics.",
            labels=["source_id", "partition"],
        )
        for (source_id, partition), value in sorted(live["consumer_lag"].items()):
            consumer_lag.add_metric([source_id, str(partition)], value)
        yield consumer_lag

        refusals = CounterMetricFamily(
            "kiwi_handshake_refusals", "Refused WebSocket handshakes, by reason.", labels=["reason"]
        )
        for reason, count in sorted(stats.handshake_refusals.items()):
            refusals.add_metric([reason], count)
        yield refusals

        reloads = CounterMetricFamily(
            "kiwi_config_reloads", "Configuration reloads, by outcome.", labels=["outcome"]
        )
        for outcome in ("applied", "partially_applied", "rejected"):
            reloads.add_metric([outcome], stats.reloads[outcome])
        yield reloads


class Metrics:
    """
    Kiwi's Prometheus registry: the L{Stats} collector plus the plugin call
    latency histogram.
    """

    def __init__(self, stats: Stats, live: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(stats, live))  # type: ignore[arg-type]
        self.plugin_seconds = Histogram(
            "kiwi_plugin_call_seconds",
            "Time spent in WebAssembly plugin calls, by hook.",
            ["hook"],
            buckets=PLUGIN_BUCKETS,
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """
        The Prometheus text format of every metric.
        """
        return generate_latest(self.registry)


class MetricsResource(Resource):
    """
    C{GET /metrics}.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self._metrics.exposition()
