"""Host ports for the guests' SSH forwards, free of collisions between concurrent jobs.

The kernel picks a free loopback port (bind to port 0), and the job then takes an exclusive
``flock`` on ``<ports_dir>/<port>.lock`` for as long as its VM lives. Between our probe socket
closing and QEMU binding the port, another job's probe may be handed the same number; its flock
then fails and it asks the kernel again. Once QEMU listens, the kernel hands the port to nobody.
flock (unlike fcntl locks) belongs to the open file description, so it also separates threads of
one process. A port taken by an unrelated program in that window makes QEMU fail its host
forward; the caller retries with a new lease (machine.py).
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from types import TracebackType

from solstice.errors import VMError
from solstice.files import try_lock

HOST = "127.0.0.1"
_ATTEMPTS = 100


class PortLease:
    """A port reserved for one VM; ``release()`` (or leaving the ``with``) frees it."""

    def __init__(self, port: int, path: Path, fd: int) -> None:
        self.port = port
        self.path = path
        self._fd: int | None = fd
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlink the lock file while still holding the lock, then close it. Idempotent."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def __enter__(self) -> PortLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"PortLease(port={self.port}, held={self.held})"


def try_lease(ports_dir: Path, port: int) -> PortLease | None:
    """Lock ``port`` for this caller, or return None when another job holds it."""
    path = ports_dir / f"{port}.lock"
    fd = try_lock(path)
    if fd is None:
        return None
    # The holder before us may have unlinked the file between our open and our flock: then we
    # locked an orphaned inode and a third job could lock a new file of the same name.
    try:
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return PortLease(port, path, fd)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def allocate_port(ports_dir: Path) -> PortLease:
    """A free loopback port, locked for the caller until ``release()``."""
    ports_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(_ATTEMPTS):
        lease = try_lease(ports_dir, _free_port())
        if lease is not None:
            return lease
    raise VMError(f"no free port for the SSH forward after {_ATTEMPTS} attempts (locks in {ports_dir})")
