"""Every ``solstice`` import obeys the boundaries table in docs/development.md (DESIGN.md's rooms)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "solstice"
TABLE = ROOT / "docs" / "development.md"
FORGES = ("forgejo", "github")


def parse_table(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """(module prefix -> room, room -> rooms it may import) from the marked table."""
    body = text.split("<!-- boundaries", 1)[1].split("<!-- /boundaries -->", 1)[0]
    owners: dict[str, str] = {}
    allowed: dict[str, set[str]] = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("room", "") or set(cells[0]) <= {"-"}:
            continue
        room, modules, may = cells
        for module in re.findall(r"`([\w.]+)`", modules):
            owners[module] = room
        allowed[room] = {r.strip() for r in may.split(",") if r.strip()}
    return owners, allowed


OWNERS, ALLOWED = parse_table(TABLE.read_text())


def room_of(module: str) -> str | None:
    """The room of a dotted module name: its longest listed prefix."""
    best = None
    for prefix in OWNERS:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return OWNERS[best] if best is not None else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, here: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every solstice import in the file, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from solstice import config` imports the module solstice.config
            if target == "solstice":
                found += [(node.lineno, f"solstice.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
    return [(line, m) for line, m in found if m == "solstice" or m.startswith("solstice.")]


def check_file(path: Path, here: str, shown: str) -> list[str]:
    room = room_of(here)
    if room is None:
        return [f"{shown}: module {here} is in no room of the table"]
    may = ALLOWED[room]
    out: list[str] = []
    for line, target in imports_of(path, here):
        other = room_of(target)
        where = f"{shown}:{line}"
        if other is None:
            out.append(f"{where}: imports {target}, which is in no room of the table")
        elif room == "ground" and other != "ground":
            out.append(f"{where}: the ground floor may not import {target} ({other})")
        elif other not in (room, "ground") and "everything" not in may and other not in may:
            out.append(f"{where}: {room} may not import {target} ({other})")
        if here.startswith("solstice.forges."):
            mine = here.split(".")[2]
            theirs = target.split(".")[2] if target.startswith("solstice.forges.") else None
            if theirs in FORGES and theirs != mine:
                out.append(f"{where}: {here} may not import another forge's package {target}")
            if mine == "core" and theirs in FORGES:
                out.append(f"{where}: the forge-neutral core may not import {target}")
    return out


def violations() -> list[str]:
    out: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        out += check_file(path, module_name(path), str(path.relative_to(ROOT)))
    return out


def test_the_table_names_every_room_of_design() -> None:
    assert set(ALLOWED) == {
        "ground", "model", "workflow", "vm", "images", "job", "queue", "store", "dispatch", "forges", "cli",
    }  # fmt: skip
    for room, may in ALLOWED.items():
        assert may <= set(ALLOWED) | {"everything"}, f"{room}: unknown rooms in {may}"


def test_every_import_obeys_the_boundaries() -> None:
    problems = violations()
    assert not problems, "imports across the boundaries (docs/development.md):\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "solstice.forges.forgejo.probe",
            "from solstice.vm.machine import Guest\n",
            "forges may not import",
        ),
        ("solstice.forges.forgejo.probe", "def f():\n    from solstice.images import Catalog\n", "images"),
        ("solstice.forges.forgejo.probe", "from ..github import client\n", "another forge's package"),
        ("solstice.forges.core.probe", "from solstice.forges.forgejo import client\n", "forge-neutral core"),
        ("solstice.secrets", "from solstice.model import JobRequest\n", "ground floor may not"),
        ("solstice.job.probe", "from solstice import queue\n", "job may not import solstice.queue"),
    ],
)
def test_a_violation_is_found(tmp_path: Path, module: str, source: str, expected: str) -> None:
    """The checker itself can fail: a planted import is reported."""
    planted = tmp_path / "probe.py"
    planted.write_text(source)
    problems = check_file(planted, module, "probe.py")
    assert any(expected in p for p in problems), problems
