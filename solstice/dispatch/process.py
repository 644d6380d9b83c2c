"""The process spawner: each job is a child process of the dispatcher, under a small supervisor.

For machines without systemd, and for tests. The contract is the systemd spawner's: the job
command gets the uuid appended and reads its request from ``<runtime_dir>/requests/<uuid>.json``;
how the job ended is written to the same exit record as under systemd. Per job, in
``<runtime_dir>/processes/<host>/``: ``<uuid>.pid`` (the supervisor, for a restarted dispatcher)
and ``<uuid>.log`` (the job's stdout and stderr: what journald holds under systemd; kept after the
job, delete old ones yourself).

Supervisors run in sessions of their own: a dispatcher that is stopped or killed leaves them and
their jobs running, and a restarted dispatcher adopts them by their pid files. There is no cgroup:
no memory or CPU limits, and cleanup after a crash is best effort (see supervise.py): the
supervisor kills what is left of the job and removes its work directory
(``<runtime_dir>/jobs/<uuid>``, systemd's RuntimeDirectory=) once the job process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from solstice import proc
from solstice.dispatch.contract import (
    JOB_LOG_ENV,
    canonical_job_id,
    child_environment,
    exit_record,
    job_argv,
    unit_name,
    work_directory,
)
from solstice.dispatch.spawner import ENDED, GONE, RUNNING, UnitStatus, parse_exit_record
from solstice.dispatch.supervise import proc_start_time
from solstice.files import atomic_write
from solstice.images import MachinePlan
from solstice.model import JobRequest

#: The stop timeout of a job (the job template's TimeoutStopSec=15s).
STOP_TIMEOUT = 15.0


class ProcessSpawner:
    name = "process"

    def __init__(
        self,
        runtime_dir: str | Path,
        host: str,
        command: Sequence[str],
        *,
        stop_timeout: float = STOP_TIMEOUT,
        config_file: Path | None = None,
        keeper_command: Sequence[str] | None = None,
    ) -> None:
        self.runtime_dir = Path(runtime_dir)
        #: The dispatcher's configuration file, for the job's --config (the environment, with
        #: any SOLSTICE_* overrides, is inherited as it is).
        self.config_file = config_file
        self.dir = self.runtime_dir / "processes" / host
        self.command = list(command)
        self.stop_timeout = stop_timeout
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._keepers: dict[str, subprocess.Popen[bytes]] = {}
        #: How to run ``solstice`` for a keeper (``pool keep`` is appended).
        self.keeper_command = list(keeper_command) if keeper_command else [sys.executable, "-m", "solstice"]

    def unit_name(self, job_id: str) -> str:
        return unit_name(job_id)

    def pidfile(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.pid"

    def logfile(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.log"

    def start(
        self,
        request: JobRequest,
        request_file: Path,
        runtime_max: float,
        plan: MachinePlan,
        warm_vm: str = "",
    ) -> None:
        # No cgroup here: the plan sets no limits (the job process plans its VM itself).
        job_id = request.job_id
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.pidfile(job_id).exists():
            raise FileExistsError(f"job {job_id} has a process already ({self.pidfile(job_id)})")
        record = exit_record(self.runtime_dir, job_id)
        record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            record.unlink()
        argv = [
            sys.executable,
            "-m",
            "solstice.dispatch.supervise",
            "--record",
            str(record),
            "--pidfile",
            str(self.pidfile(job_id)),
            "--job-id",
            job_id,
            "--runtime-max",
            str(runtime_max),
            "--stop-timeout",
            str(self.stop_timeout),
            "--runtime-directory",
            str(work_directory(self.runtime_dir, job_id)),
            "--",
            *job_argv(self.command, job_id, self.config_file, warm_vm),
        ]
        fd = os.open(self.logfile(job_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            child = proc.spawn(
                argv,
                stdout=fd,
                stderr=subprocess.STDOUT,
                new_session=True,
                env={**child_environment(), JOB_LOG_ENV: str(self.logfile(job_id))},
            )
        finally:
            os.close(fd)
        self._children[job_id] = child
        # The supervisor writes this too; writing it here closes the window before it runs.
        pid_record = {"pid": child.pid, "start": proc_start_time(child.pid), "job_id": job_id}
        atomic_write(self.pidfile(job_id), json.dumps(pid_record), mode=0o644)

    def _pid(self, job_id: str) -> int | None:
        """The supervisor's pid if it is still alive (and is the process the pid file means)."""
        try:
            data = json.loads(self.pidfile(job_id).read_text())
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        start = proc_start_time(pid)
        if start is None or (data.get("start") is not None and data["start"] != start):
            return None
        try:  # a zombie (our child, not reaped yet) is not alive
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
                return None
        except OSError:
            return None
        return pid

    def status(self, job_ids: Sequence[str]) -> dict[str, UnitStatus]:
        statuses: dict[str, UnitStatus] = {}
        for job_id in job_ids:
            child = self._children.get(job_id)
            if child is not None:
                child.poll()  # reap it
            try:
                text = exit_record(self.runtime_dir, job_id).read_text()
            except OSError:
                text = ""
            ended = parse_exit_record(job_id, text) if text else None
            if ended is not None:
                statuses[job_id] = ended
            elif self._pid(job_id) is not None:
                statuses[job_id] = UnitStatus(job_id, RUNNING, detail="supervisor running")
            else:
                # The supervisor may have written the record just now: look once more.
                try:
                    late = parse_exit_record(job_id, exit_record(self.runtime_dir, job_id).read_text())
                except OSError:
                    late = None
                statuses[job_id] = late or UnitStatus(job_id, GONE, detail="no supervisor, no exit record")
            assert statuses[job_id].state in (RUNNING, ENDED, GONE)
        return statuses

    def stop(self, job_id: str) -> None:
        pid = self._pid(job_id)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def list_units(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        ids = []
        for path in self.dir.glob("*.pid"):
            job_id = canonical_job_id(path.stem)
            if job_id is not None:
                ids.append(job_id)
        return sorted(ids)

    def release(self, job_id: str) -> None:
        child = self._children.pop(job_id, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=2)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile(job_id).unlink()

    # --- warm pool keepers ------------------------------------------------------------------

    def keeper_pidfile(self, vm_id: str) -> Path:
        return self.dir / f"pool-{vm_id}.pid"

    def start_keeper(self, vm_id: str, label: str, plan: MachinePlan) -> None:
        """``solstice pool keep`` as a child in a session of its own (it outlives a dispatcher
        restart, like a job); its log is ``pool-<vm-id>.log`` beside the jobs' logs."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = ["--config", str(self.config_file)] if self.config_file is not None else []
        argv = [*self.keeper_command, *config, "pool", "keep", "--label", label, vm_id]
        fd = os.open(self.dir / f"pool-{vm_id}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            child = proc.spawn(
                argv, stdout=fd, stderr=subprocess.STDOUT, new_session=True, env=child_environment()
            )
        finally:
            os.close(fd)
        self._keepers[vm_id] = child
        record = {"pid": child.pid, "start": proc_start_time(child.pid), "vm_id": vm_id}
        atomic_write(self.keeper_pidfile(vm_id), json.dumps(record), mode=0o644)

    def _keeper_pid(self, vm_id: str) -> int | None:
        child = self._keepers.get(vm_id)
        if child is not None and child.poll() is not None:
            self._keepers.pop(vm_id, None)
            return None
        try:
            data = json.loads(self.keeper_pidfile(vm_id).read_text())
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        start = proc_start_time(pid)
        if start is None or data.get("start") != start:
            return None
        return pid

    def keepers(self) -> list[str]:
        out = []
        with contextlib.suppress(OSError):
            for path in self.dir.glob("pool-*.pid"):
                vm_id = path.stem.removeprefix("pool-")
                if self._keeper_pid(vm_id) is not None:
                    out.append(vm_id)
                else:
                    path.unlink(missing_ok=True)
        return sorted(out)

    def stop_keeper(self, vm_id: str) -> None:
        pid = self._keeper_pid(vm_id)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def release_keeper(self, vm_id: str) -> None:
        child = self._keepers.pop(vm_id, None)
        if child is not None:
            child.poll()
        self.keeper_pidfile(vm_id).unlink(missing_ok=True)

    def attach(self, job_id: str, pids: Sequence[int]) -> None:
        """No cgroups here: the keeper kills the VM when the job's process is gone."""
