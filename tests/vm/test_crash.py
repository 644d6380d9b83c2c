"""Crashes around a real guest: `solstice run` SIGKILLed mid-step leaves no QEMU running, and the
next Solstice command sweeps its work directory and port lock; QEMU killed mid-step ends the job
as `error` saying so first. Two guests (one per test), both booted through `solstice run`, at
the same time (one vCPU each: the build machine's two cores boot both in about the time of one)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = """\
on: push
jobs:
  crash:
    runs-on: debian-12
    steps:
      - name: long
        run: |
          echo step-is-running
          sleep 600
"""


def _qemus(marker: str) -> list[int]:
    """Pids of running (not zombie) QEMU processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if argv and b"qemu-system" in argv[0] and marker.encode() in b" ".join(argv) and state != "Z":
            found.append(int(entry.name))
    return found


class Run:
    def __init__(self, tmp: Path, runtime: Path, image: Path) -> None:
        self.tmp = tmp
        self.runtime = runtime
        self.config = tmp / "solstice.toml"
        self.config.write_text(
            f'[vm]\naccel = "{os.environ.get("SOLSTICE_VM_ACCEL", "tcg")}"\ncpus = 1\nboot_timeout = 400\n'
            f'[paths]\nruntime_dir = "{runtime}"\nstate_dir = "{tmp}/state"\n'
        )
        self.workflow = tmp / "crash.yml"
        self.workflow.write_text(WORKFLOW)
        self.out = tmp / "run.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
        self.env = env
        with self.out.open("wb") as fh:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "solstice",
                    "--config",
                    str(self.config),
                    "run",
                    str(self.workflow),
                    "--image",
                    str(image),
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for_step(self, timeout: float = 500) -> int:
        """Once the step runs: the pid of the job's QEMU."""
        deadline = time.monotonic() + timeout
        while "step-is-running" not in self.text():
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.2)
        (qemu,) = _qemus(str(self.runtime))
        return qemu

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in _qemus(str(self.runtime)):
            os.kill(pid, signal.SIGKILL)


SCENARIOS = ("sigkilled", "qemu-killed")


@pytest.fixture(scope="module")
def runs(test_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """One `solstice run` per test, all started at once so their guests boot side by side; each
    has its own runtime directory (its jobs, ports and QEMU), so no test sees another's."""
    started: dict[str, Run] = {}
    try:
        for name in SCENARIOS:
            runtime = Path(tempfile.mkdtemp(prefix="sol-", dir="/tmp"))  # short: the QMP socket path
            started[name] = Run(tmp_path_factory.mktemp(name), runtime, test_image)
        yield started
    finally:
        for r in started.values():
            r.kill()
            shutil.rmtree(r.runtime, ignore_errors=True)


def test_solstice_run_sigkilled_mid_step_leaves_nothing(runs: dict[str, Run]) -> None:
    run = runs["sigkilled"]
    qemu = run.wait_for_step()
    jobs = list((run.runtime / "jobs").iterdir())
    locks = list((run.runtime / "ports").glob("*.lock"))
    assert len(jobs) == 1 and (jobs[0] / "overlay.qcow2").is_file() and len(locks) == 1
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    deadline = time.monotonic() + 10
    while _qemus(str(run.runtime)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _qemus(str(run.runtime)) == [], f"QEMU {qemu} outlived its SIGKILLed `solstice run`"
    # What the killed process could not clean is there until the next command sweeps it.
    assert jobs[0].exists() and locks[0].exists()
    plan = subprocess.run(
        [sys.executable, "-m", "solstice", "--config", str(run.config), "plan", str(run.workflow)],
        capture_output=True,
        text=True,
        env=run.env,
        cwd=ROOT,
        timeout=60,
    )
    assert plan.returncode == 0, plan.stderr
    assert "removed the leftovers of 1 killed job(s)" in plan.stderr
    assert list((run.runtime / "jobs").iterdir()) == []
    assert list((run.runtime / "ports").glob("*.lock")) == []


def test_qemu_killed_mid_step_is_named_first(runs: dict[str, Run]) -> None:
    run = runs["qemu-killed"]
    qemu = run.wait_for_step()
    os.kill(qemu, signal.SIGKILL)
    assert run.proc.wait(timeout=120) == 1, run.text()
    text = run.text()
    final = [line for line in text.splitlines() if line.startswith("■ error")]
    assert final, text
    assert final[0].startswith(
        "■ error: QEMU exited (killed by signal 9); then the SSH connection to the guest dropped"
    ), text
    # Nothing left: the job process cleaned up after its QEMU.
    assert list((run.runtime / "jobs").iterdir()) == []
    assert list((run.runtime / "ports").glob("*.lock")) == []
