"""
JSON Web Token authentication (PyJWT).

Keys are bound to their algorithm family: an HS* token is only ever checked
with the HMAC secret, an RS*/PS* token only with RSA keys, ES* only with EC
keys on the algorithm's curve, EdDSA only with Ed25519/Ed448 keys. So an
HS256 token "signed" with the issuer's RSA public key as secret is refused,
and so is C{alg: none} (it is refused when the configuration loads).

Signatures, issuer and audience are checked by PyJWT; the time claims
(C{exp}, required; C{nbf}; C{iat}) are checked here against Kiwi's clock,
with C{leeway_s}, so that the expiry of a connection's token and its
check use the same time.

Keys come from a PEM file (C{public_key}), an environment variable
(C{secret_env}), a JWKS file or an C{https://} JWKS URL. The URL is fetched
when Kiwi starts, every C{jwks_refresh_s}, and again (at most once every
L{KID_REFRESH_COOLDOWN_S}) when a token names a key id it does not know. The
fetch verifies the server's certificate and host name (service-identity);
C{jwks_ca} replaces the system's authorities.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from kiwi.auth import AuthError, IAuthenticator, Identity
from kiwi.config import JWTConfig
from kiwi.logs import logger

KID_REFRESH_COOLDOWN_S = 10.0
"""
After a JWKS refresh caused by an unknown key id, the next one waits this
long (tokens with made-up key ids cannot make Kiwi hammer the issuer).
"""

JWKS_RETRY_S = 10.0
"""
While the JWKS URL has never been fetched successfully, retry this often.
"""

JWKS_TIMEOUT_S = 10.0
JWKS_MAX_BYTES = 1024 * 1024

_HMAC_MINIMUM = {"HS256": 32, "HS384": 48, "HS512": 64}
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
ALGORITHMS = (
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
MINIMUM_RSA_BITS = 2048


def family(algorithm: str) -> str:
    """
    The key family an algorithm needs: C{hmac}, C{rsa}, C{ec} or C{okp}.
    """
    if algorithm.startswith("HS"):
        return "hmac"
    if algorithm.startswith(("RS", "PS")):
        return "rsa"
    if algorithm.startswith("ES"):
        return "ec"
    return "okp"


def _key_family(key: object) -> str | None:
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "okp"
    return None


def _describe_key(key: object) -> str:
    return {"rsa": "an RSA", "ec": "an EC", "okp": "an Ed25519/Ed448"}.get(_key_family(key) or "", "an unsupported")


@attrs.frozen
class VerificationKey:
    """
    One key a token may be checked with.

    @ivar kid: The key id (JWKS keys), or C{None}.
    @ivar algorithm: The only algorithm the key may be used with (a JWK's
        C{alg}), or C{None}: any of its family.
    """

    key: Any
    kid: str | None = None
    algorithm: str | None = None

    def fits(self, algorithm: str) -> bool:
        """
        Whether this key may check a token signed with C{algorithm}.
        """
        if self.algorithm is not None and self.algorithm != algorithm:
            return False
        wanted = family(algorithm)
        if wanted == "hmac":
            return isinstance(self.key, bytes)
        if _key_family(self.key) != wanted:
            return False
        if wanted == "ec":
            return bool(self.key.curve.name == _EC_CURVES.get(algorithm))
        return True


class KeyMaterialError(Exception):
    """
    Key material cannot be used; the message says why.
    """


def load_public_key(path: str) -> Any:
    """
    The public key in a PEM file (a public key or a certificate).

    @raise KeyMaterialError: if the file cannot be read or holds something else.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KeyMaterialError(f"cannot read {path}: {e.strerror}") from None
    if b"PRIVATE KEY-----" in data:
        raise KeyMaterialError(f"{path} holds a private key; give the issuer's public key (never the private one)")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise KeyMaterialError(f"{path} holds no usable PEM public key or certificate: {e}") from None
    if _key_family(key) is None:
        raise KeyMaterialError(f"{path} holds a key of an unsupported type ({type(key).__name__})")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MINIMUM_RSA_BITS:
        raise KeyMaterialError(f"{path} holds a {key.key_size}-bit RSA key; at least {MINIMUM_RSA_BITS} bits are needed")
    return key


def parse_jwks(data: bytes, where: str) -> tuple[list[VerificationKey], list[str]]:
    """
    The usable keys of a JWKS document, and a note for each key skipped.

    Symmetric (C{oct}) keys, keys whose C{use} is not C{sig} and keys
    PyJWT cannot load are skipped.

    @raise KeyMaterialError: if the document is not a JWKS at all.
    """
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise KeyMaterialError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyMaterialError(f"{where} is not a JWKS document (expected an object with a keys list)")
    keys: list[VerificationKey] = []
    skipped: list[str] = []
    for index, entry in enumerate(document["keys"]):
        name = f"key {index}"
        if not isinstance(entry, dict):
            skipped.append(f"{name}: not an object")
            continue
        kid = entry.get("kid")
        if kid is not None:
            if not isinstance(kid, str):
                skipped.append(f"{name}: kid is not a string")
                continue
            name = f"key {kid!r}"
        if entry.get("kty") == "oct":
            skipped.append(f"{name}: symmetric keys are never taken from a JWKS")
            continue
        if entry.get("use") not in (None, "sig"):
            skipped.append(f"{name}: use is {entry.get('use')!r}, not sig")
            continue
        algorithm = entry.get("alg")
        if algorithm is not None and algorithm not in ALGORITHMS:
            skipped.append(f"{name}: unsupported alg {algorithm!r}")
            continue
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as e:
            skipped.append(f"{name}: cannot be loaded ({e.__class__.__name__})")
            continue
        if _key_family(key) is None:
            skipped.append(f"{name}: not a public key")
            continue
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MINIMUM_RSA_BITS:
            skipped.append(f"{name}: {key.key_size}-bit RSA key is too short")
            continue
        keys.append(VerificationKey(key=key, kid=kid, algorithm=algorithm))
    return keys, skipped


def check_config(config: JWTConfig, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """
    Every problem of an C{auth.jwt} section, as (key, message) pairs (key
    relative to C{auth.jwt}; empty for the section itself).
    """
    problems: list[tuple[str, str]] = []
    hmac = [a for a in config.algorithms if a in _HMAC_MINIMUM]
    asymmetric = [a for a in config.algorithms if a in ALGORITHMS and a not in _HMAC_MINIMUM]
    for algorithm in config.algorithms:
        if algorithm.lower() == "none":
            problems.append(("algorithms", 'algorithm "none" is refused: it accepts unsigned tokens'))
        elif algorithm not in ALGORITHMS:
            problems.append(
                ("algorithms", f"unknown algorithm {algorithm!r} (expected some of: {', '.join(ALGORITHMS)})")
            )
    if hmac and config.secret_env is None:
        problems.append(("secret_env", f"required for {', '.join(hmac)} (the variable holding the secret)"))
    if config.secret_env is not None:
        if not hmac:
            problems.append(("secret_env", "given, but algorithms has no HS256, HS384 or HS512"))
        secret = environ.get(config.secret_env, "")
        if not secret:
            problems.append(("secret_env", f"the environment variable {config.secret_env} is not set or empty"))
        else:
            for algorithm in hmac:
                needed = _HMAC_MINIMUM[algorithm]
                if len(secret.encode("utf-8")) < needed:
                    problems.append(
                        (
                            "secret_env",
                            f"the secret in {config.secret_env} is {len(secret.encode('utf-8'))} bytes; "
                            f"{algorithm} needs at least {needed}",
                        )
                    )
    sources = [k for k in ("public_key", "jwks_file", "jwks_url") if getattr(config, k) is not None]
    if len(sources) > 1:
        problems.append(("", f"give only one of public_key, jwks_file and jwks_url (got {', '.join(sources)})"))
    elif asymmetric and not sources:
        problems.append(("", f"{', '.join(asymmetric)} need public_key, jwks_file or jwks_url"))
    elif sources and not asymmetric:
        problems.append((sources[0], "given, but algorithms has no RS*, PS*, ES* or EdDSA algorithm"))
    if config.public_key is not None:
        try:
            key = load_public_key(config.public_key)
        except KeyMaterialError as e:
            problems.append(("public_key", str(e)))
        else:
            for algorithm in asymmetric:
                if not VerificationKey(key).fits(algorithm):
                    problems.append(
                        ("public_key", f"{algorithm} cannot use {_describe_key(key)} key ({config.public_key})")
                    )
    if config.jwks_file is not None:
        try:
            with open(config.jwks_file, "rb") as f:
                data = f.read()
        except OSError as e:
            problems.append(("jwks_file", f"cannot read {config.jwks_file}: {e.strerror}"))
        else:
            try:
                keys, _ = parse_jwks(data, config.jwks_file)
            except KeyMaterialError as e:
                problems.append(("jwks_file", str(e)))
            else:
                if not any(k.fits(a) for k in keys for a in asymmetric):
                    problems.append(
                        ("jwks_file", f"{config.jwks_file} has no key usable with {', '.join(asymmetric)}")
                    )
    if config.jwks_url is not None:
        parts = urlsplit(config.jwks_url)
        if parts.scheme != "https" or not parts.hostname:
            problems.append(
                ("jwks_url", f"expected an https:// URL (Kiwi verifies the server's certificate), got {config.jwks_url!r}")
            )
    if config.jwks_ca is not None:
        if config.jwks_url is None:
            problems.append(("jwks_ca", "only used with jwks_url"))
        try:
            load_authorities(config.jwks_ca)
        except KeyMaterialError as e:
            problems.append(("jwks_ca", str(e)))
    return problems


def load_authorities(path: str) -> list[x509.Certificate]:
    """
    The certificates in a PEM CA bundle.

    @raise KeyMaterialError: if there are none.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KeyMaterialError(f"cannot read {path}: {e.strerror}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise KeyMaterialError(f"{path} holds no PEM certificate") from None


def https_fetcher(reactor: Any, url: str, ca_path: str | None) -> Callable[[], Deferred[bytes]]:
    """
    A function that GETs C{url} over HTTPS, verifying the server's
    certificate against C{ca_path}'s authorities (or the system's) and its
    host name with service-identity, and returns the body (at most
    L{JWKS_MAX_BYTES}).
    """
    from twisted.internet.ssl import Certificate, platformTrust, trustRootFromCertificates
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
    from twisted.web.http_headers import Headers

    if ca_path is None:
        trust: Any = platformTrust()
    else:
        trust = trustRootFromCertificates(
            [Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in load_authorities(ca_path)]
        )
    agent = Agent(
        reactor,
        contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust),
        connectTimeout=JWKS_TIMEOUT_S,
        pool=HTTPConnectionPool(reactor, persistent=False),
    )
    headers = Headers({b"accept": [b"application/jwk-set+json, application/json"], b"user-agent": [b"Kiwi"]})

    async def fetch() -> bytes:
        request = agent.request(b"GET", url.encode("ascii"), headers)
        request.addTimeout(JWKS_TIMEOUT_S, reactor)
        response = await request
        if response.code != 200:
            raise KeyMaterialError(f"HTTP status {response.code}")
        body = _read_limited(response, JWKS_MAX_BYTES)
        body.addTimeout(JWKS_TIMEOUT_S, reactor)
        return await body

    return lambda: Deferred.fromCoroutine(fetch())


def _read_limited(response: Any, limit: int) -> Deferred[bytes]:
    from twisted.internet.protocol import Protocol
    from twisted.web.client import ResponseDone
    from twisted.web.http import PotentialDataLoss

    done: Deferred[bytes] = Deferred(lambda d: collector.transport.stopProducing())  # type: ignore[union-attr]

    class Collector(Protocol):
        def __init__(self) -> None:
            self.chunks: list[bytes] = []
            self.size = 0

        def dataReceived(self, data: bytes) -> None:
            self.size += len(data)
            if self.size > limit:
                if not done.called:
                    done.errback(KeyMaterialError(f"the document is larger than {limit} bytes"))
                self.transport.stopProducing()  # type: ignore[union-attr]
                return
            self.chunks.append(data)

        def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
            if done.called:
                return
            if reason.check(ResponseDone, PotentialDataLoss):
                done.callback(b"".join(self.chunks))
            else:
                done.errback(reason)

    collector = Collector()
    response.deliverBody(collector)
    return done


def describe_failure(failure: Failure) -> str:
    """
    A one-line account of why a JWKS fetch failed, for the log.
    """
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(describe_failure(r) for r in reasons)
    value = failure.value
    name = type(value).__name__
    message = str(value) or name
    return message if isinstance(value, KeyMaterialError) else f"{name}: {message}"


_REFUSALS: Sequence[tuple[type[Exception], str]] = (
    (jwt.InvalidSignatureError, "signature invalid"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.DecodeError, "token malformed"),
    (jwt.InvalidKeyError, "signature invalid"),
)


@implementer(IAuthenticator)
class JWTAuthenticator(Service):
    """
    Checks JSON Web Tokens against the keys of an C{auth.jwt} section.

    As a service it keeps a JWKS URL's keys fresh; without a URL starting
    and stopping do nothing.

    @param anonymous: The C{auth.anonymous_sources} patterns: what
        connections without a token may read (with C{required: false}), and
        what every token may read besides its own patterns.
    @param fetch: Fetches the JWKS document (tests); by default an HTTPS
        GET of C{config.jwks_url}.
    """

    enabled = True
    name = "auth"
    log = logger()

    def __init__(
        self,
        config: JWTConfig,
        anonymous: tuple[str, ...],
        reactor: IReactorTime,
        environ: Mapping[str, str],
        fetch: Callable[[], Deferred[bytes]] | None = None,
    ) -> None:
        self._config = config
        self._anonymous = anonymous
        self._clock = reactor
        self._keys: list[VerificationKey] | None = None
        if config.secret_env is not None:
            self._secret: VerificationKey | None = VerificationKey(environ[config.secret_env].encode("utf-8"))
        else:
            self._secret = None
        if config.public_key is not None:
            self._keys = [VerificationKey(load_public_key(config.public_key))]
        elif config.jwks_file is not None:
            with open(config.jwks_file, "rb") as f:
                self._keys, skipped = parse_jwks(f.read(), config.jwks_file)
            for note in skipped:
                self.log.warn("JWKS {where}: skipped {note}", where=config.jwks_file, note=note)
        elif config.jwks_url is not None:
            self._keys = None
        else:
            self._keys = []
        if fetch is None and config.jwks_url is not None:
            fetch = https_fetcher(reactor, config.jwks_url, config.jwks_ca)
        self._fetch = fetch
        self._refreshing: Deferred[None] | None = None
        self._waiters: list[Deferred[None]] = []
        self._next_refresh: IDelayedCall | None = None
        self._last_kid_refresh: float | None = None

    # Service

    def startService(self) -> None:
        super().startService()
        if self._fetch is not None:
            self._periodic_refresh()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._next_refresh is not None and self._next_refresh.active():
            self._next_refresh.cancel()
        self._next_refresh = None
        if self._refreshing is not None:
            self._refreshing.cancel()
        return succeed(None)

    def _periodic_refresh(self) -> None:
        self._next_refresh = None

        def schedule(_: object) -> None:
            if not self.running:
                return
            delay = self._config.jwks_refresh_s if self._keys is not None else min(
                JWKS_RETRY_S, self._config.jwks_refresh_s
            )
            self._next_refresh = self._clock.callLater(delay, self._periodic_refresh)

        self.refresh().addCallback(schedule)

    def refresh(self) -> Deferred[None]:
        """
        Fetch the JWKS URL again (joining a fetch in progress). Never fails:
        a failed fetch is logged and the keys in hand are kept.
        """
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if self._refreshing is None and self._fetch is not None:
            self._refreshing = self._fetch().addCallbacks(self._fetched, self._fetch_failed)
            self._refreshing.addBoth(self._refreshed)
        return waiter

    def _fetched(self, body: bytes) -> None:
        where = self._config.jwks_url or "JWKS"
        try:
            keys, skipped = parse_jwks(body, where)
        except KeyMaterialError as e:
            self.log.error("cannot use the JWKS from {url}: {error}", url=where, error=str(e))
            return
        for note in skipped:
            self.log.warn("JWKS {url}: skipped {note}", url=where, note=note)
        if not keys:
            self.log.error("the JWKS from {url} has no usable key; keeping the keys in hand", url=where)
            return
        if self._keys is None:
            self.log.info("JWKS loaded from {url}: {count} keys", url=where, count=len(keys))
        self._keys = keys

    def _fetch_failed(self, failure: Failure) -> None:
        from twisted.internet.defer import CancelledError

        if failure.check(CancelledError) and not self.running:
            return
        self.log.error(
            "cannot fetch the JWKS from {url}: {error}",
            url=self._config.jwks_url,
            error=describe_failure(failure),
        )

    def _refreshed(self, _: object) -> None:
        self._refreshing = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # IAuthenticator

    def authenticate(self, token: str | None) -> Deferred[Identity]:
        return Deferred.fromCoroutine(self._authenticate(token))

    async def _authenticate(self, token: str | None) -> Identity:
        if token is None:
            if self._config.required:
                raise AuthError("token missing", error="invalid_request")
            return Identity(claims=None, patterns=self._anonymous)
        if len(token) > 16 * 1024:
            raise AuthError("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("token malformed") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str):
            raise AuthError("token malformed")
        if algorithm not in self._config.algorithms:
            raise AuthError("algorithm not allowed")
        candidates = await self._candidates(algorithm, header.get("kid"))
        claims = self._verify(token, algorithm, candidates)
        return self._identity(claims)

    async def _candidates(self, algorithm: str, kid: object) -> list[VerificationKey]:
        if family(algorithm) == "hmac":
            assert self._secret is not None, "validated by check_config"
            return [self._secret]
        if kid is not None and not isinstance(kid, str):
            raise AuthError("token malformed")
        if self._keys is None:
            await self._kid_refresh()
            if self._keys is None:
                raise AuthError("keys unavailable", status=503)
        keys = self._matching(algorithm, kid)
        if not keys and kid is not None and self._config.jwks_url is not None:
            await self._kid_refresh()
            keys = self._matching(algorithm, kid)
        if not keys:
            raise AuthError("unknown key id" if kid is not None and self._keys else "no key for this algorithm")
        return keys

    def _matching(self, algorithm: str, kid: str | None) -> list[VerificationKey]:
        keys = self._keys or []
        if kid is not None and any(k.kid is not None for k in keys):
            keys = [k for k in keys if k.kid == kid]
        return [k for k in keys if k.fits(algorithm)]

    async def _kid_refresh(self) -> None:
        if self._fetch is None:
            return
        now = self._clock.seconds()
        if self._refreshing is None and self._last_kid_refresh is not None:
            if now - self._last_kid_refresh < KID_REFRESH_COOLDOWN_S:
                return
        if self._refreshing is None:
            self._last_kid_refresh = now
        await self.refresh()

    def _verify(self, token: str, algorithm: str, candidates: list[VerificationKey]) -> dict[str, Any]:
        options: dict[str, Any] = {
            "verify_signature": True,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": bool(self._config.audience),
            "verify_iss": self._config.issuer is not None,
            "require": [],
        }
        for candidate in candidates:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    candidate.key,
                    algorithms=[algorithm],
                    audience=list(self._config.audience) or None,
                    issuer=self._config.issuer,
                    options=options,  # type: ignore[arg-type]
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.MissingRequiredClaimError as e:
                raise AuthError(f"token has no {e.claim} claim") from None
            except (jwt.PyJWTError, ValueError, TypeError) as e:
                raise AuthError(self._reason(e)) from None
            return claims
        raise AuthError("signature invalid")

    @staticmethod
    def _reason(error: Exception) -> str:
        for kind, reason in _REFUSALS:
            if isinstance(error, kind):
                return reason
        return "token invalid"

    def _identity(self, claims: dict[str, Any]) -> Identity:
        now = self._clock.seconds()
        leeway = self._config.leeway_s
        times: dict[str, float] = {}
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise AuthError(f"{name} claim must be a number")
            times[name] = float(value)
        if "exp" not in times:
            raise AuthError("token has no exp claim")
        if times["exp"] + leeway <= now:
            raise AuthError("token expired")
        if times.get("nbf", now) - leeway > now or times.get("iat", now) - leeway > now:
            raise AuthError("token not yet valid")
        raw = claims.get(self._config.sources_claim)
        if raw is None:
            patterns: tuple[str, ...] = ()
        elif isinstance(raw, str):
            patterns = (raw,)
        elif isinstance(raw, list) and all(isinstance(p, str) for p in raw):
            patterns = tuple(raw)
        else:
            raise AuthError(f"{self._config.sources_claim} claim must be a list of source-id patterns")
        return Identity(claims=claims, patterns=patterns + self._anonymous, expires_at=times["exp"] + leeway)
