"""An acquired GitHub job message (protocol §6.2) -> a sealed ``JobRequest``, or why it cannot run.

The server has already expanded the matrix and evaluated what it could; what it left to the runner
arrives as ``Expression`` tokens (§8.4), which become ``${{ }}`` text again so that the job process
evaluates them at run time, like any workflow value:

* ``script`` steps: inputs ``script``/``shell``/``workingDirectory``, ``environment``, ``condition``
  (a plain expression, §8.4), ``continueOnError``, ``timeoutInMinutes``, ``displayNameToken``;
* ``actions/checkout`` (a ``repository`` reference): a Solstice checkout step with its inputs; the
  host fetches the job's commit with the job's token (``system.github.token``, sealed);
* any other action: ``Refused`` before any VM boots, the reason shown in GitHub's UI;
* ``environmentVariables`` (workflow, then job ``env:``) and ``defaults`` -> the job's env/defaults;
* ``contextData`` github/vars/needs/inputs/matrix -> contexts, secret variables -> sealed secrets.

The steps, env, defaults and outputs are written back as a one-job workflow document and built by
``solstice.workflow.parse_workflow`` (with the server's matrix combination), so a GitHub job gets the
same checks and the same ``JobSpec`` as a workflow file; its problems refuse the job.

The message does not say which ``runs-on`` label matched (the broker matched it), so the job goes to
the queue of the runner's one image label (registration allows exactly one).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from solstice.model import JobRequest, Source
from solstice.model.masking import mask_values
from solstice.secrets import seal
from solstice.workflow import WorkflowProblems, parse_workflow

from . import messages as m
from .templates import Directive, Expression

#: The sealed secret the host's checkout authenticates with: the job's GITHUB_TOKEN.
CHECKOUT_TOKEN_SECRET = "GITHUB_TOKEN"
#: The job's own token variable (§6.2, §13.12): not in the secrets context, but GITHUB_TOKEN.
TOKEN_VARIABLE = "system.github.token"
#: uuid5 namespace of the Solstice job id: stable for one GitHub job across runner restarts.
JOB_NAMESPACE = uuid.UUID("2a7d6c1e-93b4-4f0e-b1d8-5c0f3e9a7b21")
CHECKOUT_ACTIONS = ("actions/checkout",)


@dataclass(frozen=True)
class StepInfo:
    """What the reporter needs of each step: its record id and display name."""

    external_id: str
    name: str


@dataclass(frozen=True)
class Refused:
    reason: str
    details: tuple[str, ...] = ()
    steps: tuple[StepInfo, ...] = ()


@dataclass(frozen=True)
class Translated:
    request: JobRequest  # sealed
    steps: tuple[StepInfo, ...]
    mask: tuple[str, ...]


def job_uuid(github_url: str, job_id: str) -> str:
    return str(uuid.uuid5(JOB_NAMESPACE, f"{github_url.rstrip('/')}#job={job_id}"))


class _Unsupported(Exception):
    pass


def as_text(value: Any, where: str) -> str:
    """A decoded token as workflow text: an Expression becomes ``${{ expr }}`` again."""
    if isinstance(value, Expression):
        return "${{ " + value.expr + " }}"
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise _Unsupported(f"{where}: expected a single value, got {type(value).__name__}")


def _text_map(value: Mapping[Any, Any], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(k, Directive | Expression):
            raise _Unsupported(f"{where}: computed keys (${{{{ insert }}}}) are not supported")
        out[str(k)] = as_text(v, f"{where}.{k}")
    return out


def _flag(value: Any, where: str) -> bool | str:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    text = as_text(value, where)
    return text if text.startswith("${{") else text.strip().lower() == "true"


def _minutes(value: Any, where: str) -> float | str | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return as_text(value, where)


def _name(step: m.JobStep, number: int) -> str:
    shown = step.display_name
    if isinstance(shown, Expression):
        return "${{ " + shown.expr + " }}"
    if shown:
        return str(shown)
    script = step.inputs.get("script")
    if isinstance(script, str) and script.strip():
        return "Run " + script.strip().splitlines()[0]
    return step.reference.name or f"step {number}"


def _step(step: m.JobStep, number: int) -> dict[str, Any]:
    """One step as workflow YAML (a mapping), for solstice.workflow to check and build."""
    where = f"step {number}"
    out: dict[str, Any] = {"name": _name(step, number)}
    if step.context_name:
        out["id"] = step.context_name  # the server's generated ids (__run, __run_2) are valid ids
    if step.condition.strip() != "success()":
        out["if"] = step.condition
    if step.environment:
        out["env"] = _text_map(step.environment, f"{where}.env")
    if step.continue_on_error not in (None, False):
        out["continue-on-error"] = _flag(step.continue_on_error, f"{where}.continue-on-error")
    minutes = _minutes(step.timeout_in_minutes, f"{where}.timeout-minutes")
    if minutes is not None:
        out["timeout-minutes"] = minutes
    if step.is_script:
        inputs = step.inputs
        out["run"] = as_text(inputs.get("script"), f"{where}.run")
        for key, yaml_key in (("shell", "shell"), ("workingDirectory", "working-directory")):
            value = as_text(inputs.get(key), f"{where}.{yaml_key}")
            if value:
                out[yaml_key] = value
        return out
    ref = step.reference
    if ref.type.lower() == "repository" and ref.name.lower() in CHECKOUT_ACTIONS and not ref.path:
        out["uses"] = f"{ref.name}@{ref.ref or 'v4'}"
        if step.inputs:
            out["with"] = _text_map(step.inputs, f"{where}.with")
        return out
    action = f"{ref.name}{'/' + ref.path if ref.path else ''}@{ref.ref}" if ref.name else ref.type
    raise _Unsupported(
        f"{where} ({_name(step, number)}): uses: {action} is not supported; Solstice runs `run:` "
        "steps and actions/checkout only"
    )


def workflow_text(job: m.AgentJobRequestMessage, key: str, name: str, label: str) -> str:
    """The job as a one-job workflow (JSON, which is YAML) for ``solstice.workflow.parse_workflow``:
    the same checks and JobSpec as a workflow file gets. Raises _Unsupported."""
    env: dict[str, str] = {}
    for layer in job.environment_variables:  # workflow env, then the job's (§6.2)
        env.update(_text_map(layer, "env"))
    run_defaults: dict[str, str] = {}
    for d in job.defaults:  # workflow defaults, then the job's
        run = d.get("run")
        if isinstance(run, Mapping):
            run_defaults.update(_text_map(run, "defaults.run"))
    node: dict[str, Any] = {"name": name, "runs-on": label}
    if env:
        node["env"] = env
    if run_defaults:
        node["defaults"] = {"run": run_defaults}
    if job.job_outputs:
        node["outputs"] = _text_map(job.job_outputs, "outputs")
    node["steps"] = [_step(s, i) for i, s in enumerate(job.steps, 1)]
    return json.dumps({"on": "push", "jobs": {key: node}}, indent=1)


def translate(
    job: m.AgentJobRequestMessage,
    *,
    github_url: str,
    label: str,
    secrets_key: bytes,
    reply_to: str,
) -> Translated | Refused:
    steps_info = tuple(StepInfo(s.id, _name(s, i)) for i, s in enumerate(job.steps, 1))
    ctx = job.context_data
    github = dict(ctx.get("github") or {})
    matrix = ctx.get("matrix") or {}
    contexts: dict[str, Any] = {
        "github": github,
        "vars": dict(ctx.get("vars") or {}),
        "needs": dict(ctx.get("needs") or {}),
        "inputs": dict(ctx.get("inputs") or {}),
    }
    if isinstance(ctx.get("strategy"), dict):
        contexts["strategy"] = dict(ctx["strategy"])
    secrets = dict(job.secrets_context)
    token = next((v.value for k, v in job.variables.items() if k.lower() == TOKEN_VARIABLE), "")
    if token:
        secrets.setdefault(CHECKOUT_TOKEN_SECRET, token)
    repository = str(github.get("repository") or "")
    server = str(github.get("server_url") or "").rstrip("/")
    key = str(github.get("job") or job.job_name)
    name = job.job_display_name or key
    file = job.file_table[0] if job.file_table else ".github/workflows/workflow.yml"
    combo = dict(matrix) if isinstance(matrix, dict) else {}
    try:
        wf = parse_workflow(workflow_text(job, key, name, label), file, job=key, github=github, matrix=combo)
    except _Unsupported as exc:
        return Refused(str(exc), ("Nothing ran; no machine was started for this job.",), steps_info)
    except WorkflowProblems as exc:
        problems = [p.message for p in exc.entries]
        more = f" (and {len(problems) - 1} more below)" if len(problems) > 1 else ""
        return Refused(problems[0] + more, tuple(problems[1:]), steps_info)
    built = wf.jobs[0]
    # lines of the generated document mean nothing to the user: no line, as for a server's job
    steps = tuple(dataclasses.replace(st, line=0) for st in built.steps)
    spec = dataclasses.replace(built, steps=steps, line=0, workflow_name=str(github.get("workflow") or ""))
    request = JobRequest(
        job_id=job_uuid(github_url, job.job_id),
        job=spec,
        label=label,
        source=Source.GITHUB,
        source_ids={
            "github_url": github_url,
            "plan_id": job.plan.plan_id,
            "job_id": job.job_id,
            "run_id": str(github.get("run_id", "")),
            "run_number": str(github.get("run_number", "")),
            "checkout_token_secret": CHECKOUT_TOKEN_SECRET if token else "",
        },
        repository=repository,
        commit=str(github.get("sha") or ""),
        ref=str(github.get("ref") or ""),
        checkout_source=f"{server}/{repository}.git" if server and repository else "",
        secrets=secrets,
        contexts=contexts,
        reply_to=reply_to,
    )
    mask = tuple(mask_values([*secrets.values(), *job.secret_values]))
    return Translated(seal(request, secrets_key), steps_info, mask)
