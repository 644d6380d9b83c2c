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

The message does not say which ``runs-on`` label matched (the broker matched it), so the job goes to
the queue of the runner's one image label (registration allows exactly one).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from solstice.model import JobRequest, JobSpec, Source, Step, StepKind
from solstice.model.masking import mask_values
from solstice.secrets import seal
from solstice.workflow import check_shell, matrix_suffix

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


def _step(step: m.JobStep, number: int) -> Step:
    where = f"step {number}"
    common: dict[str, Any] = {
        "number": number,
        "name": _name(step, number),
        "id": step.context_name or None,
        "env": _text_map(step.environment, f"{where}.env"),
        "if_": step.condition,
        "continue_on_error": _flag(step.continue_on_error, f"{where}.continue-on-error"),
        "timeout_minutes": _minutes(step.timeout_in_minutes, f"{where}.timeout-minutes"),
    }
    if step.is_script:
        inputs = step.inputs
        shell = as_text(inputs.get("shell"), f"{where}.shell") or None
        problem = check_shell(shell) if shell else None
        if problem:
            raise _Unsupported(f"{where}: {problem}")
        wd = as_text(inputs.get("workingDirectory"), f"{where}.working-directory") or None
        return Step(
            kind=StepKind.RUN,
            run=as_text(inputs.get("script"), f"{where}.run"),
            shell=shell,
            working_directory=wd,
            **common,
        )
    ref = step.reference
    if ref.type.lower() == "repository" and ref.name.lower() in CHECKOUT_ACTIONS and not ref.path:
        return Step(kind=StepKind.CHECKOUT, with_=_text_map(step.inputs, f"{where}.with"), **common)
    action = f"{ref.name}{'/' + ref.path if ref.path else ''}@{ref.ref}" if ref.name else ref.type
    raise _Unsupported(
        f"{where} ({_name(step, number)}): uses: {action} is not supported; Solstice runs `run:` "
        "steps and actions/checkout only"
    )


def translate(
    job: m.AgentJobRequestMessage,
    *,
    github_url: str,
    label: str,
    secrets_key: bytes,
    reply_to: str,
) -> Translated | Refused:
    steps_info = tuple(StepInfo(s.id, _name(s, i)) for i, s in enumerate(job.steps, 1))
    defaults: dict[str, Any] = {}
    for d in job.defaults:  # workflow defaults, then the job's (§6.2)
        run = d.get("run")
        if isinstance(run, Mapping):
            defaults.update(run)
    try:
        run_shell = as_text(defaults.get("shell"), "defaults.run.shell") or None
        if run_shell and check_shell(run_shell):
            raise _Unsupported(f"defaults.run.shell: {check_shell(run_shell)}")
        steps = tuple(_step(s, i) for i, s in enumerate(job.steps, 1))
        env: dict[str, str] = {}
        for layer in job.environment_variables:
            env.update(_text_map(layer, "env"))
        outputs = _text_map(job.job_outputs, "outputs")
        working_directory = as_text(defaults.get("working-directory"), "defaults.run.working-directory")
    except _Unsupported as exc:
        return Refused(str(exc), ("Nothing ran; no machine was started for this job.",), steps_info)

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
    name = job.job_display_name or str(github.get("job") or job.job_name)
    spec = JobSpec(
        key=str(github.get("job") or job.job_name),
        name=name if not matrix or "(" in name else name + matrix_suffix(matrix),
        runs_on=(label,),
        steps=steps,
        env=env,
        shell=run_shell,
        working_directory=working_directory or None,
        matrix=dict(matrix) if isinstance(matrix, dict) else {},
        outputs=outputs,
        workflow_name=str(github.get("workflow") or ""),
        workflow_file=job.file_table[0] if job.file_table else "",
    )
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
