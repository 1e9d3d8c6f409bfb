"""
Tests for L{kiwi.auth} and L{kiwi.auth.origin}: identities, where tokens
come from, and the C{Origin} policy.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from kiwi.auth import MAX_TOKEN_BYTES, OPEN, AuthError, IAuthenticator, Identity, OpenAccess, token_from_request
from kiwi.auth.origin import OriginPolicy, check_pattern


def _request(authorization: list[bytes] | None = None, query: list[bytes] | None = None) -> DummyRequest:
    request = DummyRequest([b""])
    if authorization is not None:
        request.requestHeaders.setRawHeaders(b"authorization", authorization)
    if query is not None:
        request.args[b"access_token"] = query
    return request


class IdentityTests(SynchronousTestCase):
    """
    L{Identity} decides which sources a connection may read.
    """

    def test_open_allowsEverything(self) -> None:
        """
        Without authentication every source is allowed and there is no
        context.
        """
        self.assertTrue(OPEN.allows("anything"))
        self.assertIsNone(OPEN.context)

    def test_patterns_globs(self) -> None:
        """
        Patterns are case-sensitive globs over the whole source id.
        """
        identity = Identity(claims={}, patterns=("prices", "eu.*", "t?"))
        self.assertTrue(identity.allows("prices"))
        self.assertTrue(identity.allows("eu.fx"))
        self.assertTrue(identity.allows("t1"))
        self.assertFalse(identity.allows("Prices"))
        self.assertFalse(identity.allows("prices2"))
        self.assertFalse(identity.allows("us.eu.fx"))
        self.assertFalse(Identity(claims={}, patterns=()).allows("prices"))

    def test_openAccess(self) -> None:
        """
        L{OpenAccess} is an authenticator that is not enabled and admits
        everyone.
        """
        access = OpenAccess()
        self.assertTrue(verifyObject(IAuthenticator, access))
        self.assertFalse(access.enabled)
        self.assertIs(self.successResultOf(access.authenticate("whatever")), OPEN)

    def test_challenge_sanitized(self) -> None:
        """
        A reason with quotes or non-ASCII cannot break the header.
        """
        self.assertEqual(
            AuthError('x "y" \u00e9').challenge(),
            b'Bearer realm="kiwi", error="invalid_token", error_description="x ?y? ?"',
        )


class TokenFromRequestTests(SynchronousTestCase):
    """
    L{token_from_request} finds the bearer token of a handshake.
    """

    def test_none(self) -> None:
        """
        No header and no parameter: no token.
        """
        self.assertIsNone(token_from_request(_request()))

    def test_header(self) -> None:
        """
        C{Authorization: Bearer}, scheme in any case.
        """
        self.assertEqual(token_from_request(_request([b"Bearer abc.def.ghi"])), "abc.def.ghi")
        self.assertEqual(token_from_request(_request([b"bearer  abc "])), "abc")

    def test_query(self) -> None:
        """
        The C{access_token} query parameter.
        """
        self.assertEqual(token_from_request(_request(query=[b"abc"])), "abc")

    def test_refusals(self) -> None:
        """
        Other schemes, empty tokens, several tokens and huge tokens are
        refused with reasons.
        """
        cases = [
            (_request([b"Basic dXNlcg=="]), "Authorization header must use the Bearer scheme"),
            (_request([b"Bearer "]), "token is empty"),
            (_request([b"Bearer a", b"Bearer b"]), "more than one Authorization header"),
            (_request(query=[b"a", b"b"]), "more than one access_token parameter"),
            (_request([b"Bearer a"], [b"a"]), "token given in both the Authorization header and access_token"),
            (_request([b"Bearer " + b"a" * (MAX_TOKEN_BYTES + 1)]), "token too large"),
            (_request(query=[b"\xff\xfe"]), "token malformed"),
        ]
        for request, reason in cases:
            error = self.assertRaises(AuthError, token_from_request, request)
            self.assertEqual(error.reason, reason)
            self.assertEqual(error.status, 401)


class OriginPolicyTests(SynchronousTestCase):
    """
    L{OriginPolicy} against cross-site WebSocket hijacking.
    """

    def test_noOrigin_allowed(self) -> None:
        """
        Clients that send no C{Origin} (not browsers) are not affected.
        """
        self.assertTrue(OriginPolicy(None).allows(None, "kiwi.example"))
        self.assertTrue(OriginPolicy(("https://a.example",)).allows(None, None))

    def test_default_sameOrigin(self) -> None:
        """
        By default only the page's own origin may connect; default ports
        are equivalent to none.
        """
        policy = OriginPolicy(None)
        self.assertTrue(policy.allows("https://kiwi.example", "kiwi.example"))
        self.assertTrue(policy.allows("https://Kiwi.Example", "kiwi.example:443"))
        self.assertTrue(policy.allows("http://localhost:8000", "localhost:8000"))
        self.assertFalse(policy.allows("http://localhost:3000", "localhost:8000"))
        self.assertFalse(policy.allows("https://evil.example", "kiwi.example"))
        self.assertFalse(policy.allows("null", "kiwi.example"))
        self.assertFalse(policy.allows("https://kiwi.example", None))

    def test_list_patterns(self) -> None:
        """
        Listed origins match exactly or by C{*}, case-insensitively, with
        default ports ignored.
        """
        policy = OriginPolicy(("https://app.example.com", "https://*.kiwi.example:8443", "null"))
        self.assertTrue(policy.allows("https://app.example.com", "x"))
        self.assertTrue(policy.allows("https://APP.example.com:443", "x"))
        self.assertTrue(policy.allows("https://eu.kiwi.example:8443", "x"))
        self.assertTrue(policy.allows("null", "x"))
        self.assertFalse(policy.allows("http://app.example.com", "x"))
        self.assertFalse(policy.allows("https://app.example.com.evil.example", "x"))
        self.assertFalse(policy.allows("https://eu.kiwi.example", "x"))

    def test_star_anything(self) -> None:
        """
        C{*} allows every origin.
        """
        self.assertTrue(OriginPolicy(("*",)).allows("https://anything.example", "kiwi.example"))

    def test_checkPattern(self) -> None:
        """
        Entries must be origins (scheme and host, no path).
        """
        self.assertIsNone(check_pattern("https://a.example"))
        self.assertIsNone(check_pattern("*"))
        self.assertIsNone(check_pattern("http://*.a.example:8080"))
        self.assertIn("scheme://host", check_pattern("a.example") or "")
        self.assertIn("no path", check_pattern("https://a.example/app") or "")
        self.assertIn("scheme://host", check_pattern("ftp://a.example") or "")
