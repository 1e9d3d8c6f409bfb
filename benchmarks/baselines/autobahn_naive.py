"""
Baseline: the naive Autobahn loop, a Kafka-to-WebSocket bridge on Twisted
and Autobahn that calls C{sendMessage} once per client per record.

It speaks Kiwi's push protocol for one source (C{SUBSCRIBE} ->
C{SUBSCRIBE_OK}, then C{RESULT} frames in Kiwi's exact format). Each record
is JSON-encoded once; the per-client work is Autobahn's C{sendMessage}
(framing and a buffered C{transport.write} per client per record).

The consumer is polled in a thread (C{deferToThread}): one record, then
whatever else is already fetched, with the same fetch settings as Kiwi's
defaults, in a consumer group the usual way; the benchmark runner waits for a warm-up record before it
measures.

Prints C{READY} on stdout once it listens. Not part of Kiwi.
"""

from __future__ import annotations

import argparse
import base64
import json
import uuid
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from confluent_kafka import Consumer
from twisted.internet import reactor
from twisted.internet.threads import deferToThread


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _response(kind: str, source_id: str, **extra: Any) -> bytes:
    return _dumps({"type": "COMMAND_RESPONSE", "data": {"type": kind, "sourceId": source_id, **extra}})


class BridgeProtocol(WebSocketServerProtocol):
    factory: "BridgeFactory"

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            command = json.loads(payload)
            kind = command["type"]
            source_id = command["sourceId"]
        except (ValueError, KeyError, TypeError):
            self.sendMessage(_dumps({"type": "ERROR", "data": {"error": "bad command"}}))
            return
        if kind == "SUBSCRIBE":
            if source_id != self.factory.source_id:
                self.sendMessage(_response("SUBSCRIBE_ERROR", source_id, error="source not found"))
            else:
                self.factory.subscribers.add(self)
                self.sendMessage(_response("SUBSCRIBE_OK", source_id))
        elif kind == "UNSUBSCRIBE" and self in self.factory.subscribers:
            self.factory.subscribers.discard(self)
            self.sendMessage(_response("UNSUBSCRIBE_OK", source_id))
        else:
            self.sendMessage(_response(f"{kind}_ERROR", source_id, error="not supported"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.subscribers.discard(self)


class BridgeFactory(WebSocketServerFactory):
    protocol = BridgeProtocol  # type: ignore[assignment]

    def __init__(self, source_id: str, topic: str, bootstrap: str) -> None:
        super().__init__()
        self.source_id = source_id
        self.subscribers: set[BridgeProtocol] = set()
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"ab-bridge-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
                "fetch.min.bytes": 1,
            }
        )
        self.consumer.subscribe([topic])
        self.running = True

    def encode(self, message: Any) -> bytes:
        _, timestamp = message.timestamp()
        return _dumps(
            {
                "type": "RESULT",
                "data": {
                    "sourceType": "kafka",
                    "sourceId": self.source_id,
                    "key": _b64(message.key()),
                    "payload": _b64(message.value()),
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "timestamp": timestamp,
                },
            }
        )

    def thd_poll(self) -> list[Any]:
        # Wait for one record, then take whatever else is already there:
        # consume(500, 0.1) would hold every record for up to 100 ms.
        first = self.consumer.poll(0.5)
        if first is None:
            return []
        return [first, *self.consumer.consume(499, 0)]

    def poll(self) -> None:
        if not self.running:
            return
        d = deferToThread(self.thd_poll)
        d.addCallback(self.deliver)
        d.addErrback(lambda f: print(f.getTraceback(), flush=True))
        d.addBoth(lambda _: reactor.callLater(0, self.poll))

    def deliver(self, messages: list[Any]) -> None:
        for message in messages:
            if message.error():
                continue
            payload = self.encode(message)
            for subscriber in list(self.subscribers):
                subscriber.sendMessage(payload)

    def stop(self) -> None:
        self.running = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--source-id", default="bench")
    args = parser.parse_args()

    factory = BridgeFactory(args.source_id, args.topic, args.bootstrap)
    reactor.listenTCP(args.port, factory, interface="127.0.0.1")
    reactor.callWhenRunning(factory.poll)
    reactor.callWhenRunning(print, "READY", flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", factory.stop)
    reactor.run()
    factory.consumer.close()


if __name__ == "__main__":
    main()
