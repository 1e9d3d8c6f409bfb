"""
Tests for L{kiwi.metrics}: the Prometheus exposition of L{Stats} and live
state.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from kiwi.metrics import PLUGIN_BUCKETS, Metrics, MetricsResource, Stats

FAMILIES = {
    "kiwi_connections": "gauge",
    "kiwi_pending_bytes": "gauge",
    "kiwi_subscriptions": "gauge",
    "kiwi_events_received": "counter",
    "kiwi_events_delivered": "counter",
    "kiwi_events_dropped": "counter",
    "kiwi_lag_notices": "counter",
    "kiwi_kafka_consumer_lag": "gauge",
    "kiwi_handshake_refusals": "counter",
    "kiwi_config_reloads": "counter",
    "kiwi_plugin_call_seconds": "histogram",
}


def idle() -> dict[str, Any]:
    """
    Live state with nothing going on.
    """
    return {"connections": 0, "pending_bytes": 0, "subscriptions": {}, "consumer_lag": {}}


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of the exposition, by name and sorted labels.
    """
    result = {}
    for family in text_string_to_metric_families(metrics.exposition().decode("utf-8")):
        for sample in family.samples:
            result[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return result


class MetricsTests(SynchronousTestCase):
    """
    L{Metrics.exposition} reads the counters and the live state at scrape
    time.
    """

    def test_exposition_families(self) -> None:
        """
        Every family is there with its type, even with nothing counted.
        """
        text = Metrics(Stats(), idle).exposition().decode("utf-8")
        found = {family.name: family.type for family in text_string_to_metric_families(text)}
        self.assertEqual(found, FAMILIES)

    def test_exposition_stats(self) -> None:
        """
        The L{Stats} counters appear as C{_total} samples with their labels.
        """
        stats = Stats()
        stats.received["a"] += 5
        stats.delivered["a"] += 4
        stats.dropped["a", "no_credit"] += 2
        stats.dropped["b", "slow_client"] += 1
        stats.lag_notices["a"] += 1
        stats.handshake_refusals["auth"] += 3
        stats.reloads["rejected"] += 2
        found = samples(Metrics(stats, idle))
        self.assertEqual(found["kiwi_events_received_total", (("source_id", "a"),)], 5)
        self.assertEqual(found["kiwi_events_delivered_total", (("source_id", "a"),)], 4)
        self.assertEqual(found["kiwi_events_dropped_total", (("reason", "no_credit"), ("source_id", "a"))], 2)
        self.assertEqual(found["kiwi_events_dropped_total", (("reason", "slow_client"), ("source_id", "b"))], 1)
        self.assertEqual(found["kiwi_lag_notices_total", (("source_id", "a"),)], 1)
        self.assertEqual(found["kiwi_handshake_refusals_total", (("reason", "auth"),)], 3)
        self.assertEqual(found["kiwi_config_reloads_total", (("outcome", "rejected"),)], 2)

    def test_exposition_everyReloadOutcome(self) -> None:
        """
        The three reload outcomes are always exported, at 0 before any
        reload.
        """
        found = samples(Metrics(Stats(), idle))
        for outcome in ("applied", "partially_applied", "rejected"):
            self.assertEqual(found["kiwi_config_reloads_total", (("outcome", outcome),)], 0)

    def test_exposition_live(self) -> None:
        """
        Gauges come from the live callable, which is called at each scrape.
        """
        live = {
            "connections": 3,
            "pending_bytes": 1200,
            "subscriptions": {("a", "push"): 2, ("a", "pull"): 1},
            "consumer_lag": {("orders", 0): 7, ("orders", 1): 0},
        }
        calls: list[None] = []

        def current() -> dict[str, Any]:
            calls.append(None)
            return live

        metrics = Metrics(Stats(), current)
        found = samples(metrics)
        self.assertEqual(found["kiwi_connections", ()], 3)
        self.assertEqual(found["kiwi_pending_bytes", ()], 1200)
        self.assertEqual(found["kiwi_subscriptions", (("mode", "push"), ("source_id", "a"))], 2)
        self.assertEqual(found["kiwi_subscriptions", (("mode", "pull"), ("source_id", "a"))], 1)
        self.assertEqual(found["kiwi_kafka_consumer_lag", (("partition", "0"), ("source_id", "orders"))], 7)
        self.assertEqual(found["kiwi_kafka_consumer_lag", (("partition", "1"), ("source_id", "orders"))], 0)
        live["connections"] = 4
        self.assertEqual(samples(metrics)["kiwi_connections", ()], 4)
        self.assertEqual(len(calls), 2)

    def test_pluginHistogram_buckets(self) -> None:
        """
        The plugin call histogram has Kiwi's buckets, labelled by hook.
        """
        metrics = Metrics(Stats(), idle)
        metrics.plugin_seconds.labels(hook="intercept").observe(0.00003)
        found = samples(metrics)
        self.assertEqual(found["kiwi_plugin_call_seconds_count", (("hook", "intercept"),)], 1)
        self.assertEqual(found["kiwi_plugin_call_seconds_bucket", (("hook", "intercept"), ("le", "2.5e-05"))], 0)
        self.assertEqual(found["kiwi_plugin_call_seconds_bucket", (("hook", "intercept"), ("le", "5e-05"))], 1)
        buckets = [labels for name, labels in found if name == "kiwi_plugin_call_seconds_bucket"]
        self.assertEqual(len(buckets), len(PLUGIN_BUCKETS) + 1)

    def test_metrics_separateRegistries(self) -> None:
        """
        Two L{Metrics} do not share a registry (no global state between
        services or tests).
        """
        first = Metrics(Stats(), idle)
        first.plugin_seconds.labels(hook="x").observe(1)
        self.assertNotIn(("kiwi_plugin_call_seconds_count", (("hook", "x"),)), samples(Metrics(Stats(), idle)))


class MetricsResourceTests(SynchronousTestCase):
    """
    L{MetricsResource} serves the exposition.
    """

    def test_render_exposition(self) -> None:
        """
        C{GET /metrics} answers with the text format and its content type.
        """
        metrics = Metrics(Stats(), idle)
        request = DummyRequest([b""])
        body = MetricsResource(metrics).render(request)
        self.assertEqual(body, metrics.exposition())
        content_types = request.responseHeaders.getRawHeaders(b"content-type")
        assert content_types is not None
        self.assertEqual(len(content_types), 1)
        self.assertTrue(content_types[0].startswith(b"text/plain; version="), content_types)
