"""A fetched ``Task`` -> a ``JobRequest`` for the queue, or ``Rejected`` with the reason.

What a task carries (forgejo-runner-protocol.md §3.4) and where it goes:

* ``workflow_payload``: a workflow with exactly one job, matrix already expanded by the server
  (``strategy.matrix`` holds one value per key) -> ``solstice.workflow.parse_workflow`` with that
  combination as ``matrix=`` (so the server's job name is kept and ``needs`` may name other jobs);
* ``context``: the github context -> ``contexts["github"]``, **without** its tokens (``token`` and
  the runtime/OIDC tokens), which travel sealed with the secrets instead;
* ``secrets`` (with the automatic GITHUB_TOKEN/GITEA_TOKEN/FORGEJO_TOKEN) -> sealed with the
  installation's key (``solstice.secrets.seal``); GITHUB_TOKEN and GITEA_TOKEN are the task token
  even on a server that sends none (checkout needs the first; docs/forgejo.md promises both);
* ``vars``, ``needs`` (result as ``success``/``failure``/...) and the event's ``inputs`` -> contexts;
* checkout: ``checkout_source`` = the repository's clone URL (no credentials in it: it may be
  logged), ``commit``/``ref`` from the context; the host authenticates with the sealed secret
  named by ``CHECKOUT_TOKEN_SECRET``.

A task that cannot run (bad YAML, an unsupported ``uses:``, several jobs, a ``runs-on`` that names
none or several of the runner's labels) is ``Rejected``: the runner reports it as a failed task
with ``lines`` in its log.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from solstice.errors import ExpressionError, SolsticeError, WorkflowError
from solstice.model import JobRequest, Source
from solstice.model.masking import mask_values
from solstice.secrets import seal
from solstice.workflow import job_if, parse_workflow, plain
from solstice.workflow.loader import LoadError
from solstice.workflow.loader import load as load_yaml

from . import messages as m

#: The sealed secret that authenticates the host's fetch of the repository (the task token).
CHECKOUT_TOKEN_SECRET = "GITHUB_TOKEN"
#: Secrets that hold the task token on Gitea and Forgejo (FORGEJO_TOKEN only where Forgejo sends it).
AUTOMATIC_TOKEN_SECRETS = (CHECKOUT_TOKEN_SECRET, "GITEA_TOKEN")
#: Context keys that are credentials: moved out of the plain github context (§3.4).
TOKEN_KEYS = (
    "token",
    "gitea_runtime_token",
    "forgejo_runtime_token",
    "forgejo_actions_id_token_request_token",
)
#: Namespace of the job uuids: uuid5(NAMESPACE, "<server url>#task=<id>"), stable across restarts.
JOB_NAMESPACE = uuid.UUID("6f1c1c52-2a47-4b8e-9f3e-0b6c1f0e4a11")

ResolveLabel = Callable[[Sequence[str]], str]


@dataclass(frozen=True)
class Rejected:
    """The task cannot run here; ``lines`` explain why, one log row each."""

    task_id: int
    reason: str
    lines: tuple[str, ...] = ()
    #: Steps of the payload job when they could be counted (their StepStates end as cancelled).
    step_count: int = 0

    def log_lines(self) -> list[str]:
        return [f"Solstice cannot run this job: {self.reason}", *self.lines]


@dataclass(frozen=True)
class Skipped:
    """The job's ``if:`` is false: the task ends as skipped without a VM (act does the same)."""

    task_id: int
    reason: str
    step_count: int = 0


@dataclass(frozen=True)
class Translated:
    request: JobRequest
    #: Step count of the payload job: the StepState ids the server expects are 0..n-1 (§3.4).
    step_count: int
    #: Values to mask in every row sent to the forge (tokens, secrets).
    mask: tuple[str, ...] = field(default=())


def job_uuid(server_url: str, task_id: int) -> str:
    return str(uuid.uuid5(JOB_NAMESPACE, f"{server_url.rstrip('/')}#task={task_id}"))


def context_value(context: Mapping[str, Any], name: str) -> Any:
    """``forgejo_<name>``, else ``gitea_<name>`` (FR client/backward.go, §3.4)."""
    value = context.get(f"forgejo_{name}")
    return value if value not in (None, "") else context.get(f"gitea_{name}")


def _single_job(text: str) -> tuple[str | None, dict[str, Any], int]:
    """The payload's job key, its matrix combination and its step count; (None, {}, 0) if that is
    not clear, in which case parse_workflow explains the problem."""
    try:
        doc = load_yaml(text)
    except LoadError:
        return None, {}, 0
    jobs = doc.get("jobs") if isinstance(doc, dict) else None
    if not isinstance(jobs, dict) or len(jobs) != 1:
        return None, {}, 0
    key, node = next(iter(jobs.items()))
    steps = node.get("steps") if isinstance(node, dict) else None
    count = len(steps) if isinstance(steps, list) else 0
    combo: dict[str, Any] = {}
    strategy = node.get("strategy") if isinstance(node, dict) else None
    matrix = strategy.get("matrix") if isinstance(strategy, dict) else None
    if isinstance(matrix, dict):
        for k, v in matrix.items():
            # the server writes each key as a one-element list (jobparser, §3.4)
            combo[str(k)] = v[0] if isinstance(v, list) and len(v) == 1 else v
    return str(key), combo, count


def translate(
    task: m.Task,
    *,
    server_url: str,
    secrets_key: bytes,
    resolve_label: ResolveLabel,
    reply_to: str = "",
) -> Translated | Rejected | Skipped:
    """The JobRequest for ``task`` (secrets sealed with ``secrets_key``), or why it cannot run.

    ``resolve_label`` maps a job's ``runs-on`` to the label whose queue the job goes to, raising a
    SolsticeError when there is no such label (``solstice.model.labels.route`` with the runner's
    labels).
    """
    context = plain(dict(task.context))
    try:
        text = task.workflow_payload.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected(task.id, "the workflow payload is not UTF-8 text")
    if not text.strip():
        return Rejected(task.id, "the task has no workflow payload")
    key, combo, count = _single_job(text)
    workflow_file = str(context.get("workflow") or "workflow.yml")
    github = {k: v for k, v in context.items() if k not in TOKEN_KEYS}
    needs = {
        name: {
            "outputs": dict(need.outputs),
            "result": need.result.name.removeprefix("RESULT_").lower()
            if need.result != m.Result.RESULT_UNSPECIFIED
            else "",
        }
        for name, need in task.needs.items()
    }
    event = context.get("event")
    inputs = event.get("inputs") if isinstance(event, dict) else None
    contexts: dict[str, Any] = {"github": github, "vars": dict(task.vars), "needs": needs}
    if isinstance(inputs, dict):
        contexts["inputs"] = inputs
    try:
        # runs-on may read needs, vars and inputs (GitHub's contexts there): it routes the job.
        wf = parse_workflow(text, workflow_file, job=key, github=github, matrix=combo, contexts=contexts)
    except WorkflowError as exc:
        return Rejected(task.id, "the workflow cannot run in Solstice", tuple(exc.problems), count)
    if len(wf.jobs) != 1:
        names = ", ".join(j.key for j in wf.jobs)
        return Rejected(task.id, f"the payload must hold exactly one job (multiple jobs found: {names})")
    job = wf.jobs[0]
    try:
        label = resolve_label(job.runs_on)
    except SolsticeError as exc:
        return Rejected(task.id, str(exc), (f"hint: {exc.hint}",) if exc.hint else (), count)

    token = str(context.get("token") or "")
    secrets = dict(task.secrets)
    if token:
        # the automatic token secrets (§3.4), also when the server sends none of them
        for name in AUTOMATIC_TOKEN_SECRETS:
            secrets.setdefault(name, token)
    runtime = context_value(context, "runtime_token") or token
    if runtime:
        secrets.setdefault("ACTIONS_RUNTIME_TOKEN", str(runtime))
    repository = str(context.get("repository") or "")
    server = str(context.get("server_url") or server_url).rstrip("/")
    clone_url = str(context.get("repositoryUrl") or "") or (
        f"{server}/{repository}.git" if repository else ""
    )
    # The job's `if:` is the runner's to evaluate (the server only holds back jobs whose needs
    # failed, unless their `if:` mentions always() or failure()).
    try:
        run_it = job_if(job, needs, contexts)
    except ExpressionError as exc:
        return Rejected(task.id, f"the job's if: cannot be evaluated: {exc}", (f"if: {job.if_}",), count)
    if not run_it:
        return Skipped(
            task.id, f"the job's condition is false: if: {job.if_ or 'success()'}", len(job.steps)
        )
    source_ids = {
        "server_url": server_url.rstrip("/"),
        "task_id": str(task.id),
        "run_id": str(context.get("run_id", "")),
        "run_number": str(context.get("run_number", "")),
        "job": str(context.get("job", "")),
        "checkout_token_secret": CHECKOUT_TOKEN_SECRET if token else "",
    }
    request = JobRequest(
        job_id=job_uuid(server_url, task.id),
        job=job,
        label=label,
        source=Source.FORGEJO,
        source_ids=source_ids,
        repository=repository,
        commit=str(context.get("sha") or ""),
        ref=str(context.get("ref") or ""),
        checkout_source=clone_url,
        secrets=secrets,
        contexts=contexts,
        reply_to=reply_to,
    )
    mask = tuple(mask_values(secrets.values()))
    steps = len(job.steps)
    return Translated(request=seal(request, secrets_key), step_count=steps, mask=mask)
