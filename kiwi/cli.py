"""
A console subscriber for trying Kiwi out:

    python -m kiwi.cli ws://127.0.0.1:8000/ prices counter
    python -m kiwi.cli ws://127.0.0.1:8000/ prices --pull 10
    KIWI_TOKEN=eyJ... python -m kiwi.cli wss://kiwi.example:8443/ prices --ca ca.pem
    python -m kiwi.cli ws://127.0.0.1:8000/ prices --from earliest

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
            # Base64 (the default format, or a record that did not decode)
            # is shown as text when it is UTF-8; text and JSON values that
            # sources with format utf8 or json send are shown as they are.
            if isinstance(data.get(field), str):
                try:
                    data[field] = base64.b64decode(data[field], validate=True).decode("utf-8")
                except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
                    pass
        return {**message, "data": data}
    return message


def _start(text: str) -> Any:
    if text in ("earliest", "latest"):
        return text
    if text.isdigit():
        return {"timestamp": int(text)}
    try:
        return json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not earliest, latest, a timestamp or JSON: {text!r}") from None


class _Printer(WebSocketClientProtocol):
    factory: "_PrinterFactory"

    def onOpen(self) -> None:
        for source_id in self.factory.sources:
            command: dict[str, Any] = {"type": "SUBSCRIBE", "sourceId": source_id}
            if self.factory.pull:
                command["mode"] = "pull"
            if self.factory.start is not None:
                command["from"] = self.factory.start
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
    # Twisted types a protocol's factory as Factory[Self]; _Printer narrows it.
    protocol = _Printer  # type: ignore[assignment]

    def __init__(
        self, url: str, sources: list[str], pull: int | None, token: str | None = None, start: Any = None
    ) -> None:
        super().__init__(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        self.sources = sources
        self.pull = pull
        self.start = start
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
    parser.add_argument(
        "--from",
        dest="start",
        type=_start,
        metavar="WHERE",
        help='Kafka sources: "earliest", "latest", a timestamp in ms, or JSON such as {"offsets":{"0":5}}',
    )
    args = parser.parse_args(argv)

    def run(reactor: Any) -> Deferred[None]:
        factory = _PrinterFactory(args.url, args.sources, args.pull, args.token, args.start)
        tls = None
        if factory.isSecure:
            from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust

            trust: Any = platformTrust()
            if args.ca:
                with open(args.ca, "rb") as f:
                    trust = Certificate.loadPEM(f.read())
            tls = optionsForClientTLS(urlsplit(args.url).hostname or "", trustRoot=trust)
        connectWS(factory, contextFactory=tls)
        return factory.done

    task.react(run)


if __name__ == "__main__":
    main()
