"""
The exceptions Kiwi raises on purpose.

A L{ClientError} becomes a reply to the client that caused it; a
L{ConfigErrors} stops start-up (or rejects a reload) with every problem the
configuration file has, each naming its key path.
"""

from __future__ import annotations

from collections.abc import Sequence


class KiwiError(Exception):
    """
    Base class of the errors Kiwi raises deliberately.
    """


class ClientError(KiwiError):
    """
    A command could not be carried out because of what the client asked.

    The message is short and stable: clients may match on it.
    """


class ConfigErrors(KiwiError):
    """
    A configuration file is not valid.

    @ivar path: The file that was read.
    @ivar problems: One line per problem, each starting with a key path.
    """

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [f"invalid configuration in {self.path}:"]
        lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)
