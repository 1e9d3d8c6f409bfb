"""
Test plugins, written by hand in WebAssembly text against the canonical ABI
of the C{kiwi:kiwi@0.1.0} worlds, and built with wasmtime's C{wat2wasm}
(from PyPI) when a test needs them. No binary is kept in the repository.

Memory layout the modules rely on (canonical ABI, see C{docs/plugins.md}):

 - C{intercept(ctx: i32) -> i32}: C{ctx} points at a 104-byte C{context}
   record. C{auth} option at 0 (ptr 4, len 8); connection C{addr} option
   at 16 (ptr 20, len 24); event discriminant at 32 (0 kafka, 1 counter);
   Kafka payload option at 40 (ptr 44, len 48), source id 52/56, topic
   60/64, timestamp option 72 (value 80), partition 88, offset 96;
   counter source id 40/44, count 48. The result is a 32-byte C{action}:
   discriminant at 0, C{transformed-payload} discriminant at 8, Kafka
   option at 16 (ptr 20, len 24) or count at 16.
 - C{authenticate} takes 15 flat i32s (method 3, path-with-query 3, scheme
   4, authority 3, headers 2) and returns a pointer to a 12-byte C{outcome}
   (discriminant at 0, context ptr 4, len 8).

Each module has a bump allocator (C{cabi_realloc}) that its C{cabi_post_*}
resets after every call; results live at address 16.
"""

from __future__ import annotations

import os

PRELUDE = """
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func $cabi_realloc (export "cabi_realloc")
        (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr
      (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
               (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $ptr) (local.get $new_size)))
    (block $enough
      (loop $grow
        (br_if $enough (i32.le_u (local.get $end) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
    (if (local.get $old_size)
      (then (memory.copy (local.get $ptr) (local.get $old) (local.get $old_size))))
    (global.set $heap (local.get $end))
    (local.get $ptr))
  (func $reset (global.set $heap (i32.const 4096)))
  ;; 1 if the bytes at ptr..ptr+len are a decimal number that is even.
  (func $even_decimal (param $ptr i32) (param $len i32) (result i32)
    (local $i i32) (local $c i32)
    (if (i32.eqz (local.get $len)) (then (return (i32.const 0))))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $c (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
        (if (i32.or (i32.lt_u (local.get $c) (i32.const 48)) (i32.gt_u (local.get $c) (i32.const 57)))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i32.eqz (i32.and (local.get $c) (i32.const 1))))
  ;; 1 if the event at ctx is "even": an even count, or a Kafka payload that
  ;; is an even decimal number.
  (func $even_event (param $ctx i32) (result i32)
    (if (result i32) (i32.load8_u offset=32 (local.get $ctx))
      (then (i64.eqz (i64.and (i64.load offset=48 (local.get $ctx)) (i64.const 1))))
      (else
        (if (result i32) (i32.load8_u offset=40 (local.get $ctx))
          (then (call $even_decimal (i32.load offset=44 (local.get $ctx)) (i32.load offset=48 (local.get $ctx))))
          (else (i32.const 0))))))
  ;; 1 if needle occurs in haystack.
  (func $contains (param $hay i32) (param $hay_len i32) (param $needle i32) (param $needle_len i32) (result i32)
    (local $i i32) (local $j i32)
    (block $none
      (loop $start
        (br_if $none (i32.gt_u (i32.add (local.get $i) (local.get $needle_len)) (local.get $hay_len)))
        (local.set $j (i32.const 0))
        (block $mismatch
          (loop $cmp
            (if (i32.ge_u (local.get $j) (local.get $needle_len)) (then (return (i32.const 1))))
            (br_if $mismatch
              (i32.ne (i32.load8_u (i32.add (local.get $hay) (i32.add (local.get $i) (local.get $j))))
                      (i32.load8_u (i32.add (local.get $needle) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $cmp)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $start)))
    (i32.const 0))
  (func $equal (param $a i32) (param $a_len i32) (param $b i32) (param $b_len i32) (result i32)
    (if (result i32) (i32.ne (local.get $a_len) (local.get $b_len))
      (then (i32.const 0))
      (else (call $contains (local.get $a) (local.get $a_len) (local.get $b) (local.get $b_len)))))
  (func $forward (result i32) (i32.store8 (i32.const 16) (i32.const 0)) (i32.const 16))
  (func $discard (result i32) (i32.store8 (i32.const 16) (i32.const 1)) (i32.const 16))
  (func $transform_count (param $count i64) (result i32)
    (i32.store8 (i32.const 16) (i32.const 2))
    (i32.store8 (i32.const 24) (i32.const 1))
    (i64.store (i32.const 32) (local.get $count))
    (i32.const 16))
  (func $transform_payload (param $ptr i32) (param $len i32) (result i32)
    (i32.store8 (i32.const 16) (i32.const 2))
    (i32.store8 (i32.const 24) (i32.const 0))
    (i32.store8 (i32.const 32) (i32.const 1))
    (i32.store (i32.const 36) (local.get $ptr))
    (i32.store (i32.const 40) (local.get $len))
    (i32.const 16))
"""

INTERCEPT_POST = """
  (func (export "cabi_post_intercept") (param i32) (call $reset))
"""

AUTHENTICATE_POST = """
  (func (export "cabi_post_authenticate") (param i32) (call $reset))
"""


def _intercept(body: str) -> str:
    return "(module" + PRELUDE + INTERCEPT_POST + body + ")"


def _authenticate(body: str) -> str:
    return "(module" + PRELUDE + AUTHENTICATE_POST + body + ")"


SOURCES: dict[str, str] = {}

# Forwards even numbers (counts, or Kafka payloads that are even decimals).
SOURCES["even"] = _intercept(
    """
  (func (export "intercept") (param $ctx i32) (result i32)
    (if (result i32) (call $even_event (local.get $ctx))
      (then (call $forward))
      (else (call $discard))))
"""
)

# Kafka: the payload in upper case. Counter: the count times ten.
SOURCES["transform"] = _intercept(
    """
  (func (export "intercept") (param $ctx i32) (result i32)
    (local $src i32) (local $len i32) (local $dst i32) (local $i i32) (local $c i32)
    (if (i32.load8_u offset=32 (local.get $ctx))
      (then (return (call $transform_count (i64.mul (i64.load offset=48 (local.get $ctx)) (i64.const 10))))))
    (if (i32.eqz (i32.load8_u offset=40 (local.get $ctx)))
      (then (return (call $forward))))
    (local.set $src (i32.load offset=44 (local.get $ctx)))
    (local.set $len (i32.load offset=48 (local.get $ctx)))
    (local.set $dst (call $cabi_realloc (i32.const 0) (i32.const 0) (i32.const 1) (local.get $len)))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $c (i32.load8_u (i32.add (local.get $src) (local.get $i))))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
          (then (local.set $c (i32.sub (local.get $c) (i32.const 32)))))
        (i32.store8 (i32.add (local.get $dst) (local.get $i)) (local.get $c))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (call $transform_payload (local.get $dst) (local.get $len)))
"""
)

# Kafka: the payload becomes "<auth>@<addr>" (each part empty when absent).
# Counter: the count becomes the length of the auth bytes.
SOURCES["context"] = _intercept(
    """
  (func (export "intercept") (param $ctx i32) (result i32)
    (local $auth_len i32) (local $addr_len i32) (local $dst i32)
    (if (i32.load8_u offset=0 (local.get $ctx))
      (then (local.set $auth_len (i32.load offset=8 (local.get $ctx)))))
    (if (i32.load8_u offset=16 (local.get $ctx))
      (then (local.set $addr_len (i32.load offset=24 (local.get $ctx)))))
    (if (i32.load8_u offset=32 (local.get $ctx))
      (then (return (call $transform_count (i64.extend_i32_u (local.get $auth_len))))))
    (local.set $dst (call $cabi_realloc (i32.const 0) (i32.const 0) (i32.const 1)
      (i32.add (i32.add (local.get $auth_len) (local.get $addr_len)) (i32.const 1))))
    (memory.copy (local.get $dst) (i32.load offset=4 (local.get $ctx)) (local.get $auth_len))
    (i32.store8 (i32.add (local.get $dst) (local.get $auth_len)) (i32.const 64))
    (memory.copy (i32.add (i32.add (local.get $dst) (local.get $auth_len)) (i32.const 1))
                 (i32.load offset=20 (local.get $ctx)) (local.get $addr_len))
    (call $transform_payload (local.get $dst)
      (i32.add (i32.add (local.get $auth_len) (local.get $addr_len)) (i32.const 1))))
"""
)

# A transform of the wrong kind: a count for Kafka events, a payload for
# counter events.
SOURCES["wrong-kind"] = _intercept(
    """
  (func (export "intercept") (param $ctx i32) (result i32)
    (if (result i32) (i32.load8_u offset=32 (local.get $ctx))
      (then (call $transform_payload (i32.const 0) (i32.const 0)))
      (else (call $transform_count (i64.const 7)))))
"""
)

# Even events are forwarded; odd ones get an action discriminant that does
# not exist.
SOURCES["malformed"] = _intercept(
    """
  (func (export "intercept") (param $ctx i32) (result i32)
    (if (call $even_event (local.get $ctx)) (then (return (call $forward))))
    (i32.store8 (i32.const 16) (i32.const 7))
    (i32.const 16))
"""
)

# Even events are forwarded; odd ones trap.
SOURCES["trap"] = _intercept(
    """
  (func (export "intercept") (param $ctx i32) (result i32)
    (if (call $even_event (local.get $ctx)) (then (return (call $forward))))
    unreachable)
"""
)

# Even events are forwarded; odd ones loop forever.
SOURCES["loop"] = _intercept(
    """
  (func (export "intercept") (param $ctx i32) (result i32)
    (if (call $even_event (local.get $ctx)) (then (return (call $forward))))
    (loop $forever (br $forever))
    unreachable)
"""
)

# Even events are forwarded; odd ones grow memory until it is refused, then
# trap (as a Rust plugin aborts when an allocation fails).
SOURCES["hog"] = _intercept(
    """
  (func (export "intercept") (param $ctx i32) (result i32)
    (if (call $even_event (local.get $ctx)) (then (return (call $forward))))
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable)
"""
)

# Keeps state between calls: counter events are transformed to the number
# of calls this instance has served; a count of 999 traps.
SOURCES["stateful"] = _intercept(
    """
  (global $calls (mut i64) (i64.const 0))
  (func (export "intercept") (param $ctx i32) (result i32)
    (global.set $calls (i64.add (global.get $calls) (i64.const 1)))
    (if (i64.eq (i64.load offset=48 (local.get $ctx)) (i64.const 999)) (then unreachable))
    (call $transform_count (global.get $calls)))
"""
)

# An API-key check: "key=letmein" in the query string, or an x-api-key
# header "letmein", lets the client in with the context "tenant-acme";
# "key=plain" lets it in without context; anything else is rejected.
SOURCES["apikey"] = _authenticate(
    """
  (data (i32.const 256) "key=letmein")
  (data (i32.const 272) "key=plain")
  (data (i32.const 288) "tenant-acme")
  (data (i32.const 304) "x-api-key")
  (data (i32.const 320) "letmein")
  (func $with_context (result i32)
    (i32.store8 (i32.const 16) (i32.const 2))
    (i32.store (i32.const 20) (i32.const 288))
    (i32.store (i32.const 24) (i32.const 11))
    (i32.const 16))
  (func (export "authenticate")
        (param $m_tag i32) (param $m_ptr i32) (param $m_len i32)
        (param $p_some i32) (param $p_ptr i32) (param $p_len i32)
        (param $s_some i32) (param $s_tag i32) (param $s_ptr i32) (param $s_len i32)
        (param $a_some i32) (param $a_ptr i32) (param $a_len i32)
        (param $h_ptr i32) (param $h_len i32) (result i32)
    (local $i i32) (local $entry i32)
    (if (local.get $p_some)
      (then
        (if (call $contains (local.get $p_ptr) (local.get $p_len) (i32.const 256) (i32.const 11))
          (then (return (call $with_context))))
        (if (call $contains (local.get $p_ptr) (local.get $p_len) (i32.const 272) (i32.const 9))
          (then
            (i32.store8 (i32.const 16) (i32.const 0))
            (return (i32.const 16))))))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $h_len)))
        (local.set $entry (i32.add (local.get $h_ptr) (i32.mul (local.get $i) (i32.const 16))))
        (if (i32.and
              (call $equal (i32.load (local.get $entry)) (i32.load offset=4 (local.get $entry)) (i32.const 304) (i32.const 9))
              (call $equal (i32.load offset=8 (local.get $entry)) (i32.load offset=12 (local.get $entry)) (i32.const 320) (i32.const 7)))
          (then (return (call $with_context))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i32.store8 (i32.const 16) (i32.const 1))
    (i32.const 16))
"""
)

# Misbehaves on request: "mode=loop" loops forever, "mode=trap" traps,
# "mode=bad" returns an outcome that does not exist; anything else is let in.
SOURCES["auth-misbehave"] = _authenticate(
    """
  (data (i32.const 256) "mode=loop")
  (data (i32.const 272) "mode=trap")
  (data (i32.const 288) "mode=bad")
  (func (export "authenticate")
        (param $m_tag i32) (param $m_ptr i32) (param $m_len i32)
        (param $p_some i32) (param $p_ptr i32) (param $p_len i32)
        (param $s_some i32) (param $s_tag i32) (param $s_ptr i32) (param $s_len i32)
        (param $a_some i32) (param $a_ptr i32) (param $a_len i32)
        (param $h_ptr i32) (param $h_len i32) (result i32)
    (if (local.get $p_some)
      (then
        (if (call $contains (local.get $p_ptr) (local.get $p_len) (i32.const 256) (i32.const 9))
          (then (loop $forever (br $forever))))
        (if (call $contains (local.get $p_ptr) (local.get $p_len) (i32.const 272) (i32.const 9))
          (then unreachable))
        (if (call $contains (local.get $p_ptr) (local.get $p_len) (i32.const 288) (i32.const 8))
          (then
            (i32.store8 (i32.const 16) (i32.const 9))
            (return (i32.const 16))))))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.const 16))
"""
)

# Echoes what it was given, for checking the lowering of every field: the
# context is "<method tag>|<path>|<scheme tag>|<authority>|<header count>"
# with single-digit numbers.
SOURCES["auth-echo"] = _authenticate(
    """
  (func $put (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))
  (func $digit (param $dst i32) (param $n i32) (result i32)
    (i32.store8 (local.get $dst) (i32.add (i32.const 48) (local.get $n)))
    (i32.store8 offset=1 (local.get $dst) (i32.const 124))
    (i32.add (local.get $dst) (i32.const 2)))
  (func (export "authenticate")
        (param $m_tag i32) (param $m_ptr i32) (param $m_len i32)
        (param $p_some i32) (param $p_ptr i32) (param $p_len i32)
        (param $s_some i32) (param $s_tag i32) (param $s_ptr i32) (param $s_len i32)
        (param $a_some i32) (param $a_ptr i32) (param $a_len i32)
        (param $h_ptr i32) (param $h_len i32) (result i32)
    (local $start i32) (local $end i32)
    (local.set $start (call $cabi_realloc (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 1024)))
    (local.set $end (call $digit (local.get $start) (local.get $m_tag)))
    (local.set $end (call $put (local.get $end) (local.get $p_ptr) (local.get $p_len)))
    (i32.store8 (local.get $end) (i32.const 124))
    (local.set $end (call $digit (i32.add (local.get $end) (i32.const 1))
      (select (local.get $s_tag) (i32.const 9) (local.get $s_some))))
    (local.set $end (call $put (local.get $end) (local.get $a_ptr) (local.get $a_len)))
    (i32.store8 (local.get $end) (i32.const 124))
    (i32.store8 offset=1 (local.get $end) (i32.add (i32.const 48) (local.get $h_len)))
    (local.set $end (i32.add (local.get $end) (i32.const 2)))
    (i32.store8 (i32.const 16) (i32.const 2))
    (i32.store (i32.const 20) (local.get $start))
    (i32.store (i32.const 24) (i32.sub (local.get $end) (local.get $start)))
    (i32.const 16))
"""
)


_INTERCEPT_TYPES = """
  (type $websocket' (record (field "addr" (option string))))
  (export $websocket "websocket" (type $websocket'))
  (type $connection' (variant (case "websocket" $websocket)))
  (export $connection "connection-ctx" (type $connection'))
  (type $kafka' (record (field "payload" (option (list u8))) (field "source-id" string) (field "topic" string)
                        (field "timestamp" (option u64)) (field "partition" u32) (field "offset" u64)))
  (export $kafka "kafka-event-ctx" (type $kafka'))
  (type $counter' (record (field "source-id" string) (field "count" u64)))
  (export $counter "counter-event-ctx" (type $counter'))
  (type $event' (variant (case "kafka" $kafka) (case "counter" $counter)))
  (export $event "event-ctx" (type $event'))
  (type $context' (record (field "auth" (option (list u8))) (field "connection" $connection) (field "event" $event)))
  (export $context "context" (type $context'))
  (type $transformed' (variant (case "kafka" (option (list u8))) (case "counter" u64)))
  (export $transformed "transformed-payload" (type $transformed'))
  (type $action' (variant (case "forward") (case "discard") (case "transform" $transformed)))
  (export $action "action" (type $action'))
  (func $hook (param "ctx" $context) (result $action)
    (canon lift (core func $core "intercept") (memory (core memory $core "memory"))
      (realloc (core func $core "cabi_realloc")) (post-return (core func $core "cabi_post_intercept"))))
  (export "intercept" (func $hook))
"""

_AUTHENTICATE_TYPES = """
  (type $method' (variant (case "get") (case "head") (case "post") (case "put") (case "delete") (case "connect")
                          (case "options") (case "trace") (case "patch") (case "other" string)))
  (export $method "method" (type $method'))
  (type $scheme' (variant (case "HTTP") (case "HTTPS") (case "other" string)))
  (export $scheme "scheme" (type $scheme'))
  (type $request' (record (field "method" $method) (field "path-with-query" (option string))
                          (field "scheme" (option $scheme)) (field "authority" (option string))
                          (field "headers" (list (tuple string (list u8))))))
  (export $request "http-request" (type $request'))
  (type $outcome' (variant (case "authenticate") (case "reject") (case "with-context" (list u8))))
  (export $outcome "outcome" (type $outcome'))
  (func $hook (param "incoming" $request) (result $outcome)
    (canon lift (core func $core "authenticate") (memory (core memory $core "memory"))
      (realloc (core func $core "cabi_realloc")) (post-return (core func $core "cabi_post_authenticate"))))
  (export "authenticate" (func $hook))
"""


def component_source(name: str) -> str:
    """
    The test plugin C{name} wrapped into a component: the same core module,
    lifted with the world's types (what cargo-component or wit-component
    would produce from it).
    """
    core = SOURCES[name]
    body = core[len("(module") : -1]
    types = _AUTHENTICATE_TYPES if '(export "authenticate")' in core else _INTERCEPT_TYPES
    return f"(component (core module $module {body}) (core instance $core (instantiate $module)) {types})"


def build(name: str, directory: str, component: bool = False) -> str:
    """
    Build the test plugin C{name} into C{directory} (as a component if
    C{component}) and return its path.
    """
    from wasmtime import wat2wasm

    path = os.path.join(directory, name + ("-component" if component else "") + ".wasm")
    with open(path, "wb") as f:
        f.write(bytes(wat2wasm(component_source(name) if component else SOURCES[name])))
    return path
