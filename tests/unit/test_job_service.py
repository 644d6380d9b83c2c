"""The service runtime of a job (solstice.job.service, .sink) without a broker: the journal lines,
the cancelled-while-erroring rule, the request's usage errors, and where the host-side log is."""

from __future__ import annotations

import io
import socket
import threading
import uuid
from pathlib import Path

import pytest

from solstice.config import Config
from solstice.job.service import UsageError, host_log, read_request
from solstice.job.sink import ServiceSink, journal_line
from solstice.model import EventKind, JobEvent, JobRequest, JobSpec, Outcome, Result
from solstice.queue import decode_request, encode_request

JOB = "0b7e0000-0000-4000-8000-000000000000"


def request(job_id: str = JOB) -> JobRequest:
    spec = JobSpec(key="j", name="build", runs_on=("debian-12",), steps=())
    return JobRequest(job_id=job_id, job=spec, label="debian-12", reply_to="")


def event(kind: EventKind, seq: int = 1, **kw: object) -> JobEvent:
    return JobEvent(JOB, seq, 0.0, kind, **kw)  # type: ignore[arg-type]


def test_journal_lines() -> None:
    assert journal_line(event(EventKind.JOB_STARTED, text="build"), "debian-12") == (
        f"▶ build on debian-12 (job {JOB})"
    )
    assert (
        journal_line(event(EventKind.STEP_STARTED, step=2, text="Run tests"), "x") == "── Step 2: Run tests"
    )
    done = event(
        EventKind.STEP_FINISHED,
        step=2,
        outcome=Outcome.FAILURE,
        conclusion=Outcome.FAILURE,
        exit_code=7,
        message="the step's process exited with code 7",
    )
    assert journal_line(done, "x") == "✗ Step 2 (failure, exit 7, the step's process exited with code 7)"
    final = event(EventKind.JOB_FINISHED, result=Result.FAILURE, message="step 'Run tests' failed")
    assert journal_line(final, "x") == "■ failure: step 'Run tests' failed"


def test_an_error_while_cancelling_is_reported_cancelled() -> None:
    out = io.StringIO()
    cancelled = threading.Event()
    sink = ServiceSink(request(), None, out=out, cancelled=cancelled)
    sink.emit(event(EventKind.JOB_FINISHED, result=Result.ERROR, message="the SSH connection dropped"))
    cancelled.set()
    sink.emit(event(EventKind.JOB_FINISHED, 2, result=Result.ERROR, message="the SSH connection dropped"))
    assert sink.close()
    assert out.getvalue().splitlines() == [
        "■ error: the SSH connection dropped",
        "■ cancelled: the job was cancelled (the SSH connection dropped)",
    ]


def test_request_usage_errors(tmp_path: Path) -> None:
    cfg = Config()
    good = tmp_path / "r.json"
    good.write_bytes(encode_request(request()))
    assert read_request(JOB, str(good), cfg, decode_request).job_id == JOB
    with pytest.raises(UsageError, match="not a job uuid"):
        read_request("nope", str(good), cfg, decode_request)
    with pytest.raises(UsageError, match="not " + (other := str(uuid.uuid4()))):
        read_request(other, str(good), cfg, decode_request)
    with pytest.raises(UsageError, match="cannot read the job request"):
        read_request(JOB, str(tmp_path / "missing.json"), cfg, decode_request)


def test_host_log_names_the_journal_or_the_log_file() -> None:
    job = JOB
    host = socket.gethostname().split(".")[0]
    for env in ({"INVOCATION_ID": "abc"}, {"JOURNAL_STREAM": "8:123"}):
        assert host_log(job, env) == f"journalctl -u solstice-job@{job} (on {host})"
    log = f"/run/solstice/processes/h/{job}.log"
    assert host_log(job, {"SOLSTICE_JOB_LOG": log}) == f"{log} (on {host})"
    assert host_log(job, {}) == ""
