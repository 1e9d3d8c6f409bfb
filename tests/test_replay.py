"""
Tests for L{kiwi.replay.Replay}: a fake replay consumer, a fake
subscription, an inline thread runner and a L{Clock}. No broker, no
threads, no real time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kiwi.events import KafkaEvent
from kiwi.protocol import StartFrom
from kiwi.replay import IReplayReader, IReplayTarget, MAX_ATTEMPTS, RETRY_DELAY_S, Replay
from kiwi.sources.kafka import BrokerUnavailable


def record(partition: int, offset: int) -> KafkaEvent:
    return KafkaEvent("orders", "orders-topic", partition, offset, None, f"{partition}:{offset}".encode(), offset)


@attrs.frozen
class FakeBatch:
    events: list[KafkaEvent]


@implementer(IReplayReader)
class FakeReader:
    """
    A topic log in memory. C{thd_consume} answers at once while it has
    records; otherwise it returns a L{Deferred} the test fires with
    L{idle}.
    """

    def __init__(self, log: Mapping[int, int], low: Mapping[int, int] | None = None) -> None:
        self.log = {p: [record(p, o) for o in range(low.get(p, 0) if low else 0, end)] for p, end in log.items()}
        self.low = dict(low or {})
        self.times: dict[int, int] = {}
        self.position: dict[int, int] = {}
        self.calls: list[str] = []
        self.waiting: Deferred[FakeBatch] | None = None
        self.broker_error = 0
        self.consumed: list[int] = []

    def thd_open(self) -> None:
        self.calls.append("open")

    def thd_partitions(self, timeout: float) -> list[int] | None:
        self.calls.append("partitions")
        if self.broker_error:
            self.broker_error -= 1
            raise BrokerUnavailable("down")
        return sorted(self.log)

    def thd_watermarks(self, partitions: list[int], timeout: float) -> dict[int, tuple[int, int]]:
        return {p: (self.low.get(p, 0), self.low.get(p, 0) + len(self.log[p])) for p in partitions}

    def thd_offsets_for_times(self, timestamp: int, partitions: list[int], timeout: float) -> dict[int, int]:
        return {p: self.times.get(p, -1) for p in partitions}

    def thd_assign(self, offsets: Mapping[int, int]) -> None:
        self.calls.append(f"assign {dict(offsets)}")
        self.position.update(offsets)

    def thd_consume(self, max_records: int, timeout: float) -> Any:
        self.consumed.append(max_records)
        events = []
        for partition in sorted(self.position):
            for event in self.log[partition]:
                if len(events) < max_records and event.offset >= self.position[partition]:
                    events.append(event)
                    self.position[partition] = event.offset + 1
        if events:
            return FakeBatch(events)
        self.waiting = Deferred()
        return self.waiting

    def idle(self) -> None:
        """
        Answer the waiting poll with nothing.
        """
        waiting, self.waiting = self.waiting, None
        assert waiting is not None
        waiting.callback(FakeBatch([]))

    def thd_positions(self, partitions: list[int]) -> dict[int, int]:
        return {p: self.position.get(p, -1001) for p in partitions}

    def thd_close(self) -> None:
        self.calls.append("close")


@implementer(IReplayTarget)
class FakeTarget:
    """
    A subscription: push mode when C{credits} is C{None}.
    """

    def __init__(self, credits: int | None = None) -> None:
        self.credits = credits
        self.emitted: list[tuple[int, int]] = []
        self.live: list[Any] = []
        self.lags: list[int] = []
        self.is_busy = False

    def emit(self, event: KafkaEvent) -> None:
        if self.credits is not None:
            assert self.credits > 0
            self.credits -= 1
        self.emitted.append((event.partition, event.offset))

    def pass_live(self, frame: Any) -> None:
        self.live.append(frame)

    def credit(self) -> int | None:
        return self.credits

    def busy(self) -> bool:
        return self.is_busy

    def lag(self, count: int) -> None:
        self.lags.append(count)


def _inline(f: Any, *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


class ReplayTests(SynchronousTestCase):
    """
    Reading history, then switching to the live stream per partition.
    """

    def make(
        self,
        start: StartFrom,
        reader: FakeReader,
        positions: dict[int, int],
        target: FakeTarget | None = None,
        max_events: int = 1000,
    ) -> Replay:
        self.clock = Clock()
        self.target = target or FakeTarget()
        self.finished: list[Replay] = []
        self.positions = positions
        return Replay(
            "orders", start, reader, _inline, self.clock, lambda: self.positions, self.target, max_events,
            self.finished.append,
        )

    def live(self, replay: Replay, partition: int, offset: int) -> bool:
        """
        The live stream publishes a record: whether the subscription gets it
        directly.
        """
        self.positions[partition] = offset + 1
        return replay.admit(record(partition, offset), ("frame", partition, offset))

    def test_fakes_verify(self) -> None:
        """
        The fakes provide the interfaces a replay uses.
        """
        self.assertTrue(verifyObject(IReplayReader, FakeReader({0: 1})))
        self.assertTrue(verifyObject(IReplayTarget, FakeTarget()))

    def test_earliest_everythingUpToTheLiveStream(self) -> None:
        """
        From earliest, every retained record below the live stream's
        position is delivered, in order per partition; then the replay
        closes its consumer and is finished.
        """
        reader = FakeReader({0: 5, 1: 3}, low={0: 1})
        replay = self.make(StartFrom("earliest"), reader, {0: 4, 1: 3})
        replay.begin()
        self.assertEqual(self.target.emitted, [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)])
        self.assertEqual(replay.state, "live")
        self.assertEqual(reader.calls[-1], "close")
        self.assertEqual(self.finished, [replay])
        self.assertIn("assign {0: 1, 1: 0}", reader.calls)

    def test_switchOver_heldLiveEventsNoGapNoDuplicate(self) -> None:
        """
        Live events published while the replay starts are held back; the
        replay stops below the first of them and then releases them, so the
        subscriber sees each offset once. Later live events pass; one it
        already has does not.
        """
        reader = FakeReader({0: 6})
        replay = self.make(StartFrom("earliest"), reader, {0: 3})
        self.assertFalse(self.live(replay, 0, 3))
        self.assertFalse(self.live(replay, 0, 4))
        replay.begin()
        self.assertEqual(self.target.emitted, [(0, 0), (0, 1), (0, 2)])
        self.assertEqual(self.target.live, [("frame", 0, 3), ("frame", 0, 4)])
        self.assertFalse(replay.admit(record(0, 4), "again"))
        self.assertTrue(self.live(replay, 0, 5))

    def test_unknownLivePosition_dedupedAfterSwitch(self) -> None:
        """
        When the live stream has no position for a partition yet, the
        replay reads to the end it found; live events it already delivered
        are dropped afterwards.
        """
        reader = FakeReader({0: 4})
        replay = self.make(StartFrom("earliest"), reader, {})
        replay.begin()
        self.assertEqual(self.target.emitted, [(0, 0), (0, 1), (0, 2), (0, 3)])
        self.assertFalse(replay.admit(record(0, 2), "old"))
        self.assertTrue(replay.admit(record(0, 4), "new"))
        self.assertTrue(replay.admit(record(0, 2), "floor passed: no more filtering"))

    def test_offsets_onlyListedPartitions(self) -> None:
        """
        From offsets, only the listed partitions replay; live events of the
        others pass at once, even before the replay has begun.
        """
        reader = FakeReader({0: 5, 1: 5, 2: 5})
        replay = self.make(StartFrom("offsets", offsets=((0, 3), (2, 9))), reader, {0: 5, 1: 5, 2: 5})
        self.assertTrue(self.live(replay, 1, 5))
        self.assertFalse(self.live(replay, 0, 5))
        replay.begin()
        self.assertEqual(self.target.emitted, [(0, 3), (0, 4)])
        self.assertEqual(self.target.live, [("frame", 0, 5)])
        self.assertIn("assign {0: 3}", reader.calls)

    def test_timestamp_noneFoundStartsAtEnd(self) -> None:
        """
        From a timestamp, each partition starts at the offset found for it;
        one with no record that late replays nothing.
        """
        reader = FakeReader({0: 5, 1: 5})
        reader.times = {0: 2}
        replay = self.make(StartFrom("timestamp", timestamp=99), reader, {0: 5, 1: 5})
        replay.begin()
        self.assertEqual(self.target.emitted, [(0, 2), (0, 3), (0, 4)])

    def test_pull_waitsForCredit(self) -> None:
        """
        In pull mode the replay asks the consumer for no more than the
        credit, waits when it is spent, and goes on when credit comes.
        """
        reader = FakeReader({0: 6})
        replay = self.make(StartFrom("earliest"), reader, {0: 6}, FakeTarget(credits=2))
        replay.begin()
        self.assertEqual(self.target.emitted, [(0, 0), (0, 1)])
        self.assertEqual(reader.consumed, [2])
        self.assertEqual(replay.state, "replaying")
        self.target.credits = 10
        replay.wake()
        self.assertEqual(len(self.target.emitted), 6)
        self.assertEqual(replay.state, "live")

    def test_busy_pacesPushMode(self) -> None:
        """
        While the connection has too much to write, the replay waits and
        checks again a little later.
        """
        reader = FakeReader({0: 3})
        target = FakeTarget()
        target.is_busy = True
        replay = self.make(StartFrom("earliest"), reader, {0: 3}, target)
        replay.begin()
        self.assertEqual(target.emitted, [])
        self.clock.advance(1)
        self.assertEqual(target.emitted, [])
        target.is_busy = False
        self.clock.advance(1)
        self.assertEqual(len(target.emitted), 3)

    def test_maxEvents_lagForTheRest(self) -> None:
        """
        After max_events past events the replay switches every partition to
        the live stream and reports the events skipped as one LAG.
        """
        reader = FakeReader({0: 10, 1: 4})
        replay = self.make(StartFrom("earliest"), reader, {0: 10, 1: 4}, max_events=3)
        self.assertFalse(self.live(replay, 1, 4))
        replay.begin()
        self.assertEqual(self.target.emitted, [(0, 0), (0, 1), (0, 2)])
        self.assertEqual(self.target.lags, [7 + 4])
        self.assertEqual(self.target.live, [("frame", 1, 4)])
        self.assertEqual(replay.state, "live")
        self.assertTrue(self.live(replay, 0, 10))

    def test_readerFails_lagForTheRest(self) -> None:
        """
        A replay whose reading fails switches to the live stream and tells
        the subscriber, with one LAG, how much history it did not get.
        """
        reader = FakeReader({0: 10})

        def fail(max_records: int, timeout: float) -> Any:
            raise RuntimeError("reader broke")

        reader.thd_consume = fail  # type: ignore[method-assign]
        replay = self.make(StartFrom("earliest"), reader, {0: 10})
        replay.begin()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.target.emitted, [])
        self.assertEqual(self.target.lags, [10])
        self.assertEqual(replay.state, "live")

    def test_heldOverflow_givesUp(self) -> None:
        """
        When more live events arrive than max_events while the replay
        waits (here: for credit), it gives up on the rest of the history.
        """
        reader = FakeReader({0: 5})
        replay = self.make(StartFrom("earliest"), reader, {0: 5}, FakeTarget(credits=1), max_events=2)
        replay.begin()
        for offset in (5, 6, 7):
            self.assertFalse(self.live(replay, 0, offset))
        self.assertEqual(replay.state, "live")
        self.assertEqual(self.target.lags, [4])
        self.assertEqual(self.target.live, [("frame", 0, 5), ("frame", 0, 6), ("frame", 0, 7)])

    def test_heldOverflow_boundedBeforeBegin(self) -> None:
        """
        A replay that has not begun yet (waiting its turn) holds at most
        about max_events live events; when it begins it skips to the live
        stream, counting what it let go as skipped.
        """
        reader = FakeReader({0: 5})
        replay = self.make(StartFrom("earliest"), reader, {0: 5}, max_events=3)
        for offset in range(5, 15):
            self.assertFalse(self.live(replay, 0, offset))
        self.assertLessEqual(len(replay._held[0]), 4)
        replay.begin()
        self.assertEqual(replay.state, "live")
        self.assertEqual(self.target.emitted, [])
        # History 0..4 and live 5..10 skipped; live 11..14 sent.
        self.assertEqual(self.target.lags, [11])
        self.assertEqual(self.target.live, [("frame", 0, offset) for offset in range(11, 15)])

    def test_positionPastGap_switches(self) -> None:
        """
        Offsets that hold no record (compaction, transaction markers) do not
        stall the replay: the consumer's position counts.
        """
        reader = FakeReader({0: 3})
        replay = self.make(StartFrom("earliest"), reader, {0: 5})
        replay.begin()
        self.assertEqual(replay.state, "replaying")
        reader.position[0] = 5
        reader.idle()
        self.assertEqual(replay.state, "live")
        self.assertEqual(len(self.target.emitted), 3)

    def test_cancel_closesTheConsumer(self) -> None:
        """
        Cancelling a replay that waits stops it: nothing more is delivered
        and the consumer is closed.
        """
        reader = FakeReader({0: 3})
        replay = self.make(StartFrom("earliest"), reader, {0: 5})
        replay.begin()
        done = replay.cancel()
        self.assertNoResult(done)
        reader.idle()
        self.successResultOf(done)
        self.assertEqual(replay.state, "cancelled")
        self.assertEqual(reader.calls[-1], "close")
        self.assertEqual(self.finished, [replay])

    def test_cancel_beforeBegin(self) -> None:
        """
        A replay cancelled before it began never opens a consumer.
        """
        reader = FakeReader({0: 3})
        replay = self.make(StartFrom("earliest"), reader, {0: 5})
        self.successResultOf(replay.cancel())
        replay.begin()
        self.assertEqual(reader.calls, [])
        self.assertEqual(self.finished, [replay])

    def test_brokerDown_retriesThenGivesUp(self) -> None:
        """
        An unreachable cluster is asked again a few times; then the replay
        gives up, logs an error, and the subscription follows the live
        stream.
        """
        reader = FakeReader({0: 3})
        reader.broker_error = MAX_ATTEMPTS
        replay = self.make(StartFrom("earliest"), reader, {0: 3})
        with capturedLogs() as events:
            replay.begin()
            for _ in range(MAX_ATTEMPTS):
                self.clock.advance(RETRY_DELAY_S)
        self.assertEqual(replay.state, "live")
        self.assertEqual(self.target.emitted, [])
        self.assertTrue(any("replay gave up" in str(e.get("log_format")) for e in events))
        self.assertEqual(reader.calls[-1], "close")

    def test_brokerDown_recovers(self) -> None:
        """
        A cluster that answers on the second try is replayed as usual.
        """
        reader = FakeReader({0: 2})
        reader.broker_error = 1
        replay = self.make(StartFrom("earliest"), reader, {0: 2})
        replay.begin()
        self.assertEqual(self.target.emitted, [])
        self.clock.advance(RETRY_DELAY_S)
        self.assertEqual(self.target.emitted, [(0, 0), (0, 1)])


class KafkaSourceReplayTests(SynchronousTestCase):
    """
    L{kiwi.sources.kafka.KafkaSource} as a replay source: live positions,
    replays that begin after the reply, and stopping.
    """

    def setUp(self) -> None:
        from kiwi.config import KafkaConfig, KafkaSourceConfig
        from kiwi.sources.kafka import KafkaSource
        from tests.test_kafka_source import FakeConsumer, FakeSink

        self.clock = Clock()
        self.consumer = FakeConsumer()
        self.reader = FakeReader({0: 12, 1: 22})
        self.source = KafkaSource(
            KafkaSourceConfig(id="orders", topic="orders-topic"),
            KafkaConfig(bootstrap_servers=("k:9092",)),
            FakeSink(),
            self.clock,
            consumer=self.consumer,
            run_in_thread=_inline,
            replay_reader=lambda: self.reader,
            replay_run_in_thread=_inline,
            max_concurrent_replays=1,
        )

    def test_openReplay_waitsItsTurn(self) -> None:
        """
        Beyond max_concurrent_replays, a replay waits (holding live events
        back) until a running one is over; a cancelled waiting one never
        opens a consumer.
        """
        self.source.startService()
        first = self.source.open_replay(StartFrom("earliest"), FakeTarget(credits=0), 100)
        second = self.source.open_replay(StartFrom("earliest"), FakeTarget(), 100)
        third = self.source.open_replay(StartFrom("earliest"), FakeTarget(), 100)
        self.clock.advance(0)
        self.assertEqual((first.state, second.state, third.state), ("replaying", "starting", "starting"))
        self.assertFalse(second.admit(record(0, 10), "held"))
        self.successResultOf(second.cancel())
        opened = self.reader.calls.count("open")
        self.successResultOf(first.cancel())
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(second.state, "cancelled")
        self.assertEqual(third.state, "live")
        self.assertEqual(self.reader.calls.count("open"), opened + 1)

    def test_positions_followAssignAndPublish(self) -> None:
        """
        The live positions start at the end offsets assigned and follow
        every record published.
        """
        self.source.startService()
        self.assertEqual(self.source.positions, {0: 10, 1: 20})
        self.consumer.deliver(record(0, 10), record(1, 20), record(0, 11))
        self.assertEqual(self.source.positions, {0: 12, 1: 21})
        d = self.source.stopService()
        self.consumer.deliver()
        self.successResultOf(d)

    def test_openReplay_beginsNextTurnStopCancels(self) -> None:
        """
        A replay begins in the next reactor turn; stopping the source
        cancels it and waits for its consumer to close.
        """
        self.source.startService()
        target = FakeTarget(credits=0)
        replay = self.source.open_replay(StartFrom("earliest"), target, 100)
        self.assertEqual(replay.state, "starting")
        self.assertEqual(self.reader.calls, [])
        self.clock.advance(0)
        self.assertEqual(replay.state, "replaying")
        d = self.source.stopService()
        self.consumer.deliver()
        self.successResultOf(d)
        self.assertEqual(replay.state, "cancelled")
        self.assertEqual(self.reader.calls[-1], "close")
