"""One real TCG guest of the test image that several test modules share (a boot costs 30-45 s
under TCG): tests/vm/test_machine.py checks the lifecycle with it, tests/vm/test_checkout.py runs
a job's steps in it (JobRun's ``boot`` hook) instead of booting a guest of its own.

The guest is the session's (``shared_guest`` in tests/vm/conftest.py). test_machine ends it on
purpose (it drops the connection, then unwinds the boot's ExitStack and checks nothing is left):
``booted()`` after that boots a fresh one, so any module order works.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

from solstice.model.core import Phase
from solstice.vm import BootMode, Guest, MachineSpec, get_profile, start_machine

BOOT_TIMEOUT = 240.0


def spec_for(image: Path, **kw: object) -> MachineSpec:
    spec = MachineSpec(
        base_image=image / "base.qcow2",
        image_format="qcow2",
        boot=BootMode.KERNEL,
        kernel=image / "vmlinuz",
        initrd=image / "initrd.img",
        cmdline=(image / "cmdline").read_text().strip() if (image / "cmdline").exists() else "",
        profile=get_profile("debian"),
        accel="tcg",
        cpus=2,
        memory_mib=1024,
        disk_gib=None,
        boot_timeout=BOOT_TIMEOUT,
        shutdown_timeout=5.0,
        qemu="qemu-system-x86_64",
        qemu_img="qemu-img",
        ovmf_code="/usr/share/OVMF/OVMF_CODE_4M.fd",
        ovmf_vars="/usr/share/OVMF/OVMF_VARS_4M.fd",
        instance_id="test-machine",
        hostname="solstice-test",
    )
    return replace(spec, **kw)  # type: ignore[arg-type]


@dataclass
class Booted:
    guest: Guest
    workdir: Path
    ports_dir: Path
    phases: list[Phase]
    boot_seconds: float
    stack: contextlib.ExitStack
    #: Set by a test that breaks the guest for everyone after it (a dropped connection, the
    #: unwind): the next ``SharedGuest.booted()`` boots a fresh one.
    spent: bool = False


class SharedGuest:
    def __init__(self, image: Path, root: Path) -> None:
        self.image = image
        self.root = root
        self.boots = 0
        self.current: Booted | None = None

    def booted(self) -> Booted:
        """The live shared guest, booted now if there is none (or the last one is spent)."""
        if self.current is None or self.current.spent:
            self.close()
            self.boots += 1
            base = self.root / f"boot-{self.boots}"
            workdir, ports_dir = base / "work", base / "ports"
            phases: list[Phase] = []
            stack = contextlib.ExitStack()
            start = time.monotonic()
            try:
                guest = start_machine(
                    spec_for(self.image), workdir, ports_dir, stack, on_phase=phases.append
                )
            except BaseException:
                stack.close()
                raise
            self.current = Booted(guest, workdir, ports_dir, phases, time.monotonic() - start, stack)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.stack.close()  # a second close (after test_machine's unwind) does nothing
            self.current = None
