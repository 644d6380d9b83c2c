"""``solstice debug list|kill``: the VMs this host keeps for debug SSH (docs/debug-ssh.md)."""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from solstice import config as configmod
from solstice.errors import SolsticeError
from solstice.model import debugssh
from solstice.model.jobcontract import canonical_job_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="debug_verb", metavar="COMMAND", required=True)
    sub.add_parser(
        "list", help="the VMs kept for debug SSH on this host, with their expiry", allow_abbrev=False
    )
    kill = sub.add_parser(
        "kill", help="end the debug session of job UUID now (its VM is destroyed)", allow_abbrev=False
    )
    kill.add_argument("job_id", metavar="UUID")


def _list(runtime_dir: Path) -> int:
    holds = debugssh.holds(runtime_dir)
    if not holds:
        print("no VMs kept for debug SSH on this host")
        return 0
    now = time.time()
    print(f"{'JOB':36}  {'REPOSITORY':24}  {'USER':16}  {'EXPIRES':23}  LEFT   CONNECT")
    for h in holds:
        left = max(0, int(h.expires - now))
        print(
            f"{h.job_id:36}  {h.repository[:24]:24}  {h.user[:16]:16}  {debugssh.utc(h.expires):23}  "
            f"{left // 60:2d}:{left % 60:02d}  {h.command()}"
        )
    return 0


def _kill(runtime_dir: Path, job_id: str) -> int:
    if canonical_job_id(job_id) is None:
        raise SolsticeError(f"{job_id!r} is not a job uuid")
    hold = next((h for h in debugssh.holds(runtime_dir) if h.job_id == job_id), None)
    if hold is None:
        raise SolsticeError(
            f"job {job_id} keeps no debug VM on this host", hint="`solstice debug list` shows the kept VMs"
        )
    try:
        cmdline = Path(f"/proc/{hold.pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if job_id.encode() not in cmdline:  # the process is gone and its pid reused
        raise SolsticeError(f"job {job_id}'s process ({hold.pid}) is gone; its VM went with it")
    try:
        os.kill(hold.pid, signal.SIGTERM)  # the job ends its hold, stops QEMU and exits
    except PermissionError:
        raise SolsticeError(
            f"not allowed to stop job {job_id}'s process {hold.pid}",
            hint="run as root or as the user the jobs run as (solstice)",
        ) from None
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and debugssh.held(runtime_dir, job_id):
        time.sleep(0.2)
    if debugssh.held(runtime_dir, job_id):
        raise SolsticeError(f"job {job_id} still keeps its VM 20 s after SIGTERM")
    print(f"ended the debug session of job {job_id}; its VM is being destroyed")
    return 0


def main(args: argparse.Namespace) -> int:
    cfg = configmod.load(Path(args.config) if args.config else None)
    runtime_dir = Path(cfg.paths.runtime_dir)
    if args.debug_verb == "list":
        return _list(runtime_dir)
    if args.debug_verb == "kill":
        return _kill(runtime_dir, args.job_id)
    raise AssertionError(args.debug_verb)
