"""The process spawner's stand-in for a job's systemd unit: ``python -m solstice.dispatch.supervise``.

It runs the job's command as its child, in a session of its own, and does for it what systemd does
for ``solstice-job@<uuid>.service``:

- writes ``--pidfile`` (JSON: its own pid and /proc start time, the job id) so that a restarted
  dispatcher can find it;
- on SIGTERM (``stop``), sends SIGTERM to the job's process group, and SIGKILL after
  ``--stop-timeout`` seconds (TimeoutStopSec=);
- after ``--runtime-max`` seconds, does the same and calls the result ``timeout`` (RuntimeMaxSec=);
- once the job process is gone, kills what is left of its process group and every process of
  this user whose command line names the job uuid (QEMU runs in a session of its own, but its
  ``-name solstice-<uuid>`` gives it away): the cgroup cleanup of KillMode=control-group, best effort;
- then removes ``--runtime-directory`` (the job's work directory with its overlay and seed), as
  systemd removes the unit's RuntimeDirectory=: a job process that was SIGKILLed could not;
- writes ``--record`` as ``<Result> <EXIT_CODE> <EXIT_STATUS>`` in systemd's words
  (e.g. ``exit-code exited 3``, ``signal killed KILL``, ``timeout killed TERM``).

Standard library only, so that it starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from solstice.files import atomic_write


def proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): tells a pid from its reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def write_json(path: Path, data: object) -> None:
    atomic_write(path, json.dumps(data), mode=0o644)


def _leftovers(match: str, exclude: set[int]) -> list[int]:
    """Pids of this user's processes whose command line contains ``match``."""
    uid = os.getuid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if match.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def supervise(
    command: list[str],
    *,
    record: Path,
    pidfile: Path,
    job_id: str,
    runtime_max: float,
    stop_timeout: float,
    runtime_directory: Path | None = None,
) -> int:
    write_json(
        pidfile,
        {"pid": os.getpid(), "start": proc_start_time(os.getpid()), "job_id": job_id, "time": time.time()},
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        print(f"solstice-supervise: cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
        _write_record(record, "exit-code exited 203")  # systemd's EXIT_EXEC
        return 1
    deadline = time.monotonic() + runtime_max if runtime_max > 0 else None
    timed_out = False
    killed_at: float | None = None
    while child.poll() is None:
        now = time.monotonic()
        if killed_at is None and (stop.is_set() or (deadline is not None and now >= deadline)):
            if not stop.is_set():
                timed_out = True
                print(f"solstice-supervise: runtime limit of {runtime_max:.0f} s reached", flush=True)
            _kill_group(child.pid, signal.SIGTERM)
            killed_at = now
        elif killed_at is not None and now - killed_at >= stop_timeout:
            print("solstice-supervise: the job did not stop in time; killing it", flush=True)
            _kill_group(child.pid, signal.SIGKILL)
            timed_out = True
            killed_at = float("inf")
        try:
            child.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass
    # KillMode=control-group, as far as a process can: the group, then anything naming the job.
    _kill_group(child.pid, signal.SIGKILL)
    for pid in _leftovers(job_id, {os.getpid()}):
        try:
            os.kill(pid, signal.SIGKILL)
            print(f"solstice-supervise: killed leftover process {pid}", flush=True)
        except (ProcessLookupError, PermissionError):
            pass
    if runtime_directory is not None:
        # Before the record: once the dispatcher sees the job ended, nothing of it is left.
        shutil.rmtree(runtime_directory, ignore_errors=True)
    code = child.returncode
    if code >= 0:
        exit_code, status = "exited", str(code)
        result = "success" if code == 0 else "exit-code"
    else:
        exit_code, status = "killed", signal.Signals(-code).name.removeprefix("SIG")
        clean = -code in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE)
        result = "success" if clean and killed_at is not None else "signal"
    if timed_out:
        result = "timeout"
    _write_record(record, f"{result} {exit_code} {status}")
    return 0


def _write_record(record: Path, line: str) -> None:
    atomic_write(record, line + "\n", mode=0o644)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m solstice.dispatch.supervise")
    parser.add_argument("--record", required=True, type=Path)
    parser.add_argument("--pidfile", required=True, type=Path)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--runtime-max", type=float, default=0.0)
    parser.add_argument("--stop-timeout", type=float, default=15.0)
    parser.add_argument("--runtime-directory", type=Path, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    return supervise(
        command,
        record=args.record,
        pidfile=args.pidfile,
        job_id=args.job_id,
        runtime_max=args.runtime_max,
        stop_timeout=args.stop_timeout,
        runtime_directory=args.runtime_directory,
    )


if __name__ == "__main__":
    raise SystemExit(main())
