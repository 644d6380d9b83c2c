"""One task's reporting as a pure state machine: JobEvents in, UpdateLog/UpdateTask requests out.

The caller drives it (no I/O, no clock, no threads here)::

    rep = Reporter(task_id, step_count, mask=translated.mask)
    rep.feed(event)                        # every JobEvent of the job, in seq order (duplicates ok)
    req = rep.next_update_log()            # None: nothing to send
    rep.on_log_ack(client.update_log(req)) # or rep.on_log_archived() on LogArchived
    req = rep.next_update_task()           # None: the final state is acknowledged, all done
    rep.on_task_ack(client.update_task(req))
    rep.cancel_requested                   # the forge cancelled the task: stop the job

How events become rows and steps (forgejo-runner-protocol.md §3.5):

* One ``LogRow`` per line, with an absolute index (0, 1, 2 ...). ``StepState.id`` is the step's
  0-based index in the payload job (``JobEvent.step`` is 1-based), ``log_index`` its first row,
  ``log_length`` its row count, ``started_at`` from STEP_STARTED (or its first line),
  ``result``/``stopped_at`` from STEP_FINISHED (the *conclusion*, after continue-on-error).
* **Step logs are contiguous and in step order**, because the UI derives "Set up job" (rows before
  the first step) and "Complete job" (rows after the steps) from the numbers. Job-level lines
  (``step`` None, PHASE events) go to "Set up job" before the first step, into the running step
  while one runs, and are held between steps and put at the start of the next step (or in
  "Complete job" when no step follows).
* UpdateLog sends ``index`` = the server's ack and every row not acknowledged yet; the answer's
  ``ack_index`` drops what the server has (resending overlapping rows is safe: the server appends
  only ``rows[ack-index:]``); an ack behind our offset means rows were lost (``ReportError``).
  ``no_more`` is set only on the request that carries the last row, so the archive happens (the
  server ignores ``no_more`` without rows, and JOB_FINISHED always adds a closing line).
* UpdateTask carries the state each time (it is also the heartbeat, §3.5); the outputs not yet in
  ``sent_outputs`` are resent until they are; the result and ``stopped_at`` go only after the log
  was closed (§3.6 order: logs, then the final state). Unfinished steps end CANCELLED.
* Cancellation: ``UpdateTaskResponse.state.result`` CANCELLED (or FAILURE, the reaper's, as the
  Forgejo runner does; §3.7) sets ``cancel_requested``.
* A synthetic JOB_FINISHED (seq 2**31-1, docs/dispatcher.md) supersedes the job's own final event
  as long as the final state has not been sent.

Restart without duplicated or missing rows: ``checkpoint()`` is a JSON-able snapshot (buffered
rows included) and ``Reporter.restore()`` continues from it; events with a seq already fed are
ignored. Rows are a pure function of the events, so events re-fed after a restart get the same
indices, and the server's ack (which may be ahead of the snapshot) drops whatever it has already.
Without a snapshot, a fresh Reporter fed the whole event stream from seq 1 gives the same result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from solstice.forges.core.errors import ReportBroken
from solstice.model import EventKind, JobEvent, Outcome, Result
from solstice.model.masking import mask_text, mask_values

from . import messages as m

SYNTHETIC_SEQ = 2**31 - 1  # solstice.queue.SYNTHETIC_SEQ
MAX_ROWS_PER_REQUEST = 1000
MAX_REQUEST_CHARS = 4 * 1024 * 1024  # of rows' content in one UpdateLog
MAX_OUTPUT_KEY = 255  # bytes; the server drops longer keys silently (§3.5)
MAX_OUTPUT_VALUE = 1024 * 1024

_STEP_RESULT = {
    Outcome.SUCCESS: m.Result.RESULT_SUCCESS,
    Outcome.FAILURE: m.Result.RESULT_FAILURE,
    Outcome.CANCELLED: m.Result.RESULT_CANCELLED,
    Outcome.SKIPPED: m.Result.RESULT_SKIPPED,
}
_JOB_RESULT = {
    Result.SUCCESS: m.Result.RESULT_SUCCESS,
    Result.FAILURE: m.Result.RESULT_FAILURE,
    Result.CANCELLED: m.Result.RESULT_CANCELLED,
    Result.ERROR: m.Result.RESULT_FAILURE,  # the forge has no "error": a failure with the reason logged
}
_CLOSING = {
    Result.SUCCESS: "Job succeeded",
    Result.FAILURE: "Job failed",
    Result.CANCELLED: "Job cancelled",
    Result.ERROR: "Job failed: infrastructure error (not a problem of the build)",
}


class ReportError(ReportBroken):
    """The server's log is behind what it acknowledged before: rows were lost."""


@dataclass
class _Step:
    started_at: float | None = None
    stopped_at: float | None = None
    result: int = 0
    log_index: int = 0
    log_length: int = 0


@dataclass
class _State:
    task_id: int
    step_count: int
    last_seq: int = 0
    started_at: float | None = None
    steps: list[_Step] = field(default_factory=list)
    next_index: int = 0  # rows placed so far (the next row's absolute index)
    log_offset: int = 0  # the server's ack
    buffer: list[tuple[float, str]] = field(default_factory=list)  # rows [log_offset, next_index)
    running_step: int | None = None  # 0-based id of the step whose rows are being placed
    last_placed_step: int | None = None
    held: list[tuple[float, str]] = field(default_factory=list)  # job lines between two steps
    finished: bool = False
    result: str = ""  # solstice.model.Result value once finished
    message: str = ""
    stopped_at: float | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    pending_outputs: list[str] = field(default_factory=list)
    closing_sent: bool = False  # a request with no_more was handed out
    log_closed: bool = False
    final_sent: bool = False
    done: bool = False
    cancel_requested: bool = False
    server_result: int = 0
    skipped: bool = False  # the job's if: was false: result SKIPPED, every step skipped
    last_row: str = ""  # the content of the last row placed (to write a step's failure once)


def _ts(seconds: float | None) -> datetime | None:
    return m.from_epoch(seconds) if seconds is not None else None


class Reporter:
    def __init__(
        self,
        task_id: int,
        step_count: int,
        *,
        mask: tuple[str, ...] | list[str] = (),
        cancel_on_failure: bool = True,
        max_rows: int = MAX_ROWS_PER_REQUEST,
    ) -> None:
        self.s = _State(task_id=task_id, step_count=step_count, steps=[_Step() for _ in range(step_count)])
        self.mask = tuple(mask_values(mask))
        self.cancel_on_failure = cancel_on_failure
        self.max_rows = max_rows

    # --- state ---------------------------------------------------------------------------------

    @property
    def task_id(self) -> int:
        return self.s.task_id

    @property
    def result(self) -> str:
        """The job's ``Result`` value once finished, else ``""``."""
        return self.s.result

    @property
    def cancel_requested(self) -> bool:
        return self.s.cancel_requested

    @property
    def finished(self) -> bool:
        """The job's final event was fed."""
        return self.s.finished

    @property
    def done(self) -> bool:
        """Everything is reported: log closed, final state and all outputs acknowledged."""
        return self.s.done

    @property
    def last_seq(self) -> int:
        """The highest event seq fed (events up to it may be acked on the queue once a
        ``checkpoint()`` taken after them is stored)."""
        return self.s.last_seq

    @property
    def buffered_rows(self) -> int:
        """Rows not acknowledged by the server yet."""
        return len(self.s.buffer)

    @property
    def buffered_bytes(self) -> int:
        return sum(len(content) for _, content in self.s.buffer)

    def note(self, text: str, time: float) -> None:
        """A line of the runner's own (not from a job event), placed like a job-level line."""
        if not self.s.finished:
            self._job_line(time, text)

    def finish_here(self, result: Result, message: str, time: float) -> None:
        """End the task without the job's own final event (it never ran, or never confirmed a
        cancellation); later events of the job are ignored."""
        self.feed(
            JobEvent(
                job_id="",
                seq=SYNTHETIC_SEQ,
                time=time,
                kind=EventKind.JOB_FINISHED,
                result=result,
                message=message,
            )
        )

    def checkpoint(self) -> dict[str, Any]:
        s = self.s
        data = dict(vars(s))
        data["steps"] = [dict(vars(st)) for st in s.steps]
        data["buffer"] = [list(r) for r in s.buffer]
        data["held"] = [list(r) for r in s.held]
        data["outputs"] = dict(s.outputs)
        data["pending_outputs"] = list(s.pending_outputs)
        return {"version": 1, "state": data, "mask": list(self.mask)}

    @classmethod
    def restore(cls, checkpoint: dict[str, Any], *, cancel_on_failure: bool = True) -> Reporter:
        data = dict(checkpoint["state"])
        rep = cls(
            int(data["task_id"]),
            int(data["step_count"]),
            mask=tuple(checkpoint.get("mask", ())),
            cancel_on_failure=cancel_on_failure,
        )
        data["steps"] = [_Step(**st) for st in data["steps"]]
        data["buffer"] = [(float(t), str(c)) for t, c in data["buffer"]]
        data["held"] = [(float(t), str(c)) for t, c in data["held"]]
        rep.s = _State(**data)
        return rep

    # --- events ----------------------------------------------------------------------------------

    def feed(self, event: JobEvent) -> None:
        s = self.s
        synthetic = event.seq == SYNTHETIC_SEQ
        if event.seq <= s.last_seq:
            return  # a duplicate (redelivery, replay after a restart)
        s.last_seq = event.seq
        if s.finished and not synthetic:
            return
        if s.started_at is None:
            s.started_at = event.time
        kind = event.kind
        if kind == EventKind.JOB_STARTED:
            return
        if kind == EventKind.PHASE:
            self._job_line(event.time, f"[{event.text}] {event.message}".rstrip())
        elif kind == EventKind.STEP_STARTED:
            self._start_step(self._step_id(event.step), event.time)
        elif kind == EventKind.LOG:
            sid = self._step_id(event.step)
            if sid is not None and sid == s.running_step:
                self._place(event.time, event.text, sid)
            elif sid is not None and s.running_step is None and s.steps[sid].started_at is None:
                self._start_step(sid, event.time)  # a line before its STEP_STARTED starts it
                self._place(event.time, event.text, sid)
            elif sid is not None and s.running_step is None and sid == s.last_placed_step and not s.held:
                self._place(event.time, event.text, sid)  # a late line of the last step: still contiguous
            else:
                self._job_line(event.time, event.text)  # anywhere else it would split a step's rows
        elif kind == EventKind.STEP_FINISHED:
            self._finish_step(event)
        elif kind == EventKind.JOB_FINISHED:
            self._finish_job(event, synthetic)

    def _step_id(self, number: int | None) -> int | None:
        if number is None or not 1 <= number <= self.s.step_count:
            return None
        return number - 1

    def _lines(self, text: str) -> list[str]:
        text = mask_text(text, self.mask)
        return [line.rstrip("\r") for line in text.rstrip("\r\n").split("\n")] if text else [""]

    def _append_row(self, time: float, content: str) -> None:
        s = self.s
        if s.next_index >= s.log_offset:  # rows below the ack are on the server already (restart)
            s.buffer.append((time, content))
        s.next_index += 1
        s.last_row = content

    def _place(self, time: float, text: str, sid: int | None) -> None:
        s = self.s
        for line in self._lines(text):
            if sid is not None:
                st = s.steps[sid]
                if st.log_length == 0:
                    st.log_index = s.next_index
                st.log_length += 1
            self._append_row(time, line)

    def _job_line(self, time: float, text: str) -> None:
        s = self.s
        if s.running_step is not None:
            self._place(time, text, s.running_step)
        elif s.last_placed_step is None or s.finished:
            self._place(time, text, None)  # "Set up job" / "Complete job"
        else:
            s.held.extend((time, line) for line in self._lines(text))

    def _start_step(self, sid: int | None, time: float) -> None:
        s = self.s
        if sid is None:
            return
        st = s.steps[sid]
        if st.started_at is not None:
            return
        if s.running_step is not None and s.running_step != sid:
            s.running_step = None  # a new step starts: the previous one's rows end here
        st.started_at = time
        st.log_index = s.next_index
        s.running_step = sid
        s.last_placed_step = sid
        held, s.held = s.held, []
        for t, line in held:
            self._place(t, line, sid)

    def _finish_step(self, event: JobEvent) -> None:
        s = self.s
        sid = self._step_id(event.step)
        if sid is None:
            return
        st = s.steps[sid]
        if (
            st.started_at is None
            and event.conclusion != Outcome.SKIPPED
            and event.outcome != Outcome.SKIPPED
        ):
            self._start_step(sid, event.time)
        elif st.started_at is None:
            st.log_index = s.next_index  # skipped: never started, no rows
        if sid == s.running_step or (st.log_length and sid == s.last_placed_step):
            if event.message and not self._logged_already(event.message, sid):
                self._place(event.time, event.message, sid)
            elif event.outcome == Outcome.FAILURE and event.exit_code:
                self._place(event.time, f"Process completed with exit code {event.exit_code}.", sid)
        conclusion = event.conclusion or event.outcome or Outcome.SUCCESS
        if conclusion == Outcome.SKIPPED:
            st.started_at = None  # a skipped step never ran: no start time in the forge (§3.5)
        st.result = int(_STEP_RESULT[conclusion])
        st.stopped_at = event.time
        if s.running_step == sid:
            s.running_step = None

    def _logged_already(self, message: str, sid: int) -> bool:
        """The job logs a failed step's reason as ``Error: <message>`` before its STEP_FINISHED
        carries the same message: the forge gets it once."""
        st = self.s.steps[sid]
        return bool(st.log_length) and self.s.last_row == self._lines(f"Error: {message}")[-1]

    def _finish_job(self, event: JobEvent, synthetic: bool) -> None:
        s = self.s
        result = event.result or Result.ERROR
        if s.finished:
            # the dispatcher's verdict supersedes the job's own, if not reported yet
            if synthetic and not s.final_sent:
                s.result, s.message, s.stopped_at = result.value, event.message, event.time
                if not s.closing_sent:
                    if event.message:
                        self._place(event.time, event.message, None)
                    self._place(event.time, _CLOSING[result], None)
            return
        s.running_step = None
        s.finished = True
        s.result, s.message, s.stopped_at = result.value, event.message, event.time
        for t, line in s.held:
            self._place(t, line, None)
        s.held = []
        for key, value in event.outputs.items():
            if len(key.encode()) > MAX_OUTPUT_KEY or len(value.encode()) > MAX_OUTPUT_VALUE:
                self._place(
                    event.time, f"Warning: job output {key[:64]!r} is too large for the forge; dropped", None
                )
                continue
            s.outputs[key] = value
            s.pending_outputs.append(key)
        if event.message:
            self._place(event.time, event.message, None)
        self._place(event.time, "Job skipped" if s.skipped else _CLOSING[result], None)

    # --- UpdateLog -------------------------------------------------------------------------------

    def next_update_log(self) -> m.UpdateLogRequest | None:
        s = self.s
        if s.log_closed or not s.buffer:
            if s.finished and not s.buffer:
                s.log_closed = True  # the server has every row, the last one came with no_more
            return None
        rows = s.buffer[: self.max_rows]
        # ... and a few MiB: a thousand rows of 64 KiB would make one 64 MiB request (and its copies).
        size = 0
        for n, (_, content) in enumerate(rows):
            size += len(content)
            if size > MAX_REQUEST_CHARS and n > 0:
                rows = rows[:n]
                break
        last = s.finished and len(rows) == len(s.buffer)
        if last:
            s.closing_sent = True
        return m.UpdateLogRequest(
            task_id=s.task_id,
            index=s.log_offset,
            rows=tuple(m.LogRow(time=m.from_epoch(t), content=c) for t, c in rows),
            no_more=last,
        )

    def on_log_ack(self, response: m.UpdateLogResponse) -> None:
        s = self.s
        ack = response.ack_index
        if ack < s.log_offset:
            raise ReportError(
                f"task {s.task_id}: the server acknowledged {ack} log rows after {s.log_offset}: "
                "logs are lost"
            )
        drop = min(ack - s.log_offset, len(s.buffer))
        del s.buffer[:drop]
        s.log_offset = ack
        if s.finished and not s.buffer and s.closing_sent:
            s.log_closed = True

    def on_log_archived(self) -> None:
        """UpdateLog answered ``already_exists``: the log is closed; nothing more can be added."""
        self.s.buffer.clear()
        self.s.log_closed = True
        self.s.closing_sent = True

    # --- UpdateTask ------------------------------------------------------------------------------

    def _state(self, final: bool) -> m.TaskState:
        s = self.s
        steps = []
        for i, st in enumerate(s.steps):
            result = st.result
            stopped = st.stopped_at
            if final and not result:
                # never ran: skipped with the job, else cancelled (§3.5)
                never = m.Result.RESULT_SKIPPED if s.skipped else m.Result.RESULT_CANCELLED
                result, stopped = int(never), s.stopped_at
            steps.append(
                m.StepState(
                    id=i,
                    result=m.Result(result),
                    started_at=_ts(st.started_at),
                    stopped_at=_ts(stopped) if result else None,
                    log_index=st.log_index,
                    log_length=st.log_length,
                )
            )
        job_result = _JOB_RESULT[Result(s.result)] if final else m.Result.RESULT_UNSPECIFIED
        if final and s.skipped:
            job_result = m.Result.RESULT_SKIPPED
        return m.TaskState(
            id=s.task_id,
            result=job_result,
            started_at=_ts(s.started_at),
            stopped_at=_ts(s.stopped_at) if final else None,
            steps=tuple(steps),
        )

    def next_update_task(self) -> m.UpdateTaskRequest | None:
        """The state to send now (also the heartbeat while the job runs); ``None`` once the final
        state and every output are acknowledged."""
        s = self.s
        if s.done:
            return None
        final = s.finished and s.log_closed
        outputs = {k: s.outputs[k] for k in s.pending_outputs}
        if final:
            s.final_sent = True
        return m.UpdateTaskRequest(state=self._state(final), outputs=outputs)

    def on_task_ack(self, response: m.UpdateTaskResponse) -> None:
        s = self.s
        acked = set(response.sent_outputs)
        s.pending_outputs = [k for k in s.pending_outputs if k not in acked]
        server = response.state.result if response.state is not None else m.Result.RESULT_UNSPECIFIED
        s.server_result = int(server)
        if not s.finished and (
            server == m.Result.RESULT_CANCELLED
            or (self.cancel_on_failure and server == m.Result.RESULT_FAILURE)
        ):
            s.cancel_requested = True
        if s.final_sent and not s.pending_outputs:
            s.done = True


def report_skipped(task_id: int, step_count: int, reason: str, time: float) -> Reporter:
    """A Reporter that ends a task as skipped (its ``if:`` is false) with ``reason`` in its log."""
    rep = Reporter(task_id, step_count)
    rep.s.skipped = True
    rep.feed(JobEvent(job_id="", seq=1, time=time, kind=EventKind.LOG, text=f"Skipping the job: {reason}"))
    rep.feed(JobEvent(job_id="", seq=2, time=time, kind=EventKind.JOB_FINISHED, result=Result.SUCCESS))
    return rep


def report_rejection(
    task_id: int, step_count: int, lines: list[str], time: float, *, job_id: str = ""
) -> Reporter:
    """A Reporter that fails a task the runner cannot run, with ``lines`` (the reasons) in its log
    ("never silently", docs/forgejo.md); drive it like any other."""
    rep = Reporter(task_id, step_count)
    seq = 0
    for line in lines:
        seq += 1
        rep.feed(JobEvent(job_id=job_id, seq=seq, time=time, kind=EventKind.LOG, text=line))
    rep.feed(
        JobEvent(job_id=job_id, seq=seq + 1, time=time, kind=EventKind.JOB_FINISHED, result=Result.FAILURE)
    )
    return rep
