"""Consuming with manual acknowledgements, a run-time prefetch, and dead-lettering with a reason.

Single-threaded: the owner calls :meth:`Consumer.process_events` in its loop; handlers run inside
that call, on that thread. A handler gets a :class:`Delivery` and returns a :class:`Decision`
(``ACK``, ``REQUEUE``, ``dead_letter(reason)``) or None to settle it later with
:meth:`Consumer.settle` (from the same thread). See docs/queue.md.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from solstice.backoff import Backoff
from solstice.model import JobEvent, JobRequest
from solstice.queue import _amqp
from solstice.queue.batch import decode_events
from solstice.queue.codec import (
    MAX_REASON,
    CancelJob,
    decode_cancel,
    decode_request,
    mask_secrets,
)
from solstice.queue.connection import Connection, raise_if_mismatch
from solstice.queue.errors import BrokerError, InvalidMessage
from solstice.queue.publisher import Publisher
from solstice.queue.topology import Names, check_address, check_label, declare_topology

log = logging.getLogger(__name__)

M = TypeVar("M")

#: Header set on every message this layer dead-letters: why.
REASON_HEADER = "x-solstice-reason"
#: Headers recording where a dead-lettered message came from.
QUEUE_HEADER = "x-solstice-queue"
EXCHANGE_HEADER = "x-solstice-exchange"
ROUTING_KEY_HEADER = "x-solstice-routing-key"
TIME_HEADER = "x-solstice-dead-lettered-at"
#: Set (true) when secret values in the dead-lettered body were replaced by ***.
MASKED_HEADER = "x-solstice-secrets-masked"

JOBS = "jobs"
EVENTS = "events"
CONTROL = "control"


class Action(enum.Enum):
    ACK = "ack"  # done with it: RabbitMQ forgets it
    REQUEUE = "requeue"  # not now: back to its queue (possibly to another host), redelivered=True
    DEAD_LETTER = "dead-letter"  # never: to the dead-letter queue with the reason in a header


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""


ACK = Decision(Action.ACK)
REQUEUE = Decision(Action.REQUEUE)


def dead_letter(reason: str) -> Decision:
    return Decision(Action.DEAD_LETTER, reason)


@dataclass(frozen=True)
class Delivery(Generic[M]):
    """One message handed to a handler. Settle it exactly once (return a Decision or call
    Consumer.settle). ``redelivered``: RabbitMQ delivered it before (to this or another consumer)
    without an ack, e.g. the consumer's connection died; the job/event may already be recorded."""

    message: M
    subscription: str  # "jobs", "events" or "control"
    queue: str
    routing_key: str
    redelivered: bool
    delivery_tag: int
    generation: int  # of the consumer channel; a later channel makes this delivery void
    message_id: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)


Handler = Callable[[Delivery[M]], Decision | None]


@dataclass
class _Pending:
    method: Any
    properties: Any
    body: bytes
    queue: str


@dataclass
class _Subscription:
    name: str
    queues: tuple[str, ...]
    declare: Callable[[Any], None]
    decode: Callable[[bytes], Any]
    handler: Callable[[Delivery[Any]], Decision | None]
    prefetch: int
    tags: dict[str, str] = field(default_factory=dict)  # consumer tag -> queue
    qos: int = 0  # the prefetch the current consumers were started with
    unsettled: dict[int, _Pending] = field(default_factory=dict)
    over_budget: bool = False  # paused: a delivery came while `prefetch` were unsettled
    error_until: float = 0.0  # paused after a handler exception, until then (monotonic)
    errors: int = 0
    lost: bool = True  # queues must be (re)declared before consuming


class Consumer:
    """Consumes job, event and control queues on one channel of ``conn``.

    Prefetch is per subscription and is a bound on *unsettled* deliveries handed to its handler
    (0 pauses it: its consumers are cancelled, nothing is delivered). RabbitMQ applies a new
    prefetch only to new consumers, so changing it re-creates the subscription's consumers; with
    several queues (labels) each consumer could get ``prefetch``, so a delivery that would exceed
    it is returned to its queue and the subscription pauses until one is settled.
    """

    def __init__(self, conn: Connection, *, error_backoff: Backoff | None = None) -> None:
        self.conn = conn
        self.cfg = conn.cfg
        self.names = Names(conn.cfg)
        self.error_backoff = error_backoff or Backoff(initial=1.0, maximum=30.0)
        self._publisher = Publisher(conn, timeout=10.0)  # dead-letter copies
        self._subs: dict[str, _Subscription] = {}
        self._channel: Any = None
        self._epoch = -1  # connection epoch of _channel
        self._generation = 0  # counts consumer channels

    # --- subscribing ---------------------------------------------------------------------------

    def consume_jobs(
        self,
        labels: Iterable[str],
        handler: Handler[JobRequest],
        *,
        prefetch: int,
        active: Iterable[str] | None = None,
    ) -> None:
        """Consume the job queues of ``labels`` (declared here), at most ``prefetch`` unsettled;
        ``active``: only these labels' queues for now (see :meth:`set_job_labels`)."""
        labels = tuple(check_label(x) for x in labels)
        if not labels:
            raise ValueError("consume_jobs needs at least one label")
        consumed = labels if active is None else tuple(check_label(x) for x in active)
        self._add(
            _Subscription(
                name=JOBS,
                queues=tuple(self.names.job_queue(x) for x in consumed),
                declare=lambda ch: declare_topology(ch, self.cfg, labels),
                decode=decode_request,
                handler=handler,
                prefetch=_check_prefetch(prefetch),
            )
        )

    def consume_events(self, address: str, handler: Handler[JobEvent], *, prefetch: int = 100) -> None:
        """Consume the events queue of the poller at ``address`` (the reply_to it puts in its
        JobRequests), declared and bound here. The handler gets one event per call: a batch
        message (``jobevents.v1``) is handed over event by event, and settled once after the
        last: ACK when every call returned ACK, else the first other decision (the events
        before it come again, with the rest; EventSequencer drops them). A handler that settles
        later (returns None) must use :meth:`consume_event_batches`."""
        address = check_address(address)

        def per_event(delivery: Delivery[tuple[JobEvent, ...]]) -> Decision | None:
            events = delivery.message
            if len(events) == 1:
                return handler(dataclasses.replace(delivery, message=events[0]))  # type: ignore[arg-type]
            for event in events:
                decision = handler(dataclasses.replace(delivery, message=event))  # type: ignore[arg-type]
                if decision is None:
                    raise TypeError("an event handler must return a Decision for batch messages")
                if decision.action is not Action.ACK:
                    return decision
            return ACK

        self._consume_events(address, per_event, prefetch)

    def consume_event_batches(
        self,
        address: str,
        handler: Handler[tuple[JobEvent, ...]],
        *,
        prefetch: int = 20,
        expires: float | None = None,
    ) -> None:
        """Like :meth:`consume_events`, but the handler gets every message whole: the events of a
        ``jobevents.v1`` batch (or the one event of a ``jobevent.v1`` message) as a tuple, in order,
        and settles it once. ``expires`` (seconds): a short-lived address (``solstice submit``)
        whose queue RabbitMQ deletes once it had no consumer for that long (``x-expires``)."""
        self._consume_events(check_address(address), handler, prefetch, expires)

    def _consume_events(
        self,
        address: str,
        handler: Handler[tuple[JobEvent, ...]],
        prefetch: int,
        expires: float | None = None,
    ) -> None:
        expires_ms = None if expires is None else max(1000, int(expires * 1000))
        self._add(
            _Subscription(
                name=EVENTS,
                queues=(self.names.events_queue(address),),
                declare=lambda ch: declare_topology(
                    ch, self.cfg, addresses=(address,), events_expires_ms=expires_ms
                ),
                decode=decode_events,
                handler=handler,
                prefetch=_check_prefetch(prefetch),
            )
        )

    def consume_control(self, host: str, handler: Handler[CancelJob], *, prefetch: int = 20) -> None:
        """Consume this dispatcher host's control queue (every CancelJob reaches every host)."""
        host = check_address(host)
        self._add(
            _Subscription(
                name=CONTROL,
                queues=(self.names.control_queue(host),),
                declare=lambda ch: declare_topology(ch, self.cfg, control_host=host),
                decode=decode_cancel,
                handler=handler,
                prefetch=_check_prefetch(prefetch),
            )
        )

    def _add(self, sub: _Subscription) -> None:
        if sub.name in self._subs:
            raise ValueError(f"this consumer already consumes {sub.name}")
        self._subs[sub.name] = sub
        if self._current():
            self._guard(self._prepare, sub)

    # --- prefetch --------------------------------------------------------------------------------

    def set_prefetch(self, prefetch: int, subscription: str = JOBS) -> None:
        """At most ``prefetch`` unsettled deliveries for ``subscription``; 0 pauses it. Cheap when
        unchanged; may be called from inside a handler (e.g. before returning ACK)."""
        sub = self._sub(subscription)
        prefetch = _check_prefetch(prefetch)
        if prefetch == sub.prefetch:
            return
        sub.prefetch = prefetch
        if len(sub.unsettled) < prefetch:
            sub.over_budget = False
        if self._current():
            self._guard(self._sync, sub)

    def set_job_labels(self, labels: Iterable[str]) -> None:
        """Consume only these labels' job queues (declared by consume_jobs); the other queues keep
        their jobs for the hosts that can run them (the dispatcher's image check)."""
        sub = self._sub(JOBS)
        queues = tuple(self.names.job_queue(check_label(x)) for x in labels)
        if queues == sub.queues:
            return
        sub.queues = queues
        sub.qos = 0  # makes _sync restart the consumers on the new queues
        if self._current():
            self._guard(self._sync, sub)

    def prefetch(self, subscription: str = JOBS) -> int:
        return self._sub(subscription).prefetch

    def unsettled(self, subscription: str = JOBS) -> int:
        """Deliveries handed to the handler and not yet settled."""
        return len(self._sub(subscription).unsettled)

    def _sub(self, name: str) -> _Subscription:
        try:
            return self._subs[name]
        except KeyError:
            raise ValueError(f"this consumer does not consume {name}") from None

    # --- the loop --------------------------------------------------------------------------------

    def process_events(self, time_limit: float) -> None:
        """Run handlers for arriving messages for ``time_limit`` seconds (0: one non-blocking
        pass), reconnecting with backoff when the connection is lost. Call it from the thread
        that owns the connection, again and again. Raises only for what a reconnect cannot fix
        (TopologyMismatch, a refused login, a closed Connection)."""
        deadline = time.monotonic() + max(0.0, time_limit)
        while True:
            conn = self.conn.poll()
            if conn is not None:
                epoch = self.conn.epoch
                try:
                    self._ensure(conn)
                    self._tick()
                    wait = max(0.0, min(deadline - time.monotonic(), self._next_timer()))
                    conn.process_data_events(time_limit=wait)
                    self._tick()
                except _amqp.LOST as exc:
                    self.conn.mark_broken(exc, epoch)
            now = time.monotonic()
            if now >= deadline:
                return
            if not self.conn.is_open:
                time.sleep(min(deadline - now, max(0.01, self.conn.next_attempt_in())))

    def _current(self) -> bool:
        return (
            self.conn.is_open
            and self._channel is not None
            and self._epoch == self.conn.epoch
            and bool(self._channel.is_open)
        )

    def _ensure(self, conn: Any) -> None:
        """A consumer channel on ``conn`` (the open connection), every subscription set up."""
        if self._current():
            return
        channel = conn.channel()
        channel.add_on_cancel_callback(self._on_broker_cancel)
        self._channel, self._epoch = channel, self.conn.epoch
        self._generation += 1
        for sub in self._subs.values():
            if sub.unsettled:
                log.info(
                    "%d unsettled %s deliveries of the previous channel go back to their queues",
                    len(sub.unsettled),
                    sub.name,
                )
            sub.tags.clear()
            sub.unsettled.clear()
            sub.qos = 0
            sub.over_budget = False
            sub.lost = True
        for sub in self._subs.values():
            self._prepare(sub)

    def _prepare(self, sub: _Subscription) -> None:
        if sub.lost:
            try:
                sub.declare(self._channel)
            except _amqp.LOST as exc:
                raise_if_mismatch(exc)
                raise
            sub.lost = False
        self._sync(sub)

    def _sync(self, sub: _Subscription) -> None:
        """Start, restart (new prefetch) or stop the subscription's consumers to match its state."""
        active = sub.prefetch > 0 and not sub.over_budget and time.monotonic() >= sub.error_until
        if active and sub.tags and sub.qos == sub.prefetch:
            return
        for tag in list(sub.tags):
            # pika returns undispatched deliveries of this consumer to the queue (requeue)
            self._channel.basic_cancel(tag)
            del sub.tags[tag]
        sub.qos = 0
        if active:
            self._channel.basic_qos(prefetch_count=sub.prefetch)  # per consumer, for those below
            for queue in sub.queues:
                callback = functools.partial(self._on_message, sub, queue)
                tag = self._channel.basic_consume(queue=queue, on_message_callback=callback)
                sub.tags[tag] = queue
            sub.qos = sub.prefetch

    def _tick(self) -> None:
        now = time.monotonic()
        for sub in self._subs.values():
            if sub.error_until and now >= sub.error_until:
                sub.error_until = 0.0
            if sub.over_budget and len(sub.unsettled) < sub.prefetch:
                sub.over_budget = False
            self._prepare(sub)

    def _next_timer(self) -> float:
        now = time.monotonic()
        waits = [sub.error_until - now for sub in self._subs.values() if sub.error_until]
        return max(0.0, min(waits)) if waits else math.inf

    def _guard(self, fn: Callable[[_Subscription], None], sub: _Subscription) -> None:
        """Run a channel operation; a lost connection is noted, not raised (the loop reconnects)."""
        epoch = self._epoch
        try:
            fn(sub)
        except _amqp.LOST as exc:
            self.conn.mark_broken(exc, epoch)

    # --- deliveries ------------------------------------------------------------------------------

    def _on_message(
        self, sub: _Subscription, queue: str, channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        if channel is not self._channel or not self._current():
            return  # a delivery of a dead channel: RabbitMQ redelivers it
        pending = _Pending(method, properties, body, queue)
        tag = method.delivery_tag
        epoch = self._epoch
        try:
            try:
                message = sub.decode(body)
            except InvalidMessage as exc:
                self._dead_letter(pending, exc.reason)
                return
            if len(sub.unsettled) >= sub.prefetch:
                # Over the bound (several queues, or prefetch lowered): give it back, pause.
                channel.basic_nack(delivery_tag=tag, requeue=True)
                sub.over_budget = True
                self._sync(sub)
                return
        except _amqp.LOST as exc:
            self.conn.mark_broken(exc, epoch)
            return
        sub.unsettled[tag] = pending
        delivery: Delivery[Any] = Delivery(
            message=message,
            subscription=sub.name,
            queue=queue,
            routing_key=method.routing_key,
            redelivered=bool(method.redelivered),
            delivery_tag=tag,
            generation=self._generation,
            message_id=properties.message_id,
            headers=dict(properties.headers or {}),
        )
        try:
            decision = sub.handler(delivery)
        except Exception:
            sub.errors += 1
            pause = self.error_backoff.delay(sub.errors)
            log.exception(
                "the %s handler failed on message %s from %s; requeued, pausing %s for %.1fs",
                sub.name,
                properties.message_id,
                queue,
                sub.name,
                pause,
            )
            sub.error_until = time.monotonic() + pause
            if tag in sub.unsettled and self._current():
                self.settle(delivery, REQUEUE)
            if self._current():
                self._guard(self._sync, sub)
            return
        sub.errors = 0
        if decision is not None:
            self.settle(delivery, decision)

    def settle(self, delivery: Delivery[Any], decision: Decision) -> bool:
        """Ack, requeue or dead-letter ``delivery``. Returns False when its channel is gone (the
        connection was lost since): RabbitMQ has put it back and delivers it again, with
        redelivered=True. Raises ValueError when it was settled already."""
        sub = self._sub(delivery.subscription)
        if delivery.generation != self._generation or not self._current():
            log.info(
                "cannot settle %s message %s: its channel is gone; RabbitMQ redelivers it",
                delivery.subscription,
                delivery.message_id,
            )
            return False
        pending = sub.unsettled.pop(delivery.delivery_tag, None)
        if pending is None:
            raise ValueError(f"delivery {delivery.delivery_tag} ({delivery.message_id}) is already settled")
        epoch = self._epoch
        try:
            if decision.action is Action.ACK:
                self._channel.basic_ack(delivery_tag=delivery.delivery_tag)
            elif decision.action is Action.REQUEUE:
                self._channel.basic_nack(delivery_tag=delivery.delivery_tag, requeue=True)
            else:
                self._dead_letter(pending, decision.reason or "rejected by its consumer")
            if sub.over_budget and len(sub.unsettled) < sub.prefetch:
                sub.over_budget = False
                self._sync(sub)
        except _amqp.LOST as exc:
            self.conn.mark_broken(exc, epoch)
            return False
        return True

    def _dead_letter(self, pending: _Pending, reason: str) -> None:
        """Copy the message to the dead-letter exchange with the reason (confirmed), then ack it.
        If the copy fails, reject it: RabbitMQ dead-letters it via the queue's DLX (x-death
        header, no reason). A crash in between leaves it to be redelivered: at least once."""
        method, props = pending.method, pending.properties
        reason = reason[:MAX_REASON]
        log.warning(
            "dead-lettering message %s from %s: %s", props.message_id or "(no id)", pending.queue, reason
        )
        headers = dict(props.headers or {})
        headers.update(
            {
                REASON_HEADER: reason,
                QUEUE_HEADER: pending.queue,
                EXCHANGE_HEADER: method.exchange,
                ROUTING_KEY_HEADER: method.routing_key,
                TIME_HEADER: int(time.time()),
            }
        )
        body, masked = mask_secrets(pending.body)  # a dead letter outlives the job: no secrets
        if masked:
            headers[MASKED_HEADER] = True
        copy = _amqp.BasicProperties(
            content_type=props.content_type,
            content_encoding=props.content_encoding,
            headers=headers,
            delivery_mode=_amqp.PERSISTENT,
            correlation_id=props.correlation_id,
            reply_to=props.reply_to,
            message_id=props.message_id,
            timestamp=props.timestamp,
            type=props.type,
            app_id=props.app_id,
        )
        try:
            self._publisher.publish_once(self.cfg.dead_letter_exchange, method.routing_key, body, copy)
        except BrokerError as exc:
            if not self._current():
                return  # the connection is gone: the message comes back and we try again
            log.error(
                "cannot copy message to %s (%s); rejecting it instead", self.cfg.dead_letter_queue, exc
            )
            self._channel.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
            return
        self._channel.basic_ack(delivery_tag=method.delivery_tag)

    def _on_broker_cancel(self, frame: Any) -> None:
        tag = frame.method.consumer_tag
        for sub in self._subs.values():
            queue = sub.tags.pop(tag, None)
            if queue is not None:
                log.warning("RabbitMQ cancelled the consumer of %s (queue deleted?); re-declaring", queue)
                sub.lost = True
                sub.qos = 0

    def close(self) -> None:
        """Close the channel: unsettled deliveries go back to their queues."""
        self._publisher.close()
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            try:
                channel.close()
            except _amqp.LOST:
                pass


def _check_prefetch(prefetch: int) -> int:
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 0 <= prefetch <= 65535:
        raise ValueError(f"prefetch must be an integer from 0 to 65535, not {prefetch!r}")
    return prefetch
