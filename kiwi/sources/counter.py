"""
The counter source: C{min, min+1, ...}, one value every C{interval_ms}.

Useful for demos and tests. With C{lazy} it starts counting on its first
subscription; with C{max} it ends after that value, closing its
subscriptions and refusing new ones.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from kiwi.logs import logger
from zope.interface import implementer

from kiwi.config import CounterSourceConfig
from kiwi.events import CounterEvent
from kiwi.sources import IEventSink, ISource


@implementer(ISource)
class CounterSource(Service):
    """
    A counter, run by a L{LoopingCall} on C{clock}.
    """

    log = logger()
    source_type = "counter"

    def __init__(self, config: CounterSourceConfig, sink: IEventSink, clock: IReactorTime) -> None:
        self.config = config
        self.source_id = config.id
        self.name = f"source:{config.id}"
        self.finished = False
        self._sink = sink
        self._clock = clock
        self._next = config.min
        self._loop: LoopingCall | None = None
        self._pending_start: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        if not self.config.lazy:
            self._start()

    def stopService(self) -> None:
        super().stopService()
        if self._pending_start is not None and self._pending_start.active():
            self._pending_start.cancel()
        self._pending_start = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        # A stopped counter can be started again, and goes on counting.
        self._loop = None

    def subscriber_added(self) -> None:
        """
        Start a lazy counter on its first subscription, after the reply to
        that subscription has gone out.
        """
        if self.running and self._loop is None and self._pending_start is None:
            self._pending_start = self._clock.callLater(0, self._start)

    def _start(self) -> None:
        self._pending_start = None
        if self._loop is not None or self.finished:
            return
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self.config.interval_ms / 1000.0, now=True)

    def _tick(self) -> None:
        count = self._next
        self._next += 1
        self._sink.publish(self.source_id, [CounterEvent(self.source_id, count)])
        if self.config.max is not None and count >= self.config.max:
            self.finished = True
            assert self._loop is not None
            self._loop.stop()
            self.log.info("{source_id} reached its maximum {count}", source_id=self.source_id, count=count)
            self._sink.close_source(self.source_id, f"source ended: counter reached its maximum {count}")

    def status(self) -> dict[str, Any]:
        if self.finished:
            state = "ended"
        elif self._loop is not None and self._loop.running:
            state = "running"
        elif self.running:
            state = "waiting for first subscriber"
        else:
            state = "stopped"
        return {"type": "counter", "state": state, "next": self._next}
