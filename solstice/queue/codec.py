"""Message bodies: UTF-8 JSON of ``solstice.model.to_dict``, versioned by ``schema_version``.

Decoding is strict: a body that is not a JSON object, lacks ``schema_version``, carries a version
this code does not know, or does not fit the dataclass raises :class:`InvalidMessage` with a short
reason (never the body: a JobRequest can carry secrets). Consumers dead-letter such messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from solstice.model import EVENT_SCHEMA, REQUEST_SCHEMA, JobEvent, JobRequest, from_dict, to_dict
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


def encode_event(event: JobEvent) -> bytes:
    return _dump(event, EVENT_SCHEMA)


def decode_event(body: bytes) -> JobEvent:
    return _load(JobEvent, body, EVENT_SCHEMA)


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
