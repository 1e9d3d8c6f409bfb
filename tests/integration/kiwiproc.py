"""
Run Kiwi for real: C{twistd -n kiwi} in a child process, on a free loopback
port, with a configuration written to a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import yaml
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody

from tests.integration.polling import wait_until

_LISTENING = re.compile(r"Kiwi listening on [^\s]+:(\d+)")


def twistd_path() -> str:
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    return candidate if os.path.exists(candidate) else "twistd"


def twistd_kiwi(config_path: str, *kiwi_options: str, twistd_options: Sequence[str] = ()) -> list[str]:
    """
    The command line of C{twistd -n kiwi --config config_path}, in the
    foreground, without a pid file.
    """
    return [twistd_path(), "-n", "--pidfile=", *twistd_options, "kiwi", "--config", config_path, *kiwi_options]


def _config_text(config: dict[str, Any] | str) -> str:
    """
    A configuration as YAML text; a mapping listens on a free loopback
    port unless it names its own endpoint.
    """
    if isinstance(config, str):
        return config
    config = dict(config)
    config.setdefault("server", {"listen": "tcp:0:interface=127.0.0.1"})
    return yaml.safe_dump(config)


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.exit_code: int | None = None
        self.exited: Deferred[int | None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.exited.callback(self.exit_code)


class KiwiProcess:
    """
    One Kiwi process. C{config} is the YAML document as Python data; when it
    has no C{server} section, Kiwi listens on a free loopback port.
    """

    def __init__(
        self, config: dict[str, Any] | str, log_level: str = "info", env: dict[str, str] | None = None
    ) -> None:
        self.directory = tempfile.mkdtemp(prefix="kiwi-test-")
        self.config_path = os.path.join(self.directory, "kiwi.yaml")
        with open(self.config_path, "w") as f:
            f.write(_config_text(config))
        self.log_level = log_level
        self.env = env or {}
        self.port: int | None = None
        self._process: Any = None
        self._protocol = _Output()

    def rewrite(self, config: dict[str, Any] | str) -> None:
        """
        Replace the configuration file (as an editor would), keeping the
        listening endpoint unless C{config} names one.
        """
        temporary = self.config_path + ".new"
        with open(temporary, "w") as f:
            f.write(_config_text(config))
        os.replace(temporary, self.config_path)

    def signal(self, name: str) -> None:
        """
        Send a signal (C{"HUP"}, C{"TERM"}, ...) to Kiwi.
        """
        self._process.signalProcess(name)

    async def wait_output(self, text: str, timeout: float = 30.0, after: int = 0) -> None:
        """
        Wait until Kiwi's output (from character C{after} on) contains C{text}.
        """
        await wait_until(
            lambda: text in self.output[after:], timeout, what=lambda: f"{text!r} in output:\n{self.output}"
        )

    @property
    def output(self) -> str:
        return self._protocol.output.decode("utf-8", "replace")

    @property
    def exit_code(self) -> int | None:
        return self._protocol.exit_code

    def spawn(self) -> None:
        """
        Start twistd without waiting for it to listen.
        """
        args = twistd_kiwi(self.config_path, "--log-level", self.log_level)
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        self._process = reactor.spawnProcess(
            self._protocol, args[0], args, env=env, path=self.directory, childFDs={0: "w", 1: "r", 2: "r"}
        )

    async def start(self, timeout: float = 30.0) -> int:
        """
        Start Kiwi and return the port it listens on.
        """
        self.spawn()

        def listening() -> int | None:
            match = _LISTENING.search(self.output)
            if match:
                return int(match.group(1))
            if self._protocol.exit_code is not None or self._protocol.exited.called:
                raise AssertionError(f"Kiwi exited early:\n{self.output}")
            return None

        self.port = await wait_until(listening, timeout, what=lambda: f"Kiwi to listen; output:\n{self.output}")
        return self.port

    async def wait_exit(self, timeout: float = 20.0) -> int | None:
        await wait_until(lambda: self._protocol.exited.called, timeout, what="Kiwi to exit")
        return self._protocol.exit_code

    async def stop(self, timeout: float = 20.0) -> int | None:
        """
        Send SIGTERM and wait for Kiwi to exit; kill it if it does not.
        """
        if self._process is None or self._protocol.exited.called:
            return self._protocol.exit_code
        self._process.signalProcess("TERM")
        try:
            return await self.wait_exit(timeout)
        except AssertionError:
            self._process.signalProcess("KILL")
            await self.wait_exit(10)
            raise AssertionError(f"Kiwi did not stop on SIGTERM within {timeout}s:\n{self.output}")

    async def get(self, path: str) -> tuple[int, dict[str, list[str]], bytes]:
        """
        An HTTP GET to Kiwi: status, headers and body.
        """
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{self.port}{path}".encode())
        body = await readBody(response)
        headers = {k.decode().lower(): [v.decode() for v in vs] for k, vs in response.headers.getAllRawHeaders()}
        return response.code, headers, body

    async def health(self) -> dict[str, Any]:
        code, _, body = await self.get("/health")
        assert code == 200, (code, body)
        result: dict[str, Any] = json.loads(body)
        return result

    async def wait_source_state(self, source_id: str, state: str, timeout: float = 30.0) -> None:
        """
        Poll C{/health} until a source reports C{state}.
        """
        last: dict[str, Any] = {}

        async def check() -> bool:
            nonlocal last
            last = await self.health()
            return bool(last["sources"].get(source_id, {}).get("state") == state)

        import time

        from twisted.internet.task import deferLater

        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{source_id} never reached {state!r}; last health: {last}\n{self.output}")
            await deferLater(reactor, 0.05, lambda: None)
