"""
Tests for L{kiwi.protocol}: command parsing, error replies and the exact
bytes of every frame Kiwi sends.
"""

from __future__ import annotations

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
