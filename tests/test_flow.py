"""
Tests for L{kiwi.flow}: L{PullFlow} (credits, the bounded buffer and lag
notices) and L{Outbox} (one connection's queue within a byte budget).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from twisted.trial.unittest import SynchronousTestCase

from kiwi.flow import Outbox, PullFlow


class Recorder:
    """
    Collects what a L{PullFlow} delivers and the lag notices it raises.
    """

    def __init__(self) -> None:
        self.delivered: list[int] = []
        self.lags: list[int] = []

    def deliver(self, event: int) -> None:
        self.delivered.append(event)

    def notify_lag(self, count: int) -> None:
        self.lags.append(count)


class PullFlowTests(SynchronousTestCase):
    """
    The rules of pull mode, one at a time.
    """

    def setUp(self) -> None:
        self.out = Recorder()

    def offer(self, flow: PullFlow[int], *events: int) -> None:
        """
        Offer C{events} in order.
        """
        for event in events:
            flow.offer(event, self.out.deliver, self.out.notify_lag)

    def test_flow_initialState(self) -> None:
        """
        A new subscription has no credit, nothing missed, nothing buffered.
        """
        flow: PullFlow[int] = PullFlow(3, 2)
        self.assertEqual((flow.credits, flow.missed, flow.buffered), (0, 0, 0))

    def test_offer_spendsCredit(self) -> None:
        """
        An event is delivered while there is credit, spending one each.
        """
        flow: PullFlow[int] = PullFlow(None, None)
        self.assertEqual(flow.request(2, self.out.deliver), 2)
        self.offer(flow, 1, 2, 3)
        self.assertEqual(self.out.delivered, [1, 2])
        self.assertEqual(flow.credits, 0)
        self.assertEqual(flow.missed, 1)

    def test_request_additive(self) -> None:
        """
        Requests add up.
        """
        flow: PullFlow[int] = PullFlow(None, None)
        self.assertEqual(flow.request(2, self.out.deliver), 2)
        self.assertEqual(flow.request(3, self.out.deliver), 5)
        self.offer(flow, *range(10))
        self.assertEqual(self.out.delivered, [0, 1, 2, 3, 4])
        self.assertEqual(flow.request(1, self.out.deliver), 1)

    def test_offer_noBufferDrops(self) -> None:
        """
        Without a buffer, events without credit are dropped and counted as
        missed; a later request does not bring them back.
        """
        for capacity in (None, 0):
            out = Recorder()
            flow: PullFlow[int] = PullFlow(capacity, None)
            for event in (1, 2, 3):
                flow.offer(event, out.deliver, out.notify_lag)
            self.assertEqual((flow.buffered, flow.missed), (0, 3))
            self.assertEqual(flow.request(2, out.deliver), 2)
            self.assertEqual(out.delivered, [])
            flow.offer(4, out.deliver, out.notify_lag)
            self.assertEqual(out.delivered, [4])
            self.assertEqual(flow.missed, 0)

    def test_offer_buffers(self) -> None:
        """
        With a buffer, events without credit wait there and are not missed.
        """
        flow: PullFlow[int] = PullFlow(3, None)
        self.offer(flow, 1, 2)
        self.assertEqual(self.out.delivered, [])
        self.assertEqual((flow.buffered, flow.missed), (2, 0))

    def test_request_deliversBufferImmediately(self) -> None:
        """
        A request delivers buffered events at once, oldest first, up to the
        credit; the rest stay buffered.
        """
        flow: PullFlow[int] = PullFlow(5, None)
        self.offer(flow, 1, 2, 3)
        self.assertEqual(flow.request(2, self.out.deliver), 0)
        self.assertEqual(self.out.delivered, [1, 2])
        self.assertEqual(flow.buffered, 1)
        self.assertEqual(flow.request(4, self.out.deliver), 3)
        self.assertEqual(self.out.delivered, [1, 2, 3])
        self.assertEqual(flow.buffered, 0)
        self.offer(flow, 4)
        self.assertEqual(self.out.delivered, [1, 2, 3, 4])
        self.assertEqual(flow.credits, 2)

    def test_offer_fullBufferDropsOldest(self) -> None:
        """
        A full buffer drops its oldest event to make room, counting it as
        missed.
        """
        flow: PullFlow[int] = PullFlow(2, None)
        self.offer(flow, 1, 2, 3, 4)
        self.assertEqual((flow.buffered, flow.missed), (2, 2))
        flow.request(10, self.out.deliver)
        self.assertEqual(self.out.delivered, [3, 4])
        self.assertEqual(flow.missed, 0)

    def test_lag_noticeAtThreshold(self) -> None:
        """
        One lag notice is sent when the missed count reaches the threshold,
        carrying that count.
        """
        flow: PullFlow[int] = PullFlow(None, 3)
        self.offer(flow, 1, 2)
        self.assertEqual(self.out.lags, [])
        self.offer(flow, 3)
        self.assertEqual(self.out.lags, [3])

    def test_lag_oncePerThresholdMultiple(self) -> None:
        """
        Further drops send one notice each time the missed count reaches
        another multiple of the threshold, with the running count.
        """
        flow: PullFlow[int] = PullFlow(None, 3)
        self.offer(flow, *range(10))
        self.assertEqual(self.out.lags, [3, 6, 9])
        self.assertEqual(flow.missed, 10)

    def test_lag_rearmedAfterDelivery(self) -> None:
        """
        After the subscriber receives an event, the count restarts and the
        next crossing is reported again.
        """
        flow: PullFlow[int] = PullFlow(None, 2)
        self.offer(flow, 1, 2, 3)
        flow.request(1, self.out.deliver)
        self.offer(flow, 4)
        self.assertEqual(self.out.delivered, [4])
        self.assertEqual(flow.missed, 0)
        self.offer(flow, 5)
        self.assertEqual(self.out.lags, [2])
        self.offer(flow, 6)
        self.assertEqual(self.out.lags, [2, 2])

    def test_lag_rearmedByBufferedDelivery(self) -> None:
        """
        Delivering from the buffer on request also re-arms the notice.
        """
        flow: PullFlow[int] = PullFlow(1, 1)
        self.offer(flow, 1, 2)
        self.assertEqual(self.out.lags, [1])
        flow.request(1, self.out.deliver)
        self.assertEqual(self.out.delivered, [2])
        self.offer(flow, 3, 4)
        self.assertEqual(self.out.lags, [1, 1])

    def test_lag_withBuffer(self) -> None:
        """
        Buffered events are not missed; only those dropped from a full
        buffer count towards the threshold.
        """
        flow: PullFlow[int] = PullFlow(2, 2)
        self.offer(flow, 1, 2, 3)
        self.assertEqual(self.out.lags, [])
        self.offer(flow, 4)
        self.assertEqual(self.out.lags, [2])

    def test_lag_noThreshold(self) -> None:
        """
        Without a threshold there are no notices.
        """
        flow: PullFlow[int] = PullFlow(None, None)
        self.offer(flow, *range(100))
        self.assertEqual(self.out.lags, [])
        self.assertEqual(flow.missed, 100)


class _Model:
    """
    Pull mode restated: kept events form one queue, trimmed from its old end
    to the buffer capacity; whatever falls off is missed.
    """

    def __init__(self, capacity: int, threshold: int | None) -> None:
        self.capacity = capacity
        self.threshold = threshold
        self.credits = 0
        self.kept: list[int] = []
        self.missed = 0
        self.delivered: list[int] = []
        self.lags: list[int] = []

    def _deliver(self, event: int) -> None:
        self.credits -= 1
        self.missed = 0
        self.delivered.append(event)

    def offer(self, event: int) -> None:
        if self.credits:
            self._deliver(event)
            return
        self.kept.append(event)
        while len(self.kept) > self.capacity:
            del self.kept[0]
            self.missed += 1
            if self.threshold is not None and self.missed % self.threshold == 0:
                self.lags.append(self.missed)

    def request(self, n: int) -> int:
        self.credits = min(self.credits + n, 2**53)
        while self.credits and self.kept:
            self._deliver(self.kept.pop(0))
        return self.credits


class PullFlowMachine(RuleBasedStateMachine):
    """
    Drives a L{PullFlow} and L{_Model} with the same events and requests.
    """

    @initialize(
        capacity=st.none() | st.integers(min_value=0, max_value=5),
        threshold=st.none() | st.integers(min_value=1, max_value=5),
    )
    def start(self, capacity: int | None, threshold: int | None) -> None:
        self.flow: PullFlow[int] = PullFlow(capacity, threshold)
        self.model = _Model(capacity or 0, threshold)
        self.capacity = capacity or 0
        self.out = Recorder()
        self.offered = 0
        self.requested = 0

    @rule(count=st.integers(min_value=1, max_value=8))
    def offer(self, count: int) -> None:
        for _ in range(count):
            event = self.offered
            self.offered += 1
            self.flow.offer(event, self.out.deliver, self.out.notify_lag)
            self.model.offer(event)

    @rule(n=st.integers(min_value=1, max_value=6))
    def request(self, n: int) -> None:
        self.requested += n
        remaining = self.flow.request(n, self.out.deliver)
        assert remaining == self.model.request(n)

    @invariant()
    def matches_model(self) -> None:
        if not hasattr(self, "flow"):
            return
        assert self.out.delivered == self.model.delivered, (self.out.delivered, self.model.delivered)
        assert self.out.lags == self.model.lags, (self.out.lags, self.model.lags)
        assert self.flow.credits == self.model.credits
        assert self.flow.missed == self.model.missed
        assert self.flow.buffered == len(self.model.kept)

    @invariant()
    def delivers_newest_in_order_within_credit(self) -> None:
        if not hasattr(self, "flow"):
            return
        delivered = self.out.delivered
        # In order, each at most once.
        assert delivered == sorted(set(delivered))
        # Never more than the credits.
        assert len(delivered) + self.flow.credits == self.requested
        assert len(delivered) <= self.requested
        # The buffer is bounded and holds the newest events.
        assert self.flow.buffered <= self.capacity
        if self.flow.buffered:
            assert self.flow.credits == 0
            assert self.model.kept == list(range(self.offered - self.flow.buffered, self.offered))
        # Nothing is lost silently: every event was delivered, kept, or missed.
        undelivered = self.offered - len(delivered) - self.flow.buffered
        assert undelivered >= self.flow.missed


class PullFlowModelTests(SynchronousTestCase):
    """
    L{PullFlow} agrees with a small model under arbitrary interleavings.
    """

    def test_flow_matchesModel(self) -> None:
        """
        Any interleaving of events and requests, with any buffer size and
        threshold, delivers what the model delivers: the newest events the
        rules allow, in order, never more than the credits.
        """
        run_state_machine_as_test(
            PullFlowMachine,
            settings=settings(max_examples=300, stateful_step_count=40, deadline=None, database=None),
        )


class _Writer:
    """
    Records what an L{Outbox} writes; can pause the outbox after a number
    of writes, as a transport whose buffer fills up does.
    """

    def __init__(self) -> None:
        self.written: list[Any] = []
        self.outbox: Outbox[Any] | None = None
        self.pause_after: int | None = None

    def write(self, item: Any) -> None:
        self.written.append(item)
        if self.pause_after is not None and self.outbox is not None:
            self.pause_after -= 1
            if self.pause_after <= 0:
                self.pause_after = None
                self.outbox.pause()


class OutboxTests(SynchronousTestCase):
    """
    L{Outbox}: what waits for one connection, within a byte budget.
    """

    def setUp(self) -> None:
        self.writer = _Writer()
        self.outbox: Outbox[str] = Outbox(100, self.writer.write)
        self.writer.outbox = self.outbox

    def test_put_writesAtOnceWhenIdle(self) -> None:
        """
        While not paused and with nothing waiting, an item is written at
        once and nothing is queued.
        """
        self.assertTrue(self.outbox.put("e1", 40, "s"))
        self.assertTrue(self.outbox.put("r1", 40))
        self.assertEqual(self.writer.written, ["e1", "r1"])
        self.assertEqual((self.outbox.pending, self.outbox.pending_bytes), (0, 0))
        self.assertFalse(self.outbox.over_budget)

    def test_put_queuesWhilePaused(self) -> None:
        """
        While paused, items queue and their sizes are counted.
        """
        self.outbox.pause()
        self.assertTrue(self.outbox.put("e1", 30, "s"))
        self.assertTrue(self.outbox.put("r1", 20))
        self.assertEqual(self.writer.written, [])
        self.assertEqual((self.outbox.pending, self.outbox.pending_bytes), (2, 50))

    def test_resume_writesInOrder(self) -> None:
        """
        Resuming writes what waits, oldest first, and empties the queue.
        """
        self.outbox.pause()
        for item in ("e1", "r1", "e2"):
            self.outbox.put(item, 10, None if item.startswith("r") else "s")
        self.assertEqual(self.outbox.resume(), {})
        self.assertEqual(self.writer.written, ["e1", "r1", "e2"])
        self.assertEqual((self.outbox.pending, self.outbox.pending_bytes), (0, 0))

    def test_resume_stopsWhenPausedAgain(self) -> None:
        """
        If writing pauses the outbox again, the rest keeps waiting, and
        new items queue behind it even once resumed, so order is kept.
        """
        self.outbox.pause()
        for item in ("e1", "e2", "e3"):
            self.outbox.put(item, 10, "s")
        self.writer.pause_after = 1
        self.outbox.resume()
        self.assertEqual(self.writer.written, ["e1"])
        self.assertEqual((self.outbox.pending, self.outbox.pending_bytes), (2, 20))
        self.outbox.put("e4", 10, "s")
        self.outbox.resume()
        self.assertEqual(self.writer.written, ["e1", "e2", "e3", "e4"])

    def test_put_dropsEventsOverBudget(self) -> None:
        """
        An event that would take the queue over the budget is dropped and
        counted against its source; the queue stays within the budget.
        """
        self.outbox.pause()
        results = [self.outbox.put(f"e{i}", 30, "a" if i % 2 else "b") for i in range(6)]
        self.assertEqual(results, [True, True, True, False, False, False])
        self.assertEqual(self.outbox.pending_bytes, 90)
        self.assertEqual(self.outbox.dropped, {"a": 2, "b": 1})
        self.assertTrue(self.outbox.over_budget)

    def test_put_smallEventStillFits(self) -> None:
        """
        The budget is checked per event: after a large one is dropped, a
        smaller one that fits is still queued.
        """
        self.outbox.pause()
        self.outbox.put("e1", 80, "s")
        self.assertFalse(self.outbox.put("big", 30, "s"))
        self.assertTrue(self.outbox.put("small", 20, "s"))
        self.assertEqual(self.outbox.pending_bytes, 100)

    def test_put_eventLargerThanBudget(self) -> None:
        """
        An event larger than the whole budget is written when the
        connection is idle, and dropped when anything waits.
        """
        self.assertTrue(self.outbox.put("huge", 500, "s"))
        self.outbox.pause()
        self.assertFalse(self.outbox.put("huge2", 500, "s"))
        self.assertEqual(self.writer.written, ["huge"])
        self.assertEqual(self.outbox.dropped, {"s": 1})

    def test_put_repliesNeverDropped(self) -> None:
        """
        Replies and notices queue even over the budget, in order with the
        events that were kept.
        """
        self.outbox.pause()
        self.outbox.put("e1", 60, "s")
        self.assertTrue(self.outbox.put("r1", 60))
        self.assertFalse(self.outbox.put("e2", 10, "s"))
        self.assertTrue(self.outbox.put("r2", 60))
        self.assertEqual(self.outbox.pending_bytes, 180)
        self.assertTrue(self.outbox.over_budget)
        self.assertFalse(self.outbox.overflowed)
        self.outbox.resume()
        self.assertEqual(self.writer.written, ["e1", "r1", "r2"])

    def test_put_repliesRefusedOverLimit(self) -> None:
        """
        A reply or notice that would take the queue over the hard limit
        (twice the budget by default) is refused and marks the outbox
        overflowed: the client is not reading at all.
        """
        self.outbox.pause()
        self.assertTrue(self.outbox.put("r1", 150))
        self.assertTrue(self.outbox.put("r2", 50))
        self.assertFalse(self.outbox.overflowed)
        self.assertFalse(self.outbox.put("r3", 1))
        self.assertTrue(self.outbox.overflowed)
        self.assertEqual(self.outbox.pending_bytes, 200)

    def test_put_explicitLimit(self) -> None:
        """
        The hard limit can be given.
        """
        outbox: Outbox[str] = Outbox(100, self.writer.write, limit=120)
        outbox.pause()
        self.assertTrue(outbox.put("r1", 120))
        self.assertFalse(outbox.put("r2", 1))
        self.assertTrue(outbox.overflowed)

    def test_resume_reportsDropsOnceDrained(self) -> None:
        """
        Once the queue has drained, C{resume} returns the drop counts per
        source, once; they start again from zero.
        """
        self.outbox.pause()
        for i in range(5):
            self.outbox.put(f"e{i}", 40, "a")
        self.outbox.put("x", 40, "b")
        self.assertEqual(self.outbox.resume(), {"a": 3, "b": 1})
        self.assertEqual(self.outbox.dropped, {})
        self.assertFalse(self.outbox.over_budget)
        self.assertEqual(self.outbox.resume(), {})

    def test_resume_noReportUntilDrained(self) -> None:
        """
        A resume that leaves items waiting reports nothing yet; the counts
        keep growing until the queue drains.
        """
        self.outbox.pause()
        for i in range(4):
            self.outbox.put(f"e{i}", 40, "a")
        self.writer.pause_after = 1
        self.assertEqual(self.outbox.resume(), {})
        self.assertEqual(self.outbox.pending, 1)
        self.outbox.put("e4", 40, "a")
        self.outbox.put("e5", 40, "a")
        self.assertEqual(self.outbox.dropped, {"a": 3})
        self.assertEqual(self.outbox.resume(), {"a": 3})
        self.assertEqual(self.writer.written, ["e0", "e1", "e4"])

    def test_resume_noReportWhenPausedByLastWrite(self) -> None:
        """
        If writing the last item pauses the outbox, the drops are reported
        on the next resume, when the transport has really drained.
        """
        self.outbox.pause()
        for i in range(4):
            self.outbox.put(f"e{i}", 40, "a")
        self.writer.pause_after = 2
        self.assertEqual(self.outbox.resume(), {})
        self.assertEqual(self.outbox.pending, 0)
        self.assertEqual(self.outbox.resume(), {"a": 2})

    def test_clear_releases(self) -> None:
        """
        C{clear} forgets everything that waits, and says how many events
        of each source it forgot (replies and notices are not counted).
        """
        self.outbox.pause()
        for i in range(5):
            self.outbox.put(f"e{i}", 1, "a" if i % 2 else "b")
        self.outbox.put("reply", 1)
        self.assertEqual(self.outbox.clear(), {"a": 2, "b": 3})
        self.assertEqual((self.outbox.pending, self.outbox.pending_bytes, self.outbox.dropped), (0, 0, {}))
        self.assertEqual(self.outbox.resume(), {})
        self.assertEqual(self.writer.written, [])


_outbox_ops = st.lists(
    st.one_of(
        st.tuples(st.just("event"), st.sampled_from("ab"), st.integers(min_value=1, max_value=60)),
        st.tuples(st.just("reply"), st.just(""), st.integers(min_value=1, max_value=60)),
        st.tuples(st.just("pause"), st.just(""), st.just(0)),
        st.tuples(st.just("resume"), st.just(""), st.integers(min_value=0, max_value=4)),
    ),
    max_size=60,
)


class OutboxPropertyTests(SynchronousTestCase):
    """
    L{Outbox} under arbitrary interleavings of items and transport signals.
    """

    @settings(max_examples=300, deadline=None, database=None)
    @given(ops=_outbox_ops)
    def test_outbox_boundedOrderedAccounted(self, ops: list[tuple[str, str, int]]) -> None:
        """
        Whatever happens: queued events never exceed the budget and the
        whole queue never exceeds the limit; what is written keeps the order
        it was put in; every reply is written, queued or (only over the
        limit) refused; every event is written, queued or counted as
        dropped, and drop counts are reported exactly once.
        """
        writer = _Writer()
        outbox: Outbox[tuple[str, int]] = Outbox(100, writer.write, limit=150)
        writer.outbox = outbox
        put: list[tuple[str, int]] = []
        refused: list[tuple[str, int]] = []
        events_put = {"a": 0, "b": 0}
        reported = {"a": 0, "b": 0}
        sizes: dict[tuple[str, int], int] = {}
        for index, (op, source, size) in enumerate(ops):
            if op in ("event", "reply"):
                item = (source or "r", index)
                sizes[item] = size
                kept = outbox.put(item, size, source or None)
                if op == "event":
                    events_put[source] += 1
                if kept:
                    put.append(item)
                elif op == "reply":
                    refused.append(item)
            elif op == "pause":
                outbox.pause()
            else:
                writer.pause_after = size or None
                for key, count in outbox.resume().items():
                    reported[key] += count
            queued_events = sum(sizes[i] for i in put[len(writer.written) :] if i[0] != "r")
            assert queued_events <= 100
            assert outbox.pending_bytes <= 150
            assert outbox.pending_bytes == sum(sizes[i] for i in put[len(writer.written) :])
        # Written is a prefix of what was kept, in order.
        assert writer.written == put[: len(writer.written)]
        assert len(writer.written) + outbox.pending == len(put)
        assert all(item[0] == "r" for item in refused)
        assert bool(refused) == outbox.overflowed
        for source in "ab":
            kept_events = sum(1 for item in put if item[0] == source)
            assert kept_events + reported[source] + outbox.dropped.get(source, 0) == events_put[source]
