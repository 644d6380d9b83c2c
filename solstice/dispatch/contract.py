"""What the dispatcher and the job process (``solstice job run <uuid>``) agree on.

Request hand-off
    The dispatcher writes the sealed JobRequest (``jobrequest.v1`` JSON, secrets sealed) to
    ``<runtime_dir>/requests/<uuid>.json``, mode 0600, before it starts the job, and removes it
    once the job has ended. Under systemd the unit gets it as the credential ``job-request``
    (``LoadCredential=job-request:<file>``: systemd reads the root-owned file and shows the job
    user a private copy in ``$CREDENTIALS_DIRECTORY``). The job process reads, in this order:
    ``--request FILE``, ``$CREDENTIALS_DIRECTORY/job-request``, ``<runtime_dir>/requests/<uuid>.json``.

Command line
    ``<job command> [--config FILE] [--warm-vm VM_ID] <uuid>`` (job_argv): FILE is the dispatcher's
    own configuration file (absolute) whenever it was given one, with either spawner; VM_ID a warm
    pool VM the job takes instead of booting one (solstice.images.warm).

Exit status of the job process
    0 success, 1 failure, 3 cancelled, 4 error (infrastructure): the job reported its final
    JOB_FINISHED event itself (confirmed by RabbitMQ). 2: usage or configuration error before any
    event (no request, bad config). 5: the job ran but its events could not be delivered. Any
    other ending (2, 5, a signal, a timeout, OOM...) makes the dispatcher publish a synthetic
    final event.

Synthetic final event
    A JOB_FINISHED with ``seq`` = SYNTHETIC_SEQ (2**31 - 1), ``result`` error (cancelled when the
    job was cancelled through the control path) and ``message`` saying how the unit ended. It
    supersedes any JOB_FINISHED the job sent before; EventSequencer delivers it without reporting
    a gap, and drops repeats of it.
"""

from __future__ import annotations

# What the job process needs of this contract lives in the model (the job may not import the
# dispatcher); re-exported here for the dispatcher's side.
__all__ = [
    "CREDENTIAL",
    "EXIT_CANCELLED",
    "EXIT_ERROR",
    "EXIT_FAILURE",
    "EXIT_RESULT",
    "EXIT_SUCCESS",
    "EXIT_UNDELIVERED",
    "EXIT_USAGE",
    "JOB_LOG_ENV",
    "RESULT_EXIT",
    "canonical_job_id",
    "request_file",
    "requests_dir",
]

import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from solstice.files import atomic_write
from solstice.model import EventKind, JobEvent, JobRequest, Result
from solstice.model.jobcontract import (
    CREDENTIAL,
    EXIT_CANCELLED,
    EXIT_ERROR,
    EXIT_FAILURE,
    EXIT_RESULT,
    EXIT_SUCCESS,
    EXIT_UNDELIVERED,
    EXIT_USAGE,
    JOB_LOG_ENV,
    RESULT_EXIT,
    canonical_job_id,
    request_file,
    requests_dir,
)
from solstice.queue.codec import encode_request
from solstice.queue.sequencer import SYNTHETIC_SEQ

UNIT_PREFIX = "solstice-job@"
UNIT_SUFFIX = ".service"


def unit_name(job_id: str) -> str:
    return f"{UNIT_PREFIX}{job_id}{UNIT_SUFFIX}"


def job_id_of_unit(unit: str) -> str | None:
    if unit.startswith(UNIT_PREFIX) and unit.endswith(UNIT_SUFFIX):
        return canonical_job_id(unit[len(UNIT_PREFIX) : -len(UNIT_SUFFIX)])
    return None


def cancel_marker(runtime_dir: str | Path, job_id: str) -> Path:
    """Exists while a cancellation of the job through the control path is under way."""
    return requests_dir(runtime_dir) / f"{job_id}.cancel"


def work_directory(runtime_dir: str | Path, job_id: str) -> Path:
    """The job's work directory (overlay, seed, console log): ``<runtime_dir>/jobs/<uuid>``, as the
    job process makes it (solstice/job/runner.py). Under systemd it is the unit's
    ``RuntimeDirectory=solstice/jobs/%i``, which systemd removes when the unit stops, however the
    job process ended; the process spawner's supervisor removes it likewise."""
    return Path(runtime_dir) / "jobs" / job_id


def exit_record(runtime_dir: str | Path, job_id: str) -> Path:
    """``<SERVICE_RESULT> <EXIT_CODE> <EXIT_STATUS>``, written when the job's unit stops. In a
    directory of its own (``exits/``): the job unit's ExecStopPost= writes it as the job's user,
    who may not touch the sealed requests."""
    return Path(runtime_dir) / "exits" / f"{job_id}.exit"


#: The dispatcher's own systemd environment, which its children must not inherit: a job process
#: with NOTIFY_SOCKET would send its READY/WATCHDOG to the dispatcher's unit.
_SERVICE_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "CREDENTIALS_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "STATE_DIRECTORY",
)


def child_environment() -> dict[str, str]:
    """The environment for the dispatcher's subprocesses (systemd-run, systemctl, job processes)."""
    return {k: v for k, v in os.environ.items() if k not in _SERVICE_ENV}


def job_argv(command: Sequence[str], job_id: str, config_file: Path | None, warm_vm: str = "") -> list[str]:
    """The job's main process: ``command`` (``solstice job run`` or [dispatcher] job_command), the
    dispatcher's configuration file when it was given one (else the job would read the default
    file, and look for its request in the default runtime_dir), ``--warm-vm`` when the job is to
    take a warm pool VM, then the uuid."""
    config = ["--config", str(config_file)] if config_file is not None else []
    warm = ["--warm-vm", warm_vm] if warm_vm else []
    return [*command, *config, *warm, job_id]


def write_request(runtime_dir: str | Path, request: JobRequest) -> Path:
    """Write the (sealed) request for the job process, atomically, mode 0600."""
    if request.secrets:
        raise ValueError("refusing to write a request with plaintext secrets: seal it first")
    path = request_file(runtime_dir, request.job_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, encode_request(request), mode=0o600)
    return path


def remove_job_files(runtime_dir: str | Path, job_id: str) -> None:
    for path in (
        request_file(runtime_dir, job_id),
        cancel_marker(runtime_dir, job_id),
        exit_record(runtime_dir, job_id),
    ):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def mark_cancelled(runtime_dir: str | Path, job_id: str, reason: str) -> None:
    path = cancel_marker(runtime_dir, job_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(json.dumps({"reason": reason, "time": time.time()}))


def synthetic_final_event(job_id: str, result: Result, message: str) -> JobEvent:
    """The dispatcher's JOB_FINISHED for a job whose process could not report its own end."""
    return JobEvent(
        job_id=job_id,
        seq=SYNTHETIC_SEQ,
        time=time.time(),
        kind=EventKind.JOB_FINISHED,
        result=result,
        message=message,
    )
