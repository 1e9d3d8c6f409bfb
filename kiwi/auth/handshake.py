"""
The gate in front of the WebSocket upgrade: the C{Origin} check and the
token check, answered in plain HTTP before any WebSocket frame.

A refused handshake gets 403 (foreign origin), 401 with a
C{WWW-Authenticate} header that says why (token), or 503 (Kiwi cannot
check tokens right now), a one-line text body, and the connection is
closed. The log gets a warning with the peer and the reason, never the
token.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.web.server import Request

from kiwi.auth import AuthError, IAuthenticator, Identity, token_from_request
from kiwi.auth.origin import OriginPolicy
from kiwi.logs import logger

_PHRASES = {401: "Unauthorized", 403: "Forbidden", 500: "Internal Server Error", 503: "Service Unavailable"}


def refuse(request: Request, status: int, reason: str, headers: dict[bytes, bytes] | None = None) -> None:
    """
    Answer C{request} with C{status} and a short text body, then close the
    connection.
    """
    if request.finished or getattr(request, "channel", None) is None:
        return
    # The handshake asked for "Connection: Upgrade"; make Twisted Web close
    # the connection after this answer instead of waiting for another
    # request.
    request.channel.persistent = False
    request.setHeader(b"connection", b"close")
    phrase = _PHRASES.get(status, "Refused")
    request.setResponseCode(status, phrase.encode("ascii"))
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    body = f"{status} {phrase}: {reason}\n".encode("utf-8")
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    request.write(body)
    request.finish()


class Gate:
    """
    Decides whether WebSocket handshakes may go ahead.
    """

    log = logger()

    def __init__(
        self,
        origins: OriginPolicy,
        authenticator: IAuthenticator,
        count_refusal: Callable[[str], None] | None = None,
    ) -> None:
        """
        @param count_refusal: Called with the reason of every refusal, for
            C{kiwi_handshake_refusals_total}.
        """
        self.origins = origins
        self.authenticator = authenticator
        self._count_refusal = count_refusal or (lambda reason: None)

    async def admit(self, request: Request, conn_id: str, peer: str) -> Identity | None:
        """
        Check a handshake's C{Origin} and token.

        @return: The connection's identity, or C{None} after C{request} has
            been refused.
        """
        origin = request.getHeader("origin")
        if not self.origins.allows(origin, request.getHeader("host")):
            self.log.warn(
                "{conn_id} handshake from {peer} refused: origin {origin} not allowed",
                conn_id=conn_id,
                peer=peer,
                origin=origin[:200] if origin else origin,
            )
            self._count_refusal("origin not allowed")
            refuse(request, 403, "origin not allowed")
            return None
        try:
            token = token_from_request(request)
            identity: Identity = await self.authenticator.authenticate(token)
        except AuthError as e:
            self.log.warn(
                "{conn_id} handshake from {peer} refused: {reason}", conn_id=conn_id, peer=peer, reason=e.reason
            )
            self._count_refusal(e.reason)
            headers = {b"www-authenticate": e.challenge()} if e.status == 401 else {b"retry-after": b"10"}
            refuse(request, e.status, e.reason, headers)
            return None
        return identity
