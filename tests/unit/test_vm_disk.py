"""qcow2 overlays with the real qemu-img."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from solstice.errors import ImageError
from solstice.vm.disk import create_overlay


@pytest.fixture(autouse=True)
def _qemu_img() -> None:
    # A missing qemu-img is a missing capability of this host, not a reason to pass quietly.
    assert shutil.which("qemu-img"), "qemu-img is not installed (sudo scripts/setup installs qemu-utils)"


def info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, check=True)
    return dict(json.loads(out.stdout))


def test_overlay_on_raw_base_and_grow(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 1024 * 1024)
    overlay = tmp_path / "job" / "overlay.qcow2"
    overlay.parent.mkdir()
    create_overlay(base, overlay, "raw", size_gib=2)
    got = info(overlay)
    assert got["format"] == "qcow2"
    assert got["backing-filename"] == str(base)
    assert got["virtual-size"] == 2 * 1024**3


def test_never_shrinks(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "3G"], check=True)
    overlay = tmp_path / "overlay.qcow2"
    create_overlay(base, overlay, "qcow2", size_gib=1)
    assert info(overlay)["virtual-size"] == 3 * 1024**3


def test_missing_base_names_it(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="nope.qcow2"):
        create_overlay(tmp_path / "nope.qcow2", tmp_path / "o.qcow2", "qcow2")


def test_wrong_format_names_the_base(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 4096)
    with pytest.raises(ImageError, match="base.raw"):
        create_overlay(base, tmp_path / "o.qcow2", "qcow2")
