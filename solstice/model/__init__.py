"""The data Solstice passes between its rooms: frozen dataclasses, enums, and their JSON.

Standard library only. Everything here round-trips through ``to_dict``/``from_dict`` (and so JSON)
without loss; messages carry an explicit ``schema_version``.
"""

from solstice.model.core import (
    EVENT_SCHEMA,
    REQUEST_SCHEMA,
    DebugAccess,
    EventKind,
    EventSink,
    JobEvent,
    JobRequest,
    JobSpec,
    Outcome,
    Phase,
    Result,
    Size,
    Source,
    Step,
    StepKind,
    Stream,
    from_dict,
    to_dict,
)

__all__ = [
    "EVENT_SCHEMA",
    "REQUEST_SCHEMA",
    "DebugAccess",
    "EventKind",
    "EventSink",
    "JobEvent",
    "JobRequest",
    "JobSpec",
    "Outcome",
    "Phase",
    "Result",
    "Size",
    "Source",
    "Step",
    "StepKind",
    "Stream",
    "from_dict",
    "to_dict",
]
