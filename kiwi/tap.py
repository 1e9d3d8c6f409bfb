"""
The C{twistd kiwi} command: options and service construction.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from kiwi.config import DEFAULT_CONFIG_PATH, KiwiConfig, load_config
from kiwi.errors import ConfigErrors
from kiwi.logs import LEVELS, set_level


class Options(usage.Options):
    """
    C{twistd kiwi} options.
    """

    synopsis = "[--config PATH]"
    longdesc = (
        "Kiwi streams Kafka topics and other event sources to WebSocket clients. "
        "The configuration file is validated before anything starts."
    )
    optParameters = [
        ["config", "c", DEFAULT_CONFIG_PATH, "Path to the YAML configuration file."],
        ["log-level", None, "info", "Lowest level of Kiwi's log lines: " + ", ".join(LEVELS) + "."],
    ]

    config: KiwiConfig

    def postOptions(self) -> None:
        """
        Load and validate the configuration, so that a bad file stops twistd
        before it daemonizes or binds anything.
        """
        from twisted.internet import reactor

        if self["log-level"] not in LEVELS:
            raise usage.UsageError(f"--log-level must be one of {', '.join(LEVELS)}")
        try:
            self.config = load_config(self["config"], reactor)
        except ConfigErrors as e:
            # Not a UsageError: twistd would print the whole usage text
            # first and bury the problem.
            raise SystemExit(f"kiwi: {e}") from None


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build Kiwi's service tree from parsed options.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from kiwi.service import KiwiService, exit_cleanly_on_signals

    set_level(options["log-level"])
    exit_cleanly_on_signals(reactor)
    return KiwiService(options.config, reactor)
