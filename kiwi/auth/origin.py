"""
Which web pages may open WebSocket connections: the C{Origin} check
against cross-site WebSocket hijacking.

Browsers send the page's origin (C{https://app.example.com}) with every
WebSocket handshake and let any page connect anywhere; the server must
refuse pages it does not trust. Clients that are not browsers send no
C{Origin} and are not affected.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def check_pattern(pattern: str) -> str | None:
    """
    The problem with an C{allowed_origins} entry, or C{None} if it is
    usable: C{*}, C{null}, or C{scheme://host[:port]} where C{*} in the
    host stands for any run of characters.
    """
    if pattern in ("*", "null"):
        return None
    scheme, sep, rest = pattern.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest:
        return f"expected an origin such as https://app.example.com (scheme://host[:port]), got {pattern!r}"
    if "/" in rest or "?" in rest or "#" in rest:
        return f"an origin has no path, query or fragment: {pattern!r}"
    return None


def _normalize(netloc: str, scheme: str) -> str:
    netloc = netloc.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None and netloc.endswith(":" + default):
        netloc = netloc[: -len(default) - 1]
    return netloc


class OriginPolicy:
    """
    Decides whether a handshake's C{Origin} is allowed.

    @param allowed: The C{server.allowed_origins} patterns; C{None}: only
        same-origin pages (the C{Origin}'s host and port equal the
        handshake's C{Host} header).
    """

    def __init__(self, allowed: tuple[str, ...] | None) -> None:
        self._allowed = allowed
        self._any = allowed is not None and "*" in allowed
        self._patterns = [
            re.compile(
                "^" + ".*".join(re.escape(part) for part in _origin_key(pattern).split("*")) + "$",
                re.IGNORECASE,
            )
            for pattern in (allowed or ())
            if pattern != "*"
        ]

    def allows(self, origin: str | None, host: str | None) -> bool:
        """
        Whether a handshake with these C{Origin} and C{Host} headers may go
        ahead.
        """
        if origin is None or self._any:
            return True
        if self._allowed is None:
            if host is None or origin == "null":
                return False
            parts = urlsplit(origin)
            return _normalize(parts.netloc, parts.scheme.lower()) == _normalize(host, parts.scheme.lower())
        key = _origin_key(origin)
        return any(pattern.match(key) for pattern in self._patterns)


def _origin_key(origin: str) -> str:
    """
    An origin in a comparable form: lower case, without a default port.
    """
    scheme, sep, netloc = origin.partition("://")
    if not sep:
        return origin.lower()
    return scheme.lower() + "://" + _normalize(netloc, scheme.lower())
