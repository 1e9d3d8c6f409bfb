"""
A real Kafka-protocol broker for the integration tests.

By default the suite starts the C{noida-db} binary (from the C{noida-db}
package) with only its Kafka service, on a free loopback port and a
throw-away data directory; one broker is shared by the whole test process
and stopped when it exits. C{KIWI_TEST_BOOTSTRAP=host:port} points the suite
at another Kafka instead.

Every test creates its own topics (L{unique_topic}), so tests never depend
on one another or on the order they run in.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _noida_binary() -> str:
    candidate = os.path.join(os.path.dirname(sys.executable), "noida-db")
    if os.path.exists(candidate):
        return candidate
    found = shutil.which("noida-db")
    if found is None:
        raise RuntimeError("noida-db is not installed: pip install noida-db (part of the test extras)")
    return found


def _group_alive(group: int) -> bool:
    """
    Whether any process of process group C{group} is still running.
    """
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalBroker:
    """
    A C{noida-db} Kafka service on loopback, in its own data directory.
    """

    def __init__(self, port: int | None = None, data_dir: str | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="kiwi-test-broker-")
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(self.data_dir, "broker.log")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """
        Start the broker and return once it accepts connections.
        """
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                _noida_binary(),
                "start",
                "--data-dir",
                self.data_dir,
                "--host",
                "127.0.0.1",
                "--only",
                "kafka",
                "--kafka-port",
                str(self.port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"noida-db exited with {self.process.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"noida-db did not listen on {self.port} within {STARTUP_TIMEOUT_S}s")

    def stop(self) -> None:
        """
        Stop the broker (its data stays, so it can be started again).
        """
        if self.process is None:
            return
        group = self.process.pid  # started with start_new_session
        if self.process.poll() is None:
            os.killpg(group, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(group, signal.SIGKILL)
                self.process.wait(10)
        # The noida-db launcher can exit before the broker binary it runs:
        # wait for the whole process group, so that no broker outlives us.
        deadline = time.monotonic() + 10
        while _group_alive(group):
            if time.monotonic() > deadline:
                os.killpg(group, signal.SIGKILL)
                break
            time.sleep(0.05)
        self.process = None

    def destroy(self) -> None:
        """
        Stop the broker and delete its data.
        """
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


_shared: LocalBroker | None = None


def bootstrap_servers() -> str:
    """
    The broker every test uses: C{KIWI_TEST_BOOTSTRAP}, or a shared local
    one started on first use.
    """
    global _shared
    external = os.environ.get("KIWI_TEST_BOOTSTRAP")
    if external:
        return external
    if _shared is None:
        broker = LocalBroker()
        broker.start()
        atexit.register(broker.destroy)
        _shared = broker
    return _shared.bootstrap


def unique_topic(prefix: str = "kiwi-test") -> str:
    """
    A topic name no other test uses.
    """
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create_topic(bootstrap: str, topic: str, partitions: int = 1, timeout: float = 20.0) -> None:
    """
    Create C{topic} and wait until its metadata shows every partition.
    """
    client = admin(bootstrap)  # must outlive the futures
    futures = client.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=timeout)
    futures[topic].result(timeout)
    _wait_partitions(bootstrap, topic, partitions, timeout)


def add_partitions(bootstrap: str, topic: str, total: int, timeout: float = 20.0) -> None:
    """
    Grow C{topic} to C{total} partitions.
    """
    client = admin(bootstrap)  # must outlive the futures
    futures = client.create_partitions([NewPartitions(topic, total)], operation_timeout=timeout)
    futures[topic].result(timeout)
    _wait_partitions(bootstrap, topic, total, timeout)


def _wait_partitions(bootstrap: str, topic: str, count: int, timeout: float) -> None:
    client = admin(bootstrap)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metadata = client.list_topics(topic, timeout=5)
        found = metadata.topics.get(topic)
        if found is not None and found.error is None and len(found.partitions) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"topic {topic} did not reach {count} partitions")


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None, int | None]],
    timeout: float = 30.0,
) -> None:
    """
    Produce C{(key, value, partition)} records in order and wait for all of
    them to be acknowledged. Blocking: call it through C{deferToThread}.
    """
    errors: list[str] = []

    def delivered(error: object, message: object) -> None:
        if error is not None:
            errors.append(str(error))

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False})
    for key, value, partition in records:
        kwargs = {"partition": partition} if partition is not None else {}
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(timeout)
    if remaining or errors:
        raise AssertionError(f"{remaining} records not delivered; errors: {errors[:5]}")


def keyed(records: Sequence[tuple[bytes | None, bytes | None]], partitions: int) -> list[tuple[bytes | None, bytes | None, int]]:
    """
    Spread records round-robin over C{partitions} partitions.
    """
    return [(key, value, index % partitions) for index, (key, value) in enumerate(records)]
