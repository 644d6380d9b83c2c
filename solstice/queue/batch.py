"""Event batches: many JobEvents of one job in one message (``jobevents.v1``).

A job can print tens of thousands of lines a second; one confirmed message per event cannot keep
up (a publisher confirm is a round trip). The job's sink therefore publishes batches::

    {"schema_version": "jobevents.v1", "job_id": "<uuid>", "first_seq": 41, "last_seq": 57,
     "events": [<jobevent.v1 object>, ...]}

Each element of ``events`` is a complete ``jobevent.v1`` object of the same job (fields that have
their default value are left out, as ``from_dict`` allows), in ``seq`` order, consecutive. Consumers
decode both forms with :func:`decode_events`, which returns a tuple of events either way.

Each event is encoded and decoded by the one jobevent.v1 codec (solstice.queue.codec), which the
single-event messages use as well.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from solstice.model import EVENT_SCHEMA, JobEvent
from solstice.queue.codec import _clip, event_document, event_from_document, json_object
from solstice.queue.errors import InvalidMessage

BATCH_SCHEMA = "jobevents.v1"


def encode_documents(job_id: str, first_seq: int, last_seq: int, docs: list[dict[str, Any]]) -> bytes:
    """A batch body from events already turned into documents with :func:`event_document`."""
    return json.dumps(
        {
            "schema_version": BATCH_SCHEMA,
            "job_id": job_id,
            "first_seq": first_seq,
            "last_seq": last_seq,
            "events": docs,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")


def approximate_size(event: JobEvent) -> int:
    """Roughly the bytes of ``event`` in a batch (to keep messages near a size, cheaply)."""
    size = 150 + len(event.text) + len(event.message)
    for key, value in event.outputs.items():
        size += len(key) + len(value) + 6
    return size


def encode_batch(events: Sequence[JobEvent]) -> bytes:
    """One ``jobevents.v1`` body; the events must be of one job, consecutive and in order."""
    check_batch(events)
    return encode_documents(
        events[0].job_id, events[0].seq, events[-1].seq, [event_document(e) for e in events]
    )


def check_batch(events: Sequence[JobEvent]) -> None:
    if not events:
        raise ValueError("an event batch needs at least one event")
    job_id = events[0].job_id
    for before, after in zip(events, events[1:], strict=False):
        if after.job_id != job_id:
            raise ValueError("an event batch holds the events of one job")
        if after.seq <= before.seq:
            raise ValueError(f"event batch out of order: seq {after.seq} after {before.seq}")


def decode_events(body: bytes) -> tuple[JobEvent, ...]:
    """The events of a ``jobevent.v1`` or ``jobevents.v1`` body, in order. Raises InvalidMessage
    with a short reason (never the body) for anything else."""
    data = json_object(body)
    version = data.get("schema_version")
    if version is None:
        raise InvalidMessage(f"no schema_version (expected {EVENT_SCHEMA!r} or {BATCH_SCHEMA!r})")
    try:
        if version == EVENT_SCHEMA:
            return (event_from_document(data),)
        if version != BATCH_SCHEMA:
            raise InvalidMessage(
                _clip(f"unknown schema_version {version!r} (expected {EVENT_SCHEMA!r} or {BATCH_SCHEMA!r})")
            )
        items = data.get("events")
        if not isinstance(items, list) or not items:
            raise ValueError("events: expected a non-empty list")
        events = tuple(event_from_document(item) for item in items)
        check_batch(events)
        if events[0].job_id != data.get("job_id"):
            raise ValueError("job_id differs from the job_id of its events")
        if data.get("first_seq") != events[0].seq or data.get("last_seq") != events[-1].seq:
            raise ValueError("first_seq/last_seq do not match its events")
        return events
    except ValueError as exc:
        raise InvalidMessage(_clip(f"not a valid {version}: {exc}")) from None
