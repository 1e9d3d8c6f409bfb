"""
Test certificates and tokens, made fresh in each test run: a certificate
authority, server and client certificates signed by it, and JSON Web Tokens
signed with generated keys. Nothing here is ever written to the
repository; files go to a test's temporary directory.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
from functools import lru_cache
from typing import Any

import attrs
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = datetime.timezone.utc
HMAC_SECRET = "kiwi-test-secret-0123456789abcdef-0123456789"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


@attrs.frozen
class Issued:
    """
    A certificate and its private key.
    """

    certificate: x509.Certificate
    key: Any

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        pem: bytes = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return pem


class CertificateAuthority:
    """
    A throw-away certificate authority.
    """

    def __init__(self, name: str = "Kiwi Test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        hostnames: tuple[str, ...] = ("localhost",),
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        client: bool = False,
    ) -> Issued:
        """
        A certificate for C{hostnames} (and 127.0.0.1), valid from
        yesterday for a week unless told otherwise.
        """
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
        if not client:
            names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(hostnames[0]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(days=1))
            .not_valid_after(not_after or now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(certificate, key)


def write(directory: str, name: str, *parts: bytes) -> str:
    """
    Write C{parts} to C{directory}/C{name} and return the path.
    """
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(b"".join(parts))
    return path


# Signing keys for tokens, made once per test run.


@lru_cache(maxsize=None)
def rsa_key(index: int = 0) -> rsa.RSAPrivateKey:
    """
    An RSA signing key (2048 bits); the same one for the same index.
    """
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@lru_cache(maxsize=None)
def ec_key(index: int = 0) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@lru_cache(maxsize=None)
def ed_key(index: int = 0) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(key: Any) -> bytes:
    """
    The PEM of a private key's public half.
    """
    pem: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def private_pem(key: Any) -> bytes:
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem


def jwk(key: Any, kid: str | None, alg: str | None = None) -> dict[str, Any]:
    """
    The public JWK of a private key.
    """
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
    result: dict[str, Any] = dict(data)
    if kid is not None:
        result["kid"] = kid
    if alg is not None:
        result["alg"] = alg
    return result


def jwks(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode("utf-8")


def claims(now: float, lifetime: float = 600, sources: Any = ("*",), **extra: Any) -> dict[str, Any]:
    """
    Typical claims: issued now, expiring after C{lifetime} seconds.
    """
    result: dict[str, Any] = {"sub": "tester", "iat": int(now), "exp": int(now + lifetime)}
    if sources is not None:
        result["kiwi_sources"] = list(sources) if not isinstance(sources, str) else sources
    result.update(extra)
    return result


def token(payload: dict[str, Any], key: Any, alg: str = "RS256", kid: str | None = None) -> str:
    """
    A signed token.
    """
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_token(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    """
    A token built by hand: C{sign(signing_input) -> bytes}, or no
    signature (for C{alg: none}).
    """
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    signature = sign(signing_input.encode("ascii")) if sign is not None else b""
    return signing_input + "." + _b64(signature)


def unsigned_token(payload: dict[str, Any]) -> str:
    """
    An C{alg: none} token.
    """
    return raw_token({"alg": "none", "typ": "JWT"}, payload)


def confused_token(payload: dict[str, Any], public_key_pem: bytes) -> str:
    """
    The algorithm-confusion attack: an HS256 token whose HMAC secret is the
    issuer's RSA public key (which attackers know).
    """
    return raw_token(
        {"alg": "HS256", "typ": "JWT"},
        payload,
        lambda data: hmac.new(public_key_pem, data, hashlib.sha256).digest(),
    )
