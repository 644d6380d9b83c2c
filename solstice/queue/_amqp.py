"""The one place that imports pika (it ships no type information; its objects are ``Any`` here).

Only APIs present in pika 1.2.0 (Debian bookworm) are used.
"""

from __future__ import annotations

from typing import Any

import pika  # type: ignore[import-untyped,unused-ignore]
import pika.exceptions  # type: ignore[import-untyped,unused-ignore]

PERSISTENT = 2  # delivery_mode; pika.DeliveryMode is newer than 1.2.0

BasicProperties: Any = pika.BasicProperties
BlockingConnection: Any = pika.BlockingConnection
URLParameters: Any = pika.URLParameters

exceptions: Any = pika.exceptions

#: The connection (or its channel) is gone: reconnect and try again.
LOST: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,  # ConnectionClosed, StreamLostError, ConnectionBlockedTimeout...
    pika.exceptions.ChannelClosed,  # also ChannelClosedByBroker (e.g. 404 exchange deleted)
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    ConnectionError,
    OSError,
)

#: Connecting will not help: wrong credentials or no access to the vhost.
REFUSED: tuple[type[BaseException], ...] = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.AuthenticationError,
)


def reply_code(exc: BaseException) -> int | None:
    """The AMQP reply code of a ChannelClosedByBroker/ConnectionClosedByBroker, else None."""
    code = getattr(exc, "reply_code", None)
    return code if isinstance(code, int) else None
