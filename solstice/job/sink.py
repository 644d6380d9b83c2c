"""The job's event sink in the service: every event to the poller (RabbitMQ, batched) and as a
human line to stdout, which is the unit's journal (``journalctl -u solstice-job@<uuid>``)."""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from typing import Protocol, TextIO

from solstice.errors import SolsticeError
from solstice.model import EventKind, JobEvent, JobRequest, Outcome, Result
from solstice.model.terminal import safe_line, safe_text

log = logging.getLogger("solstice.job")

#: How long the job waits at its end for RabbitMQ to confirm its remaining events.
DELIVERY_TIMEOUT = 60.0


_MARKS = {Outcome.SUCCESS: "✓", Outcome.FAILURE: "✗", Outcome.CANCELLED: "⊘", Outcome.SKIPPED: "-"}


def journal_line(event: JobEvent, label: str) -> str:
    """One event as a line of the job's journal (journald adds the time; no colours)."""
    kind = event.kind
    if kind is EventKind.LOG:
        return event.text
    if kind is EventKind.JOB_STARTED:
        return f"▶ {event.text} on {label} (job {event.job_id})"
    if kind is EventKind.PHASE:
        return f"phase {event.text}" + (f": {event.message}" if event.message else "")
    if kind is EventKind.STEP_STARTED:
        return f"── Step {event.step}: {event.text}"
    if kind is EventKind.STEP_FINISHED:
        mark = _MARKS.get(event.conclusion or Outcome.FAILURE, "?")
        extra = [f"{event.outcome.value}" if event.outcome else "?"]
        if event.exit_code not in (None, 0):
            extra.append(f"exit {event.exit_code}")
        if event.message:
            extra.append(event.message)
        return f"{mark} Step {event.step} ({', '.join(extra)})"
    result = event.result.value if event.result else "?"
    return f"■ {result}" + (f": {event.message}" if event.message else "")


class Journal:
    """The job's stdout (its journal under systemd): one line per event, flushed at most every
    0.1 s by a timer thread, since 20,000 lines a second need not be 20,000 writes."""

    def __init__(self, out: TextIO, label: str, interval: float = 0.1) -> None:
        self.out = out
        self.label = label
        self._lock = threading.Lock()
        self._dirty = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="journal", daemon=True)
        self._thread.start()

    def emit(self, event: JobEvent) -> None:
        # Step output and names are untrusted: only SGR colours reach the journal (and the terminal
        # `journalctl` shows it on); a newline only in messages, never to forge a line of its own.
        one_line = event.kind in (EventKind.LOG, EventKind.JOB_STARTED, EventKind.STEP_STARTED)
        line = (safe_line if one_line else safe_text)(journal_line(event, self.label))
        with self._lock:
            self.out.write(line + "\n")
            self._dirty = True

    def sync(self) -> None:
        with self._lock:
            if self._dirty:
                self._dirty = False
                try:
                    self.out.flush()
                except (OSError, ValueError):
                    pass

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sync()

    def close(self) -> None:
        self._stop.set()
        self.sync()


class Outbox(Protocol):
    """Where a service job's events go to its poller (solstice.queue.BatchingEventSink)."""

    def emit(self, event: JobEvent) -> None: ...

    def stop_waiting(self) -> None:
        """Emit no longer waits for room (the job is being cancelled)."""
        ...

    def close(self, timeout: float) -> None:
        """Deliver what is left; raise a SolsticeError when that failed in time."""
        ...


class ServiceSink:
    """Every event to the poller (batched; when the request has a ``reply_to``) and as a human
    line to ``out`` (the journal). Text is already masked by the job's Emitter. A JOB_FINISHED
    with result error while the job is being cancelled becomes cancelled."""

    def __init__(
        self,
        request: JobRequest,
        queue: Outbox | None,
        out: TextIO | None = None,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.cancelled = cancelled
        self.journal = Journal(out or sys.stdout, request.label)
        self.queue = queue
        self.final_seen = False
        self.phase = ""
        self.in_emit = False
        self.interrupt_pending = False

    def emit(self, event: JobEvent) -> None:
        if (
            event.kind is EventKind.JOB_FINISHED
            and event.result is Result.ERROR
            and self.cancelled is not None
            and self.cancelled.is_set()
        ):
            # Cancelled while an infrastructure error happened: under systemd, SIGTERM reaches QEMU
            # too (KillMode=control-group), so the guest connection drops as the job is cancelled.
            event = dataclasses.replace(
                event, result=Result.CANCELLED, message=f"the job was cancelled ({event.message})"
            )
        self.in_emit = True
        try:
            if self.queue is not None:
                self.queue.emit(event)
            if event.kind is EventKind.PHASE:
                self.phase = event.text
            elif event.kind is EventKind.JOB_FINISHED:
                self.final_seen = True
            try:
                self.journal.emit(event)
            except (OSError, ValueError):  # stdout is gone; the events still reach the poller
                pass
            if event.kind is EventKind.JOB_FINISHED:
                self.journal.sync()
        finally:
            self.in_emit = False
        if self.interrupt_pending and not self.final_seen:
            self.interrupt_pending = False
            raise KeyboardInterrupt

    def close(self, timeout: float = DELIVERY_TIMEOUT) -> bool:
        """Deliver what is left; False when RabbitMQ did not confirm everything in time."""
        self.journal.close()
        if self.queue is None:
            return True
        try:
            self.queue.close(timeout)
        except SolsticeError as exc:
            log.error("%s", exc)
            print(f"solstice: error: {exc}", file=sys.stderr, flush=True)
            return False
        return True
