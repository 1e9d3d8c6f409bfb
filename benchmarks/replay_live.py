"""
Does replaying history slow the live stream for others?

    .venv/bin/python benchmarks/replay_live.py [--history 50000] [--rate 200] [--seconds 8] [--replayers 4]

Starts a local broker (noida-db) and a real Kiwi process on loopback,
fills a 3-partition topic with C{--history} records, and then produces
live records at C{--rate} per second, each carrying its send time. One push
subscriber measures the live stream's latency (send to receipt) in two
phases of C{--seconds} each: alone, and while C{--replayers} other clients
replay the whole history from "earliest" at the same time. It prints the
latency percentiles of both phases and the replay throughput.

Bounded: a fixed number of records, phases of fixed length, loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from kiwi.client import KiwiClient  # noqa: E402
from tests.integration import broker  # noqa: E402
from tests.integration.kiwiproc import KiwiProcess  # noqa: E402


def _produce_live(bootstrap: str, topic: str, rate: float, stop: threading.Event) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": False})
    interval = 1.0 / rate
    next_at = time.monotonic()
    sequence = 0
    while not stop.is_set():
        payload = json.dumps({"sent": time.time(), "seq": sequence}).encode()
        producer.produce(topic, value=payload, partition=sequence % 3)
        producer.poll(0)
        sequence += 1
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    producer.flush(10)


def _percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return (
        f"n={len(ordered)} p50={at(0.5):.1f}ms p90={at(0.9):.1f}ms p99={at(0.99):.1f}ms "
        f"max={ordered[-1] * 1000:.1f}ms mean={statistics.fmean(ordered) * 1000:.1f}ms"
    )


async def main(reactor: Any, args: argparse.Namespace) -> None:
    local = broker.LocalBroker()
    local.start()
    kiwi: KiwiProcess | None = None
    stop = threading.Event()
    producer: threading.Thread | None = None
    clients: list[KiwiClient] = []
    child: subprocess.Popen[str] | None = None
    try:
        bootstrap = local.bootstrap
        topic = broker.unique_topic("bench")
        broker.create_topic(bootstrap, topic, 3)
        history = [(None, b'{"history": true}' + b"x" * 200, i % 3) for i in range(args.history)]
        await defer.Deferred.fromCoroutine(_in_thread(broker.produce, bootstrap, topic, history))
        kiwi = KiwiProcess(
            {
                "sources": [{"type": "kafka", "id": "bench", "topic": topic, "format": "json"}],
                "kafka": {"bootstrap_servers": [bootstrap]},
                "subscriber": {"max_replay_events": args.history + 10_000},
            },
            log_level="info",
        )
        await kiwi.start()
        await kiwi.wait_source_state("bench", "running")
        assert kiwi.port is not None

        latencies: list[float] = []
        live = KiwiClient(f"ws://127.0.0.1:{kiwi.port}/", reactor=reactor)
        clients.append(live)

        def on_live(data: dict[str, Any]) -> None:
            payload = data.get("payload")
            if isinstance(payload, dict) and "sent" in payload:
                latencies.append(time.time() - payload["sent"])

        live.on("result", on_live)
        await live.connect()
        await live.subscribe("bench")
        producer = threading.Thread(target=_produce_live, args=(bootstrap, topic, args.rate, stop), daemon=True)
        producer.start()
        await task.deferLater(reactor, 2, lambda: None)  # warm-up
        latencies.clear()
        await task.deferLater(reactor, args.seconds, lambda: None)
        alone = list(latencies)

        latencies.clear()
        # The replayers run in their own process, so that handling their
        # records does not delay this one's live measurements.
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(kiwi.port), "--history", str(args.history),
             "--replayers", str(args.replayers), "--seconds", str(args.seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        await task.deferLater(reactor, args.seconds, lambda: None)
        during = list(latencies)
        output, _ = await defer.Deferred.fromCoroutine(_in_thread(child.communicate, None, 60))
        report = json.loads(output.strip().splitlines()[-1])

        print(f"history {args.history} records, live {args.rate}/s on 3 partitions, {args.replayers} replayers")
        print(f"live latency alone:           {_percentiles(alone)}")
        print(f"live latency during replays:  {_percentiles(during)}")
        for index, (count, finished) in enumerate(zip(report["received"], report["done_at"])):
            if finished is not None:
                print(f"replayer {index}: {args.history} history records in {finished:.2f}s "
                      f"({args.history / finished:.0f} records/s)")
            else:
                print(f"replayer {index}: {count} records in {args.seconds}s (not done)")
    finally:
        if child is not None and child.poll() is None:
            child.kill()
        stop.set()
        if producer is not None:
            producer.join(10)
        for client in clients:
            await client.close()
        if kiwi is not None:
            await kiwi.stop()
        local.destroy()


async def replay_child(reactor: Any, args: argparse.Namespace) -> None:
    """
    C{--replayers} clients replaying everything from earliest; prints one
    JSON line with what each received and when it had the whole history.
    """
    received = [0] * args.replayers
    done_at: list[float | None] = [None] * args.replayers
    clients = []
    started = time.monotonic()
    for index in range(args.replayers):
        client = KiwiClient(f"ws://127.0.0.1:{args.child}/", reactor=reactor)
        clients.append(client)

        def on_result(data: dict[str, Any], index: int = index) -> None:
            received[index] += 1
            if received[index] >= args.history and done_at[index] is None:
                done_at[index] = time.monotonic() - started

        client.on("result", on_result)
        await client.connect()
        await client.subscribe("bench", start="earliest")
    await task.deferLater(reactor, args.seconds, lambda: None)
    for client in clients:
        await client.close()
    print(json.dumps({"received": received, "done_at": done_at}), flush=True)


async def _in_thread(f: Any, *args: Any) -> Any:
    from twisted.internet.threads import deferToThread

    return await deferToThread(f, *args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--replayers", type=int, default=4)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(replay_child(reactor, arguments)))
    else:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, arguments)))
