"""
Kiwi's configuration: YAML in, one immutable L{KiwiConfig} out.

The keys are those of the original Kiwi's C{kiwi.yml} plus our extensions.
Validation reports every problem at once, each with the key path that has
it (C{sources[2].topic: expected ...}), and happens before any port is bound.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import yaml
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorCore

from kiwi.errors import ConfigErrors
from kiwi.events import PayloadFormat

PAYLOAD_FORMATS: tuple[PayloadFormat, ...] = ("base64", "utf8", "json")

DEFAULT_CONFIG_PATH = "/etc/kiwi/config/kiwi.yml"

T = TypeVar("T")


@attrs.frozen
class CounterSourceConfig:
    """
    A source that counts up from C{min}, one value every C{interval_ms}.
    """

    id: str
    interval_ms: int
    min: int
    max: int | None = None
    lazy: bool = False
    type: str = "counter"


@attrs.frozen
class KafkaSourceConfig:
    """
    A source that streams every partition of one Kafka topic.

    @ivar format: How record payloads reach clients.
    @ivar key_format: How record keys reach clients.
    @ivar headers: Whether record headers are passed through.
    """

    id: str
    topic: str
    type: str = "kafka"
    format: PayloadFormat = "base64"
    key_format: PayloadFormat = "base64"
    headers: bool = False


SourceConfig = CounterSourceConfig | KafkaSourceConfig


@attrs.frozen
class KafkaConfig:
    """
    How Kiwi's Kafka consumers reach the cluster.

    @ivar config: Extra librdkafka properties (SASL, SSL, tuning), applied
        over Kiwi's defaults.
    """

    bootstrap_servers: tuple[str, ...]
    partition_discovery_enabled: bool = True
    partition_discovery_interval_ms: int = 300_000
    config: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class ServerConfig:
    """
    The listening side.

    @ivar listen: A Twisted strports endpoint description.
    @ivar ping_interval_s: Seconds between WebSocket pings to each client
        (0: no pings).
    @ivar ping_timeout_s: Seconds a client has to answer a ping before it
        is considered gone and disconnected.
    @ivar ui: Whether the live dashboard is served.
    @ivar ui_path: Where the dashboard is served (an absolute path).
    """

    listen: str
    healthcheck: bool = True
    ping_interval_s: float = 30.0
    ping_timeout_s: float = 10.0
    ui: bool = True
    ui_path: str = "/"


@attrs.frozen
class SubscriberConfig:
    """
    Per-subscription flow control.

    @ivar buffer_capacity: How many events a pull subscription keeps while
        it has no credit (C{None}: none, events without credit are dropped).
    @ivar lag_notice_threshold: How many missed events earn a C{LAG} notice
        (C{None}: no notices).

    @ivar max_pending_bytes: How many bytes of messages may wait for one
        slow connection before its events are dropped (see
        C{docs/flow-control.md}).
    @ivar slow_client_timeout_s: How long a connection may stay over that
        budget before it is closed with 1008.
    @ivar max_replay_events: The most past events one C{SUBSCRIBE} with
        C{from} replays before it continues with the live stream (0: no
        replay).
    @ivar max_concurrent_replays: How many replays of one source read at
        once (each has its own Kafka consumer and thread); others wait.
    """

    buffer_capacity: int | None = None
    lag_notice_threshold: int | None = None
    max_pending_bytes: int = 1024 * 1024
    slow_client_timeout_s: float = 30.0
    max_replay_events: int = 100_000
    max_concurrent_replays: int = 4


@attrs.frozen
class KiwiConfig:
    """
    A complete, validated configuration.
    """

    path: str
    server: ServerConfig
    sources: tuple[SourceConfig, ...]
    kafka: KafkaConfig | None = None
    subscriber: SubscriberConfig = SubscriberConfig()


def load_config(path: str, reactor: IReactorCore) -> KiwiConfig:
    """
    Read, parse and validate the configuration file at C{path}.

    @param reactor: Used only to parse the listening endpoint, which also
        checks that TLS files exist.
    @raise ConfigErrors: with every problem found.
    """
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigErrors(path, [f"cannot read the file: {e.strerror}"])
    return parse_config(text, path, reactor)


def parse_config(text: bytes | str, path: str, reactor: IReactorCore) -> KiwiConfig:
    """
    Parse and validate configuration text; C{path} names it in messages.

    @raise ConfigErrors: with every problem found.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigErrors(path, [f"not valid YAML{where}: {problem}"])
    reader = _Reader()
    config = reader.kiwi(document, path, reactor)
    if reader.problems or config is None:
        raise ConfigErrors(path, reader.problems)
    return config


def _describe(value: object) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({type(value).__name__})"


_HOST_PORT = re.compile(r"^(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


def address_to_strports(address: str) -> str | None:
    """
    Turn the original's C{host:port} (or C{[v6]:port}) into a strports
    description, or return C{None} if it is not of that form.
    """
    match = _HOST_PORT.match(address)
    if match is None or int(match["port"]) > 65535:
        return None
    host = match["ipv6"] or match["host"]
    description = f"tcp:{int(match['port'])}"
    if host:
        description += ":interface=" + host.replace("\\", "\\\\").replace(":", "\\:")
    return description


class _Reader:
    """
    Walks the YAML document, collecting problems with their key paths.
    """

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, key_path: str, message: str) -> None:
        self.problems.append(f"{key_path}: {message}")

    def mapping(
        self, value: object, key_path: str, allowed: Sequence[str], required: Sequence[str] = ()
    ) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.problem(key_path, f"expected a mapping, got {_describe(value)}")
            return None
        for key in value:
            if key not in allowed:
                self.problem(
                    _join(key_path, str(key)),
                    "unknown key (expected one of: " + ", ".join(allowed) + ")",
                )
        for key in required:
            if key not in value:
                self.problem(_join(key_path, key), "required key is missing")
        return value

    def typed(
        self,
        section: Mapping[str, Any],
        key_path: str,
        key: str,
        check: Callable[[object], bool],
        expected: str,
        default: T,
    ) -> Any:
        if key not in section:
            return default
        value = section[key]
        if not check(value):
            self.problem(_join(key_path, key), f"expected {expected}, got {_describe(value)}")
            return default
        return value

    def string(self, section: Mapping[str, Any], key_path: str, key: str, default: Any = None) -> Any:
        return self.typed(
            section, key_path, key, lambda v: isinstance(v, str) and v != "", "a non-empty string", default
        )

    def boolean(self, section: Mapping[str, Any], key_path: str, key: str, default: bool) -> bool:
        return bool(self.typed(section, key_path, key, lambda v: isinstance(v, bool), "true or false", default))

    def integer(
        self, section: Mapping[str, Any], key_path: str, key: str, default: Any, minimum: int
    ) -> Any:
        return self.typed(
            section,
            key_path,
            key,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
            f"an integer >= {minimum}",
            default,
        )

    def number(
        self, section: Mapping[str, Any], key_path: str, key: str, default: float, minimum: float
    ) -> float:
        return float(
            self.typed(
                section,
                key_path,
                key,
                lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= minimum,
                f"a number >= {minimum:g}",
                default,
            )
        )

    def choice(
        self, section: Mapping[str, Any], key_path: str, key: str, choices: Sequence[str], default: str
    ) -> Any:
        return self.typed(
            section, key_path, key, lambda v: v in choices, " or ".join(choices), default
        )

    def optional_integer(
        self, section: Mapping[str, Any], key_path: str, key: str, minimum: int
    ) -> int | None:
        if section.get(key) is None:
            return None
        result: int | None = self.integer(section, key_path, key, None, minimum)
        return result

    def kiwi(self, document: object, path: str, reactor: IReactorCore) -> KiwiConfig | None:
        if document is None:
            self.problem("(top level)", "the file is empty; expected a mapping with sources and server")
            return None
        top = self.mapping(
            document,
            "(top level)",
            allowed=("sources", "kafka", "server", "hooks", "subscriber"),
            required=("sources", "server"),
        )
        if top is None:
            return None
        server = self.server(top.get("server"), reactor) if "server" in top else None
        sources = self.sources(top.get("sources"), "sources") if "sources" in top else ()
        kafka = self.kafka(top["kafka"]) if top.get("kafka") is not None else None
        raw_sources = top["sources"] if isinstance(top.get("sources"), list) else []
        wants_kafka = any(isinstance(s, Mapping) and s.get("type") == "kafka" for s in raw_sources)
        if wants_kafka and top.get("kafka") is None:
            self.problem("kafka", "required because Kafka sources are configured (kafka.bootstrap_servers)")
        subscriber = (
            self.subscriber(top["subscriber"]) if top.get("subscriber") is not None else SubscriberConfig()
        )
        if top.get("hooks") is not None:
            self.hooks(top["hooks"])
        if server is None:
            return None
        return KiwiConfig(path=path, server=server, sources=sources, kafka=kafka, subscriber=subscriber)

    def server(self, value: object, reactor: IReactorCore) -> ServerConfig | None:
        section = self.mapping(
            value,
            "server",
            allowed=(
                "address",
                "listen",
                "tls",
                "healthcheck",
                "ping_interval_s",
                "ping_timeout_s",
                "ui",
                "ui_path",
            ),
        )
        if section is None:
            return None
        healthcheck = self.boolean(section, "server", "healthcheck", True)
        address = self.string(section, "server", "address")
        listen = self.string(section, "server", "listen")
        if address is not None and listen is not None:
            self.problem("server", "give either address or listen, not both")
            return None
        if address is None and listen is None:
            if "address" not in section and "listen" not in section:
                self.problem(
                    "server.address",
                    "required key is missing (or give server.listen, a strports string such as tcp:8000)",
                )
            return None
        if address is not None:
            listen = address_to_strports(address)
            if listen is None:
                self.problem("server.address", f"expected host:port such as 127.0.0.1:8000, got {address!r}")
                return None
            key_path = "server.address"
        else:
            key_path = "server.listen"
        if section.get("tls") is not None:
            listen = self.tls(section["tls"], listen, key_path)
            if listen is None:
                return None
        try:
            serverFromString(reactor, listen)
        except Exception as e:
            self.problem(key_path, f"not a usable endpoint ({listen!r}): {e}")
            return None
        defaults = ServerConfig(listen=listen)
        return ServerConfig(
            listen=listen,
            healthcheck=healthcheck,
            ping_interval_s=self.number(section, "server", "ping_interval_s", defaults.ping_interval_s, 0),
            ping_timeout_s=self.number(section, "server", "ping_timeout_s", defaults.ping_timeout_s, 0.1),
            ui=self.boolean(section, "server", "ui", True),
            ui_path=self.ui_path(section),
        )

    def ui_path(self, section: Mapping[str, Any]) -> str:
        path: object = self.string(section, "server", "ui_path", "/")
        if not isinstance(path, str) or not path.startswith("/") or "//" in path or "?" in path or "#" in path:
            self.problem("server.ui_path", f"expected an absolute path such as / or /dashboard, got {path!r}")
            return "/"
        reserved = ("/health", "/kiwi.js", "/ui")
        if any(path.rstrip("/") == r or path.startswith(r + "/") for r in reserved):
            self.problem("server.ui_path", f"{path!r} is used by Kiwi itself (/health, /kiwi.js, /ui/)")
            return "/"
        return path

    def tls(self, value: object, listen: str, key_path: str) -> str | None:
        section = self.mapping(value, "server.tls", allowed=("cert", "key"), required=("cert", "key"))
        if section is None:
            return None
        cert = self.string(section, "server.tls", "cert")
        key = self.string(section, "server.tls", "key")
        if cert is None or key is None:
            return None
        if not listen.startswith("tcp:"):
            self.problem("server.tls", f"can only be combined with a tcp endpoint in {key_path}")
            return None
        from twisted.internet.endpoints import quoteStringArgument

        return (
            "ssl:"
            + listen[len("tcp:") :]
            + ":privateKey="
            + quoteStringArgument(key)
            + ":certKey="
            + quoteStringArgument(cert)
        )

    def sources(self, value: object, key_path: str) -> tuple[SourceConfig, ...]:
        if not isinstance(value, list):
            self.problem(key_path, f"expected a list of sources, got {_describe(value)}")
            return ()
        result: list[SourceConfig] = []
        seen: dict[str, str] = {}
        for index, item in enumerate(value):
            item_path = f"{key_path}[{index}]"
            source = self.source(item, item_path)
            source_id = _raw_source_id(item)
            if isinstance(source_id, str) and source_id:
                if source_id in seen:
                    self.problem(
                        item_path + ".id",
                        f"duplicate source id {source_id!r} (already used by {seen[source_id]})",
                    )
                    continue
                seen[source_id] = item_path
            if source is not None:
                result.append(source)
        return tuple(result)

    def source(self, value: object, key_path: str) -> SourceConfig | None:
        if not isinstance(value, Mapping):
            self.problem(key_path, f"expected a mapping with a type, got {_describe(value)}")
            return None
        kind = value.get("type")
        if kind == "kafka":
            section = self.mapping(
                value,
                key_path,
                allowed=("type", "id", "topic", "format", "key_format", "headers"),
                required=("topic",),
            )
            assert section is not None
            topic = self.string(section, key_path, "topic")
            source_id = self.string(section, key_path, "id", topic)
            payload_format = self.choice(section, key_path, "format", PAYLOAD_FORMATS, "base64")
            key_format = self.choice(section, key_path, "key_format", PAYLOAD_FORMATS, "base64")
            headers = self.boolean(section, key_path, "headers", False)
            if topic is None or source_id is None:
                return None
            return KafkaSourceConfig(
                id=source_id, topic=topic, format=payload_format, key_format=key_format, headers=headers
            )
        if kind == "counter":
            section = self.mapping(
                value,
                key_path,
                allowed=("type", "id", "interval_ms", "min", "max", "lazy"),
                required=("id", "interval_ms", "min"),
            )
            assert section is not None
            source_id = self.string(section, key_path, "id")
            interval_ms = self.integer(section, key_path, "interval_ms", None, 1)
            minimum = self.integer(section, key_path, "min", None, 0)
            maximum = self.optional_integer(section, key_path, "max", 0)
            lazy = self.boolean(section, key_path, "lazy", False)
            if minimum is not None and maximum is not None and maximum < minimum:
                self.problem(key_path + ".max", f"expected an integer >= min ({minimum}), got {maximum}")
                return None
            if source_id is None or interval_ms is None or minimum is None:
                return None
            return CounterSourceConfig(
                id=source_id, interval_ms=interval_ms, min=minimum, max=maximum, lazy=lazy
            )
        if "type" not in value:
            self.problem(key_path + ".type", "required key is missing (expected kafka or counter)")
        else:
            self.problem(key_path + ".type", f"expected kafka or counter, got {_describe(kind)}")
        return None

    def kafka(self, value: object) -> KafkaConfig | None:
        section = self.mapping(
            value,
            "kafka",
            allowed=(
                "bootstrap_servers",
                "partition_discovery_enabled",
                "partition_discovery_interval_ms",
                "config",
            ),
            required=("bootstrap_servers",),
        )
        if section is None:
            return None
        servers = section.get("bootstrap_servers")
        bootstrap: tuple[str, ...] = ()
        if isinstance(servers, str) and servers.strip():
            bootstrap = tuple(s.strip() for s in servers.split(",") if s.strip())
        elif (
            isinstance(servers, list)
            and servers
            and all(isinstance(s, str) and s.strip() for s in servers)
        ):
            bootstrap = tuple(s.strip() for s in servers)
        elif "bootstrap_servers" in section:
            self.problem(
                "kafka.bootstrap_servers",
                f"expected a list of host:port strings, got {_describe(servers)}",
            )
        enabled = self.boolean(section, "kafka", "partition_discovery_enabled", True)
        interval = self.integer(section, "kafka", "partition_discovery_interval_ms", 300_000, 1)
        extra: list[tuple[str, str]] = []
        problems_before = len(self.problems)
        if section.get("config") is not None:
            config = section["config"]
            if not isinstance(config, Mapping):
                self.problem("kafka.config", f"expected a mapping of librdkafka properties, got {_describe(config)}")
            else:
                for key, item in config.items():
                    if not isinstance(key, str) or not isinstance(item, (str, int, float, bool)):
                        self.problem(
                            f"kafka.config.{key}", f"expected a string, number or boolean, got {_describe(item)}"
                        )
                        continue
                    text = ("true" if item else "false") if isinstance(item, bool) else str(item)
                    extra.append((key, text))
        if not bootstrap:
            return None
        kafka = KafkaConfig(
            bootstrap_servers=bootstrap,
            partition_discovery_enabled=enabled,
            partition_discovery_interval_ms=interval,
            config=tuple(extra),
        )
        if extra and len(self.problems) == problems_before:
            from kiwi.sources._confluent import check_settings
            from kiwi.sources.kafka import consumer_settings

            complaint = check_settings(consumer_settings(KafkaSourceConfig(id="check", topic="check"), kafka))
            if complaint is not None:
                self.problem("kafka.config", f"librdkafka refuses these properties: {complaint}")
                return None
        return kafka

    def subscriber(self, value: object) -> SubscriberConfig:
        section = self.mapping(
            value,
            "subscriber",
            allowed=(
                "buffer_capacity",
                "lag_notice_threshold",
                "max_pending_bytes",
                "slow_client_timeout_s",
                "max_replay_events",
                "max_concurrent_replays",
            ),
        )
        if section is None:
            return SubscriberConfig()
        defaults = SubscriberConfig()
        return SubscriberConfig(
            buffer_capacity=self.optional_integer(section, "subscriber", "buffer_capacity", 1),
            lag_notice_threshold=self.optional_integer(section, "subscriber", "lag_notice_threshold", 1),
            max_pending_bytes=self.integer(
                section, "subscriber", "max_pending_bytes", defaults.max_pending_bytes, 1024
            ),
            slow_client_timeout_s=self.number(
                section, "subscriber", "slow_client_timeout_s", defaults.slow_client_timeout_s, 0.1
            ),
            max_replay_events=self.integer(
                section, "subscriber", "max_replay_events", defaults.max_replay_events, 0
            ),
            max_concurrent_replays=self.integer(
                section, "subscriber", "max_concurrent_replays", defaults.max_concurrent_replays, 1
            ),
        )

    def hooks(self, value: object) -> None:
        section = self.mapping(value, "hooks", allowed=("authenticate", "intercept"))
        if section is None:
            return
        for key in ("authenticate", "intercept"):
            if section.get(key) is not None:
                # TODO(#4): load WebAssembly plugins.
                self.problem(
                    f"hooks.{key}",
                    "WebAssembly plugins are not supported by this version of Kiwi yet; remove the key",
                )


def _raw_source_id(item: object) -> object:
    if not isinstance(item, Mapping):
        return None
    return item.get("id", item.get("topic") if item.get("type") == "kafka" else None)


def _join(key_path: str, key: str) -> str:
    if key_path == "(top level)":
        return key
    return f"{key_path}.{key}"
