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
from solstice.model.masking import MASK, mask_tree, mask_values


def _secret_values(request: JobRequest) -> list[str]:
    values = list(request.secrets.values())
    github = request.contexts.get("github")
    if isinstance(github, Mapping) and isinstance(github.get("token"), str):
        values.append(github["token"])
    return mask_values(values)


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
    masked: dict[str, Any] = mask_tree(doc, _secret_values(request), _strip_password)
    return masked
