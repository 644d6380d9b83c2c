"""SIGTERM/SIGINT during a service job: cancel it, and interrupt the main thread only when needed."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
import types
from dataclasses import dataclass

from solstice.job.sink import ServiceSink
from solstice.model import Phase

#: After SIGTERM during the steps: how long the step gets to end before the job is interrupted.
FORCE_AFTER = 4.0


@dataclass
class Cancellation:
    """SIGTERM/SIGINT -> cancel. During the steps the job ends them itself (the step is killed,
    the rest skipped); while the VM boots, or if the steps do not end within FORCE_AFTER, the main
    thread is interrupted (KeyboardInterrupt), which unwinds the job's ExitStack and stops QEMU.
    Never during the teardown, and never inside an event emission."""

    sink: ServiceSink
    event: threading.Event
    armed: bool = False  # the job runs: interrupting it is how it ends quickly
    done: bool = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_force)

    def _on_term(self, signum: int, frame: types.FrameType | None) -> None:
        if self.event.is_set():
            return
        self.event.set()
        with contextlib.suppress(Exception):  # a signal handler may interrupt another write
            name = signal.Signals(signum).name
            print(f"solstice: {name}: cancelling the job", file=sys.stderr, flush=True)
        if self.sink.queue is not None:
            self.sink.queue.stop_waiting()
        if not self.armed or self.done:
            return
        if self.sink.phase == Phase.READY.value:
            main = threading.main_thread().ident
            assert main is not None

            def force() -> None:
                time.sleep(FORCE_AFTER)
                if not self.done:
                    signal.pthread_kill(main, signal.SIGUSR1)

            threading.Thread(target=force, name="cancel-force", daemon=True).start()
        else:
            self._interrupt()

    def _on_force(self, signum: int, frame: types.FrameType | None) -> None:
        if self.event.is_set():
            self._interrupt()

    def _interrupt(self) -> None:
        if self.done or self.sink.final_seen:
            return
        if self.sink.phase in (Phase.TEARDOWN.value, Phase.DONE.value):
            return  # already on its way out; interrupting would only cut the cleanup short
        if self.sink.in_emit:
            self.sink.interrupt_pending = True
            return
        raise KeyboardInterrupt
