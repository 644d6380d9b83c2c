"""Errors of the queue layer.

InfraError (solstice.errors)
 +-- BrokerError            RabbitMQ failed us (the message says what and where)
      +-- BrokerUnavailable the broker could not be reached within the deadline
      +-- Unroutable        a mandatory publish had no queue to go to (no queue for that label,
      |                     no events queue for that poller, no dispatcher control queue)
      +-- PublishNacked     the broker refused a message (publisher confirm nack)
      +-- TopologyMismatch  an exchange or queue exists with other arguments (406)
SolsticeError
 +-- InvalidMessage         a message body is not a message we understand (``reason``)
"""

from __future__ import annotations

from solstice.errors import InfraError, SolsticeError


class BrokerError(InfraError):
    """RabbitMQ could not do what we asked."""


class BrokerUnavailable(BrokerError):
    pass


class Unroutable(BrokerError):
    """A ``mandatory`` publish came back: nothing is bound for ``routing_key`` on ``exchange``."""

    def __init__(self, exchange: str, routing_key: str, *, hint: str | None = None) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        super().__init__(
            f"RabbitMQ has no queue for routing key {routing_key!r} on exchange {exchange!r}",
            hint=hint,
        )


class PublishNacked(BrokerError):
    pass


class TopologyMismatch(BrokerError):
    pass


class InvalidMessage(SolsticeError):
    """A body that is not JSON, has an unknown ``schema_version`` or the wrong shape."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid message: {reason}")
