"""The dispatcher against a real RabbitMQ and PostgreSQL, with the process spawner and a stand-in job
program (helpers/fake_job.py: the job process's contract without a VM; tests/vm covers VMs).

Faults: job processes that fail, exit oddly or die by a signal; the same JobRequest twice; malformed
messages; cancellation before and during a job; the dispatcher SIGKILLed mid-job and restarted;
PostgreSQL and RabbitMQ restarted; two dispatchers (hosts) on the same queues; RuntimeMaxSec.
The first tests need no services: the systemd spawner's command lines and the verdicts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from helpers.pipeline import (
    LABEL,
    Pipeline,
    Poller,
    make_pipeline,
    make_request,
    wait_state,
    wait_until,
)
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import ensure_postgres_running, local_cluster, pg_ctl
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice import config as configmod
from solstice.config import BrokerConfig, Config, DatabaseConfig
from solstice.dispatch.contract import (
    exit_record,
    request_file,
    synthetic_final_event,
    unit_name,
)
from solstice.dispatch.spawner import ENDED, GONE, RUNNING, UnitStatus, judge, parse_exit_record
from solstice.dispatch.systemd import SystemdSpawner, runtime_max, transient_properties
from solstice.images import Catalog, plan_machine
from solstice.model import EventKind, JobEvent, JobSpec, Outcome, Result, Stream, from_dict, to_dict
from solstice.queue import (
    SYNTHETIC_SEQ,
    EventSequencer,
    InvalidMessage,
    Names,
    decode_events,
    encode_batch,
    encode_event,
    encode_request,
    peek_dead_letters,
)
from solstice.queue.codec import EVENT_FIELDS
from solstice.store import Store

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (ROOT / "units" / "solstice-job@.service").read_text()


# --- the systemd spawner's command lines, without systemd ---------------------------------------


class FakeSystemctl:
    """Records the commands; answers ``systemctl show``/``list-units`` from canned text."""

    def __init__(self, show: str = "", units: str = "") -> None:
        self.calls: list[list[str]] = []
        self.show = show
        self.units = units

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append([str(a) for a in argv])
        out = ""
        if argv[:2] == ["systemctl", "show"]:
            out = self.show
        elif argv[:2] == ["systemctl", "list-units"]:
            out = self.units
        return subprocess.CompletedProcess(argv, 0, out.encode(), b"")


def _cfg(tmp: Path, **dispatcher: Any) -> Config:
    cfg = configmod.load(environ={"SOLSTICE_PATHS_RUNTIME_DIR": "/run/solstice"})
    return Config(
        vm=cfg.vm,
        paths=configmod.PathsConfig(state_dir=str(tmp), runtime_dir="/run/solstice"),
        dispatcher=configmod.DispatcherConfig(host="h1", **dispatcher),
    )


def test_systemd_spawner_starts_a_transient_unit_from_the_template(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    run = FakeSystemctl()
    spawner = SystemdSpawner(cfg, template=TEMPLATE, run=run)
    request = make_request("ok", timeout_minutes=30)
    path = request_file(cfg.paths.runtime_dir, request.job_id)
    image = Catalog.from_config(cfg).get(LABEL)
    plan = plan_machine(request.size, image, cfg.vm)
    spawner.start(request, path, runtime_max(request, cfg, image), plan)
    (argv,) = run.calls
    job = request.job_id
    assert argv[:4] == ["systemd-run", "--quiet", "--no-block", f"--unit=solstice-job@{job}.service"]
    assert argv[-5:] == ["--", "/usr/bin/solstice", "job", "run", job]
    props = [a.removeprefix("--property=") for a in argv if a.startswith("--property=")]
    template_props, command = transient_properties(TEMPLATE, job)
    assert props[: len(template_props)] == template_props  # the template first, in its order
    assert f"RuntimeDirectory=solstice/jobs/{job}" in props
    # The job's limits: 2048 MiB VM + 512 MiB overhead, 2 CPUs, 30 min + 300 s boot + 600 s margin.
    assert "MemoryMax=2560M" in props and "CPUQuota=200%" in props and "TasksMax=512" in props
    assert "RuntimeMaxSec=2700" in props
    assert f"LoadCredential=job-request:/run/solstice/requests/{job}.json" in props
    (post,) = [p for p in props if p.startswith("ExecStopPost=")]
    # No "+": systemd 252 saves that as ExecStopPostEx=, which a daemon-reload cannot read back.
    assert post.startswith("ExecStopPost=/bin/sh -c '")
    assert f"> /run/solstice/exits/{job}.exit" in post and "SERVICE_RESULT" in post and "$" not in post
    # Nor ";": systemd 252 writes it as "\;" and, after a daemon-reload, hands the shell "022\;".
    assert ";" not in post
    assert not [p for p in template_props if "%" in p]

    # job_command overrides the template's ExecStart; an expression timeout means the default.
    spawner = SystemdSpawner(cfg, template=TEMPLATE, command=["/opt/x/solstice", "job", "run"], run=run)
    request = make_request("ok")
    spec = JobSpec("k", "n", (LABEL,), (), timeout_minutes="${{ 5 }}")
    request = dataclasses.replace(request, job=spec)
    assert runtime_max(request, cfg, image) == 360 * 60 + 300 + 600
    argv = spawner.argv(request, Path("/run/solstice/requests/x.json"), {})
    assert argv[-4:] == ["/opt/x/solstice", "job", "run", request.job_id]


def test_systemd_spawner_reads_status_list_stop_release(tmp_path: Path) -> None:
    a, b, c, d = (str(uuid.uuid4()) for _ in range(4))
    show = "\n\n".join(
        [
            f"Result=success\nExecMainCode=0\nExecMainStatus=0\nId={unit_name(a)}\nLoadState=loaded\n"
            "ActiveState=active\nSubState=running\nJob=",
            f"Result=timeout\nExecMainCode=2\nExecMainStatus=15\nId={unit_name(b)}\nLoadState=loaded\n"
            "ActiveState=failed\nSubState=failed\nJob=",
            f"Result=success\nExecMainCode=0\nExecMainStatus=0\nId={unit_name(c)}\nLoadState=not-found\n"
            "ActiveState=inactive\nSubState=dead\nJob=",
            f"Result=success\nExecMainCode=0\nExecMainStatus=0\nId={unit_name(d)}\nLoadState=loaded\n"
            "ActiveState=inactive\nSubState=dead\nJob=383",
        ]
    )
    runtime = tmp_path / "run"
    cfg = _cfg(tmp_path)
    cfg = Config(vm=cfg.vm, paths=configmod.PathsConfig(runtime_dir=str(runtime)), dispatcher=cfg.dispatcher)
    exit_record(runtime, c).parent.mkdir(parents=True)
    units = [f"{unit_name(a)} loaded active running x", f"{unit_name(b)} loaded failed failed y"]
    run = FakeSystemctl(show=show, units="\n".join([*units, "other.service loaded active running z", ""]))
    spawner = SystemdSpawner(cfg, template=TEMPLATE, run=run)
    statuses = spawner.status([a, b, c, d])
    assert statuses[a].state == RUNNING and statuses[d].state == RUNNING  # d: its start job is queued
    assert statuses[b] == UnitStatus(b, ENDED, "timeout", "killed", 15, statuses[b].detail)
    assert statuses[c].state == GONE  # unloaded and no exit record
    exit_record(runtime, c).write_text("success exited 0\n")
    assert spawner.status([c])[c] == UnitStatus(c, ENDED, "success", "exited", 0, "exit record")
    assert spawner.list_units() == [a, b]
    spawner.stop(a)
    spawner.release(b)
    assert run.calls[-2] == ["systemctl", "stop", "--no-block", unit_name(a)]
    assert run.calls[-1] == ["systemctl", "reset-failed", unit_name(b)]


def test_verdicts() -> None:
    j = str(uuid.uuid4())

    def verdict(line: str, cancel: bool = False, **kw: Any) -> tuple[Result, bool, str]:
        status = parse_exit_record(j, line)
        assert status is not None
        v = judge(status, cancel_requested=cancel, **kw)
        return v.result, v.reported, v.message

    assert verdict("success exited 0") == (Result.SUCCESS, True, "")
    # a job unit's ExecStopPost= writes the same as its environment's lines
    assert verdict("EXIT_CODE=exited\nSERVICE_RESULT=success\nEXIT_STATUS=0\n") == (Result.SUCCESS, True, "")
    assert verdict("SERVICE_RESULT=exit-code\nEXIT_CODE=exited\nEXIT_STATUS=1\n")[:2] == (
        Result.FAILURE,
        True,
    )
    assert verdict("exit-code exited 1")[:2] == (Result.FAILURE, True)
    assert verdict("exit-code exited 4")[:2] == (Result.ERROR, True)
    assert verdict("exit-code exited 3", cancel=True)[:2] == (Result.CANCELLED, True)
    # exit 3 without our cancellation: someone ran systemctl stop/kill
    result, reported, message = verdict("exit-code exited 3")
    assert (result, reported) == (Result.ERROR, False) and "systemctl stop/kill" in message
    assert verdict("exit-code exited 2")[:2] == (Result.ERROR, False)
    result, reported, message = verdict("signal killed KILL")
    assert (result, reported) == (Result.ERROR, False) and "SIGKILL" in message
    result, _, message = verdict("timeout exited 3", ran_for=100.0, runtime_max=100.0)
    assert result is Result.ERROR and "RuntimeMaxSec=100 exceeded" in message
    assert verdict("timeout killed KILL", cancel=True)[:2] == (Result.CANCELLED, False)
    assert "out-of-memory" in verdict("oom-kill killed KILL")[2]
    gone = judge(UnitStatus(j, GONE), cancel_requested=False, adopted=True)
    assert gone.result is Result.ERROR
    assert gone.message == "the dispatcher restarted and the job's unit was gone"
    event = synthetic_final_event(j, Result.ERROR, "x")
    assert event.seq == SYNTHETIC_SEQ and event.kind is EventKind.JOB_FINISHED
    seq = EventSequencer()
    assert seq.observe(type(event)(j, 1, 0.0, EventKind.JOB_STARTED)).deliver
    check = seq.observe(event)
    assert check.deliver and not check.gap  # the expected gap is not reported
    assert not seq.observe(event).deliver  # a repeat is dropped


def test_event_batches_agree_with_the_model() -> None:
    """The hand-written batch codec and the model's own (to_dict/from_dict) must not drift apart."""
    assert EVENT_FIELDS == {f.name for f in dataclasses.fields(JobEvent)}
    job = str(uuid.uuid4())
    events = [
        JobEvent(job, 1, 1.5, EventKind.JOB_STARTED, text="build (3.11)"),
        JobEvent(job, 2, 2.0, EventKind.LOG, step=1, stream=Stream.STDERR, text="ünïcode ✓ line"),
        JobEvent(
            job, 3, 3, EventKind.STEP_FINISHED, step=1, outcome=Outcome.FAILURE,
            conclusion=Outcome.SUCCESS, exit_code=2, message="m", outputs={"a": "b"},
        ),
        JobEvent(job, 4, 4.0, EventKind.JOB_FINISHED, result=Result.FAILURE, message="step 1 failed"),
    ]  # fmt: skip
    decoded = decode_events(encode_batch(events))
    assert list(decoded) == [from_dict(JobEvent, to_dict(e)) for e in events]
    assert decode_events(encode_event(events[1])) == (events[1],)  # the single-event form too
    for bad, reason in [
        ({**json.loads(encode_batch(events)), "last_seq": 9}, "first_seq/last_seq"),
        ({**json.loads(encode_batch(events)), "job_id": "x"}, "job_id differs"),
        ({"schema_version": "jobevents.v2", "events": []}, "unknown schema_version"),
    ]:
        with pytest.raises(InvalidMessage, match=reason):
            decode_events(dumps(bad))
    doc = json.loads(encode_batch(events[:1]))
    doc["events"][0]["kind"] = "nope"
    with pytest.raises(InvalidMessage, match="JobEvent.kind"):
        decode_events(dumps(doc))
    with pytest.raises(ValueError, match="out of order"):
        encode_batch([events[1], events[0]])


def test_a_bad_template_is_refused(tmp_path: Path) -> None:
    with pytest.raises(configmod.ConfigError, match="specifier %n"):
        SystemdSpawner(_cfg(tmp_path), template="[Service]\nExecStart=/bin/true %n\n", run=FakeSystemctl())


# --- the pipeline, for real ------------------------------------------------------------------------


@pytest.fixture
def pipeline(broker_cfg: BrokerConfig, database_url: str) -> Iterator[Pipeline]:
    yield from make_pipeline(broker_cfg, database_url)


@pytest.fixture
def db(database_url: str) -> Iterator[Store]:
    store = Store.connect(DatabaseConfig(url=database_url), application_name="test-dispatcher")
    yield store
    store.close()


@pytest.fixture
def poller(pipeline: Pipeline) -> Iterator[Poller]:
    p = Poller(pipeline.cfg)
    yield p
    p.close()


def dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()


def kinds(poller: Poller, job_id: str) -> list[str]:
    return [e.kind.value for e in poller.events.get(job_id, [])]


def test_jobs_end_with_their_results_and_units_ending_badly_get_a_synthetic_event(
    pipeline: Pipeline, poller: Poller, db: Store
) -> None:
    pipeline.dispatcher(capacity=6)
    modes = {"ok": Result.SUCCESS, "fail": Result.FAILURE, "error": Result.ERROR}
    jobs = {m: poller.publish(make_request(m)) for m in [*modes, "exit:2", "exit:7", "signal:KILL"]}
    for mode, job_id in jobs.items():
        final = poller.wait_final(job_id)
        rec = wait_state(db, job_id, {"succeeded", "failed", "errored", "cancelled"})
        if mode in modes:
            assert final.result is modes[mode] and final.seq < SYNTHETIC_SEQ, mode
            assert rec.result is modes[mode]
        else:
            assert final.seq == SYNTHETIC_SEQ and final.result is Result.ERROR, mode
            assert rec.result is Result.ERROR and rec.error == final.message
        assert kinds(poller, job_id)[0] == "job_started"
        assert rec.host == "host-a" and rec.unit == unit_name(job_id)
        assert rec.running_at is not None
    assert "exited with status 7" in (db.get(jobs["exit:7"]).error or "")  # type: ignore[union-attr]
    assert "usage or configuration error" in (db.get(jobs["exit:2"]).error or "")  # type: ignore[union-attr]
    assert "killed by SIGKILL" in (db.get(jobs["signal:KILL"]).error or "")  # type: ignore[union-attr]
    # The job's output is in its log (the journal, under systemd), as human lines.
    log = (pipeline.runtime_dir / "processes" / "host-a" / f"{jobs['ok']}.log").read_text()
    assert "fake job ok" in log and "success" in log
    # Everything of a job is gone when it has ended: request, marker, exit record, pid file.
    wait_until("job files removed", lambda: not list((pipeline.runtime_dir / "requests").iterdir()), 5)
    assert not list((pipeline.runtime_dir / "processes" / "host-a").glob("*.pid"))
    assert not poller.gaps


def test_the_same_request_twice_is_one_job(pipeline: Pipeline, poller: Poller, db: Store) -> None:
    pipeline.dispatcher(capacity=2)
    request = make_request("sleep:0.5")
    poller.publish(request)
    poller.publish(request)
    final = poller.wait_final(request.job_id)
    assert final.result is Result.SUCCESS
    time.sleep(1.0)  # the second delivery has been handled
    poller.pump(0.3)
    poller.publish(request)  # and once more after it ended
    poller.pump(1.0)
    assert len(pipeline.runs(request.job_id)) == 1
    assert kinds(poller, request.job_id).count("job_started") == 1
    assert wait_state(db, request.job_id, {"succeeded"}).result is Result.SUCCESS


def test_malformed_and_unknown_messages_are_dead_lettered_with_a_reason(
    pipeline: Pipeline, poller: Poller, db: Store, raw: Any
) -> None:
    pipeline.dispatcher(capacity=2)
    cfg = pipeline.cfg.broker
    props = pika.BasicProperties(delivery_mode=2, message_id="bad")
    good = make_request("ok")
    body = json.loads(encode_request(good))
    bodies = {
        "not JSON": b"{nope",
        "unknown schema_version 'jobrequest.v9'": dumps({**body, "schema_version": "jobrequest.v9"}),
        "is not a uuid": dumps({**body, "job_id": "not-a-uuid"}),
        "plaintext secrets": dumps({**body, "job_id": str(uuid.uuid4()), "secrets": {"A": "s3cr3t"}}),
    }
    for payload in bodies.values():
        raw.basic_publish(exchange=cfg.jobs_exchange, routing_key=LABEL, body=payload, properties=props)
    poller.publish(good)  # and the dispatcher goes on with the next job
    assert poller.wait_final(good.job_id).result is Result.SUCCESS

    def dead() -> list[Any] | None:
        letters = peek_dead_letters(poller.conn, limit=10)
        return letters if len(letters) >= len(bodies) else None

    letters = poller.wait("dead letters", dead, 10)
    reasons = [d.reason for d in letters]
    for expected in bodies:
        assert any(expected in r for r in reasons), (expected, reasons)
    assert all(b"s3cr3t" not in d.body for d in letters)


def test_cancel_before_and_while_running(pipeline: Pipeline, poller: Poller, db: Store) -> None:
    pipeline.dispatcher(capacity=1)
    running = poller.publish(make_request("sleep:30"))
    waiting = poller.publish(make_request("ok"))
    poller.wait("the first job to run", lambda: "log" in kinds(poller, running), 15)
    # Not started yet (capacity 1): cancelled in the database, never started.
    poller.publisher.publish_cancel(waiting, "test: cancel the waiting one")
    # Never seen by any dispatcher: recorded as cancelled; its request later is never run.
    unknown = make_request("ok")
    poller.publisher.publish_cancel(unknown.job_id, "test: cancel before publishing")
    wait_state(db, unknown.job_id, {"cancelled"}, 10)
    # Running: the unit is stopped; the job ends cancelled, reported by itself.
    started = time.monotonic()
    poller.publisher.publish_cancel(running, "test: cancel the running one")
    final = poller.wait_final(running, 15)
    assert final.result is Result.CANCELLED and final.seq < SYNTHETIC_SEQ
    assert time.monotonic() - started < 10
    assert wait_state(db, running, {"cancelled"}).result is Result.CANCELLED
    poller.publish(unknown)
    final = poller.wait_final(unknown.job_id, 15)
    assert final.result is Result.CANCELLED and final.seq == SYNTHETIC_SEQ
    poller.pump(1.0)
    rec = db.get(waiting)
    assert rec is not None and rec.state.value == "cancelled" and rec.starting_at is None
    assert pipeline.runs(waiting) == [] and pipeline.runs(unknown.job_id) == []
    assert len(pipeline.runs(running)) == 1


def test_dispatcher_killed_mid_job_adopts_or_errors_each_job_exactly_once(
    pipeline: Pipeline, poller: Poller, db: Store
) -> None:
    first = pipeline.dispatcher(capacity=3)
    survivor = poller.publish(make_request("sleep:4"))
    victim = poller.publish(make_request("sleep:60"))
    for job_id in (survivor, victim):
        poller.wait("the jobs to run", lambda j=job_id: "log" in kinds(poller, j), 15)  # type: ignore[misc]
    # A stray process unit the database does not know: the restarted dispatcher stops it.
    stray = str(uuid.uuid4())
    piddir = pipeline.runtime_dir / "processes" / "host-a"
    stray_proc = subprocess.Popen(
        [sys.executable, "-m", "solstice.dispatch.supervise",
         "--record", str(exit_record(pipeline.runtime_dir, stray)),
         "--pidfile", str(piddir / f"{stray}.pid"), "--job-id", stray, "--", "sleep", "60"],
        env=pipeline.env, start_new_session=True,
    )  # fmt: skip
    wait_until("the stray's pid file", lambda: (piddir / f"{stray}.pid").exists(), 5)

    first.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    first.proc.wait()  # type: ignore[union-attr]
    # The victim's process dies too while no dispatcher runs: supervisor and job, no exit record.
    victim_pid = json.loads((piddir / f"{victim}.pid").read_text())["pid"]
    job_pid = int(pipeline.runs(victim)[0].split()[0])
    os.kill(victim_pid, signal.SIGKILL)
    os.kill(job_pid, signal.SIGKILL)
    time.sleep(0.5)

    pipeline.dispatcher("host-a", capacity=3)
    assert poller.wait_final(survivor, 20).result is Result.SUCCESS
    final = poller.wait_final(victim, 20)
    assert final.result is Result.ERROR
    assert final.message == "the dispatcher restarted and the job's unit was gone"
    assert wait_state(db, survivor, {"succeeded"}).result is Result.SUCCESS
    assert wait_state(db, victim, {"errored"}).error == final.message
    # Exactly once: one run each, one final event each (the survivor's own, not a synthetic one).
    assert len(pipeline.runs(survivor)) == 1 and len(pipeline.runs(victim)) == 1
    assert kinds(poller, survivor).count("job_finished") == 1
    assert poller.final(survivor).seq < SYNTHETIC_SEQ  # type: ignore[union-attr]
    stray_proc.wait(timeout=20)
    wait_until("the stray released", lambda: not (piddir / f"{stray}.pid").exists(), 10)


def test_postgres_restart_the_dispatcher_reconnects_and_keeps_following(
    pipeline: Pipeline, poller: Poller, db: Store
) -> None:
    if local_cluster() is None:
        pytest.fail("PostgreSQL is not a local Debian cluster (pg_ctlcluster): this test restarts it")
    d = pipeline.dispatcher(capacity=2)
    during = poller.publish(make_request("sleep:3"))
    poller.wait("the job to run", lambda: "log" in kinds(poller, during), 15)
    try:
        pg_ctl("restart")
    finally:
        ensure_postgres_running()
    db.reconnect()
    assert poller.wait_final(during, 20).result is Result.SUCCESS
    assert wait_state(db, during, {"succeeded"}, 20).result is Result.SUCCESS
    after = poller.publish(make_request("ok"))
    assert poller.wait_final(after, 20).result is Result.SUCCESS
    assert wait_state(db, after, {"succeeded"}, 10)
    assert d.proc is not None and d.proc.poll() is None
    print(d.output())
    assert "WARNING solstice.dispatcher: database: lost the connection" in d.output()


def test_rabbitmq_restart_while_events_flow_loses_and_duplicates_nothing(
    pipeline: Pipeline, poller: Poller, db: Store
) -> None:
    if subprocess.run(["which", "rabbitmqctl"], capture_output=True).returncode != 0:
        pytest.fail(
            "no rabbitmqctl: this test restarts the local RabbitMQ (apt-get install rabbitmq-server)"
        )
    d = pipeline.dispatcher(capacity=2)
    lines = 150_000
    job = poller.publish(make_request(f"lines:{lines}"))
    poller.wait("events to flow", lambda: len(poller.events.get(job, [])) > 100, 20)
    assert poller.final(job) is None  # still flowing
    try:
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)
        time.sleep(1)
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
    final = poller.wait_final(job, 90)
    assert final.result is Result.SUCCESS
    seqs = [e.seq for e in poller.events[job]]
    # Every event exactly once, in order (duplicates from retried publishes were dropped).
    assert seqs == list(range(1, lines + 4)), (len(seqs), seqs[:3], seqs[-3:])
    assert not poller.gaps
    assert wait_state(db, job, {"succeeded"}, 30).result is Result.SUCCESS
    assert d.proc is not None and d.proc.poll() is None
    after = poller.publish(make_request("ok"))  # and the dispatcher still takes jobs
    assert poller.wait_final(after, 30).result is Result.SUCCESS


def test_two_dispatchers_share_the_jobs_and_never_run_one_twice(
    pipeline: Pipeline, poller: Poller, db: Store
) -> None:
    pipeline.dispatcher("host-a", capacity=2)
    pipeline.dispatcher("host-b", capacity=2)
    requests = [make_request("sleep:0.6") for _ in range(10)]
    for request in requests:
        poller.publish(request)
        poller.publish(request)  # every request twice
    for request in requests:
        assert poller.wait_final(request.job_id, 40).result is Result.SUCCESS
    hosts = set()
    for request in requests:
        runs = pipeline.runs(request.job_id)
        assert len(runs) == 1, runs
        rec = wait_state(db, request.job_id, {"succeeded"})
        assert runs[0].split()[1] == rec.host
        hosts.add(rec.host)
        assert kinds(poller, request.job_id).count("job_started") == 1
    assert hosts == {"host-a", "host-b"}


def test_runtime_max_ends_a_hanging_job_as_error(pipeline: Pipeline, poller: Poller, db: Store) -> None:
    pipeline.dispatcher(
        capacity=1, env={"SOLSTICE_VM_BOOT_TIMEOUT": "1", "SOLSTICE_DISPATCHER_RUNTIME_MARGIN": "1"}
    )
    job = poller.publish(make_request("sleep:60", timeout_minutes=0.02))  # RuntimeMaxSec = 1.2+1+1

    def synthetic() -> JobEvent | None:
        final = poller.final(job)
        return final if final is not None and final.seq == SYNTHETIC_SEQ else None

    final = poller.wait("the dispatcher's final event", synthetic, 20)
    assert final.result is Result.ERROR
    assert "timeout (RuntimeMaxSec=3 exceeded)" in final.message
    # The job itself saw a SIGTERM and said cancelled first; the synthetic event supersedes it.
    assert [e.result for e in poller.events[job] if e.kind is EventKind.JOB_FINISHED] == [
        Result.CANCELLED,
        Result.ERROR,
    ]
    assert wait_state(db, job, {"errored"}).error == final.message


def test_sigterm_stops_the_dispatcher_and_leaves_jobs_running(
    pipeline: Pipeline, poller: Poller, db: Store
) -> None:
    d = pipeline.dispatcher(capacity=1)
    job = poller.publish(make_request("sleep:3"))
    poller.wait("the job to run", lambda: "log" in kinds(poller, job), 15)
    assert d.terminate() == 0
    assert "stopped; 1 job(s) left running" in d.output()
    assert poller.wait_final(job, 15).result is Result.SUCCESS  # the job went on without it
    names = Names(pipeline.cfg.broker)
    assert wait_state(db, job, {"running"}).state.value == "running"
    pipeline.dispatcher(capacity=1)  # the next one finishes it
    assert wait_state(db, job, {"succeeded"}, 15).result is Result.SUCCESS
    assert names.control_queue("host-a")
