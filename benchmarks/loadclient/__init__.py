"""
The C load client: building it with gcc and driving one run of it.

See C{loadclient.c} for what it does and the lines it prints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loadclient.c")

CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11")


class BuildError(Exception):
    """
    gcc is missing or refused the source.
    """


def build(directory: str | None = None, compiler: str | None = None) -> str:
    """
    Compile the load client and return the path of the binary.

    @param directory: Where to put it (a new temporary directory if
        C{None}); nothing is ever written next to the source.
    """
    compiler = compiler or os.environ.get("CC") or "gcc"
    if shutil.which(compiler) is None:
        raise BuildError(f"{compiler} is not installed; the benchmarks need a C compiler (apt-get install gcc)")
    directory = directory or tempfile.mkdtemp(prefix="kiwi-loadclient-")
    binary = os.path.join(directory, "loadclient")
    result = subprocess.run(
        [compiler, *CFLAGS, "-o", binary, SOURCE], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BuildError(f"{compiler} failed to build {SOURCE}:\n{result.stdout}{result.stderr}")
    return binary


class LoadClient:
    """
    One running load client: its milestones (C{READY}, C{WARM}) as they
    are printed, and its JSON report at the end.
    """

    def __init__(
        self,
        binary: str,
        port: int,
        conns: int,
        expect: int = 0,
        source: str = "bench",
        timeout: float = 120.0,
        quiet: float = 10.0,
        pin: Sequence[str] = (),
        concurrency: int = 32,
    ) -> None:
        self.conns = conns
        self.expect = expect
        args = [
            *pin,
            binary,
            "--port",
            str(port),
            "--conns",
            str(conns),
            "--source",
            source,
            "--expect",
            str(expect),
            "--timeout",
            str(timeout),
            "--quiet",
            str(quiet),
            "--concurrency",
            str(concurrency),
        ]
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.lines: list[str] = []
        self._seen: set[str] = set()
        self._changed = threading.Condition()
        self._stdout = b""
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self._stdout_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._stdout_reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._changed:
                self.lines.append(line)
                self._seen.add(line.split(" ", 1)[0])
                self._changed.notify_all()
        with self._changed:
            self._seen.add("EOF")
            self._changed.notify_all()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self._stdout = self.process.stdout.read()

    def wait_for(self, word: str, timeout: float) -> bool:
        """
        Wait until the client prints C{word} (C{READY}, C{WARM}); C{False}
        if it did not within C{timeout} or it exited first.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while word not in self._seen:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or "EOF" in self._seen:
                    return word in self._seen
                self._changed.wait(min(remaining, 0.5))
        return True

    def finish(self, timeout: float) -> dict[str, Any]:
        """
        Wait for the client to stop by itself and return its report.
        """
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.stop()
        return self._report()

    def stop(self) -> dict[str, Any]:
        """
        Close the client's stdin (it stops and reports) and return the report.
        """
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self._report()

    def _report(self) -> dict[str, Any]:
        self._stdout_reader.join(10)
        try:
            report: dict[str, Any] = json.loads(self._stdout)
        except ValueError:
            raise RuntimeError(
                f"load client (exit {self.process.returncode}) printed no report; stderr:\n" + "\n".join(self.lines[-20:])
            ) from None
        report["stderr_tail"] = self.lines[-10:]
        return report
