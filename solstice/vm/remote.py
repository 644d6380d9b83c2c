"""A QEMU that another process started and hands over: a warm pool VM (solstice.images.warm).

The keeper process that booted the VM stays QEMU's parent (it alone can reap it and read its exit
status); the process that took the VM holds a unix-socket connection to the keeper. Over it the
keeper sends one line when QEMU exits (``{"exited": <Popen returncode>}``); when the connection
closes from the taker's side while QEMU runs, the keeper kills QEMU, so a taker that dies, however
it dies, takes its VM with it. ``RemoteQemu`` gives the taker the part of ``subprocess.Popen`` that
stopping a VM needs (poll, wait, kill, pid, returncode).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading

#: The most a keeper's message may be: anything longer is not a keeper speaking.
MAX_LINE = 64 * 1024


def read_line(sock: socket.socket, limit: int = MAX_LINE) -> bytes:
    """One ``\\n``-terminated line (without it); b"" at EOF. Reads byte-wise, so nothing after the
    line is consumed; ValueError past ``limit``."""
    out = bytearray()
    while True:
        b = sock.recv(1)
        if not b:
            return b""
        if b == b"\n":
            return bytes(out)
        out += b
        if len(out) > limit:
            raise ValueError("line too long")


def send_json(sock: socket.socket, data: object) -> None:
    sock.sendall(json.dumps(data).encode() + b"\n")


class RemoteQemu:
    """QEMU as its taker sees it. ``returncode`` comes from the keeper; when the keeper's
    connection breaks without one, the keeper is gone and QEMU with it (it dies with its parent):
    that counts as killed by SIGKILL."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._sock = sock
        self._done = threading.Event()
        sock.settimeout(None)
        self._reader = threading.Thread(target=self._read, name=f"qemu-{pid}-keeper", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        code = -int(signal.SIGKILL)
        try:
            line = read_line(self._sock)
            if line:
                value = json.loads(line).get("exited")
                if isinstance(value, int):
                    code = value
        except (OSError, ValueError, AttributeError):
            pass
        self.returncode = code
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(["qemu"], timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL to QEMU (ours: same user); the keeper reports its end. Closing our end of the
        connection has the keeper kill it too, should the signal not reach it."""
        if self._done.is_set():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)
        if not self._done.wait(5.0):
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
