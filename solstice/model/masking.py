"""Masking secret values: one rule for the job's log lines, the dead-letter copies and the database.

A value is masked whole, and each of its lines too (output is masked line by line), longest first so
that a secret containing another is masked whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

MASK = "***"


def mask_values(values: Iterable[str]) -> list[str]:
    """The strings to replace for these secret values, longest first."""
    out: set[str] = set()
    for value in values:
        out.add(value)
        out.add(value.strip())
        out.update(line.strip() for line in value.splitlines())
    out.discard("")
    return sorted(out, key=len, reverse=True)


def mask_text(text: str, ordered: Iterable[str]) -> str:
    """``text`` with every occurrence of the (``mask_values``-ordered) strings replaced by ``***``."""
    for value in ordered:
        if value in text:
            text = text.replace(value, MASK)
    return text


def mask_tree(value: Any, ordered: list[str], text: Callable[[str], str] | None = None) -> Any:
    """A JSON-like value with every string (keys included) masked; ``text`` rewrites strings first."""
    if isinstance(value, str):
        return mask_text(text(value) if text else value, ordered)
    if isinstance(value, dict):
        return {mask_tree(k, ordered, text): mask_tree(v, ordered, text) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_tree(v, ordered, text) for v in value]
    return value
