"""RabbitMQ: topology, versioned messages, confirmed publishing, consuming with manual acks.

    conn = Connection(cfg.broker, name="dispatcher@host-a")      # reconnects with backoff
    consumer = Consumer(conn)
    consumer.consume_jobs(["debian-12"], on_job, prefetch=free)   # handler -> ACK/REQUEUE/dead_letter
    consumer.consume_control("host-a", on_cancel)
    while running:
        consumer.process_events(1.0)                              # handlers run in here
        consumer.set_prefetch(capacity - running_jobs())

    Publisher(conn).publish_job(request)        # confirmed, persistent, mandatory (Unroutable)
    Publisher(conn).publish_event(event, request.reply_to)
    sink = BatchingEventSink(cfg.broker, request.reply_to)   # a job process: batches, own thread

Everything here is single-threaded (pika's BlockingConnection): one Connection, with its
Publisher and Consumer, per thread. Delivery is at least once; consumers dedupe (jobs by uuid in
the database, events by ``seq`` with EventSequencer). See docs/queue.md.
"""

from solstice.backoff import Backoff
from solstice.queue.batch import BATCH_SCHEMA, decode_events, encode_batch
from solstice.queue.codec import (
    CANCEL_SCHEMA,
    CancelJob,
    decode_cancel,
    decode_event,
    decode_request,
    encode_cancel,
    encode_event,
    encode_request,
    mask_secrets,
)
from solstice.queue.connection import Connection, describe_url
from solstice.queue.consumer import (
    ACK,
    REASON_HEADER,
    REQUEUE,
    Action,
    Consumer,
    Decision,
    Delivery,
    Handler,
    dead_letter,
)
from solstice.queue.deadletters import DeadLetter, peek_dead_letters
from solstice.queue.errors import (
    BrokerError,
    BrokerUnavailable,
    InvalidMessage,
    PublishNacked,
    TopologyMismatch,
    Unroutable,
)
from solstice.queue.eventsink import BatchingEventSink, EventDeliveryError
from solstice.queue.publisher import PUBLISHED_HEADER, Publisher, QueueEventSink
from solstice.queue.sequencer import SYNTHETIC_SEQ, EventSequencer, SeqCheck, is_synthetic
from solstice.queue.topology import Names, declare_topology, queue_arguments

__all__ = [
    "ACK",
    "BATCH_SCHEMA",
    "PUBLISHED_HEADER",
    "SYNTHETIC_SEQ",
    "BatchingEventSink",
    "EventDeliveryError",
    "decode_events",
    "encode_batch",
    "is_synthetic",
    "CANCEL_SCHEMA",
    "REASON_HEADER",
    "REQUEUE",
    "Action",
    "Backoff",
    "BrokerError",
    "BrokerUnavailable",
    "CancelJob",
    "Connection",
    "Consumer",
    "DeadLetter",
    "Decision",
    "Delivery",
    "EventSequencer",
    "Handler",
    "InvalidMessage",
    "Names",
    "Publisher",
    "PublishNacked",
    "QueueEventSink",
    "SeqCheck",
    "TopologyMismatch",
    "Unroutable",
    "dead_letter",
    "declare_topology",
    "decode_cancel",
    "decode_event",
    "decode_request",
    "describe_url",
    "encode_cancel",
    "encode_event",
    "encode_request",
    "mask_secrets",
    "peek_dead_letters",
    "queue_arguments",
]
