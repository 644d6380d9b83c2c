"""Leftovers of a job whose process was killed (SIGKILL, OOM, power cut): its work directory with
overlay, seed and console log, its port lock, and a QEMU that outlived it.

A job's work directory holds an ``owner`` file that the job process keeps ``flock``ed for as long
as it lives: the kernel drops the lock when the process dies, however it dies, so a directory
whose ``owner`` can be locked is stale, with no pid-reuse guessing. ``sweep`` (run at the start
of every Solstice command) kills a QEMU still running on such a directory's files, removes the
directory, and removes the port lock files nobody holds (ports.py). Directories without an
``owner`` file are left alone: they are made by something else, or are being made right now.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from solstice.errors import VMError
from solstice.files import try_lock
from solstice.vm.ports import try_lease

log = logging.getLogger("solstice.vm.leftovers")

OWNER = "owner"


class WorkdirLock:
    """The job process's hold on its work directory (see the module docstring)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def claim_workdir(workdir: Path) -> WorkdirLock:
    """Mark ``workdir`` as this process's for as long as it lives (release it after emptying it)."""
    # Locked under another name first and then renamed (the lock stays with the file): a sweep
    # never sees an ``owner`` that is not locked yet.
    temp = workdir / f".{OWNER}-{os.getpid()}"
    fd = try_lock(temp)
    if fd is None or (workdir / OWNER).exists():
        if fd is not None:
            os.close(fd)
        temp.unlink(missing_ok=True)
        raise VMError(f"work directory {workdir} is in use by another process")
    os.write(fd, f"{os.getpid()}\n".encode())
    os.rename(temp, workdir / OWNER)
    return WorkdirLock(fd)


@dataclass
class Swept:
    """What a sweep removed."""

    workdirs: list[Path] = field(default_factory=list)
    qemus: list[int] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)


def _qemus_using(workdir: Path) -> list[int]:
    """Pids of QEMU processes whose command line names a file in ``workdir``."""
    prefix = f"{workdir}/"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                argv = fh.read().decode(errors="replace").split("\0")
        except OSError:
            continue  # gone, or not ours to read
        if argv and os.path.basename(argv[0]).startswith("qemu") and any(prefix in a for a in argv):
            found.append(int(entry.name))
    return found


def _sweep_workdir(workdir: Path, swept: Swept) -> None:
    try:
        fd = try_lock(workdir / OWNER)
    except OSError as exc:  # not ours to lock (another user's job), or gone meanwhile
        log.debug("not sweeping %s: %s", workdir, exc)
        return
    if fd is None:
        return  # its job process is alive
    try:
        for pid in _qemus_using(workdir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                swept.qemus.append(pid)
        shutil.rmtree(workdir, ignore_errors=True)
    finally:
        os.close(fd)
    swept.workdirs.append(workdir)


def sweep(runtime_dir: Path) -> Swept:
    """Remove what killed jobs left under ``runtime_dir`` (work directories, QEMUs, port locks).

    Never raises for a directory or lock that is not this user's to remove: that is skipped."""
    swept = Swept()
    # jobs/<uuid>: job processes'; pool/<vm-id>: warm pool keepers' (solstice.images.warm).
    for parent in (runtime_dir / "jobs", runtime_dir / "pool"):
        with contextlib.suppress(OSError):
            for entry in sorted(parent.iterdir()):
                if entry.is_dir() and not entry.is_symlink() and (entry / OWNER).is_file():
                    _sweep_workdir(entry, swept)
    # After the QEMUs: a port lock is free once its job process is gone, QEMU or not.
    ports = runtime_dir / "ports"
    with contextlib.suppress(OSError):
        for entry in sorted(ports.iterdir()):
            stem, dot, ext = entry.name.partition(".")
            if not (dot and ext == "lock" and stem.isdigit()):
                continue
            try:
                lease = try_lease(ports, int(stem))
            except OSError:
                continue
            if lease is not None:
                lease.release()  # unlinks the file while holding it
                swept.ports.append(int(stem))
    if swept.workdirs or swept.qemus:
        log.warning(
            "removed the leftovers of %d killed job(s) under %s (QEMU processes killed: %s)",
            len(swept.workdirs),
            runtime_dir,
            ", ".join(map(str, swept.qemus)) or "none",
        )
    return swept
