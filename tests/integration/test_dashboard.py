"""
The dashboard and the JavaScript client in a real headless Chromium, served
by a real Kiwi process with a counter source and a Kafka source.

Screenshots are saved in the test's temporary directory (and, when
C{KIWI_DOCS_SCREENSHOTS} names a directory, there too: that is how
C{docs/img/} is made).
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.threads import deferToThread

from tests.integration.base import IntegrationTestCase
from tests.integration.browser import Browser, ensure_chromium
from tests.integration.polling import wait_until


class DashboardTests(IntegrationTestCase):
    """
    What a person sees at C{/}: sources with rates, and live events.
    """

    # The first run may install Chromium.
    timeout = 900

    async def setUp(self) -> None:  # type: ignore[override]
        super().setUp()
        executable = await deferToThread(ensure_chromium)
        self.browser = Browser(executable)
        self.addCleanup(self.browser.stop)
        await self.browser.start()
        self.shots = self.mktemp()
        os.makedirs(self.shots)

    async def screenshot(self, name: str) -> None:
        await self.browser.screenshot(os.path.join(self.shots, name))
        docs = os.environ.get("KIWI_DOCS_SCREENSHOTS")
        if docs:
            await self.browser.screenshot(os.path.join(docs, name))

    async def _kiwi(self) -> tuple[str, Any]:
        topic = await self.create_topic(partitions=2)
        config = self.kafka_config()
        config["sources"] = [
            {"type": "kafka", "id": "prices", "topic": topic, "format": "json"},
            {"type": "counter", "id": "counter", "interval_ms": 250, "min": 0},
        ]
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state("prices", "running")
        return topic, kiwi

    async def test_dashboard_kafkaAndCounterEvents(self) -> None:
        """
        Opened on a Kafka source from the address bar, the page shows the
        sources with live rates and the records produced, payloads as
        pretty JSON; opened on the counter source in pull mode, it shows
        exactly the ten events it requested.
        """
        topic, kiwi = await self._kiwi()
        base = f"http://127.0.0.1:{kiwi.port}/"
        await self.browser.navigate(base + "?source=prices")
        await self.browser.wait_for(
            "document.querySelector('#connection')?.dataset.state === 'open'", what="the WebSocket to open"
        )
        await self.browser.wait_for(
            "document.querySelector('#viewer-status')?.textContent.startsWith('Watching prices')",
            what="the viewer to watch prices",
        )
        ticks = [
            (f"SYM{i % 4}".encode(), json.dumps({"symbol": f"SYM{i % 4}", "price": 40 + i, "seq": i}).encode(), i % 2)
            for i in range(8)
        ]
        await self.produce(topic, ticks)  # type: ignore[arg-type]
        await self.browser.wait_for(
            "document.querySelectorAll('#events li.event').length >= 8", what="eight Kafka events"
        )
        text = await self.browser.evaluate("document.querySelector('#events').innerText")
        self.assertIn('"symbol": "SYM3"', text)
        self.assertIn('"seq": 7', text)
        self.assertIn("partition 1 · offset 3", text)
        await self.browser.wait_for(
            "parseFloat(document.querySelector('tr[data-source=\"counter\"] td.in')?.textContent) > 0",
            what="the counter's rate",
        )
        rows = await self.browser.evaluate(
            "[...document.querySelectorAll('#sources tbody tr')].map(r => r.dataset.source)"
        )
        self.assertEqual(rows, ["prices", "counter"])
        self.assertEqual(
            await self.browser.evaluate("document.querySelector('tr[data-source=\"prices\"] td.subscribers').textContent"),
            "1",
        )
        await self.screenshot("ui.png")

        await self.browser.navigate(base + "?source=counter&mode=pull")
        await self.browser.wait_for(
            "document.querySelectorAll('#events li.event').length >= 10", what="ten counter events"
        )
        # Let the counter move on: still only the ten requested.
        watcher = await self.kiwi_client(kiwi.port)
        counts: list[dict[str, Any]] = []
        watcher.on("result", counts.append)
        await watcher.subscribe("counter")
        await wait_until(lambda: len(counts) >= 4, 30, what="the counter to move on")
        events = await self.browser.evaluate(
            "[...document.querySelectorAll('#events li.event')].map(e => Number(e.dataset.count))"
        )
        self.assertEqual(len(events), 10)
        self.assertEqual(events, sorted(events, reverse=True))
        self.assertEqual(events[0] - events[-1], 9)
        self.assertFalse(await self.browser.evaluate("document.querySelector('#request').hidden"))
        await self.screenshot("ui-pull.png")

    async def test_kiwiJs_replayAndResumeInBrowser(self) -> None:
        """
        The JavaScript client served at /kiwi.js, used from the page:
        subscribes from earliest, receives every retained record, and
        after the connection drops re-subscribes from its last offsets + 1
        without loss or duplicate.
        """
        topic, kiwi = await self._kiwi()
        await self.produce(topic, [(None, json.dumps({"n": i}).encode(), i % 2) for i in range(6)])
        await self.browser.navigate(f"http://127.0.0.1:{kiwi.port}/ui/stats")
        await self.browser.evaluate(
            f"""(async () => {{
                const {{ KiwiClient }} = await import("/kiwi.js");
                const client = new KiwiClient("ws://127.0.0.1:{kiwi.port}/", {{ minDelay: 100, maxDelay: 500 }});
                window.results = [];
                window.client = client;
                client.on("result", (data) => window.results.push(data));
                client.connect();
                await client.subscribe("prices", {{ from: "earliest" }});
                return true;
            }})()""",
            await_promise=True,
        )
        await self.browser.wait_for("window.results.length >= 6", what="six replayed records")
        # Drop the socket under the client: it reconnects and resumes.
        await self.browser.evaluate("window.client._socket.close(); true")
        await self.produce(topic, [(None, json.dumps({"n": i}).encode(), i % 2) for i in range(6, 12)])
        await self.browser.wait_for("window.results.length >= 12", what="twelve records")
        await self.browser.wait_for("window.client.state === 'open'", what="the client to reconnect")
        results = await self.browser.evaluate(
            "window.results.map(r => [r.partition, r.offset, r.payload.n])"
        )
        self.assertEqual(sorted(n for _, _, n in results), list(range(12)))
        by_partition: dict[int, list[int]] = {}
        for partition, offset, _ in results:
            by_partition.setdefault(partition, []).append(offset)
        self.assertEqual(by_partition, {0: list(range(6)), 1: list(range(6))})
        attempts = await self.browser.evaluate("window.client.subscriptions.get('prices').received")
        self.assertEqual(attempts, 12)


class DashboardSettingsTests(IntegrationTestCase):
    """
    C{server.ui} and C{server.ui_path}, over plain HTTP.
    """

    async def test_ui_off(self) -> None:
        """
        With server.ui false, GET / is the 426 of the WebSocket endpoint
        and /ui/ is gone, while /kiwi.js is still served.
        """
        config = {
            "sources": [{"type": "counter", "id": "c", "interval_ms": 1000, "min": 0}],
            "server": {"listen": "tcp:0:interface=127.0.0.1", "ui": False},
        }
        kiwi = await self.start_kiwi(config)
        code, _, _ = await kiwi.get("/")
        self.assertEqual(code, 426)
        code, _, _ = await kiwi.get("/ui/stats")
        self.assertEqual(code, 404)
        code, headers, body = await kiwi.get("/kiwi.js")
        self.assertEqual(code, 200)
        self.assertEqual(headers["content-type"], ["text/javascript; charset=utf-8"])
        self.assertIn(b"export class KiwiClient", body)

    async def test_uiPath_elsewhere(self) -> None:
        """
        With server.ui_path /dashboard the page is there, / stays the
        WebSocket endpoint's 426, and the stats name every source.
        """
        config = {
            "sources": [{"type": "counter", "id": "c", "interval_ms": 100, "min": 0}],
            "server": {"listen": "tcp:0:interface=127.0.0.1", "ui_path": "/dashboard"},
        }
        kiwi = await self.start_kiwi(config)
        code, headers, body = await kiwi.get("/dashboard")
        self.assertEqual(code, 200)
        self.assertEqual(headers["content-type"], ["text/html; charset=utf-8"])
        self.assertIn(b'<script type="module" src="/ui/app.js">', body)
        code, _, _ = await kiwi.get("/")
        self.assertEqual(code, 426)
        code, _, body = await kiwi.get("/ui/stats")
        self.assertEqual(code, 200)
        stats = json.loads(body)
        self.assertEqual([s["id"] for s in stats["sources"]], ["c"])
        self.assertEqual(stats["connections"], 0)
