"""One log (a step's or the job's) spooled to a file, so a long log costs disk, not memory, and the
task's checkpoint stays small.

Lines are masked before they get here. Up to ``FLUSH_AT`` lines wait in memory; ``flush()`` (before
every checkpoint and upload) appends them. The checkpoint holds ``size``, the bytes flushed: after
a restart ``reopen()`` cuts the file back to it, and the events after the checkpoint, redelivered,
write the same lines again (none lost, none twice). Past ``max_bytes`` lines are counted, not kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

FLUSH_AT = 500


@dataclass
class Spool:
    path: str
    max_bytes: int
    size: int = 0  # bytes in the file (flushed)
    kept: int = 0  # lines in the file
    count: int = 0  # lines fed, kept or not
    pending: list[str] = field(default_factory=list)  # not flushed yet; empty in checkpoints

    def add(self, line: str) -> None:
        self.count += 1
        if self.size + sum(len(x) for x in self.pending) + len(line) < self.max_bytes:
            self.pending.append(line if line.endswith("\n") else line + "\n")
            if len(self.pending) >= FLUSH_AT:
                self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        data = "".join(self.pending).encode()
        Path(self.path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)  # the checkpoint that counts these bytes is written next
        finally:
            os.close(fd)
        self.size += len(data)
        self.kept += len(self.pending)
        self.pending = []

    def reopen(self) -> None:
        """After a restart: the file back to the checkpoint's size (later lines come again)."""
        if not self.path:
            return
        p = Path(self.path)
        actual = p.stat().st_size if p.exists() else 0
        if actual > self.size:
            os.truncate(p, self.size)
        elif actual < self.size:  # the file was lost or cut: keep what is left, say so at upload
            self.size, self.kept = actual, 0 if actual == 0 else self.kept

    def lines(self, note: str) -> list[str]:
        """The whole log (flushed first), with ``note`` when lines were not kept."""
        self.flush()
        p = Path(self.path)
        out = p.read_text(errors="replace").splitlines() if self.path and p.exists() else []
        dropped = self.count - len(out)
        if dropped > 0:
            out.append(f"... {dropped} {note}")
        return out

    def remove(self) -> None:
        self.pending = []
        if self.path:
            Path(self.path).unlink(missing_ok=True)
