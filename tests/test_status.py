"""
Tests for L{kiwi.status}: the JSON operator endpoints and readiness.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from kiwi.status import NOT_READY_STATES, JsonResource, readiness


def render(resource: JsonResource) -> tuple[DummyRequest, bytes]:
    """
    C{GET} C{resource} and return the request and the body.
    """
    request = DummyRequest([b""])
    body = resource.render(request)
    return request, body


class ReadinessTests(SynchronousTestCase):
    """
    L{readiness} decides C{/ready}.
    """

    def test_readiness_allRunning(self) -> None:
        """
        Started, with every source serving: 200, C{ready} true and no
        C{waiting_for}.
        """
        sources = {"a": {"state": "running"}, "b": {"state": "waiting for first subscriber"}}
        code, body = readiness(sources, True)
        self.assertEqual(code, 200)
        self.assertEqual(body, {"ready": True, "sources": sources})

    def test_readiness_noSources(self) -> None:
        """
        A started gateway without sources is ready.
        """
        self.assertEqual(readiness({}, True), (200, {"ready": True, "sources": {}}))

    def test_readiness_notStarted(self) -> None:
        """
        Before start-up: 503, waiting for C{start-up}, whatever the sources
        say.
        """
        code, body = readiness({"a": {"state": "stopped"}}, False)
        self.assertEqual(code, 503)
        self.assertFalse(body["ready"])
        self.assertEqual(body["waiting_for"], ["start-up"])

    def test_readiness_sourcesNotServing(self) -> None:
        """
        Started, with sources that cannot be served: 503, naming them in
        sorted order.
        """
        sources = {
            "z": {"state": "broker unreachable", "error": "down"},
            "a": {"state": "running"},
            "m": {"state": "starting"},
        }
        code, body = readiness(sources, True)
        self.assertEqual(code, 503)
        self.assertEqual(body["waiting_for"], ["m", "z"])
        self.assertEqual(body["sources"], sources)

    def test_readiness_everyNotReadyState(self) -> None:
        """
        Each state in L{NOT_READY_STATES} makes a source hold back
        readiness.
        """
        for state in sorted(NOT_READY_STATES):
            code, body = readiness({"s": {"state": state}}, True)
            self.assertEqual((code, body["waiting_for"]), (503, ["s"]), state)

    def test_readiness_servableStates(self) -> None:
        """
        A topic that does not exist yet, or an ended counter, does not hold
        back readiness: Kiwi can serve them.
        """
        for state in ("waiting for topic", "ended", "running"):
            self.assertEqual(readiness({"s": {"state": state}}, True)[0], 200, state)


class JsonResourceTests(SynchronousTestCase):
    """
    L{JsonResource} renders what its callable returns.
    """

    def test_render_json(self) -> None:
        """
        The status code and the compact JSON body, with no caching.
        """
        document: dict[str, Any] = {"ready": False, "waiting_for": ["a"]}
        request, body = render(JsonResource(lambda: (503, document)))
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(body, b'{"ready":false,"waiting_for":["a"]}\n')
        self.assertEqual(json.loads(body), document)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])

    def test_render_ok(self) -> None:
        """
        A 200 result is answered with 200.
        """
        request, body = render(JsonResource(lambda: (200, {"status": "ok"})))
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(json.loads(body), {"status": "ok"})

    def test_render_noneIsNotFound(self) -> None:
        """
        C{None} from the callable is a plain-text 404.
        """
        request, body = render(JsonResource(lambda: None))
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(body, b"Not found\n")
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"]
        )

    def test_render_callsEachTime(self) -> None:
        """
        The callable runs on every request, so the answer follows the state.
        """
        answers = [(503, {"ready": False}), (200, {"ready": True})]
        resource = JsonResource(lambda: answers.pop(0))
        self.assertEqual(render(resource)[0].responseCode, 503)
        self.assertEqual(render(resource)[0].responseCode, 200)
