"""
Operating a running Kiwi: reload without dropping anyone, graceful
shutdown, metrics, health and readiness, log format, --check.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.integration.base import IntegrationTestCase
from tests.integration.kiwiproc import KiwiProcess, twistd_kiwi
from tests.integration.polling import wait_until


def counter(source_id: str, interval_ms: int = 20, **extra: object) -> dict[str, object]:
    return {"type": "counter", "id": source_id, "interval_ms": interval_ms, "min": 0, **extra}


def _metric(text: str, name: str, **labels: str) -> float | None:
    """
    The value of one sample in Prometheus text format, or None.
    """
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if "{" in head:
            metric, _, rest = head.partition("{")
            found = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if part)
            found = {k: v.strip('"') for k, v in found.items()}
        else:
            metric, found = head, {}
        if metric == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


class ReloadTests(IntegrationTestCase):
    """
    SIGHUP and file watching change a running Kiwi without dropping clients.
    """

    async def _reload(self, kiwi: KiwiProcess, config: dict[str, Any], phrase: str = "config applied") -> None:
        mark = len(kiwi.output)
        kiwi.rewrite(config)
        kiwi.signal("HUP")
        await kiwi.wait_output(phrase, after=mark)

    async def test_sighup_addRemoveChange(self) -> None:
        """
        Unchanged sources are untouched (a counter subscriber sees no gap),
        an added source can be subscribed at once, a removed one closes its
        subscriptions saying so, and a changed one is closed and re-created.
        """
        config = {"sources": [counter("steady"), counter("doomed"), counter("changing")]}
        kiwi = await self.start_kiwi(config)
        client = await self.connect(kiwi)
        for source_id in ("steady", "doomed", "changing"):
            await client.subscribe(source_id)
        await client.wait_for(lambda: len(client.results("steady")) >= 3, 10)

        new = {"sources": [counter("steady"), counter("changing", interval_ms=25), counter("fresh")]}
        await self._reload(kiwi, new)
        closed = {n["sourceId"]: n["message"] for n in client.notices() if n["type"] == "SUBSCRIPTION_CLOSED"}
        self.assertEqual(set(closed), {"doomed", "changing"})
        self.assertIn("removed", closed["doomed"])
        self.assertIn("changed", closed["changing"])
        await client.subscribe("fresh")
        await client.subscribe("changing")
        await client.wait_for(lambda: client.results("fresh") and len(client.results("changing")) > 0, 10)
        before = len(client.results("steady"))
        await client.wait_for(lambda: len(client.results("steady")) >= before + 5, 10)
        counts = [r["count"] for r in client.results("steady")]
        self.assertEqual(counts, list(range(counts[0], counts[0] + len(counts))))
        reply = await client.command({"type": "SUBSCRIBE", "sourceId": "doomed"})
        self.assertEqual(reply["error"], "source not found")
        health = await kiwi.health()
        self.assertEqual(health["last_reload"]["outcome"], "applied")
        self.assertFalse(client.factory.is_closed)

    async def test_sighup_invalidFileKeepsConfig(self) -> None:
        """
        An invalid file changes nothing: Kiwi keeps serving, logs the
        problem with its key path, and /health and /metrics show it.
        """
        kiwi = await self.start_kiwi({"sources": [counter("steady")]})
        client = await self.connect(kiwi)
        await client.subscribe("steady")
        mark = len(kiwi.output)
        kiwi.rewrite({"sources": [{"type": "counter", "id": "steady", "interval_ms": "soon", "min": 0}]})
        kiwi.signal("HUP")
        await kiwi.wait_output("config rejected", after=mark)
        self.assertIn("sources[0].interval_ms", kiwi.output[mark:])
        before = len(client.results("steady"))
        await client.wait_for(lambda: len(client.results("steady")) >= before + 3, 10)
        self.assertEqual(client.notices(), [])
        health = await kiwi.health()
        self.assertEqual(health["last_reload"]["outcome"], "rejected")
        self.assertIn("sources[0].interval_ms", health["last_reload"]["problems"][0])
        _, _, body = await kiwi.get("/metrics")
        self.assertEqual(_metric(body.decode(), "kiwi_config_reloads_total", outcome="rejected"), 1.0)

        mark = len(kiwi.output)
        kiwi.rewrite("sources: [\n")
        kiwi.signal("HUP")
        await kiwi.wait_output("config rejected", after=mark)
        self.assertIn("not valid YAML", kiwi.output[mark:])

    async def test_sighup_listenChangeNeedsRestart(self) -> None:
        """
        A new listening address is not applied; the reload says it needs a
        restart and everything else is applied.
        """
        kiwi = await self.start_kiwi({"sources": [counter("a")]})
        mark = len(kiwi.output)
        kiwi.rewrite({"sources": [counter("a"), counter("b")], "server": {"listen": "tcp:0:interface=127.0.0.2"}})
        kiwi.signal("HUP")
        await kiwi.wait_output("config partially applied", after=mark)
        self.assertIn("needs a restart", kiwi.output[mark:])
        client = await self.connect(kiwi)
        await client.subscribe("b")

    async def test_watch_fileChangeApplied(self) -> None:
        """
        With reload.watch, saving the file is enough.
        """
        watch = {"watch": True, "watch_interval_ms": 100}
        kiwi = await self.start_kiwi({"sources": [counter("a")], "reload": watch})
        mark = len(kiwi.output)
        kiwi.rewrite({"sources": [counter("a"), counter("b")], "reload": watch})
        await kiwi.wait_output("config applied", after=mark)
        client = await self.connect(kiwi)
        await client.subscribe("b")

    async def test_sighup_kafkaSourceAdded(self) -> None:
        """
        A Kafka source added by a reload starts consuming and can be
        subscribed at once.
        """
        topic = await self.create_topic()
        kiwi = await self.start_kiwi({"sources": [counter("a")]})
        config = self.kafka_config(topic)
        config["sources"].append(counter("a"))
        await self._reload(kiwi, config)
        await kiwi.wait_source_state(topic, "running")
        client = await self.connect(kiwi)
        await client.subscribe(topic)
        await self.produce(topic, [(None, b"hello", None)])
        await client.wait_for(lambda: client.results(topic), 20)


class ShutdownTests(IntegrationTestCase):
    """
    SIGTERM with clients and Kafka consumers running.
    """

    async def test_sigterm_gracefulWithinTimeout(self) -> None:
        """
        Every client receives 1001, the consumers stop, Kiwi exits 0 within
        server.shutdown_timeout_s and logs no traceback.
        """
        topic = await self.create_topic()
        config = self.kafka_config(topic)
        config["sources"].append(counter("tick"))
        config["server"] = {"listen": "tcp:0:interface=127.0.0.1", "shutdown_timeout_s": 5}
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state(topic, "running")
        clients = [await self.connect(kiwi) for _ in range(3)]
        for client in clients:
            await client.subscribe(topic)
            await client.subscribe("tick")
        started = time.monotonic()
        code = await kiwi.stop(timeout=15)
        self.assertEqual(code, 0)
        self.assertLess(time.monotonic() - started, 5 + 1)
        for client in clients:
            await client.wait_for(lambda c=client: c.factory.is_closed, 10)
            self.assertEqual(client.factory.close_code, 1001)
        self.assertNotIn("Traceback", kiwi.output)
        self.assertIn(f"{topic} stopped", kiwi.output)


class ObservabilityTests(IntegrationTestCase):
    """
    /metrics, /ready and JSON logs.
    """

    async def test_metrics_moveWithEvents(self) -> None:
        """
        Connection, subscription, received and delivered metrics follow the
        traffic.
        """
        topic = await self.create_topic()
        kiwi = await self.start_kiwi(self.kafka_config(topic))
        await kiwi.wait_source_state(topic, "running")
        client = await self.connect(kiwi)
        await client.subscribe(topic)
        code, headers, body = await kiwi.get("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers["content-type"][0].startswith("text/plain"))
        text = body.decode()
        self.assertEqual(_metric(text, "kiwi_connections"), 1.0)
        self.assertEqual(_metric(text, "kiwi_subscriptions", source_id=topic, mode="push"), 1.0)
        await self.produce(topic, [(None, b"x", None)] * 10)
        await client.wait_for(lambda: len(client.results(topic)) >= 10, 20)
        _, _, body = await kiwi.get("/metrics")
        text = body.decode()
        self.assertEqual(_metric(text, "kiwi_events_received_total", source_id=topic), 10.0)
        self.assertEqual(_metric(text, "kiwi_events_delivered_total", source_id=topic), 10.0)

    async def test_ready_whenSourcesRun(self) -> None:
        """
        /ready answers 200 with per-source detail once sources run, and 503
        naming the source while a Kafka source cannot reach its brokers.
        """
        config = {
            "sources": [counter("tick"), {"type": "kafka", "topic": "nowhere"}],
            "kafka": {"bootstrap_servers": ["127.0.0.1:1"]},
        }
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state("nowhere", "broker unreachable")
        code, _, body = await kiwi.get("/ready")
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["waiting_for"], ["nowhere"])
        code, _, _ = await kiwi.get("/health")
        self.assertEqual(code, 200)

        ready = await self.start_kiwi({"sources": [counter("tick")]})
        code, _, body = await ready.get("/ready")
        self.assertEqual(code, 200)
        self.assertTrue(json.loads(body)["ready"])

    async def test_logging_json(self) -> None:
        """
        logging.format: json gives one JSON object per line, with the
        connection id on connection lines.
        """
        kiwi = await self.start_kiwi({"sources": [counter("tick")], "logging": {"format": "json"}})
        client = await self.connect(kiwi)
        await client.subscribe("tick")
        await client.close()
        await kiwi.wait_output("disconnected")
        records = [json.loads(line) for line in kiwi.output.splitlines() if line.strip()]
        connected = [r for r in records if "connected from" in r["message"]]
        self.assertTrue(connected)
        self.assertIn("conn_id", connected[0])
        self.assertEqual(connected[0]["level"], "info")


class CheckTests(IntegrationTestCase):
    """
    twistd kiwi --check validates without starting.
    """

    async def _check(self, text: str) -> tuple[int | None, str]:
        kiwi = KiwiProcess(text)
        import subprocess

        from twisted.internet.threads import deferToThread

        result = await deferToThread(
            subprocess.run,
            twistd_kiwi(kiwi.config_path, "--check"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.returncode, result.stdout + result.stderr

    async def test_check_valid(self) -> None:
        """
        A valid file: exit 0 and a line saying so.
        """
        code, output = await self._check("sources: []\nserver: {listen: 'tcp:0:interface=127.0.0.1'}\n")
        self.assertEqual(code, 0, output)
        self.assertIn("is valid", output)

    async def test_check_invalid(self) -> None:
        """
        An invalid file: non-zero, and the same messages as start-up.
        """
        code, output = await self._check("sources: [{type: counter}]\nserver: {listen: 'tcp:0'}\n")
        self.assertNotEqual(code, 0)
        self.assertIn("sources[0].id: required key is missing", output)
