"""Looking into the dead-letter queue without taking anything out of it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from solstice.queue import _amqp
from solstice.queue.connection import Connection
from solstice.queue.consumer import QUEUE_HEADER, REASON_HEADER, TIME_HEADER


@dataclass(frozen=True)
class DeadLetter:
    """One message in the dead-letter queue. ``reason`` is Solstice's ``x-solstice-reason``, or
    for a message RabbitMQ dead-lettered itself, the ``x-death`` reason (rejected, expired...)."""

    reason: str
    queue: str  # where it was consumed from
    routing_key: str  # its label, poller address...
    message_id: str | None
    type: str | None  # the schema version the publisher claimed
    dead_lettered_at: int | None  # seconds since the epoch
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)


def peek_dead_letters(conn: Connection, limit: int = 20, *, timeout: float = 10.0) -> list[DeadLetter]:
    """The first ``limit`` dead letters, oldest first. They are fetched without an ack and go
    back to the queue when the channel closes (their redelivered flag is then set)."""
    channel, _ = conn.channel(time.monotonic() + timeout)
    out: list[DeadLetter] = []
    try:
        for _ in range(limit):
            method, props, body = channel.basic_get(queue=conn.cfg.dead_letter_queue, auto_ack=False)
            if method is None:
                break
            out.append(_describe(method, props, body))
    finally:
        try:
            channel.close()
        except _amqp.LOST:
            pass
    return out


def _describe(method: Any, props: Any, body: bytes) -> DeadLetter:
    headers = dict(props.headers or {})
    reason = _text(headers.get(REASON_HEADER))
    queue = _text(headers.get(QUEUE_HEADER))
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        reason = reason or f"dead-lettered by RabbitMQ: {_text(deaths[0].get('reason'))}"
        queue = queue or _text(deaths[0].get("queue"))
    when = headers.get(TIME_HEADER)
    return DeadLetter(
        reason=reason or "(no reason recorded)",
        queue=queue,
        routing_key=str(method.routing_key),
        message_id=props.message_id,
        type=props.type,
        dead_lettered_at=when if isinstance(when, int) else None,
        body=body,
        headers=headers,
    )


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)
