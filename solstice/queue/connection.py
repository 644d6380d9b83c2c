"""One RabbitMQ connection that comes back: connect with backoff, declare topology, count epochs.

pika's BlockingConnection is single-threaded, so a Connection (and the Publisher and Consumer on
it) belongs to the thread that uses it. Reconnecting never happens behind the caller's back: an
operation that finds the connection gone calls :meth:`mark_broken`, and the next
:meth:`blocking` (publishers: wait until the deadline) or :meth:`poll` (consumers: one attempt
when the backoff allows) opens a new one. Each new connection increments :attr:`epoch`; channels
and delivery tags of an older epoch are void.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from solstice.backoff import Backoff
from solstice.config import BrokerConfig
from solstice.queue import _amqp
from solstice.queue.errors import BrokerError, BrokerUnavailable, TopologyMismatch
from solstice.queue.topology import check_address, check_label, declare_topology, queue_arguments

log = logging.getLogger(__name__)


def describe_url(url: str) -> str:
    """host:port/vhost of an AMQP URL, without credentials (for messages and logs)."""
    try:
        params = _amqp.URLParameters(url)
    except Exception:  # any parse error: say nothing about the URL
        return "<unparsable broker URL>"
    vhost = "" if params.virtual_host == "/" else f" vhost {params.virtual_host}"
    return f"{params.host}:{params.port}{vhost}"


class Connection:
    """A reconnecting BlockingConnection plus the topology every connection declares.

    ``labels`` (job queues), ``addresses`` (poller events queues) and ``control_host`` (this
    dispatcher's control queue) are declared, with the exchanges and the DLQ, on every connect.
    Consumers add the queues they consume from themselves.
    """

    def __init__(
        self,
        cfg: BrokerConfig,
        *,
        name: str = "solstice",
        labels: Iterable[str] = (),
        addresses: Iterable[str] = (),
        control_host: str | None = None,
        backoff: Backoff | None = None,
        blocked_timeout: float = 120.0,
    ) -> None:
        queue_arguments(cfg)  # validates queue_type now, not at the first connect
        self.cfg = cfg
        self.labels = tuple(check_label(x) for x in labels)
        self.addresses = tuple(check_address(x) for x in addresses)
        self.control_host = None if control_host is None else check_address(control_host)
        self.backoff = backoff or Backoff()
        self.where = describe_url(cfg.url)
        try:
            self._params = _amqp.URLParameters(cfg.url)
        except Exception as exc:  # pika raises assorted errors for bad URLs
            raise BrokerError(f"[broker] url is not a valid AMQP URL: {type(exc).__name__}") from None
        # Shown by `rabbitmqctl list_connections name client_properties`; merged into pika's own.
        self._params.client_properties = {"connection_name": name}
        if "blocked_connection_timeout" not in cfg.url:
            # A broker in a memory/disk alarm blocks publishers; fail over to reconnect+retry.
            self._params.blocked_connection_timeout = blocked_timeout
        self._conn: Any = None
        self._broken: Any = None  # a failed connection, closed at the next poll()
        self._epoch = 0
        self._failures = 0
        self._last_error = ""
        self._next_attempt = 0.0
        self._closed = False

    # --- state -------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Increments on every successful (re)connect; 0 before the first."""
        return self._epoch

    @property
    def is_open(self) -> bool:
        return self._conn is not None and bool(self._conn.is_open)

    def next_attempt_in(self) -> float:
        """Seconds until the backoff allows the next connection attempt (0 when connected)."""
        return 0.0 if self.is_open else max(0.0, self._next_attempt - time.monotonic())

    # --- connecting --------------------------------------------------------------------------

    def connect(self, timeout: float = 30.0) -> None:
        """Open the connection now, retrying with backoff for up to ``timeout`` seconds."""
        self.blocking(time.monotonic() + timeout)

    def blocking(self, deadline: float) -> Any:
        """The open pika BlockingConnection, reconnecting (and sleeping between attempts) until
        ``deadline`` (time.monotonic()). Raises BrokerUnavailable when it passes."""
        while True:
            conn = self.poll()
            if conn is not None:
                return conn
            wait = self.next_attempt_in()
            if time.monotonic() + wait > deadline:
                raise BrokerUnavailable(
                    f"RabbitMQ at {self.where} is not reachable "
                    f"({self._failures} failed attempt(s) to connect; last: {self._last_error})",
                    hint="is rabbitmq-server running? `rabbitmqctl status`",
                )
            time.sleep(wait)

    def poll(self) -> Any | None:
        """The open connection; or, when it is down and the backoff allows, one attempt to open
        it; else None. Raises TopologyMismatch or BrokerError for errors a retry cannot fix."""
        if self._closed:
            raise BrokerError("the broker connection was closed by its owner")
        if self.is_open:
            return self._conn
        self._discard()
        if time.monotonic() < self._next_attempt:
            return None
        try:
            conn = _amqp.BlockingConnection(self._params)
        except _amqp.REFUSED as exc:
            raise BrokerError(
                f"RabbitMQ at {self.where} refused the login: {type(exc).__name__}",
                hint="check the user, password and vhost in [broker] url",
            ) from None
        except _amqp.LOST as exc:
            self._failed(exc)
            return None
        try:
            channel = conn.channel()
            declare_topology(
                channel,
                self.cfg,
                self.labels,
                addresses=self.addresses,
                control_host=self.control_host,
            )
            channel.close()
        except _amqp.LOST as exc:
            _close_quietly(conn)
            raise_if_mismatch(exc)
            self._failed(exc)
            return None
        self._conn = conn
        self._epoch += 1
        if self._failures:
            log.info("reconnected to RabbitMQ at %s after %d failed attempt(s)", self.where, self._failures)
        self._failures = 0
        return conn

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        self._last_error = _what(exc)
        delay = self.backoff.delay(self._failures)
        self._next_attempt = time.monotonic() + delay
        log.warning(
            "cannot connect to RabbitMQ at %s (%s); attempt %d, next in %.1fs",
            self.where,
            self._last_error,
            self._failures,
            delay,
        )

    def mark_broken(self, exc: BaseException, epoch: int | None = None) -> None:
        """The connection of ``epoch`` (default: the current one) failed with ``exc``: forget it;
        the next poll/blocking reconnects. A failure of an older epoch is ignored. Safe to call
        from inside a pika callback (the old connection is closed at the next poll)."""
        if self._conn is None or (epoch is not None and epoch != self._epoch):
            return
        log.warning("lost the RabbitMQ connection to %s: %s", self.where, _what(exc))
        self._broken, self._conn = self._conn, None
        self._next_attempt = 0.0  # the first reconnect attempt is immediate

    def _discard(self) -> None:
        old, self._broken = self._broken, None
        if old is not None:
            _close_quietly(old)

    def channel(self, deadline: float) -> tuple[Any, int]:
        """A new channel on the open connection (connecting until ``deadline``), with its epoch."""
        conn = self.blocking(deadline)
        return conn.channel(), self._epoch

    def close(self) -> None:
        """Close the connection; unacknowledged deliveries go back to their queues."""
        self._closed = True
        conn, self._conn = self._conn, None
        self._discard()
        if conn is not None:
            _close_quietly(conn)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raise_if_mismatch(exc: BaseException) -> None:
    """Turn a 406 PRECONDITION_FAILED from a declare into TopologyMismatch."""
    if _amqp.reply_code(exc) == 406:
        raise TopologyMismatch(
            f"RabbitMQ already has an exchange or queue of that name with other settings: {_what(exc)}",
            hint="delete it (rabbitmqctl delete_queue NAME) or match [broker] queue_type to it",
        ) from None


def _what(exc: BaseException) -> str:
    """A one-line description; pika wraps the interesting error (e.g. ECONNREFUSED) in args."""
    inner = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
    if inner and not str(exc):
        return f"{type(exc).__name__}: {inner[-1]!r}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _close_quietly(conn: Any) -> None:
    try:
        if conn.is_open:
            conn.close()
    except Exception:  # it is already broken; nothing to report
        pass
