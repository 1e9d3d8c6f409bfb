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

from twisted.web.server import Request

from kiwi.auth import AuthError, IAuthenticator, Identity, token_from_request
from kiwi.auth.origin import OriginPolicy
from kiwi.logs import logger

_PHRASES = {401: "Unauthorized", 403: "Forbidden", 503: "Service Unavailable"}

log = logger()


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
    request.setResponseCode(status, _PHRASES.get(status, "Refused").encode("ascii"))
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    body = f"{status} {_PHRASES.get(status, 'Refused')}: {reason}\n".encode("utf-8")
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    request.write(body)
    request.finish()


async def admit(
    request: Request, origins: OriginPolicy, authenticator: IAuthenticator, conn_id: str, peer: str
) -> Identity | None:
    """
    Decide whether a WebSocket handshake may go ahead.

    @return: The connection's identity, or C{None} after C{request} has
        been refused.
    """
    origin = request.getHeader("origin")
    if not origins.allows(origin, request.getHeader("host")):
        log.warn(
            "{conn_id} handshake from {peer} refused: origin {origin} not allowed",
            conn_id=conn_id,
            peer=peer,
            origin=origin[:200] if origin else origin,
        )
        refuse(request, 403, "origin not allowed")
        return None
    try:
        token = token_from_request(request)
        identity: Identity = await authenticator.authenticate(token)
    except AuthError as e:
        log.warn(
            "{conn_id} handshake from {peer} refused: {reason}", conn_id=conn_id, peer=peer, reason=e.reason
        )
        headers = {b"www-authenticate": e.challenge()} if e.status == 401 else {b"retry-after": b"10"}
        refuse(request, e.status, e.reason, headers)
        return None
    return identity
