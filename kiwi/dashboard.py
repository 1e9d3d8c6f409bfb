"""
The live dashboard and the JavaScript client, served by Kiwi itself.

  - C{GET /kiwi.js}: the JavaScript client (C{clients/js/kiwi.js}).
  - C{GET <server.ui_path>} (default C{/}): the dashboard page, when
    C{server.ui} is true. At C{/} it answers plain C{GET}s only; WebSocket
    upgrades still reach Kiwi's endpoint.
  - C{GET /ui/app.js}, C{/ui/style.css}: the page's module and styles.
  - C{GET /ui/stats}: the figures the page shows, as JSON.

Plain HTML, CSS and ES modules from C{kiwi/static/}: no build step, nothing
fetched from elsewhere. See C{docs/ui.md}.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from kiwi.config import KafkaSourceConfig

if TYPE_CHECKING:
    from kiwi.ws import KiwiServerFactory

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}

# The page may only load what Kiwi serves, and talk to Kiwi.
_CSP = b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"


def _set_headers(request: Any, headers: dict[bytes, bytes]) -> None:
    # Twisted's Request.setHeader has no annotations.
    for name, value in headers.items():
        request.setHeader(name, value)


def _resource() -> Resource:
    resource: Resource = _Resource()
    return resource


_Resource: Any = Resource


class StaticFile(Resource):
    """
    One file of C{kiwi/static/}, read on each request (they are small).
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.path = os.path.join(STATIC, name)
        self._type = _TYPES[os.path.splitext(name)[1]]

    def render_GET(self, request: Request) -> bytes:
        with open(self.path, "rb") as f:
            body = f.read()
        _set_headers(
            request,
            {
                b"content-type": self._type,
                b"cache-control": b"no-cache",
                b"x-content-type-options": b"nosniff",
                b"content-security-policy": _CSP,
            },
        )
        return body

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)


class StatsResource(Resource):
    """
    C{GET /ui/stats}: connections, and per source its state, subscribers
    and event counters (the page turns counters into rates).
    """

    isLeaf = True

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._stats = stats

    def render_GET(self, request: Request) -> bytes:
        _set_headers(request, {b"content-type": b"application/json", b"cache-control": b"no-store"})
        return json.dumps(self._stats(), separators=(",", ":")).encode("utf-8") + b"\n"


def stats(factory: KiwiServerFactory, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """
    The body of C{/ui/stats}.

    @ivar clock: Seconds since the epoch (the page divides counter
        differences by time differences).
    """
    registry = factory.registry
    sources = []
    for source in registry.sources():
        detail = source.status()
        config = getattr(source, "config", None)
        kafka = config if isinstance(config, KafkaSourceConfig) else None
        sources.append(
            {
                "id": source.source_id,
                "type": source.source_type,
                "state": detail.get("state"),
                "format": kafka.format if kafka else None,
                "key_format": kafka.key_format if kafka else None,
                "subscribers": registry.subscriber_count(source.source_id),
                "events_in": registry.events_in.get(source.source_id, 0),
                "events_out": registry.events_out.get(source.source_id, 0),
            }
        )
    return {"time": clock(), "connections": len(factory.connections), "sources": sources}


def page() -> Resource:
    """
    The dashboard page.
    """
    return StaticFile("index.html")


def install(root: Resource, factory: KiwiServerFactory, ui: bool, ui_path: str) -> None:
    """
    Add C{/kiwi.js} and, with C{ui}, the dashboard to the site's C{root}.
    The page itself at C{/} is served by the WebSocket entry (see
    L{kiwi.ws.build_site}).
    """
    root.putChild(b"kiwi.js", StaticFile("kiwi.js"))
    if not ui:
        return
    assets = _resource()
    assets.putChild(b"app.js", StaticFile("app.js"))
    assets.putChild(b"style.css", StaticFile("style.css"))
    assets.putChild(b"stats", StatsResource(lambda: stats(factory)))
    root.putChild(b"ui", assets)
    segments = [s.encode("utf-8") for s in ui_path.strip("/").split("/") if s]
    if not segments:
        return
    parent = root
    for segment in segments[:-1]:
        child = _resource()
        parent.putChild(segment, child)
        parent = child
    parent.putChild(segments[-1], page())
