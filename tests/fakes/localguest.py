"""An in-process stand-in for a booted guest: commands run with a local ``bash -c`` in a temporary
directory that is the guest's home, so JobRun's step semantics run in milliseconds.

The fake's HOME is its root, so the workspace JobRun asks for (``make_dirs``) is a real local
path and put/get are plain file writes/reads. Each command runs in a session of its own, as
under sshd, so the step's pid file names a process group that JobRun's kill reaches.
``freeze()`` stands in for QMP ``stop``: the processes are SIGSTOPped and probes go unanswered.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from solstice.errors import GuestConnectionLost
from solstice.images import Image
from solstice.vm.argv import BootMode
from solstice.vm.profiles import get_profile


def stand_in_image(label: str = "local", base_image: Path = Path("/nonexistent/base.qcow2")) -> Image:
    """An image for a job whose guest is not booted from it (a LocalGuest, or no guest at all)."""
    return Image(
        label=label,
        base_image=base_image,
        image_format="qcow2",
        boot=BootMode.BIOS,
        kernel=None,
        initrd=None,
        cmdline="",
        profile=get_profile("debian"),
        cpus=None,
        memory_mib=None,
    )


class LocalGuest:
    user = "solstice"

    def __init__(self, root: Path, console: str = "fake console: all is well") -> None:
        self.root = root
        self.console = console
        self.hurried = False
        self.commands: list[str] = []
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._groups: set[int] = set()  # every command's process group, also after it exited
        self._lock = threading.Lock()
        self._thawed = threading.Event()
        self._thawed.set()
        self._gone = threading.Event()
        self._ended = ""  # what ended the "VM" (crash()), for exited()

    @classmethod
    def booted(cls, stack: contextlib.ExitStack, **kw: str) -> LocalGuest:
        """A guest whose home is a fresh temporary directory, removed when ``stack`` unwinds."""
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="localguest-")))
        guest = cls(root, **kw)
        stack.callback(guest.close)
        return guest

    # --- the Guest protocol -------------------------------------------------------------------

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
        self._check()
        self.commands.append(command)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root), "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            ["bash", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.root,
            env=env,
            start_new_session=True,
        )
        with self._lock:
            self._procs.add(proc)
            self._groups.add(proc.pid)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        threading.Thread(target=self._feed, args=(proc.stdin, stdin or b""), daemon=True).start()
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ, on_stdout)
        sel.register(proc.stderr, selectors.EVENT_READ, on_stderr)
        stop_deadline: float | None = None
        try:
            while sel.get_map() or proc.poll() is None:
                if self._gone.is_set():
                    raise GuestConnectionLost("the SSH connection to the guest dropped (fake)")
                if stop is not None and stop.is_set():
                    stop_deadline = stop_deadline or time.monotonic() + stop_grace
                    if time.monotonic() >= stop_deadline:
                        return None  # as the real guest: the process may still run
                if not sel.get_map():
                    time.sleep(0.02)
                    continue
                for key, _ in sel.select(0.1):
                    data = os.read(key.fd, 65536)
                    if data:
                        key.data(data)
                    else:
                        sel.unregister(key.fileobj)
            # sshd reports no exit status for a command killed by a signal: -1
            return proc.returncode if proc.returncode >= 0 else -1
        finally:
            sel.close()
            proc.stdout.close()
            proc.stderr.close()
            if proc.poll() is not None:
                with self._lock:
                    self._procs.discard(proc)

    def put(self, path: str, data: bytes, mode: int) -> None:
        self._check()
        Path(path).write_bytes(data)
        os.chmod(path, mode)

    def get(self, path: str, limit: int | None = None) -> bytes:
        self._check()
        with open(path, "rb") as fh:
            return fh.read() if limit is None else fh.read(limit + 1)

    def make_dirs(self, relative: Sequence[str]) -> str:
        self._check()
        for rel in relative:
            (self.root / rel).mkdir(parents=True, exist_ok=True)
        return str(self.root)

    def console_tail(self, lines: int = 20) -> str:
        return "\n".join(self.console.splitlines()[-lines:])

    def hurry(self) -> None:
        self.hurried = True

    def probe(self) -> None:
        while not self._thawed.wait(0.05):
            if self._gone.is_set():
                break
        self._check()

    def disconnect(self) -> None:
        self._gone.set()

    def exited(self, wait: float = 0.0) -> str:
        return self._ended

    # --- for tests ----------------------------------------------------------------------------

    def freeze(self) -> None:
        """Like QMP ``stop``: nothing in the guest runs and nothing answers."""
        self._thawed.clear()
        self._signal_all(signal.SIGSTOP)

    def crash(self, why: str = "QEMU exited (killed by signal 9)") -> None:
        """Like QEMU killed under the job: everything in the guest dies, the connection drops."""
        self._ended = why
        self.close()

    def close(self) -> None:
        """The VM is gone: every process of it is killed."""
        self._gone.set()
        self._signal_all(signal.SIGKILL)
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            proc.wait()

    def _signal_all(self, sig: int) -> None:
        with self._lock:
            groups = list(self._groups)
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)

    def _check(self) -> None:
        if self._gone.is_set():
            raise GuestConnectionLost("the SSH connection to the guest dropped (fake)")

    @staticmethod
    def _feed(pipe: IO[bytes], data: bytes) -> None:
        with contextlib.suppress(OSError):
            pipe.write(data)
        with contextlib.suppress(OSError):
            pipe.close()
