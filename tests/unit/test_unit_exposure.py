"""`systemd-analyze security` of every unit in units/ stays at or below the recorded baseline
(tests/systemd/security-baseline.json; docs/security.md explains what remains).

Offline (`--offline=yes`) scoring needs no running systemd, only systemd-analyze (package systemd).
A unit fails when its overall exposure rises or when a check it passed today starts to fail; a
deliberate loosening must update the baseline and docs/security.md together.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "units"
BASELINE = ROOT / "tests" / "systemd" / "security-baseline.json"
_OVERALL = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


def analyze(unit: Path, *extra: str) -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: apt-get install systemd"
    proc = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", *extra, str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def measure(unit: Path) -> tuple[float, dict[str, float]]:
    match = _OVERALL.search(analyze(unit))
    assert match, f"no overall exposure for {unit.name}"
    items = json.loads(analyze(unit, "--json=short"))
    exposed = {i["name"]: float(i["exposure"]) for i in items if i["exposure"] and float(i["exposure"]) > 0}
    return float(match.group(1)), exposed


def baseline() -> dict[str, dict[str, object]]:
    units: dict[str, dict[str, object]] = json.loads(BASELINE.read_text())["units"]
    return units


def test_every_unit_has_a_baseline() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(baseline())


@pytest.mark.parametrize("name", sorted(p.name for p in UNITS.glob("*.service")))
def test_exposure_does_not_rise(name: str) -> None:
    overall, exposed = measure(UNITS / name)
    recorded = baseline()[name]
    print(f"{name}: {overall} (baseline {recorded['overall']})")
    assert overall <= float(str(recorded["overall"])), (
        f"{name}: exposure {overall} > baseline {recorded['overall']}; {exposed}"
    )
    was = recorded["exposed"]
    assert isinstance(was, dict)
    worse = {k: v for k, v in exposed.items() if v > float(was.get(k, 0.0))}
    assert not worse, f"{name}: checks newly failing or worse than the baseline: {worse}"
