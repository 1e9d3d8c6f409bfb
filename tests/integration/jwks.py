"""
A JWKS document served over HTTPS from the test process, on 127.0.0.1,
with a certificate from a test CA: what an identity provider looks like to
Kiwi.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from kiwi.tls import ServerTLS, TLSSettings, load_server_options
from tests import pki


class _Document(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.body = b'{"keys": []}'
        self.requests = 0

    def render_GET(self, request: Request) -> bytes:
        self.requests += 1
        request.setHeader(b"content-type", b"application/jwk-set+json")
        return self.body


class JWKSServer:
    """
    Serves a JWKS document at C{/jwks.json} over HTTPS.

    @ivar ca_file: The PEM file of the CA that signed the server's
        certificate (what Kiwi's C{jwks_ca} names).
    """

    def __init__(self, directory: str, hostnames: tuple[str, ...] = ("localhost",)) -> None:
        os.makedirs(directory, exist_ok=True)
        self.ca = pki.CertificateAuthority("JWKS Test CA")
        issued = self.ca.issue(hostnames)
        self.ca_file = os.path.abspath(pki.write(directory, "jwks-ca.pem", self.ca.cert_pem))
        cert = pki.write(directory, "jwks-cert.pem", issued.cert_pem)
        key = pki.write(directory, "jwks-key.pem", issued.key_pem)
        self._tls = ServerTLS(load_server_options(TLSSettings(cert=cert, key=key)))
        self._document = _Document()
        self._port: IListeningPort | None = None

    @property
    def requests(self) -> int:
        """
        How many times the document was fetched.
        """
        return self._document.requests

    def publish(self, body: bytes) -> None:
        """
        Serve C{body} from now on.
        """
        self._document.body = body

    def start(self) -> str:
        """
        Listen on a free loopback port; return the document's URL (host
        C{localhost}).
        """
        site = Site(self._document)
        site.noisy = False
        factory: Any = TLSMemoryBIOFactory(self._tls, False, site)
        self._port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        return f"https://localhost:{self._port.getHost().port}/jwks.json"  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._port is not None:
            await self._port.stopListening()  # type: ignore[misc]
            self._port = None
