"""A bare ``pytest`` collects the fast tests only; scripts/test's ``-o addopts=`` collects all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTEST = Path(sys.executable).parent / "pytest"  # the console script, not `python -m pytest`


def collect(*args: str) -> list[str]:
    proc = subprocess.run(
        [str(PYTEST), "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_bare_pytest_collects_only_fast_tests() -> None:
    ids = collect()
    assert any(i.startswith("tests/unit/") for i in ids)
    slow = [i for i in ids if i.startswith(("tests/vm/", "tests/systemd/")) or "test_forgejo_vm" in i]
    assert not slow, slow[:5]


def test_scripts_test_selection_collects_everything() -> None:
    ids = collect("-o", "addopts=")
    assert any(i.startswith("tests/vm/") for i in ids)
    assert any(i.startswith("tests/systemd/") for i in ids)
