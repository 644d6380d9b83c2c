"""The one subprocess helper: every external command Solstice runs goes through here.

It logs the command (never its environment, which may hold secrets), closes stdin, and raises a
typed ``CommandError`` carrying the tail of stderr when the command fails.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from solstice.errors import CommandError

log = logging.getLogger("solstice.proc")

PathArg = str | os.PathLike[str]


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
) -> subprocess.Popen[bytes]:
    """Start a long-running command (QEMU, a job child) and return it; the caller owns its end."""
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
        )
    except FileNotFoundError as exc:
        raise CommandError(argv, None, f"{argv[0]}: not found") from exc
