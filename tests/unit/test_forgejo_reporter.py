"""The reporter driven by synthetic JobEvent streams against the fake server over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from solstice.config import ImageConfig
from solstice.forges.forgejo import messages as m
from solstice.forges.forgejo.client import Client, Credentials, LogArchived
from solstice.forges.forgejo.reporter import SYNTHETIC_SEQ, Reporter, ReportError, report_rejection
from solstice.forges.forgejo.translate import Rejected, translate
from solstice.images.catalog import Catalog
from solstice.model import EventKind, JobEvent, Outcome, Phase, Result
from solstice.queue import SYNTHETIC_SEQ as QUEUE_SYNTHETIC_SEQ
from tests.fakes.forgejo import FakeForgejo, FakeTask

WORKFLOW = "jobs:\n  a:\n    runs-on: debian-12\n    steps: [{run: one}, {run: two}, {run: three}]\n"


class Stream:
    """A job's events, numbered as the job numbers them."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self.t = 1_700_000_000.0

    def __call__(self, kind: EventKind, **kw: Any) -> JobEvent:
        self.t += 1.5
        e = JobEvent(job_id="job", seq=len(self.events) + 1, time=self.t, kind=kind, **kw)
        self.events.append(e)
        return e


def standard_job() -> tuple[Stream, list[int]]:
    """A three-step job (step 3 skipped); returns the stream and cut points between phases."""
    ev = Stream()
    ev(EventKind.JOB_STARTED, text="a")
    ev(EventKind.PHASE, text=Phase.BOOT.value)
    ev(EventKind.LOG, text="Booting the VM")
    cuts = [len(ev.events)]
    ev(EventKind.STEP_STARTED, step=1, text="Run one")
    ev(EventKind.LOG, step=1, text="one-1")
    ev(EventKind.LOG, step=1, text="one-2\r\n")
    ev(EventKind.STEP_FINISHED, step=1, outcome=Outcome.SUCCESS, conclusion=Outcome.SUCCESS, exit_code=0)
    ev(EventKind.LOG, text="between steps")
    cuts.append(len(ev.events))
    ev(EventKind.STEP_STARTED, step=2, text="Run two")
    ev(EventKind.LOG, step=2, text="two-1\ntwo-2")
    ev(EventKind.LOG, text="job line during step 2")
    ev(EventKind.STEP_FINISHED, step=2, outcome=Outcome.FAILURE, conclusion=Outcome.FAILURE, exit_code=1)
    ev(EventKind.STEP_FINISHED, step=3, outcome=Outcome.SKIPPED, conclusion=Outcome.SKIPPED)
    cuts.append(len(ev.events))
    ev(EventKind.PHASE, text=Phase.TEARDOWN.value)
    ev(EventKind.JOB_FINISHED, result=Result.FAILURE, outputs={"v": "1", "w": "2"})
    return ev, cuts


EXPECTED_SETUP = ["[boot]", "Booting the VM"]
EXPECTED_STEPS = [
    ["one-1", "one-2"],
    ["between steps", "two-1", "two-2", "job line during step 2", "Process completed with exit code 1."],
    [],
]
EXPECTED_COMPLETE = ["[teardown]", "Job failed"]


@pytest.fixture(params=["forgejo", "gitea"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeForgejo]:
    with FakeForgejo(request.param) as f:
        yield f


def start(fake: FakeForgejo, workflow: str = WORKFLOW) -> tuple[Client, m.Task]:
    runner = fake.add_runner("r", ["debian-12"])
    client = Client(fake.url, Credentials(runner.uuid, runner.token))
    fake.enqueue(workflow)
    task = client.fetch_task(0).task
    assert task is not None
    return client, task


def pump(rep: Reporter, client: Client, *, lose: bool = False) -> None:
    """One reporting tick: UpdateLog until nothing is left, then UpdateTask. ``lose`` drops every
    answer once (the request reached the server, the response did not reach us)."""
    lost = False
    for _ in range(100):
        req = rep.next_update_log()
        if req is None:
            break
        try:
            resp = client.update_log(req)
        except LogArchived:  # a resent closing request: the server has everything
            rep.on_log_archived()
            break
        if lose and not lost:
            lost = True  # the answer never arrived: the same rows go again
            continue
        rep.on_log_ack(resp)
    treq = rep.next_update_task()
    if treq is not None:
        tresp = client.update_task(treq)
        if not lose:
            rep.on_task_ack(tresp)


def finish(rep: Reporter, client: Client) -> None:
    for _ in range(10):
        pump(rep, client)
        if rep.done:
            return
    raise AssertionError("the reporter did not finish")


def check_standard(task: FakeTask, stopped: float) -> None:
    assert task.setup_lines() == EXPECTED_SETUP
    assert [task.step_lines(i) for i in range(3)] == EXPECTED_STEPS
    assert task.complete_lines() == EXPECTED_COMPLETE
    assert len(task.lines()) == len(EXPECTED_SETUP) + sum(map(len, EXPECTED_STEPS)) + len(EXPECTED_COMPLETE)
    assert task.status == "failure" and task.archived
    assert [s.status for s in task.steps] == ["success", "failure", "skipped"]
    assert task.outputs == {"v": "1", "w": "2"}
    assert task.stopped_at == m.from_epoch(stopped)
    assert all(s.started_at is not None for s in task.steps[:2]) and task.steps[2].started_at is None


def test_a_job_reported_step_by_step(fake: FakeForgejo) -> None:
    client, task = start(fake)
    ev, cuts = standard_job()
    rep = Reporter(task.id, 3)
    ft = fake.tasks[task.id]
    fed = 0
    for cut in [*cuts, len(ev.events)]:
        for e in ev.events[fed:cut]:
            rep.feed(e)
        fed = cut
        pump(rep, client)
        if cut == cuts[1]:  # step 1 done, step 2 not started: the UI sees that already
            assert ft.step_lines(0) == ["one-1", "one-2"] and ft.steps[0].status == "success"
            assert ft.steps[1].status == "waiting" and ft.status == "running"
    finish(rep, client)
    check_standard(ft, ev.events[-1].time)
    assert rep.next_update_log() is None and rep.next_update_task() is None
    # the final UpdateTask came after the closing UpdateLog (§3.6 order)
    procs = [p.rsplit("/", 1)[-1] for p, _, b in fake.requests]
    last_log = max(i for i, p in enumerate(procs) if p == "UpdateLog")
    final = [
        i
        for i, (p, _, b) in enumerate(fake.requests)
        if p.endswith("UpdateTask") and b["state"].get("result")
    ]
    assert final and final[0] > last_log
    closing = [b for p, _, b in fake.requests if p.endswith("UpdateLog") and b.get("noMore")]
    assert len(closing) == 1 and closing[0]["rows"]


def test_lost_answers_give_no_duplicates(fake: FakeForgejo) -> None:
    client, task = start(fake)
    ev, cuts = standard_job()
    rep = Reporter(task.id, 3)
    for e in ev.events:
        rep.feed(e)
        pump(rep, client, lose=True)  # every answer "lost" once: each request is sent twice
    finish(rep, client)
    check_standard(fake.tasks[task.id], ev.events[-1].time)
    # outputs were resent until acknowledged, and not after
    with_outputs = [b for p, _, b in fake.requests if p.endswith("UpdateTask") and b.get("outputs")]
    assert len(with_outputs) >= 2 and all(b["outputs"] == {"v": "1", "w": "2"} for b in with_outputs)
    assert rep.done and rep.next_update_task() is None  # acknowledged: nothing more is sent


def test_small_batches_and_duplicate_events(fake: FakeForgejo) -> None:
    client, task = start(fake)
    ev, _ = standard_job()
    rep = Reporter(task.id, 3, max_rows=2)
    for e in ev.events:
        rep.feed(e)
        rep.feed(e)  # a redelivered event
    finish(rep, client)
    check_standard(fake.tasks[task.id], ev.events[-1].time)


@pytest.mark.parametrize("resume", ["checkpoint", "replay"])
def test_restart_mid_job_gives_gap_free_logs(fake: FakeForgejo, resume: str) -> None:
    client, task = start(fake)
    ev, cuts = standard_job()
    first = Reporter(task.id, 3)
    for e in ev.events[: cuts[0] + 2]:
        first.feed(e)
    pump(first, client)
    saved = json.loads(json.dumps(first.checkpoint()))  # what the runner stored (as JSON)
    for e in ev.events[cuts[0] + 2 : cuts[1] + 2]:
        first.feed(e)
    pump(first, client)  # the server now has rows the checkpoint does not know about ...
    for e in ev.events[cuts[1] + 2 : cuts[2]]:
        first.feed(e)  # ... and these were never sent: the runner dies here
    assert len(fake.tasks[task.id].rows) > saved["state"]["log_offset"]
    second = Reporter.restore(saved) if resume == "checkpoint" else Reporter(task.id, 3)
    if resume == "checkpoint":
        assert second.last_seq == cuts[0] + 2
    for e in ev.events:  # the queue redelivers what was not acknowledged (here: everything)
        second.feed(e)
    finish(second, client)
    check_standard(fake.tasks[task.id], ev.events[-1].time)


def test_cancellation_is_read_from_update_task(fake: FakeForgejo) -> None:
    client, task = start(fake)
    ev = Stream()
    rep = Reporter(task.id, 3)
    rep.feed(ev(EventKind.STEP_STARTED, step=1, text="Run one"))
    rep.feed(ev(EventKind.LOG, step=1, text="working"))
    pump(rep, client)
    assert not rep.cancel_requested
    fake.cancel(task.id)
    pump(rep, client)
    assert rep.cancel_requested
    rep.feed(ev(EventKind.LOG, step=1, text="killed"))
    rep.feed(ev(EventKind.STEP_FINISHED, step=1, outcome=Outcome.CANCELLED, conclusion=Outcome.CANCELLED))
    rep.feed(ev(EventKind.JOB_FINISHED, result=Result.CANCELLED, message="the job was cancelled"))
    finish(rep, client)
    ft = fake.tasks[task.id]
    assert ft.status == "cancelled" and ft.archived
    # the server froze the steps at the cancel ("the state is final"): later rows of the step show
    # after it, but every row arrives and the log is archived
    assert ft.step_lines(0) == ["working"]
    assert ft.complete_lines() == ["killed", "the job was cancelled", "Job cancelled"]


def test_failure_from_the_reaper_cancels_too() -> None:
    rep = Reporter(1, 1)
    rep.on_task_ack(m.UpdateTaskResponse(state=m.TaskState(id=1, result=m.Result.RESULT_FAILURE)))
    assert rep.cancel_requested
    gitea_like = Reporter(1, 1, cancel_on_failure=False)
    gitea_like.on_task_ack(m.UpdateTaskResponse(state=m.TaskState(id=1, result=m.Result.RESULT_FAILURE)))
    assert not gitea_like.cancel_requested


def test_synthetic_final_event_supersedes(fake: FakeForgejo) -> None:
    assert SYNTHETIC_SEQ == QUEUE_SYNTHETIC_SEQ
    client, task = start(fake)
    ev = Stream()
    rep = Reporter(task.id, 3)
    rep.feed(ev(EventKind.STEP_STARTED, step=1, text="Run one"))
    rep.feed(ev(EventKind.LOG, step=1, text="working"))
    rep.feed(ev(EventKind.JOB_FINISHED, result=Result.CANCELLED))
    synthetic = JobEvent(
        job_id="job",
        seq=SYNTHETIC_SEQ,
        time=ev.t + 9,
        kind=EventKind.JOB_FINISHED,
        result=Result.ERROR,
        message="timeout (RuntimeMaxSec=600 exceeded)",
    )
    rep.feed(synthetic)
    rep.feed(synthetic)  # published again after a dispatcher crash: ignored
    finish(rep, client)
    ft = fake.tasks[task.id]
    assert ft.status == "failure" and ft.stopped_at == m.from_epoch(synthetic.time)
    assert ft.complete_lines() == [
        "Job cancelled",
        "timeout (RuntimeMaxSec=600 exceeded)",
        "Job failed: infrastructure error (not a problem of the build)",
    ]
    assert [s.status for s in ft.steps] == ["cancelled", "cancelled", "cancelled"]  # never finished


def test_synthetic_event_alone_ends_the_job(fake: FakeForgejo) -> None:
    client, task = start(fake)
    ev = Stream()
    rep = Reporter(task.id, 3)
    rep.feed(ev(EventKind.STEP_STARTED, step=1, text="Run one"))
    pump(rep, client)
    rep.feed(
        JobEvent(
            job_id="job",
            seq=SYNTHETIC_SEQ,
            time=ev.t + 1,
            kind=EventKind.JOB_FINISHED,
            result=Result.ERROR,
            message="the job process exited with status 5",
        )
    )
    finish(rep, client)
    ft = fake.tasks[task.id]
    assert ft.status == "failure" and ft.lines()[-2] == "the job process exited with status 5"


def test_secrets_are_masked_in_rows(fake: FakeForgejo) -> None:
    client, task = start(fake)
    ev = Stream()
    rep = Reporter(task.id, 3, mask=[task.context["token"], "s3cret"])
    rep.feed(ev(EventKind.LOG, step=1, text=f"token {task.context['token']} and s3cret"))
    rep.feed(ev(EventKind.JOB_FINISHED, result=Result.SUCCESS))
    finish(rep, client)
    assert fake.tasks[task.id].step_lines(0) == ["token *** and ***"]
    sent = json.dumps([b for _, _, b in fake.requests])
    assert "s3cret" not in sent


def test_rejected_task_fails_with_the_reason(fake: FakeForgejo, tmp_path: Path) -> None:
    client, task = start(
        fake, "jobs:\n  a:\n    runs-on: debian-12\n    steps: [{uses: actions/setup-node@v4}]\n"
    )
    catalog = Catalog({"debian-12": ImageConfig(label="debian-12", path="d.qcow2")}, tmp_path)
    result = translate(
        task, server_url=fake.url, secrets_key=Fernet.generate_key(), resolve_label=catalog.resolve
    )
    assert isinstance(result, Rejected)
    rep = report_rejection(task.id, result.step_count, result.log_lines(), 1_700_000_000.0)
    finish(rep, client)
    ft = fake.tasks[task.id]
    assert ft.status == "failure" and ft.archived
    assert ft.lines()[0] == "Solstice cannot run this job: the workflow cannot run in Solstice"
    assert "Solstice runs only `run:` steps and actions/checkout" in ft.lines()[1]
    assert ft.lines()[-1] == "Job failed"
    assert [s.status for s in ft.steps] == ["cancelled"]


def test_an_ack_behind_the_offset_is_an_error() -> None:
    rep = Reporter(1, 0)
    rep.feed(JobEvent(job_id="j", seq=1, time=1.0, kind=EventKind.LOG, text="x"))
    rep.on_log_ack(m.UpdateLogResponse(ack_index=1))
    with pytest.raises(ReportError, match="logs are lost"):
        rep.on_log_ack(m.UpdateLogResponse(ack_index=0))


def test_archived_log_closes_the_reporting() -> None:
    rep = Reporter(1, 0)
    rep.feed(JobEvent(job_id="j", seq=1, time=1.0, kind=EventKind.JOB_FINISHED, result=Result.SUCCESS))
    rep.on_log_archived()
    assert rep.next_update_log() is None
    req = rep.next_update_task()
    assert req is not None and req.state is not None and req.state.result == m.Result.RESULT_SUCCESS
    rep.on_task_ack(m.UpdateTaskResponse(state=m.TaskState(id=1, result=m.Result.RESULT_SUCCESS)))
    assert rep.done


def test_a_skipped_task_reports_skipped_with_the_reason() -> None:
    from solstice.forges.forgejo.reporter import report_skipped

    rep = report_skipped(9, 2, "the job's condition is false: if: false", 1000.0)
    req = rep.next_update_log()
    assert req is not None and req.no_more
    assert [r.content for r in req.rows] == [
        "Skipping the job: the job's condition is false: if: false",
        "Job skipped",
    ]
    rep.on_log_ack(m.UpdateLogResponse(ack_index=2))
    assert rep.next_update_log() is None
    final = rep.next_update_task()
    assert final is not None and final.state is not None
    assert final.state.result == m.Result.RESULT_SKIPPED and final.state.stopped_at is not None
    assert [s.result for s in final.state.steps] == [m.Result.RESULT_SKIPPED] * 2
    rep.on_task_ack(m.UpdateTaskResponse(state=final.state))
    assert rep.done


def test_a_failed_steps_reason_is_logged_once(fake: FakeForgejo) -> None:
    client, task = start(fake)
    ev = Stream()
    rep = Reporter(task.id, 3)
    rep.feed(ev(EventKind.STEP_STARTED, step=1, text="Run one"))
    rep.feed(ev(EventKind.LOG, step=1, text="working"))
    # what the job process sends: the reason as a log line, then in STEP_FINISHED
    rep.feed(ev(EventKind.LOG, step=1, text="Error: checkout: no source tree"))
    rep.feed(
        ev(
            EventKind.STEP_FINISHED,
            step=1,
            outcome=Outcome.FAILURE,
            conclusion=Outcome.FAILURE,
            message="checkout: no source tree",
        )
    )
    # an infrastructure failure has the reason only in STEP_FINISHED: it is written then
    rep.feed(ev(EventKind.STEP_STARTED, step=2, text="Run two"))
    rep.feed(
        ev(
            EventKind.STEP_FINISHED,
            step=2,
            outcome=Outcome.FAILURE,
            conclusion=Outcome.FAILURE,
            message="ssh lost",
        )
    )
    rep.feed(ev(EventKind.JOB_FINISHED, result=Result.FAILURE))
    finish(rep, client)
    ft = fake.tasks[task.id]
    assert ft.step_lines(0) == ["working", "Error: checkout: no source tree"]
    assert ft.step_lines(1) == ["ssh lost"]


def test_a_skipped_step_has_no_start_time(fake: FakeForgejo) -> None:
    client, task = start(fake)
    ev = Stream()
    rep = Reporter(task.id, 3)
    rep.feed(ev(EventKind.STEP_STARTED, step=1, text="Run one"))
    rep.feed(ev(EventKind.LOG, step=1, text="one"))
    rep.feed(
        ev(EventKind.STEP_FINISHED, step=1, outcome=Outcome.FAILURE, conclusion=Outcome.FAILURE, exit_code=1)
    )
    # the job process starts a step before it evaluates its if: (solstice/job/runner.py)
    for n in (2, 3):
        rep.feed(ev(EventKind.STEP_STARTED, step=n, text=f"Run {n}"))
        rep.feed(ev(EventKind.STEP_FINISHED, step=n, outcome=Outcome.SKIPPED, conclusion=Outcome.SKIPPED))
    rep.feed(ev(EventKind.JOB_FINISHED, result=Result.FAILURE))
    finish(rep, client)
    ft = fake.tasks[task.id]
    assert [s.status for s in ft.steps] == ["failure", "skipped", "skipped"]
    assert ft.steps[0].started_at is not None
    assert ft.steps[1].started_at is None and ft.steps[2].started_at is None
    states = [b["state"] for p, _, b in fake.requests if p.endswith("UpdateTask")]
    assert all("startedAt" not in st for state in states for st in state.get("steps", [])[1:]), states


def test_masking_uses_the_one_rule_lines_of_a_secret_too(fake: FakeForgejo) -> None:
    client, task = start(fake)
    ev = Stream()
    rep = Reporter(task.id, 3, mask=["line-one\nline-two"])
    rep.feed(ev(EventKind.LOG, step=1, text="a line-two b"))
    rep.feed(ev(EventKind.JOB_FINISHED, result=Result.SUCCESS))
    finish(rep, client)
    assert fake.tasks[task.id].step_lines(0) == ["a *** b"]
