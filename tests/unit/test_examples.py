"""Every example workflow and the built-in one translate without errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from solstice.cli.common import builtin_example
from solstice.images import Catalog
from solstice.workflow import load_workflow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yml"))


@pytest.mark.parametrize("path", [*EXAMPLES, builtin_example()], ids=lambda p: p.name)
def test_example_translates_and_names_the_test_image(path: Path, tmp_path: Path) -> None:
    workflow = load_workflow(path)
    assert workflow.jobs
    catalog = Catalog({}, tmp_path)
    for job in workflow.jobs:
        assert catalog.resolve(job.runs_on) == "debian-12"
        assert job.steps


def test_there_are_examples() -> None:
    assert EXAMPLES
