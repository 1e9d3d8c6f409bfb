"""
The listening side: a strports endpoint, served by a service that reports
the port it bound and closes its clients on the way down.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from kiwi.logs import logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from kiwi.ws import CLOSE_GOING_AWAY, KiwiServerFactory, wait_closed

SHUTDOWN_TIMEOUT_S = 10.0


def _exit_failed() -> None:
    import os

    os._exit(1)


class ListenerService(Service):
    """
    Listens on C{description} and serves C{site}.

    Stopping stops accepting, sends every client a close frame with code
    1001 (going away), and waits for the connections to end.
    """

    log = logger()
    name = "listener"

    def __init__(
        self,
        reactor: Any,
        description: str,
        site: Site,
        factory: KiwiServerFactory,
        shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
        endpoint: IStreamServerEndpoint | None = None,
    ) -> None:
        self._reactor = reactor
        self._endpoint = endpoint
        self.shutdown_timeout_s = shutdown_timeout_s
        self.description = description
        self._site = site
        self._factory = factory
        self._port: IListeningPort | None = None
        self._waiting: list[Deferred[IListeningPort]] = []
        self._failure: Failure | None = None

    def startService(self) -> None:
        super().startService()
        endpoint = self._endpoint or serverFromString(self._reactor, self.description)
        d = endpoint.listen(self._site)
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self._port = port
        address = port.getHost()
        self.log.info(
            "Kiwi listening on {host}:{port} ({description})",
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
            description=self.description,
        )
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(port)

    def _failed(self, failure: Failure) -> None:
        self._failure = failure
        self.log.critical(
            "cannot listen on {description}: {error}",
            description=self.description,
            error=failure.getErrorMessage(),
        )
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)
        # Without a listener Kiwi is useless: stop, and exit non-zero so
        # that service managers see the failure.
        reactor = self._reactor
        reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
        reactor.callWhenRunning(reactor.stop)

    def when_listening(self) -> Deferred[IListeningPort]:
        """
        Fire with the listening port once it is bound.
        """
        if self._port is not None:
            return succeed(self._port)
        if self._failure is not None:
            return fail(self._failure)
        d: Deferred[IListeningPort] = Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._port is not None:
            await maybeDeferred(self._port.stopListening)
            self._port = None
        self._factory.close_all(CLOSE_GOING_AWAY, "server shutting down")
        # Leave part of the budget for the sources to stop.
        await wait_closed(self._factory, self._reactor, self.shutdown_timeout_s / 2)
