"""The self-test's record of an image: ``<images_dir>/<label>/selftest.json``.

``{"passed": bool, "at": ISO-8601 UTC, "boot_seconds": float, "checks": [{"name", "passed",
"detail"}]}``: written by ``solstice image selftest`` (solstice.job.selftest runs the checks), read
by ``solstice image list``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from solstice.errors import ImageError
from solstice.files import atomic_write

RECORD_NAME = "selftest.json"


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class SelftestResult:
    checks: tuple[Check, ...]
    boot_seconds: float | None
    at: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "at": self.at,
            "boot_seconds": round(self.boot_seconds, 1) if self.boot_seconds is not None else None,
            "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks],
        }


def record_path(images_dir: Path, label: str) -> Path:
    return images_dir / label / RECORD_NAME


def write_record(images_dir: Path, label: str, result: SelftestResult) -> Path:
    path = record_path(images_dir, label)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(result.to_json(), indent=2) + "\n", mode=0o644)
    except OSError as exc:
        raise ImageError(f"cannot record the self-test of {label!r} in {path}: {exc}") from None
    return path


def read_record(images_dir: Path, label: str) -> SelftestResult | None:
    """The last self-test of ``label``, or None when there is none (or it cannot be read)."""
    try:
        doc = json.loads(record_path(images_dir, label).read_text())
        checks = tuple(
            Check(str(c["name"]), bool(c["passed"]), str(c.get("detail", ""))) for c in doc["checks"]
        )
        boot = doc.get("boot_seconds")
        return SelftestResult(checks, float(boot) if boot is not None else None, str(doc["at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
