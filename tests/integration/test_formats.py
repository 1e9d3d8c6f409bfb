"""
Readable payloads (a Kafka source's C{format}, C{key_format} and
C{headers}) through a real Kiwi process, a real broker and the Python
client.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.threads import deferToThread

from kiwi.client import decode
from tests.integration.base import IntegrationTestCase
from tests.integration.polling import wait_until

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]] | None]


def produce_with_headers(bootstrap: str, topic: str, records: list[Record]) -> None:
    """
    Produce C{(key, value, headers)} records to partition 0, in order.
    Blocking.
    """
    from confluent_kafka import Producer

    errors: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False})
    for key, value, headers in records:
        producer.produce(
            topic,
            key=key,
            value=value,
            partition=0,
            headers=headers,
            on_delivery=lambda e, m: errors.append(str(e)) if e else None,
        )
    remaining = producer.flush(30)
    assert not remaining and not errors, (remaining, errors)


RECORDS: list[Record] = [
    (b"k1", b'{"price": 42.5, "tags": ["a", "\\u00e9"]}', [("trace", b"abc"), ("bin", b"\xff\x00")]),
    (b"k2", "plain text \u00e9".encode(), None),
    (b"\xff\xfe", b"\xff\xfe\x00 not utf-8", [("empty", None)]),
    (None, None, None),
    (b"k5", b"NaN", None),
    (b'"quoted"', b"[1, 2, 3]", None),
]


class PayloadFormatTests(IntegrationTestCase):
    """
    Each format, including messages that do not decode.
    """

    timeout = 120

    async def _results(self, **source: Any) -> list[dict[str, Any]]:
        topic = await self.create_topic()
        config = self.kafka_config()
        config["sources"] = [{"type": "kafka", "topic": topic, **source}]
        kiwi = await self.start_kiwi(config)
        await kiwi.wait_source_state(topic, "running")
        client = await self.kiwi_client(kiwi.port)
        results: list[dict[str, Any]] = []
        client.on("result", results.append)
        await client.subscribe(topic)
        await deferToThread(produce_with_headers, self.bootstrap, topic, RECORDS)
        await wait_until(lambda: len(results) >= len(RECORDS), 30, what="every record")
        self.assertEqual([r["offset"] for r in results], list(range(len(RECORDS))))
        return results

    async def test_json_valuesAndFallback(self) -> None:
        """
        With format json and key_format utf8: JSON payloads arrive as JSON
        values; text that is not JSON (and NaN, which JSON lacks) and bytes
        that are not UTF-8 arrive base64-encoded with payloadEncoding; keys
        arrive as text, or base64 with keyEncoding; null stays null.
        Headers are passed through, values as text or base64.
        """
        results = await self._results(format="json", key_format="utf8", headers=True)
        first, text, binary, empty, nan, array = results
        self.assertEqual(first["payload"], {"price": 42.5, "tags": ["a", "\u00e9"]})
        self.assertEqual(first["key"], "k1")
        self.assertNotIn("payloadEncoding", first)
        self.assertNotIn("keyEncoding", first)
        self.assertEqual(
            first["headers"],
            [{"key": "trace", "value": "abc"}, {"key": "bin", "value": "/wA=", "valueEncoding": "base64"}],
        )
        self.assertEqual(text["payloadEncoding"], "base64")
        self.assertEqual(base64.b64decode(text["payload"]), "plain text \u00e9".encode())
        self.assertEqual(text["headers"], [])
        self.assertEqual(binary["payloadEncoding"], "base64")
        self.assertEqual(decode(binary, "payload", "json"), b"\xff\xfe\x00 not utf-8")
        self.assertEqual(binary["keyEncoding"], "base64")
        self.assertEqual(decode(binary, "key", "utf8"), b"\xff\xfe")
        self.assertEqual(binary["headers"], [{"key": "empty", "value": None}])
        self.assertIsNone(empty["payload"])
        self.assertIsNone(empty["key"])
        self.assertNotIn("payloadEncoding", empty)
        self.assertEqual(nan["payloadEncoding"], "base64")
        self.assertEqual(array["payload"], [1, 2, 3])
        self.assertEqual(array["key"], '"quoted"')

    async def test_utf8_textAndFallback(self) -> None:
        """
        With format utf8: UTF-8 payloads arrive as strings (JSON text too),
        others base64 with payloadEncoding; keys stay base64 by default and
        there is no headers field without headers: true.
        """
        results = await self._results(format="utf8")
        first, text, binary, empty, nan, array = results
        self.assertEqual(first["payload"], '{"price": 42.5, "tags": ["a", "\\u00e9"]}')
        self.assertEqual(text["payload"], "plain text \u00e9")
        self.assertEqual(nan["payload"], "NaN")
        self.assertEqual(binary["payloadEncoding"], "base64")
        self.assertEqual(base64.b64decode(first["key"]), b"k1")
        self.assertNotIn("keyEncoding", binary)
        self.assertNotIn("headers", first)
        self.assertIsNone(empty["payload"])

    async def test_base64_default(self) -> None:
        """
        Without format: keys and payloads are base64 as in the original
        Kiwi, with no encoding or headers fields.
        """
        results = await self._results()
        self.assertEqual([decode(r) for r in results], [value for _, value, _ in RECORDS])
        self.assertEqual([decode(r, "key") for r in results], [key for key, _, _ in RECORDS])
        for result in results:
            self.assertFalse({"payloadEncoding", "keyEncoding", "headers"} & set(result))
