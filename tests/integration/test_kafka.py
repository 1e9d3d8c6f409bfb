"""
Kafka topics streamed through a real Kiwi process to real clients.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from typing import Any

from twisted.internet.threads import deferToThread

from tests.integration import broker
from tests.integration.base import IntegrationTestCase


def _decode(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def _by_partition(results: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        grouped[result["partition"]].append(result)
    return grouped


class KafkaDeliveryTests(IntegrationTestCase):
    """
    Every record reaches every subscriber exactly once, in partition order.
    """

    async def test_delivery_threePartitionsTwoClients(self) -> None:
        """
        1,000 records on a 3-partition topic reach each of two clients: none
        lost, none duplicated, per-partition order kept, keys and payloads
        exact after base64 decoding, nulls as null.
        """
        topic = await self.create_topic(partitions=3)
        kiwi = await self.start_kiwi(self.kafka_config(topic))
        await kiwi.wait_source_state(topic, "running")
        clients = [await self.connect(kiwi), await self.connect(kiwi)]
        for client in clients:
            await client.subscribe(topic)

        records: list[tuple[bytes | None, bytes | None, int | None]] = []
        for i in range(1000):
            key = None if i % 7 == 0 else f"key-{i}".encode()
            value = None if i % 11 == 0 else f'{{"n": {i}, "bytes": "\u00e9\u00ff"}}'.encode() + bytes([i % 256])
            records.append((key, value, i % 3))
        await self.produce(topic, records)

        expected: dict[int, list[tuple[bytes | None, bytes | None]]] = defaultdict(list)
        for key, value, partition in records:
            assert partition is not None
            expected[partition].append((key, value))
        for client in clients:
            await client.wait_for(lambda c=client: len(c.results(topic)) >= 1000, 30, what="1000 records")
            results = client.results(topic)
            self.assertEqual(len(results), 1000)
            for partition, items in _by_partition(results).items():
                self.assertEqual([r["offset"] for r in items], list(range(len(items))))
                self.assertEqual(
                    [(_decode(r["key"]), _decode(r["payload"])) for r in items], expected[partition]
                )
            first = results[0]
            self.assertEqual(first["sourceType"], "kafka")
            self.assertEqual(first["sourceId"], topic)
            self.assertIsInstance(first["timestamp"], int)
            self.assertTrue(any(r["key"] is None for r in results))
            self.assertTrue(any(r["payload"] is None for r in results))

    async def test_start_latestOffsetOnly(self) -> None:
        """
        Records produced before Kiwi started are not delivered; records
        produced after it reached the topic are.
        """
        topic = await self.create_topic(partitions=2)
        await self.produce(topic, [(None, b"old", 0), (None, b"old", 1)])
        kiwi = await self.start_kiwi(self.kafka_config(topic))
        await kiwi.wait_source_state(topic, "running")
        client = await self.connect(kiwi)
        await client.subscribe(topic)
        await self.produce(topic, [(None, b"new-0", 0), (None, b"new-1", 1)])
        await client.wait_for(lambda: len(client.results(topic)) >= 2, 20)
        payloads = sorted(_decode(r["payload"]) or b"" for r in client.results(topic))
        self.assertEqual(payloads, [b"new-0", b"new-1"])

    async def test_unsubscribe_stopsDelivery(self) -> None:
        """
        After UNSUBSCRIBE_OK a client gets no more records of that source,
        while a client still subscribed does; two sources are independent.
        """
        topic_a = await self.create_topic()
        topic_b = await self.create_topic()
        kiwi = await self.start_kiwi(self.kafka_config(topic_a, topic_b))
        await kiwi.wait_source_state(topic_a, "running")
        await kiwi.wait_source_state(topic_b, "running")
        leaving = await self.connect(kiwi)
        staying = await self.connect(kiwi)
        for client in (leaving, staying):
            await client.subscribe(topic_a)
            await client.subscribe(topic_b)
        await self.produce(topic_a, [(None, b"a1", None)])
        await self.produce(topic_b, [(None, b"b1", None)])
        await leaving.wait_for(lambda: len(leaving.results()) >= 2, 20)
        reply = await leaving.command({"type": "UNSUBSCRIBE", "sourceId": topic_a})
        self.assertEqual(reply, {"type": "UNSUBSCRIBE_OK", "sourceId": topic_a})
        await self.produce(topic_a, [(None, b"a2", None)])
        await self.produce(topic_b, [(None, b"b2", None)])
        await staying.wait_for(lambda: len(staying.results()) >= 4, 20)
        await leaving.wait_for(lambda: len(leaving.results(topic_b)) >= 2, 20)
        self.assertEqual([_decode(r["payload"]) for r in leaving.results(topic_a)], [b"a1"])
        self.assertEqual([_decode(r["payload"]) for r in staying.results(topic_a)], [b"a1", b"a2"])

    async def test_sourceId_differsFromTopic(self) -> None:
        """
        A Kafka source with an explicit id is subscribed by that id.
        """
        topic = await self.create_topic()
        config = self.kafka_config()
        config["sources"] = [{"type": "kafka", "topic": topic, "id": "ticks"}]
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state("ticks", "running")
        client = await self.connect(kiwi)
        await client.subscribe("ticks")
        await self.produce(topic, [(b"k", b"v", None)])
        await client.wait_for(lambda: client.results("ticks"), 20)
        self.assertEqual(_decode(client.results("ticks")[0]["payload"]), b"v")


class KafkaTopologyTests(IntegrationTestCase):
    """
    Kiwi follows the topic as it changes: new partitions, late topics,
    broker restarts.
    """

    async def test_partitionAdded_consumedFromBeginning(self) -> None:
        """
        A partition added while Kiwi runs is found and consumed from its
        first record, and the existing subscription stays open.
        """
        topic = await self.create_topic(partitions=1)
        kiwi = await self.start_kiwi(self.kafka_config(topic, partition_discovery_interval_ms=300))
        await kiwi.wait_source_state(topic, "running")
        client = await self.connect(kiwi)
        await client.subscribe(topic)
        await deferToThread(broker.add_partitions, self.bootstrap, topic, 3)
        # Produced before Kiwi can have noticed the new partitions.
        await self.produce(topic, [(None, b"p1", 1), (None, b"p2", 2), (None, b"p0", 0)])
        await client.wait_for(lambda: len(client.results(topic)) >= 3, 30)
        got = {r["partition"]: _decode(r["payload"]) for r in client.results(topic)}
        self.assertEqual(got, {0: b"p0", 1: b"p1", 2: b"p2"})
        self.assertEqual(client.notices(), [])
        health = await kiwi.health()
        self.assertEqual(health["sources"][topic]["partitions"], 3)

    async def test_topicCreatedAfterStart_delivered(self) -> None:
        """
        A source whose topic does not exist yet waits for it; records
        produced once it exists are delivered from its beginning.
        """
        topic = broker.unique_topic()
        kiwi = await self.start_kiwi(self.kafka_config(topic))
        await kiwi.wait_source_state(topic, "waiting for topic")
        client = await self.connect(kiwi)
        await client.subscribe(topic)
        await deferToThread(broker.create_topic, self.bootstrap, topic, 2)
        await self.produce(topic, [(None, b"first", 0), (None, b"second", 1)])
        await client.wait_for(lambda: len(client.results(topic)) >= 2, 30)
        self.assertEqual(sorted(_decode(r["payload"]) or b"" for r in client.results(topic)), [b"first", b"second"])


class BrokerRestartTests(IntegrationTestCase):
    """
    Kiwi survives its broker going away, with its own private broker so the
    shared one is never disturbed.
    """

    timeout = 180

    def setUp(self) -> None:
        super().setUp()
        self.broker = broker.LocalBroker()
        self.broker.start()
        self.addCleanup(self.broker.destroy)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    async def test_brokerRestart_deliveryResumes(self) -> None:
        """
        When the broker restarts mid-stream, /health shows it, Kiwi keeps
        running, and delivery resumes by itself without losing records
        produced after the restart.
        """
        topic = await self.create_topic(partitions=2)
        kiwi = await self.start_kiwi(self.kafka_config(topic))
        await kiwi.wait_source_state(topic, "running")
        client = await self.connect(kiwi)
        await client.subscribe(topic)
        await self.produce(topic, [(None, b"before", 0)])
        await client.wait_for(lambda: len(client.results(topic)) >= 1, 20)

        await deferToThread(self.broker.stop)
        await kiwi.wait_source_state(topic, "broker unreachable", timeout=60)
        await deferToThread(self.broker.start)
        await self.produce(topic, [(None, b"after-0", 0), (None, b"after-1", 1)])
        await client.wait_for(lambda: len(client.results(topic)) >= 3, 60)
        payloads = [_decode(r["payload"]) for r in client.results(topic)]
        self.assertEqual(payloads[0], b"before")
        self.assertEqual(sorted(p or b"" for p in payloads[1:]), [b"after-0", b"after-1"])
        await kiwi.wait_source_state(topic, "running", timeout=30)

    async def test_brokerDownAtStart_sourceRecovers(self) -> None:
        """
        With the broker down when Kiwi starts, Kiwi still serves (counter
        sources work) and the Kafka source starts once the broker is back.
        """
        topic = await self.create_topic()
        await deferToThread(self.broker.stop)
        config = self.kafka_config(topic)
        config["sources"].append({"type": "counter", "id": "tick", "interval_ms": 50, "min": 0})
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state(topic, "broker unreachable", timeout=30)
        client = await self.connect(kiwi)
        await client.subscribe("tick")
        await client.wait_for(lambda: client.results("tick"), 10)
        await deferToThread(self.broker.start)
        await kiwi.wait_source_state(topic, "running", timeout=60)
        await client.subscribe(topic)
        await self.produce(topic, [(None, b"hello", None)])
        await client.wait_for(lambda: client.results(topic), 30)
