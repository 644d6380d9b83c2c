"""Job-level orchestration, the one copy for every front end: the order of a workflow's jobs, their
``needs`` context and whether a job's ``if:`` lets it run (``solstice run``/``submit`` and the
forge pollers, which get the needed jobs' results from the forge)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from solstice import expr
from solstice.model import JobSpec, Result


def order_jobs(jobs: Sequence[JobSpec]) -> list[JobSpec]:
    """Jobs in an order that runs every job after the jobs it needs (file order otherwise)."""
    done: set[str] = set()
    ordered: list[JobSpec] = []
    pending = list(jobs)
    while pending:
        progressed = False
        for job in list(pending):
            if all(n in done for n in job.needs):
                ordered.append(job)
                pending.remove(job)
                progressed = True
        done.update(j.key for j in ordered if all(o.key != j.key for o in pending))
        if not progressed:
            ordered.extend(pending)  # a cycle: the workflow translation reports it
            break
    return ordered


def needs_result(results: Sequence[Result]) -> str:
    """``needs.<job>.result`` of a job key from the results of its runs (matrix combinations)."""
    if not results:
        return "skipped"
    if all(r is Result.SUCCESS for r in results):
        return "success"
    if any(r is Result.CANCELLED for r in results):
        return "cancelled"
    return "failure"


def needs_context(
    job: JobSpec,
    results: Mapping[str, Sequence[Result]],
    outputs: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The ``needs`` context of ``job`` from the results (and outputs) of the jobs run so far."""
    outs = outputs or {}
    return {
        n: {"result": needs_result(results.get(n, [])), "outputs": dict(outs.get(n, {}))} for n in job.needs
    }


def job_if(job: JobSpec, needs: Mapping[str, Mapping[str, Any]], contexts: Mapping[str, Any]) -> bool:
    """The job's ``if:`` (default ``success()``: every needed job succeeded), with ``needs`` as the
    needs context and ``contexts`` (github, vars, inputs) around it. Raises ExpressionError."""
    needs_ok = all(n.get("result") == "success" for n in needs.values())
    ctx = expr.Context(
        values={
            "github": {},
            **contexts,
            "needs": {k: dict(v) for k, v in needs.items()},
            "matrix": dict(job.matrix),
            "env": {},
            "job": {},
            "steps": {},
        },
        job_status="success" if needs_ok else "failure",
    )
    return expr.evaluate_condition(job.if_ or "", ctx)


def should_run(
    job: JobSpec,
    results: Mapping[str, Sequence[Result]],
    outputs: Mapping[str, Mapping[str, str]] | None = None,
    contexts: Mapping[str, Any] | None = None,
) -> bool:
    """``job_if`` for a local workflow, from the results and outputs of the jobs run so far."""
    return job_if(job, needs_context(job, results, outputs), contexts or {})
