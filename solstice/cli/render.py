"""Local mode's terminal view of a job's events: live step output and a final summary table."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from solstice.model import EventKind, JobEvent, Outcome, Phase, Result, Stream
from solstice.model.terminal import safe_line, safe_text

_MARK = {
    Outcome.SUCCESS: "✓",
    Outcome.FAILURE: "✗",
    Outcome.CANCELLED: "⊘",
    Outcome.SKIPPED: "-",
}


@dataclass
class JobSummary:
    name: str
    label: str
    result: Result | None = None
    message: str = ""
    started: float = 0.0
    finished: float = 0.0
    boot_seconds: float | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # the job's outputs, for needs.<job>.outputs


class TerminalSink:
    """Prints each event as it arrives. Colour only on a terminal."""

    def __init__(self, summary: JobSummary, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.summary = summary
        self.color = self.out.isatty()
        self._step_start: dict[int, float] = {}
        self._step_names: dict[int, str] = {}
        self._boot_start: float | None = None
        self._shown: set[int] = set()  # steps whose header is printed
        self._start = time.time()

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def _print(self, text: str) -> None:
        # Step output and messages are untrusted: only SGR colours reach the terminal.
        print(safe_text(text), file=self.out, flush=True)

    def _ts(self, event: JobEvent) -> str:
        return self._c("2", f"{event.time - self._start:7.1f}s")

    def emit(self, event: JobEvent) -> None:
        kind = event.kind
        if kind is EventKind.JOB_STARTED:
            self._start = event.time
            self.summary.started = event.time
            self._print(self._c("1", f"▶ {safe_line(event.text)}") + f" on {self.summary.label}")
        elif kind is EventKind.PHASE:
            if event.text == Phase.BOOT.value:
                self._boot_start = event.time
            if event.text == Phase.READY.value and self._boot_start is not None:
                self.summary.boot_seconds = event.time - self._boot_start
                self._print(f"{self._ts(event)} guest ready (boot {self.summary.boot_seconds:.1f} s)")
        elif kind is EventKind.STEP_STARTED:
            assert event.step is not None
            self._step_start[event.step] = event.time
            self._step_names[event.step] = safe_line(event.text)
        elif kind is EventKind.LOG:
            if event.step is not None and event.step in self._step_start and event.step not in self._shown:
                self._header(event.step)
            prefix = self._ts(event)
            text = safe_line(event.text)
            if event.stream is Stream.STDERR:
                text = self._c("33", text)
            elif event.stream is Stream.SYSTEM:
                text = self._c("36", text)
            self._print(f"{prefix} {text}")
        elif kind is EventKind.STEP_FINISHED:
            assert event.step is not None and event.conclusion is not None
            if event.outcome is not Outcome.SKIPPED and event.step not in self._shown:
                self._header(event.step)
            secs = event.time - self._step_start.get(event.step, event.time)
            mark = _MARK[event.conclusion]
            color = {"✓": "32", "✗": "31", "⊘": "33", "-": "2"}[mark]
            extra = []
            if event.outcome is Outcome.SKIPPED:
                extra.append("skipped")
            else:
                if event.exit_code not in (None, 0):
                    extra.append(f"exit {event.exit_code}")
                if event.outcome is Outcome.FAILURE and event.conclusion is Outcome.SUCCESS:
                    extra.append("failed, continue-on-error")
                extra.append(f"{secs:.1f} s")
            name = self._step_names.get(event.step, "")
            self._print(self._c(color, f"{mark} Step {event.step}: {name}") + f" ({', '.join(extra)})")
        elif kind is EventKind.JOB_FINISHED:
            assert event.result is not None
            self.summary.result = event.result
            self.summary.message = event.message
            self.summary.finished = event.time
            self.summary.outputs = dict(event.outputs)
            color = "32" if event.result is Result.SUCCESS else "31"
            msg = f": {event.message}" if event.message else ""
            self._print(self._c(color, f"■ {event.result.value}{msg}"))

    def _header(self, step: int) -> None:
        self._shown.add(step)
        self._print(self._c("1", f"── Step {step}: {self._step_names.get(step, '')}"))


def summary_table(rows: list[JobSummary], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    headers = ("job", "image", "result", "time", "boot", "message")
    table = [
        (
            safe_text(r.name),
            r.label,
            r.result.value if r.result else "skipped",
            f"{r.finished - r.started:.1f} s" if r.finished else "-",
            f"{r.boot_seconds:.1f} s" if r.boot_seconds is not None else "-",
            safe_text(r.message.splitlines()[0]) if r.message else "",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    print("", file=out)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
