"""
The only module that touches confluent-kafka (librdkafka).

Everything here runs in a Kafka source's own thread: methods are named
C{thd_*}, share no state with the reactor thread, and return plain values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from kiwi.events import Headers, KafkaEvent, PayloadFormat
from zope.interface import implementer

from kiwi.replay import IReplayReader
from kiwi.sources.kafka import BEGINNING, BrokerUnavailable, IKafkaConsumer

assert OFFSET_BEGINNING == BEGINNING

_TIMESTAMP_NOT_AVAILABLE = 0


@attrs.frozen
class Batch:
    """
    What one C{consume} call brought back.

    @ivar errors: Human-readable consumer errors seen during the call.
    @ivar brokers_down: Whether librdkafka reported that no broker is up.
    @ivar lag: Records behind the end per partition, when librdkafka
        published statistics during the call.
    """

    events: list[KafkaEvent]
    errors: list[str]
    brokers_down: bool
    lag: dict[int, int] | None = None


@implementer(IKafkaConsumer, IReplayReader)
class ConfluentConsumer:
    """
    One librdkafka consumer for one topic, assigned partitions by hand (no
    consumer group rebalancing, no committed offsets).
    """

    def __init__(
        self,
        source_id: str,
        topic: str,
        settings: Mapping[str, str],
        payload_format: PayloadFormat = "base64",
        key_format: PayloadFormat = "base64",
        headers: bool = False,
    ) -> None:
        self._source_id = source_id
        self._topic = topic
        self._payload_format: PayloadFormat = payload_format
        self._key_format: PayloadFormat = key_format
        self._headers = headers
        self._settings = dict(settings)
        self._consumer: Any = None
        self._errors: list[str] = []
        self._brokers_down = False
        self._lag: dict[int, int] | None = None

    def _on_error(self, error: Any) -> None:
        # Called by librdkafka from inside consume()/list_topics(), on our thread.
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._brokers_down = True
        self._errors.append(error.str())

    def _on_stats(self, document: str) -> None:
        # Called by librdkafka from inside consume(), on our thread.
        try:
            partitions = json.loads(document)["topics"][self._topic]["partitions"]
        except (ValueError, KeyError, TypeError):
            return
        self._lag = {
            int(partition): int(detail["consumer_lag"])
            for partition, detail in partitions.items()
            if int(partition) >= 0 and int(detail.get("consumer_lag", -1)) >= 0
        }

    def thd_open(self) -> None:
        """
        Create the consumer.
        """
        settings: dict[str, Any] = dict(self._settings)
        settings["error_cb"] = self._on_error
        settings["stats_cb"] = self._on_stats
        self._consumer = Consumer(settings)

    def thd_partitions(self, timeout: float) -> list[int] | None:
        """
        The topic's partition ids, or C{None} if the topic does not exist.

        @raise BrokerUnavailable: if the cluster did not answer.
        """
        try:
            metadata = self._consumer.list_topics(self._topic, timeout=timeout)
        except KafkaException as e:
            raise BrokerUnavailable(str(e.args[0].str() if e.args else e)) from None
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None:
            if topic is not None and topic.error.code() not in (
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError.LEADER_NOT_AVAILABLE,
            ):
                raise BrokerUnavailable(topic.error.str())
            return None
        if not metadata.brokers:
            raise BrokerUnavailable("no brokers in metadata")
        return sorted(topic.partitions)

    def thd_end_offsets(self, partitions: list[int], timeout: float) -> dict[int, int]:
        """
        Each partition's high watermark: where new records will be written.

        @raise BrokerUnavailable: if the cluster did not answer.
        """
        offsets = {}
        for partition in partitions:
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self._topic, partition), timeout=timeout
                )
            except KafkaException as e:
                raise BrokerUnavailable(str(e.args[0].str() if e.args else e)) from None
            offsets[partition] = high
        return offsets

    def thd_watermarks(self, partitions: list[int], timeout: float) -> dict[int, tuple[int, int]]:
        """
        Each partition's low and high watermark: its first retained
        offset and where new records will be written.

        @raise BrokerUnavailable: if the cluster did not answer.
        """
        offsets = {}
        for partition in partitions:
            try:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self._topic, partition), timeout=timeout
                )
            except KafkaException as e:
                raise BrokerUnavailable(str(e.args[0].str() if e.args else e)) from None
            offsets[partition] = (low, high)
        return offsets

    def thd_offsets_for_times(self, timestamp: int, partitions: list[int], timeout: float) -> dict[int, int]:
        """
        In each partition, the offset of the first record whose timestamp
        is at or after C{timestamp}; C{-1} where there is none.

        @raise BrokerUnavailable: if the cluster did not answer.
        """
        try:
            found = self._consumer.offsets_for_times(
                [TopicPartition(self._topic, partition, timestamp) for partition in partitions], timeout=timeout
            )
        except KafkaException as e:
            raise BrokerUnavailable(str(e.args[0].str() if e.args else e)) from None
        for tp in found:
            if tp.error is not None:
                # An answer that is an error (a timed-out partition, a
                # leader moving) is not "no such record": ask again.
                raise BrokerUnavailable(f"partition {tp.partition}: {tp.error.str()}")
        return {tp.partition: tp.offset for tp in found}

    def thd_positions(self, partitions: list[int]) -> dict[int, int]:
        """
        The next offset the consumer will read in each partition (negative
        while it does not know yet).
        """
        found = self._consumer.position([TopicPartition(self._topic, partition) for partition in partitions])
        return {tp.partition: tp.offset for tp in found}

    def thd_assign(self, offsets: Mapping[int, int]) -> None:
        """
        Start consuming these partitions at these offsets (L{BEGINNING} for
        the first retained record), keeping earlier assignments.
        """
        self._consumer.incremental_assign(
            [TopicPartition(self._topic, partition, offset) for partition, offset in offsets.items()]
        )

    def thd_consume(self, max_records: int, timeout: float) -> Batch:
        """
        Wait up to C{timeout} seconds for a record, then take up to
        C{max_records} of those already fetched.
        """
        self._errors = []
        self._brokers_down = False
        self._lag = None
        # consume(n, timeout) waits until it has n records or the timeout
        # passes, which would hold the first record back for up to the
        # whole timeout at moderate rates: wait for one, then take what is
        # there without waiting.
        records = self._consumer.consume(1, timeout)
        if records and max_records > 1:
            records += self._consumer.consume(max_records - 1, 0)
        events = []
        for record in records:
            error = record.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self._errors.append(error.str())
                continue
            kind, timestamp = record.timestamp()
            headers: Headers | None = None
            if self._headers:
                headers = tuple((str(k), v) for k, v in (record.headers() or ()))
            events.append(
                KafkaEvent(
                    source_id=self._source_id,
                    topic=self._topic,
                    partition=record.partition(),
                    offset=record.offset(),
                    key=record.key(),
                    payload=record.value(),
                    timestamp=None if kind == _TIMESTAMP_NOT_AVAILABLE else timestamp,
                    payload_format=self._payload_format,
                    key_format=self._key_format,
                    headers=headers,
                )
            )
        return Batch(events, self._errors, self._brokers_down, self._lag)

    def thd_close(self) -> None:
        """
        Close the consumer; it may block while librdkafka winds down.
        """
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def check_settings(settings: Mapping[str, str]) -> str | None:
    """
    librdkafka's complaint about C{settings}, or C{None} if it takes them.

    Creating a consumer validates every property; it is closed at once,
    before it has connected anywhere.
    """
    try:
        consumer = Consumer(dict(settings))
    except KafkaException as e:
        error = e.args[0]
        return str(error.str() if hasattr(error, "str") else error)
    consumer.close()
    return None
