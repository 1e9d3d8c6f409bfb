"""
Tests for L{kiwi.tls} and the TLS side of L{kiwi.endpoints} and
L{kiwi.config}: file checks with messages that say which file and what is
wrong, C{ssl:} descriptions, and real TLS handshakes in memory (TLS 1.2+,
AEAD ciphers only, client certificates).
"""

from __future__ import annotations

import os

import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate, TLSVersion, optionsForClientTLS
from twisted.internet.testing import MemoryReactor
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from kiwi.config import parse_config
from kiwi.endpoints import ListenerService, split_tls
from kiwi.errors import ConfigErrors
from kiwi.tls import ServerTLS, TLSFileError, TLSSettings, load_server_options
from tests import pki

ADDRESS = IPv4Address("TCP", "127.0.0.1", 8443)


class Files:
    """
    A CA and a server certificate written to a directory.
    """

    def __init__(self, directory: str) -> None:
        import os

        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.ca = pki.CertificateAuthority()
        self.server = self.ca.issue()
        self.cert = pki.write(directory, "cert.pem", self.server.cert_pem)
        self.key = pki.write(directory, "key.pem", self.server.key_pem)
        self.ca_file = pki.write(directory, "ca.pem", self.ca.cert_pem)

    def write(self, name: str, *parts: bytes) -> str:
        """
        Another file in the directory.
        """
        return pki.write(self.directory, name, *parts)


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost = reason


class TLSHandshakeMixin:
    """
    Connects a TLS client to a TLS server in memory.
    """

    server_app: Any
    client_app: Any

    def handshake(self, server_tls: Any, client_options: Any) -> tuple[TLSMemoryBIOProtocol, TLSMemoryBIOProtocol]:
        """
        Run a TLS handshake and a few bytes each way; return both TLS
        protocols.
        """
        clock = Clock()
        server_factory = TLSMemoryBIOFactory(server_tls, False, Factory.forProtocol(_Recorder), clock=clock)
        client_factory = TLSMemoryBIOFactory(client_options, True, Factory.forProtocol(_Recorder), clock=clock)
        server = server_factory.buildProtocol(ADDRESS)
        client = client_factory.buildProtocol(ADDRESS)
        self.server_app = server.wrappedProtocol
        self.client_app = client.wrappedProtocol
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True),
            client,
            iosim.FakeTransport(client, isServer=False),
        )
        client.write(b"hello")
        server.write(b"hi")
        pump.flush(advanceClock=False)
        for _ in range(5):
            clock.advance(0)
            pump.flush(advanceClock=False)
        return server, client

    def assertConnected(self, server: TLSMemoryBIOProtocol, client: TLSMemoryBIOProtocol) -> str:
        """
        Data went both ways; return the protocol version.
        """
        self.assertEqual(self.server_app.received, b"hello", self.client_app.lost)
        self.assertEqual(self.client_app.received, b"hi")
        version: str = client._tlsConnection.get_protocol_version_name()
        return version

    def assertRefused(self, server: TLSMemoryBIOProtocol, client: TLSMemoryBIOProtocol) -> None:
        """
        The handshake failed: nothing reached the server's application.
        """
        self.assertEqual(self.server_app.received, b"")
        lost = self.client_app.lost
        self.assertIsNotNone(lost)
        self.assertTrue(lost.check(SSL.Error), lost)


class LoadServerOptionsTests(TLSHandshakeMixin, SynchronousTestCase):
    """
    L{load_server_options} checks the files and builds strict options.
    """

    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.settings = TLSSettings(cert=self.files.cert, key=self.files.key)

    def client(self, **extra: Any) -> Any:
        """
        Client options trusting the test CA, for C{localhost}.
        """
        trust = Certificate.loadPEM(self.files.ca.cert_pem)
        return optionsForClientTLS("localhost", trustRoot=trust, extraCertificateOptions=extra or None)

    def assertProblem(self, settings: TLSSettings, setting: str, *fragments: str) -> None:
        """
        Loading C{settings} fails naming C{setting} and containing every
        fragment.
        """
        error = self.assertRaises(TLSFileError, load_server_options, settings)
        self.assertEqual(error.setting, setting)
        for fragment in fragments:
            self.assertIn(fragment, error.message)

    def test_load_handshake(self) -> None:
        """
        Good files give options a client that trusts the CA can connect to,
        over TLS 1.2 or newer.
        """
        server, client = self.handshake(ServerTLS(load_server_options(self.settings)), self.client())
        self.assertIn(self.assertConnected(server, client), ("TLSv1.2", "TLSv1.3"))

    def test_load_tls12Aead(self) -> None:
        """
        A TLS 1.2 client that offers an AEAD ECDHE cipher connects.
        """
        client = self.client(
            lowerMaximumSecurityTo=TLSVersion.TLSv1_2,
            acceptableCiphers=_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256"),
        )
        server, client_protocol = self.handshake(ServerTLS(load_server_options(self.settings)), client)
        self.assertEqual(self.assertConnected(server, client_protocol), "TLSv1.2")

    def test_load_refusesCbcCiphers(self) -> None:
        """
        A TLS 1.2 client that offers only a CBC cipher (which Twisted's
        defaults would accept) is refused.
        """
        client = self.client(
            lowerMaximumSecurityTo=TLSVersion.TLSv1_2,
            acceptableCiphers=_ciphers("ECDHE-ECDSA-AES128-SHA256"),
        )
        self.assertRefused(*self.handshake(ServerTLS(load_server_options(self.settings)), client))

    def test_load_refusesTls11(self) -> None:
        """
        A client limited to TLS 1.1 is refused.
        """
        client = self.client(
            insecurelyLowerMinimumTo=TLSVersion.TLSv1_0, lowerMaximumSecurityTo=TLSVersion.TLSv1_1
        )
        self.assertRefused(*self.handshake(ServerTLS(load_server_options(self.settings)), client))

    def test_load_fullChainFile(self) -> None:
        """
        A certificate file may carry the chain after the certificate, and a
        separate chain file may add more.
        """
        cert = self.files.write("full.pem", self.files.server.cert_pem, self.files.ca.cert_pem)
        chain = self.files.write("chain.pem", self.files.ca.cert_pem)
        options = load_server_options(TLSSettings(cert=cert, key=self.files.key, chain=chain))
        self.assertEqual(len(options.extraCertChain), 2)

    def test_load_combinedKeyAndCert(self) -> None:
        """
        One file with both key and certificate works for both settings (as
        Twisted's C{ssl:} default).
        """
        both = self.files.write("both.pem", self.files.server.key_pem, self.files.server.cert_pem)
        load_server_options(TLSSettings(cert=both, key=both))

    def test_missingCert(self) -> None:
        """
        A missing certificate file is named.
        """
        self.assertProblem(
            TLSSettings(cert="/nonexistent/cert.pem", key=self.files.key),
            "cert",
            "cannot read /nonexistent/cert.pem: No such file or directory",
        )

    def test_missingKey(self) -> None:
        """
        A missing key file is named.
        """
        self.assertProblem(TLSSettings(cert=self.files.cert, key="/nonexistent/key.pem"), "key", "/nonexistent/key.pem")

    def test_certNotPem(self) -> None:
        """
        A certificate file without a certificate says so.
        """
        path = self.files.write("junk.pem", b"hello")
        self.assertProblem(TLSSettings(cert=path, key=self.files.key), "cert", "holds no PEM certificate")

    def test_keyNotPem(self) -> None:
        """
        A key file without a key (here: a certificate) says so.
        """
        self.assertProblem(
            TLSSettings(cert=self.files.cert, key=self.files.cert), "key", "holds no PEM private key"
        )

    def test_keyMismatch(self) -> None:
        """
        A key that does not belong to the certificate stops start-up, naming
        both files.
        """
        other = self.files.write("other.pem", self.files.ca.issue().key_pem)
        self.assertProblem(
            TLSSettings(cert=self.files.cert, key=other),
            "key",
            f"the private key in {other} does not match the certificate in {self.files.cert}",
        )

    def test_keyEncrypted(self) -> None:
        """
        A passphrase-protected key is refused with a clear message.
        """
        encrypted = self.files.server.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        path = self.files.write("enc.pem", encrypted)
        self.assertProblem(TLSSettings(cert=self.files.cert, key=path), "key", "encrypted")

    def test_certExpired(self) -> None:
        """
        An expired certificate stops start-up, with the date it expired.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        old = self.files.ca.issue(
            not_before=now - datetime.timedelta(days=10), not_after=now - datetime.timedelta(days=2)
        )
        cert = self.files.write("old.pem", old.cert_pem)
        key = self.files.write("old.key", old.key_pem)
        expired_on = old.certificate.not_valid_after_utc.strftime("%Y-%m-%d")
        self.assertProblem(TLSSettings(cert=cert, key=key), "cert", "CN=localhost", "expired on " + expired_on)

    def test_certNotYetValid(self) -> None:
        """
        A certificate valid only from tomorrow is refused too.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        future = self.files.ca.issue(not_before=now + datetime.timedelta(days=1))
        cert = self.files.write("future.pem", future.cert_pem)
        key = self.files.write("future.key", future.key_pem)
        self.assertProblem(TLSSettings(cert=cert, key=key), "cert", "is not valid until")

    def test_chainExpired(self) -> None:
        """
        An expired certificate in the chain file is named with the chain.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        old = self.files.ca.issue(
            not_before=now - datetime.timedelta(days=10), not_after=now - datetime.timedelta(days=2)
        )
        chain = self.files.write("chain.pem", old.cert_pem)
        self.assertProblem(TLSSettings(cert=self.files.cert, key=self.files.key, chain=chain), "chain", "expired")

    def test_clientCa_required(self) -> None:
        """
        With C{client_ca}, a client without a certificate is refused and
        one with a certificate from that CA connects.
        """
        settings = TLSSettings(cert=self.files.cert, key=self.files.key, client_ca=self.files.ca_file)
        self.assertRefused(*self.handshake(ServerTLS(load_server_options(settings)), self.client()))
        issued = self.files.ca.issue(hostnames=("client",), client=True)
        identity = PrivateCertificate.loadPEM(issued.cert_pem + issued.key_pem)
        client = optionsForClientTLS(
            "localhost", trustRoot=Certificate.loadPEM(self.files.ca.cert_pem), clientCertificate=identity
        )
        self.assertConnected(*self.handshake(ServerTLS(load_server_options(settings)), client))

    def test_alpn_behindGuard(self) -> None:
        """
        A client that offers ALPN (as browsers do: h2 and http/1.1) gets
        http/1.1 through the connection guard and the site.
        """
        from kiwi.limits import ConnectionGuard
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        guard = ConnectionGuard(Site(Resource()), Clock(), 10, None, 10.0)
        server_factory = TLSMemoryBIOFactory(ServerTLS(load_server_options(self.settings)), False, guard, clock=Clock())
        server = server_factory.buildProtocol(ADDRESS)
        client_options = optionsForClientTLS(
            "localhost", trustRoot=Certificate.loadPEM(self.files.ca.cert_pem), acceptableProtocols=[b"h2", b"http/1.1"]
        )
        client = TLSMemoryBIOFactory(client_options, True, Factory.forProtocol(_Recorder), clock=Clock()).buildProtocol(
            ADDRESS
        )
        iosim.connect(server, iosim.FakeTransport(server, isServer=True), client, iosim.FakeTransport(client, isServer=False))
        self.assertEqual(client.negotiatedProtocol, b"http/1.1")
        self.assertEqual(server.negotiatedProtocol, b"http/1.1")

    def test_serverTls_update(self) -> None:
        """
        L{ServerTLS.update} serves a new certificate to new connections.
        """
        server_tls = ServerTLS(load_server_options(self.settings))
        other_ca = pki.CertificateAuthority("Other CA")
        issued = other_ca.issue()
        cert = self.files.write("new.pem", issued.cert_pem)
        key = self.files.write("new.key", issued.key_pem)
        server_tls.update(load_server_options(TLSSettings(cert=cert, key=key)))
        self.assertRefused(*self.handshake(server_tls, self.client()))
        trust = Certificate.loadPEM(other_ca.cert_pem)
        self.assertConnected(*self.handshake(server_tls, optionsForClientTLS("localhost", trustRoot=trust)))


def _ciphers(names: str) -> Any:
    from twisted.internet.ssl import AcceptableCiphers

    return AcceptableCiphers.fromOpenSSLCipherString(names)


class SplitTlsTests(SynchronousTestCase):
    """
    L{split_tls} turns C{ssl:} descriptions into Kiwi's own TLS.
    """

    def test_split_plain(self) -> None:
        """
        Other descriptions pass through with the given settings.
        """
        settings = TLSSettings(cert="c", key="k")
        self.assertEqual(split_tls("tcp:8000", settings), ("tcp:8000", settings))
        self.assertEqual(split_tls("unix:/x"), ("unix:/x", None))

    def test_split_ssl(self) -> None:
        """
        C{ssl:} parameters become a C{tcp:} description and settings, with
        escapes honoured.
        """
        self.assertEqual(
            split_tls(r"ssl:8443:interface=127.0.0.1:privateKey=/k\:1.pem:certKey=/c.pem:extraCertChain=/ch.pem"),
            ("tcp:8443:interface=127.0.0.1", TLSSettings(cert="/c.pem", key="/k:1.pem", chain="/ch.pem")),
        )

    def test_split_defaults(self) -> None:
        """
        As in Twisted, C{certKey} defaults to C{privateKey}, which defaults
        to C{server.pem}; C{port=} works too.
        """
        self.assertEqual(split_tls("ssl:port=443"), ("tcp:443", TLSSettings(cert="server.pem", key="server.pem")))
        self.assertEqual(split_tls("ssl:443:privateKey=a.pem"), ("tcp:443", TLSSettings(cert="a.pem", key="a.pem")))

    def test_split_weakeningRefused(self) -> None:
        """
        C{sslmethod} and C{dhParameters} would weaken TLS: refused.
        """
        for parameter in ("sslmethod=TLSv1_METHOD", "dhParameters=dh.pem"):
            error = self.assertRaises(ValueError, split_tls, f"ssl:443:{parameter}")
            self.assertIn("not supported", str(error))

    def test_split_unknownParameter(self) -> None:
        """
        Unknown parameters are named.
        """
        error = self.assertRaises(ValueError, split_tls, "ssl:443:caCerts=x")
        self.assertIn("unknown ssl: parameter caCerts", str(error))


class TLSConfigTests(SynchronousTestCase):
    """
    C{server.tls} and C{ssl:} descriptions in the configuration.
    """

    def setUp(self) -> None:
        self.files = Files(self.mktemp())

    def parse(self, server: str) -> Any:
        """
        Parse a configuration with this C{server} section (YAML lines).
        """
        text = "sources: []\nserver:\n" + server
        return parse_config(text, "kiwi.yml", MemoryReactor())

    def problems(self, server: str) -> list[str]:
        """
        The problems of a configuration with this C{server} section.
        """
        return self.assertRaises(ConfigErrors, self.parse, server).problems

    def test_tls_settings(self) -> None:
        """
        C{server.tls} with every key gives the settings and a plain TCP
        endpoint.
        """
        chain = self.files.write("chain.pem", self.files.ca.cert_pem)
        config = self.parse(
            f"  address: 127.0.0.1:8443\n  tls:\n    cert: {self.files.cert}\n    key: {self.files.key}\n"
            f"    chain: {chain}\n    client_ca: {self.files.ca_file}\n"
        )
        self.assertEqual(config.server.listen, "tcp:8443:interface=127.0.0.1")
        self.assertEqual(
            config.server.tls,
            # Relative paths are taken from the configuration file's directory.
            TLSSettings(
                cert=os.path.abspath(self.files.cert),
                key=os.path.abspath(self.files.key),
                chain=os.path.abspath(chain),
                client_ca=os.path.abspath(self.files.ca_file),
            ),
        )

    def test_sslListen(self) -> None:
        """
        An C{ssl:} description in C{server.listen} keeps working, with
        Kiwi's TLS.
        """
        config = self.parse(f"  listen: 'ssl:8443:privateKey={self.files.key}:certKey={self.files.cert}'\n")
        self.assertEqual(config.server.listen, "tcp:8443")
        self.assertEqual(config.server.tls, TLSSettings(cert=self.files.cert, key=self.files.key))

    def test_tls_missingFile(self) -> None:
        """
        A missing file stops start-up, naming the key and the file.
        """
        self.assertEqual(
            self.problems(f"  address: 127.0.0.1:8443\n  tls: {{cert: /nope/c.pem, key: {self.files.key}}}\n"),
            ["server.tls.cert: cannot read /nope/c.pem: No such file or directory"],
        )

    def test_tls_mismatch(self) -> None:
        """
        A key that does not match the certificate is reported under
        C{server.tls.key}.
        """
        other = self.files.write("other.key", self.files.ca.issue().key_pem)
        problems = self.problems(f"  address: 127.0.0.1:8443\n  tls: {{cert: {self.files.cert}, key: {other}}}\n")
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("server.tls.key: the private key in"), problems)

    def test_sslListen_expired(self) -> None:
        """
        An expired certificate in an C{ssl:} description is reported under
        C{server.listen}.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        old = self.files.ca.issue(not_before=now - datetime.timedelta(days=9), not_after=now - datetime.timedelta(days=1))
        cert = self.files.write("old.pem", old.cert_pem)
        key = self.files.write("old.key", old.key_pem)
        problems = self.problems(f"  listen: 'ssl:8443:privateKey={key}:certKey={cert}'\n")
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("server.listen: the certificate CN=localhost"), problems)
        self.assertIn("expired on", problems[0])

    def test_sslListen_badParameter(self) -> None:
        """
        A weakening C{ssl:} parameter is a configuration error.
        """
        problems = self.problems("  listen: 'ssl:8443:sslmethod=SSLv23_METHOD'\n")
        self.assertEqual(len(problems), 1)
        self.assertIn("sslmethod is not supported", problems[0])

    def test_tls_withSslListen(self) -> None:
        """
        C{server.tls} and an C{ssl:} description together are an error.
        """
        self.assertEqual(
            self.problems(
                f"  listen: 'ssl:8443:privateKey={self.files.key}'\n"
                f"  tls: {{cert: {self.files.cert}, key: {self.files.key}}}\n"
            ),
            ["server.tls: give either server.tls or an ssl: description in server.listen, not both"],
        )


class ListenerTLSTests(SynchronousTestCase):
    """
    The listener serves TLS with Kiwi's options.
    """

    def test_listener_wrapsInTls(self) -> None:
        """
        With TLS settings the listener listens on the plain endpoint with
        the site wrapped in TLS, and keeps the connection creator for
        certificate swaps.
        """
        from twisted.internet.testing import MemoryReactorClock

        files = Files(self.mktemp())
        reactor = MemoryReactorClock()
        site = Factory.forProtocol(Protocol)
        listener = ListenerService(
            reactor, "tcp:8443", site, None, tls=TLSSettings(cert=files.cert, key=files.key)  # type: ignore[arg-type]
        )
        listener.startService()
        port, factory, backlog, interface = reactor.tcpServers[0]
        self.assertEqual(port, 8443)
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        self.assertIs(factory.wrappedFactory, site)
        self.assertIsInstance(listener.tls, ServerTLS)

    def test_listener_badFilesFail(self) -> None:
        """
        TLS files that went bad after validation make the listener fail
        (and Kiwi exit) instead of listening without TLS.
        """
        from twisted.internet.testing import MemoryReactorClock

        reactor = MemoryReactorClock()
        listener = ListenerService(
            reactor, "tcp:8443", Factory.forProtocol(Protocol), None, tls=TLSSettings(cert="/nope", key="/nope")  # type: ignore[arg-type]
        )
        listener.startService()
        self.assertEqual(reactor.tcpServers, [])
        failure = self.failureResultOf(listener.when_listening(), TLSFileError)
        self.assertIn("/nope", failure.value.message)


class CertificateOptionsTests(SynchronousTestCase):
    """
    The options object itself.
    """

    def test_options_type(self) -> None:
        """
        L{load_server_options} returns Twisted L{CertificateOptions}.
        """
        files = Files(self.mktemp())
        self.assertIsInstance(load_server_options(TLSSettings(cert=files.cert, key=files.key)), CertificateOptions)
