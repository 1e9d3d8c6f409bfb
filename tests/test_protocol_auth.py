"""
Tests for the C{AUTHENTICATE} extension of L{kiwi.protocol}.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from kiwi import protocol
from kiwi.protocol import MAX_TOKEN_LENGTH, Authenticate, ProtocolError, parse_command


class AuthenticateCommandTests(SynchronousTestCase):
    """
    Parsing C{AUTHENTICATE} and its replies.
    """

    def test_parse_ok(self) -> None:
        """
        C{AUTHENTICATE} with a token; other fields are ignored.
        """
        self.assertEqual(
            parse_command(json.dumps({"type": "AUTHENTICATE", "token": "a.b.c", "x": 1})), Authenticate("a.b.c")
        )

    def test_repr_hidesToken(self) -> None:
        """
        The token never shows in a command's repr (which might be logged).
        """
        self.assertNotIn("secret", repr(Authenticate("secret")))

    def test_parse_errors(self) -> None:
        """
        A missing, empty, non-string or huge token gets an
        C{AUTHENTICATE_ERROR} reply naming the problem.
        """
        cases = [
            ({"type": "AUTHENTICATE"}, "AUTHENTICATE command has no token field"),
            ({"type": "AUTHENTICATE", "token": ""}, "AUTHENTICATE command's token must be a non-empty string"),
            ({"type": "AUTHENTICATE", "token": ["x"]}, "AUTHENTICATE command's token must be a non-empty string"),
            ({"type": "AUTHENTICATE", "token": "x" * (MAX_TOKEN_LENGTH + 1)}, "token too large"),
        ]
        for document, message in cases:
            error = self.assertRaises(ProtocolError, parse_command, json.dumps(document))
            self.assertEqual(error.reply(), protocol.authenticate_error(message))

    def test_replies_bytes(self) -> None:
        """
        The exact bytes of C{AUTHENTICATE_OK} and C{AUTHENTICATE_ERROR}.
        """
        self.assertEqual(
            protocol.authenticate_ok(1800000600.5),
            b'{"type":"COMMAND_RESPONSE","data":{"type":"AUTHENTICATE_OK","expiresAt":1800000600}}',
        )
        self.assertEqual(
            protocol.authenticate_ok(None),
            b'{"type":"COMMAND_RESPONSE","data":{"type":"AUTHENTICATE_OK","expiresAt":null}}',
        )
        self.assertEqual(
            protocol.authenticate_error("token expired"),
            b'{"type":"COMMAND_RESPONSE","data":{"type":"AUTHENTICATE_ERROR","error":"token expired"}}',
        )
