"""
WebAssembly plugins on wasmtime: the only module that imports wasmtime.

Two kinds of file are accepted for each hook (see C{docs/plugins.md}):

 - B{Core modules} (C{wasm32-wasip1}) whose exports follow the component
   model's canonical ABI for the hook's world: C{intercept} or
   C{authenticate}, C{cabi_realloc}, C{memory} and optionally
   C{cabi_post_*} and C{_initialize}. This is what the original Kiwi's Rust
   SDK produces. Kiwi lowers arguments and lifts results itself, straight
   through wasmtime's C API (ctypes), which is several times faster than
   wasmtime-py's generic C{Func.__call__}. WASI preview 1 is linked in;
   any other import (such as wasi:http, which the canonical ABI would need
   resources for) is defined to trap when called.
 - B{Components} implementing the world, run through wasmtime's component
   API with WASI 0.2 and, for authenticate, wasi:http's outgoing handler.

Every call runs under an epoch deadline (L{EpochTicker} advances the
engine's epoch every millisecond) and every instance has a memory limit. An
instance that traps, times out or returns something malformed is thrown
away; the next call gets a fresh one.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable
from ctypes import c_size_t, c_uint64, c_void_p
from typing import Any

import attrs
import wasmtime
import wasmtime.component as wc
from wasmtime import _ffi as ffi
from zope.interface import implementer

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
    TransformCounter,
    TransformKafka,
    WithContext,
)

TICK_SECONDS = 0.001
"""
How often L{EpochTicker} advances the engine's epoch: one tick per
millisecond, so a deadline of C{timeout_ms} is C{timeout_ms + 1} ticks.
"""

SETUP_TIMEOUT_MS = 10_000
"""
The time budget of instantiating a plugin (start functions, C{_initialize},
a Python component's start-up), separate from the per-call budget.
"""


@attrs.frozen
class Limits:
    """
    The sandbox of one plugin.

    @ivar timeout_ms: Time budget of one call (0: already expired, for
        tests).
    @ivar max_memory_bytes: The most linear memory one instance may have.
    """

    timeout_ms: int
    max_memory_bytes: int


# The engine and its epoch


_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()


def engine() -> wasmtime.Engine:
    """
    The process's wasmtime engine: epoch interruption and the component
    model on.
    """
    global _engine
    with _engine_lock:
        if _engine is None:
            config = wasmtime.Config()
            config.epoch_interruption = True
            config.wasm_component_model = True
            config.cranelift_opt_level = "speed"
            # Linear memories stay where they are when they grow, so that a
            # view of one stays valid (the fast path caches it).
            config.memory_may_move = False
            _engine = wasmtime.Engine(config)
        return _engine


def deadline_ticks(timeout_ms: int) -> int:
    """
    The epoch deadline, in ticks after the current epoch, for a budget of
    C{timeout_ms}: a call traps between C{timeout_ms} and C{timeout_ms + 1}
    milliseconds after it starts (0 traps at once).
    """
    return 0 if timeout_ms <= 0 else timeout_ms + 1


TIMEOUT_MARKER = "kiwi: the plugin used up its time budget"


class _Budget:
    """
    The time budget of one instance's calls, consulted by wasmtime when an
    epoch deadline passes (L{_on_deadline}).

    A deadline that passes means the call has taken C{timeout_ms} of wall
    time. On a busy host that may be time the thread spent waiting for a
    CPU, so the first time it passes in a call Kiwi notes the thread's CPU
    time and lets the call go on; it is stopped once it has used another
    C{timeout_ms} of CPU, or once it has run another C{5 × timeout_ms + 50 ms}
    of wall time. A plugin that spins is thus stopped after about twice its
    budget on an idle host, and within C{6 × timeout_ms + 50 ms} on any.

    @ivar cpu_mark: The thread's CPU time when the deadline first passed in
        the current call (C{None}: it has not); reset at every call.
    """

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_s = timeout_ms / 1000
        self.cpu_mark: float | None = None
        self.wall_mark = 0.0


_budgets: weakref.WeakValueDictionary[int, _Budget] = weakref.WeakValueDictionary()


def _on_deadline(context: Any, data: Any, delta: Any, kind: Any) -> int:
    """
    wasmtime's epoch deadline callback: continue the call (setting the next
    deadline) or stop it with an error carrying L{TIMEOUT_MARKER}.
    """
    try:
        budget = _budgets.get(data or 0)
        if budget is not None and budget.timeout_s > 0:
            now_cpu = time.thread_time()
            if budget.cpu_mark is None:
                budget.cpu_mark = now_cpu
                budget.wall_mark = time.monotonic()
                remaining = budget.timeout_s
            else:
                remaining = budget.timeout_s - (now_cpu - budget.cpu_mark)
                if time.monotonic() - budget.wall_mark > budget.timeout_s * 5 + 0.05:
                    remaining = 0
            if remaining > 0:
                delta[0] = max(1, int(remaining / TICK_SECONDS))
                kind[0] = 0
                return 0
    except Exception:
        pass
    error = ffi.wasmtime_error_new(TIMEOUT_MARKER.encode("utf-8"))
    address: int = ctypes.cast(error, c_void_p).value or 0
    return address


_ON_DEADLINE = ctypes.CFUNCTYPE(
    c_size_t, c_void_p, c_void_p, ctypes.POINTER(c_uint64), ctypes.POINTER(ctypes.c_uint8)
)(_on_deadline)


def _watch_deadlines(store: wasmtime.Store, timeout_ms: int) -> _Budget:
    """
    Make C{store}'s epoch deadlines go through L{_on_deadline} with a
    budget of C{timeout_ms}; the caller keeps the returned budget alive and
    resets its C{cpu_mark} before each call.
    """
    budget = _Budget(timeout_ms)
    _budgets[id(budget)] = budget
    _set_deadline_callback(
        ctypes.cast(store.ptr(), c_void_p).value, ctypes.cast(_ON_DEADLINE, c_void_p).value, id(budget), None
    )
    return budget


class EpochTicker:
    """
    A daemon thread that advances the engine's epoch every L{TICK_SECONDS},
    which is what makes epoch deadlines expire.

    The thread only calls into wasmtime (an atomic increment); wasm code runs
    with the GIL released, so the ticker keeps time even while a plugin
    spins.
    """

    def __init__(self, period: float = TICK_SECONDS) -> None:
        self._period = period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._thd_run, name="kiwi-wasm-epoch", daemon=True)
        self._thread.start()

    def _thd_run(self) -> None:
        eng = engine()
        while not self._stop.wait(self._period):
            eng.increment_epoch()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(1.0)


# Reading files


def read_binary(path: str) -> bytes:
    """
    The WebAssembly binary in C{path}; WebAssembly text (C{.wat}) is
    accepted too, as the original Kiwi does.

    @raise PluginLoadError: if the file cannot be read or is neither.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PluginLoadError(f"cannot read {path}: {e.strerror}") from None
    if data[:4] == b"\0asm":
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text.lstrip().startswith("(") or text.lstrip().startswith(";;"):
        try:
            return bytes(wasmtime.wat2wasm(text))
        except wasmtime.WasmtimeError as e:
            raise PluginLoadError(f"{path} is WebAssembly text that does not parse: {_first_line(e)}") from None
    raise PluginLoadError(
        f"expected a WebAssembly core module or component, but {path} does not start with the "
        f"WebAssembly magic bytes (found {data[:8]!r})"
    )


def binary_kind(data: bytes) -> str:
    """
    C{"core module"} or C{"component"}, from the binary's preamble.

    @raise PluginLoadError: for any other version or layer.
    """
    version = data[4:8]
    if version == b"\x01\x00\x00\x00":
        return "core module"
    if version[2:4] == b"\x01\x00":
        return "component"
    raise PluginLoadError(f"unknown WebAssembly binary version/layer {version.hex()}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _message(error: BaseException) -> str:
    text = " ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())
    if "Caused by:" in text:
        # wasmtime puts a backtrace first; the cause is what says something.
        text = text.split("Caused by:", 1)[1].strip()
    return text[:300] if text else type(error).__name__


# Raw access to wasmtime's C API, for the core-module fast path.


def _proto(name: str, restype: Any, *argtypes: Any) -> Any:
    address = ctypes.cast(getattr(ffi.dll, name), c_void_p).value
    assert address is not None
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


_call_unchecked = _proto("wasmtime_func_call_unchecked", c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p)
_memory_data = _proto("wasmtime_memory_data", c_void_p, c_void_p, c_void_p)
_memory_data_size = _proto("wasmtime_memory_data_size", c_size_t, c_void_p, c_void_p)
_set_epoch_deadline = _proto("wasmtime_context_set_epoch_deadline", None, c_void_p, c_uint64)
_set_deadline_callback = _proto(
    "wasmtime_store_epoch_deadline_callback", None, c_void_p, c_void_p, c_void_p, c_void_p
)
_memmove = ctypes.memmove
_string_at = ctypes.string_at

_ARGS = ffi.wasmtime_val_raw_t * 16

_INTERCEPT_KAFKA = struct.Struct("<BxxxIIBxxxBxxxII4xB7xBxxxIIIIII4xB7xQI4xQ")
_INTERCEPT_COUNTER = struct.Struct("<BxxxIIBxxxBxxxII4xB7xIIQ48x")
assert _INTERCEPT_KAFKA.size == _INTERCEPT_COUNTER.size == 104
_U32_PAIR = struct.Struct("<II")
_U64 = struct.Struct("<Q")

_CORE_SIGNATURES = {
    "intercept": ("(i32) -> (i32)", 1),
    "authenticate": ("(" + ", ".join(["i32"] * 15) + ") -> (i32)", 15),
}


def _core_signature(ty: wasmtime.FuncType) -> str:
    params = ", ".join(str(p) for p in ty.params)
    results = ", ".join(str(r) for r in ty.results)
    return f"({params}) -> ({results})"


def _glue_source(has_post: bool) -> str:
    """
    A small core module instantiated beside an intercept plugin, in its
    store: one call from Python performs the previous call's post-return
    and every allocation the next call needs, in the order the canonical
    ABI would, and reports the memory's size. Crossing from Python into
    wasm is what costs (microseconds); calls inside wasm cost nanoseconds.

    C{prepare(has_prev, prev, s1..s6)} calls C{cabi_post_intercept(prev)}
    if C{has_prev}, then C{cabi_realloc(0, 0, 1, sN)} for each of C{s1..s5}
    that is not negative (0 for those that are), then
    C{cabi_realloc(0, 0, 8, s6)}, and returns the six pointers and the
    memory's size in pages.
    """
    post_import = '(import "guest" "post" (func $post (param i32)))' if has_post else ""
    post_call = "(if (local.get $has_prev) (then (call $post (local.get $prev))))" if has_post else ""
    sizes = " ".join(f"(param $s{i} i32)" for i in range(1, 7))
    allocs = " ".join(f"(call $alloc (i32.const 1) (local.get $s{i}))" for i in range(1, 6))
    return f"""(module
      (import "guest" "realloc" (func $realloc (param i32 i32 i32 i32) (result i32)))
      {post_import}
      (import "guest" "memory" (memory 0))
      (func $alloc (param $align i32) (param $size i32) (result i32)
        (if (result i32) (i32.lt_s (local.get $size) (i32.const 0))
          (then (i32.const 0))
          (else (call $realloc (i32.const 0) (i32.const 0) (local.get $align) (local.get $size)))))
      (func (export "prepare") (param $has_prev i32) (param $prev i32) {sizes}
            (result i32 i32 i32 i32 i32 i32 i32)
        {post_call}
        {allocs}
        (call $alloc (i32.const 8) (local.get $s6))
        (memory.size)))"""


class _CoreModule:
    """
    A compiled core module checked against a hook's canonical ABI.
    """

    def __init__(self, path: str, data: bytes, hook: str) -> None:
        eng = engine()
        try:
            module = wasmtime.Module(eng, data)
        except wasmtime.WasmtimeError as e:
            raise PluginLoadError(f"{path} does not compile as a WebAssembly core module: {_message(e)}") from None
        exports = {export.name: export.type for export in module.exports}
        problems = []
        expected_signature, self.arity = _CORE_SIGNATURES[hook]
        wanted = {
            hook: expected_signature,
            "cabi_realloc": "(i32, i32, i32, i32) -> (i32)",
        }
        for name, signature in wanted.items():
            found = exports.get(name)
            if found is None:
                problems.append(f"no export {name}")
            elif not isinstance(found, wasmtime.FuncType):
                problems.append(f"{name} is not a function")
            elif _core_signature(found) != signature:
                problems.append(f"{name} has type {_core_signature(found)}, expected {signature}")
        if not isinstance(exports.get("memory"), wasmtime.MemoryType):
            problems.append("no exported memory named memory")
        post = exports.get(f"cabi_post_{hook}")
        if post is not None and (not isinstance(post, wasmtime.FuncType) or _core_signature(post) != "(i32) -> ()"):
            problems.append(f"cabi_post_{hook} is not a function (i32) -> ()")
        if problems:
            other = "authenticate" if hook == "intercept" else "intercept"
            hint = f" (it looks like an {other} plugin)" if other in exports else ""
            found_names = ", ".join(sorted(exports)) or "nothing"
            raise PluginLoadError(
                f"{path} is a core module but does not match the canonical ABI of kiwi:kiwi/{hook}-hook{hint}: "
                + "; ".join(problems)
                + f". Expected exports {hook}: {expected_signature}, cabi_realloc, memory"
                f" (and optionally cabi_post_{hook}); found exports: {found_names}"
            )
        self.hook = hook
        self.has_post = post is not None
        self.has_initialize = isinstance(exports.get("_initialize"), wasmtime.FuncType)
        self.foreign_imports = sorted(
            {f"{i.module}#{i.name}" for i in module.imports if i.module != "wasi_snapshot_preview1"}
        )
        self.glue = wasmtime.Module(eng, bytes(wasmtime.wat2wasm(_glue_source(self.has_post))))
        linker = wasmtime.Linker(eng)
        try:
            linker.define_wasi()
            linker.define_unknown_imports_as_traps(module)
            self.pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as e:
            raise PluginLoadError(f"{path}: cannot link the module's imports: {_message(e)}") from None


class _CoreInstance:
    """
    One instance of a core module in its own store, called through the raw
    C API. Not thread-safe: one caller at a time.
    """

    def __init__(self, module: _CoreModule, limits: Limits) -> None:
        eng = engine()
        store = wasmtime.Store(eng)
        store.set_limits(memory_size=limits.max_memory_bytes)
        wasi = wasmtime.WasiConfig()
        wasi.inherit_stderr()
        store.set_wasi(wasi)
        store.set_epoch_deadline(deadline_ticks(SETUP_TIMEOUT_MS))
        try:
            instance = module.pre.instantiate(store)
            exports = instance.exports(store)
            if module.has_initialize:
                initialize = exports["_initialize"]
                assert isinstance(initialize, wasmtime.Func)
                initialize(store)
        except wasmtime.Trap as e:
            raise PluginError(_trap_reason(e), f"instantiation trapped: {_message(e)}") from None
        except wasmtime.WasmtimeError as e:
            raise PluginError("trap", f"instantiation failed: {_message(e)}") from None
        self._store = store
        self._context = ctypes.cast(store._context(), c_void_p).value
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self._memory_export = memory
        self._memory = ctypes.addressof(memory._memory)
        self._funcs = []
        for name in (module.hook, "cabi_realloc", f"cabi_post_{module.hook}"):
            func = exports.get(name) if name != f"cabi_post_{module.hook}" or module.has_post else None
            if func is not None:
                assert isinstance(func, wasmtime.Func)
                self._funcs.append(func)
        self._export = ctypes.addressof(self._funcs[0]._func)
        self._realloc = ctypes.addressof(self._funcs[1]._func)
        self._post = ctypes.addressof(self._funcs[2]._func) if module.has_post else None
        self._args = _ARGS()
        self._args_address = ctypes.addressof(self._args)
        self._trap = c_void_p()
        self._trap_address = ctypes.addressof(self._trap)
        self._ticks = deadline_ticks(limits.timeout_ms)
        self._budget = _watch_deadlines(store, limits.timeout_ms)
        self._pending: int | None = None
        self._view = memoryview(b"")
        self._view_size = 0
        self._view_pages = -1
        self._prepare = 0
        if module.hook == "intercept":
            imports: list[wasmtime.Func | wasmtime.Memory] = [self._funcs[1]]
            if module.has_post:
                imports.append(self._funcs[2])
            imports.append(memory)
            try:
                glue = wasmtime.Instance(store, module.glue, imports)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
                raise PluginError("trap", f"cannot link Kiwi's glue module: {_message(e)}") from None
            prepare = glue.exports(store)["prepare"]
            assert isinstance(prepare, wasmtime.Func)
            self._funcs.append(prepare)
            self._prepare = ctypes.addressof(prepare._func)

    def _call(self, func: int, count: int) -> int:
        error = _call_unchecked(self._context, func, self._args_address, count, self._trap_address)
        if error:
            failure = wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, ctypes.POINTER(ffi.wasmtime_error_t)))
            if _trap_reason(failure) == "timeout":
                raise PluginError("timeout", "the call ran out of time (hooks.timeout_ms)")
            raise PluginError("trap", f"the plugin failed: {_message(failure)}")
        if self._trap.value:
            trap = wasmtime.Trap._from_ptr(ctypes.cast(self._trap.value, ctypes.POINTER(ffi.wasm_trap_t)))
            self._trap.value = None
            reason = _trap_reason(trap)
            if reason == "timeout":
                raise PluginError("timeout", "the call ran out of time (hooks.timeout_ms)")
            raise PluginError(reason, f"the plugin trapped: {_message(trap)}")
        result: int = self._args[0].i32
        return result

    def _alloc(self, align: int, size: int) -> int:
        args = self._args
        args[0].i32 = 0
        args[1].i32 = 0
        args[2].i32 = align
        args[3].i32 = size
        return self._call(self._realloc, 4) & 0xFFFFFFFF

    def _memory_view(self) -> tuple[int, int]:
        base = _memory_data(self._context, self._memory) or 0
        return base, _memory_data_size(self._context, self._memory)

    def _malformed(self, what: str) -> PluginError:
        return PluginError("malformed", f"the plugin returned a malformed result: {what}")

    def _read_list(self, base: int, size: int, pointer: int, length: int, what: str) -> bytes:
        if pointer + length > size:
            raise self._malformed(f"{what} ({length} bytes at {pointer}) is outside its memory ({size} bytes)")
        if not length:
            return b""
        if base:
            return _string_at(base + pointer, length)
        return bytes(self._view[pointer : pointer + length])

    def _post_return(self, pointer: int) -> None:
        if self._post is not None:
            self._args[0].i32 = pointer
            self._call(self._post, 1)

    # intercept

    def _refresh_view(self) -> None:
        base, size = self._memory_view()
        self._view = memoryview((ctypes.c_ubyte * size).from_address(base)).cast("B") if size else memoryview(b"")
        self._view_size = size
        self._view_pages = size >> 16

    def intercept(self, event: Event, auth: bytes | None, addr: str | None) -> Action:
        """
        The fast path: one call into the glue module (the previous call's
        post-return and this call's allocations), the writes through a
        cached view of the plugin's memory, one call to C{intercept}.
        """
        context = self._context
        _set_epoch_deadline(context, self._ticks)
        self._budget.cpu_mark = None
        args = self._args
        source = event.source_id.encode("utf-8")
        addr_bytes = addr.encode("utf-8") if addr is not None else None
        kafka = isinstance(event, KafkaEvent)
        payload = topic = None
        if kafka:
            assert isinstance(event, KafkaEvent)
            payload = event.payload
            topic = event.topic.encode("utf-8")
        pending = self._pending
        args[0].i32 = pending is not None
        args[1].i32 = pending or 0
        self._pending = None
        args[2].i32 = len(source)
        args[3].i32 = -1 if auth is None else len(auth)
        args[4].i32 = -1 if addr_bytes is None else len(addr_bytes)
        args[5].i32 = -1 if payload is None else len(payload)
        args[6].i32 = -1 if topic is None else len(topic)
        args[7].i32 = 104
        self._call(self._prepare, 8)
        source_ptr = args[0].i32 & 0xFFFFFFFF
        auth_ptr = args[1].i32 & 0xFFFFFFFF
        addr_ptr = args[2].i32 & 0xFFFFFFFF
        payload_ptr = args[3].i32 & 0xFFFFFFFF
        topic_ptr = args[4].i32 & 0xFFFFFFFF
        record = args[5].i32 & 0xFFFFFFFF
        if args[6].i32 != self._view_pages:
            self._refresh_view()
        view = self._view
        size = self._view_size
        if record % 8 or record + 104 > size:
            raise self._malformed("cabi_realloc returned memory outside the instance's memory")
        for pointer, data in (
            (source_ptr, source),
            (auth_ptr, auth),
            (addr_ptr, addr_bytes),
            (payload_ptr, payload),
            (topic_ptr, topic),
        ):
            if data:
                end = pointer + len(data)
                if end > size:
                    raise self._malformed("cabi_realloc returned memory outside the instance's memory")
                view[pointer:end] = data
        # The context's fields both events share: auth, then the connection
        # variant (case 0, websocket) with its address; the event variant
        # (case 0 kafka, 1 counter) follows.
        ctx = (
            auth is not None,
            auth_ptr,
            len(auth) if auth is not None else 0,
            0,
            addr_bytes is not None,
            addr_ptr,
            len(addr_bytes) if addr_bytes is not None else 0,
        )
        if kafka:
            assert isinstance(event, KafkaEvent)
            timestamp = event.timestamp
            _INTERCEPT_KAFKA.pack_into(
                view,
                record,
                *ctx,
                0,
                payload is not None,
                payload_ptr,
                len(payload) if payload is not None else 0,
                source_ptr,
                len(source),
                topic_ptr,
                len(topic) if topic is not None else 0,
                timestamp is not None and timestamp >= 0,
                timestamp if timestamp is not None and timestamp >= 0 else 0,
                event.partition & 0xFFFFFFFF,
                event.offset & 0xFFFFFFFFFFFFFFFF,
            )
        else:
            assert isinstance(event, CounterEvent)
            _INTERCEPT_COUNTER.pack_into(
                view,
                record,
                *ctx,
                1,
                source_ptr,
                len(source),
                event.count & 0xFFFFFFFFFFFFFFFF,
            )
        args[0].i32 = record
        result = self._call(self._export, 1) & 0xFFFFFFFF
        if result % 8:
            raise self._malformed(f"result pointer {result} is unaligned")
        if result + 32 > self._view_size:
            self._refresh_view()
            if result + 32 > self._view_size:
                raise self._malformed(f"result pointer {result} is outside its memory")
        view = self._view
        action: Action
        tag = view[result]
        if tag == 0:
            action = FORWARD
        elif tag == 1:
            action = DISCARD
        elif tag == 2:
            kind = view[result + 8]
            if kind == 0:
                option = view[result + 16]
                if option == 0:
                    action = TransformKafka(None)
                elif option == 1:
                    pointer, length = _U32_PAIR.unpack_from(view, result + 20)
                    if pointer + length > self._view_size:
                        self._refresh_view()
                    action = TransformKafka(
                        self._read_list(0, self._view_size, pointer, length, "the transformed payload")
                    )
                else:
                    raise self._malformed(f"option discriminant {option}")
            elif kind == 1:
                action = TransformCounter(_U64.unpack_from(view, result + 16)[0])
            else:
                raise self._malformed(f"transformed-payload discriminant {kind}")
        else:
            raise self._malformed(f"action discriminant {tag}")
        # The post-return runs at the start of the next call (it cannot
        # matter to the plugin when, only that it comes first).
        self._pending = result
        return action

    # authenticate

    def authenticate(self, request: HttpRequest) -> Outcome:
        _set_epoch_deadline(self._context, self._ticks)
        self._budget.cpu_mark = None
        writes: list[tuple[int, bytes]] = []

        def string(value: str | bytes) -> tuple[int, int]:
            data = value.encode("utf-8") if isinstance(value, str) else value
            pointer = self._alloc(1, len(data))
            writes.append((pointer, data))
            return pointer, len(data)

        method_tag, method_other = _METHODS.get(request.method.upper(), (9, request.method))
        method = [method_tag, 0, 0]
        if method_other is not None:
            method[1:] = string(method_other)
        path = [0, 0, 0]
        if request.path_with_query is not None:
            path = [1, *string(request.path_with_query)]
        scheme = [0, 0, 0, 0]
        if request.scheme is not None:
            scheme_tag = {"http": 0, "https": 1}.get(request.scheme.lower(), 2)
            scheme = [1, scheme_tag, 0, 0]
            if scheme_tag == 2:
                scheme[2:] = string(request.scheme)
        authority = [0, 0, 0]
        if request.authority is not None:
            authority = [1, *string(request.authority)]
        headers = request.headers
        table = bytearray(16 * len(headers))
        for index, (name, value) in enumerate(headers):
            _U32_PAIR.pack_into(table, 16 * index, *string(name))
            _U32_PAIR.pack_into(table, 16 * index + 8, *string(value))
        table_ptr = self._alloc(4, len(table))
        writes.append((table_ptr, bytes(table)))
        base, size = self._memory_view()
        for pointer, chunk in writes:
            if chunk:
                if pointer + len(chunk) > size:
                    raise self._malformed("cabi_realloc returned memory outside the instance's memory")
                _memmove(base + pointer, chunk, len(chunk))
        flat = method + path + scheme + authority + [table_ptr, len(headers)]
        args = self._args
        for index, number in enumerate(flat):
            args[index].i32 = number
        result = self._call(self._export, 15) & 0xFFFFFFFF
        base, size = self._memory_view()
        if result % 4 or result + 12 > size:
            raise self._malformed(f"result pointer {result} is unaligned or outside its memory")
        raw = _string_at(base + result, 12)
        outcome: Outcome
        if raw[0] == 0:
            outcome = AUTHENTICATE
        elif raw[0] == 1:
            outcome = REJECT
        elif raw[0] == 2:
            pointer, length = _U32_PAIR.unpack_from(raw, 4)
            outcome = WithContext(self._read_list(base, size, pointer, length, "the context bytes"))
        else:
            raise self._malformed(f"outcome discriminant {raw[0]}")
        self._post_return(result)
        return outcome


_METHODS: dict[str, tuple[int, str | None]] = {
    name: (index, None)
    for index, name in enumerate(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
}


def _trap_reason(trap: BaseException) -> str:
    code = getattr(trap, "trap_code", None)
    if code is not None and code == wasmtime.TrapCode.INTERRUPT:
        return "timeout"
    text = str(trap)
    if TIMEOUT_MARKER in text or "wasm trap: interrupt" in text:
        return "timeout"
    return "trap"


# Components

_BYTES: Any = ("list", "u8")
_OPTION_STRING: Any = ("option", "string")

_CONTEXT_SHAPE: Any = (
    "record",
    (
        ("auth", ("option", _BYTES)),
        ("connection", ("variant", (("websocket", ("record", (("addr", _OPTION_STRING),))),))),
        (
            "event",
            (
                "variant",
                (
                    (
                        "kafka",
                        (
                            "record",
                            (
                                ("payload", ("option", _BYTES)),
                                ("source-id", "string"),
                                ("topic", "string"),
                                ("timestamp", ("option", "u64")),
                                ("partition", "u32"),
                                ("offset", "u64"),
                            ),
                        ),
                    ),
                    ("counter", ("record", (("source-id", "string"), ("count", "u64")))),
                ),
            ),
        ),
    ),
)
_ACTION_SHAPE: Any = (
    "variant",
    (
        ("forward", None),
        ("discard", None),
        ("transform", ("variant", (("kafka", ("option", _BYTES)), ("counter", "u64")))),
    ),
)
_METHOD_SHAPE: Any = (
    "variant",
    tuple((name, None) for name in ("get", "head", "post", "put", "delete", "connect", "options", "trace", "patch"))
    + (("other", "string"),),
)
_SCHEME_SHAPE: Any = ("variant", (("HTTP", None), ("HTTPS", None), ("other", "string")))
_REQUEST_SHAPE: Any = (
    "record",
    (
        ("method", _METHOD_SHAPE),
        ("path-with-query", _OPTION_STRING),
        ("scheme", ("option", _SCHEME_SHAPE)),
        ("authority", _OPTION_STRING),
        ("headers", ("list", ("tuple", ("string", _BYTES)))),
    ),
)
_OUTCOME_SHAPE: Any = ("variant", (("authenticate", None), ("reject", None), ("with-context", _BYTES)))

_COMPONENT_SIGNATURES: dict[str, tuple[str, Any, Any]] = {
    "intercept": ("ctx", _CONTEXT_SHAPE, _ACTION_SHAPE),
    "authenticate": ("incoming", _REQUEST_SHAPE, _OUTCOME_SHAPE),
}

_PRIMITIVES = {
    wc.Bool: "bool",
    wc.U8: "u8",
    wc.U16: "u16",
    wc.U32: "u32",
    wc.U64: "u64",
    wc.S8: "s8",
    wc.S16: "s16",
    wc.S32: "s32",
    wc.S64: "s64",
    wc.F32: "f32",
    wc.F64: "f64",
    wc.Char: "char",
    wc.String: "string",
}


def _shape(ty: Any) -> Any:
    """
    A component value type as nested tuples, comparable with the shapes
    above.
    """
    for cls, name in _PRIMITIVES.items():
        if isinstance(ty, cls):
            return name
    if isinstance(ty, wc.ListType):
        return ("list", _shape(ty.element))
    if isinstance(ty, wc.OptionType):
        return ("option", _shape(ty.payload))
    if isinstance(ty, wc.RecordType):
        return ("record", tuple((name, _shape(field)) for name, field in ty.fields))
    if isinstance(ty, wc.VariantType):
        return ("variant", tuple((name, None if case is None else _shape(case)) for name, case in ty.cases))
    if isinstance(ty, wc.TupleType):
        return ("tuple", tuple(_shape(element) for element in ty.elements))
    if isinstance(ty, wc.EnumType):
        return ("enum", tuple(ty.names))
    if isinstance(ty, wc.ResultType):
        ok, err = ty.ok, ty.err
        return ("result", None if ok is None else _shape(ok), None if err is None else _shape(err))
    return type(ty).__name__


def render_shape(shape: Any) -> str:
    """
    A shape in WIT-like notation, for error messages.
    """
    if shape is None:
        return "nothing"
    if isinstance(shape, str):
        return shape
    kind = shape[0]
    if kind in ("list", "option"):
        return f"{kind}<{render_shape(shape[1])}>"
    if kind == "tuple":
        return "tuple<" + ", ".join(render_shape(s) for s in shape[1]) + ">"
    if kind == "record":
        return "record { " + ", ".join(f"{n}: {render_shape(s)}" for n, s in shape[1]) + " }"
    if kind == "variant":
        cases = ", ".join(n if s is None else f"{n}({render_shape(s)})" for n, s in shape[1])
        return "variant { " + cases + " }"
    if kind == "enum":
        return "enum { " + ", ".join(shape[1]) + " }"
    if kind == "result":
        return f"result<{render_shape(shape[1])}, {render_shape(shape[2])}>"
    return str(shape)


def _component_item_kind(item: Any) -> str:
    if isinstance(item, wc.FuncType):
        return "function"
    if isinstance(item, wc.ComponentInstanceType):
        return "instance"
    return type(item).__name__


class _Component:
    """
    A compiled component checked against a hook's world.
    """

    def __init__(self, path: str, data: bytes, hook: str) -> None:
        eng = engine()
        try:
            component = wc.Component(eng, data)
        except wasmtime.WasmtimeError as e:
            raise PluginLoadError(f"{path} does not compile as a WebAssembly component: {_message(e)}") from None
        param_name, param_shape, result_shape = _COMPONENT_SIGNATURES[hook]
        expected = f"{hook}: func({param_name}: {render_shape(param_shape)}) -> {render_shape(result_shape)}"
        exports = component.type.exports(eng)
        item = exports.get(hook)
        if item is None:
            found = ", ".join(f"{name} ({_component_item_kind(e.ty)})" for name, e in exports.items()) or "nothing"
            raise PluginLoadError(
                f"{path} is a component but does not implement kiwi:kiwi/{hook}-hook: expected the export "
                f"{expected}; found exports: {found}"
            )
        func_type = item.ty
        if not isinstance(func_type, wc.FuncType):
            raise PluginLoadError(
                f"{path}: the export {hook} is a {_component_item_kind(func_type)}, expected {expected}"
            )
        params = [(name, _shape(ty)) for name, ty in func_type.params]
        result = func_type.result
        found_result = None if result is None else _shape(result)
        if [shape for _, shape in params] != [param_shape] or found_result != result_shape:
            found_sig = (
                f"{hook}: func("
                + ", ".join(f"{name}: {render_shape(shape)}" for name, shape in params)
                + f") -> {render_shape(found_result)}"
            )
            raise PluginLoadError(
                f"{path}: the export {hook} does not match kiwi:kiwi/{hook}-hook; expected {expected}, found {found_sig}"
            )
        self.hook = hook
        self.component = component
        self.linker = wc.Linker(eng)
        try:
            self.linker.add_wasip2()
            if hook == "authenticate":
                self.linker.add_wasi_http()
        except wasmtime.WasmtimeError as e:
            raise PluginLoadError(f"{path}: cannot set up WASI: {_message(e)}") from None
        self.foreign_imports: list[str] = []


_CACHING_CLASSES: dict[type, type] = {}
_CACHED_PROPERTIES: dict[type, tuple[str, ...]] = {
    wc.RecordType: ("fields",),
    wc.VariantType: ("cases",),
    wc.OptionType: ("payload",),
    wc.ListType: ("element",),
    wc.TupleType: ("elements",),
    wc.ResultType: ("ok", "err"),
}


def _caching_class(cls: type) -> type:
    """
    A subclass of the wasmtime-py value type C{cls} that computes its
    properties (which query the C API and build new objects each time) and
    its variant tagging once.
    """
    if cls not in _CACHING_CLASSES:
        namespace: dict[str, Any] = {}
        for name in _CACHED_PROPERTIES.get(cls, ()):
            getter = getattr(cls, name).fget

            def cached(self: Any, _getter: Any = getter, _name: str = name) -> Any:
                key = "_kiwi_" + _name
                if key not in self.__dict__:
                    self.__dict__[key] = _getter(self)
                return self.__dict__[key]

            namespace[name] = property(cached)
        if hasattr(cls, "_tagged"):
            original = getattr(cls, "_tagged")

            def tagged(self: Any, _original: Any = original) -> bool:
                if "_kiwi_tagged" not in self.__dict__:
                    self.__dict__["_kiwi_tagged"] = _original(self)
                return bool(self.__dict__["_kiwi_tagged"])

            namespace["_tagged"] = tagged
        _CACHING_CLASSES[cls] = type("Caching" + cls.__name__, (cls,), namespace)
    return _CACHING_CLASSES[cls]


def _cache_types(ty: Any) -> Any:
    """
    Make the value type C{ty}, and every type inside it, cache what it
    learns from the C API: the component path then converts values without
    asking wasmtime about types on every call.
    """
    if type(ty) in _CACHED_PROPERTIES:
        ty.__class__ = _caching_class(type(ty))
        for name in _CACHED_PROPERTIES[type(ty).__mro__[1]]:
            child = getattr(ty, name)
            if isinstance(child, list):
                for item in child:
                    _cache_types(item[1] if isinstance(item, tuple) else item)
            elif child is not None:
                _cache_types(child)
    return ty


class _ComponentCall:
    """
    C{func(store, value)} for a one-parameter component function, with its
    types looked up once instead of on every call (what wasmtime-py's
    C{Func.__call__} does).
    """

    def __init__(self, store: wasmtime.Store, func: wc.Func) -> None:
        func_type = func.type(store)
        self._param = _cache_types(func_type.params[0][1])
        result = func_type.result
        assert result is not None
        self._result = _cache_types(result)
        self._func = func
        self._func_ref = ctypes.byref(func._func)

    def __call__(self, store: wasmtime.Store, value: Any) -> Any:
        params = (ffi.wasmtime_component_val_t * 1)()
        lowered = 0
        try:
            self._param.convert_to_c(store, value, ctypes.pointer(params[0]))
            lowered = 1
            result = ffi.wasmtime_component_val_t()
            error = ffi.wasmtime_component_func_call(
                self._func_ref, store._context(), params, 1, ctypes.byref(result), 1
            )
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)
            return self._result.convert_from_c(result)
        finally:
            if lowered:
                ffi.wasmtime_component_val_delete(ctypes.byref(params[0]))

    def post_return(self, store: wasmtime.Store) -> None:
        self._func.post_return(store)


def _record(**fields: Any) -> Any:
    record = wc.Record()
    for name, value in fields.items():
        setattr(record, name.replace("_", "-"), value)
    return record


class _ComponentInstance:
    """
    One instance of a component in its own store. Not thread-safe.
    """

    def __init__(self, component: _Component, limits: Limits) -> None:
        eng = engine()
        store = wasmtime.Store(eng)
        store.set_limits(memory_size=limits.max_memory_bytes)
        wasi = wasmtime.WasiConfig()
        wasi.inherit_stderr()
        store.set_wasi(wasi)
        if component.hook == "authenticate":
            store.set_wasi_http()
        store.set_epoch_deadline(deadline_ticks(SETUP_TIMEOUT_MS))
        try:
            instance = component.linker.instantiate(store, component.component)
        except wasmtime.Trap as e:
            raise PluginError(_trap_reason(e), f"instantiation trapped: {_message(e)}") from None
        except wasmtime.WasmtimeError as e:
            raise PluginError(_trap_reason(e), f"instantiation failed: {_message(e)}") from None
        func = instance.get_func(store, component.hook)
        if func is None:
            raise PluginError("trap", f"the instance has no function {component.hook}")
        self._store = store
        self._func = _ComponentCall(store, func)
        self._ticks = deadline_ticks(limits.timeout_ms)
        self._budget = _watch_deadlines(store, limits.timeout_ms)

    def _call(self, value: Any) -> Any:
        store = self._store
        store.set_epoch_deadline(self._ticks)
        self._budget.cpu_mark = None
        try:
            result = self._func(store, value)
            self._func.post_return(store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            reason = _trap_reason(e)
            if reason == "timeout":
                raise PluginError("timeout", "the call ran out of time (hooks.timeout_ms)") from None
            raise PluginError(reason, f"the plugin trapped: {_message(e)}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise PluginError("malformed", f"the plugin returned a malformed result: {_message(e)}") from None
        return result

    def intercept(self, event: Event, auth: bytes | None, addr: str | None) -> Action:
        if isinstance(event, KafkaEvent):
            event_value = wc.Variant(
                "kafka",
                _record(
                    payload=event.payload,
                    source_id=event.source_id,
                    topic=event.topic,
                    timestamp=event.timestamp if event.timestamp is not None and event.timestamp >= 0 else None,
                    partition=event.partition & 0xFFFFFFFF,
                    offset=event.offset & 0xFFFFFFFFFFFFFFFF,
                ),
            )
        else:
            assert isinstance(event, CounterEvent)
            event_value = wc.Variant("counter", _record(source_id=event.source_id, count=event.count))
        context = _record(auth=auth, connection=_record(addr=addr), event=event_value)
        result = self._call(context)
        if not isinstance(result, wc.Variant):
            raise PluginError("malformed", f"the plugin returned {type(result).__name__}, expected an action")
        if result.tag == "forward":
            return FORWARD
        if result.tag == "discard":
            return DISCARD
        payload = result.payload
        if isinstance(payload, wc.Variant):
            if payload.tag == "kafka":
                return TransformKafka(None if payload.payload is None else bytes(payload.payload))
            return TransformCounter(int(payload.payload or 0))
        if payload is None or isinstance(payload, (bytes, bytearray)):
            return TransformKafka(None if payload is None else bytes(payload))
        if isinstance(payload, int):
            return TransformCounter(payload)
        raise PluginError("malformed", f"the plugin returned a transform of {type(payload).__name__}")

    def authenticate(self, request: HttpRequest) -> Outcome:
        method_name = request.method.lower()
        if method_name in ("get", "head", "post", "put", "delete", "connect", "options", "trace", "patch"):
            method = wc.Variant(method_name)
        else:
            method = wc.Variant("other", request.method)
        scheme = None
        if request.scheme is not None:
            scheme_tag = {"http": "HTTP", "https": "HTTPS"}.get(request.scheme.lower())
            scheme = wc.Variant(scheme_tag) if scheme_tag else wc.Variant("other", request.scheme)
        value = _record(
            method=method,
            path_with_query=request.path_with_query,
            scheme=scheme,
            authority=request.authority,
            headers=[(name, bytes(data)) for name, data in request.headers],
        )
        result = self._call(value)
        if not isinstance(result, wc.Variant):
            raise PluginError("malformed", f"the plugin returned {type(result).__name__}, expected an outcome")
        if result.tag == "authenticate":
            return AUTHENTICATE
        if result.tag == "reject":
            return REJECT
        if result.tag == "with-context":
            return WithContext(bytes(result.payload or b""))
        raise PluginError("malformed", f"unknown outcome {result.tag}")


# Plugins


class _Plugin:
    """
    A loaded plugin: its compiled code and a pool of idle instances.

    A call takes an idle instance (or makes one), and gives it back only
    if the call succeeded: an instance that failed is dropped, so the next
    call starts afresh. Taking and giving back are single list operations,
    atomic under the GIL, so several threads may call at once.
    """

    def __init__(self, path: str, hook: str, limits: Limits) -> None:
        data = read_binary(path)
        self.kind = binary_kind(data)
        self.path = path
        self.limits = limits
        self._code: _CoreModule | _Component
        self._new: Callable[[], Any]
        if self.kind == "core module":
            self._code = _CoreModule(path, data, hook)
            code = self._code
            self._new = lambda: _CoreInstance(code, limits)
        else:
            self._code = _Component(path, data, hook)
            component = self._code
            self._new = lambda: _ComponentInstance(component, limits)
        self.description = f"{os.path.basename(path)} ({self.kind})"
        self.foreign_imports = self._code.foreign_imports
        self._idle: list[Any] = []
        self.failures = 0
        try:
            self._idle.append(self._new())
        except PluginError as e:
            raise PluginLoadError(f"{path}: {e.message}") from None

    def _instance(self) -> Any:
        try:
            return self._idle.pop()
        except IndexError:
            return self._new()


@implementer(IInterceptor)
class WasmInterceptor(_Plugin):
    """
    An intercept plugin. Called on the reactor thread.
    """

    def __init__(self, path: str, limits: Limits) -> None:
        super().__init__(path, "intercept", limits)

    def intercept(self, event: Event, auth: bytes | None, addr: str | None) -> Action:
        instance = self._instance()
        action: Action = instance.intercept(event, auth, addr)
        self._idle.append(instance)
        return action


@implementer(IAuthenticator)
class WasmAuthenticator(_Plugin):
    """
    An authenticate plugin. Called from a thread pool.
    """

    def __init__(self, path: str, limits: Limits) -> None:
        super().__init__(path, "authenticate", limits)

    def thd_authenticate(self, request: HttpRequest) -> Outcome:
        instance = self._instance()
        outcome: Outcome = instance.authenticate(request)
        self._idle.append(instance)
        return outcome


def load_intercept(path: str, limits: Limits) -> WasmInterceptor:
    """
    Compile and check an intercept plugin, and make its first instance.

    @raise PluginLoadError: naming what was expected and what was found.
    """
    return WasmInterceptor(path, limits)


def load_authenticate(path: str, limits: Limits) -> WasmAuthenticator:
    """
    Compile and check an authenticate plugin, and make its first instance.

    @raise PluginLoadError: naming what was expected and what was found.
    """
    return WasmAuthenticator(path, limits)
