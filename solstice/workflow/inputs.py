"""The ``inputs`` context of a workflow run directly: ``on.workflow_call.inputs`` and
``on.workflow_dispatch.inputs`` defaults, overlaid by the values given (``--input NAME=VALUE``),
typed as the input declares (``boolean``, ``number``, else a string)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TRIGGERS = ("workflow_call", "workflow_dispatch")


def _triggers(on: Any) -> dict[str, Any]:
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return {t: None for t in on if isinstance(t, str)}
    if isinstance(on, Mapping):
        return dict(on)
    return {}


def is_callable(on: Any) -> bool:
    """True for ``on: workflow_call`` (a reusable workflow: a calling workflow gives its inputs)."""
    return "workflow_call" in _triggers(on)


def declared(on: Any) -> dict[str, Mapping[str, Any]]:
    """Input name -> its declaration (``type``, ``default``...), workflow_call's over dispatch's."""
    out: dict[str, Mapping[str, Any]] = {}
    for trigger in reversed(TRIGGERS):
        spec = _triggers(on).get(trigger)
        inputs = spec.get("inputs") if isinstance(spec, Mapping) else None
        if isinstance(inputs, Mapping):
            for name, decl in inputs.items():
                out[str(name)] = decl if isinstance(decl, Mapping) else {}
    return out


def _typed(value: Any, kind: Any) -> Any:
    if not isinstance(value, str):
        return value
    if kind == "boolean" and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if kind == "number":
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else number
    return value


def resolve(on: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs context: each declared input's default, then the given values (typed)."""
    decls = declared(on)
    out: dict[str, Any] = {}
    for name, decl in decls.items():
        if "default" in decl:
            out[name] = _typed(decl["default"], decl.get("type"))
    for name, value in given.items():
        out[name] = _typed(value, decls.get(name, {}).get("type"))
    return out


def missing_required(on: Any, given: Mapping[str, Any]) -> list[tuple[str, int]]:
    """``workflow_call`` inputs marked ``required: true`` with no default and no given value, each
    with the line of its declaration (0 when unknown)."""
    spec = _triggers(on).get("workflow_call")
    inputs = spec.get("inputs") if isinstance(spec, Mapping) else None
    if not isinstance(inputs, Mapping):
        return []
    line_of = getattr(inputs, "line_of", lambda _: 0)
    return [
        (name, int(line_of(name)))
        for name, decl in inputs.items()
        if isinstance(decl, Mapping) and decl.get("required") is True and "default" not in decl
        if name not in given
    ]
