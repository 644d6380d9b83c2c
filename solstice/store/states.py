"""The job state machine.

::

    queued -> accepted -> starting -> running -> succeeded | failed | cancelled | errored
    queued -> cancelled
    accepted, starting -> cancelled | errored

Terminal states never change again. ``Store.finish`` is the one operation that may jump from any
non-terminal state straight to a terminal one, because a job's outcome is authoritative.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from solstice.model.core import Result


class JobState(enum.StrEnum):
    QUEUED = "queued"  # recorded, no dispatcher has taken responsibility yet
    ACCEPTED = "accepted"  # a dispatcher recorded it (the broker message may now be acked)
    STARTING = "starting"  # claimed by one host; its unit is being started
    RUNNING = "running"  # the job process runs (VM booting or steps running)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ERRORED = "errored"  # infrastructure error: not the user's build

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.ERRORED}
)
NON_TERMINAL: frozenset[JobState] = frozenset(set(JobState) - TERMINAL)
#: Where a job is while a host has it: what a restarted dispatcher reconciles against its units.
ACTIVE: frozenset[JobState] = frozenset({JobState.STARTING, JobState.RUNNING})

TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.ACCEPTED, JobState.CANCELLED}),
    JobState.ACCEPTED: frozenset({JobState.STARTING, JobState.CANCELLED, JobState.ERRORED}),
    JobState.STARTING: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.ERRORED}),
    JobState.RUNNING: TERMINAL,
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.ERRORED: frozenset(),
}

#: The column holding the time a job entered each state (all terminal states share one).
TIMESTAMP_COLUMN: Mapping[JobState, str] = {
    JobState.QUEUED: "queued_at",
    JobState.ACCEPTED: "accepted_at",
    JobState.STARTING: "starting_at",
    JobState.RUNNING: "running_at",
    **{s: "finished_at" for s in TERMINAL},
}

RESULT_STATE: Mapping[Result, JobState] = {
    Result.SUCCESS: JobState.SUCCEEDED,
    Result.FAILURE: JobState.FAILED,
    Result.CANCELLED: JobState.CANCELLED,
    Result.ERROR: JobState.ERRORED,
}
STATE_RESULT: Mapping[JobState, Result] = {state: result for result, state in RESULT_STATE.items()}


def allowed(from_state: JobState, to_state: JobState) -> bool:
    return to_state in TRANSITIONS[from_state]
