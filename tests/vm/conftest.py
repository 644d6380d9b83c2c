"""Real-VM fixtures: the Debian test image made by scripts/build-test-image (cached by its stamp).

Tests that boot a guest are marked ``vm`` and run under TCG (KVM hangs on the build machines).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def test_image() -> Path:
    """The image directory (``<images>/debian-12`` with base.qcow2, vmlinuz, initrd.img, cmdline),
    built when missing or out of date. SOLSTICE_TEST_IMAGES moves ``<images>``."""
    out = Path(os.environ.get("SOLSTICE_TEST_IMAGES", "/var/lib/solstice/images"))
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-test-image"), "--output", str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"scripts/build-test-image failed:\n{proc.stdout}\n{proc.stderr}"
    image = out / "debian-12"
    for name in ("base.qcow2", "vmlinuz", "initrd.img", "cmdline"):
        assert (image / name).is_file(), f"build-test-image did not make {image / name}"
    return image
