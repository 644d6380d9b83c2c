"""RabbitMQ fixtures: a real broker at SOLSTICE_TEST_AMQP_URL (default guest@127.0.0.1:5672).

Every test gets a BrokerConfig whose exchange and queue names carry a unique token, so tests do not
see each other or other users of the broker; its queues and exchanges are deleted afterwards.
Tests use only the labels, addresses and hosts below (that is what cleanup deletes); a session
sweep with ``rabbitmqctl`` removes anything else left with this session's token.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from solstice.config import BrokerConfig
from solstice.queue import Names

AMQP_URL = os.environ.get("SOLSTICE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PREFIX = "solstice-test."
SESSION = f"{PREFIX}{uuid.uuid4().hex[:8]}."

LABELS = ("debian-12", "omnios", "ubuntu-24.04", "no-such-label")
ADDRESSES = ("poller-1", "poller-2")
HOSTS = ("host-a", "host-b")

_counter = itertools.count(1)


def broker_address() -> tuple[str, int]:
    params = pika.URLParameters(AMQP_URL)
    return params.host, params.port


def broker_answers(timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(broker_address(), timeout=timeout):
            return True
    except OSError:
        return False


def _names(cfg: BrokerConfig) -> tuple[list[str], list[str]]:
    names = Names(cfg)
    queues = [cfg.dead_letter_queue]
    queues += [names.job_queue(x) for x in LABELS]
    queues += [names.events_queue(x) for x in ADDRESSES]
    queues += [names.control_queue(x) for x in HOSTS]
    exchanges = [cfg.jobs_exchange, cfg.events_exchange, cfg.control_exchange, cfg.dead_letter_exchange]
    return queues, exchanges


def _delete(queues: list[str], exchanges: list[str]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = conn.channel()
        for queue in queues:
            channel.queue_delete(queue=queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange=exchange)
    finally:
        conn.close()


def _rabbitmqctl_names(what: str) -> list[str]:
    proc = subprocess.run(
        ["rabbitmqctl", "-q", what, "name"], capture_output=True, text=True, timeout=60, check=False
    )
    lines = proc.stdout.splitlines() if proc.returncode == 0 else []
    return [line.strip() for line in lines if line.strip().startswith(SESSION)]


@pytest.fixture(scope="session", autouse=True)
def _sweep_session() -> Iterator[None]:
    yield
    if shutil.which("rabbitmqctl") is None or not broker_answers():
        return
    queues = _rabbitmqctl_names("list_queues")
    exchanges = _rabbitmqctl_names("list_exchanges")
    if queues or exchanges:
        _delete(queues, exchanges)


def _named_broker() -> Iterator[BrokerConfig]:
    if not broker_answers():
        pytest.fail(f"no RabbitMQ answers at {broker_address()} (start it: scripts/services)")
    token = f"{SESSION}{next(_counter)}"
    cfg = BrokerConfig.named(token, url=AMQP_URL, queue_type="quorum")
    yield cfg
    if broker_answers():
        _delete(*_names(cfg))


@pytest.fixture
def broker_cfg() -> Iterator[BrokerConfig]:
    """A BrokerConfig with names of its own (quorum queues); deleted after the test."""
    yield from _named_broker()


@pytest.fixture(scope="module")
def module_broker_cfg() -> Iterator[BrokerConfig]:
    """Like broker_cfg, shared by a module's tests (one pipeline for several scenarios)."""
    yield from _named_broker()


@pytest.fixture
def raw() -> Iterator[Any]:
    """A plain pika channel, to put bad bytes on a queue and to look into queues."""
    if not broker_answers():
        pytest.fail(f"no RabbitMQ answers at {broker_address()} (start it: scripts/services)")
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        yield conn.channel()
    finally:
        if conn.is_open:
            conn.close()
