"""``solstice image list|pull|verify|rm`` as an operator runs them: a configuration file of its own,
a state directory and images.d elsewhere, images served by a local HTTP server."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from solstice.cli.image import SUBCOMMANDS
from solstice.cli.main import main
from solstice.cli.progress import ProgressPrinter
from tests.fakes.images import ImageServer

MIB = 1 << 20


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer() as s:
        yield s


@pytest.fixture
def operator(tmp_path: Path, server: ImageServer) -> Path:
    """A host with one pullable image ``tiny`` (alias ``tiny-latest``); returns its config file."""
    data = os.urandom(2 * MIB)
    server.files["/tiny.raw"] = data
    images_d = tmp_path / "etc" / "images.d"
    images_d.mkdir(parents=True)
    (images_d / "tiny.toml").write_text(
        f'[images.tiny]\nos = "Tiny 1.0"\nsource = "{server.url("tiny.raw")}"\n'
        f'sha256 = "{hashlib.sha256(data).hexdigest()}"\nformat = "raw"\naliases = ["tiny-latest"]\n'
        'verified = "not verified: a test image"\n'
    )
    cfg = tmp_path / "etc" / "solstice.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{tmp_path}/var"\nimages_d = "{images_d}"\n')
    return cfg


def run(capsys: pytest.CaptureFixture[str], cfg: Path, *argv: str) -> tuple[int, str, str]:
    status = main(["--config", str(cfg), "image", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def listing(capsys: pytest.CaptureFixture[str], cfg: Path) -> dict[str, Any]:
    status, out, _ = run(capsys, cfg, "list", "--json")
    assert status == 0
    doc = json.loads(out)
    assert doc["schema"] == "solstice.images.v1"
    return {row["label"]: row for row in doc["images"]}


def test_list_pull_verify_rm(capsys: pytest.CaptureFixture[str], operator: Path, tmp_path: Path) -> None:
    rows = listing(capsys, operator)
    assert {"tiny", "omnios-r151058", "openindiana-hipster", "freebsd-15"} <= set(rows)
    tiny = rows["tiny"]
    assert (tiny["present"], tiny["verified"], tiny["selftest"]) == (False, False, None)
    assert tiny["os"] == "Tiny 1.0" and tiny["boot_verified"] == "not verified: a test image"
    assert rows["omnios-r151058"]["boot_verified"].startswith("not verified: no download possible")

    status, out, err = run(capsys, operator, "pull", "tiny-latest")  # an alias works too
    disk = tmp_path / "var" / "images" / "tiny" / "disk.raw"
    assert status == 0, err
    assert out.startswith(f"pulled tiny: {disk} (2.0M), sha256 ")
    # not a terminal: progress lines, the last at 100%
    lines = [x for x in err.splitlines() if x.startswith("tiny: download ")]
    assert lines and lines[-1].startswith("tiny: download 2.0 of 2.0 MiB (100%)")

    # `image selftest` writes this (solstice.images.selftest); list shows it
    (disk.parent / "selftest.json").write_text(
        '{"passed": true, "at": "2026-12-01T19:00:00Z", "boot_seconds": 41.5,'
        ' "checks": [{"name": "shell", "passed": true}]}'
    )
    tiny = listing(capsys, operator)["tiny"]
    assert (tiny["present"], tiny["verified"]) == (True, True)
    assert tiny["selftest"] == {"passed": True, "at": "2026-12-01T19:00:00Z", "boot_seconds": 41.5}
    assert tiny["size_on_disk"] >= 2 * MIB
    status, out, _ = run(capsys, operator, "list")
    (row,) = [x for x in out.splitlines() if x.startswith("tiny ")]
    assert "Tiny 1.0" in row and " yes " in row and "passed 2026-12-01T19:00:00Z" in row

    status, out, _ = run(capsys, operator, "verify")  # every present image: tiny and nothing else here
    assert status == 0 and out.startswith("ok tiny: sha256 ")
    with disk.open("r+b") as f:
        f.write(b"bit rot")
    status, out, err = run(capsys, operator, "verify", "tiny")
    assert status == 1 and "solstice: error: tiny: verification failed: sha256 of" in err
    tiny = listing(capsys, operator)["tiny"]
    assert (tiny["present"], tiny["verified"]) == (True, False)
    assert tiny["reason"].startswith("failed verification: sha256 of")

    status, out, _ = run(capsys, operator, "rm", "tiny")
    assert status == 0 and f"{disk}" in out and "state.json" in out
    assert not disk.exists() and not (disk.parent / "state.json").exists()
    assert listing(capsys, operator)["tiny"]["present"] is False


def test_what_cannot_be_pulled_says_why(capsys: pytest.CaptureFixture[str], operator: Path) -> None:
    (operator.parent / "images.d" / "mine.toml").write_text('[images.mine]\npath = "/srv/mine.qcow2"\n')
    status, _, err = run(capsys, operator, "pull", "mine", "debian-12", "nope")
    assert status == 1
    assert f"solstice: error: mine: image 'mine' ({operator.parent / 'images.d' / 'mine.toml'})" in err
    assert "has no source to pull it from" in err and "images_d" in err
    assert "solstice: error: debian-12: image 'debian-12' is built on this host" in err
    assert "build-test-image" in err
    assert "solstice: error: nope: no image for label 'nope'" in err
    status, _, err = run(capsys, operator, "rm", "debian-12")
    assert status == 1 and "remove" in err and "yourself" in err


def test_image_subcommands_are_a_list_to_extend() -> None:
    assert [c.name for c in SUBCOMMANDS][:4] == ["list", "pull", "verify", "rm"]


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_journal() -> None:
    now = [0.0]
    tty = io.StringIO()
    bar = ProgressPrinter("x", tty, tty=True, clock=lambda: now[0])
    for done in (MIB, 2 * MIB):
        now[0] += 1
        bar("download", done, 4 * MIB)
    bar.finish()
    assert "\rx: download [#######                       ]  25% 1.0 of 4.0 MiB" in tty.getvalue()
    assert tty.getvalue().endswith("\n")

    journal = io.StringIO()
    lines = ProgressPrinter("x", journal, tty=False, interval=10.0, step=25, clock=lambda: now[0])
    for done in range(0, 101):  # a call per percent, one second apart
        now[0] += 1
        lines("download", done * MIB // 100 * 4, 4 * MIB)
    out = journal.getvalue().splitlines()
    # every 10 s or 25 %, whichever comes first; never two lines for one percentage
    assert 10 <= len(out) <= 15 and out[-1].startswith("x: download 4.0 of 4.0 MiB (100%)")
    assert "\r" not in journal.getvalue()
