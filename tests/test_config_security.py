"""
Tests for the security keys of L{kiwi.config}: C{auth}, the hardening keys
of C{server} and C{subscriber.max_subscriptions}.
"""

from __future__ import annotations

import json
import textwrap

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from kiwi.config import AuthConfig, JWTConfig, KiwiConfig, ServerConfig, SubscriberConfig, parse_config
from kiwi.errors import ConfigErrors
from tests import pki

ENV = {"KIWI_JWT_SECRET": pki.HMAC_SECRET, "SHORT": "tooshort"}


class SecurityConfigTests(SynchronousTestCase):
    """
    Parsing and validating the security keys.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        import os

        os.makedirs(self.directory)
        self.rsa_pem = pki.write(self.directory, "rsa.pem", pki.public_pem(pki.rsa_key()))
        self.ec_pem = pki.write(self.directory, "ec.pem", pki.public_pem(pki.ec_key()))

    def parse(self, text: str) -> KiwiConfig:
        """
        Parse C{text} (dedented), with sources and server added when
        missing.
        """
        text = textwrap.dedent(text)
        if "server:" not in text:
            text += "server: {listen: 'tcp:0'}\n"
        return parse_config("sources: []\n" + text, "kiwi.yml", MemoryReactor(), ENV)

    def problems(self, text: str) -> list[str]:
        """
        The problems of C{text}.
        """
        return self.assertRaises(ConfigErrors, self.parse, text).problems

    def test_defaults(self) -> None:
        """
        Without the keys: no authentication and safe limits.
        """
        config = self.parse("")
        self.assertIsNone(config.auth)
        server = config.server
        self.assertEqual(
            (
                server.max_message_size,
                server.allowed_origins,
                server.max_connections,
                server.max_connections_per_ip,
                server.max_commands_per_s,
                server.max_command_burst,
                server.handshake_timeout_s,
            ),
            (65536, None, 10000, None, 100.0, 200, 10.0),
        )
        self.assertEqual(config.subscriber.max_subscriptions, 1000)

    def test_serverLimits(self) -> None:
        """
        Every hardening key is read.
        """
        config = self.parse(
            """\
            server:
              listen: 'tcp:0'
              max_message_size: 4096
              allowed_origins: [https://app.example.com, "https://*.example.org"]
              max_connections: 50
              max_connections_per_ip: 5
              max_commands_per_s: 2.5
              max_command_burst: 10
              handshake_timeout_s: 3
            subscriber: {max_subscriptions: 7}
            """
        )
        self.assertEqual(
            config.server,
            ServerConfig(
                listen="tcp:0",
                max_message_size=4096,
                allowed_origins=("https://app.example.com", "https://*.example.org"),
                max_connections=50,
                max_connections_per_ip=5,
                max_commands_per_s=2.5,
                max_command_burst=10,
                handshake_timeout_s=3.0,
            ),
        )
        self.assertEqual(config.subscriber, SubscriberConfig(max_subscriptions=7))

    def test_serverLimits_bad(self) -> None:
        """
        Bad values are each reported with their key path.
        """
        problems = self.problems(
            """\
            server:
              listen: 'tcp:0'
              max_message_size: 10
              allowed_origins: [app.example.com]
              max_connections: 0
              max_connections_per_ip: -1
              max_commands_per_s: 0
              max_command_burst: 0
              handshake_timeout_s: 0
            subscriber: {max_subscriptions: 0}
            """
        )
        self.assertEqual(
            [p.partition(":")[0] for p in problems],
            [
                "server.allowed_origins[0]",
                "server.max_message_size",
                "server.max_connections",
                "server.max_connections_per_ip",
                "server.max_commands_per_s",
                "server.max_command_burst",
                "server.handshake_timeout_s",
                "subscriber.max_subscriptions",
            ],
        )

    def test_jwt_full(self) -> None:
        """
        A complete C{auth.jwt} section.
        """
        config = self.parse(
            f"""\
            auth:
              jwt:
                algorithms: [RS256]
                public_key: {self.rsa_pem}
                issuer: https://issuer.example/
                audience: kiwi
                leeway_s: 30
                sources_claim: srcs
                required: false
              anonymous_sources: ["public.*"]
            """
        )
        self.assertEqual(
            config.auth,
            AuthConfig(
                jwt=JWTConfig(
                    algorithms=("RS256",),
                    public_key=self.rsa_pem,
                    issuer="https://issuer.example/",
                    audience=("kiwi",),
                    leeway_s=30.0,
                    sources_claim="srcs",
                    required=False,
                ),
                anonymous_sources=("public.*",),
            ),
        )

    def test_jwt_secretEnv(self) -> None:
        """
        HS256 with the secret's variable name; the secret is not stored.
        """
        config = self.parse("auth: {jwt: {algorithms: [HS256], secret_env: KIWI_JWT_SECRET}}\n")
        assert config.auth is not None and config.auth.jwt is not None
        self.assertEqual(config.auth.jwt.secret_env, "KIWI_JWT_SECRET")
        self.assertNotIn(pki.HMAC_SECRET, repr(config))

    def test_jwt_algNoneRefused(self) -> None:
        """
        C{none} is refused when the configuration loads.
        """
        self.assertEqual(
            self.problems(f"auth: {{jwt: {{algorithms: [RS256, none], public_key: {self.rsa_pem}}}}}\n"),
            ['auth.jwt.algorithms: algorithm "none" is refused: it accepts unsigned tokens'],
        )

    def test_jwt_problems(self) -> None:
        """
        Missing and mismatched keys are reported.
        """
        cases = {
            "auth: {jwt: {algorithms: [XS1]}}": ["auth.jwt.algorithms: unknown algorithm 'XS1'"],
            "auth: {jwt: {algorithms: [HS256]}}": ["auth.jwt.secret_env: required for HS256"],
            "auth: {jwt: {algorithms: [HS256], secret_env: NOPE}}": [
                "auth.jwt.secret_env: the environment variable NOPE is not set or empty"
            ],
            "auth: {jwt: {algorithms: [HS256], secret_env: SHORT}}": [
                "auth.jwt.secret_env: the secret in SHORT is 8 bytes; HS256 needs at least 32"
            ],
            "auth: {jwt: {algorithms: [RS256]}}": ["auth.jwt: RS256 need public_key, jwks_file or jwks_url"],
            f"auth: {{jwt: {{algorithms: [ES256], public_key: {self.rsa_pem}}}}}": [
                "auth.jwt.public_key: ES256 cannot use an RSA key"
            ],
            f"auth: {{jwt: {{algorithms: [ES384], public_key: {self.ec_pem}}}}}": [
                "auth.jwt.public_key: ES384 cannot use an EC key"
            ],
            "auth: {jwt: {algorithms: [RS256], public_key: /nope.pem}}": [
                "auth.jwt.public_key: cannot read /nope.pem"
            ],
            "auth: {jwt: {algorithms: [RS256], jwks_url: 'http://issuer.example/jwks'}}": [
                "auth.jwt.jwks_url: expected an https:// URL"
            ],
            f"auth: {{jwt: {{algorithms: [RS256], public_key: {self.rsa_pem}, jwks_url: 'https://i/j'}}}}": [
                "auth.jwt: give only one of public_key, jwks_file and jwks_url"
            ],
            f"auth: {{jwt: {{algorithms: [RS256], public_key: {self.rsa_pem}, jwks_ca: /nope}}}}": [
                "auth.jwt.jwks_ca: only used with jwks_url",
                "auth.jwt.jwks_ca: cannot read /nope",
            ],
            f"auth: {{jwt: {{algorithms: [RS256], public_key: {self.rsa_pem}}}, anonymous_sources: [a]}}": [
                "auth.anonymous_sources: only used with auth.jwt.required: false"
            ],
            "auth: {anonymous_sources: [a]}": ["auth.jwt: required key is missing"],
            "auth: {jwt: {algorithms: RS256, colour: red}}": [
                "auth.jwt.colour: unknown key",
                "auth.jwt.algorithms: expected a list such as [RS256]",
            ],
        }
        for text, expected in cases.items():
            problems = self.problems(text + "\n")
            self.assertEqual(len(problems), len(expected), (text, problems))
            for problem, start in zip(problems, expected):
                self.assertTrue(problem.startswith(start), (text, problem))

    def test_jwt_privateKeyRefused(self) -> None:
        """
        A private key given as C{public_key} is refused: Kiwi never needs
        the issuer's private key.
        """
        path = pki.write(self.directory, "private.pem", pki.private_pem(pki.rsa_key()))
        problems = self.problems(f"auth: {{jwt: {{algorithms: [RS256], public_key: {path}}}}}\n")
        self.assertEqual(len(problems), 1)
        self.assertIn("holds a private key", problems[0])

    def test_jwt_jwksFile(self) -> None:
        """
        A JWKS file is checked for a key usable with the algorithms.
        """
        good = pki.write(self.directory, "jwks.json", pki.jwks(pki.jwk(pki.rsa_key(), "k1")))
        self.parse(f"auth: {{jwt: {{algorithms: [RS256], jwks_file: {good}}}}}\n")
        problems = self.problems(f"auth: {{jwt: {{algorithms: [ES256], jwks_file: {good}}}}}\n")
        self.assertEqual(problems, [f"auth.jwt.jwks_file: {good} has no key usable with ES256"])
        bad = pki.write(self.directory, "bad.json", json.dumps({"nokeys": 1}).encode())
        problems = self.problems(f"auth: {{jwt: {{algorithms: [RS256], jwks_file: {bad}}}}}\n")
        self.assertEqual(problems, [f"auth.jwt.jwks_file: {bad} is not a JWKS document (expected an object with a keys list)"])

    def test_jwt_jwksUrl(self) -> None:
        """
        An https JWKS URL with its own CA file.
        """
        ca = pki.write(self.directory, "ca.pem", pki.CertificateAuthority().cert_pem)
        config = self.parse(
            f"auth: {{jwt: {{algorithms: [RS256, ES256], jwks_url: 'https://issuer.example/jwks', jwks_ca: {ca}}}}}\n"
        )
        assert config.auth is not None and config.auth.jwt is not None
        self.assertEqual(config.auth.jwt.jwks_url, "https://issuer.example/jwks")
        self.assertEqual(config.auth.jwt.jwks_ca, ca)
