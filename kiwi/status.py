"""
Operator endpoints beside the WebSocket: C{/health}, C{/ready} and
C{/metrics}, and the JSON they report.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

NOT_READY_STATES = {"stopped", "starting", "connecting", "broker unreachable", "failed"}
"""
Source states in which Kiwi cannot serve the source: C{/ready} answers 503
while any source is in one.
"""


class JsonResource(Resource):
    """
    A leaf that answers C{GET} with JSON from C{render_status}, which returns
    the HTTP status and the body (or C{None} for 404).
    """

    isLeaf = True

    def __init__(self, render_status: Callable[[], tuple[int, dict[str, Any]] | None]) -> None:
        super().__init__()
        self._render_status = render_status

    def render_GET(self, request: Request) -> bytes:
        result = self._render_status()
        request.setHeader(b"cache-control", b"no-store")
        if result is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Not found\n"
        code, body = result
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n"


def readiness(sources: dict[str, dict[str, Any]], started: bool) -> tuple[int, dict[str, Any]]:
    """
    C{/ready}: 200 once every source is started and no Kafka source is cut
    off from its brokers; 503 otherwise, naming the sources that are not.
    """
    waiting = sorted(
        source_id for source_id, detail in sources.items() if detail.get("state") in NOT_READY_STATES
    )
    ready = started and not waiting
    body: dict[str, Any] = {"ready": ready, "sources": sources}
    if not ready:
        body["waiting_for"] = waiting if started else ["start-up"]
    return (200 if ready else 503), body
