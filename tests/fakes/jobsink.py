"""An event sink for job tests: keeps every event (thread-safe) and can react to each one."""

from __future__ import annotations

import threading
from collections.abc import Callable

from solstice.model import JobEvent


class Collect:
    def __init__(self, on_event: Callable[[JobEvent], None] | None = None) -> None:
        self.events: list[JobEvent] = []
        self.lock = threading.Lock()
        self.on_event = on_event

    def emit(self, event: JobEvent) -> None:
        with self.lock:
            self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
