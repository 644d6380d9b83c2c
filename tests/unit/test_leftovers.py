"""Nothing a killed job leaves behind survives the next Solstice command: QEMU dies with the process
that started it (PR_SET_PDEATHSIG), and ``vm.leftovers.sweep`` removes the work directories whose
owner is dead (its QEMU killed first) and the port locks nobody holds. Also: a job whose QEMU died
says so first. The real-VM counterpart (solstice run SIGKILLed mid-step) is tests/vm/test_crash.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from solstice.cli import main as cli
from solstice.job.runner import JobRun, JobSettings
from solstice.model import EventKind, JobRequest, Result
from solstice.vm import leftovers, ports
from solstice.workflow import parse_workflow
from tests.fakes.jobsink import Collect
from tests.fakes.localguest import LocalGuest, stand_in_image

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not reaped by its parent, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _owner(workdir: Path) -> subprocess.Popen[bytes]:
    """A process that claims ``workdir`` as a job does and then waits (kill it to make it stale)."""
    workdir.mkdir(parents=True)
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from solstice.vm import leftovers
        leftovers.claim_workdir(Path({str(workdir)!r}))
        (Path({str(workdir)!r}) / "overlay.qcow2").write_bytes(b"x" * 4096)
        print("claimed", flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT)
    assert child.stdout is not None and child.stdout.readline() == b"claimed\n"
    return child


def _fake_qemu(workdir: Path) -> subprocess.Popen[bytes]:
    """A process named like QEMU whose command line names a file of ``workdir``."""
    return subprocess.Popen(
        [
            "bash",
            "-c",
            'exec -a qemu-system-x86_64 "$0" -c "import time; time.sleep(600)" "$1"',
            sys.executable,
            f"{workdir}/overlay.qcow2",
        ],
        start_new_session=True,
    )


def test_a_dead_owners_directory_and_qemu_are_swept_a_live_ones_kept(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    dead, alive, foreign = (runtime / "jobs" / str(uuid.uuid4()) for _ in range(3))
    dead_owner, live_owner = _owner(dead), _owner(alive)
    qemu_dead, qemu_alive = _fake_qemu(dead), _fake_qemu(alive)
    foreign.mkdir()
    (foreign / "something").write_text("not a job's: no owner file")
    try:
        dead_owner.kill()
        dead_owner.wait()
        swept = leftovers.sweep(runtime)
        assert swept.workdirs == [dead]
        assert swept.qemus == [qemu_dead.pid]
        assert qemu_dead.wait(timeout=10) == -signal.SIGKILL
        assert not dead.exists()
        assert (alive / "overlay.qcow2").is_file() and (alive / leftovers.OWNER).is_file()
        assert qemu_alive.poll() is None
        assert (foreign / "something").is_file()
        # Once its owner is gone too, the next sweep takes it.
        live_owner.kill()
        live_owner.wait()
        assert leftovers.sweep(runtime).workdirs == [alive]
        assert qemu_alive.wait(timeout=10) == -signal.SIGKILL
    finally:
        for p in (dead_owner, live_owner, qemu_dead, qemu_alive):
            p.kill()
            p.wait()


def test_a_claimed_directory_cannot_be_claimed_twice(tmp_path: Path) -> None:
    lock = leftovers.claim_workdir(tmp_path)
    with pytest.raises(leftovers.VMError, match="in use by another process"):
        leftovers.claim_workdir(tmp_path)
    assert leftovers.sweep(tmp_path.parent).workdirs == []
    lock.release()


def test_port_locks_nobody_holds_are_swept(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    held = ports.allocate_port(runtime / "ports")
    stale = runtime / "ports" / "40001.lock"
    stale.touch()  # what a killed job leaves: the file, its flock gone with the process
    (runtime / "ports" / "notes.txt").write_text("not a lock")
    try:
        assert leftovers.sweep(runtime).ports == [40001]
        assert not stale.exists()
        assert held.path.exists()
        assert (runtime / "ports" / "notes.txt").exists()
    finally:
        held.release()


def test_every_command_sweeps_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runtime = tmp_path / "run"
    config = tmp_path / "solstice.toml"
    config.write_text(f'[paths]\nruntime_dir = "{runtime}"\nstate_dir = "{tmp_path / "state"}"\n')
    dead = runtime / "jobs" / str(uuid.uuid4())
    owner = _owner(dead)
    owner.kill()
    owner.wait()
    (runtime / "ports").mkdir()
    (runtime / "ports" / "40002.lock").touch()
    workflow = tmp_path / "w.yml"
    workflow.write_text("on: push\njobs:\n  j:\n    runs-on: debian-12\n    steps:\n      - run: echo\n")
    assert cli.main(["--config", str(config), "plan", str(workflow)]) == 0
    assert not dead.exists()
    assert not (runtime / "ports" / "40002.lock").exists()
    assert "removed the leftovers of 1 killed job(s)" in caplog.text


# --- QEMU dies with the process that started it --------------------------------------------------

SPAWNER = """
import sys
from solstice import proc
child = proc.spawn(["sleep", "600"], stderr=None, new_session=True, die_with_parent=sys.argv[1] == "1")
print(child.pid, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("die_with_parent", [True, False])
def test_a_spawned_command_dies_with_its_sigkilled_parent(die_with_parent: bool) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", SPAWNER, "1" if die_with_parent else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.kill()
        parent.wait()
        # The control case (False) shows the test can fail: without the hook the child lives on.
        assert _gone_within(child, 5.0 if die_with_parent else 1.0) is die_with_parent
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


# --- what broke first -----------------------------------------------------------------------------


def test_a_dead_qemu_is_named_before_the_ssh_drop(tmp_path: Path) -> None:
    text = "on: push\njobs:\n  j:\n    runs-on: debian-12\n    steps:\n      - run: sleep 30\n"
    (job,) = parse_workflow(text, "t.yml").jobs
    request = JobRequest(job_id=str(uuid.uuid4()), job=job, label="local", repository="e/t", commit="0" * 40)
    guests: list[LocalGuest] = []

    def boot(stack: object) -> LocalGuest:
        guests.append(LocalGuest.booted(stack))  # type: ignore[arg-type]
        return guests[0]

    def on_event(event: object) -> None:
        if getattr(event, "kind", None) is EventKind.STEP_STARTED:
            threading.Timer(
                0.5, guests[0].crash, args=("QEMU exited (killed by signal 9)\nlast console lines:\nboom",)
            ).start()

    sink = Collect(on_event)
    result = JobRun(request, stand_in_image(), JobSettings(runtime_dir=tmp_path), sink, boot=boot).run()
    assert result is Result.ERROR
    message = sink.events[-1].message
    assert message.startswith(
        "QEMU exited (killed by signal 9); then the SSH connection to the guest dropped"
    )
    assert message.endswith("last console lines:\nboom")
