"""
Baseline: a Kafka-to-WebSocket bridge written the way a typical user would,
with asyncio, the C{websockets} library and confluent-kafka.

It speaks Kiwi's push protocol for one source, so the same load client can
measure it: C{SUBSCRIBE} -> C{COMMAND_RESPONSE}/C{SUBSCRIBE_OK}, then one
C{RESULT} text frame per record in Kiwi's exact format. Each record is
encoded once and handed to C{websockets.broadcast}, the library's documented
fan-out helper.

The consumer runs in a worker thread (C{run_in_executor}): it waits for one
record and then drains what is already fetched (so floods are handled in
batches without holding records back), with the same fetch settings as
Kiwi's defaults, and joins a consumer group the usual way (C{subscribe}, C{auto.offset.reset=latest}); the
benchmark runner waits for a warm-up record before it measures, so the
group's start-up time does not matter.

Prints C{READY} on stdout once it listens. Not part of Kiwi.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Consumer
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _response(kind: str, source_id: str, **extra: Any) -> str:
    return _dumps({"type": "COMMAND_RESPONSE", "data": {"type": kind, "sourceId": source_id, **extra}})


class Bridge:
    """
    One Kafka topic offered as one push source.
    """

    def __init__(self, source_id: str, topic: str, bootstrap: str) -> None:
        self.source_id = source_id
        self.topic = topic
        self.subscribers: set[ServerConnection] = set()
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"ws-bridge-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
                "fetch.min.bytes": 1,
            }
        )
        self.consumer.subscribe([topic])
        self.executor = ThreadPoolExecutor(max_workers=1)

    async def handler(self, websocket: ServerConnection) -> None:
        try:
            async for message in websocket:
                try:
                    command = json.loads(message)
                    kind = command["type"]
                    source_id = command["sourceId"]
                except (ValueError, KeyError, TypeError):
                    await websocket.send(_dumps({"type": "ERROR", "data": {"error": "bad command"}}))
                    continue
                if kind == "SUBSCRIBE":
                    if source_id != self.source_id:
                        await websocket.send(_response("SUBSCRIBE_ERROR", source_id, error="source not found"))
                    elif command.get("mode", "push") not in ("push", None):
                        await websocket.send(_response("SUBSCRIBE_ERROR", source_id, error="push mode only"))
                    else:
                        self.subscribers.add(websocket)
                        await websocket.send(_response("SUBSCRIBE_OK", source_id))
                elif kind == "UNSUBSCRIBE" and websocket in self.subscribers:
                    self.subscribers.discard(websocket)
                    await websocket.send(_response("UNSUBSCRIBE_OK", source_id))
                else:
                    await websocket.send(_response(f"{kind}_ERROR", source_id, error="not supported"))
        except ConnectionClosed:
            pass
        finally:
            self.subscribers.discard(websocket)

    def encode(self, message: Any) -> str:
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

    def poll(self) -> list[Any]:
        # Wait for one record, then take whatever else is already there:
        # consume(500, 0.1) would hold every record for up to 100 ms.
        first = self.consumer.poll(0.5)
        if first is None:
            return []
        return [first, *self.consumer.consume(499, 0)]

    async def pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            messages = await loop.run_in_executor(self.executor, self.poll)
            for message in messages:
                if message.error():
                    continue
                broadcast(self.subscribers, self.encode(message))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--source-id", default="bench")
    args = parser.parse_args()

    bridge = Bridge(args.source_id, args.topic, args.bootstrap)
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(bridge.handler, "127.0.0.1", args.port, compression=None):
        pump = asyncio.create_task(bridge.pump())
        print("READY", flush=True)
        await stop
        pump.cancel()
    bridge.executor.shutdown(wait=True)
    bridge.consumer.close()


if __name__ == "__main__":
    asyncio.run(main())
