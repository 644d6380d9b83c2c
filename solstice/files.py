"""Atomic file writes (a reader sees the old file or the new one, never half of one) and the one
non-blocking file lock (port leases, work-directory owners, debug-SSH slots, image pulls)."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o600, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    The file is created with ``mode`` from the start (a secret is never readable by others, not
    even for a moment). ``durable`` fsyncs the file before the rename, for state that must survive
    a power loss (checkpoints, registrations)."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(raw)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def try_lock(path: Path, *, shared: bool = False, mode: int = 0o600) -> int | None:
    """An fd of ``path`` holding an flock: exclusive (the file is created with ``mode`` if
    missing), or ``shared`` for readers (which never create it: FileNotFoundError). None when
    another open file description holds it (another process, or this one). Never follows a
    symbolic link."""
    flags = os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd
