"""
Tests for L{kiwi.protocol}: command parsing, error replies and the exact
bytes of every frame Kiwi sends.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kiwi import protocol
from kiwi.events import CounterEvent, KafkaEvent
from kiwi.protocol import (
    MAX_REQUEST,
    Authenticate,
    ProtocolError,
    Request,
    Subscribe,
    Unsubscribe,
    parse_command,
)


def _command(**fields: Any) -> str:
    return json.dumps(fields)


class ParseCommandTests(SynchronousTestCase):
    """
    L{parse_command} turns valid frames into commands.
    """

    def test_subscribe_defaultMode(self) -> None:
        """
        A C{SUBSCRIBE} without a mode subscribes in push mode.
        """
        self.assertEqual(parse_command(_command(type="SUBSCRIBE", sourceId="s")), Subscribe("s", "push"))

    def test_subscribe_nullMode(self) -> None:
        """
        A C{SUBSCRIBE} with C{mode: null} subscribes in push mode.
        """
        self.assertEqual(
            parse_command(_command(type="SUBSCRIBE", sourceId="s", mode=None)), Subscribe("s", "push")
        )

    def test_subscribe_pushMode(self) -> None:
        """
        C{mode: "push"} is accepted.
        """
        self.assertEqual(
            parse_command(_command(type="SUBSCRIBE", sourceId="s", mode="push")), Subscribe("s", "push")
        )

    def test_subscribe_pullMode(self) -> None:
        """
        C{mode: "pull"} gives a pull subscription.
        """
        self.assertEqual(
            parse_command(_command(type="SUBSCRIBE", sourceId="s", mode="pull")), Subscribe("s", "pull")
        )

    def test_subscribe_defaultModeAttribute(self) -> None:
        """
        L{Subscribe}'s mode defaults to push.
        """
        self.assertEqual(Subscribe("s").mode, "push")

    def test_unsubscribe_valid(self) -> None:
        """
        An C{UNSUBSCRIBE} names its source.
        """
        self.assertEqual(parse_command(_command(type="UNSUBSCRIBE", sourceId="s")), Unsubscribe("s"))

    def test_request_valid(self) -> None:
        """
        A C{REQUEST} carries its source and C{n}.
        """
        self.assertEqual(parse_command(_command(type="REQUEST", sourceId="s", n=5)), Request("s", 5))

    def test_request_maximum(self) -> None:
        """
        C{n} may be as large as 2**53.
        """
        self.assertEqual(
            parse_command(_command(type="REQUEST", sourceId="s", n=MAX_REQUEST)), Request("s", 2**53)
        )

    def test_parse_unknownFieldsIgnored(self) -> None:
        """
        Fields Kiwi does not know are ignored.
        """
        self.assertEqual(
            parse_command(_command(type="UNSUBSCRIBE", sourceId="s", future={"x": 1})), Unsubscribe("s")
        )

    def test_parse_unicodeSourceId(self) -> None:
        """
        Source ids may be any non-empty string.
        """
        self.assertEqual(parse_command('{"type":"SUBSCRIBE","sourceId":"\u00e9t\u00e9"}'), Subscribe("\u00e9t\u00e9"))


class ProtocolErrorTests(SynchronousTestCase):
    """
    Invalid frames raise L{ProtocolError}, whose C{reply} is the frame the
    client gets.
    """

    def assertGenericError(self, text: str, message: str) -> ProtocolError:
        """
        C{text} is refused with a generic C{ERROR} frame carrying C{message}.
        """
        error = self.assertRaises(ProtocolError, parse_command, text)
        self.assertEqual(error.message, message)
        self.assertEqual(error.reply(), protocol.error_frame(message))
        self.assertEqual(json.loads(error.reply())["type"], "ERROR")
        return error

    def assertCommandError(self, text: str, command_type: str, source_id: str, message: str) -> None:
        """
        C{text} is refused with the C{*_ERROR} reply of C{command_type}.
        """
        error = self.assertRaises(ProtocolError, parse_command, text)
        self.assertEqual(error.message, message)
        self.assertEqual((error.command_type, error.source_id), (command_type, source_id))
        self.assertEqual(error.reply(), protocol.command_error(command_type, source_id, message))

    def test_parse_notJson(self) -> None:
        """
        Text that is not JSON gets a generic error.
        """
        error = self.assertRaises(ProtocolError, parse_command, "{nope")
        self.assertTrue(error.message.startswith("frame is not valid JSON: "), error.message)
        self.assertEqual(json.loads(error.reply())["type"], "ERROR")

    def test_parse_deeplyNested(self) -> None:
        """
        JSON nested too deeply to parse is refused, not a crash.
        """
        error = self.assertRaises(ProtocolError, parse_command, "[" * 100_000)
        self.assertTrue(error.message.startswith("frame is not valid JSON: "), error.message)

    def test_parse_notAnObject(self) -> None:
        """
        A JSON value that is not an object gets a generic error.
        """
        for text in ("[]", "1", '"SUBSCRIBE"', "null", "true"):
            self.assertGenericError(text, "command must be a JSON object with a type field")

    def test_parse_noType(self) -> None:
        """
        An object without C{type} gets a generic error.
        """
        self.assertGenericError(
            '{"sourceId":"s"}', "command has no type field (expected SUBSCRIBE, UNSUBSCRIBE or REQUEST)"
        )

    def test_parse_unknownType(self) -> None:
        """
        An unknown C{type} gets a generic error naming it, even with a
        source id.
        """
        self.assertGenericError(
            '{"type":"PUBLISH","sourceId":"s"}',
            'unknown command type "PUBLISH" (expected SUBSCRIBE, UNSUBSCRIBE or REQUEST)',
        )

    def test_parse_typeNotAString(self) -> None:
        """
        A C{type} that is a number, list or object is an unknown type, not a
        crash.
        """
        for value, shown in ((1, "1"), ([], "list"), ({}, "dict"), ([1, 2], "list")):
            self.assertGenericError(
                json.dumps({"type": value, "sourceId": "s"}),
                f"unknown command type {shown} (expected SUBSCRIBE, UNSUBSCRIBE or REQUEST)",
            )

    def test_parse_unknownTypeTruncated(self) -> None:
        """
        A long unknown type is shortened in the message.
        """
        error = self.assertRaises(ProtocolError, parse_command, _command(type="X" * 100))
        self.assertIn('"' + "X" * 36 + "...", error.message)
        self.assertNotIn("X" * 50, error.message)

    def test_parse_missingSourceId(self) -> None:
        """
        A known command without C{sourceId} gets a generic error naming the
        command.
        """
        for command_type in ("SUBSCRIBE", "UNSUBSCRIBE", "REQUEST"):
            self.assertGenericError(_command(type=command_type), f"{command_type} command has no sourceId field")

    def test_parse_emptySourceId(self) -> None:
        """
        An empty C{sourceId} gets a generic error: there is no source to
        name in a C{*_ERROR} reply.
        """
        self.assertGenericError(
            _command(type="SUBSCRIBE", sourceId=""), "SUBSCRIBE command's sourceId must be a non-empty string"
        )

    def test_parse_nonStringSourceId(self) -> None:
        """
        A C{sourceId} that is not a string gets a generic error.
        """
        for value in (None, 1, True, ["s"], {"s": 1}):
            self.assertGenericError(
                _command(type="UNSUBSCRIBE", sourceId=value),
                "UNSUBSCRIBE command's sourceId must be a non-empty string",
            )

    def test_subscribe_badMode(self) -> None:
        """
        A mode other than push or pull gets a C{SUBSCRIBE_ERROR}.
        """
        self.assertCommandError(
            _command(type="SUBSCRIBE", sourceId="s", mode="fast"),
            "SUBSCRIBE",
            "s",
            'mode must be "push" or "pull", got "fast"',
        )
        self.assertCommandError(
            _command(type="SUBSCRIBE", sourceId="s", mode=["pull"]),
            "SUBSCRIBE",
            "s",
            'mode must be "push" or "pull", got list',
        )

    def test_request_missingN(self) -> None:
        """
        A C{REQUEST} without C{n} gets a C{REQUEST_ERROR}.
        """
        self.assertCommandError(
            _command(type="REQUEST", sourceId="s"), "REQUEST", "s", "REQUEST command has no n field"
        )

    def test_request_zero(self) -> None:
        """
        C{n: 0} gets a C{REQUEST_ERROR}.
        """
        self.assertCommandError(
            _command(type="REQUEST", sourceId="s", n=0), "REQUEST", "s", "n must be at least 1, got 0"
        )

    def test_request_negative(self) -> None:
        """
        A negative C{n} gets a C{REQUEST_ERROR}.
        """
        self.assertCommandError(
            _command(type="REQUEST", sourceId="s", n=-3), "REQUEST", "s", "n must be at least 1, got -3"
        )

    def test_request_fractional(self) -> None:
        """
        A fractional C{n} gets a C{REQUEST_ERROR}.
        """
        self.assertCommandError(
            _command(type="REQUEST", sourceId="s", n=1.5), "REQUEST", "s", "n must be a whole number, got 1.5"
        )

    def test_request_wholeFloat(self) -> None:
        """
        C{n: 2.0} is refused too: C{n} must be a JSON integer.
        """
        self.assertCommandError(
            '{"type":"REQUEST","sourceId":"s","n":2.0}', "REQUEST", "s", "n must be a whole number, got 2.0"
        )

    def test_request_string(self) -> None:
        """
        C{n} as a string gets a C{REQUEST_ERROR}.
        """
        self.assertCommandError(
            _command(type="REQUEST", sourceId="s", n="5"), "REQUEST", "s", 'n must be a positive integer, got "5"'
        )

    def test_request_bool(self) -> None:
        """
        C{n: true} is not the integer 1.
        """
        self.assertCommandError(
            _command(type="REQUEST", sourceId="s", n=True), "REQUEST", "s", "n must be a positive integer, got true"
        )

    def test_request_null(self) -> None:
        """
        C{n: null} gets a C{REQUEST_ERROR}.
        """
        self.assertCommandError(
            _command(type="REQUEST", sourceId="s", n=None), "REQUEST", "s", "n must be a positive integer, got null"
        )

    def test_request_aboveMaximum(self) -> None:
        """
        C{n} above 2**53 gets a C{REQUEST_ERROR}.
        """
        self.assertCommandError(
            _command(type="REQUEST", sourceId="s", n=MAX_REQUEST + 1),
            "REQUEST",
            "s",
            "n must be at most 2^53 (9007199254740992)",
        )

    def test_reply_unknownCommandTypeIsGeneric(self) -> None:
        """
        A L{ProtocolError} whose command type is not a known command replies
        with the generic frame even if it has a source id.
        """
        self.assertEqual(
            ProtocolError("bad", "PUBLISH", "s").reply(), b'{"type":"ERROR","data":{"error":"bad"}}'
        )

    def test_reply_noSourceIsGeneric(self) -> None:
        """
        A L{ProtocolError} with a command type but no source id replies with
        the generic frame.
        """
        self.assertEqual(ProtocolError("bad", "REQUEST").reply(), b'{"type":"ERROR","data":{"error":"bad"}}')


class EncoderTests(SynchronousTestCase):
    """
    Every frame Kiwi sends, byte for byte: compact JSON, keys in a fixed
    order, UTF-8.
    """

    def test_encodeResult_kafka(self) -> None:
        """
        A Kafka event carries base64 key and payload, partition, offset and
        timestamp.
        """
        event = KafkaEvent("orders", "orders-topic", 2, 41, b"k\x00", b"{\"a\":1}", 1700000000123)
        self.assertEqual(
            protocol.encode_result(event),
            b'{"type":"RESULT","data":{"sourceType":"kafka","sourceId":"orders",'
            b'"key":"awA=","payload":"eyJhIjoxfQ==","partition":2,"offset":41,"timestamp":1700000000123}}',
        )

    def test_encodeResult_kafkaNulls(self) -> None:
        """
        A missing key, payload or timestamp is C{null}.
        """
        event = KafkaEvent("o", "t", 0, 0, None, None, None)
        self.assertEqual(
            protocol.encode_result(event),
            b'{"type":"RESULT","data":{"sourceType":"kafka","sourceId":"o",'
            b'"key":null,"payload":null,"partition":0,"offset":0,"timestamp":null}}',
        )

    def test_encodeResult_kafkaEmptyBytes(self) -> None:
        """
        An empty key or payload is the empty string, not C{null}.
        """
        event = KafkaEvent("o", "t", 0, 0, b"", b"", None)
        self.assertIn(b'"key":"","payload":""', protocol.encode_result(event))

    def test_encodeResult_counter(self) -> None:
        """
        A counter event carries its count.
        """
        self.assertEqual(
            protocol.encode_result(CounterEvent("c", 7)),
            b'{"type":"RESULT","data":{"sourceType":"counter","sourceId":"c","count":7}}',
        )

    def test_encodeResult_notAnEvent(self) -> None:
        """
        Anything else is a programming error.
        """
        self.assertRaises(TypeError, protocol.encode_result, object())  # type: ignore[arg-type]

    def test_encode_nonAsciiIsUtf8(self) -> None:
        """
        Non-ASCII text is written as UTF-8, not escaped.
        """
        self.assertEqual(
            protocol.subscribe_ok("\u00e9"),
            '{"type":"COMMAND_RESPONSE","data":{"type":"SUBSCRIBE_OK","sourceId":"\u00e9"}}'.encode("utf-8"),
        )

    def test_subscribeOk_bytes(self) -> None:
        """
        C{SUBSCRIBE_OK}.
        """
        self.assertEqual(
            protocol.subscribe_ok("s"),
            b'{"type":"COMMAND_RESPONSE","data":{"type":"SUBSCRIBE_OK","sourceId":"s"}}',
        )

    def test_unsubscribeOk_bytes(self) -> None:
        """
        C{UNSUBSCRIBE_OK}.
        """
        self.assertEqual(
            protocol.unsubscribe_ok("s"),
            b'{"type":"COMMAND_RESPONSE","data":{"type":"UNSUBSCRIBE_OK","sourceId":"s"}}',
        )

    def test_requestOk_bytes(self) -> None:
        """
        C{REQUEST_OK} reports the remaining credits.
        """
        self.assertEqual(
            protocol.request_ok("s", 3),
            b'{"type":"COMMAND_RESPONSE","data":{"type":"REQUEST_OK","sourceId":"s","requests":3}}',
        )

    def test_commandError_bytes(self) -> None:
        """
        Each command has its own C{*_ERROR} type.
        """
        for command_type in ("SUBSCRIBE", "UNSUBSCRIBE", "REQUEST"):
            self.assertEqual(
                protocol.command_error(command_type, "s", 'no "such" source'),
                b'{"type":"COMMAND_RESPONSE","data":{"type":"'
                + command_type.encode("ascii")
                + b'_ERROR","sourceId":"s","error":"no \\"such\\" source"}}',
            )

    def test_errorFrame_bytes(self) -> None:
        """
        The generic C{ERROR} frame.
        """
        self.assertEqual(protocol.error_frame("oops"), b'{"type":"ERROR","data":{"error":"oops"}}')

    def test_lagNotice_bytes(self) -> None:
        """
        The C{LAG} notice.
        """
        self.assertEqual(
            protocol.lag_notice("s", 12),
            b'{"type":"NOTICE","data":{"type":"LAG","sourceId":"s","count":12}}',
        )

    def test_subscriptionClosed_bytes(self) -> None:
        """
        The C{SUBSCRIPTION_CLOSED} notice.
        """
        self.assertEqual(
            protocol.subscription_closed("s", "source ended"),
            b'{"type":"NOTICE","data":{"type":"SUBSCRIPTION_CLOSED","sourceId":"s","message":"source ended"}}',
        )


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

_command_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["SUBSCRIBE", "UNSUBSCRIBE", "REQUEST", "OTHER", ""]) | _json_values,
        "sourceId": st.text(max_size=5) | _json_values,
        "mode": st.sampled_from(["push", "pull"]) | _json_values,
        "n": st.integers(min_value=-5, max_value=2**54) | _json_values,
    },
)


class ParseCommandPropertyTests(SynchronousTestCase):
    """
    L{parse_command} never fails with anything but L{ProtocolError}.
    """

    def assertParsesOrRefuses(self, text: str) -> None:
        """
        C{text} gives a command, or a L{ProtocolError} whose reply is JSON.
        """
        try:
            command = parse_command(text)
        except ProtocolError as e:
            reply = json.loads(e.reply())
            self.assertIn(reply["type"], ("ERROR", "COMMAND_RESPONSE"))
        else:
            self.assertIsInstance(command, (Subscribe, Unsubscribe, Request, Authenticate))

    @settings(max_examples=300, deadline=None)
    @given(st.text())
    def test_parse_anyText(self, text: str) -> None:
        """
        Arbitrary text.
        """
        self.assertParsesOrRefuses(text)

    @settings(max_examples=300, deadline=None)
    @given(_json_values)
    def test_parse_anyJson(self, value: object) -> None:
        """
        Any JSON value.
        """
        self.assertParsesOrRefuses(json.dumps(value))

    @settings(max_examples=500, deadline=None)
    @given(_command_like)
    def test_parse_commandLike(self, value: dict[str, object]) -> None:
        """
        Objects shaped like commands, with arbitrary field values; a valid
        C{REQUEST} always has 1 <= n <= 2**53.
        """
        text = json.dumps(value)
        self.assertParsesOrRefuses(text)
        try:
            command = parse_command(text)
        except ProtocolError:
            return
        if isinstance(command, Request):
            self.assertTrue(1 <= command.n <= MAX_REQUEST)
            self.assertIs(type(command.n), int)


class StartFromTests(SynchronousTestCase):
    """
    C{from} in C{SUBSCRIBE}: our replay extension.
    """

    def subscribe(self, start: object) -> Subscribe:
        command = parse_command(json.dumps({"type": "SUBSCRIBE", "sourceId": "s", "from": start}))
        assert isinstance(command, Subscribe)
        return command

    def refused(self, start: object) -> str:
        error = self.assertRaises(ProtocolError, self.subscribe, start)
        self.assertEqual(error.command_type, "SUBSCRIBE")
        self.assertEqual(error.source_id, "s")
        return error.message

    def test_from_forms(self) -> None:
        """
        latest (also absent or null), earliest, a timestamp and offsets per
        partition are understood.
        """
        self.assertEqual(parse_command(_command(type="SUBSCRIBE", sourceId="s")).start, protocol.LATEST)  # type: ignore[union-attr]
        self.assertTrue(self.subscribe(None).start.is_latest)
        self.assertTrue(self.subscribe("latest").start.is_latest)
        self.assertEqual(self.subscribe("earliest").start, protocol.StartFrom("earliest"))
        self.assertEqual(self.subscribe({"timestamp": 1700000000000}).start, protocol.StartFrom("timestamp", 1700000000000))
        self.assertEqual(
            self.subscribe({"offsets": {"1": 99, "0": 1234}}).start,
            protocol.StartFrom("offsets", offsets=((0, 1234), (1, 99))),
        )

    def test_from_refusedWithReason(self) -> None:
        """
        Everything else is a SUBSCRIBE_ERROR that names the problem.
        """
        forms = 'from must be "latest", "earliest", {"timestamp": ms} or {"offsets": {"<partition>": offset}}'
        self.assertEqual(self.refused("newest"), forms + ', got "newest"')
        self.assertEqual(self.refused(5), forms + ", got 5")
        self.assertEqual(self.refused({"timestamp": 1, "offsets": {}}), forms + ", got dict")
        self.assertEqual(self.refused({"at": 1}), forms + ", got dict")
        self.assertEqual(
            self.refused({"timestamp": "now"}),
            'from.timestamp must be an integer >= 0 (milliseconds since the epoch), got "now"',
        )
        self.assertIn("from.timestamp must be", self.refused({"timestamp": -5}))
        self.assertIn("from.timestamp must be", self.refused({"timestamp": 1.5}))
        self.assertIn("from.timestamp must be", self.refused({"timestamp": True}))
        self.assertIn("from.offsets must be a non-empty object", self.refused({"offsets": {}}))
        self.assertIn("from.offsets must be a non-empty object", self.refused({"offsets": [1]}))
        self.assertEqual(
            self.refused({"offsets": {"p0": 1}}), 'from.offsets keys must be partition numbers such as "0", got "p0"'
        )
        self.assertIn("keys must be partition numbers", self.refused({"offsets": {"-1": 1}}))
        self.assertIn("keys must be partition numbers", self.refused({"offsets": {"\u0661": 1}}))
        self.assertEqual(self.refused({"offsets": {"0": -1}}), 'from.offsets["0"] must be an integer >= 0, got -1')
        self.assertIn('from.offsets["3"] must be', self.refused({"offsets": {"3": "12"}}))
        self.assertIn('from.offsets["3"] must be', self.refused({"offsets": {"3": 2**63}}))

    def test_from_replyIsSubscribeError(self) -> None:
        """
        The reply to a bad from is a SUBSCRIBE_ERROR for that source.
        """
        error = self.assertRaises(ProtocolError, self.subscribe, "yesterday")
        reply = json.loads(error.reply())
        self.assertEqual(reply["data"]["type"], "SUBSCRIBE_ERROR")
        self.assertEqual(reply["data"]["sourceId"], "s")


class PayloadFormatTests(SynchronousTestCase):
    """
    C{encode_result} renders Kafka keys, payloads and headers as the
    source's C{format}, C{key_format} and C{headers} ask.
    """

    def data(self, **fields: Any) -> dict[str, Any]:
        values: dict[str, Any] = {"key": b"k", "payload": b"v", "timestamp": None}
        values.update(fields)
        event = KafkaEvent("o", "t", 0, 5, **values)
        result: dict[str, Any] = json.loads(protocol.encode_result(event))["data"]
        return result

    def test_json_values(self) -> None:
        """
        With json, a payload that is JSON arrives as that JSON value, with
        no encoding field.
        """
        data = self.data(payload=b'{"a": [1, 2.5, "\xc3\xa9"]}', payload_format="json")
        self.assertEqual(data["payload"], {"a": [1, 2.5, "\u00e9"]})
        self.assertNotIn("payloadEncoding", data)
        self.assertEqual(self.data(payload=b'"text"', payload_format="json")["payload"], "text")
        self.assertEqual(self.data(payload=b"12", payload_format="json")["payload"], 12)

    def test_json_fallback(self) -> None:
        """
        With json, text that is not JSON, NaN and Infinity (not JSON), bytes
        that are not UTF-8 and nesting too deep all arrive base64-encoded,
        flagged with payloadEncoding.
        """
        for raw in (b"hello", b"NaN", b"[Infinity]", b"\xff\xfe", b"[" * 100_000):
            data = self.data(payload=raw, payload_format="json")
            self.assertEqual(data["payloadEncoding"], "base64", raw[:10])
            self.assertEqual(base64.b64decode(data["payload"]), raw)

    def test_json_decodesButCannotBeSent(self) -> None:
        """
        JSON that decodes but cannot be sent as JSON arrives base64-encoded,
        flagged: numbers beyond a double's range (C{1e400} decodes as
        infinity, which is not JSON) and nesting that the decoder accepts
        but the encoder, deeper in the stack, does not. The other field
        stays JSON.
        """
        for raw in (b'{"price": 1e400}', b"-1e999", b"[" * 990 + b"]" * 990):
            data = self.data(key=b'{"id":1}', key_format="json", payload=raw, payload_format="json")
            self.assertEqual(data["payloadEncoding"], "base64", raw[:12])
            self.assertEqual(base64.b64decode(data["payload"]), raw)
            self.assertEqual(data["key"], {"id": 1})
            self.assertNotIn("keyEncoding", data)
        data = self.data(key=b"1e400", key_format="json", payload=b"1", payload_format="json")
        self.assertEqual((data["key"], data["keyEncoding"], data["payload"]), ("MWU0MDA=", "base64", 1))

    def test_utf8_textAndFallback(self) -> None:
        """
        With utf8, UTF-8 payloads arrive as strings; others as base64 with
        payloadEncoding.
        """
        self.assertEqual(self.data(payload="\u00e9t\u00e9".encode(), payload_format="utf8")["payload"], "\u00e9t\u00e9")
        data = self.data(payload=b"\xc3", payload_format="utf8")
        self.assertEqual((data["payload"], data["payloadEncoding"]), ("ww==", "base64"))

    def test_key_format(self) -> None:
        """
        Keys follow key_format, with keyEncoding on fallback; null keys and
        payloads stay null with no encoding field.
        """
        self.assertEqual(self.data(key=b"id-1", key_format="utf8")["key"], "id-1")
        data = self.data(key=b"\xff", key_format="json")
        self.assertEqual((data["key"], data["keyEncoding"]), ("/w==", "base64"))
        data = self.data(key=None, payload=None, key_format="utf8", payload_format="json")
        self.assertEqual((data["key"], data["payload"]), (None, None))
        self.assertFalse({"keyEncoding", "payloadEncoding"} & set(data))

    def test_headers(self) -> None:
        """
        Headers, when passed through, are a list of key and value, the
        value as text (or base64 with valueEncoding) with utf8 and json,
        base64 with base64; null values stay null. Without headers there
        is no headers field.
        """
        headers = (("a", b"1"), ("a", b"\xff"), ("n", None))
        data = self.data(headers=headers, payload_format="json")
        self.assertEqual(
            data["headers"],
            [{"key": "a", "value": "1"}, {"key": "a", "value": "/w==", "valueEncoding": "base64"}, {"key": "n", "value": None}],
        )
        data = self.data(headers=(("a", b"1"),))
        self.assertEqual(data["headers"], [{"key": "a", "value": "MQ=="}])
        self.assertNotIn("headers", self.data())

    def test_base64_unchanged(self) -> None:
        """
        The default is the original's: base64 and no extra fields.
        """
        event = KafkaEvent("orders", "orders-topic", 2, 41, b"k\x00", b"{\"a\":1}", 1700000000123)
        self.assertEqual(
            protocol.encode_result(event),
            b'{"type":"RESULT","data":{"sourceType":"kafka","sourceId":"orders","key":"awA=",'
            b'"payload":"eyJhIjoxfQ==","partition":2,"offset":41,"timestamp":1700000000123}}',
        )


class HostileTextTests(SynchronousTestCase):
    """
    Text that is valid for Python's JSON parser but not for a reply.
    """

    def test_loneSurrogate_errorReplyIsAscii(self) -> None:
        """
        The C{SUBSCRIBE_ERROR} reply for a bad mode echoes the surrogate
        escaped rather than failing to encode.
        """
        with self.assertRaises(protocol.ProtocolError) as raised:
            protocol.parse_command('{"type": "SUBSCRIBE", "sourceId": "\\ud800", "mode": "sideways"}')
        reply = raised.exception.reply()
        self.assertIn(b"\\ud800", reply)
        self.assertIn(b"SUBSCRIBE_ERROR", reply)

    def test_loneSurrogate_okReplyEncodes(self) -> None:
        """
        A reply naming such a source id can be encoded.
        """
        self.assertIn(b"\\ud800", protocol.subscribe_ok("\ud800"))

    def test_nanAndInfinity_notJson(self) -> None:
        """
        C{NaN} and C{Infinity} are not JSON: the frame is refused as such.
        """
        for text in ('{"type": "REQUEST", "sourceId": "s", "n": NaN}', '{"type": "REQUEST", "sourceId": "s", "n": -Infinity}'):
            with self.assertRaises(protocol.ProtocolError) as raised:
                protocol.parse_command(text)
            self.assertIn("not valid JSON", raised.exception.message)
