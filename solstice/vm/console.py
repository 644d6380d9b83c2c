"""The guest's serial console as text: sanitised (no terminal escapes or control characters),
bounded, and followed live while the guest boots (the job streams it into its log)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
#: Longest console line kept; the rest of a longer one is cut (bounded memory, readable logs).
LINE_LIMIT = 1024


def clean(data: bytes) -> str:
    """Console bytes as text without escape sequences, carriage returns or control characters."""
    text = _ANSI.sub(b"", data).decode(errors="replace")
    return _CONTROL.sub("", text.replace("\t", "    "))


def read_tail(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a console log, cleaned."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(clean(line) for line in data.splitlines()[-lines:])


class ConsoleFollower:
    """Reads a console log as QEMU writes it, from a thread of its own, and hands each complete
    line (cleaned, at most LINE_LIMIT characters) to ``on_line``; at most ``max_lines`` lines, then
    one note that the rest was left out. ``stop`` reads what is left and ends the thread."""

    def __init__(
        self,
        path: Path,
        on_line: Callable[[str], None],
        max_lines: int = 2000,
        interval: float = 0.25,
    ) -> None:
        self.path = path
        self.on_line = on_line
        self.max_lines = max_lines
        self.interval = interval
        self.lines = 0
        self._offset = 0
        self._partial = b""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="console-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self._read(final=True)

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            self._read(final=False)

    def _read(self, final: bool) -> None:
        if self.lines > self.max_lines:
            return
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read(256 * 1024)
        except OSError:
            return  # QEMU has not made it yet
        self._offset += len(data)
        buf = self._partial + data
        *complete, self._partial = buf.split(b"\n")
        if len(self._partial) > LINE_LIMIT:
            complete.append(self._partial)
            self._partial = b""
        if final and self._partial:
            complete.append(self._partial)
            self._partial = b""
        for raw in complete:
            self._emit(clean(raw)[:LINE_LIMIT])

    def _emit(self, line: str) -> None:
        self.lines += 1
        if self.lines <= self.max_lines:
            self.on_line(line)
        elif self.lines == self.max_lines + 1:
            self.on_line(f"(console output after {self.max_lines} lines left out)")
