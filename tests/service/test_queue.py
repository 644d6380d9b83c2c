"""solstice.queue against a real RabbitMQ (see conftest.py): no mocks.

Labels, poller addresses and hosts used here must be in conftest's LABELS/ADDRESSES/HOSTS, which
is what the per-test cleanup deletes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pika
import pytest

from solstice.config import BrokerConfig
from solstice.errors import ConfigError
from solstice.model import (
    EventKind,
    JobEvent,
    JobRequest,
    JobSpec,
    Source,
    Step,
    Stream,
)
from solstice.queue import (
    ACK,
    REASON_HEADER,
    Backoff,
    CancelJob,
    Connection,
    Consumer,
    Delivery,
    EventSequencer,
    InvalidMessage,
    Names,
    Publisher,
    QueueEventSink,
    TopologyMismatch,
    Unroutable,
    dead_letter,
    declare_topology,
    decode_cancel,
    decode_event,
    decode_request,
    encode_cancel,
    encode_event,
    encode_request,
    mask_secrets,
    peek_dead_letters,
    queue_arguments,
)

FAST = Backoff(initial=0.1, factor=2.0, maximum=1.0, jitter=0.1)


def make_request(label: str = "debian-12", job_id: str | None = None) -> JobRequest:
    step = Step(number=1, name="Run make", run="make check", env={"CI": "true"})
    spec = JobSpec(key="build", name="build", runs_on=(label,), steps=(step,), matrix={"py": "3.11"})
    return JobRequest(
        job_id=job_id or str(uuid.uuid4()),
        job=spec,
        label=label,
        source=Source.FORGEJO,
        source_ids={"task": "42"},
        repository="owner/repo",
        commit="0" * 40,
        secrets={"TOKEN": "s3cret"},
        reply_to="poller-1",
    )


def make_event(job_id: str, seq: int) -> JobEvent:
    return JobEvent(
        job_id=job_id,
        seq=seq,
        time=time.time(),
        kind=EventKind.LOG,
        stream=Stream.STDOUT,
        text=f"line {seq}",
    )


def broker_answers(cfg: BrokerConfig, timeout: float = 0.5) -> bool:
    params = pika.URLParameters(cfg.url)
    try:
        with socket.create_connection((params.host, params.port), timeout=timeout):
            return True
    except OSError:
        return False


def connection(cfg: BrokerConfig, name: str, **kwargs: Any) -> Connection:
    return Connection(cfg, name=f"test-{name}", backoff=FAST, **kwargs)


def run_until(consumer: Consumer, done: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out waiting for deliveries"
        consumer.process_events(0.05)


def settle_for(consumer: Consumer, seconds: float) -> None:
    """Let the broker deliver whatever it is going to deliver."""
    consumer.process_events(seconds)


def ready(raw: Any, queue: str) -> int:
    """Messages ready in ``queue`` (not counting unacknowledged ones)."""
    return int(raw.queue_declare(queue=queue, passive=True).method.message_count)


def wait_ready(raw: Any, queue: str, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while ready(raw, queue) != count:
        assert time.monotonic() < deadline, f"{queue}: {ready(raw, queue)} ready, expected {count}"
        time.sleep(0.05)


def drain(raw: Any, queue: str) -> list[tuple[Any, bytes]]:
    out = []
    while True:
        method, props, body = raw.basic_get(queue=queue, auto_ack=True)
        if method is None:
            return out
        out.append((props, body))


# --- codec (no broker) ---------------------------------------------------------------------------


def test_codec_round_trips() -> None:
    request = make_request()
    assert decode_request(encode_request(request)) == request
    event = make_event(request.job_id, 3)
    assert decode_event(encode_event(event)) == event
    cancel = CancelJob(job_id=request.job_id, reason="cancelled in the forge")
    assert decode_cancel(encode_cancel(cancel)) == cancel


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"job_id": "x"}', "no schema_version"),
        (b'{"schema_version": "jobrequest.v9"}', "unknown schema_version 'jobrequest.v9'"),
        (b'{"schema_version": "jobrequest.v1", "job_id": 5}', "not a valid jobrequest.v1"),
        (b'{"schema_version": "jobrequest.v1", "surprise": 1}', "unknown field(s) surprise"),
    ],
)
def test_codec_rejects_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_request(body)
    assert reason in info.value.reason


def test_codec_never_puts_secrets_in_a_reason() -> None:
    data = json.loads(encode_request(make_request()))
    data["secrets"] = {"TOKEN": ["s3cret-value"]}
    with pytest.raises(InvalidMessage) as info:
        decode_request(json.dumps(data).encode())
    assert "s3cret-value" not in str(info.value)


def test_mask_secrets_for_dead_letters() -> None:
    request = dataclasses.replace(
        make_request(),
        secrets={"KEY": "line-one\nline-two", "TOKEN": "s3cret"},
        contexts={"github": {"token": "ghs_abc123", "ref": "main"}, "secrets": {"X": "xval"}},
        job=dataclasses.replace(make_request().job, env={"ECHO": "s3cret and line-two"}),
    )
    body, masked = mask_secrets(encode_request(request))
    assert masked
    for value in (b"s3cret", b"line-one", b"line-two", b"ghs_abc123", b"xval"):
        assert value not in body
    back = decode_request(body)
    assert back.secrets == {"KEY": "***", "TOKEN": "***"} and back.job.env == {"ECHO": "*** and ***"}
    assert back.contexts["github"] == {"token": "***", "ref": "main"}
    event = encode_event(make_event("a", 1))
    assert mask_secrets(event) == (event, False)
    assert mask_secrets(b"{not json") == (b"{not json", False)


def test_event_sequencer_drops_duplicates_and_reports_gaps() -> None:
    seq = EventSequencer(max_jobs=2)
    checks = [seq.observe(make_event("a", n)) for n in (1, 2, 2, 1, 5, 6)]
    assert [c.deliver for c in checks] == [True, True, False, False, True, True]
    assert [list(c.missing) for c in checks] == [[], [], [], [], [3, 4], []]
    assert seq.last_seen("a") == 6
    assert seq.observe(make_event("b", 2)).missing == range(1, 2)  # seq starts at 1
    seq.observe(make_event("c", 1))  # evicts "a", the least recently seen
    assert seq.last_seen("a") == 0
    seq.forget("b")
    assert seq.last_seen("b") == 0


def test_names_and_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        Names(BrokerConfig()).job_queue("two words")
    with pytest.raises(ValueError):
        Names(BrokerConfig()).events_queue("poller.*")
    with pytest.raises(ConfigError):
        queue_arguments(BrokerConfig(queue_type="stream"))
    assert queue_arguments(BrokerConfig(queue_type="classic"))["x-queue-type"] == "classic"


# --- topology ----------------------------------------------------------------------------------


def test_topology_is_idempotent_and_mismatch_is_typed(broker_cfg: BrokerConfig, raw: Any) -> None:
    names = Names(broker_cfg)
    for _ in range(2):
        declare_topology(
            raw, broker_cfg, ["debian-12", "omnios"], addresses=["poller-1"], control_host="host-a"
        )
    queues = [
        names.job_queue("debian-12"),
        names.job_queue("omnios"),
        names.events_queue("poller-1"),
        names.control_queue("host-a"),
        broker_cfg.dead_letter_queue,
    ]
    for queue in queues:
        assert ready(raw, queue) == 0  # passive declare: it exists
    if shutil.which("rabbitmqctl"):
        out = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "name", "type"], capture_output=True, text=True, check=True
        ).stdout
        types = dict(line.split("\t")[:2] for line in out.splitlines() if "\t" in line)
        assert {types[q] for q in queues} == {"quorum"}
    # The same names declared as classic queues: a typed error, not a crash or a retry loop.
    classic = dataclasses.replace(broker_cfg, queue_type="classic")
    with pytest.raises(TopologyMismatch), connection(classic, "mismatch", labels=["debian-12"]) as conn:
        conn.connect(timeout=5)


# --- publish and consume -------------------------------------------------------------------------


def test_publish_confirmed_consume_ack(broker_cfg: BrokerConfig, raw: Any) -> None:
    request = make_request()
    got: list[Delivery[JobRequest]] = []

    def on_job(delivery: Delivery[JobRequest]) -> Any:
        got.append(delivery)
        return ACK

    with connection(broker_cfg, "consumer", labels=["debian-12"]) as conn:
        Publisher(conn).publish_job(request)  # returns once confirmed
        queue = Names(broker_cfg).job_queue("debian-12")
        assert ready(raw, queue) == 1
        consumer = Consumer(conn)
        consumer.consume_jobs(["debian-12"], on_job, prefetch=1)
        run_until(consumer, lambda: len(got) == 1)
        settle_for(consumer, 0.2)
    (delivery,) = got
    assert delivery.message == request
    assert not delivery.redelivered
    assert delivery.message_id == request.job_id
    assert delivery.queue == queue and delivery.routing_key == "debian-12"
    assert ready(raw, queue) == 0


def test_unroutable_is_an_error(broker_cfg: BrokerConfig) -> None:
    with connection(broker_cfg, "publisher", labels=["debian-12"]) as conn:
        publisher = Publisher(conn)
        with pytest.raises(Unroutable) as info:
            publisher.publish_job(make_request(label="no-such-label"))
        assert info.value.routing_key == "no-such-label"
        assert "no dispatcher serves label" in (info.value.hint or "")
        with pytest.raises(Unroutable):
            publisher.publish_event(make_event(str(uuid.uuid4()), 1), "poller-2")
        with pytest.raises(Unroutable):
            publisher.publish_cancel(str(uuid.uuid4()))
        publisher.publish_job(make_request())  # the channel is still good


def test_malformed_and_unknown_versions_go_to_the_dlq_with_a_reason(
    broker_cfg: BrokerConfig, raw: Any
) -> None:
    good = make_request()
    refused = make_request()
    got: list[JobRequest] = []

    def on_job(delivery: Delivery[JobRequest]) -> Any:
        got.append(delivery.message)
        return dead_letter("no image for this label") if delivery.message == refused else ACK

    with connection(broker_cfg, "consumer") as conn:
        consumer = Consumer(conn)
        consumer.consume_jobs(["debian-12"], on_job, prefetch=5)
        consumer.process_events(0)  # declares the queue
        props = pika.BasicProperties(delivery_mode=2, message_id="bad")
        bodies = [b"{not json", json.dumps({"schema_version": "jobrequest.v9"}).encode()]
        for body in bodies:
            raw.basic_publish(broker_cfg.jobs_exchange, "debian-12", body, props)
        publisher = Publisher(conn)
        publisher.publish_job(refused)
        publisher.publish_job(good)
        run_until(consumer, lambda: len(got) == 2)  # the consumer kept running
        settle_for(consumer, 0.2)
    assert got == [refused, good]
    wait_ready(raw, broker_cfg.dead_letter_queue, 3)
    with connection(broker_cfg, "operator") as conn:
        letters = peek_dead_letters(conn, limit=10)
    assert [x.reason.split(":")[0] for x in letters] == [
        "not JSON",
        "unknown schema_version 'jobrequest.v9' (expected 'jobrequest.v1')",
        "no image for this label",
    ]
    assert {x.queue for x in letters} == {Names(broker_cfg).job_queue("debian-12")}
    assert letters[2].message_id == refused.job_id and letters[2].routing_key == "debian-12"
    wait_ready(raw, broker_cfg.dead_letter_queue, 3)  # peeking took nothing away
    dead = drain(raw, broker_cfg.dead_letter_queue)
    reasons = [props.headers[REASON_HEADER] for props, _ in dead]
    assert reasons[0].startswith("not JSON")
    assert reasons[1] == "unknown schema_version 'jobrequest.v9' (expected 'jobrequest.v1')"
    assert reasons[2] == "no image for this label"
    assert [body for _, body in dead[:2]] == bodies
    # A dead letter outlives the job: secret values are masked in the copy.
    assert decode_request(dead[2][1]) == dataclasses.replace(refused, secrets={"TOKEN": "***"})
    assert b"s3cret" not in dead[2][1] and dead[2][0].headers["x-solstice-secrets-masked"] is True
    for props, _ in dead:
        assert props.headers["x-solstice-queue"] == Names(broker_cfg).job_queue("debian-12")
        assert props.delivery_mode == 2
    assert ready(raw, Names(broker_cfg).job_queue("debian-12")) == 0


# --- prefetch = free capacity ----------------------------------------------------------------------


def test_prefetch_bounds_unsettled_deliveries(broker_cfg: BrokerConfig, raw: Any) -> None:
    held: list[Delivery[JobRequest]] = []
    queue = Names(broker_cfg).job_queue("debian-12")
    with connection(broker_cfg, "consumer", labels=["debian-12"]) as conn:
        publisher = Publisher(conn)
        for _ in range(6):
            publisher.publish_job(make_request())
        consumer = Consumer(conn)
        consumer.consume_jobs(["debian-12"], held.append, prefetch=2)  # None: settle later
        run_until(consumer, lambda: len(held) == 2)
        settle_for(consumer, 0.5)
        assert len(held) == 2 and consumer.unsettled() == 2
        assert ready(raw, queue) == 4
        assert consumer.settle(held[0], ACK)
        run_until(consumer, lambda: len(held) == 3)
        settle_for(consumer, 0.3)
        assert len(held) == 3 and consumer.unsettled() == 2
        # More capacity: up to 4 unsettled. RabbitMQ gives the new consumer 4 more, on top of
        # the 2 held: the one too many goes back to the queue.
        consumer.set_prefetch(4)
        run_until(consumer, lambda: consumer.unsettled() == 4)
        settle_for(consumer, 0.3)
        assert consumer.unsettled() == 4
        wait_ready(raw, queue, 1)
        for delivery in held[1:]:
            if delivery.generation == held[-1].generation and consumer.unsettled():
                consumer.settle(delivery, ACK)
        run_until(consumer, lambda: len({d.message.job_id for d in held}) == 6)
        consumer.settle(held[-1], ACK)
        settle_for(consumer, 0.2)
        assert consumer.unsettled() == 0
        with pytest.raises(ValueError):
            consumer.settle(held[-1], ACK)
    assert ready(raw, queue) == 0


def test_capacity_zero_pauses_consumption(broker_cfg: BrokerConfig, raw: Any) -> None:
    got: list[Delivery[JobRequest]] = []
    queue = Names(broker_cfg).job_queue("debian-12")
    with connection(broker_cfg, "consumer", labels=["debian-12"]) as conn:
        consumer = Consumer(conn)

        def on_job(delivery: Delivery[JobRequest]) -> Any:
            got.append(delivery)
            consumer.set_prefetch(0)  # that was the last free slot: pause before the ack
            return ACK

        consumer.consume_jobs(["debian-12"], on_job, prefetch=0)
        publisher = Publisher(conn)
        for _ in range(3):
            publisher.publish_job(make_request())
        settle_for(consumer, 0.5)
        assert got == [] and ready(raw, queue) == 3
        consumer.set_prefetch(1)
        run_until(consumer, lambda: len(got) == 1)
        settle_for(consumer, 0.5)
        assert len(got) == 1 and ready(raw, queue) == 2
        consumer.set_prefetch(1)
        run_until(consumer, lambda: len(got) == 2)
        settle_for(consumer, 0.3)
        assert len(got) == 2 and ready(raw, queue) == 1


def test_prefetch_is_shared_by_several_label_queues(broker_cfg: BrokerConfig, raw: Any) -> None:
    held: list[Delivery[JobRequest]] = []
    most = 0

    def on_job(delivery: Delivery[JobRequest]) -> None:
        nonlocal most
        held.append(delivery)
        most = max(most, consumer.unsettled())

    with connection(broker_cfg, "consumer", labels=["debian-12", "omnios"]) as conn:
        publisher = Publisher(conn)
        for label in ("debian-12", "omnios", "debian-12", "omnios"):
            publisher.publish_job(make_request(label=label))
        consumer = Consumer(conn)
        consumer.consume_jobs(["debian-12", "omnios"], on_job, prefetch=1)
        done: set[str] = set()
        while len(done) < 4:
            run_until(consumer, lambda: consumer.unsettled() == 1)
            settle_for(consumer, 0.2)
            assert consumer.unsettled() == 1
            delivery = next(d for d in held if d.message.job_id not in done)
            consumer.settle(delivery, ACK)
            done.add(delivery.message.job_id)
    assert most == 1
    assert ready(raw, Names(broker_cfg).job_queue("omnios")) == 0


# --- at least once ----------------------------------------------------------------------------


def close_connection_on_broker(name: str) -> None:
    """Kill a client's connection from the broker side, like a network failure would."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pids = [line.split("\t")[0] for line in out.splitlines() if f'"{name}"' in line]
    assert pids, f"no connection named {name}"
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "test"], check=True, capture_output=True
        )


def test_unacked_job_is_redelivered_after_the_connection_dies(broker_cfg: BrokerConfig, raw: Any) -> None:
    assert shutil.which("rabbitmqctl"), "rabbitmqctl is not installed (scripts/services installs it)"
    request = make_request()
    got: list[Delivery[JobRequest]] = []
    with connection(broker_cfg, "dies", labels=["debian-12"]) as conn:
        Publisher(conn).publish_job(request)
        consumer = Consumer(conn)
        consumer.consume_jobs(["debian-12"], got.append, prefetch=1)  # recorded, never acked
        run_until(consumer, lambda: len(got) == 1)
        epoch = conn.epoch
        close_connection_on_broker("test-dies")
        run_until(consumer, lambda: len(got) == 2, timeout=15)  # reconnects, consumes again
        assert conn.epoch > epoch
        first, again = got
        assert again.message == request and again.redelivered and not first.redelivered
        assert not consumer.settle(first, ACK)  # its channel is gone: a no-op
        assert consumer.settle(again, ACK)
        settle_for(consumer, 0.2)
    assert ready(raw, Names(broker_cfg).job_queue("debian-12")) == 0


def test_the_same_job_published_twice_arrives_twice(broker_cfg: BrokerConfig) -> None:
    """The queue does not deduplicate: the store must (the job uuid is its primary key)."""
    request = make_request()
    got: list[JobRequest] = []
    with connection(broker_cfg, "consumer", labels=["debian-12"]) as conn:
        publisher = Publisher(conn)
        publisher.publish_job(request)
        publisher.publish_job(request)
        consumer = Consumer(conn)
        consumer.consume_jobs(["debian-12"], lambda d: got.append(d.message) or ACK, prefetch=2)
        run_until(consumer, lambda: len(got) == 2)
    assert got == [request, request]


def test_handler_exception_requeues_and_consumer_continues(broker_cfg: BrokerConfig) -> None:
    request = make_request()
    got: list[Delivery[JobRequest]] = []

    def on_job(delivery: Delivery[JobRequest]) -> Any:
        got.append(delivery)
        if len(got) == 1:
            raise RuntimeError("database is down")
        return ACK

    with connection(broker_cfg, "consumer", labels=["debian-12"]) as conn:
        Publisher(conn).publish_job(request)
        consumer = Consumer(conn, error_backoff=Backoff(initial=0.3, maximum=0.3, jitter=0))
        consumer.consume_jobs(["debian-12"], on_job, prefetch=1)
        run_until(consumer, lambda: len(got) == 2)
    assert got[1].message == request and got[1].redelivered


def test_a_deleted_queue_is_declared_again(broker_cfg: BrokerConfig, raw: Any) -> None:
    got: list[JobRequest] = []
    with connection(broker_cfg, "consumer") as conn:
        consumer = Consumer(conn)
        consumer.consume_jobs(["debian-12"], lambda d: got.append(d.message) or ACK, prefetch=1)
        consumer.process_events(0.1)
        raw.queue_delete(queue=Names(broker_cfg).job_queue("debian-12"))  # an operator's mistake
        settle_for(consumer, 0.5)
        request = make_request()
        Publisher(conn).publish_job(request)
        run_until(consumer, lambda: got == [request])


# --- events and control ---------------------------------------------------------------------------


def test_events_keep_order_and_the_sequencer_drops_duplicates(broker_cfg: BrokerConfig) -> None:
    job = str(uuid.uuid4())
    sequencer = EventSequencer()
    delivered: list[int] = []
    dropped: list[int] = []
    gaps: list[range] = []

    def on_event(delivery: Delivery[JobEvent]) -> Any:
        check = sequencer.observe(delivery.message)
        if check.gap:
            gaps.append(check.missing)
        (delivered if check.deliver else dropped).append(delivery.message.seq)
        return ACK

    with connection(broker_cfg, "poller", addresses=["poller-1"]) as conn:
        sink = QueueEventSink(Publisher(conn), "poller-1")  # what a job process emits to
        for seq in (1, 2, 3, 4, 3, 4, 5, 7, 8):  # 3, 4 again (a retried publish); 6 lost
            sink.emit(make_event(job, seq))
        consumer = Consumer(conn)
        consumer.consume_events("poller-1", on_event)
        run_until(consumer, lambda: len(delivered) + len(dropped) == 9)
    assert delivered == [1, 2, 3, 4, 5, 7, 8]
    assert dropped == [3, 4]
    assert gaps == [range(6, 7)]


def test_cancel_reaches_every_dispatcher(broker_cfg: BrokerConfig) -> None:
    job = str(uuid.uuid4())
    seen: dict[str, list[CancelJob]] = {"host-a": [], "host-b": []}
    with connection(broker_cfg, "dispatchers") as conn:
        consumers = []
        for host, cancels in seen.items():
            consumer = Consumer(conn)
            consumer.consume_control(host, lambda d, cancels=cancels: cancels.append(d.message) or ACK)
            consumer.process_events(0)  # declares and binds the host's control queue
            consumers.append(consumer)
        Publisher(conn).publish_cancel(job, reason="cancelled in the forge")
        run_until(consumers[0], lambda: all(seen.values()))
    assert seen["host-a"] == seen["host-b"] == [CancelJob(job_id=job, reason="cancelled in the forge")]


# --- a broker restart ------------------------------------------------------------------------------


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def wait_for_broker(cfg: BrokerConfig, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not broker_answers(cfg):
        assert time.monotonic() < deadline, "RabbitMQ did not come back"
        time.sleep(0.2)


def test_broker_restart_loses_and_duplicates_no_event(
    broker_cfg: BrokerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """Events flow from a publisher thread to a consumer while RabbitMQ restarts: the publisher
    retries unconfirmed publishes, the consumer reconnects, the sequencer drops duplicates."""
    assert shutil.which("rabbitmqctl"), "rabbitmqctl is not installed (scripts/services installs it)"
    job = str(uuid.uuid4())
    half = threading.Event()
    restarted = threading.Event()
    published: list[int] = []
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            with connection(broker_cfg, "restart-publisher") as conn:
                publisher = Publisher(conn, timeout=60)
                seq = 0
                extra = 0
                while extra < 40:
                    seq += 1
                    publisher.publish_event(make_event(job, seq), "poller-1")
                    published.append(seq)
                    if seq == 40:
                        half.set()
                    if restarted.is_set():
                        extra += 1
                    time.sleep(0.01)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    def restart() -> None:
        try:
            half.wait(30)
            rabbitmqctl("stop_app")
            time.sleep(0.5)  # the publisher retries against a stopped broker
        except BaseException as exc:
            failures.append(exc)
        finally:
            rabbitmqctl("start_app")
            wait_for_broker(broker_cfg)
            restarted.set()

    sequencer = EventSequencer()
    delivered: list[int] = []
    duplicates: list[int] = []
    gaps: list[range] = []

    def on_event(delivery: Delivery[JobEvent]) -> Any:
        check = sequencer.observe(delivery.message)
        if check.gap:
            gaps.append(check.missing)
        (delivered if check.deliver else duplicates).append(delivery.message.seq)
        return ACK

    conn = connection(broker_cfg, "restart-consumer", addresses=["poller-1"])
    publisher_thread = threading.Thread(target=publish, daemon=True)
    restart_thread = threading.Thread(target=restart, daemon=True)
    try:
        consumer = Consumer(conn)
        consumer.consume_events("poller-1", on_event, prefetch=20)
        consumer.process_events(0)
        epoch = conn.epoch
        publisher_thread.start()
        restart_thread.start()
        deadline = time.monotonic() + 60
        while publisher_thread.is_alive() or len(delivered) < len(published):
            assert not failures, failures
            assert time.monotonic() < deadline, f"delivered {len(delivered)} of {len(published)}"
            consumer.process_events(0.1)
        assert not failures, failures
        assert restarted.is_set() and conn.epoch > epoch
        settle_for(consumer, 0.3)
    finally:
        restart_thread.join(120)
        if not broker_answers(broker_cfg):
            rabbitmqctl("start_app")
            wait_for_broker(broker_cfg)
        conn.close()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("solstice.queue")]
    assert any("not confirmed" in m and "retrying" in m for m in messages)  # the publisher retried
    assert published == list(range(1, len(published) + 1))
    assert delivered == published
    assert gaps == []
    assert all(seq in published for seq in duplicates)


def test_connection_names_do_not_leak_credentials(broker_cfg: BrokerConfig) -> None:
    conn = Connection(broker_cfg)
    assert "guest" not in conn.where and re.fullmatch(r"[^@]+:\d+", conn.where)
