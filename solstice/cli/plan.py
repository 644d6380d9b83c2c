"""Show the jobs and steps a workflow translates to, without running anything.

``solstice plan WORKFLOW [--job ID] [--image LABEL] [--input NAME=VALUE]... [--json]``. The JSON
document is described in docs/plan-json.md; its schema name changes whenever a field changes
meaning or goes away. Each job's ``runs-on`` is checked against this host's image catalog, as
``solstice run`` does; a job whose matrix or labels come from ``needs`` is shown as expanded at run
time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from solstice import config as configmod
from solstice.errors import ImageError, WorkflowError
from solstice.images import Catalog
from solstice.model.core import JobSpec, Step, StepKind
from solstice.workflow import Problem, Workflow, WorkflowProblems

from .common import add_input_argument, checkout_origin, local_workflow

SCHEMA = "solstice.plan.v1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", metavar="WORKFLOW", help="workflow file (.github/workflows/*.yml)")
    parser.add_argument("--job", metavar="ID", help="only this job (its key under `jobs:`)")
    parser.add_argument(
        "--image",
        metavar="LABEL",
        help="plan every job on this catalog label instead of the one runs-on names (as `solstice run`)",
    )
    add_input_argument(parser)
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


def job_json(job: JobSpec, deferred: str | None = None, image: str | None = None) -> dict[str, Any]:
    return {
        "key": job.key,
        "name": job.name,
        "line": job.line,
        "runs_on": list(job.runs_on),
        "image": image,
        "deferred": deferred,
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


def plan_json(workflow: Workflow, images: Mapping[str, str] | None = None) -> dict[str, Any]:
    images = images or {}
    return {
        "schema": SCHEMA,
        "file": workflow.file,
        "workflow": workflow.name,
        "jobs": [job_json(j, workflow.deferred.get(j.key), images.get(j.name)) for j in workflow.jobs],
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


def plan_text(workflow: Workflow, images: Mapping[str, str] | None = None) -> str:
    images = images or {}
    lines = [f"workflow {workflow.name} ({workflow.file}): {len(workflow.jobs)} job(s)"]
    for job in workflow.jobs:
        lines.append("")
        lines.append(f"job {job.name}  [key {job.key}, line {job.line}]")
        image = images.get(job.name)
        later = workflow.deferred.get(job.key, "")
        shown = f"  (image {image})" if image and tuple(job.runs_on) != (image,) else ""
        if later.startswith("runs-on"):
            shown = f"  ({later})"
        lines.append(f"  runs-on: {', '.join(job.runs_on)}{shown}")
        if later.startswith("matrix"):
            lines.append(f"  matrix:  {later}")
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


def image_problems(
    workflow: Workflow, catalog: Catalog, image: str | None
) -> tuple[dict[str, str], list[Problem]]:
    """Each job's image label (by job name) and a Problem per job whose labels this host cannot run,
    as `solstice run` would refuse them; deferred jobs' labels are known only at run time."""
    images: dict[str, str] = {}
    problems: list[Problem] = []
    if image is not None and catalog.canonical(image) is None:
        known = ", ".join(catalog.labels)
        return images, [Problem(workflow.file, 0, f"--image {image}: no such label; this host has: {known}")]
    for job in workflow.jobs:
        if job.key in workflow.deferred:
            continue
        try:
            chosen = catalog.canonical(image) if image is not None else None
            images[job.name] = chosen or catalog.resolve(job.runs_on)
        except ImageError as exc:
            hint = f" ({exc.hint})" if exc.hint else ""
            problems.append(Problem(workflow.file, job.line, f"job `{job.key}`: {exc}{hint}"))
    unique = {(p.line, p.message): p for p in problems}  # matrix combinations share a line
    return images, list(unique.values())


def main(args: argparse.Namespace) -> int:
    try:
        cfg = configmod.load(Path(args.config) if args.config else None)
        catalog = Catalog.from_config(cfg)
        # The github context of `solstice run`, so that runs-on and matrices plan as they run.
        path = Path(args.workflow)
        workflow = local_workflow(path, checkout_origin(path, explicit=True), args, catalog.labels)
        images, problems = image_problems(workflow, catalog, args.image)
        if problems:
            raise WorkflowProblems(problems)
    except WorkflowError as exc:
        problems = _problems(exc, args.workflow)
        if args.json:
            print(json.dumps(errors_json(problems), indent=2))
        else:
            for p in problems:
                print(p, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(plan_json(workflow, images), indent=2, ensure_ascii=False))
    else:
        print(plan_text(workflow, images))
    return 0
