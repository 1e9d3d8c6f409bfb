"""
Tests for L{kiwi.flow.PullFlow}: credits, the bounded buffer and lag notices.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from twisted.trial.unittest import SynchronousTestCase

from kiwi.flow import PullFlow


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
