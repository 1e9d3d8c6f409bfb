"""
Kiwi's configuration: YAML in, one immutable L{KiwiConfig} out.

The keys are those of the original Kiwi's C{kiwi.yml} plus our extensions.
Validation reports every problem at once, each with the key path that has
it (C{sources[2].topic: expected ...}), and happens before any port is bound.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import yaml
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorCore

from kiwi.errors import ConfigErrors
from kiwi.tls import TLSSettings
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
    @ivar shutdown_timeout_s: How long a graceful stop may take before
        what is left is dropped.
    @ivar tls: TLS files when Kiwi serves TLS itself (C{listen} is then
        the plain stream endpoint underneath).
    @ivar max_message_size: The largest message (and frame) a client may
        send, in bytes; a larger one closes the connection with 1009.
    @ivar allowed_origins: The C{Origin}s whose browsers may connect
        (patterns with C{*}); C{None}: only the origin matching the C{Host}
        header. Clients that send no C{Origin} are not browsers and are not
        affected.
    @ivar max_connections: Connections open at once on the port (WebSocket,
        HTTP and handshakes); more are refused with 503.
    @ivar max_connections_per_ip: The same, per client address (C{None}:
        no per-address limit); more are refused with 429.
    @ivar max_commands_per_s: Commands a connection may send per second on
        average; beyond that and the burst it is closed with 1008.
    @ivar max_command_burst: Commands a connection may send at once.
    @ivar handshake_timeout_s: Seconds a new connection has to complete its
        TLS and WebSocket (or HTTP) handshake.
    @ivar ui: Whether the live dashboard is served.
    @ivar ui_path: Where the dashboard is served (an absolute path).
    """

    listen: str
    healthcheck: bool = True
    ping_interval_s: float = 30.0
    ping_timeout_s: float = 10.0
    shutdown_timeout_s: float = 10.0
    workers: int = 1
    coalesce_writes: bool = True
    direct_write: bool = True
    permessage_deflate: bool = False
    tls: TLSSettings | None = None
    max_message_size: int = 64 * 1024
    allowed_origins: tuple[str, ...] | None = None
    max_connections: int = 10_000
    max_connections_per_ip: int | None = None
    max_commands_per_s: float = 100.0
    max_command_burst: int = 200
    handshake_timeout_s: float = 10.0
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
    @ivar max_subscriptions: How many sources one connection may subscribe
        to at once.
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
    max_subscriptions: int = 1000
    max_replay_events: int = 100_000
    max_concurrent_replays: int = 4


@attrs.frozen
class JWTConfig:
    """
    How JSON Web Tokens are checked (see C{docs/security.md}).

    @ivar algorithms: The accepted C{alg} values; never C{none}.
    @ivar public_key: PEM file with the issuer's public key (RS*, PS*,
        ES*, EdDSA).
    @ivar secret_env: Name of the environment variable holding the HS*
        secret (the secret itself is never part of the configuration).
    @ivar jwks_file: A JWKS document on disk.
    @ivar jwks_url: An C{https://} URL of a JWKS document.
    @ivar jwks_ca: PEM file with the authorities trusted for C{jwks_url}
        (C{None}: the system's).
    @ivar jwks_refresh_s: Seconds between refreshes of C{jwks_url}.
    @ivar sources_claim: The claim listing the source-id patterns the
        token may subscribe to.
    @ivar required: Whether a connection needs a token at all.
    """

    algorithms: tuple[str, ...]
    public_key: str | None = None
    secret_env: str | None = None
    jwks_file: str | None = None
    jwks_url: str | None = None
    jwks_ca: str | None = None
    jwks_refresh_s: float = 300.0
    issuer: str | None = None
    audience: tuple[str, ...] = ()
    leeway_s: float = 0.0
    sources_claim: str = "kiwi_sources"
    required: bool = True


@attrs.frozen
class AuthConfig:
    """
    Who may connect, and which sources they may read.

    @ivar anonymous_sources: Source-id patterns open to connections without
        a token (with C{jwt.required: false}), and to every token besides
        its own.
    """

    jwt: JWTConfig | None = None
    anonymous_sources: tuple[str, ...] = ()


@attrs.frozen
class ReloadConfig:
    """
    Run-time reload triggers besides SIGHUP.

    @ivar watch: Reload when the configuration file changes.
    @ivar watch_interval_ms: How often the file is checked; a change is
        applied once the file has stayed the same for one more interval.
    """

    watch: bool = False
    watch_interval_ms: int = 1000


@attrs.frozen
class LoggingConfig:
    """
    @ivar format: C{text} (twistd's lines) or C{json} (one JSON object per
        line on standard output).
    """

    format: str = "text"


@attrs.frozen
class HooksConfig:
    """
    WebAssembly plugins (see C{docs/plugins.md}).

    @ivar authenticate: Absolute path of the authenticate plugin, if any.
    @ivar intercept: Absolute path of the intercept plugin, if any.
    @ivar timeout_ms: Time budget of one intercept call.
    @ivar authenticate_timeout_ms: Time budget of one authenticate call
        (runs off the reactor and may make HTTP requests).
    @ivar max_memory_mb: Linear memory limit of each plugin instance.
    @ivar authenticator: The loaded authenticate plugin (an
        L{kiwi.plugins.IAuthenticator}); compiled while validating.
    @ivar interceptor: The loaded intercept plugin (an
        L{kiwi.plugins.IInterceptor}).
    """

    authenticate: str | None = None
    intercept: str | None = None
    timeout_ms: int = 10
    authenticate_timeout_ms: int = 1000
    max_memory_mb: int = 64
    authenticator: Any = attrs.field(default=None, eq=False, repr=False)
    interceptor: Any = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class KiwiConfig:
    """
    A complete, validated configuration.

    @ivar auth: C{None}: no authentication, every source open to everyone.
    """

    path: str
    server: ServerConfig
    sources: tuple[SourceConfig, ...]
    kafka: KafkaConfig | None = None
    subscriber: SubscriberConfig = SubscriberConfig()
    reload: ReloadConfig = ReloadConfig()
    logging: LoggingConfig = LoggingConfig()
    auth: AuthConfig | None = None
    hooks: HooksConfig = HooksConfig()


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


def parse_config(
    text: bytes | str, path: str, reactor: IReactorCore, environ: Mapping[str, str] | None = None
) -> KiwiConfig:
    """
    Parse and validate configuration text; C{path} names it in messages.

    @param environ: The environment secrets are read from (C{os.environ}
        by default).
    @raise ConfigErrors: with every problem found.
    """
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigErrors(path, [f"not valid YAML{where}: {problem}"])
    reader = _Reader(os.environ if environ is None else environ)
    config = reader.kiwi(document, path, reactor)
    if reader.problems or config is None:
        raise ConfigErrors(path, reader.problems)
    return config


class _StrictLoader(yaml.SafeLoader):
    """
    PyYAML's safe loader, refusing a key given twice in one mapping (which
    YAML forbids, and PyYAML would quietly resolve by keeping the last).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found the key {key!r} twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


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

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.problems: list[str] = []
        self.environ = environ
        self.base_dir = "."

    def relative(self, path: str | None) -> str | None:
        """
        A file named in the configuration: relative paths are taken from
        the configuration file's directory, as for plugins.
        """
        if path is None:
            return None
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(path)))

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
                lambda v: isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and v >= minimum,
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
        self.base_dir = os.path.dirname(os.path.abspath(path))
        if document is None:
            self.problem("(top level)", "the file is empty; expected a mapping with sources and server")
            return None
        top = self.mapping(
            document,
            "(top level)",
            allowed=("sources", "kafka", "server", "hooks", "subscriber", "reload", "logging", "auth"),
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
        hooks = self.hooks(top["hooks"], path) if top.get("hooks") is not None else HooksConfig()
        auth = self.auth(top["auth"]) if top.get("auth") is not None else None
        reload = self.reload(top["reload"]) if top.get("reload") is not None else ReloadConfig()
        logging = self.logging(top["logging"]) if top.get("logging") is not None else LoggingConfig()
        if server is None:
            return None
        return KiwiConfig(
            path=path,
            server=server,
            sources=sources,
            kafka=kafka,
            subscriber=subscriber,
            reload=reload,
            logging=logging,
            auth=auth,
            hooks=hooks,
        )

    def reload(self, value: object) -> ReloadConfig:
        section = self.mapping(value, "reload", allowed=("watch", "watch_interval_ms"))
        if section is None:
            return ReloadConfig()
        return ReloadConfig(
            watch=self.boolean(section, "reload", "watch", False),
            watch_interval_ms=self.integer(section, "reload", "watch_interval_ms", 1000, 50),
        )

    def logging(self, value: object) -> LoggingConfig:
        section = self.mapping(value, "logging", allowed=("format",))
        if section is None:
            return LoggingConfig()
        return LoggingConfig(
            format=self.typed(
                section, "logging", "format", lambda v: v in ("text", "json"), "text or json", "text"
            )
        )

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
                "shutdown_timeout_s",
                "workers",
                "coalesce_writes",
                "direct_write",
                "permessage_deflate",
                "max_message_size",
                "allowed_origins",
                "max_connections",
                "max_connections_per_ip",
                "max_commands_per_s",
                "max_command_burst",
                "handshake_timeout_s",
                "ui",
                "ui_path",
            ),
        )
        if section is None:
            return None
        healthcheck = self.boolean(section, "server", "healthcheck", True)
        defaults = ServerConfig(listen="")
        ping_interval_s = self.number(section, "server", "ping_interval_s", defaults.ping_interval_s, 0)
        ping_timeout_s = self.number(section, "server", "ping_timeout_s", defaults.ping_timeout_s, 0.1)
        shutdown_timeout_s = self.number(
            section, "server", "shutdown_timeout_s", defaults.shutdown_timeout_s, 0.1
        )
        limits = self.server_limits(section)
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
        tls: TLSSettings | None = None
        if section.get("tls") is not None:
            tls = self.tls(section["tls"], listen, key_path)
            if tls is None:
                return None
        from kiwi.endpoints import split_tls

        try:
            listen, tls = split_tls(listen, tls)
        except ValueError as e:
            self.problem(key_path, f"not a usable endpoint ({listen!r}): {e}")
            return None
        try:
            serverFromString(reactor, listen)
        except Exception as e:
            self.problem(key_path, f"not a usable endpoint ({listen!r}): {e}")
            return None
        if tls is not None and not self.tls_files(tls, "server.tls" if section.get("tls") is not None else key_path):
            return None
        if limits is None:
            return None
        return attrs.evolve(
            limits,
            listen=listen,
            tls=tls,
            healthcheck=healthcheck,
            ping_interval_s=ping_interval_s,
            ping_timeout_s=ping_timeout_s,
            shutdown_timeout_s=shutdown_timeout_s,
            workers=self.workers(section, listen, reactor),
            coalesce_writes=self.boolean(section, "server", "coalesce_writes", True),
            direct_write=self.boolean(section, "server", "direct_write", True),
            permessage_deflate=self.boolean(section, "server", "permessage_deflate", False),
            ui=self.boolean(section, "server", "ui", True),
            ui_path=self.ui_path(section),
        )

    def workers(self, section: Mapping[str, Any], listen: str, reactor: IReactorCore) -> int:
        from kiwi.workers import check_endpoint, worker_count

        value = self.typed(
            section,
            "server",
            "workers",
            lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 64),
            "an integer from 1 to 64, or auto",
            1,
        )
        count = worker_count(value)
        if count > 1:
            problem = check_endpoint(reactor, listen)
            if problem is not None:
                self.problem("server.workers", problem)
        return count

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

    def server_limits(self, section: Mapping[str, Any]) -> ServerConfig | None:
        """
        The hardening keys of C{server}, on a L{ServerConfig} whose other
        fields are placeholders.
        """
        before = len(self.problems)
        d = ServerConfig(listen="")
        origins: tuple[str, ...] | None = None
        raw_origins = section.get("allowed_origins")
        if raw_origins is not None:
            if not isinstance(raw_origins, list) or not all(isinstance(o, str) and o for o in raw_origins):
                self.problem(
                    "server.allowed_origins",
                    f"expected a list of origins such as https://app.example.com, got {_describe(raw_origins)}",
                )
            else:
                from kiwi.auth.origin import check_pattern

                for index, origin in enumerate(raw_origins):
                    complaint = check_pattern(origin)
                    if complaint is not None:
                        self.problem(f"server.allowed_origins[{index}]", complaint)
                origins = tuple(raw_origins)
        result = ServerConfig(
            listen="",
            max_message_size=self.integer(section, "server", "max_message_size", d.max_message_size, 256),
            allowed_origins=origins,
            max_connections=self.integer(section, "server", "max_connections", d.max_connections, 1),
            max_connections_per_ip=self.optional_integer(section, "server", "max_connections_per_ip", 1),
            max_commands_per_s=self.number(section, "server", "max_commands_per_s", d.max_commands_per_s, 0.01),
            max_command_burst=self.integer(section, "server", "max_command_burst", d.max_command_burst, 1),
            handshake_timeout_s=self.number(
                section, "server", "handshake_timeout_s", d.handshake_timeout_s, 0.1
            ),
        )
        return result if len(self.problems) == before else None

    def tls(self, value: object, listen: str, key_path: str) -> TLSSettings | None:
        section = self.mapping(
            value, "server.tls", allowed=("cert", "key", "chain", "client_ca"), required=("cert", "key")
        )
        if section is None:
            return None
        cert = self.string(section, "server.tls", "cert")
        key = self.string(section, "server.tls", "key")
        chain = self.string(section, "server.tls", "chain")
        client_ca = self.string(section, "server.tls", "client_ca")
        if cert is None or key is None:
            return None
        if listen.lower().startswith("ssl:"):
            self.problem("server.tls", f"give either server.tls or an ssl: description in {key_path}, not both")
            return None
        if not listen.startswith("tcp:"):
            self.problem("server.tls", f"can only be combined with a tcp endpoint in {key_path}")
            return None
        return TLSSettings(
            cert=self.relative(cert) or cert,
            key=self.relative(key) or key,
            chain=self.relative(chain),
            client_ca=self.relative(client_ca),
        )

    def tls_files(self, tls: TLSSettings, key_path: str) -> bool:
        """
        Check that the TLS files exist, match and are in date.
        """
        from kiwi.tls import TLSFileError, load_server_options

        try:
            load_server_options(tls)
        except TLSFileError as e:
            where = f"{key_path}.{e.setting}" if key_path == "server.tls" else key_path
            self.problem(where, e.message)
            return False
        return True

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
            for name, value in (("min", minimum), ("max", maximum)):
                if value is not None and value > 2**53:
                    self.problem(
                        f"{key_path}.{name}",
                        f"expected at most 2^53 ({2**53}, the largest integer JavaScript clients read exactly), got {value}",
                    )
                    return None
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
                "max_subscriptions",
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
            max_subscriptions=self.integer(
                section, "subscriber", "max_subscriptions", defaults.max_subscriptions, 1
            ),
            max_replay_events=self.integer(
                section, "subscriber", "max_replay_events", defaults.max_replay_events, 0
            ),
            max_concurrent_replays=self.integer(
                section, "subscriber", "max_concurrent_replays", defaults.max_concurrent_replays, 1
            ),
        )

    def patterns(self, section: Mapping[str, Any], key_path: str, key: str) -> tuple[str, ...]:
        value = section.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
            self.problem(
                _join(key_path, key),
                f"expected a list of source-id patterns such as [\"prices\", \"public.*\"], got {_describe(value)}",
            )
            return ()
        return tuple(value)

    def auth(self, value: object) -> AuthConfig | None:
        section = self.mapping(value, "auth", allowed=("jwt", "anonymous_sources"))
        if section is None:
            return None
        anonymous = self.patterns(section, "auth", "anonymous_sources")
        jwt = self.jwt(section["jwt"]) if section.get("jwt") is not None else None
        if jwt is None and "jwt" not in section:
            self.problem(
                "auth.jwt",
                "required key is missing (without it every source is open to everyone; remove auth instead)",
            )
            return None
        if anonymous and jwt is not None and jwt.required:
            self.problem(
                "auth.anonymous_sources",
                "only used with auth.jwt.required: false (connections without a token are refused otherwise)",
            )
        if jwt is None:
            return None
        return AuthConfig(jwt=jwt, anonymous_sources=anonymous)

    def jwt(self, value: object) -> JWTConfig | None:
        key_path = "auth.jwt"
        section = self.mapping(
            value,
            key_path,
            allowed=(
                "algorithms",
                "public_key",
                "secret_env",
                "jwks_file",
                "jwks_url",
                "jwks_ca",
                "jwks_refresh_s",
                "issuer",
                "audience",
                "leeway_s",
                "sources_claim",
                "required",
            ),
            required=("algorithms",),
        )
        if section is None:
            return None
        before = len(self.problems)
        algorithms = section.get("algorithms")
        if "algorithms" in section and (
            not isinstance(algorithms, list) or not algorithms or not all(isinstance(a, str) for a in algorithms)
        ):
            self.problem(f"{key_path}.algorithms", f"expected a list such as [RS256], got {_describe(algorithms)}")
            algorithms = None
        audience = section.get("audience")
        audiences: tuple[str, ...] = ()
        if isinstance(audience, str) and audience:
            audiences = (audience,)
        elif isinstance(audience, list) and audience and all(isinstance(a, str) and a for a in audience):
            audiences = tuple(audience)
        elif audience is not None:
            self.problem(f"{key_path}.audience", f"expected a string or a list of strings, got {_describe(audience)}")
        defaults = JWTConfig(algorithms=())
        config = JWTConfig(
            algorithms=tuple(algorithms or ()),
            public_key=self.string(section, key_path, "public_key"),
            secret_env=self.string(section, key_path, "secret_env"),
            jwks_file=self.string(section, key_path, "jwks_file"),
            jwks_url=self.string(section, key_path, "jwks_url"),
            jwks_ca=self.string(section, key_path, "jwks_ca"),
            jwks_refresh_s=self.number(section, key_path, "jwks_refresh_s", defaults.jwks_refresh_s, 1),
            issuer=self.string(section, key_path, "issuer"),
            audience=audiences,
            leeway_s=self.number(section, key_path, "leeway_s", defaults.leeway_s, 0),
            sources_claim=self.string(section, key_path, "sources_claim", defaults.sources_claim),
            required=self.boolean(section, key_path, "required", True),
        )
        if len(self.problems) != before or algorithms is None:
            return None
        from kiwi.auth.jwt import check_config

        for key, message in check_config(config, self.environ):
            self.problem(_join(key_path, key) if key else key_path, message)
        if len(self.problems) != before:
            return None
        return config

    def hooks(self, value: object, config_path: str) -> HooksConfig:
        section = self.mapping(
            value,
            "hooks",
            allowed=("authenticate", "intercept", "timeout_ms", "authenticate_timeout_ms", "max_memory_mb"),
        )
        if section is None:
            return HooksConfig()
        defaults = HooksConfig()
        problems_before = len(self.problems)
        timeout_ms = self.integer(section, "hooks", "timeout_ms", defaults.timeout_ms, 1)
        authenticate_timeout_ms = self.integer(
            section, "hooks", "authenticate_timeout_ms", defaults.authenticate_timeout_ms, 1
        )
        max_memory_mb = self.integer(section, "hooks", "max_memory_mb", defaults.max_memory_mb, 1)
        if isinstance(max_memory_mb, int) and max_memory_mb > 4096:
            self.problem("hooks.max_memory_mb", f"expected at most 4096 (a 32-bit plugin's whole address space), got {max_memory_mb}")
            max_memory_mb = defaults.max_memory_mb
        limits_ok = len(self.problems) == problems_before
        paths: dict[str, str | None] = {}
        for key in ("authenticate", "intercept"):
            raw = self.string(section, "hooks", key) if section.get(key) is not None else None
            if raw is None:
                paths[key] = None
                continue
            resolved = os.path.normpath(
                os.path.join(os.path.dirname(os.path.abspath(config_path)), os.path.expanduser(raw))
            )
            if not os.path.isfile(resolved):
                where = "" if os.path.isabs(raw) else " (relative paths are resolved against the configuration file's directory)"
                self.problem(f"hooks.{key}", f"no such file: {resolved}{where}")
                paths[key] = None
            else:
                paths[key] = resolved
        plugins: dict[str, Any] = {}
        if limits_ok and any(paths.values()):
            plugins = self._load_plugins(paths, timeout_ms, authenticate_timeout_ms, max_memory_mb)
        return HooksConfig(
            authenticate=paths["authenticate"],
            intercept=paths["intercept"],
            timeout_ms=timeout_ms,
            authenticate_timeout_ms=authenticate_timeout_ms,
            max_memory_mb=max_memory_mb,
            authenticator=plugins.get("authenticate"),
            interceptor=plugins.get("intercept"),
        )

    def _load_plugins(
        self, paths: Mapping[str, str | None], timeout_ms: int, authenticate_timeout_ms: int, max_memory_mb: int
    ) -> dict[str, Any]:
        try:
            from kiwi.plugins import PluginLoadError
            from kiwi.plugins.wasm import Limits, load_authenticate, load_intercept
        except ImportError as e:
            for key, path in paths.items():
                if path is not None:
                    self.problem(f"hooks.{key}", f"cannot load WebAssembly plugins: {e}")
            return {}
        memory = max_memory_mb * 1024 * 1024
        loaders: dict[str, Callable[[str], Any]] = {
            "authenticate": lambda path: load_authenticate(path, Limits(authenticate_timeout_ms, memory)),
            "intercept": lambda path: load_intercept(path, Limits(timeout_ms, memory)),
        }
        plugins: dict[str, Any] = {}
        for key, path in paths.items():
            if path is None:
                continue
            try:
                plugins[key] = loaders[key](path)
            except PluginLoadError as e:
                self.problem(f"hooks.{key}", str(e))
        return plugins


def _raw_source_id(item: object) -> object:
    if not isinstance(item, Mapping):
        return None
    return item.get("id", item.get("topic") if item.get("type") == "kafka" else None)


def _join(key_path: str, key: str) -> str:
    if key_path == "(top level)":
        return key
    return f"{key_path}.{key}"


@attrs.frozen
class SourceChanges:
    """
    How the sources of two configurations differ, by source id.
    """

    added: tuple[SourceConfig, ...]
    removed: tuple[str, ...]
    changed: tuple[SourceConfig, ...]
    unchanged: tuple[str, ...]


def diff_sources(old: KiwiConfig, new: KiwiConfig) -> SourceChanges:
    """
    Compare sources by id. A Kafka source also counts as changed when the
    C{kafka} section changed, since its consumer is built from both.
    """
    before = {source.id: source for source in old.sources}
    after = {source.id: source for source in new.sources}
    kafka_changed = old.kafka != new.kafka
    added = tuple(source for source_id, source in after.items() if source_id not in before)
    removed = tuple(source_id for source_id in before if source_id not in after)
    changed = []
    unchanged = []
    for source_id, source in after.items():
        if source_id not in before:
            continue
        if before[source_id] != source or (isinstance(source, KafkaSourceConfig) and kafka_changed):
            changed.append(source)
        else:
            unchanged.append(source_id)
    return SourceChanges(added, removed, tuple(changed), tuple(unchanged))


def restart_required(old: KiwiConfig, new: KiwiConfig) -> list[str]:
    """
    The changed keys that only a restart can apply (they are kept as they
    were by a reload).
    """
    keys = []
    if old.server.listen != new.server.listen:
        keys.append("server.address/server.listen (the listening endpoint)")
    if (old.server.tls is None) != (new.server.tls is None):
        keys.append("server.tls (turning TLS on or off)")
    if old.reload != new.reload:
        keys.append("reload")
    if old.logging != new.logging:
        keys.append("logging")
    if old.server.workers != new.server.workers:
        keys.append("server.workers")
    return keys


def keep_restart_only(old: KiwiConfig, new: KiwiConfig) -> KiwiConfig:
    """
    C{new}, with the values only a restart can change taken from C{old}.
    """
    return attrs.evolve(
        new,
        server=attrs.evolve(
            new.server,
            listen=old.server.listen,
            workers=old.server.workers,
            tls=new.server.tls if (old.server.tls is None) == (new.server.tls is None) else old.server.tls,
        ),
        reload=old.reload,
        logging=old.logging,
    )
