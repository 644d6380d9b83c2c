"""Run a local workflow's jobs through the service: RabbitMQ, a dispatcher, a job unit per job.

``solstice submit [WORKFLOW] [--job ID] [--secret NAME[=VALUE]]... [--no-follow]``. The workflow is
translated here, as ``solstice run`` does; each job becomes a JobRequest (source ``local``, secrets
sealed with the installation's key) on its label's queue, and the job's events come back to a
queue of this command's own (``submit-<random>``, deleted at the end; RabbitMQ drops it an hour
after this command went away without deleting it). Jobs that ``need`` others are published once
those ended. The output is ``solstice run``'s; so is the exit status (0 all succeeded, 1 a job did
not, 130 cancelled). Ctrl-C cancels the submitted jobs (a second one leaves them running).

The jobs run on a dispatcher's host and check out the workflow's work tree by its path there:
submit on the host that runs the jobs, from a tree the job user can read.
"""

from __future__ import annotations

import argparse
import io
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from solstice import config as configmod
from solstice.errors import ConfigError, ImageError, WorkflowError
from solstice.model import EventKind, JobEvent, JobRequest, JobSpec, Result
from solstice.workflow import deferred, needs_context, order_jobs, should_run

from .common import (
    add_input_argument,
    builtin_example,
    checkout_origin,
    local_request,
    local_workflow,
    parse_secrets,
)
from .render import JobSummary, TerminalSink, summary_table
from .size import add_size_arguments, size_of

if TYPE_CHECKING:
    from solstice.images import Catalog
    from solstice.queue import Connection, Decision, Delivery
    from solstice.workflow import Workflow

#: Seconds without any event of a published job before saying that it waits for a dispatcher.
WAITING_NOTE_AFTER = 30.0
#: RabbitMQ deletes the reply queue this long after the last consumer left (x-expires).
QUEUE_EXPIRES = 3600.0
#: How long to wait for a dispatcher's synthetic final event after a job said "cancelled" by itself.
SUPERSEDE_WAIT = 60.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow", nargs="?", help="workflow file (default: the built-in example)")
    p.add_argument("--job", metavar="ID", help="submit only this job (by its key under jobs:)")
    p.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="a secret for ${{ secrets.NAME }} (sealed before it leaves this process); with no "
        "=VALUE it is read from the environment variable NAME",
    )
    add_input_argument(p)
    add_size_arguments(p)
    p.add_argument(
        "--no-follow",
        action="store_true",
        help="publish the jobs and exit; watch them with `solstice status` and journalctl",
    )


class PrefixWriter(io.TextIOBase):
    """Puts ``prefix`` before every line written (several jobs share one terminal)."""

    def __init__(self, out: TextIO, prefix: str) -> None:
        super().__init__()
        self.out = out
        self.prefix = prefix
        self._partial = ""

    def write(self, text: str) -> int:
        data = self._partial + text
        *lines, self._partial = data.split("\n")
        for line in lines:
            self.out.write(f"{self.prefix}{line}\n")
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return self.out.isatty()


@dataclass
class Submitted:
    spec: JobSpec
    label: str
    summary: JobSummary
    request: JobRequest | None = None
    sink: TerminalSink | None = None
    published_at: float = 0.0
    last_event: float = 0.0
    noted_waiting: bool = False
    result: Result | None = None
    verdict: bool = False  # the dispatcher's synthetic final event arrived
    skipped: bool = False
    deferred: bool = False  # a placeholder: expanded once the jobs it needs ended

    @property
    def done(self) -> bool:
        return self.skipped or self.result is not None


class CtrlC:
    """Ctrl-C while following. The first only counts: the loop reads it between two rounds of the
    broker connection, because a KeyboardInterrupt raised inside pika's frame handling or an event
    handler can leave the connection or the event sequence half-updated, and the cancellation
    would then never go out. The second raises KeyboardInterrupt, to stop waiting at once."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: Any = None

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    from solstice.images import Catalog
    from solstice.queue import ACK, Connection, Consumer, EventSequencer, Names, Publisher, is_synthetic
    from solstice.secrets import key_path, load_key, seal

    cfg = configmod.load(Path(args.config) if args.config else None)
    workflow_path = Path(args.workflow) if args.workflow else builtin_example()
    origin = checkout_origin(workflow_path, explicit=bool(args.workflow))
    catalog = Catalog.from_config(cfg)
    workflow = local_workflow(workflow_path, origin, args, catalog.labels)
    secrets = parse_secrets(args.secret)
    # Unset unless given: the dispatcher's host plans the rest (solstice.images.plan).
    size = size_of(args)
    specs = order_jobs(workflow.jobs)
    if args.no_follow and any(s.needs for s in specs):
        raise ConfigError(
            "--no-follow cannot wait for `needs:`: follow the jobs, or submit them one by one with --job"
        )
    jobs: list[Submitted] = []
    for spec in specs:
        if spec.key in workflow.deferred:  # its labels are known once the jobs it needs ended
            jobs.append(Submitted(spec, "-", JobSummary(name=spec.name, label="-"), deferred=True))
            continue
        label = catalog.resolve(spec.runs_on)  # a bad label fails before anything is published
        jobs.append(Submitted(spec, label, JobSummary(name=spec.name, label=label)))
    key = load_key(key_path(cfg.secrets.key_file)) if secrets else None
    address = "" if args.no_follow else f"submit-{uuid.uuid4().hex[:12]}"
    prefix = len(jobs) > 1
    by_id: dict[str, Submitted] = {}
    results: dict[str, list[Result]] = {}
    outputs: dict[str, dict[str, str]] = {}
    contexts = {"inputs": dict(workflow.inputs)}
    sequencer = EventSequencer()
    out = sys.stdout

    def on_events(delivery: Delivery[tuple[JobEvent, ...]]) -> Decision:
        for event in delivery.message:
            job = by_id.get(event.job_id)
            if job is None:
                continue
            check = sequencer.observe(event)
            if not check.deliver:
                continue
            if check.gap:
                print(f"(events {check.missing.start}-{check.missing.stop - 1} of {job.spec.name} missing)")
            job.last_event = time.monotonic()
            assert job.sink is not None
            job.sink.emit(event)
            if event.kind is EventKind.JOB_FINISHED and event.result is not None:
                job.verdict = job.verdict or is_synthetic(event)
                outputs.setdefault(job.spec.key, {}).update(event.outputs)
                if job.result is None:
                    results.setdefault(job.spec.key, []).append(event.result)
                else:  # the dispatcher's synthetic final event supersedes the job's own
                    runs = results.setdefault(job.spec.key, [])
                    runs[runs.index(job.result)] = event.result
                job.result = event.result
        return ACK

    conn = Connection(cfg.broker, name=f"solstice submit {address or '(no follow)'}")
    consumer = Consumer(conn)
    publisher = Publisher(conn)
    cancelled = False

    def cancel_all() -> None:
        print("\nsolstice: cancelling the submitted jobs (Ctrl-C again to stop waiting)", file=sys.stderr)
        for job in jobs:
            if job.request is not None and not job.done:
                publisher.publish_cancel(job.request.job_id, "cancelled by solstice submit (Ctrl-C)")

    ctrl_c = CtrlC()
    try:
        if address:
            consumer.consume_event_batches(address, on_events, prefetch=50, expires=QUEUE_EXPIRES)
            conn.connect()
            consumer.process_events(0)  # declares our events queue before any job can publish to it
        ctrl_c.install()
        while not all(j.done for j in jobs):
            try:
                if ctrl_c.count and not cancelled:
                    cancelled = True
                    cancel_all()
                for job in jobs:
                    if job.done or job.request is not None:
                        continue
                    if cancelled:
                        job.skipped, job.summary.message = True, "skipped (cancelled)"
                        continue
                    if not all(j.done for j in jobs if j.spec.key in job.spec.needs):
                        continue
                    if not should_run(job.spec, results, outputs, contexts):
                        job.skipped, job.summary.message = True, "skipped"
                        continue
                    if job.deferred:
                        expanded = _expand(workflow, job, catalog, results, outputs)
                        jobs[jobs.index(job) : jobs.index(job) + 1] = expanded
                        break  # the list changed: go round again
                    request = local_request(
                        job.spec,
                        job.label,
                        origin,
                        secrets=secrets,
                        results=results,
                        size=size,
                        reply_to=address,
                        outputs=outputs,
                        inputs=workflow.inputs,
                    )
                    if key is not None:
                        request = seal(request, key)
                    job.request = request
                    by_id[request.job_id] = job
                    writer = cast(TextIO, PrefixWriter(out, f"[{job.spec.name}] ")) if prefix else out
                    job.sink = TerminalSink(job.summary, writer)
                    publisher.publish_job(request)
                    job.published_at = job.last_event = time.monotonic()
                    print(f"submitted {job.spec.name}: job {request.job_id} ({job.label})", flush=True)
                    if not address:
                        job.skipped = True  # not followed
                if not address:
                    break
                consumer.process_events(0.2)
                now = time.monotonic()
                for job in jobs:
                    if job.request and not job.done and not job.noted_waiting and job.summary.started == 0:
                        if now - job.last_event > WAITING_NOTE_AFTER:
                            job.noted_waiting = True
                            print(
                                f"{job.spec.name}: still waiting for a dispatcher with label {job.label!r} "
                                f"(solstice status {job.request.job_id})",
                                flush=True,
                            )
            except KeyboardInterrupt:  # the second Ctrl-C
                if not cancelled:
                    cancelled = True
                    cancel_all()
                print(
                    "\nsolstice: not waiting any more; the jobs end on their own "
                    "(solstice status shows them)",
                    file=sys.stderr,
                )
                return 130
        unexplained = [j for j in jobs if j.result is Result.CANCELLED and not j.verdict]
        if address and not cancelled and unexplained:
            # Cancelled without our asking: its unit was stopped by systemd or an operator. The
            # dispatcher's verdict (a synthetic final event, error with the reason) follows once it
            # has seen the unit end; wait for it (a busy or restarting dispatcher takes a while).
            names = ", ".join(j.spec.name for j in unexplained)
            print(f"{names}: stopped from outside; waiting for the dispatcher's verdict", flush=True)
            deadline = time.monotonic() + SUPERSEDE_WAIT
            while (
                time.monotonic() < deadline and not all(j.verdict for j in unexplained) and not ctrl_c.count
            ):
                consumer.process_events(0.2)
        if not address:
            print(
                "follow them with: solstice status <uuid>; "
                "journalctl -u solstice-job@<uuid> (on the job's host)"
            )
            return 0
    finally:
        ctrl_c.restore()
        if address:
            _delete_queue(conn, Names(cfg.broker).events_queue(address))
        consumer.close()
        publisher.close()
        conn.close()
    summary_table([j.summary for j in jobs])
    if cancelled or any(j.result is Result.CANCELLED for j in jobs):
        return 130
    return 0 if all(j.result in (None, Result.SUCCESS) for j in jobs) else 1


def _expand(
    workflow: Workflow,
    job: Submitted,
    catalog: Catalog,
    results: dict[str, list[Result]],
    outputs: dict[str, dict[str, str]],
) -> list[Submitted]:
    """A deferred job's runs, now that the jobs it needs ended; a matrix or label that is wrong
    fails the job (as on GitHub) and the workflow goes on."""
    try:
        specs = deferred.expand(workflow, job.spec.key, needs_context(job.spec, results, outputs))
        return [
            Submitted(s, label, JobSummary(s.name, label))
            for s in specs
            for label in [catalog.resolve(s.runs_on)]
        ]
    except (WorkflowError, ImageError) as exc:
        print(f"{job.spec.name}: {exc}", flush=True)
        job.deferred, job.result = False, Result.FAILURE
        job.summary.result, job.summary.message = Result.FAILURE, str(exc)
        results.setdefault(job.spec.key, []).append(Result.FAILURE)
        return [job]


def _delete_queue(conn: Connection, queue: str) -> None:
    """Our events queue is of no use to anyone once we stop following."""
    try:
        channel, _ = conn.channel(time.monotonic() + 5)
        channel.queue_delete(queue=queue)
        channel.close()
    except Exception:  # best effort: x-expires removes it later
        pass
