"""
A real headless Chromium for the dashboard test, driven through the
DevTools protocol over a WebSocket (with Autobahn).

Debian's C{chromium} package is installed when it is missing (the machines
this suite runs on are Debian, and the tests run as root there; see
L{ensure_chromium}).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody

from tests.integration.polling import wait_until

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def ensure_chromium() -> str:
    """
    The path of Chromium, installing Debian's C{chromium} package first if
    it is missing. Blocking (minutes on first use): call it in a thread.

    @raise RuntimeError: with apt's output if the install fails.
    """
    found = chromium_path()
    if found:
        return found
    # Parallel trial workers must not run apt-get at the same time.
    with open(os.path.join(tempfile.gettempdir(), "kiwi-test-chromium-install.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = chromium_path()
        if found:
            return found
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        for command in (sudo + ["apt-get", "update"], sudo + ["apt-get", "install", "-y", "chromium"]):
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                )
    found = chromium_path()
    if not found:
        raise RuntimeError("apt-get installed chromium but no chromium binary is on PATH")
    return found


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.exited: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.exited.callback(None)


class _DevToolsProtocol(WebSocketClientProtocol):
    factory: _DevToolsFactory

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        waiting = self.factory.calls.pop(message.get("id"), None)
        if waiting is not None:
            if "error" in message:
                waiting.errback(RuntimeError(f"DevTools error: {message['error']}"))
            else:
                waiting.callback(message.get("result", {}))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.is_closed = True
        for call in self.factory.calls.values():
            call.errback(ConnectionError("DevTools connection closed"))
        self.factory.calls.clear()


class _DevToolsFactory(WebSocketClientFactory):
    protocol = _DevToolsProtocol

    def __init__(self, url: str) -> None:
        super().__init__(url)
        # Chromium's DevTools messages (screenshots) can be large.
        self.setProtocolOptions(maxFramePayloadSize=0, maxMessagePayloadSize=0, autoPingInterval=0)
        self.opened: Deferred[_DevToolsProtocol] = Deferred()
        self.calls: dict[int, Deferred[dict[str, Any]]] = {}
        self.is_closed = False


class Browser:
    """
    One headless Chromium with one page.
    """

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.profile = tempfile.mkdtemp(prefix="kiwi-test-chromium-")
        self._process: Any = None
        self._output = _Output()
        self._connection: _DevToolsProtocol | None = None
        self._next_id = 0

    @property
    def output(self) -> str:
        return self._output.output.decode("utf-8", "replace")[-4000:]

    async def start(self, timeout: float = 90.0) -> None:
        args = [self.executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        self._process = reactor.spawnProcess(
            self._output, args[0], args, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"}
        )
        active = os.path.join(self.profile, "DevToolsActivePort")

        def port() -> int | None:
            if self._output.exited.called:
                raise AssertionError(f"chromium exited early:\n{self.output}")
            try:
                with open(active) as f:
                    first = f.readline().strip()
            except OSError:
                return None
            return int(first) if first.isdigit() else None

        debug_port = await wait_until(port, timeout, what=lambda: f"chromium's DevTools port; output:\n{self.output}")
        pages: list[dict[str, Any]] = []

        async def list_pages() -> bool:
            nonlocal pages
            response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{debug_port}/json/list".encode())
            pages = [p for p in json.loads(await readBody(response)) if p.get("type") == "page"]
            return bool(pages)

        deadline = time.monotonic() + timeout
        while not await list_pages():
            assert time.monotonic() < deadline, "chromium has no page"
        factory = _DevToolsFactory(pages[0]["webSocketDebuggerUrl"])
        connectWS(factory, timeout=timeout)
        self._connection = await factory.opened
        await self.call("Page.enable")
        await self.call("Runtime.enable")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """
        One DevTools command; its result.
        """
        assert self._connection is not None
        self._next_id += 1
        d: Deferred[dict[str, Any]] = Deferred()
        self._connection.factory.calls[self._next_id] = d
        self._connection.sendMessage(json.dumps({"id": self._next_id, "method": method, "params": params}).encode())
        return await d

    async def navigate(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        """
        The value of a JavaScript expression in the page.
        """
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"page raised: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0, what: str = "condition") -> Any:
        """
        Poll C{expression} in the page until it is truthy.
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            last = await self.evaluate(expression)
            if last:
                return last
            if time.monotonic() > deadline:
                text = await self.evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''")
                raise AssertionError(f"timed out waiting for {what} ({expression!r}); page text:\n{text}")
            from twisted.internet.task import deferLater

            await deferLater(reactor, 0.1, lambda: None)

    async def screenshot(self, path: str) -> None:
        """
        Save a PNG of the page at C{path}.
        """
        result = await self.call("Page.captureScreenshot", format="png")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(result["data"]))

    async def stop(self) -> None:
        if self._connection is not None and not self._connection.factory.is_closed:
            self._connection.dropConnection(abort=True)
        if self._process is not None and not self._output.exited.called:
            self._process.signalProcess("TERM")
            try:
                await wait_until(lambda: self._output.exited.called, 20, what="chromium to exit")
            except AssertionError:
                self._process.signalProcess("KILL")
                await wait_until(lambda: self._output.exited.called, 10, what="chromium to die")
        shutil.rmtree(self.profile, ignore_errors=True)
