"""The job's event emitter: numbers events gap-free, stamps them, masks text, hands them to a sink."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Protocol

from solstice.job.mask import Masker
from solstice.model import EventKind, EventSink, JobEvent, Outcome, Phase, Result, Stream


class Emitter:
    def __init__(self, job_id: str, sink: EventSink, masker: Masker) -> None:
        self.job_id = job_id
        self.sink = sink
        self.masker = masker
        self._seq = 0
        self._lock = threading.Lock()

    def _emit(self, kind: EventKind, **fields: object) -> JobEvent:
        # One lock around numbering AND delivery, so the sink sees seq in order.
        with self._lock:
            self._seq += 1
            event = JobEvent(job_id=self.job_id, seq=self._seq, time=time.time(), kind=kind, **fields)  # type: ignore[arg-type]
            self.sink.emit(event)
            return event

    def job_started(self, name: str) -> None:
        self._emit(EventKind.JOB_STARTED, text=self.masker.apply(name))

    def phase(self, phase: Phase, message: str = "") -> None:
        self._emit(EventKind.PHASE, text=phase.value, message=self.masker.apply(message))

    def step_started(self, step: int, name: str) -> None:
        self._emit(EventKind.STEP_STARTED, step=step, text=self.masker.apply(name))

    def log(self, text: str, *, step: int | None, stream: Stream = Stream.SYSTEM) -> None:
        self._emit(EventKind.LOG, step=step, stream=stream, text=self.masker.apply(text))

    def step_finished(
        self,
        step: int,
        outcome: Outcome,
        conclusion: Outcome,
        *,
        exit_code: int | None = None,
        message: str = "",
        outputs: Mapping[str, str] | None = None,
    ) -> None:
        self._emit(
            EventKind.STEP_FINISHED,
            step=step,
            outcome=outcome,
            conclusion=conclusion,
            exit_code=exit_code,
            message=self.masker.apply(message),
            outputs={k: self.masker.apply(v) for k, v in (outputs or {}).items()},
        )

    def job_finished(
        self, result: Result, message: str = "", outputs: Mapping[str, str] | None = None
    ) -> None:
        self._emit(
            EventKind.JOB_FINISHED,
            result=result,
            message=self.masker.apply(message),
            outputs={k: self.masker.apply(v) for k, v in (outputs or {}).items()},
        )


class CutGuard(Protocol):
    """Where an over-long line may be cut without splitting a secret (the job's Masker)."""

    def longest(self) -> int: ...
    def safe_cut(self, data: bytes, at: int) -> int: ...


class LineSplitter:
    """Turns byte chunks into lines; a line over ``limit`` bytes is cut, so memory stays bounded.

    With a ``guard`` (the masker), a cut never falls inside a secret: the splitter waits for up to
    the longest secret's length more bytes and cuts before a secret that would straddle the limit,
    since each piece is masked on its own and the halves of a cut secret would go out in clear."""

    def __init__(self, limit: int = 64 * 1024, guard: CutGuard | None = None) -> None:
        self._buf = b""
        self._limit = limit
        self._guard = guard

    def feed(self, chunk: bytes) -> list[str]:
        # One split per chunk: slicing the buffer line by line copied the rest of a 64 KiB chunk
        # for each of its short lines.
        parts = (self._buf + chunk).split(b"\n")
        self._buf = parts.pop()
        lines: list[bytes] = []
        for part in parts:
            # A whole line: every byte of it is here, so it can be cut wherever no secret straddles.
            self._cut(part, lines, complete=True)
        self._buf = self._cut(self._buf, lines, complete=False)
        return [ln.decode(errors="replace").rstrip("\r") for ln in lines]

    def _cut(self, data: bytes, lines: list[bytes], complete: bool) -> bytes:
        """Append ``data``'s pieces of at most ``limit`` bytes to ``lines``; a complete line goes
        whole, an unfinished one keeps its rest, and with the guard's hold: the bytes after the
        limit that a secret straddling it could still need."""
        hold = 0 if complete else (self._guard.longest() if self._guard else 0)
        while (len(data) > self._limit) if complete else (len(data) >= self._limit + hold):
            cut = self._guard.safe_cut(data, self._limit) if self._guard else self._limit
            lines.append(data[:cut])
            data = data[cut:]
        if complete:
            lines.append(data)
            return b""
        return data

    def flush(self) -> list[str]:
        rest, self._buf = self._buf, b""
        return [rest.decode(errors="replace").rstrip("\r")] if rest else []
