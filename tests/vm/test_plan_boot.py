"""``solstice run`` boots the size the machine plan gives: an image configured with 4 CPUs / 6 GiB
and no size on the command line boots QEMU with ``-smp 4 -m 6144M``, and the guest sees 4 CPUs.
One real TCG boot (6 GiB is fine on the build machine's 24 GiB)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

LABEL = "debian-12-big"
WORKFLOW = f"""
on: push
jobs:
  size:
    runs-on: {LABEL}
    steps:
      - run: echo "guest cpus $(nproc)"
"""


def qemu_cmdlines(marker: str) -> list[list[str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and b"qemu-system" in argv[0] and marker.encode() in b" ".join(argv):
                found.append([a.decode() for a in argv if a])
    return found


def test_solstice_run_boots_the_images_size(test_image: Path, tmp_path: Path) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="sol-", dir="/tmp"))
    config = tmp_path / "solstice.toml"
    config.write_text(
        f'[vm]\naccel = "{os.environ.get("SOLSTICE_VM_ACCEL", "tcg")}"\nboot_timeout = 400\n'
        f'[paths]\nruntime_dir = "{runtime}"\nstate_dir = "{tmp_path}/state"\n'
        f"[images.{LABEL}]\n"
        f'path = "{test_image}/base.qcow2"\nboot = "kernel"\n'
        f'kernel = "{test_image}/vmlinuz"\ninitrd = "{test_image}/initrd.img"\n'
        f'cmdline = "{(test_image / "cmdline").read_text().strip()}"\ncpus = 4\nmemory = "6G"\n'
    )
    (tmp_path / "size.yml").write_text(WORKFLOW)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
    out = tmp_path / "run.out"
    with out.open("wb") as fh:
        run = subprocess.Popen(
            [sys.executable, "-m", "solstice", "--config", str(config), "run", str(tmp_path / "size.yml")],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        argv: list[str] = []
        deadline = time.monotonic() + 120
        while not argv and time.monotonic() < deadline and run.poll() is None:
            found = qemu_cmdlines(str(runtime))
            argv = found[0] if found else []
            time.sleep(0.2)
        assert argv, out.read_text()
        assert argv[argv.index("-smp") + 1] == "4", argv
        assert argv[argv.index("-m") + 1] == "6144M", argv
        assert run.wait(600) == 0, out.read_text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    text = out.read_text()
    assert f"Booting {LABEL} (tcg, 4 CPUs, 6144 MiB)" in text, text
    assert "guest cpus 4" in text, text
    assert not qemu_cmdlines(str(runtime))
