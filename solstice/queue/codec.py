"""Message bodies: UTF-8 JSON of ``solstice.model.to_dict``, versioned by ``schema_version``.

Decoding is strict: a body that is not a JSON object, lacks ``schema_version``, carries a version
this code does not know, or does not fit the dataclass raises :class:`InvalidMessage` with a short
reason (never the body: a JobRequest can carry secrets). Consumers dead-letter such messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from solstice.model import (
    EVENT_SCHEMA,
    REQUEST_SCHEMA,
    EventKind,
    JobEvent,
    JobRequest,
    Outcome,
    Result,
    Stream,
    from_dict,
    to_dict,
)
from solstice.model.masking import MASK, mask_tree, mask_values
from solstice.queue.errors import InvalidMessage

#: Schema of a control message (``CancelJob``) on the control exchange.
CANCEL_SCHEMA = "jobcancel.v1"

#: Longest reason we put into a header or a log line.
MAX_REASON = 500

T = TypeVar("T")


@dataclass(frozen=True)
class CancelJob:
    """'Cancel job <uuid>': fanned out to every dispatcher; the one running it stops the unit."""

    job_id: str
    reason: str = ""
    schema_version: str = CANCEL_SCHEMA


def _dump(obj: Any, expected: str) -> bytes:
    version = getattr(obj, "schema_version", None)
    if version != expected:
        raise InvalidMessage(f"cannot encode schema_version {version!r}: this code writes {expected!r}")
    return json.dumps(to_dict(obj), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_object(body: bytes) -> dict[str, Any]:
    """A message body as a JSON object; InvalidMessage with a short reason (never the body) else."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        raise InvalidMessage(_clip(f"not JSON: {exc}")) from None
    if not isinstance(data, dict):
        raise InvalidMessage(f"not a JSON object but {type(data).__name__}")
    return data


def _load(cls: type[T], body: bytes, expected: str) -> T:
    data = json_object(body)
    if "schema_version" not in data:
        raise InvalidMessage(f"no schema_version (expected {expected!r})")
    version = data["schema_version"]
    if version != expected:
        raise InvalidMessage(_clip(f"unknown schema_version {version!r} (expected {expected!r})"))
    try:
        return from_dict(cls, data)
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(_clip(f"not a valid {expected}: {exc}")) from None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def encode_request(request: JobRequest) -> bytes:
    return _dump(request, REQUEST_SCHEMA)


def decode_request(body: bytes) -> JobRequest:
    return _load(JobRequest, body, REQUEST_SCHEMA)


# --- jobevent.v1: the one JobEvent codec ------------------------------------------------------
# Hand-written for speed, since a job can print tens of thousands of lines a second (``from_dict``
# validates through type hints, about 200 us per event); tests check it agrees with
# ``to_dict``/``from_dict``. Single events and event batches (queue.batch) both use it.

#: Fields of a jobevent.v1 object (the JobEvent dataclass).
EVENT_FIELDS = frozenset(
    {
        "job_id",
        "seq",
        "time",
        "kind",
        "step",
        "stream",
        "text",
        "outcome",
        "conclusion",
        "exit_code",
        "result",
        "message",
        "outputs",
        "schema_version",
    }
)


def event_document(event: JobEvent) -> dict[str, Any]:
    """``event`` as a compact jobevent.v1 object (default-valued optional fields left out)."""
    doc: dict[str, Any] = {
        "job_id": event.job_id,
        "seq": event.seq,
        "time": event.time,
        "kind": event.kind.value,
    }
    if event.step is not None:
        doc["step"] = event.step
    if event.stream is not None:
        doc["stream"] = event.stream.value
    if event.text:
        doc["text"] = event.text
    if event.outcome is not None:
        doc["outcome"] = event.outcome.value
    if event.conclusion is not None:
        doc["conclusion"] = event.conclusion.value
    if event.exit_code is not None:
        doc["exit_code"] = event.exit_code
    if event.result is not None:
        doc["result"] = event.result.value
    if event.message:
        doc["message"] = event.message
    if event.outputs:
        doc["outputs"] = dict(event.outputs)
    doc["schema_version"] = event.schema_version
    return doc


def encode_event(event: JobEvent) -> bytes:
    if event.schema_version != EVENT_SCHEMA:
        raise InvalidMessage(
            f"cannot encode schema_version {event.schema_version!r}: this code writes {EVENT_SCHEMA!r}"
        )
    return json.dumps(event_document(event), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_KINDS = {k.value: k for k in EventKind}
_STREAMS = {s.value: s for s in Stream}
_OUTCOMES = {o.value: o for o in Outcome}
_RESULTS = {r.value: r for r in Result}


def _enum(table: Mapping[str, Any], value: Any, name: str) -> Any:
    if value is None:
        return None
    try:
        return table[value]
    except (KeyError, TypeError):
        raise ValueError(f"JobEvent.{name}: {value!r} is not one of {sorted(table)}") from None


def event_from_document(doc: Any) -> JobEvent:
    """A JobEvent from a jobevent.v1 object; ValueError names the bad field (like ``from_dict``)."""
    if type(doc) is not dict:
        raise ValueError(f"JobEvent: expected an object, got {type(doc).__name__}")
    if not doc.keys() <= EVENT_FIELDS:
        unknown = doc.keys() - EVENT_FIELDS
        raise ValueError(f"JobEvent: unknown field(s) {', '.join(sorted(unknown))}")
    get = doc.get
    if get("schema_version", EVENT_SCHEMA) != EVENT_SCHEMA:
        raise ValueError(f"unknown schema_version {doc['schema_version']!r} (expected {EVENT_SCHEMA!r})")
    job_id, seq, when, kind = get("job_id"), get("seq"), get("time"), get("kind")
    if type(job_id) is not str:
        raise ValueError("JobEvent.job_id: expected a string")
    if type(seq) is not int:
        raise ValueError("JobEvent.seq: expected an integer")
    if type(when) is not float and type(when) is not int:
        raise ValueError("JobEvent.time: expected a number")
    step, exit_code = get("step"), get("exit_code")
    if step is not None and type(step) is not int:
        raise ValueError("JobEvent.step: expected an integer")
    if exit_code is not None and type(exit_code) is not int:
        raise ValueError("JobEvent.exit_code: expected an integer")
    text, message = get("text", ""), get("message", "")
    if type(text) is not str or type(message) is not str:
        raise ValueError("JobEvent.text/message: expected a string")
    outputs = get("outputs")
    if outputs is None:
        outputs = {}
    elif type(outputs) is not dict or not all(type(v) is str for v in outputs.values()):
        raise ValueError("JobEvent.outputs: expected an object of strings")
    if kind is None:
        raise ValueError("JobEvent: missing field kind")
    return JobEvent(
        job_id=job_id,
        seq=seq,
        time=float(when),
        kind=_enum(_KINDS, kind, "kind"),
        step=step,
        stream=_enum(_STREAMS, get("stream"), "stream"),
        text=text,
        outcome=_enum(_OUTCOMES, get("outcome"), "outcome"),
        conclusion=_enum(_OUTCOMES, get("conclusion"), "conclusion"),
        exit_code=exit_code,
        result=_enum(_RESULTS, get("result"), "result"),
        message=message,
        outputs=outputs,
    )


def decode_event(body: bytes) -> JobEvent:
    data = json_object(body)
    if "schema_version" not in data:
        raise InvalidMessage(f"no schema_version (expected {EVENT_SCHEMA!r})")
    if data["schema_version"] != EVENT_SCHEMA:
        raise InvalidMessage(
            _clip(f"unknown schema_version {data['schema_version']!r} (expected {EVENT_SCHEMA!r})")
        )
    try:
        return event_from_document(data)
    except ValueError as exc:
        raise InvalidMessage(_clip(f"not a valid {EVENT_SCHEMA}: {exc}")) from None


def encode_cancel(cancel: CancelJob) -> bytes:
    return _dump(cancel, CANCEL_SCHEMA)


def decode_cancel(body: bytes) -> CancelJob:
    return _load(CancelJob, body, CANCEL_SCHEMA)


def mask_secrets(body: bytes) -> tuple[bytes, bool]:
    """``body`` with secret values masked, if it is a JSON object that carries any (a JobRequest's
    ``secrets``, ``contexts.secrets``, ``contexts.github.token``; every other occurrence of those
    values, and of each of their lines, too). For copies that outlive the job: dead letters.
    Returns (body, whether anything was masked); anything else comes back unchanged."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return body, False
    if not isinstance(data, dict):
        return body, False
    values: set[str] = set()

    def take(mapping: dict[str, Any], key: str) -> None:
        value = mapping.get(key)
        if isinstance(value, dict):
            values.update(v for v in value.values() if isinstance(v, str))
            mapping[key] = {k: MASK for k in value}
        elif isinstance(value, str) and value:
            values.add(value)
            mapping[key] = MASK

    take(data, "secrets")
    contexts = data.get("contexts")
    if isinstance(contexts, dict):
        take(contexts, "secrets")
        github = contexts.get("github")
        if isinstance(github, dict):
            take(github, "token")
    ordered = mask_values(values)
    if not ordered:
        return body, False
    masked = mask_tree(data, ordered)
    return json.dumps(masked, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), True
