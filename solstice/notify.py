"""systemd notifications (READY, STATUS, WATCHDOG) via sdnotify; silent when not under systemd."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._n = sdnotify.SystemdNotifier() if self._enabled else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, text: str) -> None:
        """Any sd_notify message (a service loop sends its own READY/WATCHDOG/STATUS lines)."""
        if self._n is not None:
            self._n.notify(text)

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def start_watchdog(self, alive: Callable[[], bool] = lambda: True) -> None:
        """Ping at half the interval systemd asked for (WATCHDOG_USEC), from a daemon thread, but
        only while ``alive()`` says the work makes progress: a ping regardless would keep a hung
        job's unit running until RuntimeMaxSec (the job passes solstice.job.liveness)."""
        usec = os.environ.get("WATCHDOG_USEC")
        if not self._enabled or not usec or not usec.isdigit():
            return
        interval = int(usec) / 2e6

        def loop() -> None:
            while not self._stop.wait(interval):
                if alive():
                    self.send("WATCHDOG=1")

        self._thread = threading.Thread(target=loop, name="watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
