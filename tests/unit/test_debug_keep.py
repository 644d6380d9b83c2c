"""The job's side of debug SSH (solstice.job.debugssh.keep) with an in-process guest: what it
logs, when it reports, what it writes to the guest's authorized_keys, the registry while it holds,
and how the hold ends (TTL, stop, guest power-off). The real guest and forge are in
tests/service/test_debug_ssh_vm.py."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from solstice.config import DebugConfig
from solstice.job.debugssh import keep
from solstice.job.runner import FailedVM
from solstice.model import DebugAccess, JobRequest, JobSpec
from solstice.model import debugssh as policy
from tests.fakes.localguest import LocalGuest

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGtlZXAtdW5pdC10ZXN0LWtleS1mb3Itc29sc3RpY2UtZGVidWc mona@box"
JOB = "3c4d5e6f-1234-4abc-8def-0123456789ab"


class KeptGuest(LocalGuest):
    """A LocalGuest with the calls a kept VM gets: the extra forward, and its end."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.forwards: list[tuple[str, int]] = []
        self.closed = False
        self.powered_off = threading.Event()

    def expose_ssh(self, address: str, ports: range, ports_dir: Path, stack: contextlib.ExitStack) -> int:
        self.forwards.append((address, ports.start))
        return ports.start

    def close(self) -> None:
        self.closed = True

    def wait_stopped(self, timeout: float) -> bool:
        return self.powered_off.wait(timeout)


@dataclass
class Run:
    guest: KeptGuest
    runtime: Path
    lines: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    seen_holds: list[Any] = field(default_factory=list)

    def failed(self, request: JobRequest, stack: contextlib.ExitStack) -> FailedVM:
        def report() -> None:
            self.events.append("report")
            self.seen_holds.extend(policy.holds(self.runtime))

        return FailedVM(
            guest=self.guest,  # type: ignore[arg-type]
            workdir=self.runtime / "jobs" / JOB,
            request=request,
            stack=stack,
            log=self.lines.append,
            report=report,
            cancel=self.cancel,
            hold=lambda seconds: self.events.append(f"hold {seconds:g}"),
        )


def request(switch: str = "on-failure", keys: tuple[str, ...] = (KEY,)) -> JobRequest:
    job = JobSpec(key="b", name="b", runs_on=("debian-12",), steps=(), env={policy.SWITCH: switch})
    return JobRequest(
        job_id=JOB, job=job, label="debian-12", repository="alice/widgets",
        debug_access=DebugAccess(user="mona", public_keys=keys),
    )  # fmt: skip


CFG = DebugConfig(enabled=True, ttl=0.5, host="ci.example.org", port_min=2250, port_max=2259)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    (tmp_path / "home" / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAAjobkey solstice-ci\n")
    yield Run(KeptGuest(tmp_path / "home"), tmp_path / "run")


def test_kept_at_once_logs_the_command_and_expiry_reports_then_holds_until_the_ttl(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    with contextlib.ExitStack() as stack, caplog.at_level(logging.WARNING, "solstice.job"):
        keep(run.failed(request(), stack), CFG, run.runtime)
    assert run.guest.forwards == [("127.0.0.1", 2250)] and run.guest.closed
    keys = (run.guest.root / ".ssh" / "authorized_keys").read_text()
    assert keys == KEY + "\n"  # the user's keys only: the job's own key is gone
    assert run.lines[0].startswith("Debug SSH: the failed VM is kept until ")
    assert "UTC (0.5 s, not renewable) for the 1 public SSH key(s) of mona on the forge" in run.lines[0]
    assert run.lines[1] == "Debug SSH: connect with: ssh -p 2250 solstice@ci.example.org"
    assert "sudo poweroff" in run.lines[2] and len(run.lines) == 3
    assert run.events == ["hold 0.5", "report"]  # reported while the VM is kept
    (hold,) = run.seen_holds
    assert hold.job_id == JOB and hold.port == 2250 and hold.user == "mona"
    assert policy.holds(run.runtime) == []
    assert "is gone: its time is up" in caplog.text


def test_held_reporting_leaves_the_report_to_the_job_and_logs_the_end(run: Run) -> None:
    with contextlib.ExitStack() as stack:
        keep(run.failed(request(), stack), DebugConfig(**{**CFG.__dict__, "report": "held"}), run.runtime)
    assert "report" not in run.events
    assert run.lines[-1] == f"Debug SSH: the kept VM of job {JOB} is gone: its time is up"


def test_a_stop_or_a_power_off_ends_the_hold_early(run: Run) -> None:
    long = DebugConfig(**{**CFG.__dict__, "ttl": 60.0, "report": "held"})
    run.cancel.set()
    with contextlib.ExitStack() as stack:
        keep(run.failed(request(), stack), long, run.runtime)
    assert "the job was stopped" in run.lines[-1]
    run.cancel.clear()
    run.guest.powered_off.set()
    run.lines.clear()
    with contextlib.ExitStack() as stack:
        keep(run.failed(request(), stack), long, run.runtime)
    assert run.lines[-1].endswith("is gone: the guest powered off")


def test_refusals_keep_nothing_and_say_why(run: Run) -> None:
    with contextlib.ExitStack() as stack:
        keep(run.failed(request(switch=""), stack), CFG, run.runtime)
        assert run.lines == []  # no switch: not a word
        keep(run.failed(request(switch="yes"), stack), CFG, run.runtime)
        assert "SOLSTICE_DEBUG_SSH='yes' is not understood" in run.lines[-1]
        keep(run.failed(request(keys=()), stack), CFG, run.runtime)
        assert (
            run.lines[-1] == "Debug SSH: the forge publishes no public SSH keys for mona; the VM is not kept"
        )
        with policy.reserve(run.runtime, "alice/widgets", 1):
            keep(run.failed(request(), stack), CFG, run.runtime)
        assert "not kept: a debug VM of alice/widgets is already kept" in run.lines[-1]
    assert run.guest.forwards == [] and run.events == []
    assert "jobkey" in (run.guest.root / ".ssh" / "authorized_keys").read_text()  # untouched
