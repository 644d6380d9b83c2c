"""A job process's event sink: buffers events and publishes them in batches from its own thread.

``emit`` only appends to a buffer (a job's output is never slowed by a broker round trip unless the
buffer is full); a background thread with its own Connection (pika is single-threaded) takes up
to ``max_events`` at a time, publishes them as one ``jobevents.v1`` message and waits for the
confirm, then takes the next. A batch goes out when it is full, when its oldest event has waited
``flush_interval`` (100 ms), at once for a JOB_FINISHED, and on ``flush``/``close``.

Nothing is dropped while the broker is away: a batch is retried (same events, same seqs) across
reconnects until it is confirmed, so the consumer may see a batch twice but never misses one
(EventSequencer drops the duplicates). When the buffer holds ``max_buffered`` events or
``max_buffered_bytes`` of them, ``emit`` waits: the job's output then slows down instead of memory
growing without bound (a step printing long lines fills bytes long before it fills the count).

One exception: when nobody listens at ``reply_to`` (RabbitMQ returns the message as unroutable:
the poller's queue was deleted), the batch is dropped with a warning, since retrying cannot
help, and the job goes on; ``dropped`` counts such events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from solstice.backoff import Backoff
from solstice.config import BrokerConfig
from solstice.model import EventKind, JobEvent, JobRequest
from solstice.queue.batch import approximate_size, encode_documents
from solstice.queue.codec import event_document
from solstice.queue.connection import Connection
from solstice.queue.errors import BrokerError, Unroutable
from solstice.queue.publisher import Publisher
from solstice.queue.topology import check_address

log = logging.getLogger(__name__)

#: Seconds of silence after which the publishing thread lets pika answer heartbeats.
IDLE_TICK = 1.0


class EventDeliveryError(BrokerError):
    """``close`` could not get every event confirmed by RabbitMQ in time."""


class BatchingEventSink:
    """A ``model.EventSink`` publishing to the poller at ``reply_to`` in confirmed batches."""

    def __init__(
        self,
        cfg: BrokerConfig,
        reply_to: str,
        *,
        name: str = "solstice-job",
        max_events: int = 1000,
        max_bytes: int = 512 * 1024,
        flush_interval: float = 0.1,
        max_buffered: int = 50_000,
        max_buffered_bytes: int = 16 * 1024 * 1024,
        attempt_timeout: float = 10.0,
        backoff: Backoff | None = None,
        connection: Callable[[], Connection] | None = None,
    ) -> None:
        self.reply_to = check_address(reply_to)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.flush_interval = flush_interval
        self.max_buffered = max_buffered
        self.max_buffered_bytes = max_buffered_bytes
        self._buffered_bytes = 0  # approximate_size of the events in _buffer
        self.attempt_timeout = attempt_timeout
        self._connect = connection or (
            lambda: Connection(cfg, name=name, backoff=backoff or Backoff(maximum=5.0))
        )
        self._cond = threading.Condition()
        self._buffer: deque[JobEvent] = deque()
        self._first_at = 0.0  # monotonic time the oldest buffered event arrived
        self._urgent = False  # publish now (a final event, flush, close)
        self._inflight = 0  # events taken by the thread and not yet confirmed
        self._closing = False
        self._abandon = False  # close() gave up: the thread stops retrying
        self._stop_waiting = False  # emit() no longer waits for room (cancellation)
        self.delivered = 0  # events confirmed by the broker
        self.batches = 0
        self.dropped = 0  # events dropped because nobody listens at reply_to
        self.last_seq = 0  # highest seq confirmed (or dropped as unroutable)
        self._thread = threading.Thread(target=self._run, name="event-publisher", daemon=True)
        self._thread.start()

    # --- the job's side --------------------------------------------------------------------

    @classmethod
    def for_request(cls, cfg: BrokerConfig, request: JobRequest) -> BatchingEventSink | None:
        """The sink of a service job (None when the request has no poller to reply to)."""
        if not request.reply_to:
            return None
        return cls(cfg, request.reply_to, name=f"job@{request.job_id}")

    def emit(self, event: JobEvent) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("emit() after close()")
            while self._full() and not self._stop_waiting:
                self._cond.wait(0.1)
            if not self._buffer:
                self._first_at = time.monotonic()
            self._buffer.append(event)
            self._buffered_bytes += approximate_size(event)
            if event.kind is EventKind.JOB_FINISHED:
                self._urgent = True
                self._cond.notify_all()
            elif len(self._buffer) == 1 or self._batch_ready():
                self._cond.notify_all()

    def _batch_ready(self) -> bool:
        return len(self._buffer) >= self.max_events or self._buffered_bytes >= self.max_bytes

    def _full(self) -> bool:
        return bool(self._buffer) and (
            len(self._buffer) >= self.max_buffered or self._buffered_bytes >= self.max_buffered_bytes
        )

    def stop_waiting(self) -> None:
        """Let ``emit`` take events beyond ``max_buffered`` (e.g. once the job is being cancelled,
        so that the cancellation is never stuck behind a full buffer)."""
        with self._cond:
            self._stop_waiting = True
            self._cond.notify_all()

    def pending(self) -> int:
        """Events emitted and not yet confirmed."""
        with self._cond:
            return len(self._buffer) + self._inflight

    def flush(self, timeout: float) -> bool:
        """Publish everything buffered now; True once it is all confirmed, False after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            while self._buffer or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def close(self, timeout: float = 60.0) -> None:
        """Flush and stop the thread. Raises EventDeliveryError when events are still unconfirmed
        after ``timeout`` seconds (RabbitMQ unreachable); they are then lost to the consumer."""
        delivered = self.flush(timeout)
        with self._cond:
            self._closing = True
            if not delivered:
                self._abandon = True
            left = len(self._buffer) + self._inflight
            self._cond.notify_all()
        self._thread.join(timeout=max(5.0, self.attempt_timeout + 1))
        if not delivered:
            raise EventDeliveryError(
                f"{left} event(s) could not be delivered to {self.reply_to!r} within {timeout:.0f} s "
                "(RabbitMQ unreachable)"
            )

    # --- the publishing thread -----------------------------------------------------------------

    def _take(self) -> list[JobEvent] | None:
        """Wait for a batch that is due; None when closing with nothing left; an empty list after
        IDLE_TICK seconds without events (time to answer the broker's heartbeats)."""
        with self._cond:
            while True:
                if self._abandon:
                    return None
                if self._buffer:
                    due = self._first_at + self.flush_interval
                    if self._urgent or self._closing or self._batch_ready():
                        break
                    wait = due - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                elif self._closing:
                    return None
                else:
                    self._urgent = False
                    if not self._cond.wait(IDLE_TICK):
                        return []
            batch: list[JobEvent] = []
            taken = 0  # bytes: a batch of long lines is a message's worth, not max_events of them
            while self._buffer and len(batch) < self.max_events and taken < self.max_bytes:
                batch.append(self._buffer.popleft())
                size = approximate_size(batch[-1])
                taken += size
                self._buffered_bytes -= size
            self._inflight = len(batch)
            if self._buffer:
                self._first_at = time.monotonic()
            else:
                self._urgent = False
            self._cond.notify_all()  # room for emit()
            return batch

    def _run(self) -> None:
        conn: Connection | None = None
        publisher: Publisher | None = None
        warned_unroutable = False
        try:
            while True:
                batch = self._take()
                if batch is None:
                    return
                if not batch:
                    # A job can be silent for minutes (a long step); pika answers heartbeats only
                    # inside its calls, so let it, or the broker drops an idle connection.
                    live = conn.poll() if conn is not None and conn.is_open else None
                    if conn is not None and live is not None:
                        try:
                            live.process_data_events(time_limit=0)
                        except Exception as exc:  # lost: the next publish reconnects
                            conn.mark_broken(exc)
                    continue
                # Split by size: a few huge lines must not make one oversized message.
                chunks: list[list[JobEvent]] = [[]]
                size = 0
                for event in batch:
                    approx = approximate_size(event)
                    if chunks[-1] and size + approx > self.max_bytes:
                        chunks.append([])
                        size = 0
                    chunks[-1].append(event)
                    size += approx
                for events in chunks:
                    body = encode_documents(
                        events[0].job_id, events[0].seq, events[-1].seq, [event_document(e) for e in events]
                    )
                    while True:
                        if self._abandon:
                            return
                        if conn is None:
                            conn = self._connect()
                            publisher = Publisher(conn, timeout=self.attempt_timeout)
                        assert publisher is not None
                        try:
                            publisher.publish_event_batch(
                                events[0].job_id, events[0].seq, events[-1].seq, body, self.reply_to
                            )
                        except Unroutable:
                            if not warned_unroutable:
                                log.warning(
                                    "nobody listens at %r (no events queue): the job's events are dropped",
                                    self.reply_to,
                                )
                                warned_unroutable = True
                            with self._cond:
                                self.dropped += len(events)
                            break
                        except BrokerError as exc:
                            log.warning("publishing %d event(s) failed (%s); retrying", len(events), exc)
                            time.sleep(0.2)
                            continue
                        with self._cond:
                            self.delivered += len(events)
                            self.batches += 1
                        break
                    with self._cond:
                        self.last_seq = events[-1].seq
                        self._inflight -= len(events)
                        self._cond.notify_all()
        except Exception:  # a bug: say so; close() reports the undelivered events
            log.exception("the event publisher thread failed")
        finally:
            with self._cond:
                self._cond.notify_all()
            if publisher is not None:
                publisher.close()
            if conn is not None:
                conn.close()
