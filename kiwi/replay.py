"""
Replay: a Kafka subscription that starts in the past (C{from} in
C{SUBSCRIBE}, see C{docs/protocol.md}).

Each replaying subscription gets its own short-lived consumer, driven from
its own one-thread pool, so reading history never slows the live stream or
other subscribers. The switch to the live stream happens per partition,
with no gap and no duplicate:

  - From the moment the subscription exists, the live events of every
    partition still being replayed are held back for it (not sent).
  - A partition's switch-over point is the offset of the first live event
    held back for it or, while there is none, the offset the live stream
    will publish next (L{IReplaySource.live_positions}).
  - The replay consumer delivers that partition's records below the
    switch-over point; once it has reached it, the held-back live events
    from there on are sent and the partition follows the live stream.
  - Live events below what the replay already delivered are dropped
    (deduplication by partition and offset).

Replay honours pull credits and the connection's backpressure, and it is
bounded by C{subscriber.max_replay_events}: it delivers at most that many
past events, and holds back at most that many live events. When either
bound is reached, the partitions still replaying skip to the live stream
and the subscriber gets a C{LAG} notice counting what it skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from zope.interface import Attribute, Interface

from kiwi.events import KafkaEvent
from kiwi.logs import logger
from kiwi.protocol import StartFrom

T = TypeVar("T")

REPLAY_BATCH = 500
"""
The most past records one poll of a replay consumer brings back.
"""

REPLAY_TURN = 50
"""
The most past records delivered in one reactor turn: between chunks the
reactor serves the live stream and other connections.
"""

POLL_TIMEOUT_S = 0.1
METADATA_TIMEOUT_S = 5.0
RETRY_DELAY_S = 1.0
PACE_DELAY_S = 0.02
MAX_ATTEMPTS = 10
"""
How many times a replay asks an unreachable cluster before giving up.
"""


class IReplayReader(Interface):
    """
    The consumer calls a replay needs; all run in the replay's own thread.
    """

    def thd_open() -> None:
        """
        Create the consumer.
        """

    def thd_partitions(timeout: float) -> list[int] | None:
        """
        The topic's partitions, or C{None} if it does not exist.
        """

    def thd_watermarks(partitions: list[int], timeout: float) -> dict[int, tuple[int, int]]:
        """
        Each partition's first retained offset and end offset.
        """

    def thd_offsets_for_times(timestamp: int, partitions: list[int], timeout: float) -> dict[int, int]:
        """
        Each partition's first offset at or after C{timestamp} (C{-1}: none).
        """

    def thd_assign(offsets: Mapping[int, int]) -> None:
        """
        Read these partitions from these offsets.
        """

    def thd_consume(max_records: int, timeout: float) -> Any:
        """
        Poll for a batch (with C{events}) of at most C{max_records}.
        """

    def thd_positions(partitions: list[int]) -> dict[int, int]:
        """
        The next offset the consumer will read in each partition.
        """

    def thd_close() -> None:
        """
        Close the consumer.
        """


class IReplayTarget(Interface):
    """
    The subscription a replay delivers to, as the registry exposes it.
    """

    def emit(event: KafkaEvent) -> None:
        """
        Send one past event (in pull mode, spending one credit).
        """

    def pass_live(frame: Any) -> None:
        """
        Send a held-back live event as the live stream would have.
        """

    def credit() -> int | None:
        """
        Events the subscriber may receive now; C{None} in push mode.
        """

    def busy() -> bool:
        """
        Whether the connection has too much waiting to be written.
        """

    def lag(count: int) -> None:
        """
        Tell the subscriber it skipped C{count} events.
        """


class IReplaySource(Interface):
    """
    A source whose subscriptions can start in the past.
    """

    partitions: list[int] = Attribute("The partitions the live stream reads (empty if unknown yet).")

    def open_replay(start: StartFrom, target: IReplayTarget, max_events: int) -> "Replay":
        """
        Start replaying from C{start} to C{target}; the replay begins in a
        later reactor turn, after the reply to C{SUBSCRIBE} went out.
        """


class Replay:
    """
    One subscription's read of history and its switch to the live stream.

    @ivar state: C{starting}, C{replaying}, C{live} (replay over) or
        C{cancelled}.
    @ivar delivered: Past events delivered so far.
    """

    log = logger()

    def __init__(
        self,
        source_id: str,
        start: StartFrom,
        reader: IReplayReader,
        run_in_thread: Callable[..., Deferred[Any]],
        clock: IReactorTime,
        live_positions: Callable[[], Mapping[int, int]],
        target: IReplayTarget,
        max_events: int,
        finished: Callable[[Replay], None] = lambda replay: None,
    ) -> None:
        self.source_id = source_id
        self.start_from = start
        self.state = "starting"
        self.delivered = 0
        self._reader = reader
        self._call = run_in_thread
        self._clock = clock
        self._live_positions = live_positions
        self._target = target
        self._max_events = max_events
        self._finished = finished
        # Partitions still replaying; None until the start is resolved
        # (then every partition the start can name counts as replaying).
        self._pending: set[int] | None = None
        self._held: dict[int, deque[tuple[int, Any]]] = {}
        self._held_count = 0
        self._next: dict[int, int] = {}
        self._high: dict[int, int] = {}
        self._floor: dict[int, int] = {}
        self._wake: Deferred[None] | None = None
        self._run: Deferred[None] | None = None
        self._overflowed = False

    # The reactor side: the registry calls these.

    def begin(self) -> None:
        """
        Start the replay (call after the C{SUBSCRIBE_OK} was sent).
        """
        if self.state == "cancelled":
            self._finished(self)
            return
        self._run = Deferred.fromCoroutine(self._replay())
        self._run.addErrback(self._crashed)

    def admit(self, event: KafkaEvent, frame: T) -> bool:
        """
        A live event of the source: C{True} if the subscription should get
        it now as usual, C{False} if the replay holds it back or already
        delivered it.
        """
        partition = event.partition
        if self.state in ("starting", "replaying") and self._replaying(partition):
            held = self._held.setdefault(partition, deque())
            held.append((event.offset, frame))
            self._held_count += 1
            if self._held_count > self._max_events:
                if not self._overflowed:
                    # Too much live traffic for a replay this slow: give up
                    # on the rest of the history rather than hold more.
                    self._overflowed = True
                    self._wake_up()
                else:
                    # Still waiting to begin: stay within the bound. What
                    # is let go here is counted as skipped at the end.
                    held.popleft()
                    self._held_count -= 1
            return False
        if self._floor:
            floor = self._floor.get(partition)
            if floor is not None:
                if event.offset < floor:
                    return False
                del self._floor[partition]
        return True

    def wake(self) -> None:
        """
        The subscriber received credit: carry on if the replay waited.
        """
        self._wake_up()

    def cancel(self) -> Deferred[None]:
        """
        Stop replaying (the subscription ended); fires once the replay
        consumer is closed.
        """
        if self.state in ("starting", "replaying"):
            self.state = "cancelled"
        self._held.clear()
        self._wake_up()
        if self._run is None:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        done: Deferred[None] = Deferred()
        self._run.addBoth(lambda _: done.callback(None))
        return done

    # Internals

    def _replaying(self, partition: int) -> bool:
        if self._pending is None:
            if self.start_from.kind == "offsets":
                return partition in dict(self.start_from.offsets)
            return True
        return partition in self._pending

    def _wake_up(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.called:
            wake.callback(None)

    @property
    def _stopping(self) -> bool:
        return self.state == "cancelled"

    def _switch_point(self, partition: int) -> int:
        held = self._held.get(partition)
        if held:
            return held[0][0]
        live = self._live_positions().get(partition)
        if live is not None and live >= 0:
            return live
        return self._high.get(partition, 0)

    async def _replay(self) -> None:
        try:
            await self._call(self._reader.thd_open)
            starts = await self._resolve()
            if starts is not None and not self._stopping:
                await self._read(starts)
        finally:
            try:
                await self._call(self._reader.thd_close)
            except Exception:
                self.log.failure("{source_id} failed to close a replay consumer", source_id=self.source_id)
            self._finished(self)

    async def _with_retries(self, f: Callable[..., Any], *args: Any) -> Any:
        from kiwi.sources.kafka import BrokerUnavailable

        attempt = 0
        while True:
            try:
                return await self._call(f, *args)
            except BrokerUnavailable as e:
                attempt += 1
                if attempt >= MAX_ATTEMPTS or self._stopping or self._overflowed:
                    raise
                self.log.warn(
                    "{source_id} replay cannot reach Kafka, retrying: {error}", source_id=self.source_id, error=str(e)
                )
                await deferLater(self._clock, RETRY_DELAY_S, lambda: None)

    async def _resolve(self) -> dict[int, int] | None:
        """
        Turn C{from} into a start offset per partition.
        """
        from kiwi.sources.kafka import BrokerUnavailable

        try:
            partitions = await self._with_retries(self._reader.thd_partitions, METADATA_TIMEOUT_S)
            if partitions is None:
                partitions = []
            marks = await self._with_retries(self._reader.thd_watermarks, partitions, METADATA_TIMEOUT_S)
            start = self.start_from
            if start.kind == "earliest":
                starts = {p: low for p, (low, high) in marks.items()}
            elif start.kind == "timestamp":
                assert start.timestamp is not None
                found = await self._with_retries(
                    self._reader.thd_offsets_for_times, start.timestamp, partitions, METADATA_TIMEOUT_S
                )
                starts = {p: found[p] if found.get(p, -1) >= 0 else high for p, (low, high) in marks.items()}
            else:
                wanted = dict(start.offsets)
                starts = {p: min(max(wanted[p], low), high) for p, (low, high) in marks.items() if p in wanted}
        except BrokerUnavailable as e:
            self.log.error(
                "{source_id} replay gave up: {error}", source_id=self.source_id, error=str(e)
            )
            self._finish(lag=False)
            return None
        if self._stopping:
            return None
        self._high = {p: high for p, (low, high) in marks.items()}
        self._next = dict(starts)
        self._pending = set(starts)
        self.state = "replaying"
        # Live events held for partitions the replay does not cover.
        for partition in list(self._held):
            if partition not in self._pending:
                self._release(partition)
        self._settle({})
        return starts

    def _settle(self, positions: Mapping[int, int]) -> None:
        """
        Switch every partition that reached its switch-over point.
        """
        assert self._pending is not None
        for partition in sorted(self._pending):
            point = self._switch_point(partition)
            position = positions.get(partition, -1)
            if position >= 0:
                # Records below the position that were never returned
                # (compacted, deleted, transaction markers) do not exist.
                self._next[partition] = max(self._next[partition], min(position, point))
            if self._next[partition] >= point:
                self._pending.discard(partition)
                self._floor[partition] = self._next[partition]
                self._release(partition)

    def _release(self, partition: int) -> None:
        held = self._held.pop(partition, deque())
        self._held_count -= len(held)
        floor = self._floor.get(partition)
        for offset, frame in held:
            if floor is not None and offset < floor:
                continue
            self._target.pass_live(frame)
            floor = offset + 1
        if floor is not None:
            self._floor[partition] = floor

    async def _read(self, starts: Mapping[int, int]) -> None:
        assert self._pending is not None
        assign = {p: starts[p] for p in self._pending}
        if assign:
            await self._call(self._reader.thd_assign, assign)
        while self._pending and not self._stopping:
            if self.delivered >= self._max_events or self._overflowed:
                self._finish(lag=True)
                return
            room = self._max_events - self.delivered
            credit = self._target.credit()
            if credit is not None:
                room = min(room, credit)
            if room <= 0 or self._target.busy():
                await self._pause(credit is not None and credit <= 0)
                continue
            batch = await self._call(self._reader.thd_consume, min(REPLAY_BATCH, room), POLL_TIMEOUT_S)
            positions = await self._call(self._reader.thd_positions, sorted(self._pending))
            if self._stopping:
                return
            for index, event in enumerate(batch.events):
                if index and index % REPLAY_TURN == 0:
                    # Let the reactor serve the live stream between chunks.
                    await deferLater(self._clock, 0, lambda: None)
                    if self._stopping:
                        return
                partition = event.partition
                if partition not in self._pending or event.offset < self._next[partition]:
                    continue
                if event.offset >= self._switch_point(partition):
                    continue
                self._next[partition] = event.offset + 1
                self.delivered += 1
                self._target.emit(event)
            if self._pending is None or self.state != "replaying":
                return
            self._settle(positions)
        if not self._stopping:
            self._finish(lag=False)

    async def _pause(self, for_credit: bool) -> None:
        """
        Wait for credit (pull mode) or for the connection to drain.
        """
        self._wake = Deferred()
        if for_credit:
            await self._wake
            return
        timer = self._clock.callLater(PACE_DELAY_S, self._wake_up)
        try:
            await self._wake
        finally:
            if timer.active():
                timer.cancel()

    def _finish(self, lag: bool) -> None:
        """
        Switch whatever still replays to the live stream, telling the
        subscriber how much it skipped when C{lag}.
        """
        skipped = 0
        for partition in sorted(self._pending or ()):
            point = self._switch_point(partition)
            skipped += max(0, point - self._next.get(partition, point))
            self._next[partition] = max(self._next.get(partition, point), point)
            self._floor[partition] = self._next[partition]
        self._pending = set()
        self.state = "live"
        for partition in list(self._held):
            self._release(partition)
        if lag and skipped:
            self.log.info(
                "{source_id} replay stopped after {count} events, skipping {skipped}",
                source_id=self.source_id,
                count=self.delivered,
                skipped=skipped,
            )
            self._target.lag(skipped)

    def _crashed(self, failure: Any) -> None:
        if failure.check(CancelledError):
            return
        self.log.failure("{source_id} replay failed", failure, source_id=self.source_id)
        if self.state in ("starting", "replaying"):
            # The subscriber is told how much history it did not get.
            self._finish(lag=True)
