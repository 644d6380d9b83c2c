"""Show the jobs and steps a workflow translates to, without running anything.

``solstice plan WORKFLOW [--job ID] [--json]``. The JSON document is described in docs/plan-json.md;
its schema name changes whenever a field changes meaning or goes away.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from solstice.errors import WorkflowError
from solstice.model.core import JobSpec, Step, StepKind
from solstice.workflow import Problem, Workflow, WorkflowProblems, load_workflow

SCHEMA = "solstice.plan.v1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", metavar="WORKFLOW", help="workflow file (.github/workflows/*.yml)")
    parser.add_argument("--job", metavar="ID", help="only this job (its key under `jobs:`)")
    parser.add_argument("--json", action="store_true", help=f"print a JSON document ({SCHEMA})")


# --- JSON ----------------------------------------------------------------------------------------


def _number(value: float | str | None) -> float | int | str | None:
    # 30.0 -> 30: minutes read back as written.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def step_json(step: Step) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "number": step.number,
        "name": step.name,
        "kind": step.kind.value,
        "id": step.id,
        "line": step.line,
    }
    if step.kind is StepKind.CHECKOUT:
        doc["with"] = dict(step.with_)
    else:
        doc["run"] = step.run
    doc.update(
        {
            "shell": step.shell,
            "working_directory": step.working_directory,
            "if": step.if_,
            "continue_on_error": step.continue_on_error,
            "timeout_minutes": _number(step.timeout_minutes),
            "env": dict(step.env),
        }
    )
    return doc


def job_json(job: JobSpec) -> dict[str, Any]:
    return {
        "key": job.key,
        "name": job.name,
        "line": job.line,
        "runs_on": list(job.runs_on),
        "matrix": dict(job.matrix),
        "timeout_minutes": _number(job.timeout_minutes),
        "needs": list(job.needs),
        "if": job.if_,
        "continue_on_error": job.continue_on_error,
        "env": dict(job.env),
        "defaults": {"shell": job.shell, "working_directory": job.working_directory},
        "outputs": dict(job.outputs),
        "steps": [step_json(s) for s in job.steps],
    }


def plan_json(workflow: Workflow) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "file": workflow.file,
        "workflow": workflow.name,
        "jobs": [job_json(j) for j in workflow.jobs],
    }


def _problems(exc: WorkflowError, file: str) -> list[Problem]:
    if isinstance(exc, WorkflowProblems):
        return list(exc.entries)
    # Any other WorkflowError: its texts are "file:line: message" by contract.
    out = []
    for text in exc.problems:
        head, sep, rest = text.partition(": ")
        where, _, line = head.rpartition(":")
        if sep and where and line.isdigit():
            out.append(Problem(where, int(line), rest))
        else:
            out.append(Problem(file, 0, text))
    return out


def errors_json(problems: list[Problem]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "errors": [{"file": p.file, "line": p.line or None, "message": p.message} for p in problems],
    }


# --- text ----------------------------------------------------------------------------------------


def _values(mapping: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in mapping.items())


def _minutes(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return f"{value:g} min"


def _step_lines(step: Step) -> list[str]:
    head = f"  {step.number:>2}. {step.kind.value:<8} {step.name}  (line {step.line})"
    details = []
    if step.id:
        details.append(f"id: {step.id}")
    if step.shell:
        details.append(f"shell: {step.shell}")
    if step.working_directory:
        details.append(f"working-directory: {step.working_directory}")
    if step.if_:
        details.append(f"if: {step.if_}")
    if step.continue_on_error is not False:
        details.append(f"continue-on-error: {str(step.continue_on_error).lower()}")
    if step.timeout_minutes is not None:
        details.append(f"timeout: {_minutes(step.timeout_minutes)}")
    if step.kind is StepKind.CHECKOUT and step.with_:
        details.append("with: " + _values(step.with_))
    lines = [head]
    if details:
        lines.append("             " + "; ".join(details))
    return lines


def plan_text(workflow: Workflow) -> str:
    lines = [f"workflow {workflow.name} ({workflow.file}): {len(workflow.jobs)} job(s)"]
    for job in workflow.jobs:
        lines.append("")
        lines.append(f"job {job.name}  [key {job.key}, line {job.line}]")
        lines.append(f"  runs-on: {', '.join(job.runs_on)}")
        if job.matrix:
            lines.append(f"  matrix:  {_values(job.matrix)}")
        lines.append(f"  timeout: {_minutes(job.timeout_minutes)}")
        if job.needs:
            lines.append(f"  needs:   {', '.join(job.needs)}")
        if job.if_:
            lines.append(f"  if:      {job.if_}")
        if job.shell or job.working_directory:
            lines.append(
                f"  defaults: shell={job.shell or '-'}, working-directory={job.working_directory or '-'}"
            )
        lines.append(f"  steps ({len(job.steps)}):")
        for step in job.steps:
            lines.extend(_step_lines(step))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    try:
        workflow = load_workflow(Path(args.workflow), job=args.job)
    except WorkflowError as exc:
        problems = _problems(exc, args.workflow)
        if args.json:
            print(json.dumps(errors_json(problems), indent=2))
        else:
            for p in problems:
                print(p, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(plan_json(workflow), indent=2, ensure_ascii=False))
    else:
        print(plan_text(workflow))
    return 0
