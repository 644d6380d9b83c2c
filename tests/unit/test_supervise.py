"""The process spawner's supervisor cleans up after a job process that could not: a SIGKILLed job
leaves its work directory (overlay, seed, console log) behind, and the supervisor removes it
before it writes the exit record, as systemd removes a job unit's RuntimeDirectory=. Without this
a real job killed mid-step left its overlay until the next Solstice command's sweep
(scripts/chaos, fault kill-job-guest)."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

from solstice.dispatch.contract import exit_record, work_directory
from solstice.dispatch.process import ProcessSpawner
from solstice.dispatch.spawner import ENDED, UnitStatus
from solstice.images import MachinePlan
from solstice.model import JobRequest, JobSpec

# The stand-in job: makes its work directory as the real one does (solstice/job/runner.py), puts
# an overlay in it, and dies by SIGKILL, so that nothing of its own cleanup runs.
KILLED_JOB = """
import os, signal, sys
from pathlib import Path
runtime, mode, job_id = sys.argv[1], sys.argv[2], sys.argv[-1]
work = Path(runtime) / "jobs" / job_id
work.mkdir(parents=True)
(work / "overlay.qcow2").write_bytes(b"overlay")
(work / "console.log").write_text("booted")
if mode == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _ended(spawner: ProcessSpawner, job_id: str, timeout: float = 20.0) -> UnitStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = spawner.status([job_id])[job_id]
        if status.state == ENDED:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end in {timeout} s")


def _start(tmp_path: Path, mode: str) -> tuple[ProcessSpawner, str, Path]:
    runtime = tmp_path / "run"
    script = tmp_path / "job.py"
    script.write_text(KILLED_JOB)
    spawner = ProcessSpawner(runtime, "host-a", [sys.executable, str(script), str(runtime), mode])
    job_id = str(uuid.uuid4())
    request = JobRequest(job_id=job_id, job=JobSpec(key="k", name="n", runs_on=("x",), steps=()), label="x")
    spawner.start(
        request, tmp_path / "request.json", 60.0, MachinePlan(cpus=1, memory_mib=512, disk_gib=None)
    )
    return spawner, job_id, runtime


def test_a_sigkilled_jobs_work_directory_is_gone_when_it_has_ended(tmp_path: Path) -> None:
    spawner, job_id, runtime = _start(tmp_path, "kill")
    status = _ended(spawner, job_id)
    record = exit_record(runtime, job_id).read_text()
    assert record.split() == ["signal", "killed", "KILL"], record
    assert work_directory(runtime, job_id) == runtime / "jobs" / job_id
    assert not work_directory(runtime, job_id).exists(), list(work_directory(runtime, job_id).iterdir())
    assert (runtime / "jobs").is_dir()  # only the job's own directory goes
    spawner.release(job_id)
    assert status.state == ENDED


def test_a_job_that_ended_by_itself_leaves_nothing_either(tmp_path: Path) -> None:
    spawner, job_id, runtime = _start(tmp_path, "exit")
    _ended(spawner, job_id)
    assert exit_record(runtime, job_id).read_text().split() == ["success", "exited", "0"]
    assert not work_directory(runtime, job_id).exists()
    spawner.release(job_id)
