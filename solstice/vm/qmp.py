"""QEMU control over QMP (``qemu.qmp``), and the shutdown sequence.

Each command runs on a private event loop with the async ``QMPClient``: its API is the same in
qemu.qmp 0.0.3 and later (the sync ``legacy`` shim renamed ``cmd``/``command`` in between), and a
private loop works from any thread, including during an ExitStack unwind after Ctrl-C.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path
from typing import Any, Protocol

from qemu.qmp import QMPClient, QMPError

from solstice.errors import VMError


class QemuProcess(Protocol):
    """What stopping QEMU needs of its process: a Popen, or a warm VM's vm.remote.RemoteQemu."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


log = logging.getLogger("solstice.vm.qmp")


class QMPUnavailable(VMError):
    """QMP could not be reached or the command failed (QEMU not up yet, or gone)."""


def qmp_command(
    socket_path: Path, command: str, timeout: float = 5.0, arguments: dict[str, Any] | None = None
) -> Any:
    """Connect, run one command, disconnect; return its ``return`` value."""
    if not socket_path.exists():
        # Checked first: qemu.qmp logs every failed connection attempt as an error.
        raise QMPUnavailable(f"QMP {command}: no socket {socket_path} yet")

    async def run() -> Any:
        client = QMPClient("solstice")
        try:
            await asyncio.wait_for(client.connect(str(socket_path)), timeout)
            return await asyncio.wait_for(client.execute(command, arguments), timeout)
        finally:
            await client.disconnect()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run())
    except (TimeoutError, QMPError, OSError, EOFError) as exc:
        raise QMPUnavailable(f"QMP {command}: {type(exc).__name__}: {exc}") from exc
    finally:
        loop.close()


def _wait(qemu: QemuProcess, timeout: float) -> bool:
    try:
        qemu.wait(timeout=max(timeout, 0.0))
        return True
    except subprocess.TimeoutExpired:
        return False


def stop_qemu(
    qemu: QemuProcess,
    qmp_socket: Path,
    powerdown_timeout: float,
    quit_timeout: float = 10.0,
) -> bool:
    """Stop QEMU for good: with ``powerdown_timeout`` > 0 an ACPI powerdown first, waited for that
    long; then ``quit``; then SIGKILL after ``quit_timeout``.

    A job's disk is a throwaway overlay, so its VM gets ``quit`` at once (0). A powerdown is for a
    guest whose disk is kept; ``powerdown_timeout`` (``[vm] shutdown_timeout``) bounds it, since a
    guest may ignore the power button (under TCG a Debian guest may take over a minute). Whatever
    happens in between, even a KeyboardInterrupt, QEMU is killed and reaped before this returns.
    Returns whether the guest powered itself off after the ACPI powerdown.
    """
    try:
        if qemu.poll() is not None:
            return False
        if powerdown_timeout > 0:
            try:
                qmp_command(qmp_socket, "system_powerdown")
                if _wait(qemu, powerdown_timeout):
                    return True
                log.info("guest ignored the ACPI powerdown for %.0f s; quitting QEMU", powerdown_timeout)
            except QMPUnavailable as exc:
                log.debug("%s", exc)
        try:
            qmp_command(qmp_socket, "quit")
        except QMPUnavailable as exc:
            # "quit" may close the socket before its reply arrives: that is success.
            log.debug("%s", exc)
        if _wait(qemu, quit_timeout):
            return False
        log.warning("QEMU (pid %d) did not quit within %.0f s; killing it", qemu.pid, quit_timeout)
    finally:
        if qemu.poll() is None:
            qemu.kill()
        qemu.wait()
    return False
