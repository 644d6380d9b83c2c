"""One GitHub job's reporting state: JobEvents in, what the results and run services need out.

No I/O here (backend.py sends). The step list GitHub shows is::

    1        "Set up job"     synthetic (§7.1: fresh ids): the job's lines before its first step
    2..n+1   the job's steps  external_id = the message's steps[].id
    n+2      "Complete job"   synthetic: the job's lines after its steps, and the final line

A job-level line (``step`` None) goes to the running step, else to "Set up job" before any step
started, else to "Complete job". Every line also goes to the job log. Lines are masked and
formatted (``<.NET 'O' UTC timestamp> <text>``, §7.1) when fed.

Memory is bounded: each log is spooled to a file under the state directory (spool.py), at most
``MAX_STEP_BYTES`` a step and ``MAX_JOB_BYTES`` the job log; past that the lines are counted, not
kept, and a truncation note says how many. A step's file goes once its log is uploaded (when the
step finishes, §7.1), the rest once the job is completed.

Restart safety: ``checkpoint()`` holds everything (the core writes it before acknowledging the
events it covers); events already fed (by seq) are ignored. A log is uploaded whole to its signed
URL, so uploading it again after a restart replaces it: no line is duplicated or lost. The spool
files are cut back to the sizes in the checkpoint on restore.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from solstice.model import EventKind, JobEvent, Outcome, Result
from solstice.model.masking import mask_text, mask_values

from . import messages as m
from .spool import Spool

SYNTHETIC_SEQ = 2**31 - 1  # solstice.queue.SYNTHETIC_SEQ: the dispatcher's or finish_here's
MAX_STEP_BYTES = 16 * 1024 * 1024
MAX_JOB_BYTES = 32 * 1024 * 1024
MAX_LINE = 16 * 1024  # characters kept of one line

_CONCLUSION = {
    Outcome.SUCCESS: (m.StepConclusion.SUCCESS, m.TaskResult.SUCCEEDED),
    Outcome.FAILURE: (m.StepConclusion.FAILURE, m.TaskResult.FAILED),
    Outcome.CANCELLED: (m.StepConclusion.CANCELLED, m.TaskResult.CANCELED),
    Outcome.SKIPPED: (m.StepConclusion.SKIPPED, m.TaskResult.SKIPPED),
}
_JOB_CONCLUSION = {
    Result.SUCCESS: m.TaskResult.SUCCEEDED,
    Result.FAILURE: m.TaskResult.FAILED,
    Result.CANCELLED: m.TaskResult.CANCELED,
    Result.ERROR: m.TaskResult.FAILED,  # with the infrastructure category and annotation
}
_CLOSING = {
    Result.SUCCESS: "Job succeeded",
    Result.FAILURE: "Job failed",
    Result.CANCELLED: "Job cancelled",
    Result.ERROR: "Job failed: infrastructure error (not a problem of the build)",
}


class Phase(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


def line_time(t: float) -> str:
    """.NET's round-trip 'O' format, 7 fractional digits (§7.1 line format)."""
    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond:06d}0Z"


def iso(t: float | None) -> str:
    return "" if t is None else m_timestamp(t)


def m_timestamp(t: float) -> str:
    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


@dataclass
class StepLog:
    external_id: str
    name: str
    phase: str = Phase.PENDING.value
    outcome: str = ""  # Outcome value (the conclusion, after continue-on-error)
    started: float | None = None
    completed: float | None = None
    log: Spool = field(default_factory=lambda: Spool("", 0))
    uploaded: bool = False


@dataclass
class Reporter:
    """The state is the object's fields (all JSON-able: ``checkpoint`` is ``asdict`` of them), and
    the core's Report protocol reads ``finished``, ``done``, ``last_seq`` and ``result`` directly."""

    plan_id: str
    job_id: str  # GitHub's
    billing_owner_id: str
    run_url: str
    results_url: str
    steps: list[StepLog]
    last_seq: int = 0
    job_spool: Spool = field(default_factory=lambda: Spool("", 0))
    finished: bool = False
    result: str = ""  # solstice.model.Result value once finished
    message: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    refused: str = ""
    steps_dirty: bool = True
    change_order: int = 0
    job_log_uploaded: bool = False
    done: bool = False  # completejob succeeded (or GitHub took the job back)
    cancel_requested: bool = False
    lease_lost: str = ""
    failed_step: int = 0  # number (GitHub's) of the first failed step, for the annotation
    # not in checkpoints' clear part: the core seals the "mask" entry
    mask: tuple[str, ...] = ()
    token: str = ""  # the job's SystemVssConnection token

    @classmethod
    def for_job(
        cls,
        job: m.AgentJobRequestMessage,
        steps: list[tuple[str, str]],
        *,
        mask: tuple[str, ...] | list[str] = (),
        token: str = "",
        spool_dir: Path,
    ) -> Reporter:
        seed = uuid.UUID(job.job_id) if _is_uuid(job.job_id) else uuid.uuid4()
        names = [(str(uuid.uuid5(seed, "set-up-job")), "Set up job"), *steps]
        names.append((str(uuid.uuid5(seed, "complete-job")), "Complete job"))
        # The spool files are named by a uuid, never by the message's jobId as it came: that is
        # the forge's text, and `../` or `/` in it would name a file outside spool_dir.
        file_key = str(
            uuid.UUID(job.job_id) if _is_uuid(job.job_id) else uuid.uuid5(uuid.NAMESPACE_OID, job.job_id)
        )
        logs = [
            StepLog(ext, name, log=Spool(str(spool_dir / f"{file_key}.{n}.log"), MAX_STEP_BYTES))
            for n, (ext, name) in enumerate(names)
        ]
        return cls(
            plan_id=job.plan.plan_id,
            job_id=job.job_id,
            billing_owner_id=job.billing_owner_id,
            run_url=job.system_connection.url,
            results_url=job.results_url,
            steps=logs,
            job_spool=Spool(str(spool_dir / f"{file_key}.job.log"), MAX_JOB_BYTES),
            mask=tuple(mask_values(mask)),
            token=token,
        )

    @property
    def buffered_rows(self) -> int:
        """Lines in memory (the rest is spooled to files)."""
        return len(self.job_spool.pending) + sum(len(st.log.pending) for st in self.steps)

    @property
    def buffered_bytes(self) -> int:
        return sum(len(line) for spool in self._spools() for line in spool.pending)

    def request_cancel(self) -> None:
        self.cancel_requested = True

    def lose_lease(self, why: str, time: float) -> None:
        if not self.lease_lost:
            self.lease_lost = why
            self.note(f"GitHub ended this job's lease ({why}): the job is being stopped", time)
            self.cancel_requested = True

    def feed(self, event: JobEvent) -> None:
        if event.seq <= self.last_seq and event.seq != SYNTHETIC_SEQ:
            return
        if self.finished:  # the first final event wins (a later synthetic one changes nothing sent)
            if event.seq != SYNTHETIC_SEQ:
                self.last_seq = event.seq
            return
        if event.seq != SYNTHETIC_SEQ:
            self.last_seq = event.seq
        step = self._main(event.step)
        if event.kind is EventKind.STEP_STARTED and step is not None:
            self._close_setup(event.time)
            step.phase, step.started = Phase.RUNNING.value, event.time
            self.steps_dirty = True
        elif event.kind is EventKind.LOG:
            self._line(step, event.text, event.time)
        elif event.kind is EventKind.PHASE:
            self._line(None, f"[{event.text}] {event.message}".rstrip(), event.time)
        elif event.kind is EventKind.STEP_FINISHED and step is not None:
            if step.phase == Phase.PENDING.value:
                step.started = event.time
                self._close_setup(event.time)
            step.phase, step.completed = Phase.DONE.value, event.time
            step.outcome = (event.conclusion or event.outcome or Outcome.FAILURE).value
            if event.outcome is Outcome.FAILURE and not self.failed_step:
                self.failed_step = self.steps.index(step) + 1
            self.steps_dirty = True
        elif event.kind is EventKind.JOB_FINISHED:
            self._finish(event.result or Result.ERROR, event.message, dict(event.outputs), event.time)

    def note(self, text: str, time: float) -> None:
        if not self.finished:
            self._line(None, text, time)

    def finish_here(self, result: Result, message: str, time: float) -> None:
        """The core ends the job without its final event; later events change nothing."""
        if not self.finished:
            self._finish(result, message, {}, time)

    def refuse(self, reason: str, details: tuple[str, ...], time: float) -> None:
        """The job cannot run here: every line in "Set up job", the job fails visibly."""
        self.refused = reason
        self._line(None, f"##[error]Solstice cannot run this job: {reason}", time)
        for line in details:
            self._line(None, line, time)
        self._finish(Result.FAILURE, reason, {}, time)

    def checkpoint(self) -> dict[str, Any]:
        for spool in self._spools():
            spool.flush()  # the sizes in the checkpoint are on disk
        data = asdict(self)
        data["mask"] = {"values": list(data.pop("mask")), "token": data.pop("token")}
        return data

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Reporter:
        data = dict(data)
        sealed = data.pop("mask", {}) or {}
        steps = [StepLog(**{**st, "log": Spool(**st["log"])}) for st in data.pop("steps")]
        mask = tuple(str(x) for x in sealed.get("values", ()))
        job_spool = Spool(**data.pop("job_spool"))
        r = cls(steps=steps, job_spool=job_spool, mask=mask, token=str(sealed.get("token", "")), **data)
        for spool in r._spools():
            spool.reopen()
        return r

    # --- what to send --------------------------------------------------------------------------

    def steps_update(self, now: float) -> m.WorkflowStepsUpdate | None:
        """The step list, when it changed. ``change_order`` follows the clock (ms), so it still
        increases after a restart that lost the last number (§7.1: monotonic per job)."""
        if not self.steps_dirty:
            return None
        self.change_order = max(self.change_order + 1, int(now * 1000))
        steps = tuple(self._workflow_steps())
        return m.WorkflowStepsUpdate(self.plan_id, self.job_id, self.change_order, steps)

    def steps_sent(self) -> None:
        self.steps_dirty = False

    def logs_to_upload(self) -> list[tuple[m.LogsTarget, list[str]]]:
        """The finished steps' logs not uploaded yet (§7.1: after each step ends)."""
        out = []
        for st in self.steps:
            if st.phase == Phase.DONE.value and not st.uploaded:
                target = m.LogsTarget(self.plan_id, self.job_id, st.external_id)
                out.append((target, st.log.lines("more lines not kept (a step log is capped)")))
        return out

    def log_uploaded(self, target: m.LogsTarget) -> None:
        for st in self.steps:
            if st.external_id == target.step_id:
                st.uploaded = True
                st.log.remove()  # GitHub has them

    def job_log(self) -> tuple[m.LogsTarget, list[str]] | None:
        """The whole job log, once the job finished and every step log is up."""
        if not self.finished or self.job_log_uploaded or any(not st.uploaded for st in self.steps):
            return None
        lines = self.job_spool.lines("more lines not kept (the job log is capped)")
        return m.LogsTarget(self.plan_id, self.job_id), lines

    def job_log_sent(self) -> None:
        self.job_log_uploaded = True
        self.job_spool.remove()

    def completion(self) -> m.CompleteJobRequest | None:
        if not self.job_log_uploaded or self.steps_dirty or self.done:
            return None
        result = Result(self.result)
        annotations = []
        category = ""
        if result is Result.ERROR:
            category = m.SOLSTICE_INFRASTRUCTURE_FAILURE
            annotations.append(
                m.Annotation(
                    m.AnnotationLevel.FAILURE,
                    mask_text(self.message or "infrastructure error", self.mask),
                    title="Solstice CI: infrastructure error (not a problem of the build)",
                    is_infrastructure_issue=True,
                )
            )
        elif result is Result.FAILURE and self.message:
            annotations.append(
                m.Annotation(
                    m.AnnotationLevel.FAILURE,
                    mask_text(self.message, self.mask),
                    step_number=self.failed_step,
                )
            )
        return m.CompleteJobRequest(
            plan_id=self.plan_id,
            job_id=self.job_id,
            conclusion=_JOB_CONCLUSION[result],
            outputs={k: m.Variable(mask_text(v, self.mask)) for k, v in self.outputs.items()},
            step_results=tuple(self._step_results()),
            annotations=tuple(annotations),
            billing_owner_id=self.billing_owner_id,
            infrastructure_failure_category=category,
        )

    def completed(self) -> None:
        """completejob succeeded, or GitHub took the job back (lease lost): nothing more to send."""
        self.done = True
        for spool in self._spools():
            spool.remove()

    # --- internals -----------------------------------------------------------------------------

    def _main(self, number: int | None) -> StepLog | None:
        if number is None or not 1 <= number <= len(self.steps) - 2:
            return None
        return self.steps[number]

    def _close_setup(self, t: float) -> None:
        setup = self.steps[0]
        if setup.phase != Phase.DONE.value:
            setup.started = setup.started or t
            setup.phase, setup.completed, setup.outcome = Phase.DONE.value, t, Outcome.SUCCESS.value
            self.steps_dirty = True

    def _line(self, step: StepLog | None, text: str, t: float) -> None:
        if step is None:
            running = [st for st in self.steps[1:-1] if st.phase == Phase.RUNNING.value]
            if running:
                step = running[-1]
            elif self.steps[0].phase != Phase.DONE.value:
                step = self.steps[0]
                if step.phase == Phase.PENDING.value:
                    step.phase, step.started = Phase.RUNNING.value, t
                    self.steps_dirty = True
            else:
                step = self.steps[-1]
                if step.phase == Phase.PENDING.value:
                    step.phase, step.started = Phase.RUNNING.value, t
                    self.steps_dirty = True
        line = f"{line_time(t)} {mask_text(text[:MAX_LINE], self.mask)}"
        if not step.uploaded:
            step.log.add(line)
        self.job_spool.add(line)

    def _spools(self) -> list[Spool]:
        return [st.log for st in self.steps] + [self.job_spool]

    def _finish(self, result: Result, message: str, outputs: dict[str, str], t: float) -> None:
        self._close_setup(t)
        if message and result is not Result.SUCCESS:
            self._line(self.steps[-1] if not self.refused else self.steps[0], f"##[error]{message}", t)
        self._line(self.steps[-1] if not self.refused else self.steps[0], _CLOSING[result], t)
        for st in self.steps[1:-1]:
            if st.phase != Phase.DONE.value:
                # never started: skipped; cut off: cancelled (§7.1 steps that never ran)
                st.outcome = (
                    Outcome.CANCELLED if st.phase == Phase.RUNNING.value else Outcome.SKIPPED
                ).value
                st.phase, st.completed = Phase.DONE.value, t
                st.started = st.started or t
        last = self.steps[-1]
        last.started = last.started or t
        last.phase, last.completed = Phase.DONE.value, t
        last.outcome = Outcome.SUCCESS.value
        self.finished, self.result, self.message, self.outputs = True, result.value, message, outputs
        self.steps_dirty = True

    def _workflow_steps(self) -> list[m.WorkflowStep]:
        out = []
        for n, st in enumerate(self.steps, 1):
            status = {
                Phase.PENDING.value: m.StepStatus.PENDING,
                Phase.RUNNING.value: m.StepStatus.IN_PROGRESS,
                Phase.DONE.value: m.StepStatus.COMPLETED,
            }[st.phase]
            conclusion = _CONCLUSION[Outcome(st.outcome)][0] if st.outcome else m.StepConclusion.UNKNOWN
            out.append(
                m.WorkflowStep(
                    st.external_id, n, st.name, status, iso(st.started), iso(st.completed), conclusion
                )
            )
        return out

    def _step_results(self) -> list[m.StepResult]:
        out = []
        for n, st in enumerate(self.steps[1:-1], 2):
            conclusion = _CONCLUSION[Outcome(st.outcome)][1] if st.outcome else m.TaskResult.SKIPPED
            out.append(
                m.StepResult(
                    external_id=st.external_id,
                    number=n,
                    name=st.name,
                    status=m.RecordState.COMPLETED,
                    conclusion=conclusion,
                    started_at=iso(st.started),
                    completed_at=iso(st.completed),
                )
            )
        return out


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
