"""
Tests for L{kiwi.sources.counter.CounterSource}, on a L{Clock}.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kiwi.config import CounterSourceConfig
from kiwi.events import CounterEvent, Event
from kiwi.sources import IEventSink, ISource
from kiwi.sources.counter import CounterSource


@implementer(IEventSink)
class FakeSink:
    """
    Records what a source publishes and closes.
    """

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[Event]]] = []
        self.closed: list[tuple[str, str]] = []

    def publish(self, source_id: str, events: Sequence[Event]) -> None:
        self.batches.append((source_id, list(events)))

    def close_source(self, source_id: str, message: str) -> None:
        self.closed.append((source_id, message))

    @property
    def values(self) -> list[int]:
        """
        The counts published, in order.
        """
        result = []
        for _, events in self.batches:
            for event in events:
                assert isinstance(event, CounterEvent)
                result.append(event.count)
        return result


class CounterSourceTests(SynchronousTestCase):
    """
    The counter counts, starts lazily or not, and ends at its maximum.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.sink = FakeSink()

    def make(self, **kwargs: object) -> CounterSource:
        """
        A counter source with id C{c}, every 1000 ms from 5 by default.
        """
        values: dict[str, object] = {"id": "c", "interval_ms": 1000, "min": 5}
        values.update(kwargs)
        source = CounterSource(CounterSourceConfig(**values), sink=self.sink, clock=self.clock)  # type: ignore[arg-type]
        self.addCleanup(self.stop, source)
        return source

    def stop(self, source: CounterSource) -> None:
        """
        Stop C{source} if it runs, and check no timer is left.
        """
        if source.running:
            source.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fakeSink_verifies(self) -> None:
        """
        The fake sink provides L{IEventSink}.
        """
        self.assertTrue(verifyObject(IEventSink, FakeSink()))

    def test_counter_providesISource(self) -> None:
        """
        A counter is an L{ISource} with its id, type and service name.
        """
        source = self.make()
        self.assertTrue(verifyObject(ISource, source))
        self.assertEqual((source.source_id, source.source_type, source.name), ("c", "counter", "source:c"))
        self.assertFalse(source.finished)

    def test_counter_notStartedBeforeStartService(self) -> None:
        """
        Nothing happens before the service starts.
        """
        self.make()
        self.clock.advance(10)
        self.assertEqual(self.sink.values, [])

    def test_counter_emitsEveryInterval(self) -> None:
        """
        A non-lazy counter emits C{min} at C{startService}, then one more
        every interval, each in its own batch under its source id.
        """
        source = self.make()
        source.startService()
        self.assertEqual(self.sink.values, [5])
        self.clock.advance(0.999)
        self.assertEqual(self.sink.values, [5])
        self.clock.advance(0.001)
        self.assertEqual(self.sink.values, [5, 6])
        self.clock.pump([1, 1, 1])
        self.assertEqual(self.sink.values, [5, 6, 7, 8, 9])
        self.assertEqual(self.sink.batches[0], ("c", [CounterEvent("c", 5)]))
        self.assertTrue(all(len(events) == 1 for _, events in self.sink.batches))

    def test_counter_shortInterval(self) -> None:
        """
        The interval is in milliseconds.
        """
        source = self.make(interval_ms=10, min=0)
        source.startService()
        self.clock.pump([0.01] * 5)
        self.assertEqual(self.sink.values, [0, 1, 2, 3, 4, 5])

    def test_counter_stopServiceStops(self) -> None:
        """
        Stopping the service stops counting and leaves no timer behind.
        """
        source = self.make()
        source.startService()
        self.clock.advance(1)
        source.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.sink.values, [5, 6])
        self.assertEqual(source.status(), {"type": "counter", "state": "stopped", "next": 7})

    def test_lazy_waitsForSubscriber(self) -> None:
        """
        A lazy counter does not count until someone subscribes.
        """
        source = self.make(lazy=True)
        source.startService()
        self.clock.advance(100)
        self.assertEqual(self.sink.values, [])
        self.assertEqual(source.status(), {"type": "counter", "state": "waiting for first subscriber", "next": 5})

    def test_lazy_startsOnNextTurn(self) -> None:
        """
        A lazy counter starts on the clock turn after its first subscriber
        is added, so the reply to the subscription goes out first.
        """
        source = self.make(lazy=True)
        source.startService()
        source.subscriber_added()
        self.assertEqual(self.sink.values, [])
        self.clock.advance(0)
        self.assertEqual(self.sink.values, [5])
        self.clock.advance(1)
        self.assertEqual(self.sink.values, [5, 6])

    def test_lazy_laterSubscribersNoRestart(self) -> None:
        """
        More subscribers neither restart nor speed up the counter.
        """
        source = self.make(lazy=True)
        source.startService()
        source.subscriber_added()
        source.subscriber_added()
        self.clock.advance(0)
        source.subscriber_added()
        self.clock.advance(0)
        self.assertEqual(self.sink.values, [5])
        self.clock.advance(1)
        self.assertEqual(self.sink.values, [5, 6])

    def test_lazy_subscriberBeforeStartIgnored(self) -> None:
        """
        A subscriber added to a stopped service does not start it.
        """
        source = self.make(lazy=True)
        source.subscriber_added()
        self.clock.advance(1)
        self.assertEqual(self.sink.values, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lazy_stopBeforePendingStart(self) -> None:
        """
        Stopping between the subscription and the next turn cancels the
        start.
        """
        source = self.make(lazy=True)
        source.startService()
        source.subscriber_added()
        source.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1)
        self.assertEqual(self.sink.values, [])

    def test_subscriberAdded_nonLazyNoEffect(self) -> None:
        """
        Subscribers do not disturb a counter that already runs.
        """
        source = self.make()
        source.startService()
        source.subscriber_added()
        self.clock.advance(0)
        self.assertEqual(self.sink.values, [5])

    def test_max_endsAndCloses(self) -> None:
        """
        After emitting C{max} the counter stops, is finished and closes its
        subscriptions through the sink.
        """
        source = self.make(min=1, max=3)
        source.startService()
        self.clock.advance(1)
        self.assertEqual(self.sink.closed, [])
        self.assertFalse(source.finished)
        self.clock.advance(1)
        self.assertEqual(self.sink.values, [1, 2, 3])
        self.assertTrue(source.finished)
        self.assertEqual(self.sink.closed, [("c", "source ended: counter reached its maximum 3")])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.sink.values, [1, 2, 3])
        self.assertEqual(source.status(), {"type": "counter", "state": "ended", "next": 4})

    def test_max_equalsMin(self) -> None:
        """
        A counter whose C{max} is its C{min} emits one value and ends at
        once.
        """
        source = self.make(min=7, max=7)
        source.startService()
        self.assertEqual(self.sink.values, [7])
        self.assertTrue(source.finished)
        self.assertEqual(len(self.sink.closed), 1)

    def test_max_lazyEnded(self) -> None:
        """
        A finished lazy counter does not start again for a new subscriber.
        """
        source = self.make(min=0, max=0, lazy=True)
        source.startService()
        source.subscriber_added()
        self.clock.advance(0)
        self.assertTrue(source.finished)
        source.subscriber_added()
        self.clock.advance(5)
        self.assertEqual(self.sink.values, [0])

    def test_max_stopAfterEnd(self) -> None:
        """
        Stopping a counter that already ended is fine.
        """
        source = self.make(min=0, max=0)
        source.startService()
        source.stopService()
        self.assertEqual(source.status()["state"], "ended")

    def test_status_values(self) -> None:
        """
        C{status} reports state and next value as the counter progresses.
        """
        source = self.make(min=10)
        self.assertEqual(source.status(), {"type": "counter", "state": "stopped", "next": 10})
        source.startService()
        self.assertEqual(source.status(), {"type": "counter", "state": "running", "next": 11})
        self.clock.pump([1, 1])
        self.assertEqual(source.status(), {"type": "counter", "state": "running", "next": 13})
