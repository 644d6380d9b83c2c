"""The one subprocess helper: every external command Solstice runs goes through here.

It logs the command (never its environment, which may hold secrets), closes stdin, and raises a
typed ``CommandError`` carrying the tail of stderr when the command fails.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from solstice.errors import CommandError

log = logging.getLogger("solstice.proc")

PathArg = str | os.PathLike[str]


#: prctl(2) option: the signal the kernel sends a process when the thread that forked it exits.
_PR_SET_PDEATHSIG = 1
#: Resolved now, not in the forked child, where only async-signal-safe work belongs.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with(parent: int) -> Callable[[], None]:
    """A preexec hook: SIGKILL this child when its parent dies, also by SIGKILL. If the parent
    died before the prctl took effect (the child was reparented meanwhile), die now."""

    def hook() -> None:
        if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(127)

    return hook


def _argv(cmd: Sequence[PathArg]) -> list[str]:
    return [os.fspath(c) for c in cmd]


def run(
    cmd: Sequence[PathArg],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion; raise CommandError when it fails and ``check`` is set."""
    argv = _argv(cmd)
    log.debug("+ %s", shlex.join(argv))
    try:
        proc = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(argv, None, f"{argv[0]}: not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, None, f"timed out after {timeout} s") from exc
    if check and proc.returncode != 0:
        stderr = (proc.stderr or b"").decode(errors="replace")
        raise CommandError(argv, proc.returncode, stderr)
    return proc


def spawn(
    cmd: Sequence[PathArg],
    *,
    stdout: int | None = subprocess.DEVNULL,
    stderr: int | None = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    pass_fds: Sequence[int] = (),
    new_session: bool = False,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a long-running command (QEMU, a job child) and return it; the caller owns its end.

    ``die_with_parent``: the kernel SIGKILLs the command when this process dies, however (Linux's
    PR_SET_PDEATHSIG). It fires when the *thread* that started the command ends, so call this from
    a thread that outlives the command (the job's main thread does)."""
    argv = _argv(cmd)
    log.debug("+ %s &", shlex.join(argv))
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            start_new_session=new_session,
            preexec_fn=_die_with(os.getpid()) if die_with_parent else None,
        )
    except FileNotFoundError as exc:
        raise CommandError(argv, None, f"{argv[0]}: not found") from exc
