"""
Who may connect, and which sources they may read.

An L{IAuthenticator} turns the token a client presents (or none) into an
L{Identity}: the token's claims, the source-id patterns it may subscribe
to, and when it expires. L{OpenAccess} is used when C{auth} is not
configured; L{kiwi.auth.jwt.JWTAuthenticator} checks JSON Web Tokens.

A refused token is an L{AuthError}, whose C{reason} is short, stable and
safe to show the client (it goes into the C{WWW-Authenticate} header); it
never contains the token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.web.iweb import IRequest
from zope.interface import Attribute, Interface, implementer

from kiwi.errors import KiwiError

MAX_TOKEN_BYTES = 16 * 1024
"""
Longer tokens are refused unread (C{token too large}).
"""


class AuthError(KiwiError):
    """
    A token (or its absence) was refused.

    @ivar reason: Short, stable text for the client and the log, e.g.
        C{token expired}.
    @ivar status: The HTTP status for a refused handshake: 401, or 503 when
        Kiwi cannot check tokens at the moment (no keys).
    @ivar error: The RFC 6750 error code: C{invalid_request} (no token, or
        it was given twice) or C{invalid_token}.
    """

    def __init__(self, reason: str, status: int = 401, error: str = "invalid_token") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.error = error

    def challenge(self) -> bytes:
        """
        The C{WWW-Authenticate} header value that tells the client why.
        """
        description = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in self.reason)
        return f'Bearer realm="kiwi", error="{self.error}", error_description="{description}"'.encode("ascii")


@attrs.frozen(eq=False)
class Identity:
    """
    What a connection may do.

    @ivar claims: The token's verified claims; C{None} without a token.
    @ivar patterns: Glob patterns (C{fnmatch}: C{*}, C{?}, C{[...]}) of the
        source ids the connection may subscribe to; C{None}: every source
        (authentication is not configured).
    @ivar expires_at: When the token stops being valid (POSIX seconds, leeway
        included); C{None}: never.
    """

    claims: Mapping[str, Any] | None = None
    patterns: tuple[str, ...] | None = None
    expires_at: float | None = None

    def allows(self, source_id: str) -> bool:
        """
        Whether the connection may subscribe to C{source_id}.
        """
        if self.patterns is None:
            return True
        return any(fnmatchcase(source_id, pattern) for pattern in self.patterns)

    @property
    def context(self) -> bytes | None:
        """
        The claims as compact JSON (UTF-8), as plugins receive them;
        C{None} without a token.
        """
        if self.claims is None:
            return None
        return json.dumps(self.claims, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


OPEN = Identity()
"""
The identity of every connection when authentication is not configured.
"""


class IAuthenticator(Interface):
    """
    Checks the tokens clients present.
    """

    enabled: bool = Attribute("Whether tokens are checked at all (C{False}: every connection is L{OPEN}).")

    def authenticate(token: str | None) -> Deferred[Identity]:
        """
        Check C{token} (C{None}: the client gave none).

        @return: A Deferred that fires with the connection's L{Identity}, or
            fails with L{AuthError}.
        """


@implementer(IAuthenticator)
class OpenAccess:
    """
    No authentication: every connection may read every source, and tokens
    are ignored.
    """

    enabled = False

    def authenticate(self, token: str | None) -> Deferred[Identity]:
        return succeed(OPEN)


def _single(values: list[bytes] | None, what: str) -> bytes | None:
    if not values:
        return None
    if len(values) > 1:
        raise AuthError(f"more than one {what}", error="invalid_request")
    return values[0]


def token_from_request(request: IRequest) -> str | None:
    """
    The bearer token of a handshake request: from C{Authorization: Bearer
    ...} or the C{access_token} query parameter (browsers cannot set
    headers on WebSocket handshakes); C{None} if neither is there.

    @raise AuthError: if the header is not a bearer token, or a token is
        given more than once.
    """
    header = _single(request.requestHeaders.getRawHeaders(b"authorization"), "Authorization header")
    query = _single(request.args.get(b"access_token"), "access_token parameter")
    if header is not None and query is not None:
        raise AuthError("token given in both the Authorization header and access_token", error="invalid_request")
    if header is not None:
        scheme, _, credentials = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            raise AuthError("Authorization header must use the Bearer scheme", error="invalid_request")
        raw = credentials.strip()
    elif query is not None:
        raw = query
    else:
        return None
    if not raw:
        raise AuthError("token is empty", error="invalid_request")
    if len(raw) > MAX_TOKEN_BYTES:
        raise AuthError("token too large")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise AuthError("token malformed") from None
