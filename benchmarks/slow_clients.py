"""
Slow clients cannot hurt anyone: a benchmark.

Starts its own broker (C{noida-db} on a free loopback port) and, for each
run, a fresh topic and a real Kiwi process (C{twistd -n kiwi}, default flow
settings). Connects one reading client and N stalled clients (raw sockets
that complete the handshake, subscribe and never read) to one Kafka source,
then produces COUNT records of SIZE bytes at RATE per second from a
separate process. Each record carries its send time, so the reading client
measures produce-to-receipt latency.

Runs once with 20 stalled clients and once with none, and prints for each:
Kiwi's peak memory growth (VmHWM at the end minus VmRSS once every client
is connected, from C{/proc/<pid>/status}), the reading client's delivered
count and its latency p50/p99; then the ratio of the p99s.

Targets: growth under 100 MB, every record delivered to the reading client,
p99 with stalled clients within 2x of the run without.

    .venv/bin/python -m benchmarks.slow_clients            # or: make bench-flow
    .venv/bin/python -m benchmarks.slow_clients --help

Loopback only; stops by itself (C{--timeout}, 300 s by default). Exit
status 0 if every target is met, 1 if not, 2 if the benchmark failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
from typing import Any

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer, error, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react
from twisted.internet.threads import deferToThread

from benchmarks._producer import parse_header
from tests.integration.broker import LocalBroker, create_topic, unique_topic
from tests.integration.kiwiproc import KiwiProcess, twistd_path
from tests.integration.rawclient import StalledClient

GROWTH_TARGET_MB = 100.0
P99_RATIO_TARGET = 2.0
STALL_S = 20
"""
Stop waiting for records once none has arrived for this long.
"""
HEADER_B64 = 40
"""
Base64 characters that cover a record's 30-byte header.
"""


def _sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


def proc_status(pid: int) -> dict[str, int]:
    """
    The kB fields of C{/proc/<pid>/status} (VmRSS, VmHWM, ...).
    """
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[key] = int(parts[0])
    return fields


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """
    User plus system CPU time of a process (or of one of its threads) so
    far.
    """
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    """
    The nearest-rank percentile of C{values} (sorted).
    """
    if not values:
        return float("nan")
    rank = max(1, min(len(values), round(p / 100 * len(values) + 0.5)))
    return values[rank - 1]


class _ProfiledKiwi(KiwiProcess):
    """
    Kiwi run under twistd's cProfile profiler, which saves its statistics
    to C{profile_path} when Kiwi stops (reactor thread only).
    """

    def __init__(self, config: dict[str, Any], profile_path: str) -> None:
        super().__init__(config, log_level="info")
        self.profile_path = profile_path

    def spawn(self) -> None:
        args = [
            twistd_path(),
            "-n",
            "--pidfile=",
            f"--profile={self.profile_path}",
            "--profiler=cprofile",
            "--savestats",
            "kiwi",
            "--config",
            self.config_path,
            "--log-level",
            self.log_level,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._process = reactor.spawnProcess(  # type: ignore[attr-defined]
            self._protocol, args[0], args, env=env, path=self.directory, childFDs={0: "w", 1: "r", 2: "r"}
        )


def print_profile(path: str, top: int = 25) -> None:
    """
    The functions where Kiwi's reactor thread spent most time.
    """
    import pstats

    print(f"profile of Kiwi's reactor thread ({path}):", flush=True)
    pstats.Stats(path).sort_stats("tottime").print_stats(top)


class _Reader(WebSocketClientProtocol):
    """
    The reading client: notes each record's latency as it arrives.
    """

    factory: _ReaderFactory

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        received_ns = time.time_ns()
        # Kept cheap, so that the reader keeps up on a busy machine: find
        # the record's header without parsing the whole message.
        start = payload.find(b'"payload":"') if payload.startswith(b'{"type":"RESULT"') else -1
        if start >= 0:
            start += len(b'"payload":"')
            seq, sent_ns = parse_header(base64.b64decode(payload[start : start + HEADER_B64]))
            self.factory.seen.add(seq)
            self.factory.latencies_ms.append((received_ns - sent_ns) / 1e6)
            self.factory.sent_ns.append(sent_ns)
        else:
            self.factory.other.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.close = (code, reason)
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"closed before opening: {code} {reason}"))


class _ReaderFactory(WebSocketClientFactory):
    protocol = _Reader

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.setProtocolOptions(utf8validateIncoming=False)
        self.opened: Deferred[_Reader] = Deferred()
        self.latencies_ms: list[float] = []
        self.sent_ns: list[int] = []
        self.seen: set[int] = set()
        self.other: list[dict[str, Any]] = []
        self.close: tuple[int | None, str | None] | None = None


@attrs.define
class RunResult:
    """
    The figures of one run.
    """

    stalled: int
    delivered: int
    received: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    baseline_rss_mb: float
    peak_hwm_mb: float
    growth_mb: float
    kiwi_cpu_s: float
    reactor_cpu_s: float
    produce_s: float
    still_connected: int
    pending_mb_at_end: float
    notices: int
    worst_second: str

    @property
    def label(self) -> str:
        return f"{self.stalled} stalled clients" if self.stalled else "no stalled clients"


async def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await _sleep(interval)


async def run_once(bootstrap: str, args: argparse.Namespace, stalled_count: int) -> RunResult:
    """
    One run: a fresh topic and Kiwi, the clients, the records.
    """
    topic = unique_topic("kiwi-bench")
    await deferToThread(create_topic, bootstrap, topic, 1)
    config = {
        "sources": [{"type": "kafka", "topic": topic}],
        "kafka": {"bootstrap_servers": [bootstrap]},
    }
    if args.max_pending_bytes is not None:
        config["subscriber"] = {"max_pending_bytes": args.max_pending_bytes}
    profile_path = None
    if args.profile:
        profile_path = os.path.join(args.profile, f"kiwi-{stalled_count}-stalled-{time.time_ns()}.prof")
    kiwi = KiwiProcess(config, log_level="info") if profile_path is None else _ProfiledKiwi(config, profile_path)
    stalled: list[StalledClient] = []
    producer: subprocess.Popen[bytes] | None = None
    connection: _Reader | None = None

    def kill_children() -> None:
        if producer is not None and producer.poll() is None:
            producer.kill()
        if kiwi._process is not None and not kiwi._protocol.exited.called:
            kiwi._process.signalProcess("KILL")

    # Interrupted (Ctrl-C), the coroutine never finishes: kill what this
    # run started on the way out anyway.
    trigger = reactor.addSystemEventTrigger("before", "shutdown", kill_children)  # type: ignore[attr-defined]
    try:
        port = await kiwi.start()
        pid = kiwi._process.pid
        await kiwi.wait_source_state(topic, "running", timeout=60)

        reader: _ReaderFactory = _ReaderFactory(f"ws://127.0.0.1:{port}/")
        connectWS(reader, timeout=10)
        connection = await reader.opened
        connection.sendMessage(json.dumps({"type": "SUBSCRIBE", "sourceId": topic}).encode())
        for _ in range(stalled_count):
            client = await deferToThread(StalledClient, port)
            stalled.append(client)
            client.send({"type": "SUBSCRIBE", "sourceId": topic})

        async def all_subscribed() -> bool:
            health = await kiwi.health()
            return bool(health["sources"][topic]["subscribers"] == stalled_count + 1)

        await _wait(all_subscribed, 30, "every client to subscribe")
        baseline_kb = proc_status(pid)["VmRSS"]
        cpu_before = cpu_seconds(pid)
        reactor_cpu_before = cpu_seconds(pid, pid)

        started = time.monotonic()
        producer = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._producer", bootstrap, topic]
            + [str(args.count), str(args.size), str(args.rate)],
            stdout=subprocess.DEVNULL,
        )
        produce_s: float | None = None
        # Wait for every record, or give up when nothing more arrives.
        deadline = started + args.count / args.rate + args.drain_timeout
        last_progress = (time.monotonic(), 0)
        while len(reader.seen) < args.count or produce_s is None:
            await _sleep(0.1)
            now = time.monotonic()
            if produce_s is None and producer.poll() is not None:
                if producer.returncode != 0:
                    raise RuntimeError(f"the producer failed with {producer.returncode}")
                produce_s = now - started
            if len(reader.seen) != last_progress[1]:
                last_progress = (now, len(reader.seen))
            if now > deadline or (produce_s is not None and now - last_progress[0] > STALL_S):
                break
        status = proc_status(pid)
        health = await kiwi.health()
        latencies = sorted(reader.latencies_ms)
        worst_second = _worst_second(reader.sent_ns, reader.latencies_ms)
        return RunResult(
            stalled=stalled_count,
            delivered=len(reader.seen),
            received=len(latencies),
            p50_ms=percentile(latencies, 50),
            p99_ms=percentile(latencies, 99),
            max_ms=latencies[-1] if latencies else float("nan"),
            baseline_rss_mb=baseline_kb / 1024,
            peak_hwm_mb=status["VmHWM"] / 1024,
            growth_mb=(status["VmHWM"] - baseline_kb) / 1024,
            kiwi_cpu_s=cpu_seconds(pid) - cpu_before,
            reactor_cpu_s=cpu_seconds(pid, pid) - reactor_cpu_before,
            produce_s=float("nan") if produce_s is None else produce_s,
            still_connected=int(health["connections"]) - (1 if reader.close is None else 0),
            pending_mb_at_end=health["pending_bytes"] / 2**20,
            notices=sum(1 for m in reader.other if m.get("type") == "NOTICE"),
            worst_second=worst_second,
        )
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait()
        for client in stalled:
            client.close()
        if connection is not None and connection.factory.close is None:
            connection.sendClose(1000)
        await kiwi.stop()
        reactor.removeSystemEventTrigger(trigger)  # type: ignore[attr-defined]
        if profile_path is not None and os.path.exists(profile_path):
            print_profile(profile_path)


def _worst_second(sent_ns: list[int], latencies_ms: list[float]) -> str:
    """
    Where the latency was worst: the second of the run (by send time) with
    the highest p99.
    """
    if not sent_ns:
        return "-"
    first = min(sent_ns)
    seconds: dict[int, list[float]] = {}
    for sent, latency in zip(sent_ns, latencies_ms):
        seconds.setdefault((sent - first) // 10**9, []).append(latency)
    second, values = max(seconds.items(), key=lambda item: percentile(sorted(item[1]), 99))
    return f"{second}: {percentile(sorted(values), 99):.0f} ms"


COLUMNS = (
    ("run", 18),
    ("delivered", 11),
    ("p50 ms", 7),
    ("p99 ms", 7),
    ("max ms", 7),
    ("RSS MB", 7),
    ("VmHWM MB", 8),
    ("growth MB", 9),
    ("CPU s", 6),
    ("reactor s", 9),
    ("stalled left", 12),
    ("outboxes MB", 11),
    ("worst second (p99)", 0),
)


def print_header() -> None:
    print("  ".join(name.rjust(width) if width else name for name, width in COLUMNS), flush=True)


def print_result(result: RunResult, count: int) -> None:
    """
    One row of the table: the figures of one run.
    """
    values = (
        result.label,
        f"{result.delivered}/{count}",
        f"{result.p50_ms:.1f}",
        f"{result.p99_ms:.1f}",
        f"{result.max_ms:.1f}",
        f"{result.baseline_rss_mb:.1f}",
        f"{result.peak_hwm_mb:.1f}",
        f"{result.growth_mb:.1f}",
        f"{result.kiwi_cpu_s:.1f}",
        f"{result.reactor_cpu_s:.2f}",
        str(result.still_connected if result.stalled else "-"),
        f"{result.pending_mb_at_end:.1f}",
        result.worst_second,
    )
    print("  ".join(v.rjust(width) if width else v for v, (_, width) in zip(values, COLUMNS)), flush=True)
    if result.notices:
        print(f"    the reading client got {result.notices} LAG notice(s): it fell over its budget", flush=True)


async def main(args: argparse.Namespace) -> int:
    broker = LocalBroker()
    # Interrupted (Ctrl-C), the coroutine never finishes: stop the broker
    # on the way out anyway.
    reactor.addSystemEventTrigger("before", "shutdown", broker.destroy)  # type: ignore[attr-defined]
    await deferToThread(broker.start)
    try:
        results: list[tuple[RunResult, RunResult]] = []
        print(
            f"Kiwi slow-client benchmark: {args.count} records of {args.size} bytes at {args.rate:g}/s"
            f" on one Kafka source; {args.stalled} stalled clients vs none; {args.rounds} round(s);"
            f" max_pending_bytes {args.max_pending_bytes or 'default (1 MiB)'}, other flow settings default"
            " (slow_client_timeout_s 30, ping_interval_s 30)",
            flush=True,
        )
        print(
            "RSS MB: Kiwi's VmRSS once every client has subscribed; VmHWM MB: its peak at the end; growth: the"
            " difference. CPU s: Kiwi's CPU time during the run (reactor s: its reactor thread, which does the"
            " fan-out). Outboxes MB: bytes waiting for the stalled clients at the end (shared messages counted"
            " once per client).",
            flush=True,
        )
        print_header()
        for _ in range(args.rounds):
            without = await run_once(broker.bootstrap, args, 0)
            print_result(without, args.count)
            with_stalled = await run_once(broker.bootstrap, args, args.stalled)
            print_result(with_stalled, args.count)
            results.append((without, with_stalled))
    finally:
        await deferToThread(broker.destroy)
    ratios = [w.p99_ms / wo.p99_ms for wo, w in results]
    ratio = sorted(ratios)[len(ratios) // 2]
    growth = max(w.growth_mb for _, w in results)
    delivered_all = all(r.delivered == args.count for pair in results for r in pair)
    checks = [
        (f"peak memory growth with {args.stalled} stalled clients {growth:.1f} MB < {GROWTH_TARGET_MB:g} MB",
         growth < GROWTH_TARGET_MB),
        (f"every record delivered to the reading client ({args.count})", delivered_all),
        (f"p99 ratio (stalled / none){' median of ' + str(len(ratios)) if len(ratios) > 1 else ''}"
         f" {ratio:.2f} <= {P99_RATIO_TARGET:g}", ratio <= P99_RATIO_TARGET),
    ]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}", flush=True)
    return 0 if all(ok for _, ok in checks) else 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slow_clients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=30_000, help="records to produce (default 30000)")
    parser.add_argument("--size", type=int, default=1000, help="bytes per record value (default 1000)")
    parser.add_argument("--rate", type=float, default=3000, help="records per second (default 3000)")
    parser.add_argument("--stalled", type=int, default=20, help="stalled clients (default 20)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="pairs of runs (default 3); the median p99 ratio counts"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=60, help="seconds to wait for delivery after producing (default 60)"
    )
    parser.add_argument(
        "--max-pending-bytes", type=int, help="subscriber.max_pending_bytes for Kiwi (default: Kiwi's, 1 MiB)"
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="run Kiwi under cProfile, save the statistics in DIR and print the top"
    )
    parser.add_argument("--timeout", type=float, default=300, help="give up after this many seconds (default 300)")
    args = parser.parse_args(argv)
    if args.size < 64 or args.count < 1 or args.rate <= 0 or args.stalled < 0 or args.rounds < 1:
        parser.error("--size must be >= 64, --count >= 1, --rate > 0, --stalled >= 0, --rounds >= 1")
    return args


def _entry(_: Any, argv: list[str]) -> Deferred[None]:
    args = parse_args(argv)
    d = Deferred.fromCoroutine(main(args))
    d.addTimeout(args.timeout, reactor)  # type: ignore[arg-type]

    def done(code: object) -> None:
        if isinstance(code, int) and code:
            raise SystemExit(code)

    def failed(failure: Any) -> None:
        if failure.check(TimeoutError, defer.TimeoutError, error.TimeoutError):
            message = f"gave up after {args.timeout:g} s (--timeout)"
        else:
            message = failure.getErrorMessage() or failure.type.__name__
        print(f"benchmark failed: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)

    d.addCallbacks(done, failed)
    return d


if __name__ == "__main__":
    react(_entry, [sys.argv[1:]])
