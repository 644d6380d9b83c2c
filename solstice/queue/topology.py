"""Exchange and queue names, and declaring them (idempotently) on a channel.

All names come from :class:`BrokerConfig`; see docs/queue.md for the diagram.

    jobs exchange      direct, durable; routing key = label -> queue <queue_prefix><label>
    events exchange    topic, durable; routing key = JobRequest.reply_to -> <events_exchange>.<address>
    control exchange   fanout, durable -> one durable queue per dispatcher host, <control_exchange>.<host>
    dead-letter exch.  fanout, durable -> dead_letter_queue
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from solstice.config import BrokerConfig
from solstice.errors import ConfigError

QUEUE_TYPES = ("quorum", "classic")

#: A control queue whose host has not consumed from it for this long is deleted by RabbitMQ.
CONTROL_QUEUE_EXPIRES_MS = 7 * 24 * 3600 * 1000

JOBS_EXCHANGE_TYPE = "direct"
EVENTS_EXCHANGE_TYPE = "topic"
CONTROL_EXCHANGE_TYPE = "fanout"
DLX_TYPE = "fanout"

# Routing keys and names are AMQP short strings (at most 255 bytes). Addresses and host names are
# used as topic binding keys and queue-name suffixes, so no wildcards and no blanks.
_ADDRESS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_LABEL = re.compile(r"[^\s*#]+")


def _check(kind: str, value: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(value) or len(value.encode()) > 200:
        raise ValueError(f"{kind} {value!r} cannot be used as a RabbitMQ routing key")
    return value


def check_label(label: str) -> str:
    return _check("label", label, _LABEL)


def check_address(address: str) -> str:
    """A poller's reply-to address or a dispatcher's host name: ``[A-Za-z0-9][A-Za-z0-9_.:-]*``."""
    return _check("address", address, _ADDRESS)


@dataclass(frozen=True)
class Names:
    """Where things are, derived from a BrokerConfig."""

    cfg: BrokerConfig

    def job_queue(self, label: str) -> str:
        return self.cfg.queue_prefix + check_label(label)

    def events_queue(self, address: str) -> str:
        return f"{self.cfg.events_exchange}.{check_address(address)}"

    def control_queue(self, host: str) -> str:
        return f"{self.cfg.control_exchange}.{check_address(host)}"


def queue_arguments(cfg: BrokerConfig, *, dead_letter: bool = True) -> dict[str, Any]:
    """``x-queue-type`` (and the DLX) for a durable queue. Raises ConfigError for a bad queue_type."""
    if cfg.queue_type not in QUEUE_TYPES:
        raise ConfigError(
            f"[broker] queue_type = {cfg.queue_type!r}: must be one of {', '.join(QUEUE_TYPES)}",
            hint='use "classic" for RabbitMQ older than 3.8',
        )
    args: dict[str, Any] = {"x-queue-type": cfg.queue_type}
    if dead_letter:
        args["x-dead-letter-exchange"] = cfg.dead_letter_exchange
    return args


def declare_topology(
    channel: Any,
    cfg: BrokerConfig,
    labels: Iterable[str] = (),
    *,
    addresses: Iterable[str] = (),
    control_host: str | None = None,
    events_expires_ms: int | None = None,
) -> None:
    """Declare the exchanges, the dead-letter queue, one job queue per label, one events queue per
    poller address (with ``x-expires`` = ``events_expires_ms`` when given: short-lived addresses
    such as ``solstice submit``'s) and (with ``control_host``) that host's control queue.
    Idempotent: declaring the same things again is a no-op. A name that exists with other
    arguments closes the channel with 406 PRECONDITION_FAILED (pika ChannelClosedByBroker);
    Connection turns it into TopologyMismatch."""
    names = Names(cfg)
    args = queue_arguments(cfg)
    channel.exchange_declare(
        exchange=cfg.dead_letter_exchange, exchange_type=DLX_TYPE, durable=True, auto_delete=False
    )
    channel.queue_declare(
        queue=cfg.dead_letter_queue, durable=True, arguments=queue_arguments(cfg, dead_letter=False)
    )
    channel.queue_bind(queue=cfg.dead_letter_queue, exchange=cfg.dead_letter_exchange, routing_key="")
    channel.exchange_declare(
        exchange=cfg.jobs_exchange, exchange_type=JOBS_EXCHANGE_TYPE, durable=True, auto_delete=False
    )
    channel.exchange_declare(
        exchange=cfg.events_exchange, exchange_type=EVENTS_EXCHANGE_TYPE, durable=True, auto_delete=False
    )
    channel.exchange_declare(
        exchange=cfg.control_exchange, exchange_type=CONTROL_EXCHANGE_TYPE, durable=True, auto_delete=False
    )
    for label in labels:
        queue = names.job_queue(label)
        channel.queue_declare(queue=queue, durable=True, arguments=args)
        channel.queue_bind(queue=queue, exchange=cfg.jobs_exchange, routing_key=label)
    events_args = args if events_expires_ms is None else {**args, "x-expires": events_expires_ms}
    for address in addresses:
        queue = names.events_queue(address)
        channel.queue_declare(queue=queue, durable=True, arguments=events_args)
        channel.queue_bind(queue=queue, exchange=cfg.events_exchange, routing_key=address)
    if control_host is not None:
        queue = names.control_queue(control_host)
        channel.queue_declare(
            queue=queue, durable=True, arguments={**args, "x-expires": CONTROL_QUEUE_EXPIRES_MS}
        )
        channel.queue_bind(queue=queue, exchange=cfg.control_exchange, routing_key="")
