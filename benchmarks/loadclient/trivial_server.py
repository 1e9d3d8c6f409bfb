"""
A trivial WebSocket server that measures the load client, not itself.

It accepts C{--conns} connections, answers the upgrade and the SUBSCRIBE
with Kiwi's replies, sends each a warm-up RESULT, and once all are in it
writes C{--frames} RESULT frames (Kiwi's format, about 200 bytes each) to
every connection, built once as one block of bytes, in a few large writes.
The server's cost per frame is a share of one C{memcpy}, so the rate the
load client reports here is the rate the load client itself can take.

Prints C{READY} on stdout once it listens. Benchmark tooling, not Kiwi.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import struct
import time


def frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes([0x81, n]) + payload
    if n < 65536:
        return bytes([0x81, 126]) + struct.pack(">H", n) + payload
    return bytes([0x81, 127]) + struct.pack(">Q", n) + payload


def result(offset: int, key: bytes | None, timestamp_ms: int) -> bytes:
    value = b'{"seq":"%08d","bid":1.08410,"ask":1.08420,"pad":"xx"}' % offset
    return json.dumps(
        {
            "type": "RESULT",
            "data": {
                "sourceType": "kafka",
                "sourceId": "bench",
                "key": None if key is None else base64.b64encode(key).decode(),
                "payload": base64.b64encode(value).decode(),
                "partition": 0,
                "offset": offset,
                "timestamp": timestamp_ms,
            },
        },
        separators=(",", ":"),
    ).encode()


SUBSCRIBE_OK = b'{"type":"COMMAND_RESPONSE","data":{"type":"SUBSCRIBE_OK","sourceId":"bench"}}'
HANDSHAKE = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, required=True)
    parser.add_argument("--frames", type=int, required=True)
    args = parser.parse_args()

    writers: list[asyncio.StreamWriter] = []
    everyone = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HANDSHAKE)
        header = await reader.readexactly(2)
        length = header[1] & 0x7F
        if length == 126:
            length = struct.unpack(">H", await reader.readexactly(2))[0]
        await reader.readexactly(4 + length)  # mask and SUBSCRIBE
        writer.write(frame(SUBSCRIBE_OK) + frame(result(0, b"warmup", int(time.time() * 1000))))
        writers.append(writer)
        if len(writers) == args.conns:
            everyone.set()
        try:
            await reader.read()  # until the client goes
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=1024)
    print("READY", flush=True)
    async with server:
        await everyone.wait()
        await asyncio.sleep(0.5)  # let the client see every warm-up frame
        now = int(time.time() * 1000)
        block = b"".join(frame(result(i + 1, None, now)) for i in range(args.frames))
        for writer in writers:
            writer.write(block)
        for writer in writers:
            try:
                await writer.drain()
            except ConnectionError:
                pass
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main())
