"""The ``runner.v1`` / ``ping.v1`` messages and their Connect JSON codec.

Field names and numbers follow the protocol notes (forgejo-runner-protocol.md §2). The codec is the
proto3 JSON mapping as connect-go's protojson uses it (§1.3):

* names in lowerCamel on output; both lowerCamel and proto (snake_case) names accepted on input;
* int64 as JSON strings on output; strings or numbers accepted on input;
* ``bytes`` (``Task.workflow_payload``) as base64;
* ``google.protobuf.Timestamp`` as an RFC 3339 string in UTC (``Z``), 0/3/6 fractional digits;
* ``google.protobuf.Struct`` (``Task.context``) as a plain JSON object;
* enums as their names (``"RESULT_CANCELLED"``); names or integers accepted on input;
* zero values omitted (an all-default message is ``{}``, never an empty body);
* unknown fields ignored on decode (``DiscardUnknown: true``).

Every int field of these messages is an int64 in the proto, so every ``int`` is encoded as a string.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from solstice.errors import SolsticeError


class Result(enum.IntEnum):
    RESULT_UNSPECIFIED = 0
    RESULT_SUCCESS = 1
    RESULT_FAILURE = 2
    RESULT_CANCELLED = 3
    RESULT_SKIPPED = 4


class RunnerStatus(enum.IntEnum):
    RUNNER_STATUS_UNSPECIFIED = 0
    RUNNER_STATUS_IDLE = 1
    RUNNER_STATUS_ACTIVE = 2
    RUNNER_STATUS_OFFLINE = 3


# --- ping.v1 ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PingRequest:
    data: str = ""


@dataclass(frozen=True)
class PingResponse:
    data: str = ""


# --- runner.v1 -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runner:
    id: int = 0
    uuid: str = ""
    token: str = ""
    name: str = ""
    status: RunnerStatus = RunnerStatus.RUNNER_STATUS_UNSPECIFIED
    agent_labels: tuple[str, ...] = ()  # deprecated (Gitea <= 1.20)
    custom_labels: tuple[str, ...] = ()  # deprecated
    version: str = ""
    labels: tuple[str, ...] = ()
    ephemeral: bool = False


@dataclass(frozen=True)
class TaskNeed:
    outputs: Mapping[str, str] = field(default_factory=dict)
    result: Result = Result.RESULT_UNSPECIFIED


@dataclass(frozen=True)
class Task:
    id: int = 0  # the task id (never reused; not the run or job id)
    workflow_payload: bytes = b""  # a workflow with exactly one job (§3.4)
    context: Mapping[str, Any] = field(default_factory=dict)  # Struct: the github context
    secrets: Mapping[str, str] = field(default_factory=dict)
    machine: str = ""  # deprecated, unused
    needs: Mapping[str, TaskNeed] = field(default_factory=dict)
    vars: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StepState:
    id: int = 0  # the 0-based index of the step in the payload's job (§3.4)
    result: Result = Result.RESULT_UNSPECIFIED
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    log_index: int = 0
    log_length: int = 0


@dataclass(frozen=True)
class TaskState:
    id: int = 0
    result: Result = Result.RESULT_UNSPECIFIED
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    steps: tuple[StepState, ...] = ()


@dataclass(frozen=True)
class LogRow:
    time: datetime | None = None
    content: str = ""


@dataclass(frozen=True)
class RegisterRequest:
    name: str = ""
    token: str = ""  # the registration token
    agent_labels: tuple[str, ...] = ()  # deprecated; Gitea <= 1.20 reads it
    custom_labels: tuple[str, ...] = ()  # deprecated
    version: str = ""
    labels: tuple[str, ...] = ()  # label names only (§4)
    ephemeral: bool = False
    capabilities: tuple[str, ...] = ()  # never "cancelling" (§2 notes)


@dataclass(frozen=True)
class RegisterResponse:
    runner: Runner | None = None


@dataclass(frozen=True)
class DeclareRequest:
    version: str = ""
    labels: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeclareResponse:
    runner: Runner | None = None


@dataclass(frozen=True)
class FetchTaskRequest:
    tasks_version: int = 0
    #: Forgejo-only (§2 notes): JSON name ``taskCapacity``; None leaves it out.
    task_capacity: int | None = None


@dataclass(frozen=True)
class FetchTaskResponse:
    task: Task | None = None
    tasks_version: int = 0
    additional_tasks: tuple[Task, ...] = ()  # Forgejo-only


@dataclass(frozen=True)
class UpdateTaskRequest:
    state: TaskState | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)  # only keys not acknowledged yet (§3.5)


@dataclass(frozen=True)
class UpdateTaskResponse:
    state: TaskState | None = None
    sent_outputs: tuple[str, ...] = ()  # every key the server holds


@dataclass(frozen=True)
class UpdateLogRequest:
    task_id: int = 0
    index: int = 0
    rows: tuple[LogRow, ...] = ()
    no_more: bool = False


@dataclass(frozen=True)
class UpdateLogResponse:
    ack_index: int = 0


# --- codec -----------------------------------------------------------------------------------

M = TypeVar("M")


class CodecError(SolsticeError, ValueError):
    """A message that does not decode (names the field)."""


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z``, as protojson writes it: 0, 3, 6 fractional digits."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    base = value.strftime("%Y-%m-%dT%H:%M:%S")
    us = value.microsecond
    if us == 0:
        return base + "Z"
    if us % 1000 == 0:
        return f"{base}.{us // 1000:03d}Z"
    return f"{base}.{us:06d}Z"


_TS_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")


def parse_timestamp(text: str) -> datetime:
    m = _TS_RE.match(text)
    if not m:
        raise CodecError(f"{text!r} is not an RFC 3339 timestamp")
    day, clock, frac, zone = m.groups()
    zone = "+00:00" if zone in ("Z", "z") else zone
    micro = (frac or "0").ljust(6, "0")[:6]  # nanoseconds are truncated to microseconds
    try:
        parsed = datetime.fromisoformat(f"{day}T{clock}.{micro}{zone}")
    except ValueError as exc:
        raise CodecError(f"{text!r} is not an RFC 3339 timestamp: {exc}") from None
    return parsed.astimezone(UTC)


def _is_zero(value: Any) -> bool:
    if value is None or value is False:
        return True
    if isinstance(value, int | str | bytes | tuple | list | Mapping) and not value:
        return True
    return False


def _encode_value(tp: Any, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, enum.IntEnum):
        return value.name
    if isinstance(value, int):
        return str(value)  # int64
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return format_timestamp(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(value)
    if isinstance(value, Mapping):
        args = typing.get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        if vt is Any:
            return json.loads(json.dumps(dict(value)))  # a Struct: plain JSON, copied
        return {str(k): _encode_value(vt, v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        args = typing.get_args(tp)
        return [_encode_value(args[0] if args else Any, v) for v in value]
    return value


def to_json(msg: Any) -> dict[str, Any]:
    """A message as a protojson object (lowerCamel names, zero values omitted)."""
    hints = typing.get_type_hints(type(msg))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if _is_zero(value) and not (f.name == "task_capacity" and value is not None):
            continue
        out[camel(f.name)] = _encode_value(hints[f.name], value)
    return out


def _decode_value(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _decode_value(inner[0], value, where)
    if value is None:  # JSON null is the field's default
        raise _Default()
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_json(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        if isinstance(value, str):
            try:
                return tp[value]
            except KeyError:
                raise CodecError(f"{where}: unknown {tp.__name__} {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return tp(value)
            except ValueError:
                raise CodecError(f"{where}: unknown {tp.__name__} {value}") from None
        raise CodecError(f"{where}: expected an enum name")
    if tp is bool:
        if not isinstance(value, bool):
            raise CodecError(f"{where}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool):
            raise CodecError(f"{where}: expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise CodecError(f"{where}: expected an int64, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise CodecError(f"{where}: expected a string")
        return value
    if tp is bytes:
        if not isinstance(value, str):
            raise CodecError(f"{where}: expected base64 text")
        try:  # protojson accepts standard or URL-safe base64, padded or not
            text = value.replace("-", "+").replace("_", "/")
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise CodecError(f"{where}: invalid base64") from None
    if tp is datetime:
        if not isinstance(value, str):
            raise CodecError(f"{where}: expected an RFC 3339 string")
        return parse_timestamp(value)
    if origin is tuple:
        if not isinstance(value, list):
            raise CodecError(f"{where}: expected a list")
        return tuple(_decode_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is Mapping or tp is Mapping:
        if not isinstance(value, dict):
            raise CodecError(f"{where}: expected an object")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _decode_value(vt, v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where}: unsupported type {tp!r}")


class _Default(Exception):
    pass


def from_json(cls: type[M], data: Any, where: str | None = None) -> M:
    """Decode a protojson object into ``cls``; unknown fields are ignored."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise CodecError(f"{where}: expected an object")
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        for key in (camel(f.name), f.name):
            if key in data:
                try:
                    kwargs[f.name] = _decode_value(hints[f.name], data[key], f"{where}.{f.name}")
                except _Default:
                    pass
                break
    return typing.cast(M, cls(**kwargs))


def encode(msg: Any) -> bytes:
    """The request body: compact JSON, ``{}`` for an all-default message (§1.3)."""
    return json.dumps(to_json(msg), separators=(",", ":")).encode()


def decode(cls: type[M], body: bytes) -> M:
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError(f"{cls.__name__}: not JSON: {exc}") from None
    return from_json(cls, data)


def utcnow() -> datetime:
    return datetime.now(UTC)


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
