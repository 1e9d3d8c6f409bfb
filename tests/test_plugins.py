"""
Tests for L{kiwi.plugins}: the wasmtime host (core modules through Kiwi's
own canonical ABI, components through wasmtime's), the C{hooks}
configuration, the plugins service, per-subscriber interception in the
registry and the authenticate hook in the WebSocket handshake.

The test plugins are built from the WAT sources in L{tests.wasm_plugins}.
Nothing here starts a thread: time budgets are exercised with a budget of
0, which has already expired when the plugin starts.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import txaio
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactor
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kiwi import protocol
from kiwi.config import HooksConfig, SubscriberConfig, parse_config
from kiwi.errors import ConfigErrors
from kiwi.events import CounterEvent, Event, KafkaEvent
from kiwi.plugins import (
    AUTHENTICATE,
    DISCARD,
    FORWARD,
    REJECT,
    Action,
    HttpRequest,
    IAuthenticator,
    IInterceptor,
    Outcome,
    PluginError,
    PluginLoadError,
    PluginSlot,
    TransformCounter,
    TransformKafka,
    WithContext,
)
from kiwi.plugins import wasm
from kiwi.plugins.host import PluginHost, inline_runner
from kiwi.registry import Registry
from kiwi.ws import KiwiServerFactory
from tests import wasm_plugins
from tests.test_registry import FakeSource, FakeSubscriber
from tests.test_ws import CLIENT_ADDRESS, SERVER_ADDRESS, RecordingClient

LIMITS = wasm.Limits(timeout_ms=1000, max_memory_bytes=16 * 1024 * 1024)

KAFKA = KafkaEvent("orders", "orders.v2", 3, 42, b"key", b"12", 1_700_000_000_000)
KAFKA_ODD = KafkaEvent("orders", "orders.v2", 3, 43, None, b"13", None)
COUNTER = CounterEvent("ticks", 4)
COUNTER_ODD = CounterEvent("ticks", 5)

_built: dict[tuple[str, bool], str] = {}
_directory = tempfile.mkdtemp(prefix="kiwi-test-plugins-")


def plugin_path(name: str, component: bool = False) -> str:
    """
    The path of the test plugin C{name}, built once per test run.
    """
    if (name, component) not in _built:
        _built[name, component] = wasm_plugins.build(name, _directory, component)
    return _built[name, component]


def intercept(name: str, component: bool = False, limits: wasm.Limits = LIMITS) -> wasm.WasmInterceptor:
    return wasm.load_intercept(plugin_path(name, component), limits)


def authenticate(name: str, component: bool = False, limits: wasm.Limits = LIMITS) -> wasm.WasmAuthenticator:
    return wasm.load_authenticate(plugin_path(name, component), limits)


def request(path: str | None = "/", headers: tuple[tuple[str, bytes], ...] = ()) -> HttpRequest:
    return HttpRequest("GET", path, "http", "127.0.0.1:8000", headers)


class InterceptHookMixin:
    """
    The intercept hook, the same for core modules and components.
    """

    component: bool

    def test_even_forwardsEvenOnly(self) -> None:
        """
        The even plugin forwards even counts and even Kafka payloads and
        discards the rest.
        """
        plugin = intercept("even", self.component)
        self.assertTrue(verifyObject(IInterceptor, plugin))  # type: ignore[attr-defined]
        results = [plugin.intercept(e, None, None) for e in (KAFKA, KAFKA_ODD, COUNTER, COUNTER_ODD)]
        self.assertEqual(results, [FORWARD, DISCARD, FORWARD, DISCARD])  # type: ignore[attr-defined]

    def test_transform_payloadAndCount(self) -> None:
        """
        A transform returns the new Kafka payload or count.
        """
        plugin = intercept("transform", self.component)
        self.assertEqual(  # type: ignore[attr-defined]
            plugin.intercept(KafkaEvent("s", "t", 0, 0, None, b"hello, world", None), None, None),
            TransformKafka(b"HELLO, WORLD"),
        )
        self.assertEqual(plugin.intercept(COUNTER, None, None), TransformCounter(40))  # type: ignore[attr-defined]

    def test_context_authAndAddrLowered(self) -> None:
        """
        The auth bytes and the peer address reach the plugin; absent ones
        arrive as none.
        """
        plugin = intercept("context", self.component)
        self.assertEqual(  # type: ignore[attr-defined]
            plugin.intercept(KAFKA, b"tenant", "10.0.0.1:5000"), TransformKafka(b"tenant@10.0.0.1:5000")
        )
        self.assertEqual(plugin.intercept(KAFKA, None, None), TransformKafka(b"@"))  # type: ignore[attr-defined]
        self.assertEqual(plugin.intercept(COUNTER, b"abc", None), TransformCounter(3))  # type: ignore[attr-defined]

    def test_trap_raisesAndRecovers(self) -> None:
        """
        A trap raises L{PluginError} with reason C{trap}; the next call gets
        a fresh instance and succeeds.
        """
        plugin = intercept("trap", self.component)
        error = self.assertRaises(PluginError, plugin.intercept, COUNTER_ODD, None, None)  # type: ignore[attr-defined]
        self.assertEqual(error.reason, "trap")  # type: ignore[attr-defined]
        self.assertIn("unreachable", error.message)  # type: ignore[attr-defined]
        self.assertEqual(plugin.intercept(COUNTER, None, None), FORWARD)  # type: ignore[attr-defined]

    def test_stateful_instanceReusedThenRecreated(self) -> None:
        """
        One instance serves call after call (its state persists); after a
        trap, a new instance starts from scratch.
        """
        plugin = intercept("stateful", self.component)
        counts = [plugin.intercept(COUNTER, None, None) for _ in range(3)]
        self.assertEqual(counts, [TransformCounter(1), TransformCounter(2), TransformCounter(3)])  # type: ignore[attr-defined]
        self.assertRaises(PluginError, plugin.intercept, CounterEvent("ticks", 999), None, None)  # type: ignore[attr-defined]
        self.assertEqual(plugin.intercept(COUNTER, None, None), TransformCounter(1))  # type: ignore[attr-defined]

    def test_malformed_raises(self) -> None:
        """
        An action discriminant that does not exist is a failed call.
        """
        plugin = intercept("malformed", self.component)
        self.assertRaises(PluginError, plugin.intercept, COUNTER_ODD, None, None)  # type: ignore[attr-defined]
        self.assertEqual(plugin.intercept(COUNTER, None, None), FORWARD)  # type: ignore[attr-defined]

    def test_expiredBudget_timeout(self) -> None:
        """
        A call whose time budget has run out traps with reason C{timeout}:
        the loop plugin is stopped instead of spinning.
        """
        plugin = intercept("loop", self.component, wasm.Limits(0, LIMITS.max_memory_bytes))
        error = self.assertRaises(PluginError, plugin.intercept, COUNTER_ODD, None, None)  # type: ignore[attr-defined]
        self.assertEqual(error.reason, "timeout")  # type: ignore[attr-defined]


class CoreInterceptTests(InterceptHookMixin, SynchronousTestCase):
    """
    Intercept plugins that are core modules (Kiwi's canonical ABI).
    """

    component = False

    def test_memoryLimit_growthRefused(self) -> None:
        """
        Growing memory past the limit fails inside the plugin (which then
        traps); the next call works.
        """
        plugin = intercept("hog", limits=wasm.Limits(1000, 2 * 1024 * 1024))
        self.assertRaises(PluginError, plugin.intercept, COUNTER_ODD, None, None)
        self.assertEqual(plugin.intercept(COUNTER, None, None), FORWARD)

    def test_kafka_everyFieldLowered(self) -> None:
        """
        Events with every optional field absent, large offsets and empty
        strings are lowered without error, many times over (memory is
        reused through the post-return).
        """
        plugin = intercept("even")
        event = KafkaEvent("", "", 2**31 - 1, 2**63 - 1, None, None, None)
        for _ in range(2000):
            self.assertEqual(plugin.intercept(event, b"", ""), DISCARD)
        big = KafkaEvent("s", "t", 0, 0, None, b"2" * 200_000, 0)
        self.assertEqual(plugin.intercept(big, None, None), FORWARD)

    def test_kind_reported(self) -> None:
        """
        The description names the file and its kind.
        """
        self.assertEqual(intercept("even").description, "even.wasm (core module)")


class ComponentInterceptTests(InterceptHookMixin, SynchronousTestCase):
    """
    Intercept plugins that are components (wasmtime's component API).
    """

    component = True

    def test_kind_reported(self) -> None:
        """
        The description names the file and its kind.
        """
        self.assertEqual(intercept("even", True).description, "even-component.wasm (component)")


class AuthenticateHookMixin:
    """
    The authenticate hook, the same for core modules and components.
    """

    component: bool

    def test_apikey_outcomes(self) -> None:
        """
        The API-key plugin rejects a missing or wrong key, lets the right
        one in with context, and lets C{key=plain} in without context.
        """
        plugin = authenticate("apikey", self.component)
        self.assertTrue(verifyObject(IAuthenticator, plugin))  # type: ignore[attr-defined]
        self.assertEqual(plugin.thd_authenticate(request("/")), REJECT)  # type: ignore[attr-defined]
        self.assertEqual(plugin.thd_authenticate(request(None)), REJECT)  # type: ignore[attr-defined]
        self.assertEqual(plugin.thd_authenticate(request("/?key=nope")), REJECT)  # type: ignore[attr-defined]
        self.assertEqual(  # type: ignore[attr-defined]
            plugin.thd_authenticate(request("/?key=letmein")), WithContext(b"tenant-acme")
        )
        self.assertEqual(plugin.thd_authenticate(request("/?key=plain")), AUTHENTICATE)  # type: ignore[attr-defined]

    def test_apikey_headers(self) -> None:
        """
        Headers reach the plugin as (name, bytes) pairs.
        """
        plugin = authenticate("apikey", self.component)
        headers = (("host", b"x"), ("x-api-key", b"letmein"))
        self.assertEqual(plugin.thd_authenticate(request("/", headers)), WithContext(b"tenant-acme"))  # type: ignore[attr-defined]
        self.assertEqual(plugin.thd_authenticate(request("/", (("x-api-key", b"no"),))), REJECT)  # type: ignore[attr-defined]

    def test_echo_everyField(self) -> None:
        """
        Method, path, scheme, authority and header count are lowered as the
        world says.
        """
        plugin = authenticate("auth-echo", self.component)
        outcome = plugin.thd_authenticate(
            HttpRequest("GET", "/p?q=1", "https", "kiwi.example:443", (("a", b"1"), ("b", b"2")))
        )
        self.assertEqual(outcome, WithContext(b"0|/p?q=1|1|kiwi.example:443|2"))  # type: ignore[attr-defined]
        outcome = plugin.thd_authenticate(HttpRequest("GET", None, None, None, ()))
        self.assertEqual(outcome, WithContext(b"0||9||0"))  # type: ignore[attr-defined]

    def test_misbehaving_raises(self) -> None:
        """
        A trap or a malformed outcome raises L{PluginError}; the plugin keeps
        working afterwards.
        """
        plugin = authenticate("auth-misbehave", self.component)
        self.assertRaises(PluginError, plugin.thd_authenticate, request("/?mode=trap"))  # type: ignore[attr-defined]
        self.assertRaises(PluginError, plugin.thd_authenticate, request("/?mode=bad"))  # type: ignore[attr-defined]
        self.assertEqual(plugin.thd_authenticate(request("/")), AUTHENTICATE)  # type: ignore[attr-defined]

    def test_expiredBudget_timeout(self) -> None:
        """
        A plugin that loops is stopped by its time budget.
        """
        plugin = authenticate("auth-misbehave", self.component, wasm.Limits(0, LIMITS.max_memory_bytes))
        error = self.assertRaises(PluginError, plugin.thd_authenticate, request("/?mode=loop"))  # type: ignore[attr-defined]
        self.assertEqual(error.reason, "timeout")  # type: ignore[attr-defined]


class CoreAuthenticateTests(AuthenticateHookMixin, SynchronousTestCase):
    """
    Authenticate plugins that are core modules.
    """

    component = False


class ComponentAuthenticateTests(AuthenticateHookMixin, SynchronousTestCase):
    """
    Authenticate plugins that are components, linked with WASI and
    wasi:http.
    """

    component = True


class LoadTests(SynchronousTestCase):
    """
    What is refused at load time, and what the messages say.
    """

    def write(self, data: bytes, name: str = "plugin.wasm") -> str:
        path = os.path.join(self.mktemp())
        os.makedirs(path)
        path = os.path.join(path, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_load_wrongWorldCore(self) -> None:
        """
        An authenticate module given as intercept plugin is refused, saying
        what was expected, what was found, and what it looks like.
        """
        error = self.assertRaises(PluginLoadError, wasm.load_intercept, plugin_path("apikey"), LIMITS)
        message = str(error)
        self.assertIn("does not match the canonical ABI of kiwi:kiwi/intercept-hook", message)
        self.assertIn("it looks like an authenticate plugin", message)
        self.assertIn("no export intercept", message)
        self.assertIn("Expected exports intercept: (i32) -> (i32), cabi_realloc, memory", message)
        self.assertIn("found exports: authenticate, cabi_post_authenticate, cabi_realloc, memory", message)

    def test_load_wrongSignature(self) -> None:
        """
        An export with the wrong core signature is named with both types.
        """
        path = self.write(
            b'(module (memory (export "memory") 1) (func (export "intercept") (param i32 i32) (result i32) i32.const 0)'
            b' (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 0))',
            "bad.wat",
        )
        error = self.assertRaises(PluginLoadError, wasm.load_intercept, path, LIMITS)
        self.assertIn("intercept has type (i32, i32) -> (i32), expected (i32) -> (i32)", str(error))

    def test_load_wrongWorldComponent(self) -> None:
        """
        A component for the other world is refused, listing its exports.
        """
        error = self.assertRaises(PluginLoadError, wasm.load_intercept, plugin_path("apikey", True), LIMITS)
        self.assertIn("does not implement kiwi:kiwi/intercept-hook: expected the export intercept: func(ctx: ", str(error))
        self.assertIn("found exports: ", str(error))
        self.assertIn("authenticate (function)", str(error))

    def test_load_wrongComponentTypes(self) -> None:
        """
        A component whose function has other types is refused, showing the
        expected and the found signature.
        """
        path = self.write(
            b'(component (core module $m (func (export "f") (param i32) (result i32) i32.const 0))'
            b' (core instance $i (instantiate $m))'
            b' (func $f (param "ctx" u32) (result u32) (canon lift (core func $i "f")))'
            b' (export "intercept" (func $f)))',
            "types.wat",
        )
        error = self.assertRaises(PluginLoadError, wasm.load_intercept, path, LIMITS)
        self.assertIn("found intercept: func(ctx: u32) -> u32", str(error))
        self.assertIn("expected intercept: func(ctx: record { auth: option<list<u8>>", str(error))

    def test_load_notWasm(self) -> None:
        """
        A file that is neither WebAssembly binary nor text is refused.
        """
        error = self.assertRaises(PluginLoadError, wasm.load_intercept, self.write(b"\x7fELF...."), LIMITS)
        self.assertIn("expected a WebAssembly core module or component", str(error))

    def test_load_badText(self) -> None:
        """
        WebAssembly text that does not parse is refused with the parser's
        message.
        """
        error = self.assertRaises(PluginLoadError, wasm.load_intercept, self.write(b"(module (func $x"), LIMITS)
        self.assertIn("is WebAssembly text that does not parse", str(error))

    def test_load_missingFile(self) -> None:
        """
        A file that cannot be read is refused.
        """
        error = self.assertRaises(PluginLoadError, wasm.load_intercept, "/nonexistent/x.wasm", LIMITS)
        self.assertIn("cannot read /nonexistent/x.wasm", str(error))

    def test_load_startTraps(self) -> None:
        """
        A module whose start function traps is refused at load.
        """
        source = wasm_plugins.SOURCES["even"][: -1] + "(func $boom unreachable) (start $boom))"
        error = self.assertRaises(PluginLoadError, wasm.load_intercept, self.write(source.encode(), "s.wat"), LIMITS)
        self.assertIn("instantiation trapped", str(error))

    def test_load_foreignImportsTrap(self) -> None:
        """
        Imports other than WASI preview 1 (such as wasi:http's, which only
        components get) are linked as traps: loading works, calling them
        traps.
        """
        source = wasm_plugins.SOURCES["even"].replace(
            "(module",
            '(module (import "wasi:http/outgoing-handler@0.2.0" "handle" (func $handle (param i32) (result i32)))',
            1,
        ).replace(
            '(func (export "intercept") (param $ctx i32) (result i32)',
            '(func (export "intercept") (param $ctx i32) (result i32) (drop (call $handle (i32.const 0)))',
        )
        plugin = wasm.load_intercept(self.write(source.encode(), "imports.wat"), LIMITS)
        self.assertEqual(plugin.foreign_imports, ["wasi:http/outgoing-handler@0.2.0#handle"])
        self.assertRaises(PluginError, plugin.intercept, COUNTER, None, None)

    def test_deadlineTicks(self) -> None:
        """
        A budget of n ms is n + 1 ticks of a millisecond; 0 is expired.
        """
        self.assertEqual(wasm.deadline_ticks(0), 0)
        self.assertEqual(wasm.deadline_ticks(5), 6)


class HooksConfigTests(SynchronousTestCase):
    """
    The C{hooks} section: paths, limits, and loading at validation.
    """

    def parse(self, hooks: str, directory: str | None = None) -> Any:
        directory = directory or _directory
        text = "sources: []\nserver: {listen: 'tcp:0'}\n" + hooks
        return parse_config(text, os.path.join(directory, "kiwi.yml"), MemoryReactor())

    def test_hooks_relativePathsLoaded(self) -> None:
        """
        Relative paths are resolved against the configuration file's
        directory and the plugins are loaded with the configured limits.
        """
        plugin_path("apikey")
        plugin_path("even")
        config = self.parse(
            "hooks:\n  authenticate: apikey.wasm\n  intercept: ./even.wasm\n  timeout_ms: 7\n  max_memory_mb: 32\n"
        )
        hooks = config.hooks
        self.assertEqual(hooks.authenticate, os.path.join(_directory, "apikey.wasm"))
        self.assertEqual(hooks.intercept, os.path.join(_directory, "even.wasm"))
        self.assertEqual((hooks.timeout_ms, hooks.authenticate_timeout_ms, hooks.max_memory_mb), (7, 1000, 32))
        self.assertEqual(hooks.interceptor.limits, wasm.Limits(7, 32 * 1024 * 1024))
        self.assertEqual(hooks.authenticator.limits, wasm.Limits(1000, 32 * 1024 * 1024))
        self.assertEqual(hooks.interceptor.intercept(COUNTER, None, None), FORWARD)

    def test_hooks_defaults(self) -> None:
        """
        Without hooks there are no plugins; the limits have their defaults.
        """
        hooks = self.parse("").hooks
        self.assertEqual(hooks, HooksConfig())
        self.assertEqual((hooks.timeout_ms, hooks.authenticate_timeout_ms, hooks.max_memory_mb), (10, 1000, 64))
        self.assertIsNone(hooks.interceptor)

    def test_hooks_badValues(self) -> None:
        """
        Bad limits and a plugin for the wrong hook are all reported, each
        with its key path.
        """
        plugin_path("apikey")
        error = self.assertRaises(
            ConfigErrors,
            self.parse,
            "hooks: {intercept: apikey.wasm, timeout_ms: 0, max_memory_mb: 5000, authenticate: 3}\n",
        )
        self.assertEqual(
            [p.split(":")[0] for p in error.problems],
            ["hooks.timeout_ms", "hooks.max_memory_mb", "hooks.authenticate"],
        )
        error = self.assertRaises(ConfigErrors, self.parse, "hooks: {intercept: apikey.wasm}\n")
        self.assertEqual(len(error.problems), 1)
        self.assertTrue(error.problems[0].startswith("hooks.intercept: "), error.problems)
        self.assertIn("does not match the canonical ABI of kiwi:kiwi/intercept-hook", error.problems[0])


@implementer(IInterceptor)
class FakeInterceptor:
    """
    Answers from a table keyed by connection id and count, recording calls.
    """

    description = "fake"

    def __init__(self, answers: dict[tuple[str | None, int], Action | Exception]) -> None:
        self.answers = answers
        self.calls: list[tuple[Event, bytes | None, str | None]] = []

    def intercept(self, event: Event, auth: bytes | None, addr: str | None) -> Action:
        self.calls.append((event, auth, addr))
        count = event.count if isinstance(event, CounterEvent) else event.offset
        answer = self.answers.get((addr, count), self.answers.get((None, count), FORWARD))
        if isinstance(answer, Exception):
            raise answer
        return answer


class InterceptRegistryTests(SynchronousTestCase):
    """
    L{Registry.publish} with an intercept plugin.
    """

    def setUp(self) -> None:
        self.failures: list[tuple[str, str]] = []
        self.slot: PluginSlot[IInterceptor] = PluginSlot()
        self.registry = Registry(SubscriberConfig(buffer_capacity=5), intercept=self.slot, count_failure=self.count)
        self.registry.add_source(FakeSource("ticks"))
        self.a = FakeSubscriber("a", b"ctx-a", "10.0.0.1:1")
        self.b = FakeSubscriber("b", None, "10.0.0.2:2")
        self.registry.subscribe(self.a, "ticks", "push")
        self.registry.subscribe(self.b, "ticks", "push")

    def count(self, hook: str, reason: str) -> int:
        self.failures.append((hook, reason))
        return len(self.failures)

    def test_noPlugin_sharedFrame(self) -> None:
        """
        Without a plugin every subscriber gets the same frame.
        """
        self.registry.publish("ticks", [CounterEvent("ticks", 1)])
        self.assertIs(self.a.frames[0], self.b.frames[0])

    def test_forward_sharedFrame(self) -> None:
        """
        Forwarded events still share one frame; the plugin is asked once per
        subscriber with that subscriber's auth context and address.
        """
        plugin = FakeInterceptor({})
        self.slot.swap(plugin)
        self.registry.publish("ticks", [CounterEvent("ticks", 1)])
        self.assertIs(self.a.frames[0], self.b.frames[0])
        self.assertEqual(
            [(auth, addr) for _, auth, addr in plugin.calls], [(b"ctx-a", "10.0.0.1:1"), (None, "10.0.0.2:2")]
        )

    def test_perSubscriber_decisions(self) -> None:
        """
        Discard drops the event for one subscriber only; transform gives one
        subscriber its own frame with the new value.
        """
        self.slot.swap(
            FakeInterceptor({("10.0.0.1:1", 1): DISCARD, ("10.0.0.2:2", 2): TransformCounter(200)})
        )
        self.registry.publish("ticks", [CounterEvent("ticks", 1), CounterEvent("ticks", 2)])
        self.assertEqual(self.a.counts(), [2])
        self.assertEqual(self.b.counts(), [1, 200])
        self.assertIsNot(self.a.frames[0], self.b.frames[1])

    def test_failure_dropsOneEventForOneSubscriber(self) -> None:
        """
        A failed call drops that event for that subscriber, is counted and
        logged, and never closes anything.
        """
        self.slot.swap(FakeInterceptor({("10.0.0.1:1", 1): PluginError("trap", "boom")}))
        self.registry.publish("ticks", [CounterEvent("ticks", 1), CounterEvent("ticks", 2)])
        self.assertEqual(self.a.counts(), [2])
        self.assertEqual(self.b.counts(), [1, 2])
        self.assertEqual(self.failures, [("intercept", "trap")])

    def test_wrongKind_dropped(self) -> None:
        """
        A Kafka transform for a counter event is a failure of kind
        C{malformed}.
        """
        self.slot.swap(FakeInterceptor({(None, 1): TransformKafka(b"x")}))
        self.registry.publish("ticks", [CounterEvent("ticks", 1)])
        self.assertEqual(self.a.frames, [])
        self.assertEqual(self.failures, [("intercept", "malformed"), ("intercept", "malformed")])

    def test_bug_droppedAndLogged(self) -> None:
        """
        An unexpected exception is logged as a failure and counted.
        """
        self.slot.swap(FakeInterceptor({(None, 1): RuntimeError("bug")}))
        self.registry.publish("ticks", [CounterEvent("ticks", 1)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(self.failures, [("intercept", "error"), ("intercept", "error")])

    def test_kafkaTransform_payloadReplaced(self) -> None:
        """
        A Kafka transform replaces the payload and keeps the other fields.
        """
        self.registry.add_source(FakeSource("orders"))
        self.registry.subscribe(self.a, "orders", "push")
        self.slot.swap(FakeInterceptor({(None, 42): TransformKafka(None)}))
        self.registry.publish("orders", [KAFKA])
        data = json.loads(self.a.frames[0].payload)["data"]
        self.assertEqual((data["payload"], data["key"], data["offset"]), (None, "a2V5", 42))

    def test_pull_discardedNotBuffered(self) -> None:
        """
        In pull mode the plugin decides before the event is buffered.
        """
        c = FakeSubscriber("c", None, "10.0.0.3:3")
        self.registry.subscribe(c, "ticks", "pull")
        self.slot.swap(FakeInterceptor({("10.0.0.3:3", 1): DISCARD}))
        self.registry.publish("ticks", [CounterEvent("ticks", 1), CounterEvent("ticks", 2)])
        self.registry.request(c, "ticks", 5)
        self.assertEqual(c.counts(), [2])

    def test_swap_betweenPublishes(self) -> None:
        """
        A swapped plugin applies from the next event on; swapping to none
        restores the shared fast path.
        """
        self.slot.swap(FakeInterceptor({(None, 1): DISCARD}))
        self.registry.publish("ticks", [CounterEvent("ticks", 1)])
        self.slot.swap(None)
        self.registry.publish("ticks", [CounterEvent("ticks", 1)])
        self.assertEqual(self.a.counts(), [1])


@implementer(IAuthenticator)
class FakeAuthenticator:
    """
    Answers every handshake with C{outcome} (or raises it).
    """

    description = "fake-auth"

    def __init__(self, outcome: Outcome | Exception) -> None:
        self.outcome = outcome
        self.requests: list[HttpRequest] = []

    def thd_authenticate(self, request: HttpRequest) -> Outcome:
        self.requests.append(request)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


class PluginHostTests(SynchronousTestCase):
    """
    The C{plugins} service.
    """

    def test_apply_swapsBoth(self) -> None:
        """
        C{apply} puts the plugins of a new configuration in force.
        """
        host = PluginHost(HooksConfig(), Clock(), inline_runner)
        self.assertIsNone(host.intercept.current)
        interceptor, authenticator = FakeInterceptor({}), FakeAuthenticator(REJECT)
        host.apply(HooksConfig(interceptor=interceptor, authenticator=authenticator))
        self.assertIs(host.intercept.current, interceptor)
        self.assertIs(host.authenticate.current, authenticator)
        self.assertEqual(
            host.status(),
            {
                "authenticate": {"plugin": "fake-auth", "failures": {}},
                "intercept": {"plugin": "fake", "failures": {}},
            },
        )
        host.apply(HooksConfig())
        self.assertIsNone(host.authenticate.current)
        self.assertEqual(host.status(), {})

    def test_runAuthenticate_failureRejects(self) -> None:
        """
        A failing plugin counts as a rejection, counted by reason and
        logged.
        """
        host = PluginHost(HooksConfig(), Clock(), inline_runner)
        outcome = self.successResultOf(
            Deferred.fromCoroutine(
                host.run_authenticate(FakeAuthenticator(PluginError("timeout", "slow")), request(), "c1")
            )
        )
        self.assertEqual(outcome, REJECT)
        self.assertEqual(host.failures["authenticate"], {"timeout": 1})

    def test_runAuthenticate_hangRejectsAfterTimeout(self) -> None:
        """
        A call that never returns is given up after the authenticate budget
        plus a second: the handshake is refused.
        """
        clock = Clock()
        pending: Deferred[Outcome] = Deferred()
        host = PluginHost(HooksConfig(authenticate_timeout_ms=500), clock, lambda f, *a: pending)
        d = Deferred.fromCoroutine(host.run_authenticate(FakeAuthenticator(AUTHENTICATE), request(), "c1"))
        self.assertNoResult(d)
        clock.advance(1.6)
        self.assertEqual(self.successResultOf(d), REJECT)
        self.assertEqual(host.failures["authenticate"], {"timeout": 1})

    def test_service_noPluginsNoTicker(self) -> None:
        """
        Without plugins, starting and stopping the service starts no thread.
        """
        host = PluginHost(HooksConfig(), Clock(), inline_runner)
        host.startService()
        self.assertIsNone(host._ticker)
        self.successResultOf(host.stopService())


class AuthenticateHandshakeTests(SynchronousTestCase):
    """
    The authenticate hook in real (in-memory) WebSocket handshakes.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.patch(txaio.config, "loop", self.clock)  # type: ignore[attr-defined]
        self.registry = Registry(SubscriberConfig())
        self.registry.add_source(FakeSource("ticks"))

    def handshake(self, authenticator: FakeAuthenticator, path: str = "/?key=abc") -> tuple[RecordingClient, Any]:
        host = PluginHost(HooksConfig(authenticator=authenticator), self.clock, inline_runner)
        factory = KiwiServerFactory(self.registry, self.clock, plugins=host)
        server = factory.buildProtocol(CLIENT_ADDRESS)
        client_factory = WebSocketClientFactory(url=f"ws://localhost:8000{path}", reactor=self.clock)
        client_factory.protocol = RecordingClient
        client = client_factory.buildProtocol(SERVER_ADDRESS)
        server_io = iosim.FakeTransport(server, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=CLIENT_ADDRESS)
        client_io = iosim.FakeTransport(client, isServer=False, hostAddress=CLIENT_ADDRESS, peerAddress=SERVER_ADDRESS)
        pump = iosim.connect(server, server_io, client, client_io, clock=self.clock)
        pump.flush()
        self.addCleanup(self._close, client, pump)
        return client, server

    def _close(self, client: RecordingClient, pump: iosim.IOPump) -> None:
        if client.state == client.STATE_OPEN:
            client.sendClose()
        pump.flush()
        self.clock.advance(120)
        pump.flush()

    def test_withContext_attached(self) -> None:
        """
        A with-context outcome opens the connection and attaches the bytes;
        the plugin saw the method, path, scheme, authority and headers.
        """
        authenticator = FakeAuthenticator(WithContext(b"tenant"))
        client, server = self.handshake(authenticator)
        self.assertTrue(client.opened)
        self.assertEqual(server.auth_context, b"tenant")
        self.assertEqual(server.plugin_addr, "127.0.0.1:40000")
        seen = authenticator.requests[0]
        self.assertEqual((seen.method, seen.path_with_query, seen.scheme), ("GET", "/?key=abc", "http"))
        self.assertEqual(seen.authority, "localhost:8000")
        self.assertIn("sec-websocket-key", dict(seen.headers))
        self.assertEqual(dict(seen.headers)["host"], b"localhost:8000")

    def test_reject_401(self) -> None:
        """
        A reject outcome refuses the handshake with 401.
        """
        client, server = self.handshake(FakeAuthenticator(REJECT))
        self.assertFalse(client.opened)
        self.assertTrue(client.http_status_line.startswith("HTTP/1.1 401"), client.http_status_line)
        self.assertEqual(self.registry.subscriber_count("ticks"), 0)

    def test_failure_failsClosed(self) -> None:
        """
        A failing plugin refuses the handshake.
        """
        client, server = self.handshake(FakeAuthenticator(PluginError("trap", "boom")))
        self.assertFalse(client.opened)
        self.assertIsNone(server.auth_context)

    def test_authenticate_noContext(self) -> None:
        """
        A plain authenticate outcome opens the connection without context.
        """
        client, server = self.handshake(FakeAuthenticator(AUTHENTICATE))
        self.assertTrue(client.opened)
        self.assertIsNone(server.auth_context)


class CommandReplyTests(SynchronousTestCase):
    """
    Nothing about plugins changes the wire format.
    """

    def test_transformedFrame_sameShape(self) -> None:
        """
        A transformed counter event is encoded like any other.
        """
        event = TransformCounter(9).apply(COUNTER)
        self.assertEqual(protocol.encode_result(event), protocol.encode_result(CounterEvent("ticks", 9)))


class SocketAddressTests(SynchronousTestCase):
    """
    The peer address intercept plugins see as C{connection.addr}.
    """

    def test_socketAddress_forms(self) -> None:
        """
        IPv4 peers are C{ip:port}, IPv6 peers C{[ip]:port}, and peers
        without an IP address (Unix sockets) have none.
        """
        from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

        from kiwi.ws import _socket_address

        class Transport:
            def __init__(self, peer: object) -> None:
                self.peer = peer

            def getPeer(self) -> object:
                return self.peer

        self.assertEqual(_socket_address(Transport(IPv4Address("TCP", "10.1.2.3", 5000))), "10.1.2.3:5000")
        self.assertEqual(_socket_address(Transport(IPv6Address("TCP", "::1", 5000))), "[::1]:5000")
        self.assertIsNone(_socket_address(Transport(UNIXAddress(b"/run/kiwi.sock"))))
        self.assertIsNone(_socket_address(object()))


class ForeignImportsLogTests(SynchronousTestCase):
    """
    A core module that imports what only components get is loaded with a
    warning.
    """

    def test_startService_warnsForeignImports(self) -> None:
        """
        Starting the plugins service names the imports that will trap.
        """
        from twisted.logger import LogLevel, capturedLogs

        interceptor = FakeInterceptor({})
        interceptor.foreign_imports = ["wasi:http/types@0.2.0#[resource-drop]fields"]  # type: ignore[attr-defined]
        host = PluginHost(HooksConfig(interceptor=interceptor), Clock(), inline_runner)
        host._start_ticker = lambda: None  # type: ignore[method-assign]
        with capturedLogs() as events:
            host.startService()
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["imports"], "wasi:http/types@0.2.0#[resource-drop]fields")
        self.successResultOf(host.stopService())
