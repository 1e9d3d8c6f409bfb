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
from collections.abc import Callable, Iterator, Mapping
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
        C{no_credit} and C{buffer_full} (pull mode), C{slow_client} (the
        connection was over its budget) and C{closed} (still waiting in
        the connection's outbox when it closed).
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

    def undeliver(self, source_id: str, reason: str, count: int = 1) -> None:
        """
        Move C{count} events of C{source_id} that were counted as delivered
        when handed to a connection, but never left it, to dropped.
        """
        self.delivered[source_id] -= count
        self.dropped[source_id, reason] += count


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
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        yield _family(gauge, "kiwi_connections", "Open WebSocket connections.", [], {(): live["connections"]})
        yield _family(
            gauge, "kiwi_pending_bytes", "Bytes waiting in connection outboxes.", [], {(): live["pending_bytes"]}
        )
        yield _family(
            gauge,
            "kiwi_subscriptions",
            "Subscriptions per source and mode.",
            ["source_id", "mode"],
            live["subscriptions"],
        )
        yield _family(
            counter, "kiwi_events_received", "Events received from sources.", ["source_id"], stats.received
        )
        yield _family(
            counter, "kiwi_events_delivered", "Events handed to client connections.", ["source_id"], stats.delivered
        )
        yield _family(
            counter,
            "kiwi_events_dropped",
            "Events dropped for a subscriber, by reason.",
            ["source_id", "reason"],
            stats.dropped,
        )
        yield _family(counter, "kiwi_lag_notices", "LAG notices sent.", ["source_id"], stats.lag_notices)
        yield _family(
            gauge,
            "kiwi_kafka_consumer_lag",
            "Records behind the partition's end, from librdkafka statistics.",
            ["source_id", "partition"],
            live["consumer_lag"],
        )
        yield _family(
            counter,
            "kiwi_handshake_refusals",
            "Refused WebSocket handshakes, by reason.",
            ["reason"],
            stats.handshake_refusals,
        )
        outcomes = {outcome: stats.reloads[outcome] for outcome in ("applied", "partially_applied", "rejected")}
        yield _family(counter, "kiwi_config_reloads", "Configuration reloads, by outcome.", ["outcome"], outcomes)


def _family(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    documentation: str,
    labels: list[str],
    values: Mapping[Any, float],
) -> Metric:
    """
    One metric family with a sample per key of C{values}: a key is one label
    value, or a tuple of them (C{()} when there are no labels).
    """
    family = kind(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        label_values = key if isinstance(key, tuple) else (key,)
        family.add_metric([str(v) for v in label_values], value)
    return family


class Metrics:
    """
    Kiwi's Prometheus registry: the L{Stats} collector plus the plugin call
    latency histogram.
    """

    def __init__(self, stats: Stats, live: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(stats, live))
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
