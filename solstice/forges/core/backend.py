"""What a forge supplies to the poller core: a ``Backend`` (the forge's client behind five calls) and,
per task, a ``Report`` (the forge's reporter: JobEvents in, the forge's log and state out).

The core owns everything else (the loop, capacity, publishing, cancel, checkpoints, restart
resume, backoff); a backend raises the core's errors (``solstice.forges.core.errors``)::

    declare()                      Declare / keep the runner online; also the keepalive
    fetch() -> [task]              new tasks, possibly none; the backend keeps its own cursor
    task_key(task) -> str          the task's id, unique per backend (file name of its checkpoint)
    admit(task, reply_to) -> Admission
                                   translate the task: a JobRequest to publish, or a task that ends
                                   here (refused: it cannot run; skipped: its ``if:`` is false)
    report(report, alive) -> bool  one round of log and state updates; True when the forge asked
                                   to cancel the task; ``alive()`` between requests (watchdog)
    restore(checkpoint) -> Report  a Report from ``Report.checkpoint()`` after a restart
    close()
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from solstice.model import JobEvent, JobRequest, Result

T = TypeVar("T")


class Report(Protocol):
    """One task's reporting state, fed the job's events in seq order (duplicates are ignored).

    ``checkpoint()`` is a JSON-able snapshot; its ``"mask"`` entry (secret values) is sealed by the
    core before it reaches the disk.
    """

    @property
    def finished(self) -> bool:
        """The job's final event was fed (or ``finish_here`` was called)."""

    @property
    def done(self) -> bool:
        """The forge has everything: this task can be forgotten."""

    @property
    def last_seq(self) -> int:
        """The highest event seq fed; events up to it are covered by a checkpoint taken now."""

    @property
    def buffered_rows(self) -> int:
        """Log lines held in memory that the forge has not acknowledged."""

    @property
    def buffered_bytes(self) -> int:
        """Characters of those lines (long lines fill memory long before the row count)."""

    @property
    def result(self) -> str:
        """The job's ``Result`` value once finished, else ``""``."""

    def feed(self, event: JobEvent) -> None: ...

    def note(self, text: str, time: float) -> None:
        """A line of the runner's own in the task's log."""

    def finish_here(self, result: Result, message: str, time: float) -> None:
        """End the task without the job's final event (it never ran, or did not confirm a cancel)."""

    def checkpoint(self) -> dict[str, Any]: ...


class Verdict(enum.Enum):
    JOB = "job"  # publish the request; the job's events drive the report
    REFUSED = "refused"  # it cannot run here: the report fails the task with the reason
    SKIPPED = "skipped"  # its if: is false: the report ends it as skipped, no VM


@dataclass(frozen=True)
class Admission:
    """A fetched task, translated. ``request`` is sealed; set only for ``Verdict.JOB``."""

    key: str
    verdict: Verdict
    report: Report
    request: JobRequest | None = None
    reason: str = ""


@dataclass(frozen=True)
class PollerSettings:
    """The poller's knobs, from the forge's configuration section."""

    capacity: int
    fetch_interval: float
    report_interval: float
    max_backoff: float


class Backend(Protocol[T]):
    """A forge's runner protocol as the core drives it (``T`` is the forge's task type)."""

    #: The forge's registry name (``forgejo``, ``github``): logs, the broker connection's name.
    forge: str
    #: For logs and STATUS: the runner's name and the forge's URL.
    name: str
    url: str
    #: The labels the runner was registered/declared with; a job's queue is one of them.
    labels: tuple[str, ...]
    #: The broker address (reply_to) the jobs' events come back to.
    address: str
    settings: PollerSettings
    #: Where the poller keeps its task checkpoints (<state_dir>/tasks).
    state_dir: Path

    def declare(self) -> None: ...

    def fetch(self) -> Sequence[T]: ...

    def task_key(self, task: T) -> str: ...

    def admit(self, task: T, *, reply_to: str) -> Admission: ...

    def report(self, report: Report, *, alive: Callable[[], None]) -> bool: ...

    def restore(self, checkpoint: dict[str, Any]) -> Report: ...

    def close(self) -> None: ...
