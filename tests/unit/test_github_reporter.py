"""The GitHub Reporter: events -> step list, step logs, job log and completejob; bounded, masked,
restart-safe."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from solstice.forges.github import messages as m
from solstice.forges.github import reporter as rep
from solstice.forges.github import spool
from solstice.forges.github.reporter import Reporter
from solstice.model import EventKind, JobEvent, Outcome, Result, Stream
from tests.unit.test_github_translate import message

SECRET = "s3cret-value"


class Events:
    def __init__(self) -> None:
        self.seq = 0
        self.all: list[JobEvent] = []

    def __call__(self, kind: EventKind, **kw: Any) -> JobEvent:
        self.seq += 1
        e = JobEvent(job_id="j", seq=self.seq, time=1_700_000_000.0 + self.seq, kind=kind, **kw)
        self.all.append(e)
        return e


MESSAGE, _ = message()


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def reporter(spool: str = "spool") -> Reporter:
    steps = [("s-1", "Checkout"), ("s-2", "Build")]
    return Reporter.for_job(MESSAGE, steps, mask=[SECRET], token="tok", spool_dir=Path(spool))


def run_job(r: Reporter, ev: Events, *, result: Result = Result.SUCCESS, message: str = "") -> None:
    r.feed(ev(EventKind.JOB_STARTED, text="build"))
    r.feed(ev(EventKind.LOG, text="booting"))
    for n in (1, 2):
        r.feed(ev(EventKind.STEP_STARTED, step=n, text=f"step {n}"))
        r.feed(ev(EventKind.LOG, step=n, stream=Stream.STDOUT, text=f"out {n} {SECRET}"))
        out = Outcome.SUCCESS if result is Result.SUCCESS or n == 1 else Outcome.FAILURE
        r.feed(ev(EventKind.STEP_FINISHED, step=n, outcome=out, conclusion=out))
    r.feed(ev(EventKind.JOB_FINISHED, result=result, message=message, outputs={"built": "yes"}))


def deliver(r: Reporter) -> dict[str, list[str]]:
    """Everything the backend would send, in its order; the logs by step id ('' the job's)."""
    logs: dict[str, list[str]] = {}
    for target, lines in r.logs_to_upload():
        logs[target.step_id] = lines
        r.log_uploaded(target)
    whole = r.job_log()
    if whole is not None:
        logs[""] = whole[1]
        r.job_log_sent()
    if r.steps_update(2e9) is not None:
        r.steps_sent()
    return logs


def text(lines: list[str]) -> list[str]:
    return [line.split(" ", 1)[1] for line in lines]


def test_lines_go_to_their_steps_masked_and_the_job_completes() -> None:
    r, ev = reporter(), Events()
    run_job(r, ev)
    assert r.finished and r.result == "success" and r.buffered_rows > 0
    logs = deliver(r)
    setup, checkout, build, complete = (st.external_id for st in r.steps)
    assert text(logs[setup]) == ["booting"]
    assert text(logs[checkout]) == ["out 1 ***"] and text(logs[build]) == ["out 2 ***"]
    assert text(logs[complete]) == ["Job succeeded"]
    assert text(logs[""]) == ["booting", "out 1 ***", "out 2 ***", "Job succeeded"]
    assert all(SECRET not in line for lines in logs.values() for line in lines)
    assert r.buffered_rows == 0  # uploaded lines are let go
    done = r.completion()
    assert done is not None and done.conclusion is m.TaskResult.SUCCEEDED
    assert [(s.name, s.conclusion) for s in done.step_results] == [
        ("Checkout", m.TaskResult.SUCCEEDED),
        ("Build", m.TaskResult.SUCCEEDED),
    ]
    assert done.outputs == {"built": m.Variable("yes")} and not done.infrastructure_failure_category
    r.completed()
    assert r.done and r.completion() is None


def test_an_infrastructure_error_carries_the_category_and_an_annotation() -> None:
    r, ev = reporter(), Events()
    r.feed(ev(EventKind.JOB_STARTED, text="build"))
    r.feed(ev(EventKind.JOB_FINISHED, result=Result.ERROR, message=f"boot timed out {SECRET}"))
    deliver(r)
    done = r.completion()
    assert done is not None and done.conclusion is m.TaskResult.FAILED
    assert done.infrastructure_failure_category == m.SOLSTICE_INFRASTRUCTURE_FAILURE
    (note,) = done.annotations
    assert note.is_infrastructure_issue and note.message == "boot timed out ***"
    assert [s.conclusion for s in done.step_results] == [m.TaskResult.SKIPPED] * 2


def test_a_failed_step_is_annotated_with_its_number() -> None:
    r, ev = reporter(), Events()
    run_job(r, ev, result=Result.FAILURE, message="Process completed with exit code 3.")
    deliver(r)
    done = r.completion()
    assert done is not None and done.conclusion is m.TaskResult.FAILED
    assert done.annotations[0].step_number == 3  # "Build": after "Set up job" and "Checkout"


def test_step_status_goes_out_while_the_job_runs() -> None:
    r, ev = reporter(), Events()
    r.feed(ev(EventKind.JOB_STARTED, text="build"))
    r.feed(ev(EventKind.STEP_STARTED, step=1, text="step 1"))
    update = r.steps_update(1e9)
    assert update is not None
    assert [s.status for s in update.steps] == [
        m.StepStatus.COMPLETED,
        m.StepStatus.IN_PROGRESS,
        m.StepStatus.PENDING,
        m.StepStatus.PENDING,
    ]
    r.steps_sent()
    assert r.steps_update(1e9) is None  # nothing changed
    r.feed(ev(EventKind.STEP_FINISHED, step=1, outcome=Outcome.SUCCESS, conclusion=Outcome.SUCCESS))
    later = r.steps_update(0.0)  # a clock that went back still gets a larger change_order
    assert later is not None and later.change_order > update.change_order
    assert [t.step_id for t, _ in r.logs_to_upload()] == [r.steps[0].external_id, "s-1"]


def test_logs_are_spooled_to_files_and_capped_with_a_note(monkeypatch: Any, spool_dir: Path) -> None:
    line = len(rep.line_time(0)) + len(" line 0\n")
    monkeypatch.setattr(rep, "MAX_STEP_BYTES", 3 * line + 1)
    monkeypatch.setattr(spool, "FLUSH_AT", 2)
    r, ev = reporter(), Events()
    r.feed(ev(EventKind.STEP_STARTED, step=1, text="step 1"))
    for i in range(10):
        r.feed(ev(EventKind.LOG, step=1, text=f"line {i}"))
    assert r.buffered_rows <= 2 * 2  # at most FLUSH_AT lines a log in memory
    r.checkpoint()
    assert r.buffered_rows == 0
    assert (spool_dir / "spool" / f"{MESSAGE.job_id}.job.log").read_text().count("line") == 10
    assert stat.S_IMODE((spool_dir / "spool" / f"{MESSAGE.job_id}.1.log").stat().st_mode) == 0o600
    r.feed(ev(EventKind.STEP_FINISHED, step=1, outcome=Outcome.SUCCESS, conclusion=Outcome.SUCCESS))
    ((target, lines),) = [(t, x) for t, x in r.logs_to_upload() if t.step_id == "s-1"]
    assert text(lines[:3]) == ["line 0", "line 1", "line 2"]
    assert "7 more lines not kept" in lines[3]
    r.log_uploaded(target)
    assert not (spool_dir / "spool" / f"{MESSAGE.job_id}.1.log").exists()
    run_rest = r.steps_update(1e9)
    assert run_rest is not None
    r.finish_here(Result.CANCELLED, "stop", 1e9)
    deliver(r)
    r.completed()
    assert not list((spool_dir / "spool").iterdir())  # every spool file is gone


def test_restart_from_a_checkpoint_loses_and_duplicates_nothing() -> None:
    straight, ev = reporter(), Events()
    run_job(straight, ev)
    expected = deliver(straight)

    first = reporter("spool2")
    for e in ev.all[:5]:
        first.feed(e)
    saved = json.loads(json.dumps(first.checkpoint()))
    for e in ev.all[5:8]:  # fed and spooled after the checkpoint, then the process dies
        first.feed(e)
    first.checkpoint()
    assert SECRET not in json.dumps({k: v for k, v in saved.items() if k != "mask"})
    assert saved["mask"]["token"] == "tok"
    again = Reporter.restore(saved)
    for e in ev.all:  # RabbitMQ redelivers from after the checkpoint; earlier seqs are ignored
        again.feed(e)
    got = deliver(again)
    assert {k: text(v) for k, v in got.items()} == {k: text(v) for k, v in expected.items()}
    assert again.token == "tok" and again.completion() is not None


def test_a_refused_job_fails_with_its_reason_in_set_up_job() -> None:
    r = reporter()
    r.refuse("step 2: uses: actions/setup-node@v4 is not supported", ("Nothing ran.",), 1e9)
    logs = deliver(r)
    assert "actions/setup-node@v4 is not supported" in logs[r.steps[0].external_id][0]
    done = r.completion()
    assert done is not None and done.conclusion is m.TaskResult.FAILED
    assert "setup-node" in done.annotations[0].message
    assert r.buffered_rows == 0
