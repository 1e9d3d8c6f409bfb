"""
The C{plugins} service: holds the plugins in force, runs authenticate calls
off the reactor, keeps the epoch clock that bounds every call, and is the
entry point a configuration reload uses to swap plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from kiwi.config import HooksConfig
from kiwi.logs import logger
from kiwi.plugins import REJECT, HttpRequest, IAuthenticator, IInterceptor, Outcome, PluginError, PluginSlot

Runner = Callable[..., "Deferred[Any]"]
"""
Runs a blocking callable off the reactor: C{runner(f, *args)} returns a
Deferred of C{f(*args)}.
"""

AUTHENTICATE_THREADS = 4
"""
How many authenticate calls may run at once (each in its own thread, each
with its own plugin instance).
"""


def inline_runner(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """
    A L{Runner} that calls C{f} at once, on the calling thread (for tests).
    """
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args)


class PluginHost(Service):
    """
    The plugins of the current configuration.

    @ivar intercept: The intercept plugin in force; the registry reads it
        for every event.
    @ivar authenticate: The authenticate plugin in force; the WebSocket
        protocol reads it for every handshake.
    @ivar failures: Plugin failures so far, by hook and reason (C{trap},
        C{timeout}, C{malformed}), for C{/health}.
    """

    log = logger()
    name = "plugins"

    def __init__(self, hooks: HooksConfig, reactor: Any, runner: Runner | None = None) -> None:
        self.intercept: PluginSlot[IInterceptor] = PluginSlot(hooks.interceptor)
        self.authenticate: PluginSlot[IAuthenticator] = PluginSlot(hooks.authenticator)
        self.hooks = hooks
        self.failures: dict[str, dict[str, int]] = {"intercept": {}, "authenticate": {}}
        self._reactor = reactor
        self._runner = runner
        self._pool: ThreadPool | None = None
        self._ticker: Any = None

    # Reload

    def apply(self, hooks: HooksConfig) -> None:
        """
        Put the plugins of C{hooks} (already loaded and checked) in force.

        This is the reload entry point. Both slots change at once, between
        two events: intercept calls run on the reactor thread, so none is in
        flight; authenticate calls in flight finish on the plugin they
        started with.
        """
        self.hooks = hooks
        self.intercept.swap(hooks.interceptor)
        self.authenticate.swap(hooks.authenticator)
        for hook, plugin in (("authenticate", hooks.authenticator), ("intercept", hooks.interceptor)):
            if plugin is not None:
                self._warn_foreign_imports(hook, plugin)
        if self.running:
            self._start_ticker()
        self.log.info(
            "plugins in force: authenticate {authenticate}, intercept {intercept}",
            authenticate=_describe(hooks.authenticator),
            intercept=_describe(hooks.interceptor),
        )

    # Service

    def startService(self) -> None:
        super().startService()
        self._start_ticker()
        for hook, plugin in (("authenticate", self.hooks.authenticator), ("intercept", self.hooks.interceptor)):
            if plugin is not None:
                self.log.info("{hook} plugin: {plugin}", hook=hook, plugin=_describe(plugin))
                self._warn_foreign_imports(hook, plugin)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
        return succeed(None)

    def _warn_foreign_imports(self, hook: str, plugin: Any) -> None:
        imports = getattr(plugin, "foreign_imports", ())
        if imports:
            self.log.warn(
                "the {hook} plugin {plugin} imports functions Kiwi gives only to components; "
                "calling them traps: {imports}",
                hook=hook,
                plugin=_describe(plugin),
                imports=", ".join(imports),
            )

    def _start_ticker(self) -> None:
        if self._ticker is not None or (self.hooks.interceptor is None and self.hooks.authenticator is None):
            return
        from kiwi.plugins.wasm import EpochTicker

        self._ticker = EpochTicker()
        self._ticker.start()

    # Calls

    def _run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self._runner is not None:
            return self._runner(f, *args)
        if self._pool is None:
            self._pool = ThreadPool(0, AUTHENTICATE_THREADS, name="kiwi-authenticate")
            self._pool.start()
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    async def run_authenticate(self, authenticator: IAuthenticator, request: HttpRequest, conn_id: str) -> Outcome:
        """
        Ask C{authenticator} about C{request} in the thread pool. Failures
        (trap, timeout, malformed result) are logged and count as
        L{REJECT}: Kiwi fails closed.
        """
        d = self._run(authenticator.thd_authenticate, request)
        # The epoch deadline stops the plugin's own code; this also bounds
        # a host call (an HTTP request) that hangs.
        d.addTimeout(self.hooks.authenticate_timeout_ms / 1000 + 1.0, self._reactor)
        try:
            outcome: Outcome = await d
        except PluginError as e:
            self.count_failure("authenticate", e.reason)
            self.log.error(
                "{conn_id} handshake refused: the authenticate plugin failed ({reason}): {error}",
                conn_id=conn_id,
                reason=e.reason,
                error=e.message,
            )
            return REJECT
        except Exception as e:
            reason = "timeout" if type(e).__name__ in ("TimeoutError", "CancelledError") else "error"
            self.count_failure("authenticate", reason)
            if reason == "timeout":
                self.log.error(
                    "{conn_id} handshake refused: the authenticate plugin did not answer in time",
                    conn_id=conn_id,
                )
            else:
                self.log.failure("{conn_id} handshake refused: the authenticate call failed", conn_id=conn_id)
            return REJECT
        return outcome

    def count_failure(self, hook: str, reason: str) -> int:
        """
        Count one failure of C{hook}; return how many of its failures there
        have been.
        """
        counts = self.failures[hook]
        counts[reason] = counts.get(reason, 0) + 1
        return sum(counts.values())

    def status(self) -> dict[str, Any]:
        """
        The C{plugins} part of C{/health}.
        """
        result: dict[str, Any] = {}
        for hook, plugin in (("authenticate", self.authenticate.current), ("intercept", self.intercept.current)):
            if plugin is not None:
                result[hook] = {"plugin": plugin.description, "failures": dict(self.failures[hook])}
        return result


def _describe(plugin: Any) -> str:
    return "none" if plugin is None else str(plugin.description)
