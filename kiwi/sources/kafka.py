"""
The Kafka source: every partition of one topic, streamed to subscribers.

One consumer per source, driven from a one-thread pool: every call into
librdkafka happens there (see L{kiwi.sources._confluent}), and batches of
records come back to the reactor thread to be fanned out.

Positions: partitions that exist when the source first reaches the topic
start at their end (new records only); partitions that appear later, and
a topic that did not exist yet, start at their beginning, so nothing
produced to them is lost.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from kiwi.logs import logger
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

from kiwi.config import KafkaConfig, KafkaSourceConfig
from kiwi.events import KafkaEvent
from kiwi.protocol import StartFrom
from kiwi.replay import IReplayReader, IReplaySource, IReplayTarget, Replay
from kiwi.sources import IEventSink, ISource

T = TypeVar("T")

MAX_BATCH = 1000
"""
The most records one poll hands to the reactor.
"""

MAX_TURN_BYTES = 64 * 1024
"""
The most bytes of C{RESULT} messages (as estimated by L{turn_size}) fanned
out in one reactor turn. Between chunks the reactor writes to the sockets,
and in one turn Twisted writes about this much to each connection (it
pauses a producer once 64 KiB wait in a transport), so a client that reads
at full speed keeps up with the fan-out even when a poll returns a large
batch, instead of seeing its outbox fill (see C{docs/flow-control.md}).
"""


def turn_size(event: KafkaEvent) -> int:
    """
    About how many bytes C{event}'s C{RESULT} message takes: key and
    payload are base64-encoded (4/3), plus the JSON around them.
    """
    return (len(event.key or b"") + len(event.payload or b"")) * 4 // 3 + 160

POLL_TIMEOUT_S = 0.1
"""
How long one poll waits for records: short, so stopping is quick.
"""

METADATA_TIMEOUT_S = 2.0
RETRY_DELAY_S = 1.0

BEGINNING = -2
"""
The offset that means "the first record still retained" (librdkafka's
C{OFFSET_BEGINNING}).
"""


class BrokerUnavailable(Exception):
    """
    The cluster could not be asked (down, unreachable, timed out).
    """

DEFAULT_CONSUMER_SETTINGS: Mapping[str, str] = {
    "enable.auto.commit": "false",
    "enable.auto.offset.store": "false",
    "auto.offset.reset": "latest",
    "enable.partition.eof": "false",
    # Latency: answer fetches as soon as one record is there.
    "fetch.wait.max.ms": "50",
    "fetch.min.bytes": "1",
    # Come back quickly after a broker restart.
    "reconnect.backoff.ms": "100",
    "reconnect.backoff.max.ms": "2000",
    # Consumer lag per partition for /metrics.
    "statistics.interval.ms": "5000",
    # librdkafka's own log lines would go to stderr; errors reach us
    # through error_cb and are logged with the source id instead.
    "log_level": "0",
}


class IKafkaConsumer(Interface):
    """
    The consumer calls a Kafka source needs; all run in its thread.
    """

    def thd_open() -> None:
        """
        Create the underlying consumer.
        """

    def thd_partitions(timeout: float) -> list[int] | None:
        """
        The topic's partitions, or C{None} if the topic does not exist.
        """

    def thd_end_offsets(partitions: list[int], timeout: float) -> dict[int, int]:
        """
        Each partition's end offset.
        """

    def thd_assign(offsets: Mapping[int, int]) -> None:
        """
        Add partitions to the assignment at the given offsets.
        """

    def thd_consume(max_records: int, timeout: float) -> Any:
        """
        Poll for a batch of records.
        """

    def thd_close() -> None:
        """
        Close the consumer.
        """


def consumer_settings(source: KafkaSourceConfig, kafka: KafkaConfig) -> dict[str, str]:
    """
    librdkafka settings for one source: Kiwi's defaults, then the operator's
    C{kafka.config}, then what Kiwi must own.
    """
    settings = dict(DEFAULT_CONSUMER_SETTINGS)
    settings.update(kafka.config)
    settings["bootstrap.servers"] = ",".join(kafka.bootstrap_servers)
    # A unique group id: Kiwi assigns partitions itself and commits nothing,
    # so sources and Kiwi instances never disturb one another.
    settings.setdefault("group.id", f"kiwi-{source.id}-{uuid.uuid4().hex[:12]}")
    return settings


def _default_consumer(source: KafkaSourceConfig, kafka: KafkaConfig) -> IKafkaConsumer:
    from kiwi.sources._confluent import ConfluentConsumer

    consumer: IKafkaConsumer = ConfluentConsumer(
        source.id,
        source.topic,
        consumer_settings(source, kafka),
        payload_format=source.format,
        key_format=source.key_format,
        headers=source.headers,
    )
    return consumer


def _default_replay_reader(source: KafkaSourceConfig, kafka: KafkaConfig) -> IReplayReader:
    from kiwi.sources._confluent import ConfluentConsumer

    settings = consumer_settings(source, kafka)
    # Its own group: a replay must never disturb the live consumer.
    settings["group.id"] = f"kiwi-{source.id}-replay-{uuid.uuid4().hex[:12]}"
    # An offset that is no longer retained starts at the first one that is.
    settings["auto.offset.reset"] = "earliest"
    reader: IReplayReader = ConfluentConsumer(
        source.id,
        source.topic,
        settings,
        payload_format=source.format,
        key_format=source.key_format,
        headers=source.headers,
    )
    return reader


class _ReplayThread:
    """
    The one-thread pool of one replay, started on first use.
    """

    def __init__(self, reactor: IReactorThreads, name: str) -> None:
        self._reactor = reactor
        self._name = name
        self._pool: ThreadPool | None = None

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self._pool is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name=self._name)
            self._pool.start()
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool = None


class _Stopped(Exception):
    """
    The source is stopping; unwind the run loop.
    """


@implementer(ISource, IReplaySource)
class KafkaSource(Service):
    """
    Streams one topic to the registry.

    @param run_in_thread: How to call into the consumer; by default, the
        source's own one-thread pool. Tests pass an inline runner.
    @param replay_reader: Makes the consumer of one replay (see
        L{kiwi.replay}); C{replay_run_in_thread} is how to call into it
        (by default, a one-thread pool per replay).
    @param max_concurrent_replays: How many replays read at once; later
        ones wait their turn (holding live events back meanwhile).

    @ivar positions: For each partition, the offset the live stream will
        publish next.
    """

    log = logger()
    source_type = "kafka"
    finished = False

    def __init__(
        self,
        config: KafkaSourceConfig,
        kafka: KafkaConfig,
        sink: IEventSink,
        reactor: Any,
        consumer: IKafkaConsumer | None = None,
        run_in_thread: Callable[..., Deferred[Any]] | None = None,
        max_turn_bytes: int = MAX_TURN_BYTES,
        replay_reader: Callable[[], IReplayReader] | None = None,
        replay_run_in_thread: Callable[..., Deferred[Any]] | None = None,
        max_concurrent_replays: int = 4,
    ) -> None:
        self.config = config
        self.kafka = kafka
        self.source_id = config.id
        self.name = f"source:{config.id}"
        self._sink = sink
        self._clock: IReactorTime = reactor
        self._consumer = consumer if consumer is not None else _default_consumer(config, kafka)
        self._pool: ThreadPool | None = None
        if run_in_thread is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name=f"kiwi-kafka-{config.id}")
            pool = self._pool
            threads: IReactorThreads = reactor

            def run_in_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
                return deferToThreadPool(threads, pool, f, *args)

        self._run_in_thread = run_in_thread
        self._max_turn_bytes = max_turn_bytes
        self._reactor = reactor
        self._replay_reader = replay_reader or (lambda: _default_replay_reader(config, kafka))
        self._replay_run_in_thread = replay_run_in_thread
        self._replays: set[Replay] = set()
        self._running_replays: set[Replay] = set()
        self._waiting_replays: deque[Replay] = deque()
        self._max_concurrent_replays = max_concurrent_replays
        self.positions: dict[int, int] = {}
        self._run: Deferred[None] | None = None
        self._sleeping: Deferred[None] | None = None
        self._stopping = False
        self.state = "stopped"
        self.last_error: str | None = None
        self.partitions: list[int] = []
        self.records_received = 0
        self.consumer_lag: dict[int, int] = {}

    # Service

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.state = "starting"
        if self._pool is not None:
            self._pool.start()
        self._run = Deferred.fromCoroutine(self._consume())
        self._run.addErrback(self._crashed)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        if self._sleeping is not None:
            self._sleeping.cancel()
        run = self._run if self._run is not None else succeed(None)
        self._run = None
        replays = [replay.cancel() for replay in list(self._replays)]
        if replays:
            run = DeferredList([run, *replays]).addCallback(lambda _: None)

        def close(_: object) -> Deferred[Any]:
            return self._call(self._consumer.thd_close)

        def stop_pool(result: object) -> object:
            self.state = "stopped"
            self.log.info("{source_id} stopped", source_id=self.source_id)
            if self._pool is not None:
                self._pool.stop()
            return result

        closed = run.addCallback(close)
        closed.addErrback(
            lambda f: self.log.failure("{source_id} failed to close its consumer", f, source_id=self.source_id)
        )
        closed.addBoth(stop_pool)
        return closed.addCallback(lambda _: None)

    def _crashed(self, failure: Any) -> None:
        self.state = "failed"
        self.log.failure("{source_id} consumer loop failed", failure, source_id=self.source_id)

    # ISource

    def subscriber_added(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {
            "type": "kafka",
            "topic": self.config.topic,
            "state": self.state,
            "partitions": len(self.partitions),
            "records": self.records_received,
            "error": self.last_error,
        }

    # IReplaySource

    def open_replay(self, start: StartFrom, target: IReplayTarget, max_events: int) -> Replay:
        """
        A replay of this topic for one subscription, with its own consumer
        and thread; it begins in the next reactor turn.
        """
        runner = _ReplayThread(self._reactor, f"kiwi-replay-{self.source_id}")
        run_in_thread = self._replay_run_in_thread or runner

        def finished(replay: Replay) -> None:
            self._replays.discard(replay)
            self._running_replays.discard(replay)
            # On the reactor thread, after the pool's last call returned.
            runner.stop()
            self._begin_replays()

        replay = Replay(
            self.source_id,
            start,
            self._replay_reader(),
            run_in_thread,
            self._clock,
            lambda: self.positions,
            target,
            max_events,
            finished,
        )
        self._replays.add(replay)
        self._waiting_replays.append(replay)
        self._begin_replays()
        return replay

    def _begin_replays(self) -> None:
        """
        Begin waiting replays, in order, while fewer than
        C{max_concurrent_replays} run.
        """
        while self._waiting_replays and len(self._running_replays) < self._max_concurrent_replays:
            replay = self._waiting_replays.popleft()
            self._running_replays.add(replay)
            self._clock.callLater(0, replay.begin)

    # The run loop

    def _call(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        return self._run_in_thread(f, *args)

    async def _sleep(self, seconds: float) -> None:
        if self._stopping:
            raise _Stopped()
        self._sleeping = deferLater(self._clock, seconds, lambda: None)
        try:
            await self._sleeping
        except CancelledError:
            raise _Stopped() from None
        finally:
            self._sleeping = None
        if self._stopping:
            raise _Stopped()

    def _set_state(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            if error is not None:
                self.log.error(
                    "{source_id} {state}: {error}", source_id=self.source_id, state=state, error=error
                )
            else:
                self.log.info("{source_id} {state}", source_id=self.source_id, state=state)
        self.state = state
        self.last_error = error

    async def _consume(self) -> None:
        try:
            await self._call(self._consumer.thd_open)
            await self._assign_initial_partitions()
            await self._poll_forever()
        except _Stopped:
            pass

    async def _assign_initial_partitions(self) -> None:
        topic_existed = True
        while True:
            try:
                partitions = await self._call(self._consumer.thd_partitions, METADATA_TIMEOUT_S)
                if partitions is None:
                    topic_existed = False
                    self._set_state("waiting for topic")
                    await self._sleep(RETRY_DELAY_S)
                    continue
                if topic_existed:
                    offsets = await self._call(self._consumer.thd_end_offsets, partitions, METADATA_TIMEOUT_S)
                else:
                    # The topic appeared after we started: nothing in it is old.
                    offsets = {partition: BEGINNING for partition in partitions}
            except BrokerUnavailable as e:
                self._set_state("broker unreachable", str(e))
                await self._sleep(RETRY_DELAY_S)
                continue
            await self._call(self._consumer.thd_assign, offsets)
            self.positions.update({p: offset for p, offset in offsets.items() if offset >= 0})
            self.partitions = partitions
            self._set_state("running")
            return

    async def _poll_forever(self) -> None:
        discovery_interval = self.kafka.partition_discovery_interval_ms / 1000.0
        last_check = self._clock.seconds()
        while not self._stopping:
            batch = await self._call(self._consumer.thd_consume, MAX_BATCH, POLL_TIMEOUT_S)
            lag = getattr(batch, "lag", None)
            if lag is not None:
                self.consumer_lag = lag
            if batch.events:
                self.records_received += len(batch.events)
                await self._publish(batch.events)
            if batch.brokers_down:
                self._set_state("broker unreachable", batch.errors[-1] if batch.errors else None)
            elif batch.events and self.state != "running":
                self._set_state("running")
            elif batch.errors:
                self.log.warn(
                    "{source_id} consumer error: {error}", source_id=self.source_id, error=batch.errors[-1]
                )
            healthy = self.state == "running"
            # While the cluster is unreachable, ask it often, so the state
            # recovers even when no record arrives.
            check_every = discovery_interval if healthy else RETRY_DELAY_S
            if self._clock.seconds() >= last_check + check_every and (
                self.kafka.partition_discovery_enabled or not healthy
            ):
                last_check = self._clock.seconds()
                await self._discover_partitions()

    async def _publish(self, events: list[KafkaEvent]) -> None:
        """
        Fan C{events} out in chunks of at most C{max_turn_bytes} (by
        L{turn_size}; a larger event goes alone), one chunk per reactor
        turn.
        """
        start = 0
        size = 0
        for index, event in enumerate(events):
            event_size = turn_size(event)
            size += event_size
            if size > self._max_turn_bytes and index > start:
                self._hand_over(events[start:index])
                await deferLater(self._clock, 0, lambda: None)
                start = index
                size = event_size
        self._hand_over(events[start:])

    def _hand_over(self, events: list[KafkaEvent]) -> None:
        """
        Publish C{events}, keeping L{positions} in step with what was
        published (replays switch over there).
        """
        for event in events:
            self.positions[event.partition] = event.offset + 1
        self._sink.publish(self.source_id, events)

    async def _discover_partitions(self) -> None:
        try:
            partitions = await self._call(self._consumer.thd_partitions, METADATA_TIMEOUT_S)
        except BrokerUnavailable as e:
            self._set_state("broker unreachable", str(e))
            return
        if partitions is None:
            self._set_state("waiting for topic", "the topic no longer exists")
            return
        if self.state != "running":
            self._set_state("running")
        if not self.kafka.partition_discovery_enabled:
            return
        new = [p for p in partitions if p not in self.partitions]
        if not new:
            return
        self.log.info(
            "{source_id} found new partitions {partitions}", source_id=self.source_id, partitions=new
        )
        await self._call(self._consumer.thd_assign, {partition: BEGINNING for partition in new})
        self.partitions = sorted(self.partitions + new)
