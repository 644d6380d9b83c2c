"""`solstice plan`: the JSON document (solstice.plan.v1), the error document, and the text view."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from solstice.cli.main import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "workflows"
CI = str(FIXTURES / "ci.yml")
UNSUPPORTED = str(FIXTURES / "unsupported.yml")

JOB_FIELDS = {
    "key",
    "name",
    "line",
    "runs_on",
    "image",
    "deferred",
    "matrix",
    "timeout_minutes",
    "needs",
    "if",
    "continue_on_error",
    "env",
    "defaults",
    "outputs",
    "steps",
}
STEP_FIELDS = {
    "number",
    "name",
    "kind",
    "id",
    "line",
    "shell",
    "working_directory",
    "if",
    "continue_on_error",
    "timeout_minutes",
    "env",
}


@pytest.fixture(autouse=True)
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This host's catalog: ci.yml's omnios-bloody as an image, ubuntu-latest mapped to debian-12."""
    cfg = tmp_path / "solstice.toml"
    cfg.write_text(
        '[images.omnios-bloody]\npath = "omnios.qcow2"\nprofile = "omnios"\n'
        '[images.freebsd-14]\npath = "freebsd.qcow2"\nprofile = "freebsd"\n'
        '[labels]\nubuntu-latest = "debian-12"\n'
    )
    monkeypatch.setenv("SOLSTICE_CONFIG", str(cfg))
    return cfg


def plan(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    status = main(["plan", *argv])
    out, err = capsys.readouterr()
    return status, json.loads(out) if "--json" in argv else out, err


def test_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    status, doc, err = plan(capsys, CI, "--json")
    assert status == 0 and err == ""
    assert doc["schema"] == "solstice.plan.v1"
    assert doc["file"] == CI and doc["workflow"] == "CI"
    assert [j["name"] for j in doc["jobs"]] == [
        "Build (omnios-bloody, 3.11)",
        "Build (debian-12, 3.11)",
        "Build (debian-12, 3.12)",
        "test",
    ]
    for j in doc["jobs"]:
        assert set(j) == JOB_FIELDS
        for s in j["steps"]:
            assert set(s) == STEP_FIELDS | ({"with"} if s["kind"] == "checkout" else {"run"})

    build = doc["jobs"][0]
    assert build["key"] == "build" and build["line"] == 12
    assert build["runs_on"] == ["omnios-bloody"]
    assert build["matrix"] == {"os": "omnios-bloody", "python": "3.11"}
    assert build["timeout_minutes"] == 30 and build["needs"] == []
    assert build["env"] == {"GLOBAL": "1", "PY": "3.1", "JOB": "job"}
    assert build["defaults"] == {"shell": "bash", "working_directory": None}
    checkout, compile_, echo = build["steps"]
    assert checkout == {
        "number": 1,
        "name": "Checkout",
        "kind": "checkout",
        "id": None,
        "line": 26,
        "with": {"fetch-depth": "0"},
        "shell": None,
        "working_directory": None,
        "if": "",
        "continue_on_error": False,
        "timeout_minutes": None,
        "env": {},
    }
    assert compile_["run"] == "make -j2\nmake check\n" and compile_["env"] == {"CFLAGS": "-O2"}
    assert echo["id"] == "echo" and echo["if"] == "${{ matrix.python == '3.11' }}"

    test = doc["jobs"][3]
    assert test["needs"] == ["build"] and test["timeout_minutes"] == 360 and test["matrix"] == {}
    (step,) = test["steps"]
    assert (step["shell"], step["continue_on_error"], step["timeout_minutes"]) == ("sh", True, 5)


def test_json_one_job(capsys: pytest.CaptureFixture[str]) -> None:
    status, doc, _ = plan(capsys, CI, "--job", "test", "--json")
    assert status == 0 and [j["key"] for j in doc["jobs"]] == ["test"]


def test_json_errors(capsys: pytest.CaptureFixture[str]) -> None:
    status, doc, err = plan(capsys, UNSUPPORTED, "--json")
    assert status == 1 and err == ""
    assert doc == {
        "schema": "solstice.plan.v1",
        "errors": [
            {
                "file": UNSUPPORTED,
                "line": 7,
                "message": "job `build`: `container:` is not supported: Solstice runs each job directly "
                "in a virtual machine, not in containers",
            },
            {
                "file": UNSUPPORTED,
                "line": 11,
                "message": "step 3 (uses: actions/setup-node@v4): Solstice runs only `run:` steps and "
                "actions/checkout",
            },
        ],
    }


def test_json_error_without_a_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yml")
    status, doc, _ = plan(capsys, missing, "--json")
    assert status == 1
    (error,) = doc["errors"]
    assert error["file"] == missing and error["line"] is None
    assert error["message"].startswith("cannot read the workflow")


def test_json_unknown_job(capsys: pytest.CaptureFixture[str]) -> None:
    status, doc, _ = plan(capsys, CI, "--job", "deploy", "--json")
    assert status == 1
    assert doc["errors"] == [
        {"file": CI, "line": 11, "message": "no job `deploy` in this workflow (jobs: build, test)"}
    ]


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = plan(capsys, CI)
    assert status == 0 and err == ""
    assert out.startswith(f"workflow CI ({CI}): 4 job(s)\n")
    assert "job Build (omnios-bloody, 3.11)  [key build, line 12]" in out
    assert "  runs-on: omnios-bloody\n" in out
    assert "  matrix:  os=omnios-bloody, python=3.11\n" in out
    assert "  timeout: 30 min\n" in out
    assert "   1. checkout Checkout  (line 26)\n" in out
    assert '   3. run      Run echo "${{ matrix.os }}"  (line 35)\n' in out
    assert "id: echo; if: ${{ matrix.python == '3.11' }}" in out
    assert "shell: sh; continue-on-error: true; timeout: 5 min" in out
    assert "  needs:   build\n" in out


def test_text_errors_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = plan(capsys, UNSUPPORTED)
    assert status == 1 and out == ""
    assert err.splitlines() == [
        f"{UNSUPPORTED}:7: job `build`: `container:` is not supported: Solstice runs each job directly in a "
        "virtual machine, not in containers",
        f"{UNSUPPORTED}:11: step 3 (uses: actions/setup-node@v4): Solstice runs only `run:` steps and "
        "actions/checkout",
    ]


# --- run-time matrices, labels, --image, --input (issue 15 §2-§3) ---------------------------------

GENERATED = str(FIXTURES / "generate-matrix.yml")
LABELS = str(FIXTURES / "labels.yml")
REUSABLE = str(FIXTURES / "reusable.yml")


def test_a_matrix_from_needs_is_shown_as_expanded_at_run_time(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = plan(capsys, GENERATED)
    assert status == 0, err
    assert "matrix:  matrix from needs.gen.outputs.matrix, expanded at run time" in out
    status, doc, _ = plan(capsys, GENERATED, "--json")
    deferred = {j["key"]: j["deferred"] for j in doc["jobs"]}
    assert deferred == {"gen": None, "test": "matrix from needs.gen.outputs.matrix, expanded at run time"}
    assert [j["image"] for j in doc["jobs"]] == ["debian-12", None]


def test_plan_names_the_unknown_label_with_the_hint(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = plan(capsys, LABELS)
    assert status == 1
    lines = err.splitlines()
    assert len(lines) == 1, err  # ubuntu-latest is mapped by [labels]: only solaris-11 is unknown
    assert lines[0].startswith(f"{LABELS}:9: job `solaris`: runs-on: unknown label 'solaris-11'")
    # the configuration's images and [labels], and the built-in catalog's (docs/images.md)
    listed = lines[0].split("this host has images for: ")[1].split(" (")[0].split(", ")
    assert {
        "debian-12",
        "debian-12-metadata",
        "freebsd-14",
        "omnios-bloody",
        "ubuntu-latest",
        "omnios-r151058",
    } <= set(listed)
    assert listed == sorted(listed)
    assert "add an [images.<label>] table" in lines[0]


def test_plan_image_overrides_runs_on_as_run_does(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = plan(capsys, LABELS, "--image", "freebsd-14")
    assert status == 0, err
    assert "runs-on: self-hosted, solaris-11  (image freebsd-14)" in out
    status, _, err = plan(capsys, LABELS, "--image", "beos-5")
    assert status == 1 and "--image beos-5: no such label" in err


def test_a_mapped_label_plans_on_its_image(capsys: pytest.CaptureFixture[str]) -> None:
    status, doc, _ = plan(capsys, LABELS, "--json", "--job", "hosted")
    assert status == 0
    assert [(j["runs_on"], j["image"]) for j in doc["jobs"]] == [(["ubuntu-latest"], "debian-12")]


def test_a_workflow_call_planned_directly_asks_for_its_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = plan(capsys, REUSABLE)
    assert status == 1
    assert "input `oses` has no value" in err and "--input oses=VALUE" in err
    assert "not valid JSON" not in err
    status, doc, err = plan(capsys, REUSABLE, "--json", "--input", 'oses=["a", "b"]')
    assert status == 0, err
    assert [(j["name"], j["image"]) for j in doc["jobs"]] == [
        ("test (a)", "debian-12"),
        ("test (b)", "debian-12"),
    ]


def test_plan_names_this_hosts_labels_for_a_vmactions_step(capsys: pytest.CaptureFixture[str]) -> None:
    status, doc, _ = plan(capsys, str(FIXTURES / "vmactions.yml"), "--json", "--job", "freebsd")
    assert status == 1
    (error,) = doc["errors"]
    assert error["line"] == 9
    assert "`runs-on: freebsd-14.1`" in error["message"]
    assert "labels for freebsd on this host: freebsd-14" in error["message"]


def plan_text_of(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, *argv: str) -> Any:
    """Plan ``text`` written to a workflow file; the output (the document with --json)."""
    workflow = tmp_path / "wf.yml"
    workflow.write_text(text)
    status, out, err = plan(capsys, str(workflow), *argv)
    assert status == 0, err
    return out


RUNS_ON_FROM_NEEDS = (
    "on: push\njobs:\n  pick: {runs-on: debian-12, steps: [{run: x}]}\n"
    "  use:\n    needs: pick\n    runs-on: ${{ needs.pick.outputs.label }}\n    steps: [{run: x}]\n"
)
RUNS_ON_FROM_GITHUB = (
    "on: push\njobs:\n  a:\n"
    "    runs-on: ${{ github.event_name == 'push' && 'debian-12' || 'elsewhere' }}\n"
    "    steps: [{run: x}]\n"
)


def test_a_runs_on_from_needs_is_shown_as_resolved_at_run_time(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = plan_text_of(capsys, tmp_path, RUNS_ON_FROM_NEEDS)
    assert "runs-on: ${{ needs.pick.outputs.label }}  (runs-on from needs.pick.outputs.label" in out
    assert "needs.pick.outputs.label, expanded at run time)" in out


def test_runs_on_sees_the_github_context_of_a_local_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = plan_text_of(capsys, tmp_path, RUNS_ON_FROM_GITHUB, "--json")
    assert [(j["runs_on"], j["image"]) for j in doc["jobs"]] == [(["debian-12"], "debian-12")]
