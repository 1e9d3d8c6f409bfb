"""
The processes a benchmark run starts: Kiwi (C{twistd -n kiwi}), the two
baselines, and a trivial server that measures the load client itself; plus
pinning, RSS and CPU accounting through C{/proc}.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import yaml

from tests.integration.kiwiproc import twistd_kiwi

HERE = os.path.dirname(os.path.abspath(__file__))
BASELINES = os.path.join(HERE, "baselines")
SOURCE_ID = "bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

KIWI_PENDING_BYTES = 16 * 1024 * 1024
"""
C{subscriber.max_pending_bytes} for the benchmark: the baselines queue
without limit, so Kiwi gets a budget no flood here can reach, and a run
that drops anything is a real loss, not a budget decision.
"""


class ServerRefused(Exception):
    """
    The server exited while starting; C{output} has what it printed.
    """

    def __init__(self, name: str, output: str) -> None:
        super().__init__(f"{name} exited while starting:\n{output}")
        self.output = output


# Processes.


def raise_open_files() -> int:
    """
    Raise this process's open-file limit to its hard limit (children
    inherit it) and return the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin_prefix(cpus: Sequence[int] | None) -> list[str]:
    """
    A C{taskset} prefix that runs a command on C{cpus}, or nothing when
    pinning is off or impossible.
    """
    if not cpus or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", ",".join(str(c) for c in cpus)]


def pin_existing(pid: int, cpus: Sequence[int] | None) -> None:
    """
    Move a running process, its descendants (the C{noida-db} command is a
    launcher whose child is the broker) and all their threads to C{cpus}.
    """
    if cpus and shutil.which("taskset") is not None:
        for member in process_tree(pid):
            subprocess.run(
                ["taskset", "-a", "-p", "-c", ",".join(str(c) for c in cpus), str(member)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return found


def process_tree(pid: int) -> list[int]:
    """
    C{pid} and all its descendants (for Kiwi with several workers).
    """
    tree = [pid]
    index = 0
    while index < len(tree):
        tree.extend(_children(tree[index]))
        index += 1
    return tree


def rss_kib(pid: int) -> int:
    """
    The resident set of C{pid} and its descendants, in KiB (C{VmRSS}).
    """
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU time of C{pid} and its living descendants.
    """
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLOCK_TICKS


def wait_rss_stable(pid: int, timeout: float = 5.0, interval: float = 0.5) -> int:
    """
    Sample RSS until two samples in a row agree within 1% (or C{timeout}).
    """
    deadline = time.monotonic() + timeout
    last = rss_kib(pid)
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = rss_kib(pid)
        if abs(now - last) <= max(64, last // 100):
            return now
        last = now
    return last


# Servers.


class Server:
    """
    A server under test, as a child process with its output in a log file.
    """

    name = "server"
    label = "server"

    def __init__(self, port: int, pin: Sequence[int] | None) -> None:
        self.port = port
        self.pin = list(pin) if pin else []
        self.directory = tempfile.mkdtemp(prefix=f"kiwi-bench-{self.name}-")
        self.log_path = os.path.join(self.directory, "output.log")
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def output(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self, timeout: float = 60.0) -> None:
        """
        Start the server and return once it is ready for clients.

        @raise ServerRefused: if it exits first.
        """
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                pin_prefix(self.pin) + self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerRefused(self.label, self.output)
            if self.ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.label} was not ready within {timeout}s:\n{self.output[-3000:]}")

    def ready(self) -> bool:
        return "READY" in self.output

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            except ProcessLookupError:
                pass
        self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _profile_options() -> list[str]:
    path = os.environ.get("KIWI_BENCH_PROFILE")
    return [f"--profile={path}", "--profiler=cprofile", "--savestats"] if path else []


class KiwiServer(Server):
    """
    Kiwi as users run it: C{twistd -n kiwi --config ...}, one Kafka source.
    """

    name = "kiwi"
    label = "Kiwi"

    def __init__(
        self, port: int, pin: Sequence[int] | None, bootstrap: str, topic: str, workers: int | None = None
    ) -> None:
        super().__init__(port, pin)
        server: dict[str, Any] = {"listen": f"tcp:{port}:interface=127.0.0.1"}
        if workers is not None:
            server["workers"] = workers
            self.label = f"Kiwi (workers: {workers})"
        config = {
            "sources": [{"type": "kafka", "topic": topic, "id": SOURCE_ID}],
            "kafka": {"bootstrap_servers": [bootstrap]},
            "server": server,
            "subscriber": {"max_pending_bytes": KIWI_PENDING_BYTES},
        }
        self.config_path = os.path.join(self.directory, "kiwi.yaml")
        with open(self.config_path, "w") as f:
            yaml.safe_dump(config, f)

    def command(self) -> list[str]:
        return twistd_kiwi(self.config_path, "--log-level", "warn", twistd_options=_profile_options())

    _answering_since: float | None = None

    def ready(self) -> bool:
        """
        Ready when C{/health} shows the source running; or, should its
        layout differ (several workers), once it has answered for 10 s: the
        warm-up record then proves every consumer is positioned anyway.
        """
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                health = json.loads(response.read())
        except (OSError, ValueError, urllib.error.URLError):
            return False
        if self._answering_since is None:
            self._answering_since = time.monotonic()
        sources = health.get("sources", {}) if isinstance(health, dict) else {}
        if isinstance(sources, dict) and sources.get(SOURCE_ID, {}).get("state") == "running":
            return True
        return time.monotonic() - self._answering_since > 10


class BaselineServer(Server):
    """
    One of the baselines in C{benchmarks/baselines/}.
    """

    def __init__(
        self, name: str, label: str, script: str, port: int, pin: Sequence[int] | None, bootstrap: str, topic: str
    ) -> None:
        self.name = name
        self.label = label
        super().__init__(port, pin)
        self.script = os.path.join(BASELINES, script)
        self.bootstrap = bootstrap
        self.topic = topic

    def command(self) -> list[str]:
        return [
            sys.executable,
            self.script,
            "--port",
            str(self.port),
            "--bootstrap",
            self.bootstrap,
            "--topic",
            self.topic,
            "--source-id",
            SOURCE_ID,
        ]


class TrivialServer(Server):
    """
    A server that does nothing but write pre-built frames: what the load
    client can take when the server is not the limit.
    """

    name = "trivial"
    label = "trivial server"

    def __init__(self, port: int, pin: Sequence[int] | None, conns: int, frames: int) -> None:
        super().__init__(port, pin)
        self.conns = conns
        self.frames = frames

    def command(self) -> list[str]:
        return [
            sys.executable,
            os.path.join(HERE, "loadclient", "trivial_server.py"),
            "--port",
            str(self.port),
            "--conns",
            str(self.conns),
            "--frames",
            str(self.frames),
        ]


IMPLEMENTATIONS = {
    "kiwi": "Kiwi",
    "websockets": "websockets bridge",
    "autobahn": "naive Autobahn",
}


def make_server(
    impl: str, port: int, pin: Sequence[int] | None, bootstrap: str, topic: str, workers: int | None = None
) -> Server:
    """
    The server for implementation C{impl} (a key of L{IMPLEMENTATIONS}).
    """
    if impl == "kiwi":
        return KiwiServer(port, pin, bootstrap, topic, workers)
    if impl == "websockets":
        return BaselineServer(impl, IMPLEMENTATIONS[impl], "websockets_bridge.py", port, pin, bootstrap, topic)
    if impl == "autobahn":
        return BaselineServer(impl, IMPLEMENTATIONS[impl], "autobahn_naive.py", port, pin, bootstrap, topic)
    raise ValueError(f"unknown implementation {impl!r} (expected one of {', '.join(IMPLEMENTATIONS)})")
