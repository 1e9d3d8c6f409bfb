"""
TLS for Kiwi's listener, on pyOpenSSL through Twisted.

L{load_server_options} reads and checks the PEM files named by a
L{TLSSettings}: each file must exist and hold what it should, the key must
belong to the certificate, and no certificate may be expired or not yet
valid. Every problem is a L{TLSFileError} that names the setting and the
file, so that start-up stops with a message that says which.

The options it builds allow TLS 1.2 and 1.3 only, with forward-secret AEAD
ciphers (ECDHE with AES-GCM or ChaCha20-Poly1305 for TLS 1.2; TLS 1.3's own
suites are all of that kind). With C{client_ca} the client must present a
certificate signed by one of those authorities (mutual TLS).

L{ServerTLS} is what the listener hands to Twisted's TLS layer; its
L{ServerTLS.update} swaps certificate and key for new connections.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from zope.interface import implementer

from kiwi.errors import KiwiError

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1"
"""
The OpenSSL cipher string for TLS 1.2: ECDHE key exchange (forward
secrecy) and AEAD encryption only. TLS 1.3 suites are not governed by it
and are all acceptable.
"""

MINIMUM_VERSION = TLSVersion.TLSv1_2


@attrs.frozen
class TLSSettings:
    """
    Where a TLS listener's files are.

    @ivar cert: PEM file with the server certificate, optionally followed by
        its intermediate certificates (a "full chain" file).
    @ivar key: PEM file with the certificate's private key (unencrypted).
    @ivar chain: Optional PEM file with more intermediate certificates.
    @ivar client_ca: Optional PEM file with the certificate authorities
        whose client certificates are accepted; when given, every client
        must present one (mutual TLS).
    """

    cert: str
    key: str
    chain: str | None = None
    client_ca: str | None = None


class TLSFileError(KiwiError):
    """
    A TLS file is missing, unreadable or holds the wrong thing.

    @ivar setting: Which setting names the file: C{cert}, C{key}, C{chain}
        or C{client_ca}.
    @ivar message: What is wrong, naming the file.
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting
        self.message = message


def _read(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFileError(setting, f"cannot read {path}: {e.strerror}") from None


def _certificates(setting: str, path: str) -> list[x509.Certificate]:
    data = _read(setting, path)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSFileError(setting, f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSFileError(setting, f"{path} holds a PEM certificate that cannot be parsed: {e}") from None


def _private_key(path: str) -> PrivateKeyTypes:
    data = _read("key", path)
    if b"PRIVATE KEY-----" not in data:
        raise TLSFileError("key", f"{path} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSFileError("key", f"{path} holds an encrypted private key; Kiwi needs it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TLSFileError("key", f"{path} holds a private key that cannot be loaded: {e}") from None
    supported = (
        rsa.RSAPrivateKey,
        ec.EllipticCurvePrivateKey,
        ed25519.Ed25519PrivateKey,
        ed448.Ed448PrivateKey,
        dsa.DSAPrivateKey,
    )
    if not isinstance(key, supported):
        raise TLSFileError("key", f"{path} holds a key of an unsupported type ({type(key).__name__})")
    return key


def _public_der(key: Any) -> bytes:
    public = key.public_key() if hasattr(key, "public_key") else key
    der: bytes = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _check_dates(setting: str, path: str, certificate: x509.Certificate, now: datetime.datetime) -> None:
    subject = certificate.subject.rfc4514_string() or "(no subject)"
    if certificate.not_valid_after_utc < now:
        when = certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
        raise TLSFileError(setting, f"the certificate {subject} in {path} expired on {when}")
    if certificate.not_valid_before_utc > now:
        when = certificate.not_valid_before_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
        raise TLSFileError(setting, f"the certificate {subject} in {path} is not valid until {when}")


def load_server_options(
    settings: TLSSettings, now: Callable[[], datetime.datetime] | None = None
) -> CertificateOptions:
    """
    Read and check C{settings}' files and build the TLS options of a
    listener.

    @param now: The current time (for tests); the system clock by default.
    @raise TLSFileError: naming the first problem found.
    """
    current = (now or (lambda: datetime.datetime.now(datetime.timezone.utc)))()
    certificates = _certificates("cert", settings.cert)
    leaf, chain = certificates[0], certificates[1:]
    key = _private_key(settings.key)
    if _public_der(key) != _public_der(leaf.public_key()):
        raise TLSFileError(
            "key",
            f"the private key in {settings.key} does not match the certificate in {settings.cert}",
        )
    _check_dates("cert", settings.cert, leaf, current)
    for certificate in chain:
        _check_dates("cert", settings.cert, certificate, current)
    if settings.chain is not None:
        extra = _certificates("chain", settings.chain)
        for certificate in extra:
            _check_dates("chain", settings.chain, certificate, current)
        chain += extra
    authorities: list[x509.Certificate] = []
    if settings.client_ca is not None:
        authorities = _certificates("client_ca", settings.client_ca)
        for certificate in authorities:
            _check_dates("client_ca", settings.client_ca, certificate, current)
    return CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        certificate=crypto.X509.from_cryptography(leaf),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain],
        raiseMinimumTo=MINIMUM_VERSION,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        verify=bool(authorities),
        caCerts=[crypto.X509.from_cryptography(c) for c in authorities] or None,
        requireCertificate=bool(authorities),
    )


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    Creates the TLS side of each new connection from the current options.
    """

    def __init__(self, options: CertificateOptions) -> None:
        self._options = options
        # Build the context now: a broken combination fails at start-up,
        # not on the first connection.
        options.getContext()

    def update(self, options: CertificateOptions) -> None:
        """
        Use C{options} (a new certificate and key, say) for connections
        made from now on; open connections are not affected.
        """
        options.getContext()
        self._options = options

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """
        A server-side connection object for one new TLS connection.
        """
        return SSL.Connection(self._options.getContext(), None)
