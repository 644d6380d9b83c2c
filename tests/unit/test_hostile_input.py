"""Hostile input from a forge (or a pusher's workflow file) is refused with a clear error before it
reaches a host path, a unit name or the parser's memory: YAML bombs, deep nesting, huge files,
checkout paths outside the workspace, job ids and GitHub jobIds that are not file names."""

from __future__ import annotations

import dataclasses
import resource
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from solstice.forges.github.reporter import Reporter
from solstice.job.runner import JobRun, JobSettings
from solstice.model import JobRequest, Result
from solstice.workflow import load_workflow, parse_workflow
from solstice.workflow.loader import MAX_BYTES, MAX_VALUES, LoadError, load
from solstice.workflow.translate import WorkflowProblems
from tests.fakes.jobsink import Collect
from tests.fakes.localguest import LocalGuest, stand_in_image
from tests.unit.test_github_translate import message


def laughs(indent: str, levels: int = 9) -> str:
    """The billion laughs: ``levels`` anchors, each a list of nine aliases of the one before."""
    out = f"{indent}a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(1, levels):
        out += f"{indent}a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return out


BOMBS = {
    "matrix include": "on: push\njobs:\n  j:\n    runs-on: debian-12\n    strategy:\n      matrix:\n"
    "        include:\n          - x: 1\n" + laughs("            ") + "    steps:\n      - run: echo\n",
    "step with:": "on: push\njobs:\n  j:\n    runs-on: debian-12\n    steps:\n"
    "      - uses: actions/checkout@v4\n        with:\n" + laughs("          ") + "      - run: echo\n",
    "workflow inputs": "on:\n  workflow_dispatch:\n    inputs:\n      x:\n        default: 1\n"
    + laughs("        ")
    + "jobs:\n  j:\n    runs-on: debian-12\n    steps:\n      - run: echo\n",
}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("where", sorted(BOMBS))
def test_billion_laughs_is_refused_without_expanding(where: str) -> None:
    before = _peak_mib()
    with pytest.raises(WorkflowProblems) as info:
        parse_workflow(BOMBS[where], "bomb.yml")
    assert f"expands to more than {MAX_VALUES} values through its aliases" in str(info.value)
    assert _peak_mib() - before < 50  # followed, the aliases are 10^9 values


def test_aliases_within_the_bound_still_work() -> None:
    doc = load("a: &x [1, 2]\nb: *x\nc: *x\n")
    assert doc == {"a": [1, 2], "b": [1, 2], "c": [1, 2]}


@pytest.mark.parametrize("opener,closer", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_is_refused_before_the_parser_recurses(opener: str, closer: str) -> None:
    text = "on: push\njobs: " + opener * 20000 + "1" + closer * 20000 + "\n"
    with pytest.raises(WorkflowProblems) as info:
        parse_workflow(text, "deep.yml")
    assert "nests deeper than 100 levels" in str(info.value)


def test_a_huge_document_is_refused_by_size(tmp_path: Path) -> None:
    text = "on: push\n#" + "x" * MAX_BYTES + "\n"
    with pytest.raises(LoadError, match="larger than 1024 KiB"):
        load(text)
    path = tmp_path / "huge.yml"
    with path.open("wb") as fh:  # sparse: 4 GiB that are never read whole
        fh.truncate(4 << 30)
    with pytest.raises(WorkflowProblems, match="larger than 1024 KiB"):
        load_workflow(path)


# --- values that reach host paths ---------------------------------------------------------------


@pytest.fixture
def runtime() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sol-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _job(runtime: Path, steps: str, job_id: str | None = None) -> tuple[Result, Collect, Path]:
    text = "on: push\njobs:\n  j:\n    runs-on: debian-12\n    steps:\n" + steps
    (job,) = parse_workflow(text, "t.yml").jobs
    request = JobRequest(
        job_id=job_id or str(uuid.uuid4()),
        job=job,
        label="local",
        repository="example/tree",
        commit="0" * 40,
        checkout_source=str(runtime / "src"),
    )
    sink = Collect()
    roots: list[Path] = []

    def boot(stack: object) -> LocalGuest:
        guest = LocalGuest.booted(stack)  # type: ignore[arg-type]
        roots.append(guest.root)
        return guest

    result = JobRun(request, stand_in_image(), JobSettings(runtime_dir=runtime), sink, boot=boot).run()
    return result, sink, roots[0] if roots else runtime


@pytest.mark.parametrize("job_id", ["../../../tmp/x", "a/b", "x\nnewline", "nul\0", "A" * 36])
def test_a_job_id_that_is_not_a_uuid_never_becomes_a_directory(runtime: Path, job_id: str) -> None:
    result, sink, _ = _job(runtime, "      - run: echo hi\n", job_id=job_id)
    assert result is Result.ERROR
    assert "is not a uuid in canonical form" in sink.events[-1].message
    assert list(runtime.iterdir()) == []  # no jobs/ directory, nothing outside it either


@pytest.mark.parametrize("path", ["../../..", "/etc", "work/../../.."])
def test_a_checkout_path_outside_the_workspace_is_refused(runtime: Path, path: str) -> None:
    src = runtime / "src"
    src.mkdir()
    (src / "marker.txt").write_text("checked out\n")
    result, sink, root = _job(
        runtime, f"      - uses: actions/checkout@v4\n        with:\n          path: {path}\n"
    )
    assert result is Result.FAILURE
    assert f"checkout: path {path!r} is not under the workspace" in sink.events[-1].message
    assert not any(root.rglob("marker.txt"))
    assert not Path("/etc/marker.txt").exists()


def test_a_checkout_path_inside_the_workspace_works(runtime: Path) -> None:
    src = runtime / "src"
    src.mkdir()
    (src / "marker.txt").write_text("checked out\n")
    steps = "      - uses: actions/checkout@v4\n        with:\n          path: sub/../inner\n"
    result, _, root = _job(runtime, steps + "      - run: cat inner/marker.txt\n")
    assert result is Result.SUCCESS


@pytest.mark.parametrize("job_id", ["../../escape", "/abs/path", "x/y"])
def test_a_github_job_id_never_names_a_file_outside_the_spool(tmp_path: Path, job_id: str) -> None:
    msg, _ = message()
    hostile = dataclasses.replace(msg, job_id=job_id)
    spool = tmp_path / "spool" / "logs"
    r = Reporter.for_job(hostile, [("s-1", "Build")], spool_dir=spool)
    paths = [Path(st.log.path) for st in r.steps] + [Path(r.job_spool.path)]
    for p in paths:
        assert p.parent == spool, p
        assert uuid.UUID(p.name.split(".")[0])
    # the same jobId gets the same files (a restarted poller finds its spool again)
    again = Reporter.for_job(hostile, [("s-1", "Build")], spool_dir=spool)
    assert [st.log.path for st in again.steps] == [st.log.path for st in r.steps]


@pytest.mark.parametrize("char", ["\0", "\x1b", "\x07"])
def test_control_characters_in_a_workflow_are_a_clear_error(char: str) -> None:
    with pytest.raises(WorkflowProblems, match="invalid YAML: unacceptable character"):
        parse_workflow(f"on: push\njobs:\n  j{char}:\n    runs-on: x\n", "ctl.yml")


def test_runner_files_are_read_bounded(runtime: Path) -> None:
    steps = (
        "      - name: summary\n"
        "        run: head -c 2000000 /dev/zero | tr '\\0' s >> \"$GITHUB_STEP_SUMMARY\"\n"
        "      - name: env\n        run: head -c 20000000 /dev/zero | tr '\\0' e >> \"$GITHUB_ENV\"\n"
    )
    result, sink, _ = _job(runtime, steps)
    logs = [e.text for e in sink.events if e.kind.value == "log"]
    assert "Warning: $GITHUB_STEP_SUMMARY is larger than 1024 KiB; not shown (as on GitHub)" in logs
    assert not any(line.startswith("sss") for line in logs)
    assert result is Result.FAILURE
    assert "$GITHUB_ENV is larger than 16 MiB" in sink.events[-1].message
