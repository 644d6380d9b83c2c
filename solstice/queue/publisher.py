"""Publishing with publisher confirms: persistent, ``mandatory``, retried across reconnects.

Every publish blocks until RabbitMQ confirms it (the message is then on disk in its queue). If the
connection drops before the confirm, the publish is repeated on a new connection until
``timeout``: a message is never lost by this layer, but it can arrive twice (consumers dedupe:
jobs by uuid in the database, events by ``seq`` with EventSequencer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from solstice.model import JobEvent, JobRequest
from solstice.queue import _amqp
from solstice.queue.batch import BATCH_SCHEMA, encode_batch
from solstice.queue.codec import CANCEL_SCHEMA, CancelJob, encode_cancel, encode_event, encode_request
from solstice.queue.connection import Connection
from solstice.queue.errors import BrokerError, PublishNacked, Unroutable
from solstice.queue.topology import check_address, check_label

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
APP_ID = "solstice"
#: A JobRequest's publish time, epoch milliseconds: the dispatcher's queue wait metric. (The AMQP
#: ``timestamp`` property has whole seconds only.)
PUBLISHED_HEADER = "x-solstice-published-ms"


class Publisher:
    """Publishes jobs, events and cancellations on a confirm-mode channel of ``conn``."""

    def __init__(self, conn: Connection, *, timeout: float = 60.0) -> None:
        self.conn = conn
        self.cfg = conn.cfg
        self.timeout = timeout
        self._channel: Any = None
        self._epoch = -1

    def publish_job(self, request: JobRequest) -> None:
        """Put ``request`` on its label's queue. Raises Unroutable when no queue exists for the
        label (no dispatcher or poller declared it), BrokerUnavailable after ``timeout``."""
        label = check_label(request.label)
        if request.reply_to:
            check_address(request.reply_to)
        props = _amqp.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=_amqp.PERSISTENT,
            message_id=request.job_id,
            correlation_id=request.job_id,
            type=request.schema_version,
            reply_to=request.reply_to or None,
            timestamp=int(time.time()),
            app_id=APP_ID,
            headers={PUBLISHED_HEADER: int(time.time() * 1000)},
        )
        self._publish(
            self.cfg.jobs_exchange,
            label,
            encode_request(request),
            props,
            hint=f"no dispatcher serves label {label!r}: declare its queue (a dispatcher with that image)",
        )

    def publish_event(self, event: JobEvent, reply_to: str) -> None:
        """Send ``event`` to the poller at ``reply_to`` (the JobRequest's reply_to). Raises
        Unroutable when that poller has no events queue."""
        address = check_address(reply_to)
        props = _amqp.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=_amqp.PERSISTENT,
            message_id=f"{event.job_id}:{event.seq}",
            correlation_id=event.job_id,
            type=event.schema_version,
            timestamp=int(event.time),
            app_id=APP_ID,
            headers={"x-solstice-seq": event.seq},
        )
        self._publish(
            self.cfg.events_exchange,
            address,
            encode_event(event),
            props,
            hint=f"no poller listens at {address!r}: it declares its events queue when it starts",
        )

    def publish_events(self, events: Sequence[JobEvent], reply_to: str) -> None:
        """Send consecutive events of one job as one ``jobevents.v1`` message (one confirm)."""
        body = encode_batch(events)
        self.publish_event_batch(events[0].job_id, events[0].seq, events[-1].seq, body, reply_to)

    def publish_event_batch(
        self, job_id: str, first_seq: int, last_seq: int, body: bytes, reply_to: str
    ) -> None:
        """Publish an already encoded ``jobevents.v1`` body (see batch.encode_documents)."""
        address = check_address(reply_to)
        props = _amqp.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=_amqp.PERSISTENT,
            message_id=f"{job_id}:{first_seq}-{last_seq}",
            correlation_id=job_id,
            type=BATCH_SCHEMA,
            timestamp=int(time.time()),
            app_id=APP_ID,
            headers={"x-solstice-seq": last_seq, "x-solstice-first-seq": first_seq},
        )
        self._publish(
            self.cfg.events_exchange,
            address,
            body,
            props,
            hint=f"no poller listens at {address!r}: it declares its events queue when it starts",
        )

    def publish_cancel(self, job_id: str, reason: str = "") -> None:
        """Tell every dispatcher to cancel ``job_id``. Raises Unroutable when no dispatcher has
        ever declared its control queue (then no job can be running)."""
        if not job_id:
            raise ValueError("publish_cancel needs a job id")
        props = _amqp.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=_amqp.PERSISTENT,
            message_id=f"cancel:{job_id}",
            correlation_id=job_id,
            type=CANCEL_SCHEMA,
            timestamp=int(time.time()),
            app_id=APP_ID,
        )
        body = encode_cancel(CancelJob(job_id=job_id, reason=reason))
        self._publish(self.cfg.control_exchange, "", body, props, hint="no dispatcher has a control queue")

    # --- internals ---------------------------------------------------------------------------

    def _publish(self, exchange: str, routing_key: str, body: bytes, props: Any, *, hint: str) -> None:
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            attempt += 1
            channel, epoch = self._open_channel(deadline)
            try:
                channel.basic_publish(
                    exchange=exchange, routing_key=routing_key, body=body, properties=props, mandatory=True
                )
            except _amqp.exceptions.UnroutableError:
                raise Unroutable(exchange, routing_key, hint=hint) from None
            except _amqp.exceptions.NackError:
                raise PublishNacked(
                    f"RabbitMQ refused a message for {routing_key!r} on {exchange!r} (nack)"
                ) from None
            except _amqp.LOST as exc:
                if _amqp.reply_code(exc) in (403, 406):  # refused for good (access, size): no retry
                    self._channel = None
                    raise BrokerError(f"RabbitMQ refused a message for {exchange!r}: {exc}") from None
                self.conn.mark_broken(exc, epoch)
                log.warning(
                    "publish to %s/%s not confirmed (%s); retrying (attempt %d)",
                    exchange,
                    routing_key,
                    type(exc).__name__,
                    attempt + 1,
                )
                continue
            if attempt > 1:
                log.info("publish to %s/%s confirmed after %d attempts", exchange, routing_key, attempt)
            return

    def publish_once(self, exchange: str, routing_key: str, body: bytes, props: Any) -> None:
        """One confirmed, mandatory publish on the current connection, without reconnecting.
        Raises Unroutable, PublishNacked, or BrokerError when the connection is down."""
        if not self.conn.is_open:
            raise BrokerError("not connected to RabbitMQ")
        channel, epoch = self._open_channel(time.monotonic())
        try:
            channel.basic_publish(
                exchange=exchange, routing_key=routing_key, body=body, properties=props, mandatory=True
            )
        except _amqp.exceptions.UnroutableError:
            raise Unroutable(exchange, routing_key) from None
        except _amqp.exceptions.NackError:
            raise PublishNacked(f"RabbitMQ refused a message for {exchange!r} (nack)") from None
        except _amqp.LOST as exc:
            self.conn.mark_broken(exc, epoch)
            raise BrokerError(
                f"lost the RabbitMQ connection while publishing: {type(exc).__name__}"
            ) from None

    def _open_channel(self, deadline: float) -> tuple[Any, int]:
        while True:
            if self._channel is not None and self._epoch == self.conn.epoch and self.conn.is_open:
                if self._channel.is_open:
                    return self._channel, self._epoch
            channel, epoch = self.conn.channel(deadline)
            try:
                channel.confirm_delivery()
            except _amqp.LOST as exc:
                self.conn.mark_broken(exc, epoch)
                continue
            self._channel, self._epoch = channel, epoch
            return channel, epoch

    def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            try:
                channel.close()
            except _amqp.LOST:
                pass


class QueueEventSink:
    """A model.EventSink that publishes each event to the poller at ``reply_to``."""

    def __init__(self, publisher: Publisher, reply_to: str) -> None:
        self.publisher = publisher
        self.reply_to = check_address(reply_to)

    def emit(self, event: JobEvent) -> None:
        self.publisher.publish_event(event, self.reply_to)
