"""Download progress for humans: a bar redrawn in place on a terminal, and a line every
``interval`` seconds or ``step`` percent otherwise (a unit's stderr goes to the journal)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

MIB = 1024 * 1024


class ProgressPrinter:
    def __init__(
        self,
        label: str,
        out: TextIO,
        *,
        tty: bool | None = None,
        interval: float = 10.0,
        step: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.interval = interval
        self.step = step
        self.clock = clock
        self._phase = ""
        self._start = clock()
        self._last_line = -1e9
        self._last_percent = -1
        self._drawn = False

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        now = self.clock()
        if phase != self._phase:
            self.finish()
            self._phase, self._start, self._last_percent = phase, now, -1
            self._last_line = -1e9
        elapsed = now - self._start
        # no rate from the first instants: it would be noise
        speed = f", {done / elapsed / MIB:.1f} MiB/s" if elapsed >= 0.5 else ""
        percent = int(done * 100 / total) if total else None
        amount = f"{done / MIB:.1f}" + (f" of {total / MIB:.1f}" if total else "") + " MiB"
        if self.tty:
            bar = ""
            if percent is not None:
                filled = min(30, percent * 30 // 100)
                bar = f" [{'#' * filled}{' ' * (30 - filled)}] {percent:3d}%"
            self.out.write(f"\r{self.label}: {phase}{bar} {amount}{speed}\x1b[K")
            self.out.flush()
            self._drawn = True
            return
        crossed = percent is not None and percent // self.step > self._last_percent // self.step
        if now - self._last_line >= self.interval or crossed or (total is not None and done >= total):
            if percent is not None and percent == self._last_percent and done < (total or 0):
                return
            shown = f" ({percent}%)" if percent is not None else ""
            self.out.write(f"{self.label}: {phase} {amount}{shown}{speed}\n")
            self.out.flush()
            self._last_line = now
            if percent is not None:
                self._last_percent = percent

    def finish(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False
