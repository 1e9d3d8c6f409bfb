"""
The benchmark harness cannot rot unnoticed: the C load client compiles
and parses hand-made server frames (C{loadclient --parse}, which runs the
same parser as a network run over bytes read from stdin).

No sockets and no timing: the client's clock is fixed with C{--now-ms}.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from typing import Any

from twisted.trial import unittest

from benchmarks import loadclient

NOW_MS = 1_800_000_000_000

_binary: str | None = None


def _client() -> str:
    global _binary
    if _binary is None:
        _binary = loadclient.build(tempfile.mkdtemp(prefix="kiwi-test-loadclient-"))
    return _binary


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """
    An unmasked server frame.
    """
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes([first, n]) + payload
    if n < 65536:
        return bytes([first, 126]) + struct.pack(">H", n) + payload
    return bytes([first, 127]) + struct.pack(">Q", n) + payload


def result(offset: int, timestamp: int | None, key: str | None = None, pad: int = 0) -> bytes:
    """
    A RESULT frame payload in Kiwi's format.
    """
    data = {
        "sourceType": "kafka",
        "sourceId": "bench",
        "key": key,
        "payload": "eyJiaWQiOjEuMDg0MX0=" + "A" * pad,
        "partition": 0,
        "offset": offset,
        "timestamp": timestamp,
    }
    return json.dumps({"type": "RESULT", "data": data}, separators=(",", ":")).encode()


SUBSCRIBE_OK = b'{"type":"COMMAND_RESPONSE","data":{"type":"SUBSCRIBE_OK","sourceId":"bench"}}'
HANDSHAKE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def unmask(data: bytes) -> tuple[int, bytes, bytes]:
    """
    Decode one masked client frame: (first byte, payload, rest).
    """
    assert data[1] & 0x80, "client frames must be masked"
    n = data[1] & 0x7F
    key = data[2:6]
    payload = bytes(b ^ key[i % 4] for i, b in enumerate(data[6 : 6 + n]))
    return data[0], payload, data[6 + n :]


class LoadClientParseTests(unittest.TestCase):
    """
    C{loadclient --parse} over hand-made byte streams.
    """

    def setUp(self) -> None:
        if shutil.which(os.environ.get("CC") or "gcc") is None:
            raise unittest.SkipTest("no C compiler: the load client cannot be built here")

    def parse(self, stream: bytes, *args: str) -> dict[str, Any]:
        run = subprocess.run(
            [_client(), "--parse", "--now-ms", str(NOW_MS), *args], input=stream, capture_output=True, timeout=60
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        report: dict[str, Any] = json.loads(run.stdout)
        return report

    def stream(self) -> bytes:
        return b"".join(
            [
                HANDSHAKE,
                frame(0x1, SUBSCRIBE_OK),
                frame(0x1, result(0, NOW_MS - 100, key="d2FybXVw")),  # warm-up: not counted
                frame(0x1, result(1, NOW_MS - 5)),
                frame(0x9, b"beat"),
                frame(0x1, result(2, NOW_MS - 12, pad=200)),  # 16-bit length
                frame(0x1, result(3, None)),
                frame(0x1, b'{"type":"NOTICE","data":{"type":"LAG","sourceId":"bench","count":50}}'),
            ]
        )

    def test_parse_counts_results_and_latency(self) -> None:
        """
        RESULT frames are counted (warm-up ones apart), their timestamps
        give latencies, notices and pings are told apart.
        """
        report = self.parse(self.stream(), "--handshake")
        self.assertEqual(report["frames_total"], 3)
        self.assertEqual(report["per_conn"], [3])
        self.assertEqual(report["warmup_frames"], 1)
        self.assertEqual(report["notices"], 1)
        self.assertEqual(report["pings"], 1)
        self.assertEqual(report["results_without_timestamp"], 1)
        self.assertEqual(report["latency_ms"]["count"], 2)
        self.assertAlmostEqual(report["latency_ms"]["max"], 12.0)
        self.assertAlmostEqual(report["latency_ms"]["p50"], 5.05)
        self.assertEqual(report["pending_bytes"], 0)

    def test_parse_any_split(self) -> None:
        """
        Frames split at any byte (one and three bytes per read) parse the same.
        """
        whole = self.parse(self.stream(), "--handshake")
        for chunk in ("1", "3"):
            split = self.parse(self.stream(), "--handshake", "--chunk", chunk)
            for key in ("frames_total", "warmup_frames", "notices", "pings", "latency_ms", "pending_bytes"):
                self.assertEqual(split[key], whole[key], (chunk, key))

    def test_parse_sends_masked_subscribe_and_pong(self) -> None:
        """
        After the upgrade the client sends a masked SUBSCRIBE in push mode;
        a ping is answered with a masked pong carrying the same payload.
        """
        report = self.parse(self.stream(), "--handshake")
        sent = bytes.fromhex(report["sent_hex"])
        first, payload, rest = unmask(sent)
        self.assertEqual(first, 0x81)
        self.assertEqual(json.loads(payload), {"type": "SUBSCRIBE", "sourceId": "bench", "mode": "push"})
        first, payload, rest = unmask(rest)
        self.assertEqual((first, payload, rest), (0x8A, b"beat", b""))

    def test_parse_large_frame_and_close(self) -> None:
        """
        A frame with a 64-bit length is counted; a close frame ends the
        connection and its code is reported.
        """
        stream = (
            frame(0x1, result(1, NOW_MS - 1, pad=70000))
            + frame(0x8, struct.pack(">H", 1008) + b"too slow")
            + frame(0x1, result(2, NOW_MS - 1))
        )
        report = self.parse(stream, "--chunk", "4096")
        self.assertEqual(report["frames_total"], 1)
        self.assertEqual(report["closed_by_server"], 1)
        self.assertEqual(report["close_codes"], {"1008": 1})

    def test_parse_refused_handshake(self) -> None:
        """
        An HTTP answer other than 101 fails the connection; nothing after
        it is parsed.
        """
        stream = b"HTTP/1.1 426 Upgrade Required\r\n\r\n" + frame(0x1, result(1, NOW_MS))
        report = self.parse(stream, "--handshake")
        self.assertEqual(report["frames_total"], 0)
        self.assertEqual(report["sent_hex"], "")
