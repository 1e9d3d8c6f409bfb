"""
Tests for L{kiwi.service}: building the gateway and applying a new
configuration to it, and for the source comparison in L{kiwi.config} that
decides what a reload does.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kiwi.config import KiwiConfig, diff_sources, parse_config, restart_required
from kiwi.errors import ClientError
from kiwi.events import CounterEvent
from kiwi.registry import Frame, FrameRun, ISubscriber
from kiwi.service import CHANGED, REMOVED, KiwiService, ReloadOutcome

TWO_COUNTERS = """\
sources:
  - {type: counter, id: a, interval_ms: 1000, min: 0}
  - {type: counter, id: b, interval_ms: 1000, min: 0}
server: {listen: "tcp:0"}
"""


def make_config(text: str) -> KiwiConfig:
    """
    Parse configuration C{text}; the tests only use valid text.
    """
    return parse_config(text, "kiwi.yml", MemoryReactorClock())


def counters(*ids: str, listen: str = "tcp:0", extra: str = "") -> KiwiConfig:
    """
    A configuration with one counter source per id (interval 1 s, from 0).
    """
    lines = ["sources:"]
    lines.extend(f"  - {{type: counter, id: {source_id}, interval_ms: 1000, min: 0}}" for source_id in ids)
    if not ids:
        lines = ["sources: []"]
    lines.append(f'server: {{listen: "{listen}"}}')
    return make_config("\n".join(lines) + "\n" + extra)


@implementer(ISubscriber)
class FakeSubscriber:
    """
    A connection that records the messages it is sent.
    """

    auth_context: bytes | None = None
    plugin_addr: str | None = None

    def __init__(self, conn_id: str = "c1") -> None:
        self.conn_id = conn_id
        self.frames: list[Frame] = []

    def send_frame(self, frame: Frame) -> None:
        self.frames.append(frame)

    def send_frames(self, run: FrameRun) -> None:
        self.frames.extend(run.frames)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """
        The JSON messages sent so far.
        """
        return [json.loads(frame.payload) for frame in self.frames]


def closed_notice(source_id: str, message: str) -> dict[str, Any]:
    """
    The C{SUBSCRIPTION_CLOSED} notice a subscriber gets for C{source_id}.
    """
    return {"type": "NOTICE", "data": {"type": "SUBSCRIPTION_CLOSED", "sourceId": source_id, "message": message}}


class ServiceTestMixin:
    """
    Starts a L{KiwiService} on a L{MemoryReactorClock}.
    """

    def start(self, config: KiwiConfig) -> KiwiService:
        """
        Build and start a service for C{config}; it is stopped after the test.
        """
        self.reactor = MemoryReactorClock()
        service = KiwiService(config, self.reactor)
        service.startService()
        self.addCleanup(service.stopService)  # type: ignore[attr-defined]
        return service

    def apply(self, service: KiwiService, config: KiwiConfig) -> ReloadOutcome:
        """
        Apply C{config}, which must finish at once, and return the outcome.
        """
        outcome: ReloadOutcome = self.successResultOf(  # type: ignore[attr-defined]
            Deferred.fromCoroutine(service.apply(config))
        )
        return outcome

    def get(self, service: KiwiService, path: bytes) -> tuple[int, bytes]:
        """
        C{GET} C{path} (one segment) from the service's site.
        """
        request = DummyRequest([path])
        resource = getChildForRequest(service.site.resource, request)
        body = resource.render(request)
        return request.responseCode or 200, body


class FakeSubscriberTests(SynchronousTestCase):
    """
    The fake passes for a connection.
    """

    def test_fakeSubscriber_verifies(self) -> None:
        """
        L{FakeSubscriber} provides L{ISubscriber}.
        """
        self.assertTrue(verifyObject(ISubscriber, FakeSubscriber()))


class DiffSourcesTests(SynchronousTestCase):
    """
    L{diff_sources} compares sources by id.
    """

    def test_diffSources_nothingChanged(self) -> None:
        """
        Two equal configurations: every source is unchanged.
        """
        changes = diff_sources(counters("a", "b"), counters("a", "b"))
        self.assertEqual(changes.added, ())
        self.assertEqual(changes.removed, ())
        self.assertEqual(changes.changed, ())
        self.assertEqual(changes.unchanged, ("a", "b"))

    def test_diffSources_orderIgnored(self) -> None:
        """
        Listing the same sources in another order changes nothing.
        """
        changes = diff_sources(counters("a", "b", "c"), counters("c", "a", "b"))
        self.assertEqual((changes.added, changes.removed, changes.changed), ((), (), ()))
        self.assertEqual(sorted(changes.unchanged), ["a", "b", "c"])

    def test_diffSources_addedAndRemovedInFileOrder(self) -> None:
        """
        Added sources come in the new file's order, removed ids in the old
        file's order.
        """
        new = counters("keep", "z", "y")
        changes = diff_sources(counters("q", "keep", "p"), new)
        self.assertEqual(changes.added, (new.sources[1], new.sources[2]))
        self.assertEqual(changes.removed, ("q", "p"))
        self.assertEqual(changes.unchanged, ("keep",))

    def test_diffSources_settingChanged(self) -> None:
        """
        A source whose settings differ is changed, and carries its new
        settings.
        """
        new = make_config(TWO_COUNTERS.replace("id: b, interval_ms: 1000", "id: b, interval_ms: 50"))
        changes = diff_sources(make_config(TWO_COUNTERS), new)
        self.assertEqual(changes.changed, (new.sources[1],))
        self.assertEqual(changes.changed[0].interval_ms, 50)  # type: ignore[union-attr]
        self.assertEqual(changes.unchanged, ("a",))

    def test_diffSources_typeChanged(self) -> None:
        """
        An id that moves from a counter to a Kafka topic is changed.
        """
        new = make_config(
            "sources:\n  - {type: kafka, id: a, topic: t}\n"
            "kafka: {bootstrap_servers: [k:9092]}\n"
            'server: {listen: "tcp:0"}\n'
        )
        changes = diff_sources(counters("a"), new)
        self.assertEqual(changes.changed, new.sources)
        self.assertEqual(changes.added + changes.removed + changes.unchanged, ())

    def test_diffSources_kafkaSectionChanged(self) -> None:
        """
        A change to the C{kafka} section marks every Kafka source changed,
        even though its own entry is the same; counters are unaffected.
        """
        template = (
            "sources:\n"
            "  - {type: kafka, topic: orders}\n"
            "  - {type: counter, id: ticks, interval_ms: 1000, min: 0}\n"
            "  - {type: kafka, id: prices, topic: prices.v2}\n"
            "kafka: {bootstrap_servers: [%s]}\n"
            'server: {listen: "tcp:0"}\n'
        )
        old = make_config(template % "k1:9092")
        new = make_config(template % "k2:9092")
        changes = diff_sources(old, new)
        self.assertEqual([source.id for source in changes.changed], ["orders", "prices"])
        self.assertEqual(changes.unchanged, ("ticks",))

    def test_diffSources_kafkaSectionSame(self) -> None:
        """
        With the same C{kafka} section, an unchanged Kafka source stays
        unchanged while the other settings change.
        """
        text = (
            "sources:\n  - {type: kafka, topic: orders}\n"
            "kafka: {bootstrap_servers: [k1:9092]}\n"
            'server: {listen: "tcp:0"}\n'
        )
        new = make_config(text + "subscriber: {buffer_capacity: 5}\n")
        changes = diff_sources(make_config(text), new)
        self.assertEqual(changes.unchanged, ("orders",))
        self.assertEqual(changes.changed, ())


class RestartRequiredTests(SynchronousTestCase):
    """
    L{restart_required} names what a reload cannot change.
    """

    def test_restartRequired_nothingChanged(self) -> None:
        """
        The same configuration needs no restart.
        """
        self.assertEqual(restart_required(counters("a"), counters("a")), [])

    def test_restartRequired_listenChanged(self) -> None:
        """
        A different listening endpoint needs a restart, and the key is
        named.
        """
        keys = restart_required(counters("a", listen="tcp:8000"), counters("a", listen="tcp:8001"))
        self.assertEqual(len(keys), 1)
        self.assertIn("server.listen", keys[0])
        self.assertIn("server.address", keys[0])

    def test_restartRequired_sameEndpointOtherSpelling(self) -> None:
        """
        C{server.address} and the C{server.listen} it stands for are the
        same endpoint: no restart.
        """
        old = make_config("sources: []\nserver: {address: '127.0.0.1:8000'}\n")
        new = counters(listen="tcp:8000:interface=127.0.0.1")
        self.assertEqual(restart_required(old, new), [])

    def test_restartRequired_otherSettingsReload(self) -> None:
        """
        Sources, subscriber, ping, shutdown and health check settings need
        no restart.
        """
        new = make_config(
            "sources:\n  - {type: counter, id: z, interval_ms: 5, min: 0}\n"
            "server: {listen: 'tcp:0', ping_interval_s: 1, ping_timeout_s: 1,"
            " shutdown_timeout_s: 2, healthcheck: false}\n"
            "subscriber: {buffer_capacity: 5, max_pending_bytes: 2048}\n"
        )
        self.assertEqual(restart_required(counters("a"), new), [])


class ApplyTests(ServiceTestMixin, SynchronousTestCase):
    """
    L{KiwiService.apply} makes the running gateway match a new
    configuration.
    """

    def test_apply_nothingChanged(self) -> None:
        """
        Applying the running configuration again is C{applied} and touches
        no source.
        """
        service = self.start(make_config(TWO_COUNTERS))
        before = service.registry.sources()
        outcome = self.apply(service, make_config(TWO_COUNTERS))
        self.assertEqual(outcome.outcome, "applied")
        self.assertEqual(outcome.problems, ())
        self.assertEqual(outcome.phrase, "config applied")
        self.assertEqual([id(s) for s in service.registry.sources()], [id(s) for s in before])

    def test_apply_addedSourceSubscribable(self) -> None:
        """
        An added source can be subscribed to as soon as C{apply} returns, and
        is already running.
        """
        service = self.start(counters("a"))
        self.apply(service, counters("a", "new"))
        subscriber = FakeSubscriber()
        service.registry.subscribe(subscriber, "new", "push")
        self.assertEqual(service.registry.subscriber_count("new"), 1)
        source = service.registry.sources()[-1]
        self.assertEqual(source.source_id, "new")
        self.assertTrue(source.running)  # type: ignore[attr-defined]
        self.reactor.advance(1)
        self.assertEqual(
            [m["data"]["sourceId"] for m in subscriber.messages if m["type"] == "RESULT"], ["new"]
        )

    def test_apply_removedSourceClosesSubscriptions(self) -> None:
        """
        Subscribers of a removed source get C{SUBSCRIPTION_CLOSED} with the
        I{removed} message; the source stops and cannot be subscribed to.
        """
        service = self.start(make_config(TWO_COUNTERS))
        removed = service.registry.sources()[1]
        subscriber = FakeSubscriber()
        service.registry.subscribe(subscriber, "b", "push")
        self.apply(service, counters("a"))
        self.assertEqual(subscriber.messages, [closed_notice("b", REMOVED)])
        self.assertEqual(REMOVED, "source removed from the configuration")
        self.assertFalse(removed.running)  # type: ignore[attr-defined]
        self.assertEqual([s.source_id for s in service.registry.sources()], ["a"])
        error = self.assertRaises(ClientError, service.registry.subscribe, subscriber, "b", "push")
        self.assertEqual(str(error), "source not found")

    def test_apply_changedSourceRecreated(self) -> None:
        """
        Subscribers of a changed source get C{SUBSCRIPTION_CLOSED} with the
        I{changed} message; a new source with the new settings replaces the
        old one and can be subscribed to again.
        """
        service = self.start(counters("a"))
        old_source = service.registry.sources()[0]
        subscriber = FakeSubscriber()
        service.registry.subscribe(subscriber, "a", "pull")
        new = make_config(
            "sources:\n  - {type: counter, id: a, interval_ms: 1000, min: 500}\nserver: {listen: 'tcp:0'}\n"
        )
        self.apply(service, new)
        self.assertEqual(subscriber.messages, [closed_notice("a", CHANGED)])
        self.assertEqual(CHANGED, "source configuration changed; subscribe again")
        new_source = service.registry.sources()[0]
        self.assertIsNot(new_source, old_source)
        self.assertFalse(old_source.running)  # type: ignore[attr-defined]
        self.assertTrue(new_source.running)  # type: ignore[attr-defined]
        self.assertEqual(new_source.status()["next"], 501)
        service.registry.subscribe(subscriber, "a", "push")
        self.assertEqual(service.registry.subscriber_count("a"), 1)

    def test_apply_unchangedSourceUntouched(self) -> None:
        """
        An unchanged source keeps its service instance, keeps running, and
        its subscribers are not told anything.
        """
        service = self.start(make_config(TWO_COUNTERS))
        kept = service.registry.sources()[0]
        subscriber = FakeSubscriber()
        service.registry.subscribe(subscriber, "a", "push")
        self.reactor.advance(1)
        sent = len(subscriber.frames)
        self.apply(service, counters("a"))
        self.assertIs(service.registry.sources()[0], kept)
        self.assertIs(service.getServiceNamed("sources").getServiceNamed("source:a"), kept)
        self.assertTrue(kept.running)  # type: ignore[attr-defined]
        self.assertEqual(len(subscriber.frames), sent)
        self.assertEqual(service.registry.subscriber_count("a"), 1)

    def test_apply_onlyRemovedSourceSubscribersTold(self) -> None:
        """
        A subscriber of several sources is told only about the removed one
        and keeps its other subscription.
        """
        service = self.start(make_config(TWO_COUNTERS))
        subscriber = FakeSubscriber()
        service.registry.subscribe(subscriber, "a", "push")
        service.registry.subscribe(subscriber, "b", "push")
        self.apply(service, counters("a"))
        self.assertEqual(subscriber.messages, [closed_notice("b", REMOVED)])
        self.assertEqual(service.registry.subscriber_count("a"), 1)

    def test_apply_subscriberConfigForNewSubscriptions(self) -> None:
        """
        New C{subscriber} settings apply to subscriptions made after the
        reload; earlier subscriptions keep theirs.
        """
        service = self.start(counters("a"))
        before = FakeSubscriber("before")
        service.registry.subscribe(before, "a", "pull")
        self.apply(service, counters("a", extra="subscriber: {buffer_capacity: 3}\n"))
        after = FakeSubscriber("after")
        service.registry.subscribe(after, "a", "pull")
        service.registry.publish("a", [CounterEvent("a", n) for n in range(5)])
        self.assertEqual(service.registry.request(after, "a", 10), 7)
        self.assertEqual(len(after.frames), 3)
        self.assertEqual(service.registry.request(before, "a", 10), 10)
        self.assertEqual(before.frames, [])
        self.assertEqual(service.factory.subscriber_config.buffer_capacity, 3)
        self.assertEqual(service.config.subscriber.buffer_capacity, 3)

    def test_apply_serverSettingsForNewConnections(self) -> None:
        """
        Ping settings go to the connection factory and the shutdown timeout
        to the listener.
        """
        service = self.start(counters("a"))
        self.apply(
            service,
            make_config(
                "sources: [{type: counter, id: a, interval_ms: 1000, min: 0}]\n"
                "server: {listen: 'tcp:0', ping_interval_s: 7, ping_timeout_s: 3, shutdown_timeout_s: 4}\n"
            ),
        )
        self.assertEqual(service.factory.autoPingInterval, 7)
        self.assertEqual(service.factory.autoPingTimeout, 3)
        self.assertEqual(service.listener.shutdown_timeout_s, 4)

    def test_apply_listenChangeKeepsOldListener(self) -> None:
        """
        A new listening endpoint is not applied: the outcome is
        C{partially_applied}, the problem names the key, the old endpoint is
        kept (also in C{service.config}), and the rest is applied.
        """
        service = self.start(counters("a", listen="tcp:8000"))
        outcome = self.apply(service, counters("a", "b", listen="tcp:9000"))
        self.assertEqual(outcome.outcome, "partially_applied")
        self.assertEqual(outcome.phrase, "config partially applied")
        self.assertEqual(len(outcome.problems), 1)
        self.assertIn("server.listen", outcome.problems[0])
        self.assertIn("needs a restart", outcome.problems[0])
        self.assertEqual(service.config.server.listen, "tcp:8000")
        self.assertEqual(service.listener.description, "tcp:8000")
        self.assertEqual([port[0] for port in self.reactor.tcpServers], [8000])
        self.assertEqual([s.source_id for s in service.registry.sources()], ["a", "b"])

    def test_apply_listenChangeThenSame(self) -> None:
        """
        After a partially applied reload, reloading the original endpoint
        again is fully applied.
        """
        service = self.start(counters("a", listen="tcp:8000"))
        self.apply(service, counters("a", listen="tcp:9000"))
        self.assertEqual(self.apply(service, counters("a", listen="tcp:8000")).outcome, "applied")

    def test_apply_beforeStart(self) -> None:
        """
        Sources added to a service that is not running yet start with it.
        """
        service = KiwiService(counters("a"), MemoryReactorClock())
        self.successResultOf(Deferred.fromCoroutine(service.apply(counters("a", "b"))))
        added = service.registry.sources()[1]
        self.assertFalse(added.running)  # type: ignore[attr-defined]
        service.startService()
        self.addCleanup(service.stopService)
        self.assertTrue(added.running)  # type: ignore[attr-defined]


class RecordReloadTests(ServiceTestMixin, SynchronousTestCase):
    """
    L{KiwiService.record_reload} keeps outcomes for C{/health} and
    C{/metrics}.
    """

    def test_recordReload_countsByOutcome(self) -> None:
        """
        Each outcome is counted in C{Stats.reloads}; the latest one is
        C{last_reload}.
        """
        service = self.start(counters("a"))
        service.record_reload(ReloadOutcome("applied"))
        service.record_reload(ReloadOutcome("applied"))
        last = ReloadOutcome("rejected", ("sources[0].id: duplicate",))
        service.record_reload(last)
        self.assertEqual(dict(service.stats.reloads), {"applied": 2, "rejected": 1})
        self.assertIs(service.last_reload, last)

    def test_recordReload_inMetrics(self) -> None:
        """
        C{GET /metrics} reports the counts per outcome.
        """
        service = self.start(counters("a"))
        service.record_reload(ReloadOutcome("partially_applied", ("x",)))
        code, body = self.get(service, b"metrics")
        self.assertEqual(code, 200)
        self.assertIn(b'kiwi_config_reloads_total{outcome="partially_applied"} 1.0', body)
        self.assertIn(b'kiwi_config_reloads_total{outcome="applied"} 0.0', body)

    def test_health_lastReload(self) -> None:
        """
        C{GET /health} has no C{last_reload} before a reload, then the
        latest outcome with its time and problems.
        """
        service = self.start(counters("a"))
        code, body = self.get(service, b"health")
        self.assertEqual(code, 200)
        self.assertNotIn("last_reload", json.loads(body))
        service.record_reload(ReloadOutcome("rejected", ("sources: bad",), at=1234.5))
        code, body = self.get(service, b"health")
        self.assertEqual(
            json.loads(body)["last_reload"], {"outcome": "rejected", "at": 1234.5, "problems": ["sources: bad"]}
        )


class OperatorEndpointTests(ServiceTestMixin, SynchronousTestCase):
    """
    C{/health}, C{/ready} and C{/metrics} on the service's site.
    """

    def test_health_sources(self) -> None:
        """
        C{/health} lists each source with its state.
        """
        service = self.start(counters("a"))
        code, body = self.get(service, b"health")
        document = json.loads(body)
        self.assertEqual(document["status"], "ok")
        self.assertEqual(document["connections"], 0)
        self.assertEqual(document["sources"]["a"]["state"], "running")

    def test_ready_running(self) -> None:
        """
        C{/ready} answers 200 once the service runs.
        """
        service = self.start(counters("a"))
        code, body = self.get(service, b"ready")
        self.assertEqual(code, 200)
        self.assertTrue(json.loads(body)["ready"])

    def test_ready_notStarted(self) -> None:
        """
        Before start-up, C{/ready} answers 503 waiting for start-up.
        """
        service = KiwiService(counters("a"), MemoryReactorClock())
        code, body = self.get(service, b"ready")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["waiting_for"], ["start-up"])

    def test_healthcheck_offThenOnByReload(self) -> None:
        """
        With C{server.healthcheck: false}, C{/health} and C{/ready} answer
        404; a reload that turns it on brings them back.
        """
        service = self.start(make_config("sources: []\nserver: {listen: 'tcp:0', healthcheck: false}\n"))
        self.assertEqual(self.get(service, b"health")[0], 404)
        self.assertEqual(self.get(service, b"ready")[0], 404)
        self.apply(service, counters())
        self.assertEqual(self.get(service, b"health")[0], 200)

    def test_metrics_liveValues(self) -> None:
        """
        C{/metrics} reports subscriptions from the registry and events from
        the statistics.
        """
        service = self.start(counters("a"))
        service.registry.subscribe(FakeSubscriber(), "a", "push")
        self.reactor.advance(1)
        self.reactor.advance(1)
        code, body = self.get(service, b"metrics")
        self.assertIn(b'kiwi_subscriptions{mode="push",source_id="a"} 1.0', body)
        self.assertIn(b'kiwi_events_received_total{source_id="a"} 3.0', body)
        self.assertIn(b"kiwi_connections 0.0", body)
