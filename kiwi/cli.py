"""
A console subscriber for trying Kiwi out:

    python -m kiwi.cli ws://127.0.0.1:8000/ prices counter
    python -m kiwi.cli ws://127.0.0.1:8000/ prices --pull 10
    KIWI_TOKEN=eyJ... python -m kiwi.cli wss://kiwi.example:8443/ prices --ca ca.pem

It subscribes to each source and prints every message from the server as
one JSON line, with Kafka payloads decoded for reading.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import task
from twisted.internet.defer import Deferred


def _readable(message: dict[str, Any]) -> dict[str, Any]:
    data = message.get("data")
    if message.get("type") == "RESULT" and isinstance(data, dict) and data.get("sourceType") == "kafka":
        data = dict(data)
        for field in ("key", "payload"):
            if isinstance(data.get(field), str):
                raw = base64.b64decode(data[field])
                try:
                    data[field] = raw.decode("utf-8")
                except UnicodeDecodeError:
                    pass
        return {**message, "data": data}
    return message


class _Printer(WebSocketClientProtocol):
    factory: "_PrinterFactory"

    def onOpen(self) -> None:
        for source_id in self.factory.sources:
            command: dict[str, Any] = {"type": "SUBSCRIBE", "sourceId": source_id}
            if self.factory.pull:
                command["mode"] = "pull"
            self.sendMessage(json.dumps(command).encode())
            if self.factory.pull:
                request = {"type": "REQUEST", "sourceId": source_id, "n": self.factory.pull}
                self.sendMessage(json.dumps(request).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        print(json.dumps(_readable(json.loads(payload))), flush=True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        print(f"connection closed ({code}: {reason})", file=sys.stderr)
        if not self.factory.done.called:
            self.factory.done.callback(None)


class _PrinterFactory(WebSocketClientFactory):
    protocol = _Printer

    def __init__(self, url: str, sources: list[str], pull: int | None, token: str | None = None) -> None:
        super().__init__(url, headers={"Authorization": f"Bearer {token}"} if token else {})  # type: ignore[no-untyped-call]
        self.sources = sources
        self.pull = pull
        self.done: Deferred[None] = Deferred()

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        print(f"cannot connect: {reason.getErrorMessage()}", file=sys.stderr)
        self.done.callback(None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kiwi.cli", description="Print what Kiwi streams.")
    parser.add_argument("url", help="for example ws://127.0.0.1:8000/")
    parser.add_argument("sources", nargs="+", help="source ids to subscribe to")
    parser.add_argument("--pull", type=int, metavar="N", help="subscribe in pull mode and request N events")
    parser.add_argument(
        "--token", default=os.environ.get("KIWI_TOKEN"), help="a JWT to send as bearer token (default: $KIWI_TOKEN)"
    )
    parser.add_argument("--ca", metavar="FILE", help="for wss://: trust this CA file instead of the system's")
    args = parser.parse_args(argv)

    def run(reactor: Any) -> Deferred[None]:
        factory = _PrinterFactory(args.url, args.sources, args.pull, args.token)
        tls = None
        if factory.isSecure:
            from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust

            trust: Any = platformTrust()  # type: ignore[no-untyped-call]
            if args.ca:
                with open(args.ca, "rb") as f:
                    trust = Certificate.loadPEM(f.read())
            tls = optionsForClientTLS(urlsplit(args.url).hostname or "", trustRoot=trust)
        connectWS(factory, contextFactory=tls)
        return factory.done

    task.react(run)


if __name__ == "__main__":
    main()
