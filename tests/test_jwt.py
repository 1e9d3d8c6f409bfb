"""
Tests for L{kiwi.auth.jwt}: tokens of every kind against a
L{JWTAuthenticator} on a L{Clock}, algorithm binding, and the JWKS cache
(fetched through a fake, never the network).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kiwi.auth import AuthError, IAuthenticator, Identity
from kiwi.auth.jwt import KID_REFRESH_COOLDOWN_S, JWTAuthenticator, VerificationKey, describe_failure, parse_jwks
from kiwi.config import JWTConfig
from tests import pki

NOW = 1_800_000_000.0
ENV = {"KIWI_JWT_SECRET": pki.HMAC_SECRET}


class AuthenticatorTestMixin:
    """
    Builds authenticators on a clock set to L{NOW}.
    """

    clock: Clock

    def authenticator(self, fetch: Any = None, anonymous: tuple[str, ...] = (), **config: Any) -> JWTAuthenticator:
        """
        A L{JWTAuthenticator} for C{config} (RS256 with L{pki.rsa_key} by
        default).
        """
        self.clock = Clock()
        self.clock.advance(NOW)
        if "public_key" not in config and "jwks_url" not in config and "jwks_file" not in config:
            if any(not a.startswith("HS") for a in config.get("algorithms", ("RS256",))):
                config["public_key"] = self.pem_file(pki.public_pem(pki.rsa_key()))
        config.setdefault("algorithms", ("RS256",))
        return JWTAuthenticator(JWTConfig(**config), anonymous, self.clock, ENV, fetch=fetch)

    def pem_file(self, data: bytes) -> str:
        """
        Write C{data} to a temporary file.
        """
        path = self.mktemp()  # type: ignore[attr-defined]
        with open(path, "wb") as f:
            f.write(data)
        return path

    def identity(self, authenticator: JWTAuthenticator, token: str | None) -> Identity:
        """
        The identity C{token} gets (synchronously).
        """
        result: Identity = self.successResultOf(authenticator.authenticate(token))  # type: ignore[attr-defined]
        return result

    def refusal(self, authenticator: JWTAuthenticator, token: str | None) -> AuthError:
        """
        The L{AuthError} C{token} gets (synchronously).
        """
        failure = self.failureResultOf(authenticator.authenticate(token), AuthError)  # type: ignore[attr-defined]
        error: AuthError = failure.value
        return error


class TokenTests(AuthenticatorTestMixin, SynchronousTestCase):
    """
    Tokens signed with a public key or a secret.
    """

    def test_authenticator_providesInterface(self) -> None:
        """
        L{JWTAuthenticator} is an L{IAuthenticator}.
        """
        self.assertTrue(verifyObject(IAuthenticator, self.authenticator()))

    def test_rs256_valid(self) -> None:
        """
        A valid RS256 token gives its claims, its patterns and its expiry.
        """
        token = pki.token(pki.claims(NOW, 600, sources=["prices", "public.*"]), pki.rsa_key())
        identity = self.identity(self.authenticator(), token)
        self.assertEqual(identity.patterns, ("prices", "public.*"))
        self.assertEqual(identity.expires_at, NOW + 600)
        assert identity.claims is not None
        self.assertEqual(identity.claims["sub"], "tester")
        self.assertTrue(identity.allows("public.news"))
        self.assertFalse(identity.allows("private"))

    def test_hs256_valid(self) -> None:
        """
        An HS256 token is checked with the secret from the environment.
        """
        token = pki.token(pki.claims(NOW), pki.HMAC_SECRET, alg="HS256")
        authenticator = self.authenticator(algorithms=("HS256",), secret_env="KIWI_JWT_SECRET")
        self.assertEqual(self.identity(authenticator, token).patterns, ("*",))

    def test_es256_valid(self) -> None:
        """
        ES256 with an EC public key.
        """
        key = self.pem_file(pki.public_pem(pki.ec_key()))
        authenticator = self.authenticator(algorithms=("ES256",), public_key=key)
        self.identity(authenticator, pki.token(pki.claims(NOW), pki.ec_key(), alg="ES256"))

    def test_eddsa_valid(self) -> None:
        """
        EdDSA with an Ed25519 public key.
        """
        key = self.pem_file(pki.public_pem(pki.ed_key()))
        authenticator = self.authenticator(algorithms=("EdDSA",), public_key=key)
        self.identity(authenticator, pki.token(pki.claims(NOW), pki.ed_key(), alg="EdDSA"))

    def test_token_missing(self) -> None:
        """
        No token, when one is required: C{token missing}, invalid_request.
        """
        error = self.refusal(self.authenticator(), None)
        self.assertEqual((error.reason, error.status, error.error), ("token missing", 401, "invalid_request"))

    def test_token_missingNotRequired(self) -> None:
        """
        No token with C{required: false}: the anonymous sources only.
        """
        identity = self.identity(self.authenticator(required=False, anonymous=("public.*",)), None)
        self.assertIsNone(identity.claims)
        self.assertIsNone(identity.context)
        self.assertIsNone(identity.expires_at)
        self.assertTrue(identity.allows("public.x"))
        self.assertFalse(identity.allows("private"))

    def test_anonymousSources_addedToTokens(self) -> None:
        """
        Tokens may read the anonymous sources besides their own.
        """
        token = pki.token(pki.claims(NOW, sources=["mine"]), pki.rsa_key())
        identity = self.identity(self.authenticator(required=False, anonymous=("public",)), token)
        self.assertEqual(identity.patterns, ("mine", "public"))

    def test_invalidToken_notDowngraded(self) -> None:
        """
        With C{required: false} a bad token is still refused, not treated
        as no token.
        """
        authenticator = self.authenticator(required=False)
        self.assertEqual(self.refusal(authenticator, "garbage").reason, "token malformed")

    def test_algNone_refused(self) -> None:
        """
        An unsigned (C{alg: none}) token is refused.
        """
        error = self.refusal(self.authenticator(), pki.unsigned_token(pki.claims(NOW)))
        self.assertEqual(error.reason, "algorithm not allowed")

    def test_algorithmConfusion_refused(self) -> None:
        """
        An HS256 token whose secret is the RSA public key is refused, even
        when HS256 is also configured (HS256 uses only the secret).
        """
        public = pki.public_pem(pki.rsa_key())
        token = pki.confused_token(pki.claims(NOW), public)
        self.assertEqual(self.refusal(self.authenticator(), token).reason, "algorithm not allowed")
        both = self.authenticator(algorithms=("RS256", "HS256"), secret_env="KIWI_JWT_SECRET")
        self.assertEqual(self.refusal(both, token).reason, "signature invalid")

    def test_otherAlgorithm_refused(self) -> None:
        """
        A token in an algorithm not configured is refused, even if signed
        with the right key.
        """
        token = pki.token(pki.claims(NOW), pki.rsa_key(), alg="RS512")
        self.assertEqual(self.refusal(self.authenticator(), token).reason, "algorithm not allowed")

    def test_signature_wrongKey(self) -> None:
        """
        A token signed by another key: C{signature invalid}.
        """
        token = pki.token(pki.claims(NOW), pki.rsa_key(1))
        self.assertEqual(self.refusal(self.authenticator(), token).reason, "signature invalid")

    def test_signature_tampered(self) -> None:
        """
        A token whose payload was changed after signing is refused.
        """
        token = pki.token(pki.claims(NOW, sources=["a"]), pki.rsa_key())
        header, payload, signature = token.split(".")
        other = pki.token(pki.claims(NOW, sources=["*"]), pki.rsa_key(1)).split(".")[1]
        self.assertEqual(
            self.refusal(self.authenticator(), ".".join([header, other, signature])).reason, "signature invalid"
        )

    def test_expired(self) -> None:
        """
        An expired token: C{token expired}.
        """
        token = pki.token(pki.claims(NOW - 700, 600), pki.rsa_key())
        self.assertEqual(self.refusal(self.authenticator(), token).reason, "token expired")

    def test_expired_leeway(self) -> None:
        """
        Within the leeway an expired token still passes, and expires at
        C{exp + leeway}.
        """
        token = pki.token(pki.claims(NOW - 620, 600), pki.rsa_key())
        identity = self.identity(self.authenticator(leeway_s=30), token)
        self.assertEqual(identity.expires_at, NOW - 20 + 30)

    def test_notBefore_future(self) -> None:
        """
        A token with C{nbf} in the future: C{token not yet valid}.
        """
        token = pki.token(pki.claims(NOW, nbf=int(NOW + 60)), pki.rsa_key())
        self.assertEqual(self.refusal(self.authenticator(), token).reason, "token not yet valid")

    def test_issuedAt_future(self) -> None:
        """
        A token issued in the future is not yet valid either.
        """
        token = pki.token(dict(pki.claims(NOW), iat=int(NOW + 120)), pki.rsa_key())
        self.assertEqual(self.refusal(self.authenticator(), token).reason, "token not yet valid")

    def test_exp_missing(self) -> None:
        """
        A token without C{exp} is refused: tokens must expire.
        """
        payload = pki.claims(NOW)
        del payload["exp"]
        self.assertEqual(
            self.refusal(self.authenticator(), pki.token(payload, pki.rsa_key())).reason, "token has no exp claim"
        )

    def test_exp_notNumber(self) -> None:
        """
        A C{exp} that is not a number is refused.
        """
        payload = dict(pki.claims(NOW), exp="tomorrow")
        error = self.refusal(self.authenticator(), pki.token(payload, pki.rsa_key()))
        self.assertEqual(error.reason, "exp claim must be a number")

    def test_issuer_wrong(self) -> None:
        """
        C{iss} other than the configured issuer: C{wrong issuer}.
        """
        authenticator = self.authenticator(issuer="https://issuer.example/")
        token = pki.token(pki.claims(NOW, iss="https://evil.example/"), pki.rsa_key())
        self.assertEqual(self.refusal(authenticator, token).reason, "wrong issuer")
        good = pki.token(pki.claims(NOW, iss="https://issuer.example/"), pki.rsa_key())
        self.identity(authenticator, good)

    def test_issuer_missing(self) -> None:
        """
        No C{iss} when an issuer is configured: refused.
        """
        authenticator = self.authenticator(issuer="https://issuer.example/")
        self.assertEqual(
            self.refusal(authenticator, pki.token(pki.claims(NOW), pki.rsa_key())).reason, "token has no iss claim"
        )

    def test_audience_wrong(self) -> None:
        """
        C{aud} not among the configured audiences: C{wrong audience}.
        """
        authenticator = self.authenticator(audience=("kiwi", "kiwi-eu"))
        self.assertEqual(
            self.refusal(authenticator, pki.token(pki.claims(NOW, aud="other"), pki.rsa_key())).reason,
            "wrong audience",
        )
        self.identity(authenticator, pki.token(pki.claims(NOW, aud=["x", "kiwi-eu"]), pki.rsa_key()))

    def test_audience_missing(self) -> None:
        """
        No C{aud} when an audience is configured: refused.
        """
        authenticator = self.authenticator(audience=("kiwi",))
        error = self.refusal(authenticator, pki.token(pki.claims(NOW), pki.rsa_key()))
        self.assertEqual(error.reason, "token has no aud claim")

    def test_garbage(self) -> None:
        """
        Text that is no token: C{token malformed}.
        """
        for garbage in ("garbage", "a.b.c", "....", "eyJ.eyJ.x", "\u00e9t\u00e9"):
            self.assertEqual(self.refusal(self.authenticator(), garbage).reason, "token malformed")

    def test_tooLarge(self) -> None:
        """
        A 100 KB token is refused unread.
        """
        self.assertEqual(self.refusal(self.authenticator(), "a" * 100_000).reason, "token too large")

    def test_sourcesClaim_forms(self) -> None:
        """
        The sources claim may be a list of patterns, one pattern, or
        absent (nothing); anything else is refused.
        """
        authenticator = self.authenticator(sources_claim="srcs")
        single = pki.token(pki.claims(NOW, sources=None, srcs="one"), pki.rsa_key())
        self.assertEqual(self.identity(authenticator, single).patterns, ("one",))
        none = pki.token(pki.claims(NOW, sources=None), pki.rsa_key())
        self.assertEqual(self.identity(authenticator, none).patterns, ())
        bad = pki.token(pki.claims(NOW, sources=None, srcs=[1, 2]), pki.rsa_key())
        self.assertEqual(self.refusal(authenticator, bad).reason, "srcs claim must be a list of source-id patterns")

    def test_context_json(self) -> None:
        """
        The identity's context is the claims as compact, sorted JSON.
        """
        token = pki.token(pki.claims(NOW, sources=["a"], name="Zoë"), pki.rsa_key())
        identity = self.identity(self.authenticator(), token)
        assert identity.context is not None
        self.assertEqual(json.loads(identity.context), identity.claims)
        self.assertIn('"name":"Zoë"'.encode(), identity.context)

    def test_challenge_header(self) -> None:
        """
        A refusal's C{WWW-Authenticate} value names the reason.
        """
        error = self.refusal(self.authenticator(), pki.token(pki.claims(NOW - 700, 600), pki.rsa_key()))
        self.assertEqual(
            error.challenge(), b'Bearer realm="kiwi", error="invalid_token", error_description="token expired"'
        )


class JWKSTests(AuthenticatorTestMixin, SynchronousTestCase):
    """
    Keys from a JWKS document: by key id, fetched, refreshed, bound to
    their algorithms.
    """

    def setUp(self) -> None:
        self.documents: list[bytes] = [pki.jwks(pki.jwk(pki.rsa_key(), "k1"))]
        self.fetches = 0
        self.pending: Deferred[bytes] | None = None

    def fetch(self) -> Deferred[bytes]:
        """
        Serve the current document, or a pending Deferred if one is set.
        """
        self.fetches += 1
        if self.pending is not None:
            return self.pending
        return succeed(self.documents[-1])

    def url_authenticator(self, **config: Any) -> JWTAuthenticator:
        """
        An authenticator for a JWKS URL served by L{fetch}, started.
        """
        authenticator = self.authenticator(fetch=self.fetch, jwks_url="https://issuer.example/jwks", **config)
        authenticator.startService()
        self.addCleanup(authenticator.stopService)
        return authenticator

    def test_jwksFile_byKid(self) -> None:
        """
        With a JWKS file, the token's C{kid} picks the key.
        """
        path = self.pem_file(pki.jwks(pki.jwk(pki.rsa_key(), "k1"), pki.jwk(pki.rsa_key(1), "k2")))
        authenticator = self.authenticator(jwks_file=path)
        self.identity(authenticator, pki.token(pki.claims(NOW), pki.rsa_key(1), kid="k2"))
        error = self.refusal(authenticator, pki.token(pki.claims(NOW), pki.rsa_key(1), kid="k1"))
        self.assertEqual(error.reason, "signature invalid")

    def test_jwksFile_noKid(self) -> None:
        """
        A token without C{kid} is tried with every key of its family.
        """
        path = self.pem_file(pki.jwks(pki.jwk(pki.rsa_key(), "k1"), pki.jwk(pki.rsa_key(1), "k2")))
        self.identity(self.authenticator(jwks_file=path), pki.token(pki.claims(NOW), pki.rsa_key(1)))

    def test_jwksFile_unknownKid(self) -> None:
        """
        A C{kid} the file does not have: C{unknown key id}.
        """
        path = self.pem_file(pki.jwks(pki.jwk(pki.rsa_key(), "k1")))
        error = self.refusal(self.authenticator(jwks_file=path), pki.token(pki.claims(NOW), pki.rsa_key(), kid="zz"))
        self.assertEqual(error.reason, "unknown key id")

    def test_jwk_algBinding(self) -> None:
        """
        A JWK with C{alg} checks only tokens of that algorithm; an RSA key
        never checks an ES256 token.
        """
        path = self.pem_file(pki.jwks(pki.jwk(pki.rsa_key(), "k1", alg="RS384")))
        authenticator = self.authenticator(jwks_file=path, algorithms=("RS256", "RS384", "ES256"))
        error = self.refusal(authenticator, pki.token(pki.claims(NOW), pki.rsa_key(), kid="k1"))
        self.assertEqual(error.reason, "unknown key id")
        self.identity(authenticator, pki.token(pki.claims(NOW), pki.rsa_key(), alg="RS384", kid="k1"))
        error = self.refusal(authenticator, pki.token(pki.claims(NOW), pki.ec_key(), alg="ES256", kid="k1"))
        self.assertEqual(error.reason, "unknown key id")

    def test_url_fetchedAtStart(self) -> None:
        """
        The JWKS URL is fetched when the service starts; tokens are checked
        against its keys.
        """
        authenticator = self.url_authenticator()
        self.assertEqual(self.fetches, 1)
        self.identity(authenticator, pki.token(pki.claims(NOW), pki.rsa_key(), kid="k1"))
        self.assertEqual(self.fetches, 1)

    def test_url_unknownKidRefreshes(self) -> None:
        """
        A token with an unknown C{kid} makes Kiwi fetch the document again
        and use the new key.
        """
        authenticator = self.url_authenticator()
        self.documents.append(pki.jwks(pki.jwk(pki.rsa_key(), "k1"), pki.jwk(pki.rsa_key(1), "k2")))
        self.identity(authenticator, pki.token(pki.claims(NOW), pki.rsa_key(1), kid="k2"))
        self.assertEqual(self.fetches, 2)

    def test_url_unknownKidCooldown(self) -> None:
        """
        Unknown key ids cause at most one refresh per cooldown.
        """
        authenticator = self.url_authenticator()
        for kid in ("x1", "x2", "x3"):
            error = self.refusal(authenticator, pki.token(pki.claims(NOW), pki.rsa_key(), kid=kid))
            self.assertEqual(error.reason, "unknown key id")
        self.assertEqual(self.fetches, 2)
        self.clock.advance(KID_REFRESH_COOLDOWN_S)
        self.refusal(authenticator, pki.token(pki.claims(NOW), pki.rsa_key(), kid="x4"))
        self.assertEqual(self.fetches, 3)

    def test_url_periodicRefresh(self) -> None:
        """
        The document is fetched again every C{jwks_refresh_s}; keys it no
        longer has stop working.
        """
        authenticator = self.url_authenticator(jwks_refresh_s=60)
        self.documents.append(pki.jwks(pki.jwk(pki.rsa_key(1), "k2")))
        self.clock.advance(60)
        self.assertEqual(self.fetches, 2)
        token = pki.token(pki.claims(NOW + 60), pki.rsa_key(), kid="k1")
        self.assertEqual(self.refusal(authenticator, token).reason, "unknown key id")

    def test_url_failureKeepsKeys(self) -> None:
        """
        A failed refresh is logged and the keys in hand are kept.
        """
        authenticator = self.url_authenticator(jwks_refresh_s=60)
        self.pending = fail(ConnectionRefusedError("no"))
        self.clock.advance(60)
        self.identity(authenticator, pki.token(pki.claims(NOW + 60), pki.rsa_key(), kid="k1"))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_url_unavailable(self) -> None:
        """
        When the document was never fetched, tokens get 503 C{keys
        unavailable}; the fetch is retried.
        """
        self.pending = fail(ConnectionRefusedError("no"))
        authenticator = self.url_authenticator()
        error = self.refusal(authenticator, pki.token(pki.claims(NOW), pki.rsa_key(), kid="k1"))
        self.assertEqual((error.reason, error.status), ("keys unavailable", 503))
        self.pending = None
        self.clock.advance(10)
        self.identity(authenticator, pki.token(pki.claims(NOW + 10), pki.rsa_key(), kid="k1"))

    def test_url_waitsForFirstFetch(self) -> None:
        """
        A token that arrives while the first fetch is under way waits for
        it.
        """
        self.pending = Deferred()
        authenticator = self.url_authenticator()
        d = authenticator.authenticate(pki.token(pki.claims(NOW), pki.rsa_key(), kid="k1"))
        self.assertNoResult(d)
        self.pending.callback(self.documents[-1])
        self.successResultOf(d)
        self.assertEqual(self.fetches, 1)

    def test_url_stopCancelsFetch(self) -> None:
        """
        Stopping the service cancels a fetch under way and the refresh
        timer.
        """
        self.pending = Deferred()
        authenticator = self.authenticator(fetch=self.fetch, jwks_url="https://issuer.example/jwks")
        authenticator.startService()
        self.successResultOf(authenticator.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_parse_skipsUnusable(self) -> None:
        """
        Symmetric keys, encryption keys and broken entries are skipped, each
        with a note.
        """
        document = json.dumps(
            {
                "keys": [
                    {"kty": "oct", "k": "c2VjcmV0", "kid": "s"},
                    dict(pki.jwk(pki.rsa_key(), "enc"), use="enc"),
                    {"kty": "RSA", "kid": "broken"},
                    "x",
                    pki.jwk(pki.ec_key(), "good"),
                ]
            }
        ).encode()
        keys, skipped = parse_jwks(document, "test")
        self.assertEqual([k.kid for k in keys], ["good"])
        self.assertEqual(len(skipped), 4)
        self.assertIn("symmetric", skipped[0])

    def test_verificationKey_curveBinding(self) -> None:
        """
        An EC key fits only the algorithm of its curve.
        """
        key = VerificationKey(pki.ec_key().public_key())
        self.assertTrue(key.fits("ES256"))
        self.assertFalse(key.fits("ES384"))
        self.assertFalse(key.fits("RS256"))
        self.assertFalse(key.fits("HS256"))

    def test_describeFailure_nested(self) -> None:
        """
        Failures that wrap other failures (as Twisted's HTTP client's do)
        are described by their causes.
        """

        class Wrapped(Exception):
            def __init__(self, reasons: list[Failure]) -> None:
                self.reasons = reasons

        inner = Failure(ValueError("certificate verify failed"))
        self.assertEqual(describe_failure(Failure(Wrapped([inner]))), "ValueError: certificate verify failed")
