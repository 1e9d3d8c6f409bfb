"""
A small Autobahn WebSocket client for integration tests: it records every
message and lets a test wait, against a deadline, for what it expects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from tests.integration.polling import wait_until


class RecordingClientProtocol(WebSocketClientProtocol):
    """
    Keeps every text message, parsed, in C{factory.messages}.
    """

    factory: "RecordingClientFactory"

    def onOpen(self) -> None:
        self.factory.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.append(json.loads(payload.decode("utf-8")))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.closed(code, reason)


class RecordingClientFactory(WebSocketClientFactory):
    protocol = RecordingClientProtocol

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.messages: list[dict[str, Any]] = []
        self.connection: RecordingClientProtocol | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.is_closed = False
        self._open: Deferred[RecordingClientProtocol] = Deferred()

    def opened(self, connection: RecordingClientProtocol) -> None:
        self.connection = connection
        self._open.callback(connection)

    def closed(self, code: int | None, reason: str | None) -> None:
        self.is_closed = True
        self.close_code = code
        self.close_reason = reason
        if not self._open.called:
            self._open.errback(ConnectionError(f"WebSocket closed before opening ({code}: {reason})"))

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self._open.called:
            self._open.errback(reason)


class Client:
    """
    One test client connection.
    """

    def __init__(self, factory: RecordingClientFactory) -> None:
        self.factory = factory

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/",
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
        tls: Any = None,
        host: str = "127.0.0.1",
    ) -> "Client":
        """
        Connect to Kiwi on C{port}; with C{tls} (client TLS options, e.g.
        from C{optionsForClientTLS}) over C{wss://}.
        """
        scheme = "wss" if tls is not None else "ws"
        factory = RecordingClientFactory(f"{scheme}://{host}:{port}{path}", headers=headers or {})
        connectWS(factory, contextFactory=tls, timeout=timeout)
        await factory._open
        return cls(factory)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.factory.messages

    def send(self, command: dict[str, Any] | str | bytes, binary: bool = False) -> None:
        if isinstance(command, dict):
            payload = json.dumps(command).encode("utf-8")
        elif isinstance(command, str):
            payload = command.encode("utf-8")
        else:
            payload = command
        assert self.factory.connection is not None
        self.factory.connection.sendMessage(payload, isBinary=binary)

    def results(self, source_id: str | None = None) -> list[dict[str, Any]]:
        return [
            m["data"]
            for m in self.messages
            if m.get("type") == "RESULT" and (source_id is None or m["data"].get("sourceId") == source_id)
        ]

    def responses(self) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages if m.get("type") == "COMMAND_RESPONSE"]

    def notices(self) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages if m.get("type") == "NOTICE"]

    async def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
    ) -> Any:
        return await wait_until(predicate, timeout, what=lambda: f"{what}; {len(self.messages)} messages, the last: {self.messages[-3:]!r:.1500}")

    async def command(self, command: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """
        Send a command and return the next command response.
        """
        before = len(self.responses())
        self.send(command)
        await self.wait_for(lambda: len(self.responses()) > before, timeout, what=f"reply to {command}")
        return self.responses()[before]

    async def subscribe(self, source_id: str, mode: str = "push") -> None:
        reply = await self.command({"type": "SUBSCRIBE", "sourceId": source_id, "mode": mode})
        assert reply == {"type": "SUBSCRIBE_OK", "sourceId": source_id}, reply

    async def close(self, timeout: float = 10.0) -> None:
        if self.factory.connection is not None and not self.factory.is_closed:
            self.factory.connection.sendClose(1000)
            await wait_until(lambda: self.factory.is_closed, timeout, what="client close")
