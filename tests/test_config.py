"""
Tests for L{kiwi.config}: reading original-Kiwi C{kiwi.yml} files, defaults,
and reporting every problem at once with its key path.
"""

from __future__ import annotations

import os
import textwrap

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from kiwi.config import (
    CounterSourceConfig,
    KafkaConfig,
    KafkaSourceConfig,
    KiwiConfig,
    ServerConfig,
    SubscriberConfig,
    address_to_strports,
    load_config,
    parse_config,
)
from kiwi.errors import ConfigErrors

ORIGINAL_KIWI_YML = """\
sources:
  - type: kafka
    topic: orders
  - type: kafka
    id: payments-stream
    topic: payments
  - type: counter
    id: ticks
    interval_ms: 1000
    min: 0
    max: 10
    lazy: true
kafka:
  bootstrap_servers:
    - kafka-1:9092
    - kafka-2:9092
server:
  address: 127.0.0.1:8000
"""


def _yaml(text: str) -> str:
    return textwrap.dedent(text)


def _allowed_keys(problems: list[str]) -> dict[str, list[str]]:
    """
    For each "unknown key" problem, its key path and the keys it lists as
    allowed.
    """
    result = {}
    for problem in problems:
        key_path, _, rest = problem.partition(": unknown key (expected one of: ")
        if rest:
            result[key_path] = rest.rstrip(")").split(", ")
    return result


class ConfigTestMixin:
    """
    Helpers to parse configuration text against a L{MemoryReactor}.
    """

    def parse(self, text: str) -> KiwiConfig:
        """
        Parse C{text} (dedented) as C{kiwi.yml}.
        """
        return parse_config(_yaml(text), "kiwi.yml", MemoryReactor())

    def problems(self, text: str) -> list[str]:
        """
        The problems C{text} has; it must have some.
        """
        error = self.assertRaises(ConfigErrors, self.parse, text)  # type: ignore[attr-defined]
        self.assertEqual(error.path, "kiwi.yml")  # type: ignore[attr-defined]
        self.assertTrue(error.problems)  # type: ignore[attr-defined]
        return error.problems


class ParseConfigTests(ConfigTestMixin, SynchronousTestCase):
    """
    Valid files and the defaults they get.
    """

    def test_parse_originalKiwiFile(self) -> None:
        """
        An original Kiwi file, with C{server.address}, parses into the
        whole configuration.
        """
        config = parse_config(ORIGINAL_KIWI_YML, "/etc/kiwi/config/kiwi.yml", MemoryReactor())
        self.assertEqual(
            config,
            KiwiConfig(
                path="/etc/kiwi/config/kiwi.yml",
                server=ServerConfig(listen="tcp:8000:interface=127.0.0.1", healthcheck=True),
                sources=(
                    KafkaSourceConfig(id="orders", topic="orders"),
                    KafkaSourceConfig(id="payments-stream", topic="payments"),
                    CounterSourceConfig(id="ticks", interval_ms=1000, min=0, max=10, lazy=True),
                ),
                kafka=KafkaConfig(
                    bootstrap_servers=("kafka-1:9092", "kafka-2:9092"),
                    partition_discovery_enabled=True,
                    partition_discovery_interval_ms=300_000,
                    config=(),
                ),
                subscriber=SubscriberConfig(buffer_capacity=None, lag_notice_threshold=None),
            ),
        )

    def test_parse_bytes(self) -> None:
        """
        The text may be given as bytes.
        """
        config = parse_config(ORIGINAL_KIWI_YML.encode("utf-8"), "kiwi.yml", MemoryReactor())
        self.assertEqual(len(config.sources), 3)

    def test_parse_listen(self) -> None:
        """
        C{server.listen} takes a strports description as it is.
        """
        config = self.parse(
            """\
            sources: []
            server:
              listen: "tcp:9000:interface=0.0.0.0"
              healthcheck: false
            """
        )
        self.assertEqual(config.server, ServerConfig(listen="tcp:9000:interface=0.0.0.0", healthcheck=False))

    def test_parse_listenUnix(self) -> None:
        """
        Any strports endpoint type is accepted.
        """
        config = self.parse(
            """\
            sources: []
            server: {listen: "unix:/tmp/kiwi.sock"}
            """
        )
        self.assertEqual(config.server.listen, "unix:/tmp/kiwi.sock")

    def test_parse_defaults(self) -> None:
        """
        Healthcheck defaults to on, a counter is not lazy and unbounded, a
        Kafka source's id is its topic, partition discovery is on every
        300000 ms, and subscribers get no buffer and no lag notices.
        """
        config = self.parse(
            """\
            sources:
              - {type: kafka, topic: t1}
              - {type: counter, id: c, interval_ms: 5, min: 3}
            kafka: {bootstrap_servers: "k:9092"}
            server: {address: ":8000"}
            """
        )
        self.assertTrue(config.server.healthcheck)
        self.assertEqual(config.sources[0], KafkaSourceConfig(id="t1", topic="t1"))
        self.assertEqual(config.sources[0].type, "kafka")
        self.assertEqual(config.sources[1], CounterSourceConfig(id="c", interval_ms=5, min=3, max=None, lazy=False))
        self.assertEqual(config.sources[1].type, "counter")
        assert config.kafka is not None
        self.assertTrue(config.kafka.partition_discovery_enabled)
        self.assertEqual(config.kafka.partition_discovery_interval_ms, 300_000)
        self.assertEqual(config.kafka.config, ())
        self.assertEqual(config.subscriber, SubscriberConfig())

    def test_parse_noKafkaSection(self) -> None:
        """
        Without Kafka sources the C{kafka} section may be left out.
        """
        config = self.parse(
            """\
            sources: [{type: counter, id: c, interval_ms: 1, min: 0}]
            server: {listen: "tcp:0"}
            """
        )
        self.assertIsNone(config.kafka)

    def test_parse_nullKafkaSection(self) -> None:
        """
        An empty C{kafka:} is the same as none.
        """
        config = self.parse(
            """\
            sources: []
            kafka:
            server: {listen: "tcp:0"}
            """
        )
        self.assertIsNone(config.kafka)

    def test_kafka_bootstrapServersCommaString(self) -> None:
        """
        C{bootstrap_servers} may be one comma-separated string; blanks
        around the names and empty items are dropped.
        """
        config = self.parse(
            """\
            sources: [{type: kafka, topic: t}]
            kafka: {bootstrap_servers: " a:1, b:2 ,,c:3 "}
            server: {listen: "tcp:0"}
            """
        )
        assert config.kafka is not None
        self.assertEqual(config.kafka.bootstrap_servers, ("a:1", "b:2", "c:3"))

    def test_kafka_bootstrapServersList(self) -> None:
        """
        C{bootstrap_servers} may be a list of strings.
        """
        config = self.parse(
            """\
            sources: [{type: kafka, topic: t}]
            kafka:
              bootstrap_servers: [" a:1", "b:2"]
            server: {listen: "tcp:0"}
            """
        )
        assert config.kafka is not None
        self.assertEqual(config.kafka.bootstrap_servers, ("a:1", "b:2"))

    def test_kafka_allKeys(self) -> None:
        """
        Partition discovery settings and C{kafka.config} are read; config
        values become strings, booleans as C{true}/C{false}, in file order.
        """
        config = self.parse(
            """\
            sources: [{type: kafka, topic: t}]
            kafka:
              bootstrap_servers: [k:9092]
              partition_discovery_enabled: false
              partition_discovery_interval_ms: 1500
              config:
                security.protocol: SASL_PLAINTEXT
                sasl.mechanism: PLAIN
                sasl.username: kiwi
                sasl.password: secret
                fetch.max.bytes: 1048576
                check.crcs: true
                api.version.fallback.ms: 0
                socket.keepalive.enable: false
            server: {listen: "tcp:0"}
            """
        )
        self.assertEqual(
            config.kafka,
            KafkaConfig(
                bootstrap_servers=("k:9092",),
                partition_discovery_enabled=False,
                partition_discovery_interval_ms=1500,
                config=(
                    ("security.protocol", "SASL_PLAINTEXT"),
                    ("sasl.mechanism", "PLAIN"),
                    ("sasl.username", "kiwi"),
                    ("sasl.password", "secret"),
                    ("fetch.max.bytes", "1048576"),
                    ("check.crcs", "true"),
                    ("api.version.fallback.ms", "0"),
                    ("socket.keepalive.enable", "false"),
                ),
            ),
        )

    def test_subscriber_values(self) -> None:
        """
        The C{subscriber} section sets buffer capacity and lag threshold.
        """
        config = self.parse(
            """\
            sources: []
            server: {listen: "tcp:0"}
            subscriber: {buffer_capacity: 100, lag_notice_threshold: 10}
            """
        )
        self.assertEqual(config.subscriber, SubscriberConfig(buffer_capacity=100, lag_notice_threshold=10))

    def test_flowKeys_defaults(self) -> None:
        """
        Without them, the outbox budget is 1 MiB, the slow-client timeout
        30 s, pings go every 30 s and must be answered within 10 s.
        """
        config = self.parse(
            """            sources: []
            server: {listen: "tcp:0"}
            """
        )
        self.assertEqual(config.subscriber.max_pending_bytes, 1024 * 1024)
        self.assertEqual(config.subscriber.slow_client_timeout_s, 30.0)
        self.assertEqual((config.server.ping_interval_s, config.server.ping_timeout_s), (30.0, 10.0))

    def test_flowKeys_values(self) -> None:
        """
        The budget, the slow-client timeout and the ping settings can be
        set; integers and fractions of seconds are accepted, and
        C{ping_interval_s: 0} turns pings off.
        """
        config = self.parse(
            """            sources: []
            server: {listen: "tcp:0", ping_interval_s: 0, ping_timeout_s: 2.5}
            subscriber: {max_pending_bytes: 65536, slow_client_timeout_s: 0.5}
            """
        )
        self.assertEqual(
            config.subscriber, SubscriberConfig(max_pending_bytes=65536, slow_client_timeout_s=0.5)
        )
        self.assertEqual((config.server.ping_interval_s, config.server.ping_timeout_s), (0.0, 2.5))

    def test_counter_maxEqualsMin(self) -> None:
        """
        A counter may count a single value.
        """
        config = self.parse(
            """\
            sources: [{type: counter, id: c, interval_ms: 1, min: 4, max: 4}]
            server: {listen: "tcp:0"}
            """
        )
        self.assertEqual(config.sources[0], CounterSourceConfig(id="c", interval_ms=1, min=4, max=4))

    def test_hooks_empty(self) -> None:
        """
        A C{hooks} section without hooks is accepted.
        """
        config = self.parse(
            """\
            sources: []
            server: {listen: "tcp:0"}
            hooks: {}
            """
        )
        self.assertEqual(config.sources, ())

    def test_parse_configIsFrozen(self) -> None:
        """
        The configuration cannot be changed after it is made.
        """
        config = parse_config(ORIGINAL_KIWI_YML, "kiwi.yml", MemoryReactor())
        self.assertRaises(AttributeError, setattr, config, "sources", ())


class AddressToStrportsTests(SynchronousTestCase):
    """
    L{address_to_strports} turns the original's C{host:port} into strports.
    """

    def test_address_hostPort(self) -> None:
        """
        A host and a port.
        """
        self.assertEqual(address_to_strports("127.0.0.1:8000"), "tcp:8000:interface=127.0.0.1")
        self.assertEqual(address_to_strports("localhost:80"), "tcp:80:interface=localhost")

    def test_address_noHost(self) -> None:
        """
        C{:port} listens on every interface.
        """
        self.assertEqual(address_to_strports(":8000"), "tcp:8000")

    def test_address_ipv6(self) -> None:
        """
        C{[v6]:port} has its colons escaped for strports.
        """
        self.assertEqual(address_to_strports("[::1]:8000"), "tcp:8000:interface=\\:\\:1")

    def test_address_leadingZeros(self) -> None:
        """
        The port is normalized.
        """
        self.assertEqual(address_to_strports("h:0080"), "tcp:80:interface=h")

    def test_address_invalid(self) -> None:
        """
        Anything else is not an address.
        """
        for address in ("8000", "host", "host:", "host:port", "h:65536", "h:123456", "::1:80", "tcp:80:x"):
            self.assertIsNone(address_to_strports(address), address)

    def test_address_maximumPort(self) -> None:
        """
        65535 is a port.
        """
        self.assertEqual(address_to_strports("h:65535"), "tcp:65535:interface=h")


class ConfigErrorsTests(ConfigTestMixin, SynchronousTestCase):
    """
    Every kind of bad input, reported with its key path and what was
    expected.
    """

    def test_parse_emptyFile(self) -> None:
        """
        An empty file is refused.
        """
        self.assertEqual(
            self.problems(""), ["(top level): the file is empty; expected a mapping with sources and server"]
        )

    def test_parse_commentsOnly(self) -> None:
        """
        A file with only comments is empty too.
        """
        self.assertEqual(
            self.problems("# nothing\n"),
            ["(top level): the file is empty; expected a mapping with sources and server"],
        )

    def test_parse_notAMapping(self) -> None:
        """
        The document must be a mapping.
        """
        self.assertEqual(self.problems("- 1\n"), ["(top level): expected a mapping, got [1] (list)"])

    def test_parse_badYaml(self) -> None:
        """
        Bad YAML is reported with its line and column.
        """
        problems = self.problems(
            """\
            sources: []
            server:
              listen: "tcp:0"
              oops: : x
            """
        )
        self.assertEqual(len(problems), 1)
        self.assertEqual(problems[0], "not valid YAML at line 4, column 9: mapping values are not allowed here")

    def test_parse_badYamlUnclosed(self) -> None:
        """
        An unclosed flow sequence is reported where YAML noticed it.
        """
        self.assertEqual(
            self.problems("server: [\n"),
            ["not valid YAML at line 2, column 1: expected the node content, but found '<stream end>'"],
        )

    def test_parse_missingTopLevelKeys(self) -> None:
        """
        C{sources} and C{server} are required.
        """
        self.assertEqual(
            self.problems("kafka: {bootstrap_servers: k:1}\n"),
            ["sources: required key is missing", "server: required key is missing"],
        )

    def test_parse_unknownKeysAtEveryLevel(self) -> None:
        """
        Unknown keys are errors at every level, each with its path and the
        keys that are allowed; all are reported at once.
        """
        problems = self.problems(
            """\
            sources:
              - {type: kafka, topic: t, partitions: 3}
              - {type: counter, id: c, interval_ms: 1, min: 0, step: 2}
            kafka:
              bootstrap_servers: k:1
              group_id: g
            server:
              listen: "tcp:0"
              port: 8000
            subscriber: {buffer: 3}
            hooks: {on_connect: x.wasm}
            extra: 1
            """
        )
        self.assertEqual(
            [problem.partition(" (")[0] for problem in problems],
            [
                "extra: unknown key",
                "server.port: unknown key",
                "sources[0].partitions: unknown key",
                "sources[1].step: unknown key",
                "kafka.group_id: unknown key",
                "subscriber.buffer: unknown key",
                "hooks.on_connect: unknown key",
            ],
        )
        allowed = _allowed_keys(problems)
        self.assertLessEqual({"sources", "kafka", "server", "hooks", "subscriber"}, set(allowed["extra"]))
        self.assertEqual(allowed["sources[0].partitions"], ["type", "id", "topic", "format", "key_format", "headers"])
        self.assertEqual(allowed["sources[1].step"], ["type", "id", "interval_ms", "min", "max", "lazy"])
        self.assertEqual(
            allowed["hooks.on_connect"],
            ["authenticate", "intercept", "timeout_ms", "authenticate_timeout_ms", "max_memory_mb"],
        )
        self.assertLessEqual({"address", "listen", "tls", "healthcheck"}, set(allowed["server.port"]))
        self.assertLessEqual(
            {"bootstrap_servers", "partition_discovery_enabled", "partition_discovery_interval_ms", "config"},
            set(allowed["kafka.group_id"]),
        )
        self.assertLessEqual({"buffer_capacity", "lag_notice_threshold"}, set(allowed["subscriber.buffer"]))

    def test_parse_unknownTlsKey(self) -> None:
        """
        Unknown keys under C{server.tls} are errors, and both files are
        required.
        """
        problems = self.problems(
            """\
            sources: []
            server:
              listen: "tcp:0"
              tls: {certificate: c.pem}
            """
        )
        self.assertEqual(
            problems,
            [
                "server.tls.certificate: unknown key (expected one of: cert, key, chain, client_ca)",
                "server.tls.cert: required key is missing",
                "server.tls.key: required key is missing",
            ],
        )

    def test_tls_nonTcpListen(self) -> None:
        """
        TLS wraps only a TCP endpoint.
        """
        self.assertEqual(
            self.problems(
                """\
                sources: []
                server:
                  listen: "unix:/tmp/k.sock"
                  tls: {cert: c.pem, key: k.pem}
                """
            ),
            ["server.tls: can only be combined with a tcp endpoint in server.listen"],
        )

    def test_parse_wrongSectionTypes(self) -> None:
        """
        Sections of the wrong type are each reported.
        """
        self.assertEqual(
            self.problems(
                """\
                sources: {a: 1}
                server: 5
                kafka: [k:1]
                subscriber: true
                hooks: x
                """
            ),
            [
                "server: expected a mapping, got 5 (int)",
                "sources: expected a list of sources, got {'a': 1} (dict)",
                "kafka: expected a mapping, got ['k:1'] (list)",
                "subscriber: expected a mapping, got True (bool)",
                "hooks: expected a mapping, got 'x' (str)",
            ],
        )

    def test_parse_wrongValueTypes(self) -> None:
        """
        Values of the wrong type name their path, what was expected and
        what was found.
        """
        problems = self.problems(
            """\
            sources:
              - type: counter
                id: 1
                interval_ms: 1.5
                min: true
                max: -1
                lazy: "yes"
              - type: kafka
                topic: 5
                id: ""
            kafka:
              bootstrap_servers: 9092
              partition_discovery_enabled: 1
              partition_discovery_interval_ms: 0
              config: [a]
            server:
              listen: 8000
              healthcheck: "no"
            subscriber: {buffer_capacity: 0, lag_notice_threshold: x}
            """
        )
        self.assertEqual(
            problems,
            [
                "server.healthcheck: expected true or false, got 'no' (str)",
                "server.listen: expected a non-empty string, got 8000 (int)",
                "sources[0].id: expected a non-empty string, got 1 (int)",
                "sources[0].interval_ms: expected an integer >= 1, got 1.5 (float)",
                "sources[0].min: expected an integer >= 0, got True (bool)",
                "sources[0].max: expected an integer >= 0, got -1 (int)",
                "sources[0].lazy: expected true or false, got 'yes' (str)",
                "sources[1].topic: expected a non-empty string, got 5 (int)",
                "sources[1].id: expected a non-empty string, got '' (str)",
                "kafka.bootstrap_servers: expected a list of host:port strings, got 9092 (int)",
                "kafka.partition_discovery_enabled: expected true or false, got 1 (int)",
                "kafka.partition_discovery_interval_ms: expected an integer >= 1, got 0 (int)",
                "kafka.config: expected a mapping of librdkafka properties, got ['a'] (list)",
                "subscriber.buffer_capacity: expected an integer >= 1, got 0 (int)",
                "subscriber.lag_notice_threshold: expected an integer >= 1, got 'x' (str)",
            ],
        )

    def test_flowKeys_badValues(self) -> None:
        """
        Out-of-range or mistyped flow-control and ping values are reported
        with their paths, together with other problems in the same
        section.
        """
        problems = self.problems(
            """            sources: []
            server: {listen: 8000, ping_interval_s: -1, ping_timeout_s: 0}
            subscriber: {max_pending_bytes: 1000, slow_client_timeout_s: "30s"}
            """
        )
        self.assertEqual(
            problems,
            [
                "server.ping_interval_s: expected a number >= 0, got -1 (int)",
                "server.ping_timeout_s: expected a number >= 0.1, got 0 (int)",
                "server.listen: expected a non-empty string, got 8000 (int)",
                "subscriber.max_pending_bytes: expected an integer >= 1024, got 1000 (int)",
                "subscriber.slow_client_timeout_s: expected a number >= 0.1, got '30s' (str)",
            ],
        )

    def test_flowKeys_infiniteRefused(self) -> None:
        """
        An infinite number of seconds is refused: turn pings off with 0.
        """
        problems = self.problems(
            """\
            sources: []
            server: {listen: "tcp:0", ping_interval_s: .inf}
            subscriber: {slow_client_timeout_s: .inf}
            """
        )
        self.assertEqual(
            problems,
            [
                "server.ping_interval_s: expected a number >= 0, got inf (float)",
                "subscriber.slow_client_timeout_s: expected a number >= 0.1, got inf (float)",
            ],
        )

    def test_flowKeys_booleansRefused(self) -> None:
        """
        C{true} is not a number of bytes or seconds.
        """
        problems = self.problems(
            """            sources: []
            server: {listen: "tcp:0", ping_interval_s: true}
            subscriber: {max_pending_bytes: true}
            """
        )
        self.assertEqual(
            problems,
            [
                "server.ping_interval_s: expected a number >= 0, got True (bool)",
                "subscriber.max_pending_bytes: expected an integer >= 1024, got True (bool)",
            ],
        )

    def test_kafka_badBootstrapServers(self) -> None:
        """
        An empty list, a list with non-strings and an empty string are not
        bootstrap servers.
        """
        for value, shown in (("[]", "[] (list)"), ("[a:1, 2]", "['a:1', 2] (list)"), ('""', "'' (str)")):
            problems = self.problems(
                f"""\
                sources: [{{type: kafka, topic: t}}]
                kafka: {{bootstrap_servers: {value}}}
                server: {{listen: "tcp:0"}}
                """
            )
            self.assertIn(f"kafka.bootstrap_servers: expected a list of host:port strings, got {shown}", problems)

    def test_kafka_missingBootstrapServers(self) -> None:
        """
        C{kafka.bootstrap_servers} is required.
        """
        problems = self.problems(
            """\
            sources: []
            kafka: {partition_discovery_enabled: true}
            server: {listen: "tcp:0"}
            """
        )
        self.assertEqual(problems, ["kafka.bootstrap_servers: required key is missing"])

    def test_kafka_badConfigValue(self) -> None:
        """
        C{kafka.config} values must be scalars; each bad one is named.
        """
        problems = self.problems(
            """\
            sources: []
            kafka:
              bootstrap_servers: k:1
              config: {sasl.mechanism: [PLAIN], ok: x, sasl.username: null}
            server: {listen: "tcp:0"}
            """
        )
        self.assertEqual(
            problems,
            [
                "kafka.config.sasl.mechanism: expected a string, number or boolean, got ['PLAIN'] (list)",
                "kafka.config.sasl.username: expected a string, number or boolean, got null",
            ],
        )

    def test_parse_missingSourceKeys(self) -> None:
        """
        Each source type has required keys.
        """
        problems = self.problems(
            """\
            sources:
              - {type: kafka}
              - {type: counter}
            kafka: {bootstrap_servers: k:1}
            server: {listen: "tcp:0"}
            """
        )
        self.assertEqual(
            problems,
            [
                "sources[0].topic: required key is missing",
                "sources[1].id: required key is missing",
                "sources[1].interval_ms: required key is missing",
                "sources[1].min: required key is missing",
            ],
        )

    def test_source_typeMissingOrUnknown(self) -> None:
        """
        A source needs a known C{type}, and must be a mapping.
        """
        problems = self.problems(
            """\
            sources:
              - {id: a}
              - {type: http, id: b}
              - just-a-string
            server: {listen: "tcp:0"}
            """
        )
        self.assertEqual(
            problems,
            [
                "sources[0].type: required key is missing (expected kafka or counter)",
                "sources[1].type: expected kafka or counter, got 'http' (str)",
                "sources[2]: expected a mapping with a type, got 'just-a-string' (str)",
            ],
        )

    def test_source_badTopicPathNamesIndex(self) -> None:
        """
        The path names the source by its index, e.g. C{sources[2].topic}.
        """
        problems = self.problems(
            """\
            sources:
              - {type: counter, id: a, interval_ms: 1, min: 0}
              - {type: kafka, topic: ok}
              - {type: kafka, topic: [x]}
            kafka: {bootstrap_servers: k:1}
            server: {listen: "tcp:0"}
            """
        )
        self.assertEqual(problems, ["sources[2].topic: expected a non-empty string, got ['x'] (list)"])

    def test_parse_duplicateSourceIds(self) -> None:
        """
        Source ids must be unique, including Kafka ids that default to the
        topic.
        """
        problems = self.problems(
            """\
            sources:
              - {type: kafka, topic: orders}
              - {type: counter, id: orders, interval_ms: 1, min: 0}
              - {type: kafka, id: x, topic: a}
              - {type: kafka, id: x, topic: b}
            kafka: {bootstrap_servers: k:1}
            server: {listen: "tcp:0"}
            """
        )
        self.assertEqual(
            problems,
            [
                "sources[1].id: duplicate source id 'orders' (already used by sources[0])",
                "sources[3].id: duplicate source id 'x' (already used by sources[2])",
            ],
        )

    def test_parse_kafkaSourcesWithoutKafka(self) -> None:
        """
        Kafka sources need the C{kafka} section.
        """
        for kafka in ("", "kafka:"):
            problems = self.problems(
                f"""\
                sources: [{{type: kafka, topic: t}}]
                server: {{listen: "tcp:0"}}
                {kafka}
                """
            )
            self.assertEqual(
                problems, ["kafka: required because Kafka sources are configured (kafka.bootstrap_servers)"]
            )

    def test_counter_maxBelowMin(self) -> None:
        """
        A counter's C{max} may not be below its C{min}.
        """
        self.assertEqual(
            self.problems(
                """\
                sources: [{type: counter, id: c, interval_ms: 1, min: 5, max: 3}]
                server: {listen: "tcp:0"}
                """
            ),
            ["sources[0].max: expected an integer >= min (5), got 3"],
        )

    def test_server_addressAndListen(self) -> None:
        """
        C{address} and C{listen} are alternatives.
        """
        self.assertEqual(
            self.problems(
                """\
                sources: []
                server: {address: "127.0.0.1:80", listen: "tcp:80"}
                """
            ),
            ["server: give either address or listen, not both"],
        )

    def test_server_neitherAddressNorListen(self) -> None:
        """
        One of C{address} or C{listen} is required.
        """
        self.assertEqual(
            self.problems(
                """\
                sources: []
                server: {healthcheck: true}
                """
            ),
            ["server.address: required key is missing (or give server.listen, a strports string such as tcp:8000)"],
        )

    def test_server_badAddress(self) -> None:
        """
        C{address} must be C{host:port}.
        """
        self.assertEqual(
            self.problems(
                """\
                sources: []
                server: {address: "localhost:99999"}
                """
            ),
            ["server.address: expected host:port such as 127.0.0.1:8000, got 'localhost:99999'"],
        )

    def test_server_badStrports(self) -> None:
        """
        C{listen} must be a strports description Twisted can parse.
        """
        self.assertEqual(
            self.problems(
                """\
                sources: []
                server: {listen: "bogus:80"}
                """
            ),
            ["server.listen: not a usable endpoint ('bogus:80'): Unknown endpoint type: 'bogus'"],
        )

    def test_server_badTcpPort(self) -> None:
        """
        A malformed tcp description is refused, naming C{server.listen}.
        """
        problems = self.problems(
            """\
            sources: []
            server: {listen: "tcp:notaport"}
            """
        )
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("server.listen: not a usable endpoint ('tcp:notaport'): "), problems)

    def test_hooks_missingFiles(self) -> None:
        """
        Hook paths that name no file are refused, with the resolved path;
        relative paths are resolved against the configuration file's
        directory.
        """
        problems = self.problems(
            """\
            sources: []
            server: {listen: "tcp:0"}
            hooks:
              authenticate: auth.wasm
              intercept: /nowhere/intercept.wasm
            """
        )
        self.assertEqual(
            problems,
            [
                f"hooks.authenticate: no such file: {os.path.abspath('auth.wasm')} (relative paths are "
                "resolved against the configuration file's directory)",
                "hooks.intercept: no such file: /nowhere/intercept.wasm",
            ],
        )

    def test_parse_allProblemsAtOnce(self) -> None:
        """
        Problems in different sections are all reported in one error, whose
        message names the file and lists each problem.
        """
        text = _yaml(
            """\
            sources:
              - {type: counter, id: c, interval_ms: 0, min: 0}
              - {type: kafka, topic: ""}
            server: {address: "nope"}
            hooks: {intercept: x.wasm}
            """
        )
        error = self.assertRaises(ConfigErrors, parse_config, text, "/etc/kiwi.yml", MemoryReactor())
        self.assertEqual(
            error.problems,
            [
                "server.address: expected host:port such as 127.0.0.1:8000, got 'nope'",
                "sources[0].interval_ms: expected an integer >= 1, got 0 (int)",
                "sources[1].topic: expected a non-empty string, got '' (str)",
                "kafka: required because Kafka sources are configured (kafka.bootstrap_servers)",
                "hooks.intercept: no such file: /etc/x.wasm (relative paths are resolved against the "
                "configuration file's directory)",
            ],
        )
        self.assertEqual(
            str(error),
            "invalid configuration in /etc/kiwi.yml:\n" + "\n".join("  " + p for p in error.problems),
        )

    def test_describe_longValueShortened(self) -> None:
        """
        Long values are shortened in messages.
        """
        problems = self.problems(
            f"""\
            sources: []
            server: {{listen: "tcp:0", healthcheck: "{'y' * 100}"}}
            """
        )
        self.assertEqual(problems, ["server.healthcheck: expected true or false, got '" + "y" * 36 + "... (str)"])


class LoadConfigTests(SynchronousTestCase):
    """
    L{load_config} reads a file.
    """

    def test_load_file(self) -> None:
        """
        A file is read and parsed; its path is recorded.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(ORIGINAL_KIWI_YML)
        config = load_config(path, MemoryReactor())
        self.assertEqual(config.path, path)
        self.assertEqual([s.id for s in config.sources], ["orders", "payments-stream", "ticks"])

    def test_load_missingFile(self) -> None:
        """
        A file that cannot be read is one problem, naming the file.
        """
        path = self.mktemp()
        error = self.assertRaises(ConfigErrors, load_config, path, MemoryReactor())
        self.assertEqual(error.path, path)
        self.assertEqual(error.problems, ["cannot read the file: No such file or directory"])
        self.assertIn(path, str(error))

    def test_load_invalidFile(self) -> None:
        """
        A bad file's errors name the file.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("sources: []\nserver: {listen: 'tcp:0', nope: 1}\n")
        error = self.assertRaises(ConfigErrors, load_config, path, MemoryReactor())
        self.assertEqual(error.path, path)
        self.assertEqual(len(error.problems), 1)
        self.assertTrue(error.problems[0].startswith("server.nope: unknown key (expected one of: address, listen, "))


class LibrdkafkaValidationTests(SynchronousTestCase):
    """
    C{kafka.config} is checked by librdkafka itself when the file loads.
    """

    def test_kafkaConfig_unknownProperty(self) -> None:
        """
        A property librdkafka does not know is reported under
        C{kafka.config}, with librdkafka's own words.
        """
        with self.assertRaises(ConfigErrors) as raised:
            parse_config(
                b"sources: [{type: kafka, topic: t}]\n"
                b"kafka: {bootstrap_servers: [k:1], config: {no.such.property: 1}}\n"
                b"server: {listen: 'tcp:0'}\n",
                "kiwi.yml",
                MemoryReactor(),
            )
        [problem] = raised.exception.problems
        self.assertTrue(problem.startswith("kafka.config: librdkafka refuses"), problem)
        self.assertIn("no.such.property", problem)


class ClientFeatureConfigTests(ConfigTestMixin, SynchronousTestCase):
    """
    The keys of the clients issue: payload formats, headers, the dashboard
    and replay bounds.
    """

    def test_formats_defaultsAndValues(self) -> None:
        """
        Kafka sources default to base64 keys and payloads without headers;
        format, key_format and headers take base64, utf8 or json and a
        boolean; the dashboard is on at /; replay is bounded at 100000.
        """
        config = self.parse(
            """\
            sources:
              - {type: kafka, topic: a}
              - {type: kafka, topic: b, format: json, key_format: utf8, headers: true}
            kafka: {bootstrap_servers: "k:9092"}
            server: {address: ":8000"}
            subscriber: {max_replay_events: 0}
            """
        )
        self.assertEqual(config.sources[0], KafkaSourceConfig(id="a", topic="a"))
        self.assertEqual(
            config.sources[1],
            KafkaSourceConfig(id="b", topic="b", format="json", key_format="utf8", headers=True),
        )
        self.assertTrue(config.server.ui)
        self.assertEqual(config.server.ui_path, "/")
        self.assertEqual(config.subscriber.max_replay_events, 0)
        self.assertEqual(SubscriberConfig().max_replay_events, 100_000)

    def test_formats_badValues(self) -> None:
        """
        Unknown formats, a non-boolean headers, a bad ui, ui_path and
        max_replay_events are each reported with their key path.
        """
        problems = self.problems(
            """\
            sources:
              - {type: kafka, topic: b, format: xml, key_format: 7, headers: "yes"}
            kafka: {bootstrap_servers: "k:9092"}
            server: {address: ":8000", ui: "on", ui_path: "dashboard"}
            subscriber: {max_replay_events: -1}
            """
        )
        self.assertEqual(
            sorted(problems),
            [
                "server.ui: expected true or false, got 'on' (str)",
                "server.ui_path: expected an absolute path such as / or /dashboard, got 'dashboard'",
                "sources[0].format: expected base64 or utf8 or json, got 'xml' (str)",
                "sources[0].headers: expected true or false, got 'yes' (str)",
                "sources[0].key_format: expected base64 or utf8 or json, got 7 (int)",
                "subscriber.max_replay_events: expected an integer >= 0, got -1 (int)",
            ],
        )

    def test_uiPath_reserved(self) -> None:
        """
        The dashboard cannot take a path Kiwi itself serves.
        """
        for path in ("/health", "/kiwi.js", "/ui", "/ui/x"):
            problems = self.problems(
                f"""\
                sources: []
                server: {{address: ":8000", ui_path: "{path}"}}
                """
            )
            self.assertEqual(len(problems), 1, problems)
            self.assertTrue(problems[0].startswith("server.ui_path: "), problems)

    def test_uiPath_nested(self) -> None:
        """
        Any other absolute path is accepted, and ui can be turned off.
        """
        config = self.parse(
            """\
            sources: []
            server: {address: ":8000", ui: false, ui_path: /ops/kiwi}
            """
        )
        self.assertFalse(config.server.ui)
        self.assertEqual(config.server.ui_path, "/ops/kiwi")


class StrictYamlTests(SynchronousTestCase):
    """
    YAML that PyYAML would accept but a configuration must not.
    """

    def test_duplicateKey_refused(self) -> None:
        """
        A key given twice in one mapping is an error naming the key, not a
        silent "last one wins".
        """
        with self.assertRaises(ConfigErrors) as raised:
            parse_config(
                b"sources:\n  - {type: counter, id: a, id: b, interval_ms: 10, min: 0}\nserver: {listen: 'tcp:0'}\n",
                "kiwi.yml",
                MemoryReactor(),
            )
        self.assertIn("found the key 'id' twice", str(raised.exception))

    def test_counterAbove2To53_refused(self) -> None:
        """
        Counter values above 2^53 are refused: JavaScript clients could not
        read them exactly.
        """
        with self.assertRaises(ConfigErrors) as raised:
            parse_config(
                b"sources:\n  - {type: counter, id: a, interval_ms: 10, min: 99999999999999999999}\n"
                b"server: {listen: 'tcp:0'}\n",
                "kiwi.yml",
                MemoryReactor(),
            )
        self.assertIn("sources[0].min: expected at most 2^53", str(raised.exception))
