"""Opt-in debug SSH into failed jobs (docs/debug-ssh.md): the workflow's switch, the operator's
allow list, and the registry of kept VMs under ``<runtime_dir>/debug``.

In the model because three rooms share it: the pollers (does the job ask, so fetch the user's
keys?), the dispatcher (a longer deadline for such jobs; a kept VM does not count against job
capacity) and the job process (keep the VM, hold the locks), plus ``solstice debug list|kill``.

The registry is files with ``flock``, so it works across job processes and needs no service:

* ``repo-<sha256 of owner/name>.lock``: held by the job that keeps a VM of that repository (at
  most one per repository at a time);
* ``slot-<n>.lock``, n < ``[debug] max_vms``: one held per kept VM (the host's cap);
* ``<job uuid>.json``: what ``debug list`` shows, locked by its job while the VM is kept.

A lock dies with the process that holds it, so a killed job frees its slot and its repository.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from solstice.config import DebugConfig
from solstice.errors import SolsticeError
from solstice.files import try_lock
from solstice.model.core import JobRequest, JobSpec

#: The job (or workflow) env variable that asks for debug SSH, and its one accepted value.
SWITCH = "SOLSTICE_DEBUG_SSH"
ON_FAILURE = "on-failure"


def switch_value(job: JobSpec) -> str:
    return str(job.env.get(SWITCH, "")).strip()


def requested(job: JobSpec) -> bool:
    """Whether the job asks to keep its VM when it fails (``SOLSTICE_DEBUG_SSH: on-failure``)."""
    return switch_value(job).lower() == ON_FAILURE


def allowed(repository: str, allow: Sequence[str]) -> bool:
    """Whether ``[debug] allow`` admits ``owner/name``: empty admits every repository; entries are
    ``owner/name`` or ``owner/*`` (shell patterns, case-insensitive as the forges' names are)."""
    if not allow:
        return True
    name = repository.lower()
    return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in allow)


def refusal(request: JobRequest, cfg: DebugConfig) -> str:
    """Why a failed job that asks for debug SSH does not keep its VM ("": it may)."""
    if not cfg.enabled:
        return "debug SSH is not enabled on this runner ([debug] enabled = false)"
    if not allowed(request.repository, cfg.allow):
        return f"this runner's [debug] allow list does not include {request.repository or 'this repository'}"
    access = request.debug_access
    if access is None or not access.user:
        return "the forge named no user who triggered this job"
    if not access.public_keys:
        return access.problem or f"the forge publishes no public SSH keys for {access.user}"
    return ""


def eligible(request: JobRequest, cfg: DebugConfig) -> bool:
    """Whether this job keeps its VM if it fails (the dispatcher gives it ``ttl`` more time)."""
    return requested(request.job) and not refusal(request, cfg)


def debug_dir(runtime_dir: str | Path) -> Path:
    return Path(runtime_dir) / "debug"


@dataclass(frozen=True)
class Hold:
    """One kept VM, as ``debug list`` shows it."""

    job_id: str
    repository: str
    user: str  # the forge user whose keys may log in
    login: str  # the guest's user name
    address: str  # where the forwarded port listens
    host: str  # the name in the ssh command
    port: int
    expires: float  # seconds since the epoch
    pid: int  # the job process

    def command(self) -> str:
        return f"ssh -p {self.port} {self.login}@{self.host}"


def repo_lock(runtime_dir: str | Path, repository: str) -> Path:
    digest = hashlib.sha256(repository.lower().encode()).hexdigest()[:32]
    return debug_dir(runtime_dir) / f"repo-{digest}.lock"


def hold_file(runtime_dir: str | Path, job_id: str) -> Path:
    return debug_dir(runtime_dir) / f"{job_id}.json"


class DebugRefused(SolsticeError):
    """The VM cannot be kept; the message is the job's log line."""


@contextlib.contextmanager
def reserve(runtime_dir: str | Path, repository: str, max_vms: int) -> Iterator[None]:
    """Hold this repository's lock and one of the host's ``max_vms`` slots while the block runs;
    raises DebugRefused (with the reason) when either is taken."""
    d = debug_dir(runtime_dir)
    d.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        fd = try_lock(repo_lock(runtime_dir, repository), mode=0o644)
        if fd is None:
            other = next((h for h in holds(runtime_dir) if h.repository.lower() == repository.lower()), None)
            which = f" (job {other.job_id}, until {utc(other.expires)})" if other else ""
            raise DebugRefused(
                f"a debug VM of {repository} is already kept{which}: one per repository at a time"
            )
        stack.callback(os.close, fd)
        for n in range(max_vms):
            slot = try_lock(d / f"slot-{n}.lock", mode=0o644)
            if slot is not None:
                stack.callback(os.close, slot)
                break
        else:
            raise DebugRefused(
                f"this host already keeps its limit of {max_vms} debug VM(s) ([debug] max_vms)"
            )
        yield


@contextlib.contextmanager
def registered(runtime_dir: str | Path, hold: Hold) -> Iterator[None]:
    """``hold`` in the registry (locked by this process) while the block runs."""
    path = hold_file(runtime_dir, hold.job_id)
    fd = try_lock(path, mode=0o644)
    if fd is None:
        raise DebugRefused(f"job {hold.job_id} already keeps a debug VM")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(hold.__dict__).encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _read(path: Path) -> Hold | None:
    """The hold in ``path`` if its job still holds it (a file nobody locks is a leftover)."""
    try:
        fd = try_lock(path, shared=True)
    except OSError:
        return None
    if fd is not None:  # nobody holds it: its job is gone
        os.close(fd)
        path.unlink(missing_ok=True)
        return None
    try:
        data = json.loads(path.read_bytes()[: 64 * 1024])
        return Hold(**data)
    except (OSError, ValueError, TypeError):
        return None


def holds(runtime_dir: str | Path) -> list[Hold]:
    """The VMs kept on this host now, soonest expiry first."""
    d = debug_dir(runtime_dir)
    if not d.is_dir():
        return []
    found = [h for p in sorted(d.glob("*-*-*-*-*.json")) if (h := _read(p)) is not None]
    return sorted(found, key=lambda h: h.expires)


def held(runtime_dir: str | Path, job_id: str) -> bool:
    """Whether job ``job_id`` keeps a debug VM now (its job process holds the registry entry)."""
    path = hold_file(runtime_dir, job_id)
    try:
        fd = try_lock(path, shared=True)
    except OSError:
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


def utc(when: float) -> str:
    """``when`` as the log line and ``debug list`` show it."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
