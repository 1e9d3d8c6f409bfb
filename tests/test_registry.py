"""
Tests for L{kiwi.registry}: subscriptions, fan-out and pull mode.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kiwi import protocol
from kiwi.config import SubscriberConfig
from kiwi.errors import ClientError
from kiwi.events import CounterEvent
from kiwi.registry import Frame, FrameRun, ISubscriber, Registry
from kiwi.sources import IEventSink, ISource


@implementer(ISubscriber)
class FakeSubscriber:
    """
    A connection that records the frames it is given.
    """

    def __init__(self, conn_id: str, auth_context: bytes | None = None, plugin_addr: str | None = None) -> None:
        self.conn_id = conn_id
        self.auth_context = auth_context
        self.plugin_addr = plugin_addr
        self.frames: list[Frame] = []
        self.runs: list[FrameRun] = []

    def send_frame(self, frame: Frame) -> None:
        self.frames.append(frame)

    def send_frames(self, run: FrameRun) -> None:
        self.runs.append(run)
        self.frames.extend(run.frames)

    @property
    def payloads(self) -> list[bytes]:
        """
        The payloads received, in order.
        """
        return [frame.payload for frame in self.frames]

    def counts(self) -> list[int]:
        """
        The counts of the C{RESULT} frames received.
        """
        return [
            json.loads(p)["data"]["count"] for p in self.payloads if json.loads(p)["type"] == "RESULT"
        ]


@implementer(ISource)
class FakeSource:
    """
    A source that records how often a subscriber was added.
    """

    source_type = "counter"

    def __init__(self, source_id: str, finished: bool = False) -> None:
        self.source_id = source_id
        self.finished = finished
        self.added = 0

    def subscriber_added(self) -> None:
        self.added += 1

    def status(self) -> dict[str, Any]:
        return {"type": "counter", "state": "fake"}


def _events(source_id: str, *counts: int) -> list[CounterEvent]:
    return [CounterEvent(source_id, count) for count in counts]


class FakesTests(SynchronousTestCase):
    """
    The fakes provide the interfaces they stand in for.
    """

    def test_fakeSubscriber_verifies(self) -> None:
        """
        L{FakeSubscriber} provides L{ISubscriber}.
        """
        self.assertTrue(verifyObject(ISubscriber, FakeSubscriber("c1")))

    def test_fakeSource_verifies(self) -> None:
        """
        L{FakeSource} provides L{ISource}.
        """
        self.assertTrue(verifyObject(ISource, FakeSource("s")))

    def test_registry_isEventSink(self) -> None:
        """
        L{Registry} provides L{IEventSink}.
        """
        self.assertTrue(verifyObject(IEventSink, Registry()))


class RegistryTests(SynchronousTestCase):
    """
    Subscribing, unsubscribing and push fan-out.
    """

    def setUp(self) -> None:
        self.registry = Registry()
        self.source = FakeSource("s")
        self.registry.add_source(self.source)
        self.alice = FakeSubscriber("c1")
        self.bob = FakeSubscriber("c2")

    def test_sources_inOrder(self) -> None:
        """
        Sources are listed in the order they were added.
        """
        other = FakeSource("t")
        self.registry.add_source(other)
        self.assertEqual(self.registry.sources(), [self.source, other])

    def test_subscribe_unknownSource(self) -> None:
        """
        Subscribing to an unknown source fails with a client error.
        """
        error = self.assertRaises(ClientError, self.registry.subscribe, self.alice, "nope", "push")
        self.assertEqual(str(error), "source not found")

    def test_subscribe_callsSubscriberAdded(self) -> None:
        """
        Each subscription tells the source.
        """
        self.registry.subscribe(self.alice, "s", "push")
        self.registry.subscribe(self.bob, "s", "pull")
        self.assertEqual(self.source.added, 2)
        self.assertEqual(self.registry.subscriber_count("s"), 2)

    def test_subscribe_twice(self) -> None:
        """
        A connection subscribes to a source at most once.
        """
        self.registry.subscribe(self.alice, "s", "push")
        error = self.assertRaises(ClientError, self.registry.subscribe, self.alice, "s", "pull")
        self.assertEqual(str(error), "already subscribed to this source")
        self.assertEqual(self.source.added, 1)
        self.assertEqual(self.registry.subscriber_count("s"), 1)

    def test_subscribe_finishedSource(self) -> None:
        """
        A source that has ended refuses subscriptions.
        """
        self.registry.add_source(FakeSource("done", finished=True))
        error = self.assertRaises(ClientError, self.registry.subscribe, self.alice, "done", "push")
        self.assertEqual(str(error), "source has ended")
        self.assertEqual(self.registry.subscriber_count("done"), 0)

    def test_unsubscribe_notSubscribed(self) -> None:
        """
        Unsubscribing without a subscription fails with a client error.
        """
        error = self.assertRaises(ClientError, self.registry.unsubscribe, self.alice, "s")
        self.assertEqual(str(error), "not subscribed to this source")
        error = self.assertRaises(ClientError, self.registry.unsubscribe, self.alice, "nope")
        self.assertEqual(str(error), "not subscribed to this source")

    def test_unsubscribe_stopsDelivery(self) -> None:
        """
        After unsubscribing, a connection receives no more events and may
        subscribe again.
        """
        self.registry.subscribe(self.alice, "s", "push")
        self.registry.unsubscribe(self.alice, "s")
        self.assertEqual(self.registry.subscriber_count("s"), 0)
        self.registry.publish("s", _events("s", 1))
        self.assertEqual(self.alice.frames, [])
        self.registry.subscribe(self.alice, "s", "push")
        self.registry.publish("s", _events("s", 2))
        self.assertEqual(self.alice.counts(), [2])

    def test_unsubscribe_twice(self) -> None:
        """
        A second unsubscribe fails.
        """
        self.registry.subscribe(self.alice, "s", "push")
        self.registry.unsubscribe(self.alice, "s")
        self.assertRaises(ClientError, self.registry.unsubscribe, self.alice, "s")

    def test_publish_noSubscribers(self) -> None:
        """
        Publishing to a source nobody subscribes to, or an unknown one, does
        nothing.
        """
        self.registry.publish("s", _events("s", 1))
        self.registry.publish("unknown", _events("unknown", 1))

    def test_publish_fanOutSharesFrames(self) -> None:
        """
        Push fan-out hands the same L{Frame} object per event to every
        subscriber, in order.
        """
        carol = FakeSubscriber("c3")
        for subscriber in (self.alice, self.bob, carol):
            self.registry.subscribe(subscriber, "s", "push")
        self.registry.publish("s", _events("s", 1, 2, 3))
        self.assertEqual(self.alice.counts(), [1, 2, 3])
        self.assertEqual(self.alice.payloads[0], protocol.encode_result(CounterEvent("s", 1)))
        for other in (self.bob, carol):
            self.assertEqual(len(other.frames), 3)
            for mine, theirs in zip(self.alice.frames, other.frames):
                self.assertIs(mine, theirs)
        self.assertEqual(len({id(f) for f in self.alice.frames}), 3)

    def test_publish_pushGetsOneRun(self) -> None:
        """
        Each push subscriber gets a whole published batch in one call, the
        same L{FrameRun} for all, and every event counts as delivered once
        per subscriber.
        """
        for subscriber in (self.alice, self.bob):
            self.registry.subscribe(subscriber, "s", "push")
        self.registry.publish("s", _events("s", 1, 2, 3))
        self.assertEqual(len(self.alice.runs), 1)
        self.assertEqual(len(self.bob.runs), 1)
        self.assertIs(self.alice.runs[0], self.bob.runs[0])
        self.assertEqual(self.alice.counts(), [1, 2, 3])
        self.assertEqual(self.registry.events_out["s"], 6)
        self.assertEqual(self.registry.events_in["s"], 3)

    def test_publish_onlyThatSource(self) -> None:
        """
        Subscribers get only the events of the sources they subscribe to.
        """
        self.registry.add_source(FakeSource("t"))
        self.registry.subscribe(self.alice, "s", "push")
        self.registry.subscribe(self.bob, "t", "push")
        self.registry.publish("t", _events("t", 9))
        self.assertEqual(self.alice.frames, [])
        self.assertEqual(self.bob.counts(), [9])

    def test_request_notSubscribed(self) -> None:
        """
        C{REQUEST} without a subscription fails.
        """
        error = self.assertRaises(ClientError, self.registry.request, self.alice, "s", 1)
        self.assertEqual(str(error), "not subscribed to this source")

    def test_request_pushMode(self) -> None:
        """
        C{REQUEST} applies to pull subscriptions only.
        """
        self.registry.subscribe(self.alice, "s", "push")
        error = self.assertRaises(ClientError, self.registry.request, self.alice, "s", 1)
        self.assertEqual(str(error), "subscription is in push mode; REQUEST applies to pull mode only")

    def test_disconnect_forgetsSubscriptions(self) -> None:
        """
        A connection that goes away loses all its subscriptions; others
        keep theirs.
        """
        self.registry.add_source(FakeSource("t"))
        self.registry.subscribe(self.alice, "s", "push")
        self.registry.subscribe(self.alice, "t", "pull")
        self.registry.subscribe(self.bob, "s", "push")
        self.registry.disconnect(self.alice)
        self.assertEqual(self.registry.subscriber_count("s"), 1)
        self.assertEqual(self.registry.subscriber_count("t"), 0)
        self.registry.publish("s", _events("s", 1))
        self.assertEqual(self.alice.frames, [])
        self.assertEqual(self.bob.counts(), [1])
        self.assertRaises(ClientError, self.registry.unsubscribe, self.alice, "s")

    def test_disconnect_unknown(self) -> None:
        """
        Disconnecting a connection with no subscriptions is harmless.
        """
        self.registry.disconnect(self.alice)
        self.registry.disconnect(self.alice)

    def test_closeSource_notifiesAndForgets(self) -> None:
        """
        Closing a source sends one shared C{SUBSCRIPTION_CLOSED} notice to
        each subscriber and forgets their subscriptions.
        """
        self.registry.subscribe(self.alice, "s", "push")
        self.registry.subscribe(self.bob, "s", "pull")
        self.registry.close_source("s", "source ended")
        expected = protocol.subscription_closed("s", "source ended")
        self.assertEqual(self.alice.payloads, [expected])
        self.assertEqual(self.bob.payloads, [expected])
        self.assertIs(self.alice.frames[0], self.bob.frames[0])
        self.assertEqual(self.registry.subscriber_count("s"), 0)
        self.registry.publish("s", _events("s", 1))
        self.assertEqual(len(self.alice.frames), 1)
        self.assertRaises(ClientError, self.registry.unsubscribe, self.alice, "s")
        self.assertRaises(ClientError, self.registry.request, self.bob, "s", 1)

    def test_closeSource_allowsResubscribe(self) -> None:
        """
        A source that was closed but not finished accepts new
        subscriptions.
        """
        self.registry.subscribe(self.alice, "s", "push")
        self.registry.close_source("s", "bye")
        self.registry.subscribe(self.alice, "s", "push")
        self.assertEqual(self.registry.subscriber_count("s"), 1)

    def test_closeSource_noSubscribers(self) -> None:
        """
        Closing a source nobody subscribes to sends nothing.
        """
        self.registry.close_source("s", "bye")
        self.registry.close_source("unknown", "bye")

    def test_removeSource_closesAndForgets(self) -> None:
        """
        Removing a source closes its subscriptions and makes it unknown.
        """
        self.registry.subscribe(self.alice, "s", "push")
        self.registry.remove_source("s", "source removed")
        self.assertEqual(self.alice.payloads, [protocol.subscription_closed("s", "source removed")])
        self.assertEqual(self.registry.sources(), [])
        error = self.assertRaises(ClientError, self.registry.subscribe, self.alice, "s", "push")
        self.assertEqual(str(error), "source not found")


class RegistryPullTests(SynchronousTestCase):
    """
    Pull mode through the registry.
    """

    def setUp(self) -> None:
        self.registry = Registry(SubscriberConfig(buffer_capacity=2, lag_notice_threshold=2))
        self.registry.add_source(FakeSource("s"))
        self.alice = FakeSubscriber("c1")
        self.bob = FakeSubscriber("c2")
        self.registry.subscribe(self.alice, "s", "pull")

    def test_pull_nothingWithoutCredit(self) -> None:
        """
        A pull subscriber receives nothing before it requests.
        """
        self.registry.publish("s", _events("s", 1))
        self.assertEqual(self.alice.frames, [])

    def test_pull_creditsSpent(self) -> None:
        """
        Requested events are delivered as they arrive, up to the credit;
        the request returns the credit left.
        """
        self.assertEqual(self.registry.request(self.alice, "s", 2), 2)
        self.registry.publish("s", _events("s", 1))
        self.assertEqual(self.alice.counts(), [1])
        self.assertEqual(self.registry.request(self.alice, "s", 1), 2)
        self.registry.publish("s", _events("s", 2, 3, 4))
        self.assertEqual(self.alice.counts(), [1, 2, 3])

    def test_pull_bufferDeliveredOnRequest(self) -> None:
        """
        Buffered events are delivered by the request itself, oldest first,
        the newest kept when the buffer overflowed.
        """
        self.registry.publish("s", _events("s", 1, 2, 3))
        self.assertEqual(self.alice.frames, [])
        self.assertEqual(self.registry.request(self.alice, "s", 5), 3)
        self.assertEqual(self.alice.counts(), [2, 3])

    def test_pull_lagNotice(self) -> None:
        """
        Dropping as many events as the threshold sends a C{LAG} notice, and
        so does each further multiple of it.
        """
        self.registry.publish("s", _events("s", 1, 2, 3, 4, 5, 6))
        self.assertEqual(
            self.alice.payloads,
            [protocol.lag_notice("s", 2), protocol.lag_notice("s", 4)],
        )

    def test_pull_mixedWithPush(self) -> None:
        """
        Push subscribers get every event while pull subscribers wait for
        credit; both receive the same frame objects.
        """
        self.registry.subscribe(self.bob, "s", "push")
        self.registry.request(self.alice, "s", 1)
        self.registry.publish("s", _events("s", 1, 2))
        self.assertEqual(self.bob.counts(), [1, 2])
        self.assertEqual(self.alice.counts(), [1])
        self.assertIs(self.alice.frames[0], self.bob.frames[0])
        self.registry.request(self.alice, "s", 1)
        self.assertEqual(self.alice.counts(), [1, 2])
        self.assertIs(self.alice.frames[1], self.bob.frames[1])

    def test_pull_neverGetsRuns(self) -> None:
        """
        A pull subscriber is offered events one by one (its credits decide
        each), even beside push subscribers that get the batch as a run.
        """
        self.registry.subscribe(self.bob, "s", "push")
        self.registry.request(self.alice, "s", 5)
        self.registry.publish("s", _events("s", 1, 2))
        self.assertEqual(self.alice.runs, [])
        self.assertEqual(self.alice.counts(), [1, 2])
        self.assertEqual(len(self.bob.runs), 1)
        self.assertEqual(self.registry.events_out["s"], 4)

    def test_pull_independentSubscriptions(self) -> None:
        """
        Each pull subscription has its own credit.
        """
        self.registry.subscribe(self.bob, "s", "pull")
        self.registry.request(self.bob, "s", 3)
        self.registry.publish("s", _events("s", 1, 2))
        self.assertEqual(self.bob.counts(), [1, 2])
        self.assertEqual(self.alice.frames, [])

    def test_pull_defaultConfigDrops(self) -> None:
        """
        With the default subscriber configuration there is no buffer: events
        without credit are gone.
        """
        registry = Registry()
        registry.add_source(FakeSource("s"))
        registry.subscribe(self.bob, "s", "pull")
        registry.publish("s", _events("s", 1, 2))
        self.assertEqual(registry.request(self.bob, "s", 1), 1)
        self.assertEqual(self.bob.frames, [])
        registry.publish("s", _events("s", 3))
        self.assertEqual(self.bob.counts(), [3])
