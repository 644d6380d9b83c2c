"""The VM lifecycle with a real Debian guest under TCG.

One boot is shared by the tests of this module (``booted`` fixture: the session's shared guest,
tests/vm/sharedguest.py, which tests/vm/test_checkout.py runs a job in too); a second one never
boots. The last test checks that unwinding the shared boot's ExitStack left nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from solstice.errors import BootTimeout, GuestConnectionLost
from solstice.model.core import Phase
from solstice.vm import BootMode, Guest, machine, start_machine
from solstice.vm.ports import PortLease, allocate_port, try_lease
from solstice.vm.qmp import qmp_command
from tests.vm.sharedguest import BOOT_TIMEOUT, Booted, SharedGuest, spec_for

pytestmark = pytest.mark.vm


def qemu_pids(name: str) -> list[int]:
    """QEMU processes whose command line carries ``-name <name>``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-name" in argv and name.encode() in argv:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def booted(shared_guest: SharedGuest) -> Booted:
    return shared_guest.booted()


def run(guest: Guest, command: str, stdin: bytes | None = None) -> tuple[int | None, bytes, bytes]:
    out: list[bytes] = []
    err: list[bytes] = []
    status = guest.exec(command, stdin=stdin, on_stdout=out.append, on_stderr=err.append)
    return status, b"".join(out), b"".join(err)


def test_boot_phases_and_guest(booted: Booted) -> None:
    print(f"boot to SSH: {booted.boot_seconds:.1f} s")
    assert booted.phases == [Phase.PREPARE, Phase.BOOT, Phase.READY]
    assert booted.guest.user == "solstice"
    assert booted.boot_seconds < BOOT_TIMEOUT
    assert sorted(p.name for p in booted.workdir.iterdir()) == [
        "console.log",
        "overlay.qcow2",
        "qemu.stderr",
        "qmp.sock",
        "seed.iso",
    ]
    assert "solstice-test" in run(booted.guest, "hostname")[1].decode()
    assert booted.guest.console_tail(5)


def test_exit_status_and_stderr(booted: Booted) -> None:
    status, out, err = run(booted.guest, "echo out; echo err >&2; exit 3")
    assert (status, out, err) == (3, b"out\n", b"err\n")
    assert run(booted.guest, "true")[0] == 0


def test_output_streams_while_the_command_runs(booted: Booted) -> None:
    chunks: list[tuple[float, bytes]] = []
    start = time.monotonic()
    status = booted.guest.exec(
        "echo first; sleep 2; echo second",
        on_stdout=lambda b: chunks.append((time.monotonic() - start, b)),
        on_stderr=lambda b: None,
    )
    end = time.monotonic() - start
    assert status == 0
    assert b"".join(c for _, c in chunks) == b"first\nsecond\n"
    first_at = next(t for t, c in chunks if b"first" in c)
    assert first_at < end - 1.5, (first_at, end)


def test_closed_output_is_no_busy_wait(booted: Booted) -> None:
    # The command closes stdout/stderr (SSH EOF) but runs 3 s more: exec must idle meanwhile.
    cpu = time.process_time()
    assert run(booted.guest, "exec >/dev/null 2>&1; sleep 3; exit 4")[0] == 4
    assert time.process_time() - cpu < 1.0


def test_stdin(booted: Booted) -> None:
    data = bytes(range(256)) * 1000
    status, out, _ = run(booted.guest, "sha256sum", stdin=data)
    import hashlib

    assert status == 0
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()
    # No stdin at all: a command reading it sees EOF at once.
    assert run(booted.guest, "cat")[:2] == (0, b"")


def test_put_and_get_with_modes(booted: Booted) -> None:
    g = booted.guest
    g.put("/tmp/script.sh", b"#!/bin/sh\necho ran $1\n", 0o700)
    g.put("/tmp/secret.env", b"A=1\n", 0o600)
    assert run(g, "/tmp/script.sh x")[:2] == (0, b"ran x\n")
    assert run(g, "stat -c %a /tmp/script.sh /tmp/secret.env")[1] == b"700\n600\n"
    payload = os.urandom(300_000)
    g.put("/tmp/blob", payload, 0o644)
    assert g.get("/tmp/blob") == payload
    with pytest.raises(FileNotFoundError):
        g.get("/tmp/does-not-exist")


def test_sudo_without_password(booted: Booted) -> None:
    assert run(booted.guest, "sudo -n true")[0] == 0
    assert run(booted.guest, "sudo -n id -u")[1] == b"0\n"


def test_stop_event_ends_a_long_command_and_a_second_channel_works(booted: Booted) -> None:
    g = booted.guest
    stop = threading.Event()
    result: list[int | None] = []
    out: list[bytes] = []

    def long() -> None:
        result.append(
            g.exec(
                "echo $$ > /tmp/long.pid; echo started; exec sleep 600",
                on_stdout=out.append,
                on_stderr=lambda b: None,
                stop=stop,
                stop_grace=3.0,
            )
        )

    t = threading.Thread(target=long)
    t.start()
    deadline = time.monotonic() + 30
    while b"started" not in b"".join(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    # A second channel while the first one streams: the job's kill path.
    assert run(g, "test -s /tmp/long.pid && echo yes")[1] == b"yes\n"
    start = time.monotonic()
    stop.set()
    t.join(30)
    assert not t.is_alive()
    assert result == [None]
    assert 2.5 < time.monotonic() - start < 10
    run(g, "kill $(cat /tmp/long.pid) 2>/dev/null || true")


def test_probe_needs_running_vcpus_and_disconnect_ends_a_waiting_command(booted: Booted) -> None:
    """The guest monitor's two tools (solstice.job.liveness). Last before the unwind: it drops
    the connection."""
    g = booted.guest
    booted.spent = True  # the connection goes: whoever comes after gets a fresh guest
    qmp = booted.workdir / "qmp.sock"
    g.probe()  # answered at once while the guest runs
    answered = threading.Event()

    def probe() -> None:
        g.probe()
        answered.set()

    qmp_command(qmp, "stop")  # vCPUs paused: sshd cannot answer, the TCP connection stays up
    try:
        threading.Thread(target=probe, daemon=True).start()
        assert not answered.wait(3.0)
    finally:
        qmp_command(qmp, "cont")
    assert answered.wait(30.0)  # the answer comes once the guest runs again
    errors: list[BaseException] = []

    def waiting() -> None:
        try:
            run(g, "sleep 600")
        except GuestConnectionLost as exc:
            errors.append(exc)

    t = threading.Thread(target=waiting)
    t.start()
    time.sleep(1.0)
    g.disconnect()
    t.join(10)
    assert not t.is_alive() and len(errors) == 1
    with pytest.raises(GuestConnectionLost):
        run(g, "true")


def test_nothing_left_after_unwind(booted: Booted) -> None:
    port = booted.guest.port
    assert qemu_pids("solstice-test-machine")
    assert try_lease(booted.ports_dir, port) is None  # held while the VM runs
    start = time.monotonic()
    booted.spent = True
    booted.stack.close()
    teardown = time.monotonic() - start
    print(f"teardown: {teardown:.1f} s")
    # A job's VM gets QMP quit at once (no powerdown wait, though shutdown_timeout is 5 s here).
    assert teardown < 3.0
    assert qemu_pids("solstice-test-machine") == []
    assert list(booted.workdir.iterdir()) == []
    assert list(booted.ports_dir.iterdir()) == []
    lease = try_lease(booted.ports_dir, port)
    assert lease is not None
    lease.release()


def test_guest_that_never_boots(test_image: Path, tmp_path: Path) -> None:
    # The initramfs finds no root file system and drops to a shell: SSH never answers.
    spec = spec_for(
        test_image,
        cmdline="root=/dev/nonexistent console=ttyS0",
        boot_timeout=25.0,
        instance_id="test-noboot",
    )
    workdir, ports_dir = tmp_path / "work", tmp_path / "ports"
    start = time.monotonic()
    with pytest.raises(BootTimeout) as exc:
        with contextlib.ExitStack() as stack:
            start_machine(spec, workdir, ports_dir, stack)
    elapsed = time.monotonic() - start
    assert elapsed < 25.0 + 20.0, elapsed
    message = str(exc.value)
    assert "within 25 s" in message
    assert "Last console lines:" in message
    tail = message.split("Last console lines:\n", 1)[1]
    assert len(tail.splitlines()) >= 5, message
    assert "root file system" in tail or "nonexistent" in tail, message
    assert exc.value.hint and "console" in exc.value.hint
    assert qemu_pids("solstice-test-noboot") == []
    assert list(workdir.iterdir()) == []
    assert list(ports_dir.iterdir()) == []


def test_port_taken_by_another_program_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No guest needed: QEMU fails its host forward within milliseconds, or starts (and SeaBIOS
    # finds nothing to boot on the blank disk) and the short boot timeout ends the test.
    base = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    spec = spec_for(tmp_path, base_image=base, boot=BootMode.BIOS, boot_timeout=5.0, instance_id="test-fwd")
    workdir, ports_dir = tmp_path / "work", tmp_path / "ports"
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    calls: list[int] = []

    def first_the_taken_port(d: Path) -> PortLease:
        lease = try_lease(d, taken) if not calls else allocate_port(d)
        assert lease is not None
        calls.append(lease.port)
        return lease

    monkeypatch.setattr(machine, "allocate_port", first_the_taken_port)
    caplog.set_level(logging.INFO, logger="solstice.vm.machine")
    try:
        with pytest.raises(BootTimeout):
            with contextlib.ExitStack() as stack:
                ports_dir.mkdir()
                start_machine(spec, workdir, ports_dir, stack)
    finally:
        squatter.close()
    assert calls[0] == taken and len(calls) == 2 and calls[1] != taken
    assert f"port {taken}: " in caplog.text and "Could not set up host forwarding rule" in caplog.text
    assert qemu_pids("solstice-test-fwd") == []
    assert list(workdir.iterdir()) == []
    assert list(ports_dir.iterdir()) == []


def blank_disk(tmp_path: Path) -> Path:
    base = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    return base


@pytest.mark.parametrize("boot", [BootMode.BIOS, BootMode.UEFI])
def test_firmware_boot_modes_start_and_clean_up(tmp_path: Path, boot: BootMode) -> None:
    # QEMU accepts the argv of each firmware mode; with nothing to boot, the boot timeout ends it.
    if boot is BootMode.UEFI and not Path(spec_for(tmp_path).ovmf_code).exists():
        pytest.fail("OVMF is not installed (apt-get install ovmf; scripts/setup does)")
    spec = spec_for(
        tmp_path, base_image=blank_disk(tmp_path), boot=boot, boot_timeout=4.0, shutdown_timeout=1.0
    )
    spec = replace(spec, instance_id=f"test-fw-{boot}")
    workdir, ports_dir = tmp_path / "work", tmp_path / "ports"
    with pytest.raises(BootTimeout):
        with contextlib.ExitStack() as stack:
            start_machine(spec, workdir, ports_dir, stack)
    assert qemu_pids(f"solstice-test-fw-{boot}") == []
    assert list(workdir.iterdir()) == []
    assert list(ports_dir.iterdir()) == []


CHILD = """
import contextlib, signal, sys
from pathlib import Path
from solstice.vm.machine import MachineSpec, start_machine
from solstice.vm import BootMode, get_profile

def interrupt(signum, frame):
    raise KeyboardInterrupt  # what the job process does with SIGTERM

signal.signal(signal.SIGTERM, interrupt)
spec = MachineSpec(
    base_image=Path(sys.argv[1]), image_format="qcow2", boot=BootMode.BIOS, kernel=None, initrd=None,
    cmdline="", profile=get_profile("debian"), accel="tcg", cpus=1, memory_mib=256, disk_gib=None,
    boot_timeout=120.0, shutdown_timeout=2.0, qemu="qemu-system-x86_64", qemu_img="qemu-img",
    ovmf_code="", ovmf_vars="", instance_id="test-sigterm", hostname="h",
)
with contextlib.ExitStack() as stack:
    start_machine(spec, Path(sys.argv[2]), Path(sys.argv[3]), stack)
"""


def test_sigterm_during_boot_leaves_nothing(tmp_path: Path) -> None:
    workdir, ports_dir = tmp_path / "work", tmp_path / "ports"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(blank_disk(tmp_path)), str(workdir), str(ports_dir)],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not qemu_pids("solstice-test-sigterm") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert qemu_pids("solstice-test-sigterm"), "QEMU did not start"
        time.sleep(1.0)  # now waiting for SSH
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert b"KeyboardInterrupt" in err
    assert qemu_pids("solstice-test-sigterm") == []
    assert list(workdir.iterdir()) == []
    assert list(ports_dir.iterdir()) == []
