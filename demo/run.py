"""
The demo stack behind `make run`: a local Kafka-protocol broker (noida-db),
a `prices` topic, the sample producer, and Kiwi serving conf/kiwi.yaml on
ws://127.0.0.1:8000/. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
BROKER_PORT = 19092
KIWI_PORT = 8000
TOPIC = "prices"
DATA_DIR = os.path.join(ROOT, ".demo", "broker")


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, process: subprocess.Popen[bytes], name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_busy(port):
        if process.poll() is not None:
            sys.exit(f"demo: {name} exited with {process.returncode}")
        if time.monotonic() > deadline:
            sys.exit(f"demo: {name} did not start listening on {port}")
        time.sleep(0.1)


def ensure_topic() -> None:
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{BROKER_PORT}"})
    if TOPIC in admin.list_topics(timeout=10).topics:
        return
    futures = admin.create_topics([NewTopic(TOPIC, 3, 1)])
    futures[TOPIC].result(20)


def main() -> None:
    for port, what in ((BROKER_PORT, "the demo broker"), (KIWI_PORT, "Kiwi")):
        if port_busy(port):
            sys.exit(f"demo: port {port} (for {what}) is already in use; stop whatever uses it first")
    os.makedirs(DATA_DIR, exist_ok=True)
    children: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(args, start_new_session=True, **kwargs)  # type: ignore[call-overload]
        children.append(process)
        return process

    def stop_all(*_: object) -> None:
        for process in reversed(children):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(children):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        print("\ndemo: stopped broker, producer and Kiwi")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        broker_log = open(os.path.join(ROOT, ".demo", "broker.log"), "ab")
        broker = start(
            [os.path.join(BIN, "noida-db"), "start", "--data-dir", DATA_DIR, "--only", "kafka",
             "--kafka-port", str(BROKER_PORT)],
            stdout=broker_log,
            stderr=subprocess.STDOUT,
        )
        wait_port(BROKER_PORT, broker, "the broker")
        ensure_topic()
        start([sys.executable, os.path.join(ROOT, "demo", "producer.py"),
               "--bootstrap", f"127.0.0.1:{BROKER_PORT}", "--topic", TOPIC])
        kiwi = start([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "kiwi",
                      "--config", os.path.join(ROOT, "conf", "kiwi.yaml")])
        wait_port(KIWI_PORT, kiwi, "Kiwi")
        print(
            f"""
Kiwi is running on ws://127.0.0.1:{KIWI_PORT}/  (health: http://127.0.0.1:{KIWI_PORT}/health)

Dashboard: open http://127.0.0.1:{KIWI_PORT}/?source=prices in a browser.

Sources: "counter" (one count a second) and "prices" (Kafka topic with price ticks).
Try it, for example with Python:

  .venv/bin/python -m kiwi.cli ws://127.0.0.1:{KIWI_PORT}/ prices

or any WebSocket client, sending:  {{"type":"SUBSCRIBE","sourceId":"prices"}}

Press Ctrl-C to stop the broker, the producer and Kiwi.
""",
            flush=True,
        )
        while all(process.poll() is None for process in children):
            time.sleep(0.5)
        for process in children:
            if process.poll() is not None:
                print(f"demo: {process.args[0]} exited with {process.returncode}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        stop_all()


if __name__ == "__main__":
    main()
