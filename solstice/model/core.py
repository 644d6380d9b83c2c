"""Job, step and event records (see the package docstring)."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

REQUEST_SCHEMA = "jobrequest.v1"
EVENT_SCHEMA = "jobevent.v1"


class Source(enum.StrEnum):
    LOCAL = "local"
    FORGEJO = "forgejo"
    GITHUB = "github"


class StepKind(enum.StrEnum):
    RUN = "run"
    #: ``uses: actions/checkout@...``, implemented by Solstice on the host.
    CHECKOUT = "checkout"


class Outcome(enum.StrEnum):
    """A step's outcome/conclusion, spelled as in the ``steps`` context."""

    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class Result(enum.StrEnum):
    """A job's result. ``error`` is infrastructure (boot, SSH, image), never the user's build."""

    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"
    ERROR = "error"


class EventKind(enum.StrEnum):
    JOB_STARTED = "job_started"
    PHASE = "phase"
    STEP_STARTED = "step_started"
    LOG = "log"
    STEP_FINISHED = "step_finished"
    JOB_FINISHED = "job_finished"


class Phase(enum.StrEnum):
    """Host-side phases of a job, for live status and per-phase latency."""

    PREPARE = "prepare"  # overlay, key, seed
    BOOT = "boot"  # QEMU started, waiting for SSH
    READY = "ready"  # SSH answered with our key
    TEARDOWN = "teardown"  # VM shutdown and cleanup started
    DONE = "done"  # cleanup finished


class Stream(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    #: Lines written by Solstice itself (setup, errors, annotations).
    SYSTEM = "system"


@dataclass(frozen=True)
class Step:
    """One step of a job, as written: expressions are kept unevaluated and resolved at run time,
    because ``if:``, ``env:`` and ``run:`` may read the outcomes and outputs of earlier steps."""

    number: int  # 1-based, as users count steps ("step 3")
    name: str  # the display name: `name:`, else "Run <first line of run>"
    kind: StepKind = StepKind.RUN
    id: str | None = None
    run: str = ""
    shell: str | None = None  # None: job defaults, then the guest profile's default
    working_directory: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    with_: Mapping[str, str] = field(default_factory=dict)  # `with:` inputs (checkout only)
    if_: str = ""  # empty means success()
    continue_on_error: bool | str = False  # bool or an expression string
    timeout_minutes: float | str | None = None  # number or an expression string
    line: int = 0  # line of the step in the workflow file


@dataclass(frozen=True)
class JobSpec:
    """A job resolved from a workflow: one matrix combination, steps in order."""

    key: str  # the job's id under `jobs:`
    name: str  # display name, with matrix values: "test (3.11, linux)"
    runs_on: tuple[str, ...]  # labels after expression evaluation
    steps: tuple[Step, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # workflow env overlaid by job env
    shell: str | None = None  # defaults.run.shell (job over workflow)
    working_directory: str | None = None  # defaults.run.working-directory
    matrix: Mapping[str, Any] = field(default_factory=dict)
    timeout_minutes: float | str = 360
    continue_on_error: bool | str = False
    if_: str = ""
    needs: tuple[str, ...] = ()
    outputs: Mapping[str, str] = field(default_factory=dict)
    workflow_name: str = ""
    workflow_file: str = ""
    line: int = 0


@dataclass(frozen=True)
class Size:
    """What the job (or the command line) asks for; None: not asked. The host decides the rest
    (solstice.images.plan: the image's default size, then ``[vm]``). In ``jobrequest.v1`` an absent
    or null field is unset."""

    cpus: int | None = None
    memory_mib: int | None = None
    disk_gib: int | None = None  # grow the overlay to this size; None keeps the image's


@dataclass(frozen=True)
class DebugAccess:
    """Who may enter the VM of this job if it fails and keeps its VM (opt-in debug SSH,
    docs/debug-ssh.md): the forge user who triggered the job and their public SSH keys as the
    forge publishes them. Public keys are not secret. Added to ``jobrequest.v1`` as an optional
    field (``JobRequest.debug_access``, absent in older requests); ``version`` numbers this
    record's own shape."""

    user: str
    public_keys: tuple[str, ...] = ()
    #: Why there are no keys ("" when there are): what the job's log says instead.
    problem: str = ""
    version: int = 1


@dataclass(frozen=True)
class JobRequest:
    """Everything a job process needs to run one job; the unit of work on the queue."""

    job_id: str  # uuid; the idempotency key
    job: JobSpec
    label: str  # the image label chosen for runs_on
    source: Source = Source.LOCAL
    source_ids: Mapping[str, str] = field(default_factory=dict)  # the forge's own ids
    repository: str = ""  # owner/name, or a local path in local mode
    commit: str = ""
    ref: str = ""
    #: Where checkout takes the tree from: a local directory (local mode) or a clone URL.
    checkout_source: str = ""
    #: Plaintext secrets: only inside one process (local mode, or the job process after unsealing).
    secrets: Mapping[str, str] = field(default_factory=dict)
    #: The secrets as they travel and rest (queue, request files): encrypted with the installation's
    #: secrets key (solstice.secrets); ``secrets`` is empty whenever this is set.
    sealed_secrets: str = ""
    #: Extra contexts for expressions: github, vars, needs, inputs (JSON values).
    contexts: Mapping[str, Any] = field(default_factory=dict)
    size: Size = field(default_factory=Size)
    debug: bool = False
    reply_to: str = ""
    #: Set by the poller only for jobs that ask for debug SSH (SOLSTICE_DEBUG_SSH); None otherwise
    #: and in requests written before the field existed.
    debug_access: DebugAccess | None = None
    schema_version: str = REQUEST_SCHEMA


@dataclass(frozen=True)
class JobEvent:
    """One thing that happened in a job. ``seq`` is gap-free per job, starting at 1."""

    job_id: str
    seq: int
    time: float  # seconds since the epoch
    kind: EventKind
    step: int | None = None  # step number, or None for job-level lines
    stream: Stream | None = None
    text: str = ""  # the log line (masked), the phase name, or the step name
    outcome: Outcome | None = None  # step finished: before continue-on-error
    conclusion: Outcome | None = None  # step finished: after continue-on-error
    exit_code: int | None = None
    result: Result | None = None  # job finished
    message: str = ""  # why: the error or annotation text
    outputs: Mapping[str, str] = field(default_factory=dict)
    schema_version: str = EVENT_SCHEMA


class EventSink(Protocol):
    """Where a job's events go: the terminal in local mode, RabbitMQ in the service."""

    def emit(self, event: JobEvent) -> None: ...


# --- JSON -------------------------------------------------------------------------------------

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """A dataclass (nested, with enums, tuples, mappings) as plain JSON-able values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(cls: type[T], data: Any) -> T:
    """Build ``cls`` from ``to_dict`` output; raises ValueError naming the bad field."""
    return typing.cast(T, _convert(cls, data, cls.__name__))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{where}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = set(value) - names
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _convert(hints[f.name], value[f.name], f"{where}.{f.name}")
        try:
            return tp(**kwargs)
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError as exc:
            raise ValueError(f"{where}: {value!r} is not one of {[m.value for m in tp]}") from exc
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list")
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string")
        return value
    raise TypeError(f"{where}: unsupported type {tp!r}")
