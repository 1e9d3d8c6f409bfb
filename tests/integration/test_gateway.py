"""
The gateway as a client and an operator meet it: counters, commands,
malformed frames, HTTP endpoints, start-up with good and bad files.
"""

from __future__ import annotations

import time

from tests.integration.base import IntegrationTestCase
from tests.integration.broker import free_port
from tests.integration.kiwiproc import KiwiProcess


def counter(source_id: str, interval_ms: int = 20, **extra: object) -> dict[str, object]:
    return {"type": "counter", "id": source_id, "interval_ms": interval_ms, "min": 0, **extra}


class CounterTests(IntegrationTestCase):
    """
    Counter sources through a real Kiwi.
    """

    async def test_counter_consecutiveValues(self) -> None:
        """
        A subscriber receives consecutive counts.
        """
        kiwi = await self.start_kiwi({"sources": [counter("tick")]})
        client = await self.connect(kiwi)
        await client.subscribe("tick")
        await client.wait_for(lambda: len(client.results("tick")) >= 5, 10)
        counts = [r["count"] for r in client.results("tick")]
        self.assertEqual(counts, list(range(counts[0], counts[0] + len(counts))))
        self.assertEqual(client.results("tick")[0]["sourceType"], "counter")

    async def test_finiteCounter_closesAndRefuses(self) -> None:
        """
        A lazy counter with max starts at min on the first subscription,
        stops after max, closes its subscriptions with SUBSCRIPTION_CLOSED
        and refuses new ones.
        """
        kiwi = await self.start_kiwi({"sources": [counter("finite", lazy=True, max=4)]})
        client = await self.connect(kiwi)
        await client.subscribe("finite")
        await client.wait_for(lambda: client.notices(), 10)
        self.assertEqual([r["count"] for r in client.results("finite")], [0, 1, 2, 3, 4])
        notice = client.notices()[0]
        self.assertEqual(notice["type"], "SUBSCRIPTION_CLOSED")
        self.assertEqual(notice["sourceId"], "finite")
        self.assertIn("maximum", notice["message"])
        reply = await client.command({"type": "SUBSCRIBE", "sourceId": "finite"})
        self.assertEqual(reply["type"], "SUBSCRIBE_ERROR")
        self.assertEqual(reply["error"], "source has ended")
        health = await kiwi.health()
        self.assertEqual(health["sources"]["finite"]["state"], "ended")

    async def test_pullMode_creditsAndBuffer(self) -> None:
        """
        A pull subscription receives nothing without credit; REQUEST n
        delivers buffered events at once and REQUEST_OK reports the credit
        left.
        """
        config = {"sources": [counter("tick", interval_ms=10)], "subscriber": {"buffer_capacity": 5}}
        kiwi = await self.start_kiwi(config)
        client = await self.connect(kiwi)
        await client.subscribe("tick", mode="pull")
        # Let the buffer fill (50 ms = 5 events at 10 ms).
        start = time.monotonic()
        await client.wait_for(lambda: time.monotonic() - start > 0.3, 2)
        self.assertEqual(client.results(), [])
        reply = await client.command({"type": "REQUEST", "sourceId": "tick", "n": 3})
        self.assertEqual(reply, {"type": "REQUEST_OK", "sourceId": "tick", "requests": 0})
        counts = [r["count"] for r in client.results("tick")]
        self.assertEqual(len(counts), 3)
        self.assertEqual(counts, list(range(counts[0], counts[0] + 3)))


class CommandTests(IntegrationTestCase):
    """
    Commands and bad frames over a real connection.
    """

    async def test_malformedFrames_connectionStaysUsable(self) -> None:
        """
        Frames that are not valid commands get error replies naming the
        problem, and the connection and its subscriptions stay up.
        """
        kiwi = await self.start_kiwi({"sources": [counter("tick")]})
        client = await self.connect(kiwi)
        await client.subscribe("tick")
        bad_frames: list[tuple[str | bytes, bool]] = [
            ("not json", False),
            ("[1, 2]", False),
            ('{"type": "DANCE", "sourceId": "tick"}', False),
            ('{"sourceId": "tick"}', False),
            ('{"type": "SUBSCRIBE"}', False),
            ('{"type": "SUBSCRIBE", "sourceId": 5}', False),
            (b"\x00\x01", True),
        ]
        for frame, binary in bad_frames:
            client.send(frame, binary=binary)
        await client.wait_for(
            lambda: len([m for m in client.messages if m["type"] == "ERROR"]) >= len(bad_frames), 10
        )
        errors = [m["data"]["error"] for m in client.messages if m["type"] == "ERROR"]
        self.assertIn("not valid JSON", errors[0])
        self.assertIn("unknown command type", errors[2])
        self.assertIn("no type field", errors[3])
        self.assertIn("sourceId", errors[4])
        self.assertIn("binary", errors[6])
        reply = await client.command({"type": "REQUEST", "sourceId": "tick", "n": -1})
        self.assertEqual(reply["type"], "REQUEST_ERROR")
        before = len(client.results("tick"))
        await client.wait_for(lambda: len(client.results("tick")) > before + 2, 10)
        self.assertFalse(client.factory.is_closed)

    async def test_commandErrors_named(self) -> None:
        """
        Duplicate subscribe, unknown source and unsubscribe without a
        subscription each get their *_ERROR reply.
        """
        kiwi = await self.start_kiwi({"sources": [counter("tick")]})
        client = await self.connect(kiwi)
        await client.subscribe("tick")
        duplicate = await client.command({"type": "SUBSCRIBE", "sourceId": "tick"})
        unknown = await client.command({"type": "SUBSCRIBE", "sourceId": "nope"})
        unsubscribed = await client.command({"type": "UNSUBSCRIBE", "sourceId": "nope"})
        request = await client.command({"type": "REQUEST", "sourceId": "nope", "n": 1})
        self.assertEqual(
            [duplicate["type"], unknown["type"], unsubscribed["type"], request["type"]],
            ["SUBSCRIBE_ERROR", "SUBSCRIBE_ERROR", "UNSUBSCRIBE_ERROR", "REQUEST_ERROR"],
        )
        self.assertEqual(unknown, {"type": "SUBSCRIBE_ERROR", "sourceId": "nope", "error": "source not found"})


class HttpTests(IntegrationTestCase):
    """
    The HTTP side of the WebSocket port.
    """

    async def test_health_sources(self) -> None:
        """
        GET /health returns 200 with JSON describing every source.
        """
        kiwi = await self.start_kiwi({"sources": [counter("tick")]})
        client = await self.connect(kiwi)
        await client.subscribe("tick")
        code, headers, body = await kiwi.get("/health")
        self.assertEqual(code, 200)
        self.assertEqual(headers["content-type"], ["application/json"])
        health = await kiwi.health()
        self.assertEqual(health["status"], "ok")
        self.assertEqual(health["connections"], 1)
        self.assertEqual(health["sources"]["tick"]["state"], "running")
        self.assertEqual(health["sources"]["tick"]["subscribers"], 1)

    async def test_health_disabled(self) -> None:
        """
        server.healthcheck: false removes /health.
        """
        kiwi = await self.start_kiwi(
            {"sources": [counter("tick")], "server": {"listen": "tcp:0:interface=127.0.0.1", "healthcheck": False}}
        )
        code, _, _ = await kiwi.get("/health")
        self.assertEqual(code, 404)

    async def test_plainGet_upgradeRequired(self) -> None:
        """
        Without the dashboard (server.ui: false) a plain GET / is answered
        with 426 Upgrade Required; with it (the default), it is the page.
        """
        config = {"sources": [counter("tick")], "server": {"listen": "tcp:0:interface=127.0.0.1", "ui": False}}
        kiwi = await self.start_kiwi(config)
        code, headers, _ = await kiwi.get("/")
        self.assertEqual(code, 426)
        kiwi = await self.start_kiwi({"sources": [counter("tick")]})
        code, headers, _ = await kiwi.get("/")
        self.assertEqual(code, 200)
        self.assertEqual(headers["content-type"], ["text/html; charset=utf-8"])

    async def test_queryString_accepted(self) -> None:
        """
        A WebSocket at / with a query string (kept for later auth) works.
        """
        kiwi = await self.start_kiwi({"sources": [counter("tick")]})
        client = await self.connect(kiwi, "/?access_token=abc&x=1")
        await client.subscribe("tick")
        await client.wait_for(lambda: client.results("tick"), 10)

    async def test_serverAddress_originalKey(self) -> None:
        """
        The original host:port form of server.address works.
        """
        port = free_port()
        kiwi = await self.start_kiwi({"sources": [counter("tick")], "server": {"address": f"127.0.0.1:{port}"}})
        self.assertEqual(kiwi.port, port)
        client = await self.connect(kiwi)
        await client.subscribe("tick")


class StartupTests(IntegrationTestCase):
    """
    Start-up and shutdown as an operator sees them.
    """

    async def _fails(self, config: str) -> str:
        kiwi = KiwiProcess(config)
        started = time.monotonic()
        kiwi.spawn()
        code = await kiwi.wait_exit(timeout=20)
        self.assertNotEqual(code, 0)
        self.assertLess(time.monotonic() - started, 15)
        self.assertNotIn("Traceback", kiwi.output)
        self.assertIn(kiwi.config_path, kiwi.output)
        return kiwi.output

    async def test_badConfig_exitsNamingKey(self) -> None:
        """
        A bad file makes twistd exit non-zero at once, naming the file, the
        key path and what was expected.
        """
        output = await self._fails(
            "sources:\n"
            "  - {type: counter, id: a, interval_ms: 10, min: 0}\n"
            "  - {type: counter, id: b, interval_ms: 10, min: 0}\n"
            "  - {type: kafka, topic: 42}\n"
            "server: {address: '127.0.0.1:0'}\n"
        )
        self.assertIn("sources[2].topic: expected a non-empty string", output)
        self.assertIn("kafka: required", output)

    async def test_badYaml_exits(self) -> None:
        """
        Unparseable YAML is reported with its position.
        """
        output = await self._fails("sources: [\nserver: {")
        self.assertIn("not valid YAML", output)

    async def test_unknownKey_exits(self) -> None:
        """
        An unknown key is an error, not silently ignored.
        """
        output = await self._fails(
            "sources: []\nserver: {listen: 'tcp:0:interface=127.0.0.1', colour: blue}\n"
        )
        self.assertIn("server.colour: unknown key", output)

    async def test_missingFile_exits(self) -> None:
        """
        A configuration path that does not exist is named.
        """
        kiwi = KiwiProcess("x: 1")
        kiwi.config_path = kiwi.config_path + ".missing"
        kiwi.spawn()
        code = await kiwi.wait_exit(timeout=20)
        self.assertNotEqual(code, 0)
        self.assertIn("cannot read the file", kiwi.output)

    async def test_sigterm_clientsGetGoingAway(self) -> None:
        """
        SIGTERM closes clients with 1001 and Kiwi exits 0.
        """
        kiwi = await self.start_kiwi({"sources": [counter("tick")]})
        client = await self.connect(kiwi)
        await client.subscribe("tick")
        code = await kiwi.stop()
        self.assertEqual(code, 0)
        await client.wait_for(lambda: client.factory.is_closed, 10)
        self.assertEqual(client.factory.close_code, 1001)


class ListenFailureTests(IntegrationTestCase):
    """
    A port that cannot be bound stops Kiwi with a clear message.
    """

    async def test_portInUse_exitsNonZero(self) -> None:
        """
        When the listening port is taken, Kiwi logs why (no traceback) and
        exits non-zero instead of idling without a listener.
        """
        import socket

        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        kiwi = KiwiProcess({"sources": [], "server": {"address": f"127.0.0.1:{port}"}})
        kiwi.spawn()
        code = await kiwi.wait_exit(timeout=20)
        self.assertEqual(code, 1)
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1", kiwi.output)
        self.assertIn("Address already in use", kiwi.output)
        self.assertNotIn("Traceback", kiwi.output)
