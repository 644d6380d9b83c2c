"""Run a workflow's jobs locally, each in a fresh VM (no forge, broker or database needed)."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from solstice import config as configmod
from solstice.errors import ImageError, WorkflowError
from solstice.images import Catalog, Image
from solstice.images.catalog import image_from_directory, image_from_file
from solstice.job.runner import FailedVM, run_job
from solstice.model import JobSpec, Result
from solstice.workflow import deferred, needs_context, order_jobs, should_run

from .common import (
    add_input_argument,
    builtin_example,
    checkout_origin,
    job_settings,
    local_request,
    local_workflow,
    parse_secrets,
)
from .render import JobSummary, TerminalSink, summary_table
from .size import add_size_arguments, size_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow", nargs="?", help="workflow file (default: the built-in example)")
    p.add_argument("--job", metavar="ID", help="run only this job (by its key under jobs:)")
    p.add_argument(
        "--image",
        metavar="LABEL|PATH",
        help="boot this image instead of the one runs-on names: a catalog label, a directory made by "
        "scripts/build-test-image, or a disk image file (BIOS boot)",
    )
    p.add_argument(
        "--profile", metavar="NAME", help="guest profile for --image PATH (default debian/ubuntu)"
    )
    p.add_argument("--accel", choices=("kvm", "tcg"), help="QEMU accelerator (default from [vm] accel)")
    add_size_arguments(p)
    p.add_argument(
        "--boot-timeout", type=float, metavar="SECONDS", help="give up on a guest that is not up by then"
    )
    p.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="a secret for ${{ secrets.NAME }}; with no =VALUE it is read from the environment "
        "variable NAME (which keeps it out of your shell history and the process list)",
    )
    add_input_argument(p)
    p.add_argument(
        "--keep-on-failure",
        action="store_true",
        help="keep a failed job's VM running and print how to SSH into it; Enter or Ctrl-C ends it",
    )


def _image_for(args: argparse.Namespace, catalog: Catalog, job: JobSpec) -> Image:
    if args.image:
        path = Path(args.image)
        if path.is_dir():
            return catalog.build(image_from_directory(path, args.profile or "debian"))
        if path.is_file():
            return catalog.build(image_from_file(path, args.profile or "ubuntu"))
        if catalog.canonical(args.image) is None and ("/" in args.image or "." in args.image):
            raise ImageError(f"--image {args.image}: no such file or directory, and not a catalog label")
        return catalog.get(args.image)
    return catalog.get(catalog.resolve(job.runs_on))


def _keep_guest(failed: FailedVM) -> None:
    guest, workdir = failed.guest, failed.workdir
    keyfile = workdir / "debug_ed25519"
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(guest.private_key_openssh())
    print(
        "\nThe job failed; its VM is kept for debugging. Connect with:\n"
        f"  ssh -i {keyfile} -p {guest.port} -o StrictHostKeyChecking=no "
        f"-o UserKnownHostsFile=/dev/null {guest.user}@127.0.0.1\n"
        "Press Enter (or Ctrl-C) to stop the VM and clean up.",
        flush=True,
    )
    try:
        if sys.stdin.isatty():
            sys.stdin.readline()
        else:
            threading.Event().wait()
    except KeyboardInterrupt:
        pass


def main(args: argparse.Namespace) -> int:
    cfg = configmod.load(Path(args.config) if args.config else None)
    workflow_path = Path(args.workflow) if args.workflow else builtin_example()
    # The checkout is the work tree the workflow lives in (the built-in example checks out the cwd).
    origin = checkout_origin(workflow_path, explicit=bool(args.workflow))
    catalog = Catalog.from_config(cfg)
    workflow = local_workflow(workflow_path, origin, args, catalog.labels)
    secrets = parse_secrets(args.secret)

    settings = job_settings(
        cfg,
        accel=args.accel,
        boot_timeout=args.boot_timeout,
        keep_on_failure=_keep_guest if args.keep_on_failure else None,
    )
    size = size_of(args)

    # Resolve every image first, so a bad label fails before any VM boots (a deferred job's
    # labels are known only once the jobs it needs ran).
    jobs = order_jobs(workflow.jobs)
    images = {job.name: _image_for(args, catalog, job) for job in jobs if job.key not in workflow.deferred}

    summaries: list[JobSummary] = []
    results: dict[str, list[Result]] = {}
    outputs: dict[str, dict[str, str]] = {}
    contexts = {"inputs": dict(workflow.inputs)}
    cancelled = False
    for placeholder in jobs:
        runs = [placeholder]
        if (
            placeholder.key in workflow.deferred
            and not cancelled
            and should_run(placeholder, results, outputs, contexts)
        ):
            try:
                runs = list(
                    deferred.expand(workflow, placeholder.key, needs_context(placeholder, results, outputs))
                )
                images.update((j.name, _image_for(args, catalog, j)) for j in runs)
            except (WorkflowError, ImageError) as exc:
                # As on GitHub: the job fails (its matrix or labels are wrong), the rest go on.
                summaries.append(JobSummary(placeholder.name, "-", Result.FAILURE, str(exc)))
                results.setdefault(placeholder.key, []).append(Result.FAILURE)
                continue
        for job in runs:
            image = images.get(job.name)
            summary = JobSummary(name=job.name, label=image.label if image else "-")
            summaries.append(summary)
            if cancelled or image is None or not should_run(job, results, outputs, contexts):
                summary.message = "skipped" + (" (cancelled)" if cancelled else "")
                continue
            request = local_request(
                job,
                image.label,
                origin,
                secrets=secrets,
                results=results,
                size=size,
                outputs=outputs,
                inputs=workflow.inputs,
            )
            result = run_job(request, image, settings, TerminalSink(summary))
            results.setdefault(job.key, []).append(result)
            outputs.setdefault(job.key, {}).update(summary.outputs)
            if result is Result.CANCELLED:
                cancelled = True
    summary_table(summaries)
    if cancelled:
        return 130
    # Jobs skipped by their `if:` neither pass nor fail; every job that ran must have succeeded.
    return 0 if all(s.result in (None, Result.SUCCESS) for s in summaries) else 1
