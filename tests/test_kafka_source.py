"""
Tests for L{kiwi.sources.kafka.KafkaSource} with a fake consumer, an inline
thread runner and a L{Clock}: no broker, no threads, no real time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kiwi import protocol
from kiwi.config import KafkaConfig, KafkaSourceConfig
from kiwi.events import Event, KafkaEvent
from kiwi.sources import IEventSink, ISource
from kiwi.sources.kafka import (
    BEGINNING,
    DEFAULT_CONSUMER_SETTINGS,
    MAX_BATCH,
    METADATA_TIMEOUT_S,
    POLL_TIMEOUT_S,
    RETRY_DELAY_S,
    MAX_TURN_BYTES,
    BrokerUnavailable,
    IKafkaConsumer,
    KafkaSource,
    consumer_settings,
    turn_size,
)


@attrs.frozen
class FakeBatch:
    """
    What the fake's C{thd_consume} returns; shaped like
    L{kiwi.sources._confluent.Batch}.
    """

    events: list[KafkaEvent] = attrs.Factory(list)
    errors: list[str] = attrs.Factory(list)
    brokers_down: bool = False


@implementer(IKafkaConsumer)
class FakeConsumer:
    """
    A scripted consumer. Metadata calls answer at once from its
    attributes; each C{thd_consume} returns a L{Deferred} that the test
    fires with L{deliver}, so the poll loop advances one step at a time.

    @ivar partitions: The topic's partitions, C{None} if it does not exist.
    @ivar broker_error: If set, metadata calls raise L{BrokerUnavailable}.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.partitions: list[int] | None = [0, 1]
        self.end_offsets: dict[int, int] = {0: 10, 1: 20, 2: 30}
        self.broker_error: str | None = None
        self.assigned: list[dict[int, int]] = []
        self.polls: list[Deferred[FakeBatch]] = []
        self.consume_args: list[tuple[int, float]] = []
        self.timeouts: list[float] = []
        self.opened = False
        self.closed = False

    def thd_open(self) -> None:
        self.calls.append("open")
        self.opened = True

    def thd_partitions(self, timeout: float) -> list[int] | None:
        self.calls.append("partitions")
        self.timeouts.append(timeout)
        if self.broker_error is not None:
            raise BrokerUnavailable(self.broker_error)
        return None if self.partitions is None else list(self.partitions)

    def thd_end_offsets(self, partitions: list[int], timeout: float) -> dict[int, int]:
        self.calls.append("end_offsets")
        self.timeouts.append(timeout)
        if self.broker_error is not None:
            raise BrokerUnavailable(self.broker_error)
        return {partition: self.end_offsets[partition] for partition in partitions}

    def thd_assign(self, offsets: Mapping[int, int]) -> None:
        self.calls.append("assign")
        self.assigned.append(dict(offsets))

    def thd_consume(self, max_records: int, timeout: float) -> Any:
        self.calls.append("consume")
        self.consume_args.append((max_records, timeout))
        d: Deferred[FakeBatch] = Deferred()
        self.polls.append(d)
        return d

    def thd_close(self) -> None:
        self.calls.append("close")
        self.closed = True

    @property
    def polling(self) -> bool:
        """
        Whether a poll is waiting to be answered.
        """
        return bool(self.polls)

    def deliver(self, *events: KafkaEvent, errors: Sequence[str] = (), brokers_down: bool = False) -> None:
        """
        Answer the waiting poll.
        """
        assert len(self.polls) == 1, self.polls
        self.polls.pop().callback(FakeBatch(list(events), list(errors), brokers_down))


@implementer(IEventSink)
class FakeSink:
    """
    Records what a source publishes.
    """

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[Event]]] = []
        self.closed: list[tuple[str, str]] = []

    def publish(self, source_id: str, events: Sequence[Event]) -> None:
        self.batches.append((source_id, list(events)))

    def close_source(self, source_id: str, message: str) -> None:
        self.closed.append((source_id, message))


def _record(partition: int, offset: int, payload: bytes = b"v") -> KafkaEvent:
    return KafkaEvent("orders", "orders-topic", partition, offset, None, payload, 1000 + offset)


def _inline(f: Any, *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


class KafkaSourceTestMixin:
    """
    Builds a L{KafkaSource} over a L{FakeConsumer} and a L{Clock}.
    """

    clock: Clock
    consumer: FakeConsumer
    sink: FakeSink

    def make(self, **kafka: Any) -> KafkaSource:
        """
        A source for topic C{orders-topic} with id C{orders}; C{kafka}
        overrides L{KafkaConfig} fields.
        """
        self.clock = Clock()
        self.consumer = FakeConsumer()
        self.sink = FakeSink()
        values: dict[str, Any] = {"bootstrap_servers": ("k:9092",)}
        values.update(kafka)
        source = KafkaSource(
            KafkaSourceConfig(id="orders", topic="orders-topic"),
            KafkaConfig(**values),
            self.sink,
            self.clock,
            consumer=self.consumer,
            run_in_thread=_inline,
        )
        self.addCleanup(self.stop, source)  # type: ignore[attr-defined]
        return source

    def stop(self, source: KafkaSource) -> None:
        """
        Stop C{source} if it runs, answering its last poll, and check that
        the loop ended and left no timers.
        """
        if not source.running:
            return
        d = source.stopService()
        if self.consumer.polling:
            self.consumer.deliver()
        self.successResultOf(d)  # type: ignore[attr-defined]
        self.assertFalse(self.consumer.polling)  # type: ignore[attr-defined]
        self.assertEqual(self.clock.getDelayedCalls(), [])  # type: ignore[attr-defined]


class KafkaSourceTests(KafkaSourceTestMixin, SynchronousTestCase):
    """
    Start-up positions, batches, broker trouble, partition discovery and
    stopping.
    """

    def test_fakeConsumer_verifies(self) -> None:
        """
        The fake provides L{IKafkaConsumer}, and the fake sink
        L{IEventSink}.
        """
        self.assertTrue(verifyObject(IKafkaConsumer, FakeConsumer()))
        self.assertTrue(verifyObject(IEventSink, FakeSink()))

    def test_source_providesISource(self) -> None:
        """
        A Kafka source is an L{ISource}, never finished, stopped until
        started.
        """
        source = self.make()
        self.assertTrue(verifyObject(ISource, source))
        self.assertEqual((source.source_id, source.source_type, source.name), ("orders", "kafka", "source:orders"))
        self.assertFalse(source.finished)
        self.assertEqual(
            source.status(),
            {"type": "kafka", "topic": "orders-topic", "state": "stopped", "partitions": 0, "records": 0, "error": None},
        )
        source.subscriber_added()
        self.assertEqual(self.consumer.calls, [])

    def test_start_existingTopicAtEnd(self) -> None:
        """
        When the topic exists, every partition starts at its end offset and
        polling begins.
        """
        source = self.make()
        source.startService()
        self.assertEqual(self.consumer.calls, ["open", "partitions", "end_offsets", "assign", "consume"])
        self.assertEqual(self.consumer.assigned, [{0: 10, 1: 20}])
        self.assertEqual(self.consumer.consume_args, [(MAX_BATCH, POLL_TIMEOUT_S)])
        self.assertEqual(self.consumer.timeouts, [METADATA_TIMEOUT_S, METADATA_TIMEOUT_S])
        self.assertEqual(source.state, "running")
        self.assertEqual(source.partitions, [0, 1])
        self.assertEqual(
            source.status(),
            {"type": "kafka", "topic": "orders-topic", "state": "running", "partitions": 2, "records": 0, "error": None},
        )

    def test_start_topicAppearsLater(self) -> None:
        """
        While the topic does not exist the source waits for it, asking again
        every retry delay; once it appears, all its partitions start at the
        beginning.
        """
        source = self.make()
        self.consumer.partitions = None
        source.startService()
        self.assertEqual(source.state, "waiting for topic")
        self.assertEqual(self.consumer.calls, ["open", "partitions"])
        self.clock.advance(RETRY_DELAY_S)
        self.assertEqual(self.consumer.calls, ["open", "partitions", "partitions"])
        self.assertEqual(source.state, "waiting for topic")
        self.consumer.partitions = [0, 1, 2]
        self.clock.advance(RETRY_DELAY_S)
        self.assertEqual(self.consumer.assigned, [{0: BEGINNING, 1: BEGINNING, 2: BEGINNING}])
        self.assertNotIn("end_offsets", self.consumer.calls)
        self.assertEqual(source.state, "running")
        self.assertEqual(source.partitions, [0, 1, 2])
        self.assertTrue(self.consumer.polling)

    def test_start_brokerUnavailable(self) -> None:
        """
        An unreachable cluster shows as "broker unreachable" with the error;
        the source retries and recovers, starting at the end offsets.
        """
        source = self.make()
        self.consumer.broker_error = "all brokers down"
        with capturedLogs() as events:
            source.startService()
        self.assertEqual(source.state, "broker unreachable")
        self.assertEqual(source.status()["error"], "all brokers down")
        self.assertFalse(self.consumer.polling)
        self.assertTrue(
            any(
                e.get("source_id") == "orders" and e.get("state") == "broker unreachable" and e["log_level"].name == "error"
                for e in events
            )
        )
        self.clock.advance(RETRY_DELAY_S)
        self.assertEqual(self.consumer.calls.count("partitions"), 2)
        self.consumer.broker_error = None
        self.clock.advance(RETRY_DELAY_S)
        self.assertEqual(source.state, "running")
        self.assertIsNone(source.last_error)
        self.assertEqual(self.consumer.assigned, [{0: 10, 1: 20}])
        self.assertTrue(self.consumer.polling)

    def test_start_brokerUnavailableDuringEndOffsets(self) -> None:
        """
        Losing the cluster between metadata and offsets is retried too.
        """
        source = self.make()

        def end_offsets(partitions: list[int], timeout: float) -> dict[int, int]:
            raise BrokerUnavailable("timed out")

        self.patch(self.consumer, "thd_end_offsets", end_offsets)
        source.startService()
        self.assertEqual(source.state, "broker unreachable")
        self.assertEqual(self.consumer.assigned, [])
        self.patch(self.consumer, "thd_end_offsets", lambda partitions, timeout: {0: 1, 1: 2})
        self.clock.advance(RETRY_DELAY_S)
        self.assertEqual(self.consumer.assigned, [{0: 1, 1: 2}])
        self.assertEqual(source.state, "running")

    def test_poll_batchesPublishedInOrder(self) -> None:
        """
        Each batch goes to the sink, in order, under the source id; empty
        batches publish nothing; every batch is followed by another poll.
        """
        source = self.make()
        source.startService()
        first = [_record(0, 10), _record(1, 20)]
        second = [_record(0, 11)]
        self.consumer.deliver(*first)
        self.consumer.deliver()
        self.consumer.deliver(*second)
        self.assertEqual(self.sink.batches, [("orders", first), ("orders", second)])
        self.assertEqual(source.records_received, 3)
        self.assertEqual(source.status()["records"], 3)
        self.assertEqual(self.consumer.calls.count("consume"), 4)
        self.assertTrue(self.consumer.polling)

    def test_poll_brokersDown(self) -> None:
        """
        A batch that reports all brokers down sets "broker unreachable";
        records arriving again set "running".
        """
        source = self.make()
        source.startService()
        self.consumer.deliver(errors=["Connection refused", "1/1 brokers are down"], brokers_down=True)
        self.assertEqual(source.state, "broker unreachable")
        self.assertEqual(source.last_error, "1/1 brokers are down")
        self.consumer.deliver(_record(0, 10))
        self.assertEqual(source.state, "running")
        self.assertIsNone(source.last_error)

    def test_poll_brokersDownRecoveryByMetadata(self) -> None:
        """
        While unreachable, the source asks for metadata every retry delay,
        so it recovers even when no record arrives.
        """
        source = self.make()
        source.startService()
        self.consumer.deliver(brokers_down=True)
        self.assertEqual(source.state, "broker unreachable")
        self.consumer.deliver()
        self.assertEqual(self.consumer.calls.count("partitions"), 1)
        self.clock.advance(RETRY_DELAY_S)
        self.consumer.deliver()
        self.assertEqual(self.consumer.calls.count("partitions"), 2)
        self.assertEqual(source.state, "running")
        self.assertEqual(self.consumer.assigned, [{0: 10, 1: 20}])

    def test_poll_metadataStillFailing(self) -> None:
        """
        A metadata check that fails keeps the "broker unreachable" state
        with the new error.
        """
        source = self.make()
        source.startService()
        self.consumer.deliver(brokers_down=True, errors=["down"])
        self.consumer.broker_error = "metadata timed out"
        self.clock.advance(RETRY_DELAY_S)
        self.consumer.deliver()
        self.assertEqual(source.state, "broker unreachable")
        self.assertEqual(source.last_error, "metadata timed out")
        self.assertTrue(self.consumer.polling)

    def test_poll_errorsWithoutOutage(self) -> None:
        """
        Other consumer errors are logged as warnings and do not change the
        state.
        """
        source = self.make()
        source.startService()
        with capturedLogs() as events:
            self.consumer.deliver(errors=["some hiccup"])
        self.assertEqual(source.state, "running")
        warnings = [e for e in events if e.get("error") == "some hiccup"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["log_level"].name, "warn")
        self.assertEqual(warnings[0]["source_id"], "orders")

    def test_discovery_newPartitionsAtBeginning(self) -> None:
        """
        After the discovery interval, new partitions are assigned at the
        beginning; existing ones are left alone.
        """
        source = self.make(partition_discovery_interval_ms=60_000)
        source.startService()
        self.consumer.partitions = [0, 1, 2, 3]
        self.clock.advance(59.9)
        self.consumer.deliver()
        self.assertEqual(self.consumer.calls.count("partitions"), 1)
        self.clock.advance(0.1)
        self.consumer.deliver()
        self.assertEqual(self.consumer.calls.count("partitions"), 2)
        self.assertEqual(self.consumer.assigned, [{0: 10, 1: 20}, {2: BEGINNING, 3: BEGINNING}])
        self.assertEqual(source.partitions, [0, 1, 2, 3])
        self.assertEqual(source.status()["partitions"], 4)
        self.assertTrue(self.consumer.polling)

    def test_discovery_defaultInterval(self) -> None:
        """
        By default partitions are looked for every 300000 ms.
        """
        source = self.make()
        source.startService()
        self.consumer.partitions = [0, 1, 2]
        self.clock.advance(299)
        self.consumer.deliver()
        self.assertEqual(len(self.consumer.assigned), 1)
        self.clock.advance(1)
        self.consumer.deliver()
        self.assertEqual(self.consumer.assigned[-1], {2: BEGINNING})

    def test_discovery_noNewPartitions(self) -> None:
        """
        A check that finds nothing new assigns nothing, and the next check
        waits another interval.
        """
        source = self.make(partition_discovery_interval_ms=1000)
        source.startService()
        self.clock.advance(1)
        self.consumer.deliver()
        self.assertEqual(self.consumer.calls.count("partitions"), 2)
        self.assertEqual(len(self.consumer.assigned), 1)
        self.consumer.deliver()
        self.assertEqual(self.consumer.calls.count("partitions"), 2)

    def test_discovery_disabled(self) -> None:
        """
        With discovery disabled, new partitions are never looked for while
        the source is healthy.
        """
        source = self.make(partition_discovery_enabled=False, partition_discovery_interval_ms=1000)
        source.startService()
        self.consumer.partitions = [0, 1, 2]
        for _ in range(3):
            self.clock.advance(5)
            self.consumer.deliver()
        self.assertEqual(self.consumer.calls.count("partitions"), 1)
        self.assertEqual(self.consumer.assigned, [{0: 10, 1: 20}])

    def test_discovery_disabledStillRecovers(self) -> None:
        """
        With discovery disabled, an unreachable cluster is still checked so
        the state recovers, but no partitions are added.
        """
        source = self.make(partition_discovery_enabled=False)
        source.startService()
        self.consumer.partitions = [0, 1, 2]
        self.consumer.deliver(brokers_down=True)
        self.clock.advance(RETRY_DELAY_S)
        self.consumer.deliver()
        self.assertEqual(source.state, "running")
        self.assertEqual(self.consumer.assigned, [{0: 10, 1: 20}])

    def test_discovery_topicDeleted(self) -> None:
        """
        A topic that disappears puts the source back to "waiting for topic".
        """
        source = self.make(partition_discovery_interval_ms=1000)
        source.startService()
        self.consumer.partitions = None
        self.clock.advance(1)
        self.consumer.deliver()
        self.assertEqual(source.state, "waiting for topic")
        self.assertEqual(source.last_error, "the topic no longer exists")
        self.assertTrue(self.consumer.polling)

    def test_stop_closesConsumerAfterPoll(self) -> None:
        """
        Stopping waits for the poll in progress, then closes the consumer;
        the loop polls no more.
        """
        source = self.make()
        source.startService()
        d = source.stopService()
        self.assertNoResult(d)
        self.assertFalse(self.consumer.closed)
        self.consumer.deliver(_record(0, 10))
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(self.consumer.closed)
        self.assertEqual(self.consumer.calls[-2:], ["consume", "close"])
        self.assertFalse(self.consumer.polling)
        self.assertEqual(source.state, "stopped")
        self.assertFalse(source.running)

    def test_stop_whileWaitingForTopic(self) -> None:
        """
        Stopping while waiting to retry cancels the wait and closes the
        consumer at once, leaving no timer.
        """
        source = self.make()
        self.consumer.partitions = None
        source.startService()
        d = source.stopService()
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(self.consumer.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(source.state, "stopped")

    def test_stop_whileBrokerUnreachable(self) -> None:
        """
        Stopping during the retry delay after a broker error ends the loop.
        """
        source = self.make()
        self.consumer.broker_error = "down"
        source.startService()
        self.successResultOf(source.stopService())
        self.assertTrue(self.consumer.closed)
        self.clock.advance(10)
        self.assertEqual(self.consumer.calls.count("partitions"), 1)

    def test_stop_neverStarted(self) -> None:
        """
        Stopping a source that never started still closes its consumer.
        """
        source = self.make()
        self.assertIsNone(self.successResultOf(source.stopService()))
        self.assertEqual(self.consumer.calls, ["close"])
        self.assertEqual(source.state, "stopped")

    def deliverAndStop(self, source: KafkaSource) -> Deferred[None]:
        """
        Stop C{source}, answering its poll.
        """
        d = source.stopService()
        self.consumer.deliver()
        return d

    def test_stop_closeFails(self) -> None:
        """
        A consumer that fails to close is logged; stopping still completes.
        """
        source = self.make()
        source.startService()

        def close() -> None:
            raise RuntimeError("close failed")

        self.patch(self.consumer, "thd_close", close)
        d = self.deliverAndStop(source)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(source.state, "stopped")

    def test_loop_crashLogged(self) -> None:
        """
        An unexpected error in the loop marks the source failed and is
        logged with its source id.
        """
        source = self.make()
        source.startService()
        self.consumer.polls.pop().errback(ValueError("boom"))
        self.assertEqual(source.state, "failed")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.successResultOf(source.stopService())
        self.assertTrue(self.consumer.closed)


class FanOutChunkTests(SynchronousTestCase):
    """
    A large batch is fanned out in chunks, one per reactor turn, so that
    sockets are written between chunks.
    """

    def make(self, max_turn_bytes: int) -> KafkaSource:
        """
        A started source whose turns are limited to C{max_turn_bytes}.
        """
        self.clock = Clock()
        self.consumer = FakeConsumer()
        self.sink = FakeSink()
        source = KafkaSource(
            KafkaSourceConfig(id="orders", topic="orders-topic"),
            KafkaConfig(bootstrap_servers=("k:9092",)),
            self.sink,
            self.clock,
            consumer=self.consumer,
            run_in_thread=_inline,
            max_turn_bytes=max_turn_bytes,
        )
        source.startService()
        self.addCleanup(self.stop, source)
        return source

    def stop(self, source: KafkaSource) -> None:
        """
        Stop C{source}, finishing any fan-out and answering its last poll.
        """
        d = source.stopService()
        self.clock.advance(0)
        if self.consumer.polling:
            self.consumer.deliver()
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def turn(self) -> None:
        """
        One reactor turn: run the calls that are due now, but not those
        they schedule (L{Clock.advance} would run those too).
        """
        now = self.clock.seconds()
        for call in [c for c in self.clock.getDelayedCalls() if c.getTime() <= now]:
            self.clock.calls.remove(call)
            call.called = True
            call.func(*call.args, **call.kw)

    def test_publish_oneChunkPerTurn(self) -> None:
        """
        Records beyond C{max_turn_bytes} wait for the next reactor turn, in
        order, and the next poll starts only once all are published.
        """
        records = [_record(0, offset, b"p" * 300) for offset in range(10)]
        self.make(3 * turn_size(records[0]))
        self.consumer.deliver(*records)
        self.assertEqual(self.sink.batches, [("orders", records[:3])])
        self.assertFalse(self.consumer.polling)
        self.turn()
        self.assertEqual(self.sink.batches[-1], ("orders", records[3:6]))
        self.turn()
        self.turn()
        self.assertEqual(
            [events for _, events in self.sink.batches], [records[:3], records[3:6], records[6:9], records[9:]]
        )
        self.assertTrue(self.consumer.polling)

    def test_publish_largeRecordAlone(self) -> None:
        """
        A record larger than a turn is published in a turn of its own.
        """
        small = _record(0, 1, b"s")
        large = _record(0, 2, b"L" * 5000)
        self.make(1000)
        self.consumer.deliver(small, large, small)
        self.turn()
        self.assertEqual(len(self.sink.batches), 2)
        self.turn()
        self.assertEqual([events for _, events in self.sink.batches], [[small], [large], [small]])

    def test_publish_smallBatchOneTurn(self) -> None:
        """
        A batch within the limit is published at once.
        """
        records = [_record(0, offset) for offset in range(5)]
        self.make(MAX_TURN_BYTES)
        self.consumer.deliver(*records)
        self.assertEqual(self.sink.batches, [("orders", records)])
        self.assertTrue(self.consumer.polling)

    def test_turnSize_coversEncoding(self) -> None:
        """
        The estimate is close to, and not below, the size of the encoded
        C{RESULT} message for typical records.
        """
        for key, payload in ((None, b"x" * 1000), (b"k" * 16, b"y" * 100), (None, None), (b"k", b"v" * 10000)):
            event = KafkaEvent("prices", "prices", 3, 123456789, key, payload, 1700000000000)
            encoded = len(protocol.encode_result(event))
            self.assertGreaterEqual(turn_size(event), encoded)
            self.assertLessEqual(turn_size(event), encoded + 100)


class ConsumerSettingsTests(SynchronousTestCase):
    """
    L{consumer_settings}: defaults, then C{kafka.config}, then what Kiwi
    owns.
    """

    def test_settings_defaults(self) -> None:
        """
        Kiwi's defaults, the bootstrap servers joined by commas, and a
        unique group id naming the source.
        """
        settings = consumer_settings(
            KafkaSourceConfig(id="orders", topic="t"), KafkaConfig(bootstrap_servers=("a:1", "b:2"))
        )
        for key, value in DEFAULT_CONSUMER_SETTINGS.items():
            self.assertEqual(settings[key], value)
        self.assertEqual(settings["enable.auto.commit"], "false")
        self.assertEqual(settings["bootstrap.servers"], "a:1,b:2")
        self.assertTrue(settings["group.id"].startswith("kiwi-orders-"), settings["group.id"])
        self.assertEqual(set(settings), set(DEFAULT_CONSUMER_SETTINGS) | {"bootstrap.servers", "group.id"})
        other = consumer_settings(
            KafkaSourceConfig(id="orders", topic="t"), KafkaConfig(bootstrap_servers=("a:1", "b:2"))
        )
        self.assertNotEqual(settings["group.id"], other["group.id"])

    def test_settings_configOverrides(self) -> None:
        """
        C{kafka.config} adds and overrides properties, including the group
        id, but not the bootstrap servers.
        """
        kafka = KafkaConfig(
            bootstrap_servers=("a:1",),
            config=(
                ("fetch.wait.max.ms", "10"),
                ("security.protocol", "SASL_SSL"),
                ("group.id", "mine"),
                ("bootstrap.servers", "elsewhere:1"),
            ),
        )
        settings = consumer_settings(KafkaSourceConfig(id="s", topic="t"), kafka)
        self.assertEqual(settings["fetch.wait.max.ms"], "10")
        self.assertEqual(settings["security.protocol"], "SASL_SSL")
        self.assertEqual(settings["group.id"], "mine")
        self.assertEqual(settings["bootstrap.servers"], "a:1")
        self.assertEqual(settings["auto.offset.reset"], "latest")

    def test_settings_defaultsUnchanged(self) -> None:
        """
        Building settings does not change the shared defaults.
        """
        before = dict(DEFAULT_CONSUMER_SETTINGS)
        consumer_settings(
            KafkaSourceConfig(id="s", topic="t"),
            KafkaConfig(bootstrap_servers=("a:1",), config=(("log_level", "7"),)),
        )
        self.assertEqual(dict(DEFAULT_CONSUMER_SETTINGS), before)
