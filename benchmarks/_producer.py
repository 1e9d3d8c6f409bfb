"""
A paced Kafka producer for benchmarks, run as its own process so that it
competes with nobody for the benchmark's GIL:

    python -m benchmarks._producer BOOTSTRAP TOPIC COUNT SIZE RATE

Each record's value starts with C{<seq> <time.time_ns()> } (taken just
before the record is handed to librdkafka) and is padded to SIZE bytes.
Prints C{produced COUNT} once every record is acknowledged.
"""

from __future__ import annotations

import sys
import time

from confluent_kafka import Producer

TICK_S = 0.005


def header(seq: int, sent_ns: int) -> bytes:
    """
    The start of a record's value.
    """
    return b"%08d %020d " % (seq, sent_ns)


def parse_header(value: bytes) -> tuple[int, int]:
    """
    The sequence number and send time (ns) at the start of C{value}.
    """
    return int(value[:8]), int(value[9:29])


HEADER_SIZE = len(header(0, 0))


def produce(bootstrap: str, topic: str, count: int, size: int, rate: float) -> None:
    """
    Produce C{count} records of C{size} bytes at C{rate} per second.
    """
    errors: list[str] = []

    def delivered(error: object, message: object) -> None:
        if error is not None:
            errors.append(str(error))

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": False})
    padding = b"x" * (size - HEADER_SIZE)
    start = time.monotonic()
    seq = 0
    while seq < count:
        due = min(count, int((time.monotonic() - start) * rate) + 1)
        while seq < due:
            value = header(seq, time.time_ns()) + padding
            try:
                producer.produce(topic, value=value, on_delivery=delivered)
            except BufferError:
                producer.poll(0.01)
                continue
            seq += 1
        producer.poll(0)
        time.sleep(TICK_S)
    remaining = producer.flush(60)
    if remaining or errors:
        sys.exit(f"producer: {remaining} records not delivered; errors: {errors[:5]}")
    print(f"produced {count}", flush=True)


if __name__ == "__main__":
    bootstrap, topic, count, size, rate = sys.argv[1:6]
    produce(bootstrap, topic, int(count), int(size), float(rate))
