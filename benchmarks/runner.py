"""
The benchmark run behind C{make bench}: Kiwi and two baselines, side by
side, against a real broker on loopback.

Scenarios (see C{docs/performance.md}):

  - capacity: the load client against a trivial server (its own ceiling);
  - flood: N clients on one Kafka source, M records produced as fast as
    possible; delivered frames/s;
  - latency: N clients, records produced at a fixed rate; produce ->
    receive latency percentiles (the record's C{timestamp} is set by the
    producer, so Kafka is included);
  - idle: RSS per idle, subscribed connection;
  - workers: Kiwi with C{server.workers: 1} and C{2} (skipped, with a
    note, while Kiwi does not know the key).

Every repetition starts each implementation afresh, one at a time, in a
rotating order; the servers run on one CPU, the load client and the broker
on the other. Results go to C{benchmarks/results/} as JSON and a PNG chart.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks import loadclient, report
from benchmarks.servers import (
    IMPLEMENTATIONS,
    KIWI_PENDING_BYTES,
    KiwiServer,
    Server,
    ServerRefused,
    TrivialServer,
    cpu_seconds,
    make_server,
    pin_existing,
    pin_prefix,
    raise_open_files,
    rss_kib,
    usable_cpus,
    wait_rss_stable,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
WARMUP_KEY = b"warmup"  # the load client does not count these records


def _payload(seq: int) -> bytes:
    # 57 bytes of JSON: with Kiwi's envelope and base64 a RESULT frame is
    # about 210 bytes, the "~200-byte frames" of the issue.
    return b'{"seq":"%08d","bid":1.08410,"ask":1.08420,"pad":"xx"}' % seq


class Profile:
    """
    How big each scenario is: the full run or the C{--quick} smoke run.
    """

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.reps = 1 if quick else 3
        # (clients, records): each flood delivers 100k (quick) or 300k frames,
        # about 10 s at the slowest implementation's rate on a busy machine.
        self.flood = [(100, 1000), (1000, 100)] if quick else [(100, 3000), (1000, 300)]
        # (clients, messages per second, seconds)
        self.latency = [(1000, 20, 2.0), (100, 200, 2.0)] if quick else [(1000, 20, 6.0), (100, 200, 6.0)]
        self.idle = [1000] if quick else [1000, 5000]
        # Kiwi delivers a flood 30-70 times as fast as the baselines: given
        # the baselines' record counts its runs would be over in tens of
        # milliseconds, mostly start-up. Each implementation's flood is
        # sized to last seconds at its own speed; rates are compared.
        self.flood_scale = {"kiwi": 10}
        self.workers_flood = (1000, 1000) if quick else (1000, 3000)
        self.capacity = (1000, 300) if quick else (1000, 1000)
        # Seconds after which no new repetition block starts, and after
        # which the workers scenario starts no new run.
        self.budget_s = 150.0 if quick else 720.0
        self.workers_budget_s = 200.0 if quick else 870.0


class Bench:
    """
    One benchmark run: the broker, the producer, the results so far.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.profile = Profile(args.quick)
        if args.reps:
            self.profile.reps = args.reps
        self.started = time.monotonic()
        self.started_at = datetime.datetime.now(datetime.timezone.utc)
        self.runs: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.binary = ""
        self.broker: Any = None
        self.bootstrap = ""
        cpus = usable_cpus()
        self.all_cpus = cpus
        if args.no_pin or len(cpus) < 2:
            if len(cpus) < 2 and not args.no_pin:
                self.note(f"only {len(cpus)} CPU usable: nothing is pinned, figures are not comparable")
            self.server_cpus: list[int] | None = None
            self.client_cpus: list[int] | None = None
        else:
            self.server_cpus = [cpus[0]]
            self.client_cpus = [cpus[1]]
        if shutil.which("taskset") is None and not args.no_pin:
            self.note("taskset not found: nothing is pinned")
        self._flood_producer: Any = None
        self._paced_producer: Any = None

    # Plumbing.

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {text}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"NOTE: {text}", flush=True)

    def loud(self, text: str) -> None:
        self.notes.append(text)
        bar = "!" * 78
        print(f"\n{bar}\n!!! {text}\n{bar}\n", flush=True)

    def over_budget(self, budget: float | None = None) -> bool:
        return time.monotonic() - self.started > (budget or self.profile.budget_s)

    def free_port(self) -> int:
        from tests.integration.broker import free_port

        return free_port()

    def pin(self, cpus: list[int] | None) -> list[str]:
        return pin_prefix(cpus)

    # Kafka.

    def start_broker(self) -> None:
        from tests.integration.broker import LocalBroker

        external = os.environ.get("KIWI_TEST_BOOTSTRAP")
        if external:
            self.bootstrap = external
            self.note(f"using the broker at {external} (KIWI_TEST_BOOTSTRAP); it is not pinned")
            return
        self.broker = LocalBroker()
        self.broker.start()
        # The broker shares the load client's CPU: the server's CPU is the
        # one being measured, so nothing else runs there.
        pin_existing(self.broker.process.pid, self.client_cpus)
        self.bootstrap = self.broker.bootstrap

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.destroy()
            self.broker = None

    def broker_cpu(self) -> float:
        if self.broker is None or self.broker.process is None:
            return 0.0
        return cpu_seconds(self.broker.process.pid)

    def new_topic(self) -> str:
        from tests.integration.broker import create_topic, unique_topic

        topic = unique_topic("kiwi-bench")
        create_topic(self.bootstrap, topic, 1)
        return topic

    def producer(self, paced: bool) -> Any:
        from confluent_kafka import Producer

        if paced:
            if self._paced_producer is None:
                self._paced_producer = Producer(
                    {"bootstrap.servers": self.bootstrap, "linger.ms": 0, "enable.idempotence": False, "acks": 1}
                )
            return self._paced_producer
        if self._flood_producer is None:
            self._flood_producer = Producer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "linger.ms": 5,
                    "batch.num.messages": 10000,
                    "queue.buffering.max.messages": 2000000,
                    "enable.idempotence": False,
                    "acks": 1,
                }
            )
        return self._flood_producer

    def produce_flood(self, topic: str, count: int) -> None:
        producer = self.producer(paced=False)
        for seq in range(count):
            while True:
                try:
                    producer.produce(topic, value=_payload(seq))
                    break
                except BufferError:
                    producer.poll(0.01)
        remaining = producer.flush(60)
        if remaining:
            raise RuntimeError(f"{remaining} records were not acknowledged by the broker")

    def produce_paced(self, topic: str, count: int, rate: float) -> float:
        """
        Produce C{count} records at C{rate} per second; return how late the
        last one was (seconds).
        """
        producer = self.producer(paced=True)
        start = time.monotonic()
        for seq in range(count):
            due = start + seq / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.produce(topic, value=_payload(seq))
            producer.poll(0)
        late = time.monotonic() - (start + (count - 1) / rate)
        producer.flush(30)
        return late

    def warm_up(self, topic: str, client: loadclient.LoadClient, timeout: float = 90.0) -> bool:
        """
        Produce warm-up records until every connection has one: the server's
        consumer is then positioned, and nothing measured can be missed.
        """
        producer = self.producer(paced=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            producer.produce(topic, key=WARMUP_KEY, value=b"{}")
            producer.flush(10)
            if client.wait_for("WARM", 1.0):
                return True
            if client.process.poll() is not None:
                return False
        return False

    # Running one measurement.

    def client(self, port: int, conns: int, expect: int, timeout: float, pin: list[int] | None) -> loadclient.LoadClient:
        return loadclient.LoadClient(
            self.binary, port, conns, expect=expect, timeout=timeout, quiet=15.0, pin=self.pin(pin)
        )

    def delivery_run(
        self,
        server: Server,
        topic: str,
        scenario: str,
        impl: str,
        rep: int,
        conns: int,
        records: int,
        rate: float | None = None,
        client_cpus: list[int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """
        Connect C{conns} clients, warm up, produce C{records} (flat out, or
        at C{rate} per second) and collect what the clients received.
        """
        run: dict[str, Any] = {
            "scenario": scenario,
            "impl": impl,
            "rep": rep,
            "conns": conns,
            "records": records,
            "rate": rate,
            "expected": conns * records,
            **(extra or {}),
        }
        expected_s = (records / rate) if rate else conns * records / 20000.0
        timeout = 60 + conns / 50 + expected_s * 3
        client = self.client(server.port, conns, records, timeout, client_cpus)
        try:
            if not client.wait_for("READY", 30 + conns / 20):
                raise RuntimeError("the clients did not all subscribe: " + " | ".join(client.lines[-5:]))
            if not self.warm_up(topic, client):
                raise RuntimeError("the warm-up record never reached every client: " + " | ".join(client.lines[-5:]))
            server_cpu0 = cpu_seconds(server.pid)
            client_cpu0 = cpu_seconds(client.pid)
            broker_cpu0 = self.broker_cpu()
            t0 = time.monotonic()
            if rate:
                run["producer_late_s"] = round(self.produce_paced(topic, records, rate), 4)
            else:
                self.produce_flood(topic, records)
            run["produce_s"] = round(time.monotonic() - t0, 4)
            result = client.finish(timeout)
            t1 = time.monotonic()
            server_cpu1 = cpu_seconds(server.pid)
            broker_cpu1 = self.broker_cpu()
        except Exception as e:
            client.stop()
            run["error"] = str(e)
            self.loud(f"{scenario} {impl} {conns} clients rep {rep}: {e}")
            self.runs.append(run)
            return run
        window = t1 - t0
        client_cpu = result["cpu_user_s"] + result["cpu_sys_s"] - client_cpu0
        delivered = result["frames_total"]
        # Delivered frames per second from the first record produced to the
        # last frame received: a server that holds frames back and writes
        # them in one burst gets no credit for the burst.
        span = result["last_frame_mono"] - t0
        frames_per_s = delivered / span if delivered and span > 0 else 0.0
        run.update(
            {
                "delivered": delivered,
                "loss": run["expected"] - delivered,
                "failed_connections": result["failed"],
                "close_codes": result["close_codes"],
                "notices": result["notices"],
                "frames_per_s": round(frames_per_s, 1),
                # Noise-robust on a shared machine: what the server did with
                # the CPU time it was given, not how much it was given.
                "frames_per_cpu_s": round(delivered / (server_cpu1 - server_cpu0), 1)
                if server_cpu1 > server_cpu0
                else None,
                "burst_frames_per_s": result["frames_per_s"],
                "span_s": round(span, 4),
                "latency_ms": result["latency_ms"],
                "stop_reason": result["stop_reason"],
                "window_s": round(window, 3),
                "cpu": {
                    "server_s": round(server_cpu1 - server_cpu0, 3),
                    "server_util": round((server_cpu1 - server_cpu0) / window, 3),
                    "client_s": round(client_cpu, 3),
                    "client_util": round(client_cpu / window, 3),
                    "broker_s": round(broker_cpu1 - broker_cpu0, 3),
                },
                "frames_per_conn_min": result["frames_per_conn_min"],
                "frames_per_conn_max": result["frames_per_conn_max"],
            }
        )
        if run["loss"] != 0 or result["failed"]:
            run["per_conn"] = result["per_conn"]
            self.loud(
                f"LOSS: {scenario} {impl} {conns} clients rep {rep}: delivered {delivered} of {run['expected']} "
                f"({result['failed']} connections failed, close codes {result['close_codes']}, "
                f"stop: {result['stop_reason']})"
            )
        if run["cpu"]["client_util"] > 0.8:
            self.loud(
                f"{scenario} {impl} {conns} clients rep {rep}: the load client used "
                f"{run['cpu']['client_util']:.0%} of a core; it may be the bottleneck of this run"
            )
        lat = result["latency_ms"]
        self.say(
            f"  {scenario:8} {IMPLEMENTATIONS.get(impl, impl):18} {conns:5} clients: "
            f"{frames_per_s:>10,.0f} frames/s  p50 {lat['p50']:.1f} ms  p99 {lat['p99']:.1f} ms  "
            f"delivered {delivered}/{run['expected']}  cpu server {run['cpu']['server_util']:.0%} "
            f"client {run['cpu']['client_util']:.0%}"
        )
        self.runs.append(run)
        return run

    def idle_runs(self, server: Server, topic: str, impl: str, rep: int) -> None:
        """
        RSS per idle, subscribed connection, at each size of the profile.
        """
        primer = self.client(server.port, 1, 0, 120, self.client_cpus)
        try:
            if not (primer.wait_for("READY", 30) and self.warm_up(topic, primer)):
                raise RuntimeError("the priming connection got no warm-up record")
        except Exception as e:
            primer.stop()
            self.loud(f"idle {impl} rep {rep}: {e}")
            self.runs.append({"scenario": "idle", "impl": impl, "rep": rep, "error": str(e)})
            return
        primer.stop()
        base = wait_rss_stable(server.pid)
        clients: list[loadclient.LoadClient] = []
        held = 0
        try:
            for size in self.profile.idle:
                run: dict[str, Any] = {"scenario": "idle", "impl": impl, "rep": rep, "conns": size}
                client = self.client(server.port, size - held, 0, 600, self.client_cpus)
                clients.append(client)
                if not client.wait_for("READY", 60 + size / 20):
                    raise RuntimeError(f"{size - held} more connections did not all subscribe")
                subscribed = int(next(l for l in client.lines if l.startswith("READY")).split()[1])
                if subscribed != size - held:
                    raise RuntimeError(f"only {subscribed} of {size - held} more connections subscribed")
                held = size
                rss = wait_rss_stable(server.pid)
                run.update(
                    {
                        "rss_base_kib": base,
                        "rss_kib": rss,
                        "per_conn_kib": round((rss - base) / size, 2),
                    }
                )
                self.say(f"  idle     {IMPLEMENTATIONS[impl]:18} {size:5} connections: {run['per_conn_kib']:.1f} KiB each")
                self.runs.append(run)
        except Exception as e:
            self.loud(f"idle {impl} rep {rep}: {e}")
            self.runs.append({"scenario": "idle", "impl": impl, "rep": rep, "error": str(e)})
        finally:
            for client in clients:
                report_ = client.stop()
                if report_["failed"]:
                    self.loud(f"idle {impl} rep {rep}: {report_['failed']} held connections failed")
        # Let the server notice the disconnections before the next scenario.
        time.sleep(2.0)

    # Scenarios.

    def capacity(self) -> None:
        """
        The load client against a server that only copies pre-built frames.
        """
        conns, frames = self.profile.capacity
        self.say(f"capacity: the load client against a trivial server ({conns} clients x {frames} frames)")
        server = TrivialServer(self.free_port(), self.server_cpus, conns, frames)
        server.start()
        client = self.client(server.port, conns, frames, 120, self.client_cpus)
        try:
            ok = client.wait_for("WARM", 60)
            result = client.finish(120)
        finally:
            server.stop()
        run = {
            "scenario": "capacity",
            "impl": "trivial",
            "rep": 1,
            "conns": conns,
            "records": frames,
            "expected": conns * frames,
            "delivered": result["frames_total"],
            "loss": conns * frames - result["frames_total"],
            "frames_per_s": result["frames_per_s"],
            "duration_s": result["duration_s"],
            "client_cpu_s": result["cpu_user_s"] + result["cpu_sys_s"],
            "warm": ok,
        }
        if result["duration_s"] > 0:
            # The client's CPU over its whole life (connecting included) per
            # second of receiving: an upper bound of its load while flooded.
            run["client_cpu_per_frame_us"] = round(run["client_cpu_s"] / max(1, result["frames_total"]) * 1e6, 3)
        self.runs.append(run)
        self.say(
            f"  capacity: {result['frames_per_s']:,.0f} frames/s received "
            f"({result['frames_total']}/{conns * frames} frames, client CPU {run['client_cpu_s']:.2f} s)"
        )

    def main_block(self, impl: str, rep: int) -> None:
        """
        One implementation, one repetition: idle memory first (on a fresh
        process), then floods and paced latency on the same process.
        """
        topic = self.new_topic()
        port = self.free_port()
        server = make_server(impl, port, self.server_cpus, self.bootstrap, topic)
        self.say(f"{server.label}, repetition {rep}: starting (topic {topic}, port {port})")
        try:
            server.start()
        except Exception as e:
            self.loud(f"{server.label} did not start: {e}")
            self.runs.append({"scenario": "start", "impl": impl, "rep": rep, "error": str(e)[-2000:]})
            return
        try:
            scenarios = self.args.scenarios
            if "idle" in scenarios:
                self.idle_runs(server, topic, impl, rep)
            if "flood" in scenarios:
                for conns, records in self.profile.flood:
                    self.alive_or_raise(server)
                    records *= self.profile.flood_scale.get(impl, 1)
                    self.delivery_run(server, topic, "flood", impl, rep, conns, records, client_cpus=self.client_cpus)
            if "latency" in scenarios:
                for conns, rate, seconds in self.profile.latency:
                    self.alive_or_raise(server)
                    self.delivery_run(
                        server, topic, "latency", impl, rep, conns, int(rate * seconds), rate=rate,
                        client_cpus=self.client_cpus,
                    )
        except Exception as e:
            self.loud(f"{server.label} repetition {rep} stopped: {e}")
        finally:
            if "Traceback" in server.output:
                self.loud(f"{server.label} logged a traceback:\n{server.output[-3000:]}")
            server.stop()

    def alive_or_raise(self, server: Server) -> None:
        if server.process is None or server.process.poll() is not None:
            raise RuntimeError(f"{server.label} died:\n{server.output[-3000:]}")

    def workers(self) -> None:
        """
        Kiwi with one and with two workers, unpinned (both cores).
        """
        conns, records = self.profile.workers_flood
        for rep in range(1, self.profile.reps + 1):
            for count in (2, 1) if rep % 2 else (1, 2):
                if self.over_budget(self.profile.workers_budget_s):
                    self.note(f"time budget spent: workers repetition {rep} skipped")
                    return
                topic = self.new_topic()
                server = KiwiServer(self.free_port(), self.all_cpus, self.bootstrap, topic, workers=count)
                try:
                    server.start()
                except ServerRefused as e:
                    if "workers" in e.output:
                        self.loud(
                            "workers scenario SKIPPED: this Kiwi refuses server.workers "
                            f"({e.output.strip().splitlines()[-1].strip()})"
                        )
                        self.runs.append({"scenario": "workers", "skipped": e.output.strip()[-500:]})
                        return
                    raise
                try:
                    self.say(f"{server.label}, repetition {rep}")
                    self.delivery_run(
                        server, topic, "workers", "kiwi", rep, conns, records,
                        client_cpus=self.all_cpus, extra={"workers": count},
                    )
                finally:
                    server.stop()

    def guard(self, name: str, scenario: Callable[..., None], *args: Any) -> None:
        """
        Run one scenario; a failure is reported and recorded, and the run
        goes on with the next one.
        """
        try:
            scenario(*args)
        except Exception as e:
            import traceback

            self.loud(f"{name} failed: {e}\n{traceback.format_exc()}")
            self.runs.append({"scenario": name, "error": str(e)[-2000:]})

    def run(self) -> int:
        if self.client_cpus:
            # The runner (its producers' threads included) stays off the
            # servers' CPU too.
            os.sched_setaffinity(0, self.client_cpus)
        self.binary = loadclient.build(self.args.work_dir)
        self.say(f"load client built: {self.binary}")
        limit = raise_open_files()
        if limit < max(self.profile.idle) * 2 + 1000:
            self.note(f"open-file limit is {limit}: the largest idle run may fail")
        try:
            self.start_broker()
            self.say(f"broker at {self.bootstrap}; servers on CPUs {self.server_cpus}, clients on {self.client_cpus}")
            if "capacity" in self.args.scenarios:
                self.guard("capacity", self.capacity)
            impls = list(self.args.impls)
            if not {"idle", "flood", "latency"} & set(self.args.scenarios):
                impls = []
            for rep in range(1, self.profile.reps + 1):
                order = impls[rep - 1 :] + impls[: rep - 1]  # rotate, so no one always goes first
                for impl in order:
                    if self.over_budget():
                        self.note(f"time budget ({self.profile.budget_s:.0f}s) spent: {impl} repetition {rep} skipped")
                        continue
                    self.guard(f"{impl} repetition {rep}", self.main_block, impl, rep)
            if "workers" in self.args.scenarios:
                self.guard("workers", self.workers)
        finally:
            for producer in (self._flood_producer, self._paced_producer):
                if producer is not None:
                    producer.flush(5)
            # Gone before the broker, or their threads log its absence.
            self._flood_producer = self._paced_producer = None
            self.stop_broker()
        return 0

    def results(self) -> dict[str, Any]:
        return {
            "meta": {
                "started": self.started_at.isoformat(timespec="seconds"),
                "elapsed_s": round(time.monotonic() - self.started, 1),
                "quick": self.profile.quick,
                "reps": self.profile.reps,
                "profile": {
                    "flood": self.profile.flood,
                    "latency": self.profile.latency,
                    "idle": self.profile.idle,
                    "flood_scale": self.profile.flood_scale,
                    "workers_flood": self.profile.workers_flood,
                    "capacity": self.profile.capacity,
                },
                "server_cpus": self.server_cpus,
                "client_cpus": self.client_cpus,
                "kiwi_commit": _git_commit(),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "loadavg_end": os.getloadavg(),
                "versions": _versions(),
                "kiwi_max_pending_bytes": KIWI_PENDING_BYTES,
            },
            "notes": self.notes,
            "runs": self.runs,
        }


def _git_commit() -> str | None:
    """
    The last commit that changed C{kiwi/} (the code under test), with
    C{+dirty} when C{kiwi/} has uncommitted changes.
    """
    try:
        out = subprocess.run(
            ["git", "-C", ROOT, "log", "-1", "--format=%h", "--", "kiwi"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "kiwi"], capture_output=True, text=True)
        return out + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("twisted", "autobahn", "websockets", "confluent-kafka", "noida-db"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


ALL_SCENARIOS = ("capacity", "idle", "flood", "latency", "workers")


def _list(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(allowed)}")
        return items

    return parse


def _report_again(path: str) -> int:
    with open(path) as f:
        data = json.load(f)
    data["summary"] = report.summarize(data["runs"])
    data["targets"] = report.targets(data["summary"], data["runs"])
    base = os.path.splitext(path)[0]
    with open(base + ".json", "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    report.chart(data, base + ".png")
    print(report.table(data))
    print(f"\nwrote {base}.json and {base}.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Kiwi's benchmarks: fan-out, latency, idle memory and workers, against two baselines.",
    )
    parser.add_argument("--quick", action="store_true", help="a ~2-minute smoke run (smaller sizes, 1 repetition)")
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default 3, or 1 with --quick)")
    parser.add_argument(
        "--scenarios", type=_list(ALL_SCENARIOS), default=list(ALL_SCENARIOS), help="comma-separated subset"
    )
    parser.add_argument(
        "--impls", type=_list(tuple(IMPLEMENTATIONS)), default=list(IMPLEMENTATIONS), help="comma-separated subset"
    )
    parser.add_argument("--out", default=RESULTS, help="where the JSON and PNG go (default benchmarks/results)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and clients to CPUs")
    parser.add_argument("--work-dir", default=None, help="where to build the load client (default: a temporary one)")
    parser.add_argument(
        "--report", metavar="JSON", default=None,
        help="measure nothing: summarize an earlier results file again (table and chart next to it)",
    )
    args = parser.parse_args(argv)
    if args.report:
        return _report_again(args.report)
    own_work_dir = args.work_dir is None
    if own_work_dir:
        args.work_dir = tempfile.mkdtemp(prefix="kiwi-bench-")

    bench = Bench(args)
    try:
        bench.run()
    except KeyboardInterrupt:
        bench.loud("interrupted: writing what was measured so far")
    data = bench.results()
    data["summary"] = report.summarize(data["runs"])
    data["targets"] = report.targets(data["summary"], data["runs"])
    paths = report.write(data, args.out)
    print()
    print(report.table(data))
    print()
    for path in paths:
        print(f"wrote {os.path.relpath(path)}")
    if own_work_dir:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
