"""`solstice run` orchestration without VMs: a stand-in for the job process reports results and
outputs, so the order, `needs` outputs and run-time matrix expansion are what is tested."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from solstice.cli import run as run_cli
from solstice.cli.main import main
from solstice.job.events import Emitter
from solstice.job.mask import Masker
from solstice.model import JobRequest, Result

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "workflows" / "generate-matrix-literal.yml"
BROKEN = """
  broken:
    needs: gen
    runs-on: debian-12
    strategy:
      matrix: ${{ fromJSON(needs.gen.outputs.missing) }}
    steps: [{run: "true"}]
"""


def test_run_expands_a_generated_matrix_once_the_needed_job_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    requests: list[JobRequest] = []

    def fake_run_job(request: JobRequest, image: Any, settings: Any, sink: Any) -> Result:
        # The job's outputs as written (literal values: no step evaluates them here).
        requests.append(request)
        emit = Emitter(request.job_id, sink, Masker([]))
        emit.job_started(request.job.name)
        emit.job_finished(Result.SUCCESS, outputs=dict(request.job.outputs))
        return Result.SUCCESS

    monkeypatch.setattr(run_cli, "run_job", fake_run_job)
    (tmp_path / "solstice.toml").write_text("")
    monkeypatch.setenv("SOLSTICE_CONFIG", str(tmp_path / "solstice.toml"))
    workflow = tmp_path / "wf.yml"
    workflow.write_text(FIXTURE.read_text() + BROKEN)

    status = main(["run", str(workflow), "--input", "flavour=spicy"])
    out = capsys.readouterr().out
    assert status == 1, out  # `broken` fails: its matrix is not valid JSON
    assert [r.job.name for r in requests] == ["gen", "test (a)", "test (b, clang)"]
    second = requests[1]
    assert second.label == "debian-12"
    assert second.contexts["needs"]["gen"]["outputs"]["label"] == "debian-12"
    assert second.contexts["inputs"] == {"flavour": "spicy"}
    assert "job `broken`: `needs.gen.outputs.missing` is empty" in out
    assert "(job `gen` did not set output `missing`): fromJSON" in out
