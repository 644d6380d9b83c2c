"""Deferred jobs: a job whose matrix or ``runs-on`` reads ``needs`` is expanded once the jobs it
needs have finished, as GitHub does (``matrix: ${{ fromJSON(needs.gen.outputs.matrix) }}``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from solstice.model import JobSpec
from solstice.workflow.translate import Workflow, parse_workflow


def expand(workflow: Workflow, key: str, needs: Mapping[str, Mapping[str, Any]]) -> tuple[JobSpec, ...]:
    """The JobSpecs of deferred job ``key`` now that ``needs`` (results and outputs) is known: the
    job translated again with the contexts the workflow had, plus ``needs``. Raises
    WorkflowProblems (a matrix that is not valid JSON, an empty label...)."""
    again = parse_workflow(
        workflow.text,
        workflow.file,
        job=key,
        github=workflow.github,
        contexts={**workflow.contexts, "needs": {k: dict(v) for k, v in needs.items()}},
    )
    return again.jobs
