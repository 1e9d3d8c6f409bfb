"""
WebAssembly plugins in a real Kiwi process, through real WebSocket clients:
authenticate and intercept hooks, core modules built from the WAT sources
in L{tests.wasm_plugins}, a component built from Python with componentize-py,
and plugins that misbehave.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests import wasm_plugins
from tests.integration.base import IntegrationTestCase
from tests.integration.kiwiproc import KiwiProcess
from tests.integration.wsclient import Client

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _counter(source_id: str = "tick", interval_ms: int = 20) -> dict[str, Any]:
    return {"type": "counter", "id": source_id, "interval_ms": interval_ms, "min": 0}


def _decode(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def thd_handshake_status(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    """
    Send a WebSocket upgrade request and return the HTTP status of the
    answer (blocking; run it in a thread).
    """
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + extra + "\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request.encode())
        response = b""
        while b"\r\n" not in response:
            chunk = sock.recv(1024)
            if not chunk:
                break
            response += chunk
    return int(response.split(b" ", 2)[1])


class PluginTestCase(IntegrationTestCase):
    """
    Builds test plugins into a temporary directory.
    """

    def setUp(self) -> None:
        super().setUp()
        self.plugin_dir = tempfile.mkdtemp(prefix="kiwi-plugins-")
        self.addCleanup(shutil.rmtree, self.plugin_dir, True)

    def plugin(self, name: str) -> str:
        return wasm_plugins.build(name, self.plugin_dir)

    async def wait_failures(self, kiwi: KiwiProcess, hook: str, reason: str, count: int) -> None:
        """
        Poll C{/health} until C{hook} has failed C{count} times for C{reason}.
        """
        deadline = time.monotonic() + 30
        while True:
            health = await kiwi.health()
            if health["plugins"][hook]["failures"].get(reason, 0) >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} {reason} failures of {hook}: {health}")
            await deferLater(reactor, 0.05, lambda: None)

    async def status(self, kiwi: KiwiProcess, path: str, headers: dict[str, str] | None = None) -> int:
        assert kiwi.port is not None
        status: int = await deferToThread(thd_handshake_status, kiwi.port, path, headers)
        return status


class AuthenticateTests(PluginTestCase):
    """
    The authenticate hook decides on handshakes.
    """

    async def test_apiKey_rejectsWithoutOrWrongKey(self) -> None:
        """
        Without a key, or with the wrong one, the handshake is refused with
        401; the right key in the query string or header lets the client in.
        """
        kiwi = await self.start_kiwi(
            {"sources": [_counter()], "hooks": {"authenticate": self.plugin("apikey")}}
        )
        self.assertEqual(await self.status(kiwi, "/"), 401)
        self.assertEqual(await self.status(kiwi, "/?key=wrong"), 401)
        self.assertEqual(await self.status(kiwi, "/?key=letmein"), 101)
        self.assertEqual(await self.status(kiwi, "/", {"X-Api-Key": "letmein"}), 101)
        client = await self.connect(kiwi, "/?key=letmein")
        await client.subscribe("tick")
        await client.wait_for(lambda: len(client.results("tick")) >= 2, 10)
        with self.assertRaises(Exception):
            await Client.connect(kiwi.port or 0, "/?key=wrong")

    async def test_misbehaving_failsClosed(self) -> None:
        """
        An authenticate plugin that loops, traps or answers nonsense refuses
        the handshake (401); Kiwi keeps serving and counts the failures.
        """
        kiwi = await self.start_kiwi(
            {
                "sources": [_counter()],
                "hooks": {"authenticate": self.plugin("auth-misbehave"), "authenticate_timeout_ms": 50},
            }
        )
        self.assertEqual(await self.status(kiwi, "/?mode=loop"), 401)
        self.assertEqual(await self.status(kiwi, "/?mode=trap"), 401)
        self.assertEqual(await self.status(kiwi, "/?mode=bad"), 401)
        self.assertEqual(await self.status(kiwi, "/?mode=fine"), 101)
        health = await kiwi.health()
        self.assertEqual(
            health["plugins"]["authenticate"]["failures"], {"timeout": 1, "trap": 1, "malformed": 1}
        )
        self.assertIn("ran out of time", kiwi.output)


class InterceptTests(PluginTestCase):
    """
    The intercept hook decides per event and per subscriber.
    """

    async def test_evenNumbers_kafka(self) -> None:
        """
        An intercept plugin that forwards only even numbers lets through
        exactly the even payloads of a Kafka topic, in order.
        """
        topic = await self.create_topic()
        config = self.kafka_config(topic)
        config["hooks"] = {"intercept": self.plugin("even")}
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state(topic, "running")
        client = await self.connect(kiwi)
        await client.subscribe(topic)
        await self.produce(topic, [(None, str(n).encode(), 0) for n in range(1, 21)] + [(None, b"end-22", 0)])
        await self.produce(topic, [(None, b"22", 0)])
        await client.wait_for(lambda: any(r["payload"] == _b64(b"22") for r in client.results(topic)), 30)
        payloads = [_decode(r["payload"]) for r in client.results(topic)]
        self.assertEqual(payloads, [str(n).encode() for n in range(2, 23, 2)])

    async def test_transform_kafkaAndCounter(self) -> None:
        """
        A transform plugin replaces Kafka payloads (upper case) and counts
        (times ten); other fields are kept.
        """
        topic = await self.create_topic()
        config = self.kafka_config(topic)
        config["sources"].append(_counter())
        config["hooks"] = {"intercept": self.plugin("transform")}
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state(topic, "running")
        client = await self.connect(kiwi)
        await client.subscribe(topic)
        await client.subscribe("tick")
        await self.produce(topic, [(b"k", b"hello, kiwi", 0)])
        await client.wait_for(lambda: client.results(topic) and len(client.results("tick")) >= 3, 30)
        record = client.results(topic)[0]
        self.assertEqual(_decode(record["payload"]), b"HELLO, KIWI")
        self.assertEqual(_decode(record["key"]), b"k")
        self.assertEqual(record["offset"], 0)
        counts = [r["count"] for r in client.results("tick")]
        self.assertTrue(all(c % 10 == 0 for c in counts), counts)
        self.assertEqual(counts, list(range(counts[0], counts[0] + 10 * len(counts), 10)))

    async def test_withContext_reachesIntercept(self) -> None:
        """
        The bytes an authenticate plugin attaches with with-context reach
        every intercept call for that connection as auth, with the peer
        address; a connection without context gets none.
        """
        topic = await self.create_topic()
        config = self.kafka_config(topic)
        config["hooks"] = {"authenticate": self.plugin("apikey"), "intercept": self.plugin("context")}
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state(topic, "running")
        with_context = await self.connect(kiwi, "/?key=letmein")
        without = await self.connect(kiwi, "/?key=plain")
        for client in (with_context, without):
            await client.subscribe(topic)
        await self.produce(topic, [(None, b"x", 0)])
        for client in (with_context, without):
            await client.wait_for(lambda c=client: c.results(topic), 30)
        first = _decode(with_context.results(topic)[0]["payload"])
        second = _decode(without.results(topic)[0]["payload"])
        assert first is not None and second is not None
        self.assertTrue(first.startswith(b"tenant-acme@127.0.0.1:"), first)
        self.assertTrue(second.startswith(b"@127.0.0.1:"), second)
        self.assertNotEqual(first.split(b"@")[1], second.split(b"@")[1])

    async def _misbehaving(self, name: str, reason: str, **hooks: Any) -> KiwiProcess:
        """
        Kiwi with the intercept plugin C{name} (even counts forwarded, odd
        ones misbehave) on a fast counter: only even counts arrive, the
        connection stays open, and the failures are counted as C{reason}.
        """
        config = {"sources": [_counter(interval_ms=10)], "hooks": {"intercept": self.plugin(name), **hooks}}
        kiwi = await self.start_kiwi(config)
        client = await self.connect(kiwi)
        await client.subscribe("tick")
        await client.wait_for(lambda: len(client.results("tick")) >= 10, 30)
        counts = [r["count"] for r in client.results("tick")]
        self.assertTrue(all(c % 2 == 0 for c in counts), counts)
        self.assertEqual(counts, list(range(counts[0], counts[0] + 2 * len(counts), 2)))
        self.assertFalse(client.factory.is_closed)
        health = await kiwi.health()
        self.assertGreaterEqual(health["plugins"]["intercept"]["failures"].get(reason, 0), 5, health)
        self.assertIn("the intercept plugin failed", kiwi.output)
        return kiwi

    async def test_loopForever_contained(self) -> None:
        """
        A plugin that loops forever on odd counts is stopped by its time
        budget each time; even counts keep flowing.
        """
        await self._misbehaving("loop", "timeout", timeout_ms=5)

    async def test_trap_contained(self) -> None:
        """
        A plugin that traps on odd counts loses those events only; it is
        re-instantiated and handles the next ones.
        """
        await self._misbehaving("trap", "trap")

    async def test_allocateWithoutLimit_contained(self) -> None:
        """
        A plugin that grows its memory without limit on odd counts is
        stopped at hooks.max_memory_mb; Kiwi's memory stays bounded.
        """
        kiwi = await self._misbehaving("hog", "trap", max_memory_mb=8)
        self.assertIn("unreachable", kiwi.output)

    async def test_wrongKindTransform_dropped(self) -> None:
        """
        A transform of the wrong kind drops the event for that subscriber
        and is counted as malformed.
        """
        kiwi = await self.start_kiwi({"sources": [_counter()], "hooks": {"intercept": self.plugin("wrong-kind")}})
        client = await self.connect(kiwi)
        await client.subscribe("tick")
        await self.wait_failures(kiwi, "intercept", "malformed", 3)
        self.assertEqual(client.results("tick"), [])
        self.assertFalse(client.factory.is_closed)


class ComponentTests(PluginTestCase):
    """
    Both hooks as components (the WAT test plugins lifted into components),
    through wasmtime's component API, WASI 0.2 and wasi:http.
    """

    async def test_components_authenticateAndIntercept(self) -> None:
        """
        An authenticate component rejects a wrong key with 401 and attaches
        its context for the right one; an intercept component sees that
        context and the peer address.
        """
        topic = await self.create_topic()
        config = self.kafka_config(topic)
        config["hooks"] = {
            "authenticate": wasm_plugins.build("apikey", self.plugin_dir, component=True),
            "intercept": wasm_plugins.build("context", self.plugin_dir, component=True),
            "timeout_ms": 50,
        }
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state(topic, "running")
        self.assertEqual(await self.status(kiwi, "/?key=wrong"), 401)
        client = await self.connect(kiwi, "/?key=letmein")
        await client.subscribe(topic)
        await self.produce(topic, [(None, b"x", 0)])
        await client.wait_for(lambda: client.results(topic), 30)
        payload = _decode(client.results(topic)[0]["payload"])
        assert payload is not None
        self.assertTrue(payload.startswith(b"tenant-acme@127.0.0.1:"), payload)
        health = await kiwi.health()
        self.assertEqual(health["plugins"]["authenticate"]["plugin"], "apikey-component.wasm (component)")
        self.assertEqual(health["plugins"]["intercept"]["plugin"], "context-component.wasm (component)")


class LoadTests(PluginTestCase):
    """
    Plugin files that cannot be used stop Kiwi at start-up.
    """

    async def test_wrongWorld_exitsNamingKey(self) -> None:
        """
        An authenticate plugin given as the intercept hook, and a file that
        is not WebAssembly, are refused naming the key, what was expected and
        what was found.
        """
        junk = os.path.join(self.plugin_dir, "junk.wasm")
        with open(junk, "wb") as f:
            f.write(b"MZ not wasm")
        kiwi = KiwiProcess(
            {
                "sources": [_counter()],
                "server": {"address": "127.0.0.1:0"},
                "hooks": {"intercept": self.plugin("apikey"), "authenticate": junk},
            }
        )
        kiwi.spawn()
        code = await kiwi.wait_exit(timeout=60)
        self.assertNotEqual(code, 0)
        self.assertIn("hooks.intercept: ", kiwi.output)
        self.assertIn("it looks like an authenticate plugin", kiwi.output)
        self.assertIn("found exports: ", kiwi.output)
        self.assertIn("hooks.authenticate: expected a WebAssembly core module or component", kiwi.output)
        self.assertNotIn("Traceback", kiwi.output)


class PythonComponentTests(PluginTestCase):
    """
    A component built from Python with componentize-py (the example under
    C{examples/python-intercept}).
    """

    timeout = 600

    async def test_pythonComponent_intercepts(self) -> None:
        """
        The example Python plugin, built as a component inside the test,
        forwards even counts and upper-cases Kafka payloads.
        """
        example = os.path.join(REPO, "examples", "python-intercept")
        output = os.path.join(self.plugin_dir, "python-intercept.wasm")
        componentize = os.path.join(os.path.dirname(sys.executable), "componentize-py")
        result = await deferToThread(
            subprocess.run,
            [
                componentize,
                "-d",
                os.path.join(REPO, "kiwi", "plugins", "wit", "intercept.wit"),
                "-w",
                "intercept-hook",
                "componentize",
                "-p",
                example,
                "app",
                "-o",
                output,
            ],
            capture_output=True,
            text=True,
            timeout=400,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        topic = await self.create_topic()
        config = self.kafka_config(topic)
        config["sources"].append(_counter())
        config["hooks"] = {"intercept": output}
        kiwi = KiwiProcess(config)
        self._kiwis.append(kiwi)
        self.addCleanup(self._stop_kiwi, kiwi)
        await kiwi.start(timeout=300)
        await kiwi.wait_source_state(topic, "running")
        client = await self.connect(kiwi)
        await client.subscribe(topic)
        await client.subscribe("tick")
        await self.produce(topic, [(None, b"shout", 0)])
        await client.wait_for(lambda: client.results(topic) and len(client.results("tick")) >= 3, 60)
        self.assertEqual(_decode(client.results(topic)[0]["payload"]), b"SHOUT")
        counts = [r["count"] for r in client.results("tick")]
        self.assertTrue(all(c % 2 == 0 for c in counts), counts)
        health = await kiwi.health()
        self.assertEqual(health["plugins"]["intercept"]["plugin"], "python-intercept.wasm (component)")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class PluginReloadTests(PluginTestCase):
    """
    Plugins are swapped by a configuration reload, with clients connected.
    """

    async def test_sighup_swapsPluginFile(self) -> None:
        """
        Replacing the intercept plugin's file and sending SIGHUP swaps the
        plugin between events: the connected client first gets only even
        counts, then every count multiplied by ten, without reconnecting.
        """
        target = os.path.join(self.plugin_dir, "intercept.wasm")
        config = {"sources": [_counter(interval_ms=20)], "hooks": {"intercept": target}}
        shutil.copyfile(self.plugin("even"), target)
        kiwi = await self.start_kiwi(config)
        client = await self.connect(kiwi)
        await client.subscribe("tick")
        await client.wait_for(lambda: len(client.results("tick")) >= 3, 20)
        first = [r["count"] for r in client.results("tick")]
        self.assertEqual(first, list(range(first[0], first[0] + 2 * len(first), 2)))

        shutil.copyfile(self.plugin("transform"), target)
        mark = len(kiwi.output)
        kiwi.signal("HUP")
        await kiwi.wait_output("config applied", after=mark)
        before = len(client.results("tick"))
        await client.wait_for(lambda: len(client.results("tick")) >= before + 5, 20)
        after = [r["count"] for r in client.results("tick")[before + 1 :]]
        self.assertEqual(after, list(range(after[0], after[0] + 10 * len(after), 10)))
        self.assertFalse(client.factory.is_closed)
