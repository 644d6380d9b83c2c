"""Pieces shared by the commands that build and run jobs: ``run`` (local mode), ``submit`` (through
the service) and ``job run`` (the job process of a service job)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from solstice.config import Config
from solstice.errors import ConfigError
from solstice.job import checkout
from solstice.job.runner import FailedVM, JobSettings
from solstice.model import JobRequest, JobSpec, Result, Size, Source
from solstice.workflow import Workflow, load_workflow, needs_context


def builtin_example() -> Path:
    ref = importlib.resources.files("solstice") / "data" / "example.yml"
    return Path(str(ref))


def parse_secrets(items: Sequence[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``--secret NAME=VALUE`` or ``--secret NAME`` (the value from the environment variable NAME)."""
    env = os.environ if environ is None else environ
    secrets: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name:
            raise ConfigError(f"--secret {item!r}: expected NAME or NAME=VALUE")
        if not sep:
            if name not in env:
                raise ConfigError(f"--secret {name}: the environment variable {name} is not set")
            value = env[name]
        secrets[name] = value
    return secrets


def parse_inputs(items: Sequence[str]) -> dict[str, str]:
    """``--input NAME=VALUE``: the ``inputs`` context of a workflow_call/workflow_dispatch workflow."""
    inputs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name or not sep:
            raise ConfigError(f"--input {item!r}: expected NAME=VALUE")
        inputs[name] = value
    return inputs


def add_input_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value for ${{ inputs.NAME }} (a workflow_call or workflow_dispatch input; "
        "the workflow's `default:` otherwise)",
    )


def local_github(origin: Origin) -> dict[str, Any]:
    """The github context of a local run, for job-level expressions (``runs-on``, matrix); the job
    process builds the same values for its steps."""
    return {
        "event_name": "push",
        "repository": origin.root.name,
        "sha": origin.commit,
        "run_id": "1",
        "run_number": "1",
        "run_attempt": "1",
    }


def local_workflow(path: Path, origin: Origin, args: argparse.Namespace, labels: Sequence[str]) -> Workflow:
    """The workflow of ``run``/``submit``: ``--job``, ``--input``, the local github context, and this
    host's labels for the messages that name them."""
    return load_workflow(
        path,
        job=args.job,
        github=local_github(origin),
        contexts={"inputs": parse_inputs(args.input)},
        labels=labels,
    )


def job_settings(
    cfg: Config,
    *,
    accel: str | None = None,
    boot_timeout: float | None = None,
    keep_on_failure: Callable[[FailedVM], None] | None = None,
) -> JobSettings:
    """The job process's settings: the configuration's ``[vm]`` with command-line overrides (the
    VM's size is the request's business: solstice.images.plan)."""
    overrides: dict[str, Any] = {}
    if accel:
        overrides["accel"] = accel
    if boot_timeout:
        overrides["boot_timeout"] = boot_timeout
    return JobSettings(
        vm=dataclasses.replace(cfg.vm, **overrides),
        runtime_dir=Path(cfg.paths.runtime_dir),
        keep_on_failure=keep_on_failure,
    )


@dataclass(frozen=True)
class Origin:
    """Where a local workflow's jobs check out from: the work tree and its HEAD commit."""

    root: Path
    commit: str


def checkout_origin(workflow_path: Path, explicit: bool) -> Origin:
    """The work tree the workflow lives in (the built-in example checks out the current directory)."""
    base = workflow_path.resolve().parent if explicit else Path.cwd()
    root = checkout.find_repo_root(base)
    return Origin(root=root, commit=checkout.head_commit(root))


def local_request(
    job: JobSpec,
    label: str,
    origin: Origin,
    *,
    secrets: Mapping[str, str],
    results: Mapping[str, Sequence[Result]],
    size: Size,
    reply_to: str = "",
    outputs: Mapping[str, Mapping[str, str]] | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> JobRequest:
    """The JobRequest of one job of a local workflow (``solstice run``, ``solstice submit``)."""
    return JobRequest(
        job_id=str(uuid.uuid4()),
        job=job,
        label=label,
        source=Source.LOCAL,
        repository=origin.root.name,
        commit=origin.commit,
        checkout_source=str(origin.root),
        secrets=dict(secrets),
        contexts={"needs": needs_context(job, results, outputs), "inputs": dict(inputs or {})},
        size=size,
        reply_to=reply_to,
    )
