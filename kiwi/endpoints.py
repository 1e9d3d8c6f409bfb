"""
The listening side: a strports endpoint, served by a service that reports
the port it bound and closes its clients on the way down.

TLS is Kiwi's own (see L{kiwi.tls}): C{server.tls} and C{ssl:} strports
descriptions both become a plain stream endpoint plus L{TLSSettings}, and
the listener wraps the site in Twisted's TLS layer with Kiwi's options
(TLS 1.2 or newer, modern ciphers, optional client certificates).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from kiwi.logs import logger
from kiwi.tls import ServerTLS, TLSSettings, load_server_options
from kiwi.ws import CLOSE_GOING_AWAY, KiwiServerFactory, wait_closed

SHUTDOWN_TIMEOUT_S = 10.0


def _exit_failed() -> None:
    import os

    os._exit(1)


def _split_strports(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split a strports description into positional and keyword arguments,
    honouring C{\\} escapes, as Twisted does.
    """
    fields: list[list[str]] = [[""]]
    escaped = False
    for char in description:
        if escaped:
            fields[-1][-1] += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append([""])
        elif char == "=" and len(fields[-1]) == 1:
            fields[-1].append("")
        else:
            fields[-1][-1] += char
    args = [f[0] for f in fields if len(f) == 1]
    kwargs = {f[0]: f[1] for f in fields if len(f) == 2}
    return args, kwargs


_SSL_KEYWORDS = ("port", "interface", "backlog", "privateKey", "certKey", "extraCertChain")


def split_tls(description: str, tls: TLSSettings | None = None) -> tuple[str, TLSSettings | None]:
    """
    The plain stream endpoint and the TLS settings of a listen description.

    An C{ssl:} description (Twisted's parameters C{port}, C{interface},
    C{backlog}, C{privateKey}, C{certKey}, C{extraCertChain}) becomes a
    C{tcp:} one plus L{TLSSettings}; any other description is returned as
    it is, with C{tls}.

    @raise ValueError: for C{ssl:} parameters Kiwi does not accept, with a
        message naming them.
    """
    kind, _, rest = description.partition(":")
    if kind.lower() != "ssl":
        return description, tls
    if tls is not None:
        raise ValueError("give either server.tls or an ssl: description, not both")
    args, kwargs = _split_strports(rest)
    for name in kwargs:
        if name in ("sslmethod", "dhParameters"):
            raise ValueError(
                f"the ssl: parameter {name} is not supported: Kiwi always uses TLS 1.2 or newer "
                "with ECDHE key exchange"
            )
        if name not in _SSL_KEYWORDS:
            raise ValueError(f"unknown ssl: parameter {name} (expected one of: {', '.join(_SSL_KEYWORDS)})")
    if len(args) > 1:
        raise ValueError("an ssl: description takes only the port as a positional field")
    port = kwargs.get("port", args[0] if args else None)
    if port is None:
        raise ValueError("an ssl: description needs a port")
    private_key = kwargs.get("privateKey", "server.pem")
    stream = "tcp:" + quoteStringArgument(port)
    for name in ("interface", "backlog"):
        if name in kwargs:
            stream += f":{name}=" + quoteStringArgument(kwargs[name])
    return stream, TLSSettings(
        cert=kwargs.get("certKey", private_key), key=private_key, chain=kwargs.get("extraCertChain")
    )


class ListenerService(Service):
    """
    Listens on C{description} and serves C{site}, over TLS when C{tls}
    is given (or the description is an C{ssl:} one).

    Stopping stops accepting, sends every client a close frame with code
    1001 (going away), and waits for the connections to end.

    @ivar tls: The TLS connection creator while listening with TLS; its
        C{update} swaps certificate and key for new connections.
    """

    log = logger()
    name = "listener"

    def __init__(
        self,
        reactor: Any,
        description: str,
        site: IProtocolFactory,
        factory: KiwiServerFactory,
        tls: TLSSettings | None = None,
        shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
        endpoint: IStreamServerEndpoint | None = None,
    ) -> None:
        """
        @param endpoint: Listen there instead of on C{description}'s stream
            endpoint (a worker adopting the supervisor's socket); TLS is
            still added here.
        """
        self._reactor = reactor
        self.shutdown_timeout_s = shutdown_timeout_s
        self._endpoint = endpoint
        self.description = description
        self._site = site
        self._factory = factory
        self._tls_settings = tls
        self.tls: ServerTLS | None = None
        self._port: IListeningPort | None = None
        self._waiting: list[Deferred[IListeningPort]] = []
        self._failure: Failure | None = None

    def startService(self) -> None:
        super().startService()
        try:
            stream, settings = split_tls(self.description, self._tls_settings)
            endpoint = self._endpoint or serverFromString(self._reactor, stream)
            factory = self._site
            if settings is not None:
                self.tls = ServerTLS(load_server_options(settings))
                factory = TLSMemoryBIOFactory(self.tls, False, factory, clock=self._reactor)
        except Exception:
            self._failed(Failure())
            return
        d = endpoint.listen(factory)
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self._port = port
        address = port.getHost()
        self.log.info(
            "Kiwi listening on {host}:{port} ({description}{tls})",
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
            description=self.description,
            tls=", TLS" if self.tls is not None else "",
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
