"""ruff and mypy are part of the test suite, so CI and a local run check the same things."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_check() -> None:
    _run(sys.executable, "-m", "ruff", "check", "solstice", "tests", "scripts")


def test_ruff_format() -> None:
    _run(sys.executable, "-m", "ruff", "format", "--check", "solstice", "tests")


def test_mypy() -> None:
    _run(sys.executable, "-m", "mypy", "solstice")
