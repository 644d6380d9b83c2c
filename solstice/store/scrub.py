"""What of a JobRequest goes into the database: everything except secrets.

The ``secrets`` mapping is dropped; the forge's job token in ``contexts.github.token`` and any
``contexts.secrets`` are dropped; a password in a URL is replaced by ``***``; and as a last line of
defence every occurrence of a secret's value anywhere else in the document is masked with ``***``.
Without ``secrets`` the document still reads back with ``from_dict(JobRequest, ...)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from solstice.model.core import JobRequest, to_dict

MASK = "***"


def _secret_values(request: JobRequest) -> list[str]:
    values: set[str] = set()
    for value in request.secrets.values():
        values.add(value)
        values.add(value.strip())
        values.update(line.strip() for line in value.splitlines())
    github = request.contexts.get("github")
    if isinstance(github, Mapping) and isinstance(github.get("token"), str):
        values.add(github["token"])
    values.discard("")
    return sorted(values, key=len, reverse=True)  # longest first: a secret containing another


def _strip_password(text: str) -> str:
    if "://" not in text or "@" not in text:
        return text
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return text
    if not password:
        return text
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def _mask(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        value = _strip_password(value)
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {_mask(k, secrets): _mask(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, secrets) for v in value]
    return value


def request_document(request: JobRequest) -> dict[str, Any]:
    """The JSON-able document stored in ``jobs.request``: the request without any secret."""
    doc: dict[str, Any] = to_dict(request)
    doc.pop("secrets", None)
    doc.pop("sealed_secrets", None)  # encrypted, but the database still holds no secrets at all
    contexts = doc.get("contexts")
    if isinstance(contexts, dict):
        contexts.pop("secrets", None)
        github = contexts.get("github")
        if isinstance(github, dict):
            github.pop("token", None)
    masked: dict[str, Any] = _mask(doc, _secret_values(request))
    return masked
