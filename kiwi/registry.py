"""
The subscription registry: sources by id, who subscribes to what, fan-out.

Fan-out encodes each event once and hands the same L{Frame} to every
subscriber; no subscriber's slowness is waited on here (a connection only
queues what it is given, see L{kiwi.ws}). Push subscribers, the common case,
get a whole batch in one call (a L{FrameRun}), so that the work per
subscriber does not grow with the number of events. With an intercept
plugin, each subscriber gets the plugin's decision: forwarded events still
share one frame, transformed ones get a frame of their own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

import attrs
from kiwi.logs import logger
from zope.interface import Attribute, Interface, implementer

from kiwi import protocol
from kiwi.config import SubscriberConfig
from kiwi.errors import ClientError
from kiwi.events import Event, KafkaEvent
from kiwi.flow import PullFlow
from kiwi.metrics import Stats
from kiwi.plugins import Forward, IInterceptor, PluginError, PluginSlot, TransformCounter, TransformKafka
from kiwi.protocol import LATEST, Mode, StartFrom
from kiwi.replay import IReplaySource, IReplayTarget, Replay
from kiwi.sources import IEventSink, ISource


@attrs.define(eq=False)
class Frame:
    """
    One encoded message shared by every subscriber it is sent to.

    @ivar payload: The UTF-8 JSON text of the message.
    @ivar event_source: For an event, the id of its source: a connection
        that cannot keep up may drop it (and counts it against that
        source). C{None} for replies and notices, which are never dropped.
    @ivar prepared: A transport's cache of the framed bytes, so that framing
        too happens once (see L{kiwi.ws}).
    """

    payload: bytes
    event_source: str | None = None
    prepared: Any = None


@attrs.define(eq=False)
class FrameRun:
    """
    Consecutive event frames of one source, handed as one to every push
    subscriber that takes them all.

    @ivar prepared: A transport's cache of all the frames framed and joined,
        so that a connection that can write at once does so with the same
        bytes as every other (see L{kiwi.ws}).
    """

    frames: list[Frame]
    prepared: Any = None


class ISubscriber(Interface):
    """
    One client connection, as the registry sees it.
    """

    conn_id: str = Attribute("A short id for logs.")
    auth_context: bytes | None = Attribute(
        "Bytes attached by authentication (an authenticate plugin's with-context), passed to the "
        "intercept plugin as auth; None when there are none."
    )
    plugin_addr: str | None = Attribute("The peer's address as ip:port, for the intercept plugin.")

    def send_frame(frame: Frame) -> None:
        """
        Queue C{frame} for the client; never blocks.
        """

    def send_frames(run: FrameRun) -> None:
        """
        Queue every frame of C{run}, in order, as L{send_frame} would.
        """


@attrs.define(eq=False)
class Subscription:
    """
    One connection's subscription to one source.

    @ivar pull: Flow state for pull mode; C{None} in push mode.
    @ivar replay: For a subscription that started in the past, its replay
        (which also filters the live stream after the switch-over).
    """

    source_id: str
    mode: Mode
    subscriber: ISubscriber
    pull: PullFlow[Frame] | None = None
    replay: Replay | None = None


@implementer(IEventSink)
class Registry:
    """
    Maps source ids to sources and subscriptions, and delivers events.
    """

    log = logger()

    def __init__(
        self,
        subscriber_config: SubscriberConfig = SubscriberConfig(),
        stats: Stats | None = None,
        intercept: PluginSlot[IInterceptor] | None = None,
        count_failure: Callable[[str, str], int] | None = None,
    ) -> None:
        self.subscriber_config = subscriber_config
        self.stats = stats if stats is not None else Stats()
        self.intercept: PluginSlot[IInterceptor] = intercept if intercept is not None else PluginSlot()
        # Set by the service to feed kiwi_plugin_call_seconds.
        self.time_intercept: Callable[[float], None] = lambda seconds: None
        self._count_failure = count_failure
        self._sources: dict[str, ISource] = {}
        self._by_source: dict[str, dict[ISubscriber, Subscription]] = {}
        self._by_subscriber: dict[ISubscriber, dict[str, Subscription]] = {}

    @property
    def events_in(self) -> Counter[str]:
        """
        Events received per source (the same counter as C{/metrics}).
        """
        return self.stats.received

    @property
    def events_out(self) -> Counter[str]:
        """
        Events handed to subscribers per source, less those a slow
        connection dropped (the same counter as C{/metrics}).
        """
        return self.stats.delivered

    # Sources

    def add_source(self, source: ISource) -> None:
        """
        Make C{source} available for subscription.
        """
        self._sources[source.source_id] = source
        self._by_source.setdefault(source.source_id, {})

    def remove_source(self, source_id: str, message: str) -> None:
        """
        Withdraw a source, closing its subscriptions with C{message}.
        """
        self.close_source(source_id, message)
        self._sources.pop(source_id, None)
        self._by_source.pop(source_id, None)

    def sources(self) -> list[ISource]:
        """
        The sources, in the order they were added.
        """
        return list(self._sources.values())

    def subscriber_count(self, source_id: str) -> int:
        """
        How many connections subscribe to C{source_id}.
        """
        return len(self._by_source.get(source_id, ()))

    def subscription_counts(self) -> dict[tuple[str, str], int]:
        """
        Subscriptions per (source id, mode), for metrics.
        """
        counts: dict[tuple[str, str], int] = {}
        for source_id, subscriptions in self._by_source.items():
            for subscription in subscriptions.values():
                key = (source_id, subscription.mode)
                counts[key] = counts.get(key, 0) + 1
        return counts

    # Commands

    def subscribe(self, subscriber: ISubscriber, source_id: str, mode: Mode, start: StartFrom = LATEST) -> None:
        """
        Subscribe C{subscriber} to a source, from C{start} (a replay
        begins in the next reactor turn, after the reply went out).

        @raise ClientError: if the source does not exist, has ended, the
            subscriber is already subscribed to it, has as many
            subscriptions as C{max_subscriptions} allows, or it cannot start
            from C{start}.
        """
        source = self._sources.get(source_id)
        if source is None:
            raise ClientError("source not found")
        if source.finished:
            raise ClientError("source has ended")
        mine = self._by_subscriber.setdefault(subscriber, {})
        if source_id in mine:
            raise ClientError("already subscribed to this source")
        limit = self.subscriber_config.max_subscriptions
        if len(mine) >= limit:
            raise ClientError(f"too many subscriptions (at most {limit} per connection)")
        if not start.is_latest:
            _check_replay(source, start, self.subscriber_config.max_replay_events)
        pull = None
        if mode == "pull":
            config = self.subscriber_config
            pull = PullFlow[Frame](config.buffer_capacity, config.lag_notice_threshold)
        subscription = Subscription(source_id, mode, subscriber, pull)
        mine[source_id] = subscription
        self._by_source[source_id][subscriber] = subscription
        if not start.is_latest:
            subscription.replay = IReplaySource(source).open_replay(
                start, _ReplayTarget(self, subscription), self.subscriber_config.max_replay_events
            )
        source.subscriber_added()

    def unsubscribe(self, subscriber: ISubscriber, source_id: str) -> None:
        """
        End C{subscriber}'s subscription to a source.

        @raise ClientError: if there is no such subscription.
        """
        subscription = self._by_subscriber.get(subscriber, {}).pop(source_id, None)
        if subscription is None:
            raise ClientError("not subscribed to this source")
        self._by_source.get(source_id, {}).pop(subscriber, None)
        _end(subscription)

    def request(self, subscriber: ISubscriber, source_id: str, n: int) -> int:
        """
        Add C{n} credits to a pull subscription, delivering buffered events.

        @return: The credits still outstanding.
        @raise ClientError: if there is no such pull subscription.
        """
        subscription = self._by_subscriber.get(subscriber, {}).get(source_id)
        if subscription is None:
            raise ClientError("not subscribed to this source")
        if subscription.pull is None:
            raise ClientError("subscription is in push mode; REQUEST applies to pull mode only")
        remaining = subscription.pull.request(n, lambda frame: self._send(subscription, frame))
        if subscription.replay is not None:
            subscription.replay.wake()
        return remaining

    def subscriptions_of(self, subscriber: ISubscriber) -> list[str]:
        """
        The source ids C{subscriber} is subscribed to.
        """
        return list(self._by_subscriber.get(subscriber, {}))

    def end_subscription(self, subscriber: ISubscriber, source_id: str, message: str) -> None:
        """
        End one subscription from the server side, telling the subscriber
        with a C{SUBSCRIPTION_CLOSED} notice.
        """
        if self._by_subscriber.get(subscriber, {}).pop(source_id, None) is None:
            return
        self._by_source.get(source_id, {}).pop(subscriber, None)
        subscriber.send_frame(Frame(protocol.subscription_closed(source_id, message)))

    def disconnect(self, subscriber: ISubscriber) -> None:
        """
        Forget every subscription of a connection that went away.
        """
        for source_id, subscription in self._by_subscriber.pop(subscriber, {}).items():
            self._by_source.get(source_id, {}).pop(subscriber, None)
            _end(subscription)

    # IEventSink

    def publish(self, source_id: str, events: Sequence[Event]) -> None:
        self.stats.received[source_id] += len(events)
        subscriptions = self._by_source.get(source_id)
        if not subscriptions:
            return
        targets = list(subscriptions.values())
        interceptor = self.intercept.current
        if interceptor is not None:
            self._publish_intercepted(interceptor, source_id, targets, events)
            return
        frames = [Frame(protocol.encode_result(event), source_id) for event in events]
        # Push subscribers that take every event get the whole run in one
        # call; pull subscribers and those still replaying decide per event.
        run = FrameRun(frames)
        takes_all = 0
        per_event = []
        for subscription in targets:
            if subscription.pull is None and subscription.replay is None:
                takes_all += 1
                subscription.subscriber.send_frames(run)
            else:
                per_event.append(subscription)
        self.stats.delivered[source_id] += takes_all * len(frames)
        if not per_event:
            return
        for event, frame in zip(events, frames):
            for subscription in per_event:
                replay = subscription.replay
                if replay is not None and isinstance(event, KafkaEvent) and not replay.admit(event, frame):
                    continue
                self._deliver(subscription, frame)

    def _deliver(self, subscription: Subscription, frame: Frame) -> None:
        """
        Hand a live event to a subscription: sent now in push mode; spent,
        buffered or dropped by the credit rules in pull mode.
        """
        if subscription.pull is None:
            self._send(subscription, frame)
        else:
            reason = subscription.pull.offer(
                frame,
                lambda f: self._send(subscription, f),
                lambda count: self._notify_lag(subscription, count),
            )
            if reason is not None:
                self.stats.dropped[subscription.source_id, reason] += 1

    def _send(self, subscription: Subscription, frame: Frame) -> None:
        self.stats.delivered[subscription.source_id] += 1
        subscription.subscriber.send_frame(frame)

    def _send_notice(self, subscription: Subscription, count: int) -> None:
        subscription.subscriber.send_frame(Frame(protocol.lag_notice(subscription.source_id, count)))

    def _publish_intercepted(
        self, interceptor: IInterceptor, source_id: str, targets: list[Subscription], events: Sequence[Event]
    ) -> None:
        """
        Deliver C{events} as the intercept plugin decides for each
        subscriber. A failed call drops that one event for that subscriber.
        """
        for event in events:
            shared: Frame | None = None
            for subscription in targets:
                subscriber = subscription.subscriber
                try:
                    started = perf_counter()
                    action = interceptor.intercept(event, subscriber.auth_context, subscriber.plugin_addr)
                    self.time_intercept(perf_counter() - started)
                    if isinstance(action, Forward):
                        if shared is None:
                            shared = Frame(protocol.encode_result(event), source_id)
                        frame = shared
                    elif isinstance(action, (TransformKafka, TransformCounter)):
                        frame = Frame(protocol.encode_result(action.apply(event)), source_id)
                    else:
                        continue
                except PluginError as e:
                    self._intercept_failed(subscription, e.reason, e.message)
                    continue
                except Exception:
                    self.log.failure(
                        "{conn_id} intercepting an event of {source_id} failed",
                        conn_id=subscriber.conn_id,
                        source_id=source_id,
                    )
                    self._intercept_failed(subscription, "error", "unexpected error")
                    continue
                replay = subscription.replay
                if replay is not None and isinstance(event, KafkaEvent) and not replay.admit(event, frame):
                    continue
                self._deliver(subscription, frame)

    def _lag_notifier(self, subscription: Subscription) -> Callable[[int], None]:
        return lambda count: self._notify_lag(subscription, count)

    def _intercept_failed(self, subscription: Subscription, reason: str, message: str) -> None:
        total = self._count_failure("intercept", reason) if self._count_failure is not None else 1
        # Log the 1st, 2nd, 4th, 8th... failure: a plugin that fails on
        # every event must not flood the log.
        if total & (total - 1) == 0:
            self.log.error(
                "{conn_id} dropped an event of {source_id}: the intercept plugin failed ({reason}): {error} "
                "({total} intercept failures so far)",
                conn_id=subscription.subscriber.conn_id,
                source_id=subscription.source_id,
                reason=reason,
                error=message,
                total=total,
            )

    def _notify_lag(self, subscription: Subscription, count: int) -> None:
        self.log.debug(
            "{conn_id} lagging on {source_id} by {count}",
            conn_id=subscription.subscriber.conn_id,
            source_id=subscription.source_id,
            count=count,
        )
        self.stats.lag_notices[subscription.source_id] += 1
        subscription.subscriber.send_frame(Frame(protocol.lag_notice(subscription.source_id, count)))

    def close_source(self, source_id: str, message: str) -> None:
        subscriptions = self._by_source.get(source_id)
        if not subscriptions:
            return
        frame = Frame(protocol.subscription_closed(source_id, message))
        for subscriber, subscription in list(subscriptions.items()):
            self._by_subscriber.get(subscriber, {}).pop(source_id, None)
            _end(subscription)
            subscriber.send_frame(frame)
        subscriptions.clear()


def _end(subscription: Subscription) -> None:
    if subscription.replay is not None:
        subscription.replay.cancel()
        subscription.replay = None


def _check_replay(source: ISource, start: StartFrom, max_events: int) -> None:
    """
    @raise ClientError: if C{source} cannot start from C{start}.
    """
    if not IReplaySource.providedBy(source):
        raise ClientError(f"from is supported for Kafka sources only; a {source.source_type} source starts at latest")
    if max_events == 0:
        raise ClientError("replay is disabled on this server (subscriber.max_replay_events is 0)")
    known = IReplaySource(source).partitions
    if start.kind == "offsets" and known:
        unknown = sorted(p for p, _ in start.offsets if p not in known)
        if unknown:
            raise ClientError(f"from.offsets names partition {unknown[0]}, which the topic does not have")


@implementer(IReplayTarget)
class _ReplayTarget:
    """
    One subscription, as its replay sees it.
    """

    def __init__(self, registry: Registry, subscription: Subscription) -> None:
        self._registry = registry
        self._subscription = subscription

    def emit(self, event: KafkaEvent) -> None:
        subscription = self._subscription
        if subscription.pull is not None:
            subscription.pull.credits -= 1
            subscription.pull.missed = 0
        self._registry._send(subscription, Frame(protocol.encode_result(event), subscription.source_id))

    def pass_live(self, frame: Any) -> None:
        self._registry._deliver(self._subscription, frame)

    def credit(self) -> int | None:
        pull = self._subscription.pull
        return None if pull is None else pull.credits

    def busy(self) -> bool:
        subscriber = self._subscription.subscriber
        pending = getattr(subscriber, "pending_bytes", 0)
        return bool(pending > self._registry.subscriber_config.max_pending_bytes // 2)

    def lag(self, count: int) -> None:
        self._registry._send_notice(self._subscription, count)
