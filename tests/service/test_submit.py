"""``solstice submit`` through the whole pipeline: RabbitMQ, PostgreSQL, a dispatcher, job processes.

The quick tests use the stand-in job program (helpers/fake_job.py). The ``vm`` test runs the real
``solstice job run`` with real guests under TCG: one job submitted and followed to success (its
step output on the terminal and in the job's log, its secret masked), and, at the same time, one
job cancelled in the middle of a step (cancelled, its VM gone within 10 s, nothing left behind).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from helpers.pipeline import (
    Pipeline,
    Poller,
    make_pipeline,
    make_request,
    qemu_of,
    wait_state,
    wait_until,
)
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice.config import BrokerConfig, DatabaseConfig
from solstice.model import EventKind, Result, Step
from solstice.secrets import write_new_key
from solstice.store import Store
from tests.testimage import IMAGES, build_test_image

ROOT = Path(__file__).resolve().parents[2]
SECRET = "canary-7c1e-submit-secret"


@pytest.fixture
def db(database_url: str) -> Iterator[Store]:
    store = Store.connect(DatabaseConfig(url=database_url), application_name="test-submit")
    yield store
    store.close()


def submit(pipeline: Pipeline, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "solstice", "submit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**pipeline.env, **kwargs.get("env", {})},  # type: ignore[dict-item]
    )


def until_running(proc: subprocess.Popen[str]) -> tuple[list[str], str]:
    """The submit command's lines until its job's step printed "tick 2", and the job's uuid."""
    assert proc.stdout is not None
    seen: list[str] = []
    while not any("tick 2" in line for line in seen):
        line = proc.stdout.readline()
        assert line, "".join(seen)
        seen.append(line)
    return seen, next(w for line in seen for w in line.split() if len(w) == 36 and w.count("-") == 4)


def queue_exists(broker: BrokerConfig, queue: str) -> bool:
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        conn.channel().queue_declare(queue=queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if conn.is_open:
            conn.close()


WORKFLOW = """
name: submit test
on: push
jobs:
  first:
    runs-on: debian-12
    env: {FAKE: "ok"}
    steps: [{run: "true"}]
  second:
    needs: first
    runs-on: debian-12
    env: {FAKE: "fail"}
    steps: [{run: "true"}]
  third:
    needs: second
    runs-on: debian-12
    env: {FAKE: "ok"}
    steps: [{run: "true"}]
"""


@pytest.fixture
def pipeline(broker_cfg: BrokerConfig, database_url: str) -> Iterator[Pipeline]:
    yield from make_pipeline(broker_cfg, database_url)


def test_submit_follows_the_jobs_in_needs_order(pipeline: Pipeline, db: Store, tmp_path: Path) -> None:
    pipeline.dispatcher(capacity=2)
    workflow = tmp_path / "wf.yml"
    workflow.write_text(WORKFLOW)
    proc = submit(pipeline, str(workflow))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out  # second failed, third skipped
    assert "[first] ▶ first on debian-12" in out and "[first] ■ success" in out
    assert "[second] ■ failure: fake fail" in out
    lines = out.splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith("job "))) :]
    assert any(x.startswith("first ") and "success" in x for x in table)
    assert any(x.startswith("third ") and "skipped" in x for x in table)
    assert "submitted third" not in out
    # Its events queue is gone (deleted when it stopped following).
    leftovers = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True, timeout=60
    ).stdout
    assert f"{pipeline.cfg.broker.events_exchange}.submit-" not in leftovers


GENERATED = ROOT / "tests" / "fixtures" / "workflows" / "generate-matrix-literal.yml"


def test_submit_expands_a_matrix_from_needs_outputs_when_the_needed_job_ended(
    pipeline: Pipeline, db: Store, tmp_path: Path
) -> None:
    pipeline.dispatcher(capacity=2)
    workflow = tmp_path / "wf.yml"
    workflow.write_text(GENERATED.read_text())
    proc = submit(pipeline, str(workflow))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "submitted test (a)" in out and "submitted test (b, clang)" in out, out
    assert out.index("[gen] ■ success") < out.index("submitted test (a)")
    assert "[test (b, clang)] ■ success" in out


def test_submit_without_following(pipeline: Pipeline, db: Store, tmp_path: Path) -> None:
    pipeline.dispatcher(capacity=2)
    workflow = tmp_path / "wf.yml"
    workflow.write_text(WORKFLOW.split("  second:")[0])
    proc = submit(pipeline, str(workflow), "--no-follow")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    job_id = next(w for w in out.split() if len(w) == 36 and w.count("-") == 4)
    assert wait_state(db, job_id, {"succeeded"}, 20).result is Result.SUCCESS
    proc = submit(pipeline, str(tmp_path / "missing.yml"), "--no-follow")
    assert proc.wait(timeout=30) == 1


def test_ctrl_c_cancels_the_submitted_jobs(pipeline: Pipeline, db: Store, tmp_path: Path) -> None:
    pipeline.dispatcher(capacity=2)
    workflow = tmp_path / "wf.yml"
    workflow.write_text(WORKFLOW.split("  second:")[0].replace('FAKE: "ok"', 'FAKE: "sleep:30"'))
    proc = submit(pipeline, str(workflow))
    seen, job_id = until_running(proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, "".join(seen) + out
    assert "■ cancelled" in out
    assert wait_state(db, job_id, {"cancelled"}, 10).result is Result.CANCELLED


def test_a_second_ctrl_c_stops_waiting_and_the_job_is_still_cancelled(
    pipeline: Pipeline, db: Store, tmp_path: Path
) -> None:
    """The dispatcher is held, so the job cannot be cancelled yet: the second Ctrl-C ends the
    command at once; the cancellation it sent waits on the broker and takes effect later."""
    d = pipeline.dispatcher(capacity=2)
    workflow = tmp_path / "wf.yml"
    workflow.write_text(WORKFLOW.split("  second:")[0].replace('FAKE: "ok"', 'FAKE: "sleep:30"'))
    proc = submit(pipeline, str(workflow))
    assert d.proc is not None
    seen, job_id = until_running(proc)
    d.proc.send_signal(signal.SIGSTOP)
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(1)
        assert proc.poll() is None  # the first only cancels, and waits for the job's end
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        d.proc.send_signal(signal.SIGCONT)
    assert proc.returncode == 130, "".join(seen) + out
    assert "cancelling the submitted jobs" in out and "not waiting any more" in out, out
    assert wait_state(db, job_id, {"cancelled"}, 20).result is Result.CANCELLED


def test_submit_shows_the_dispatchers_verdict_of_a_job_stopped_from_outside(
    pipeline: Pipeline, db: Store, tmp_path: Path
) -> None:
    """The job is stopped without a cancellation (as by `systemctl stop`) while the dispatcher is
    held: the job says `cancelled` first; submit waits for the dispatcher's verdict (error)."""
    d = pipeline.dispatcher(capacity=1)
    workflow = tmp_path / "wf.yml"
    workflow.write_text(WORKFLOW.split("  second:")[0].replace('FAKE: "ok"', 'FAKE: "sleep:60"'))
    proc = submit(pipeline, str(workflow))
    assert d.proc is not None
    seen, job_id = until_running(proc)
    supervisor = json.loads((pipeline.runtime_dir / "processes" / "host-a" / f"{job_id}.pid").read_text())
    d.proc.send_signal(signal.SIGSTOP)
    try:
        os.kill(supervisor["pid"], signal.SIGTERM)  # the process spawner's `systemctl stop`
        time.sleep(3)
    finally:
        d.proc.send_signal(signal.SIGCONT)
    out, _ = proc.communicate(timeout=60)
    out = "".join(seen) + out
    assert proc.returncode == 1, out
    assert "■ cancelled" in out and "waiting for the dispatcher's verdict" in out
    assert "■ error: the job's unit ended: exit-code (the job process was stopped with SIGTERM" in out
    assert wait_state(db, job_id, {"errored"}, 10).exit_code == 3


# --- real VMs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_image() -> Path:
    return build_test_image()


VM_WORKFLOW = """
name: through the service
on: push
jobs:
  hello:
    runs-on: debian-12
    steps:
      - name: Say hello
        run: |
          echo "hello from $(uname -s) in a service job"
          echo "the token is ${{ secrets.TOKEN }}"
"""


@pytest.mark.vm
def test_real_jobs_submitted_and_cancelled_through_the_pipeline(
    broker_cfg: BrokerConfig, database_url: str, db: Store, test_image: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "secrets.key"
    write_new_key(key_file)
    accel = os.environ.get("SOLSTICE_VM_ACCEL", "tcg")
    extra = (
        f'[vm]\naccel = "{accel}"\ncpus = 1\nmemory = "1G"\nboot_timeout = 400\n'
        f'[secrets]\nkey_file = "{key_file}"\n'
    )
    made = make_pipeline(
        broker_cfg, database_url, job_command=f"{sys.executable} -m solstice job run", extra=extra
    )
    pipeline = next(made)
    try:
        # state_dir: the images live in <state_dir>/images.
        text = pipeline.config_file.read_text().replace(
            f'state_dir = "{pipeline.runtime_dir}/state"', f'state_dir = "{IMAGES.parent}"'
        )
        pipeline.config_file.write_text(text)
        pipeline.dispatcher(capacity=2)
        poller = Poller(pipeline.cfg)
        # Job B, straight from a poller: one long step, cancelled once it runs.
        long_step = Step(number=1, name="long", run="echo long-step-started; sleep 600")
        cancelled = make_request("vm", steps=(long_step,))
        poller.publish(cancelled)
        # Job A, through `solstice submit`, followed on the terminal.
        workflow = tmp_path / "wf.yml"
        workflow.write_text(VM_WORKFLOW)
        proc = submit(pipeline, str(workflow), "--secret", "TOKEN", env={"TOKEN": SECRET})

        def step_running() -> bool:
            return any("long-step-started" in e.text for e in poller.events.get(cancelled.job_id, []))

        poller.wait("job B's step to run", step_running, 400)
        assert qemu_of(cancelled.job_id)
        started = time.monotonic()
        poller.publisher.publish_cancel(cancelled.job_id, "test: cancel mid-step")
        final = poller.wait_final(cancelled.job_id, 15)
        wait_until("job B's VM to be gone", lambda: not qemu_of(cancelled.job_id), 15)
        gone_after = time.monotonic() - started
        assert final.result is Result.CANCELLED, final
        assert gone_after < 10, gone_after
        steps = [e for e in poller.events[cancelled.job_id] if e.kind is EventKind.STEP_FINISHED]
        assert steps and steps[0].outcome is not None and steps[0].outcome.value == "cancelled"
        assert wait_state(db, cancelled.job_id, {"cancelled"}, 20).result is Result.CANCELLED
        # Its first log line names its log file on the host (the process spawner's SOLSTICE_JOB_LOG).
        logs = [e.text for e in poller.events[cancelled.job_id] if e.kind is EventKind.LOG]
        assert logs[0].startswith("Host-side log: ") and f"host-a/{cancelled.job_id}.log" in logs[0], logs

        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        assert "hello from Linux in a service job" in out
        assert "the token is ***" in out and SECRET not in out
        assert "■ success" in out
        job_id = next(w for w in out.split() if len(w) == 36 and w.count("-") == 4)
        assert wait_state(db, job_id, {"succeeded"}, 20).result is Result.SUCCESS
        # The job's log (the journal under systemd) holds the step output, masked.
        log = (pipeline.runtime_dir / "processes" / "host-a" / f"{job_id}.log").read_text()
        assert "hello from Linux in a service job" in log and SECRET not in log
        # Nothing left: no VM, no work directory, no request file.
        for jid in (job_id, cancelled.job_id):
            assert not qemu_of(jid)
            assert not (pipeline.runtime_dir / "jobs" / jid).exists()
        wait_until(
            "request files removed", lambda: not list((pipeline.runtime_dir / "requests").iterdir()), 10
        )
        poller.close()
    finally:
        made.close()
