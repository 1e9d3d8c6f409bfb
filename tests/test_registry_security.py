"""
Tests for the parts of L{kiwi.registry} that authorization and hardening
use: the per-connection subscription limit, listing a connection's
subscriptions and ending one from the server side.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from kiwi import protocol
from kiwi.config import SubscriberConfig
from kiwi.errors import ClientError
from kiwi.events import CounterEvent
from kiwi.registry import Registry
from tests.test_registry import FakeSource, FakeSubscriber


class RegistrySecurityTests(SynchronousTestCase):
    """
    Limits and server-side ends of subscriptions.
    """

    def setUp(self) -> None:
        self.registry = Registry(SubscriberConfig(max_subscriptions=2))
        for source_id in ("a", "b", "c"):
            self.registry.add_source(FakeSource(source_id))
        self.alice = FakeSubscriber("c1")

    def test_subscribe_limit(self) -> None:
        """
        A connection cannot hold more than C{max_subscriptions}; after an
        unsubscribe it can subscribe again.
        """
        self.registry.subscribe(self.alice, "a", "push")
        self.registry.subscribe(self.alice, "b", "pull")
        error = self.assertRaises(ClientError, self.registry.subscribe, self.alice, "c", "push")
        self.assertEqual(str(error), "too many subscriptions (at most 2 per connection)")
        self.registry.unsubscribe(self.alice, "a")
        self.registry.subscribe(self.alice, "c", "push")
        self.registry.subscribe(FakeSubscriber("c2"), "c", "push")

    def test_subscriptionsOf(self) -> None:
        """
        L{Registry.subscriptions_of} lists a connection's sources.
        """
        self.assertEqual(self.registry.subscriptions_of(self.alice), [])
        self.registry.subscribe(self.alice, "a", "push")
        self.registry.subscribe(self.alice, "c", "push")
        self.assertEqual(self.registry.subscriptions_of(self.alice), ["a", "c"])

    def test_endSubscription(self) -> None:
        """
        Ending a subscription sends C{SUBSCRIPTION_CLOSED} and stops its
        events; ending one that does not exist does nothing.
        """
        self.registry.subscribe(self.alice, "a", "push")
        self.registry.end_subscription(self.alice, "a", "not authorized by the new token")
        self.registry.end_subscription(self.alice, "a", "again")
        self.registry.publish("a", [CounterEvent("a", 1)])
        self.assertEqual(self.alice.payloads, [protocol.subscription_closed("a", "not authorized by the new token")])
        self.assertEqual(self.registry.subscriber_count("a"), 0)
        self.registry.subscribe(self.alice, "a", "push")
