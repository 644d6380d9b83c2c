"""docs/configuration.md documents every table and key of solstice.config."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from solstice import config

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def documented() -> dict[str, set[str]]:
    """Each ``## `[table]` `` section's keys: the first column of its tables (``key``, ``a``, ``b``)."""
    keys: dict[str, set[str]] = {}
    table = ""
    for line in DOC.read_text().splitlines():
        heading = re.match(r"## `\[([a-z]+)", line)
        if heading:
            table = heading.group(1)
            keys[table] = set()
        elif table and line.startswith("| `"):
            keys[table].update(re.findall(r"`([a-z_][a-z0-9_]*)`", line.split("|")[1]))
    return keys


def test_every_key_is_documented_in_its_table() -> None:
    doc = documented()
    tables = {**config._SECTIONS, "images": config.ImageConfig, "sizes": config.SizePreset}
    for name, cls in tables.items():
        fields = {f.name for f in dataclasses.fields(cls)} - {"label", "name"}  # the table's name
        if cls is config.PoolConfig:  # [pool]'s keys and its [pool.<label>] tables' in one section
            fields = fields - {"labels"} | {f.name for f in dataclasses.fields(config.PoolLabel)} - {"label"}
        assert name in doc, f"no section for [{name}]"
        assert fields - doc[name] == set(), f"[{name}] keys missing from configuration.md"
        assert doc[name] - fields == set(), f"[{name}] documents keys that do not exist"


def test_the_labels_table_is_documented() -> None:
    # [labels] has no fixed keys (each key is a runs-on label): its section and an example.
    assert "labels" in documented()
    text = DOC.read_text()
    assert 'ubuntu-latest = "debian-12"' in text.split("## `[labels]`")[1]
