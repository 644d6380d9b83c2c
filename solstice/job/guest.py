"""What a job needs of its guest, and how it gets one: the seam between the steps and the VM.

``solstice.vm.machine.Guest`` (a QEMU guest over SSH) is the real one; tests pass an in-process
stand-in (tests/fakes/localguest.py) so that step semantics run without booting anything.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Protocol


class Guest(Protocol):
    """A running guest as the job uses it (see docs/vm.md for the real one's semantics)."""

    #: The login user the steps run as.
    user: str

    def exec(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        on_stdout: Callable[[bytes], None],
        on_stderr: Callable[[bytes], None],
        stop: threading.Event | None = None,
        stop_grace: float = 10.0,
    ) -> int | None:
        """Run ``command``; its exit status, -1 without one, None when ``stop`` ended the wait."""
        ...

    def put(self, path: str, data: bytes, mode: int) -> None: ...

    def get(self, path: str, limit: int | None = None) -> bytes:
        """The file's content (at most ``limit`` + 1 bytes, so that the caller sees it is longer);
        FileNotFoundError when it does not exist."""
        ...

    def make_dirs(self, relative: Sequence[str]) -> str:
        """Create the directories (parents too) under the login's home; return the home's
        absolute path. Raises OSError when one cannot be made."""
        ...

    def console_tail(self, lines: int = 20) -> str: ...

    def hurry(self) -> None:
        """Skip the graceful powerdown when this guest is stopped."""
        ...

    def probe(self) -> None:
        """Return once the guest has answered a no-op request; a frozen guest never answers.
        Raises GuestConnectionLost when the connection is gone."""
        ...

    def disconnect(self) -> None:
        """Drop the connection now, from any thread: every call blocked on it raises
        GuestConnectionLost."""
        ...

    def exited(self, wait: float = 0.0) -> str:
        """ "" while the VM runs; once it ended, what ended it, first line first ("QEMU exited
        (killed by signal 9)"), then what it said. ``wait``: seconds to wait for that end."""
        ...


#: Boots (or otherwise provides) the job's guest; everything it makes is undone by the stack.
Boot = Callable[[contextlib.ExitStack], Guest]
