"""The Debian test image for real-VM tests, made by scripts/build-test-image (cached by its stamp).

Shared by tests/vm, tests/service and tests/systemd; ``SOLSTICE_TEST_IMAGES`` moves ``<images>``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = Path(os.environ.get("SOLSTICE_TEST_IMAGES", "/var/lib/solstice/images"))


#: build-test-image --variant -> the image directory's name (the catalog's built-in label).
VARIANTS = {"nocloud": "debian-12", "metadata": "debian-12-metadata"}


def build_test_image(out: Path = IMAGES, variant: str = "nocloud") -> Path:
    """``<out>/debian-12`` (base.qcow2, vmlinuz, initrd.img, cmdline), built when missing or out
    of date; ``variant="metadata"``: ``<out>/debian-12-metadata``, the guest without cloud-init
    that takes root's key from a metadata-agent cpio disk."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-test-image"), "--variant", variant, "--output", str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"scripts/build-test-image failed:\n{proc.stdout}\n{proc.stderr}"
    image = out / VARIANTS[variant]
    for name in ("base.qcow2", "vmlinuz", "initrd.img", "cmdline"):
        assert (image / name).is_file(), f"build-test-image did not make {image / name}"
    return image
