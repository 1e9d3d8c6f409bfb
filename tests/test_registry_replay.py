"""
Tests for the registry's side of replay: C{SUBSCRIBE} with C{from}, the
live stream held back and released, credits, counters and clean-up.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from kiwi.config import SubscriberConfig
from kiwi.errors import ClientError
from kiwi.protocol import StartFrom
from kiwi.registry import Registry
from kiwi.replay import IReplaySource, IReplayTarget, Replay
from kiwi.sources import ISource
from tests.test_registry import FakeSource, FakeSubscriber
from tests.test_replay import FakeReader, _inline, record


@implementer(ISource, IReplaySource)
class FakeKafkaSource:
    """
    A Kafka-like source whose replays read a L{FakeReader}.
    """

    source_type = "kafka"
    finished = False

    def __init__(self, source_id: str, reader: FakeReader, positions: dict[int, int]) -> None:
        self.source_id = source_id
        self.partitions = sorted(reader.log)
        self.reader = reader
        self.positions = positions
        self.clock = Clock()
        self.replays: list[Replay] = []

    def subscriber_added(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"type": "kafka", "state": "fake"}

    def open_replay(self, start: StartFrom, target: IReplayTarget, max_events: int) -> Replay:
        replay = Replay(self.source_id, start, self.reader, _inline, self.clock, lambda: self.positions, target, max_events)
        self.replays.append(replay)
        self.clock.callLater(0, replay.begin)
        return replay


def _results(subscriber: FakeSubscriber) -> list[tuple[int, int]]:
    found = []
    for payload in subscriber.payloads:
        message = json.loads(payload)
        if message["type"] == "RESULT":
            found.append((message["data"]["partition"], message["data"]["offset"]))
    return found


class RegistryReplayTests(SynchronousTestCase):
    """
    L{Registry.subscribe} with a start other than latest.
    """

    def setUp(self) -> None:
        self.reader = FakeReader({0: 4, 1: 2})
        self.kafka = FakeKafkaSource("k", self.reader, {0: 4, 1: 2})
        self.registry = Registry(SubscriberConfig(max_replay_events=100))
        self.registry.add_source(self.kafka)
        self.registry.add_source(FakeSource("c"))
        self.alice = FakeSubscriber("alice")

    def test_subscribe_counterRefusesFrom(self) -> None:
        """
        A counter source can only start at latest.
        """
        error = self.assertRaises(ClientError, self.registry.subscribe, self.alice, "c", "push", StartFrom("earliest"))
        self.assertEqual(str(error), "from is supported for Kafka sources only; a counter source starts at latest")
        self.registry.subscribe(self.alice, "c", "push", StartFrom())

    def test_subscribe_replayDisabled(self) -> None:
        """
        With max_replay_events 0, from is refused.
        """
        registry = Registry(SubscriberConfig(max_replay_events=0))
        registry.add_source(self.kafka)
        error = self.assertRaises(ClientError, registry.subscribe, self.alice, "k", "push", StartFrom("earliest"))
        self.assertEqual(str(error), "replay is disabled on this server (subscriber.max_replay_events is 0)")

    def test_subscribe_unknownPartition(self) -> None:
        """
        Offsets for a partition the topic does not have are refused.
        """
        error = self.assertRaises(
            ClientError, self.registry.subscribe, self.alice, "k", "push", StartFrom("offsets", offsets=((0, 1), (7, 0)))
        )
        self.assertEqual(str(error), "from.offsets names partition 7, which the topic does not have")
        self.assertEqual(self.registry.subscriber_count("k"), 0)

    def test_push_replayThenHeldLive(self) -> None:
        """
        Nothing is sent before the next reactor turn (the reply goes
        first); then the history, then the live events published since
        the subscription, each once; events_out counts them all.
        """
        self.registry.subscribe(self.alice, "k", "push", StartFrom("earliest"))
        self.registry.publish("k", [record(0, 4), record(1, 2)])
        self.assertEqual(self.alice.frames, [])
        self.kafka.clock.advance(0)
        results = _results(self.alice)
        self.assertEqual(sorted(results), [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2)])
        self.assertEqual([r for r in results if r[0] == 0], [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)])
        self.registry.publish("k", [record(0, 5)])
        self.assertEqual(_results(self.alice)[-1], (0, 5))
        self.assertEqual(self.registry.events_out["k"], 9)
        self.assertEqual(self.registry.events_in["k"], 3)

    def test_pull_requestWakesReplay(self) -> None:
        """
        In pull mode replayed events spend credit; REQUEST continues the
        replay, and REQUEST_OK's count reflects what is left.
        """
        self.registry.subscribe(self.alice, "k", "pull", StartFrom("earliest"))
        self.kafka.clock.advance(0)
        self.assertEqual(_results(self.alice), [])
        self.assertEqual(self.registry.request(self.alice, "k", 3), 3)
        self.assertEqual(_results(self.alice), [(0, 0), (0, 1), (0, 2)])
        self.registry.request(self.alice, "k", 10)
        self.assertEqual(len(_results(self.alice)), 6)
        self.assertEqual(self.kafka.replays[0].state, "live")

    def test_unsubscribe_cancelsReplay(self) -> None:
        """
        Unsubscribing (or disconnecting) cancels a replay that is still
        running.
        """
        self.kafka.positions[0] = 9  # the replay waits for records 4..8
        self.registry.subscribe(self.alice, "k", "push", StartFrom("earliest"))
        self.kafka.clock.advance(0)
        replay = self.kafka.replays[0]
        self.assertEqual(replay.state, "replaying")
        self.registry.unsubscribe(self.alice, "k")
        self.assertEqual(replay.state, "cancelled")
        bob = FakeSubscriber("bob")
        self.registry.subscribe(bob, "k", "push", StartFrom("earliest"))
        self.kafka.clock.advance(0)
        self.registry.disconnect(bob)
        self.assertEqual(self.kafka.replays[1].state, "cancelled")
