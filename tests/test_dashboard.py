"""
Tests for L{kiwi.dashboard}: the routes of the dashboard and of
C{/kiwi.js}, their content types, and the figures of C{/ui/stats}.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from kiwi import dashboard
from kiwi.config import KafkaSourceConfig, KafkaConfig
from kiwi.events import CounterEvent
from kiwi.sources.kafka import KafkaSource
from kiwi.ws import build_site
from tests.test_ws import WebSocketTestMixin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DashboardTests(WebSocketTestMixin, SynchronousTestCase):
    """
    What the site serves besides the WebSocket endpoint.
    """

    def setUp(self) -> None:
        self.setUpWebSocket()

    def get(self, path: str, ui: bool = True, ui_path: str = "/", method: bytes = b"GET") -> DummyRequest:
        site = build_site(self.factory, True, ui, ui_path)
        segments = [s.encode() for s in path.lstrip("/").split("/")]
        request = DummyRequest(segments)
        request.method = method
        resource = getChildForRequest(site.resource, request)
        body = resource.render(request)
        if isinstance(body, bytes):
            request.write(body)
        return request

    def body(self, request: DummyRequest) -> bytes:
        return b"".join(request.written)

    def test_root_pageForPlainGet(self) -> None:
        """
        A plain GET / is the dashboard page, as HTML with a policy that
        allows only Kiwi's own scripts and WebSocket.
        """
        request = self.get("/")
        self.assertEqual(request.responseCode, None)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertIn(b'<script type="module" src="/ui/app.js">', self.body(request))
        policy = request.responseHeaders.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"default-src 'self'", policy)

    def test_root_uiOff426(self) -> None:
        """
        With ui off, GET / is the 426 of the WebSocket endpoint and /ui/ is
        not there; /kiwi.js still is.
        """
        self.assertEqual(self.get("/", ui=False).responseCode, 426)
        self.assertEqual(self.get("/ui/stats", ui=False).responseCode, 404)
        self.assertIn(b"export class KiwiClient", self.body(self.get("/kiwi.js", ui=False)))

    def test_root_postIs426(self) -> None:
        """
        Only GET and HEAD get the page at /.
        """
        self.assertEqual(self.get("/", method=b"POST").responseCode, 426)

    def test_uiPath_elsewhere(self) -> None:
        """
        With ui_path /ops/kiwi the page is there and / answers 426.
        """
        self.assertIn(b"<title>Kiwi</title>", self.body(self.get("/ops/kiwi", ui_path="/ops/kiwi")))
        self.assertEqual(self.get("/", ui_path="/ops/kiwi").responseCode, 426)

    def test_assets_contentTypes(self) -> None:
        """
        The module, the styles and the client are served with their types.
        """
        for path, kind in (
            ("/ui/app.js", b"text/javascript; charset=utf-8"),
            ("/ui/style.css", b"text/css; charset=utf-8"),
            ("/kiwi.js", b"text/javascript; charset=utf-8"),
        ):
            request = self.get(path)
            self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [kind], path)
            self.assertTrue(self.body(request), path)

    def test_kiwiJs_isTheClientsFile(self) -> None:
        """
        /kiwi.js is clients/js/kiwi.js.
        """
        with open(os.path.join(ROOT, "clients", "js", "kiwi.js"), "rb") as f:
            self.assertEqual(self.body(self.get("/kiwi.js")), f.read())

    def test_page_fetchesNothingFromOutside(self) -> None:
        """
        No asset refers to another host.
        """
        for name in os.listdir(dashboard.STATIC):
            with open(os.path.join(dashboard.STATIC, name), encoding="utf-8") as f:
                text = f.read()
            self.assertNotRegex(text, r"(src|href)=\"(https?:)?//", name)
            self.assertNotIn("@import url(http", text, name)

    def test_stats_figures(self) -> None:
        """
        /ui/stats gives the time, the connections and per source its type,
        state, formats, subscribers and event counters.
        """
        self.connect()
        self.registry.publish("c", [CounterEvent("c", 1), CounterEvent("c", 2)])
        kafka = KafkaSource(
            KafkaSourceConfig(id="k", topic="t", format="json"), KafkaConfig(bootstrap_servers=("x:1",)),
            self.registry, self.clock, consumer=object(),  # type: ignore[arg-type]
        )
        self.registry.add_source(kafka)
        stats = json.loads(self.body(self.get("/ui/stats")))
        self.assertEqual(stats["connections"], 1)
        self.assertIsInstance(stats["time"], float)
        by_id = {s["id"]: s for s in stats["sources"]}
        self.assertEqual(
            by_id["c"],
            {"id": "c", "type": "counter", "state": "running", "format": None, "key_format": None,
             "subscribers": 0, "events_in": 2, "events_out": 0},
        )
        self.assertEqual((by_id["k"]["format"], by_id["k"]["key_format"]), ("json", "base64"))
        self.assertEqual(
            dashboard.stats(self.factory, clock=lambda: 5.0)["time"], 5.0
        )
