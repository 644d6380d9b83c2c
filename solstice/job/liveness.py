"""Is the job making progress? The rule behind its systemd watchdog, and the guest monitor.

The job counts as alive while it prepares and boots within its boot timeout, while its guest is
up and answers (probed every few seconds), and while it tears down within a bounded time. A guest
that does not answer for ``unresponsive_after`` seconds (vCPUs stopped, kernel hung, sshd gone) is
given up: the monitor drops the connection, so whatever the job was waiting for fails at once,
and the job ends ``error`` with GuestUnresponsive. The watchdog allows ``WATCHDOG_GRACE`` more
before it calls the job dead, so it fires only when the job process itself fails to react.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

from solstice.errors import InfraError
from solstice.job.guest import Guest

log = logging.getLogger("solstice.job")

#: How much longer the watchdog waits than the job's own reaction (seconds).
WATCHDOG_GRACE = 30.0
#: Creating the overlay and seed before QEMU starts, on top of the boot timeout (seconds).
PREPARE_ALLOWANCE = 60.0
#: Stopping QEMU after its powerdown wait: QMP quit, 10 s, SIGKILL, files removed (seconds).
TEARDOWN_ALLOWANCE = 30.0


class GuestUnresponsive(InfraError):
    """The guest stopped answering while the job ran: an infrastructure error."""


class Stage(enum.Enum):
    STARTING = "starting"  # prepare and boot
    RUNNING = "running"  # the guest is up: steps
    TEARDOWN = "teardown"
    HOLD = "hold"  # a failed job's VM kept for debug SSH, until a known time


class GuestMonitor:
    """Probes the guest every ``interval`` seconds from a thread of its own; when no probe has been
    answered for ``unresponsive_after`` seconds it gives the guest up (``tripped``)."""

    def __init__(
        self,
        guest: Guest,
        unresponsive_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.guest = guest
        self.unresponsive_after = unresponsive_after
        self.interval = min(5.0, unresponsive_after / 4)
        self.clock = clock
        self.last_answer = clock()
        self.tripped = threading.Event()
        self._stop = threading.Event()
        self._probing = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="guest-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def silent_for(self) -> float:
        return self.clock() - self.last_answer

    def _probe(self) -> None:
        try:
            self.guest.probe()
            self.last_answer = self.clock()
        except Exception as exc:  # the connection is gone: the job's own calls say so
            log.info("guest probe: %s: %s", type(exc).__name__, exc)
        finally:
            self._probing.release()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            # A probe that does not return is left waiting; no second one piles up behind it.
            if self._probing.acquire(blocking=False):
                threading.Thread(target=self._probe, name="guest-probe", daemon=True).start()
            if self.silent_for() >= self.unresponsive_after:
                log.error("the guest has not answered for %.0f s: giving it up", self.silent_for())
                self.tripped.set()
                self.guest.hurry()  # a frozen guest ignores the power button
                self.guest.disconnect()
                return

    def error(self) -> GuestUnresponsive:
        tail = self.guest.console_tail()
        return GuestUnresponsive(
            f"the guest stopped responding: no answer over SSH for {self.unresponsive_after:g} s"
            + (f".\nLast console lines:\n{tail}" if tail else " (the console is empty)"),
            hint="the guest froze or hung (kernel, sshd or its network); see its console above",
        )


class Liveness:
    """The job's stage and whether it counts as alive, for the watchdog (``alive``)."""

    def __init__(
        self,
        boot_timeout: float,
        shutdown_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.boot_timeout = boot_timeout
        self.shutdown_timeout = shutdown_timeout
        self.clock = clock
        self.stage = Stage.STARTING
        self.deadline = clock() + boot_timeout + PREPARE_ALLOWANCE
        self.monitor: GuestMonitor | None = None

    def running(self, monitor: GuestMonitor) -> None:
        self.monitor = monitor
        self.stage = Stage.RUNNING

    def hold(self, seconds: float) -> None:
        """The VM is kept for debug SSH for ``seconds``: alive until then, no guest probes."""
        if self.monitor is not None:
            self.monitor.stop()
        self.stage = Stage.HOLD
        self.deadline = self.clock() + seconds + TEARDOWN_ALLOWANCE

    def teardown(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        self.stage = Stage.TEARDOWN
        self.deadline = self.clock() + self.shutdown_timeout + TEARDOWN_ALLOWANCE

    def alive(self) -> bool:
        if self.stage is Stage.RUNNING and self.monitor is not None:
            return self.monitor.silent_for() < self.monitor.unresponsive_after + WATCHDOG_GRACE
        return self.clock() < self.deadline
