"""QEMU gets none of its caller's environment but PATH and the locale: the caller's environment
can hold a job's secrets (``solstice run --secret NAME`` reads them from there). And QEMU dies
with the process that started it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from solstice.errors import VMError
from solstice.vm.argv import BootMode
from solstice.vm.machine import MachineSpec, qemu_environment, start_machine
from solstice.vm.profiles import get_profile


def test_only_path_and_locale_are_kept() -> None:
    env = qemu_environment({"PATH": "/x", "LANG": "C.UTF-8", "API_TOKEN": "hunter2", "HOME": "/root"})
    assert env == {"PATH": "/x", "LANG": "C.UTF-8"}
    assert qemu_environment({})["PATH"]  # QEMU still finds its helpers


def test_the_qemu_process_does_not_see_the_callers_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    seen = tmp_path / "qemu.environ"
    fake_qemu = tmp_path / "qemu"  # records the environment it was started with, then fails
    fake_qemu.write_text(f"#!/bin/sh\nenv > {seen}\nexit 1\n")
    fake_qemu.chmod(0o755)
    monkeypatch.setenv("CANARY_SECRET", "s3cr3t-canary")
    spec = MachineSpec(
        base_image=base, image_format="qcow2", boot=BootMode.BIOS, kernel=None, initrd=None,
        cmdline="", profile=get_profile("debian"), accel="tcg", cpus=1, memory_mib=128, disk_gib=None,
        boot_timeout=10.0, shutdown_timeout=1.0, qemu=str(fake_qemu), qemu_img="qemu-img",
        ovmf_code="", ovmf_vars="", instance_id="env-test", hostname="h",
    )  # fmt: skip
    work = tmp_path / "w"
    with pytest.raises(VMError, match="QEMU exited with status 1"), contextlib.ExitStack() as stack:
        start_machine(spec, work, tmp_path / "ports", stack)
    recorded = seen.read_text()
    assert "s3cr3t-canary" not in recorded and "CANARY_SECRET" not in recorded
    assert f"PATH={os.environ['PATH']}" in recorded.splitlines()
