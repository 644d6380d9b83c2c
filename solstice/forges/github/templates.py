"""TemplateToken and PipelineContextData JSON (protocol §8.1, §8.2) into plain Python values.

A TemplateToken is how the server sends workflow values that the runner evaluates: literals
become ``str``/``bool``/``int``/``float``/``None``/``list``/``dict``, and an unevaluated
``${{ }}`` expression becomes an :class:`Expression` (its text without ``${{ }}``, §8.4).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from solstice.errors import SolsticeError


class CodecError(SolsticeError):
    """A GitHub message that does not decode; ``field`` is the dotted path of the bad field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class TokenType(enum.IntEnum):
    """R: src/Sdk/DTObjectTemplating/ObjectTemplating/Tokens/TokenType.cs"""

    STRING = 0
    SEQUENCE = 1
    MAPPING = 2
    EXPRESSION = 3
    INSERT_EXPRESSION = 4
    BOOLEAN = 5
    NUMBER = 6
    NULL = 7


@dataclass(frozen=True)
class Expression:
    """An expression the server left for the runner, e.g. ``format('echo {0}', secrets.X)``."""

    expr: str


@dataclass(frozen=True)
class Directive:
    """``${{ insert }}`` in a mapping-key position (type 4): the runner merges the value in."""

    directive: str


def _get(data: dict[str, Any], key: str) -> Any:
    # The server's names are case-insensitive (§2): "map" or "Map".
    if key in data:
        return data[key]
    lowered = key.lower()
    for k, v in data.items():
        if isinstance(k, str) and k.lower() == lowered:
            return v
    return None


def decode_token(data: Any, where: str = "token") -> Any:
    """A TemplateToken's JSON -> its plain value (Expression/Directive for what is not a literal)."""
    if data is None or isinstance(data, bool | int | float | str):
        return data  # bare literals: server-made tokens carry no position (§13.11)
    if not isinstance(data, dict):
        raise CodecError(
            where, f"a template token must be an object or a literal, not {type(data).__name__}"
        )
    raw_type = _get(data, "type")
    if raw_type is None:
        return _string(data, where)  # an object without a type is a string (§8.1)
    try:
        kind = TokenType(int(raw_type))
    except (TypeError, ValueError):
        raise CodecError(f"{where}.type", f"unknown template token type {raw_type!r}") from None
    if kind is TokenType.STRING:
        return _string(data, where)
    if kind is TokenType.SEQUENCE:
        items = _get(data, "seq")
        items = [] if items is None else items  # empty sequences omit `seq` (§13.11)
        if not isinstance(items, list):
            raise CodecError(f"{where}.seq", "must be a list")
        return [decode_token(item, f"{where}.seq[{i}]") for i, item in enumerate(items)]
    if kind is TokenType.MAPPING:
        pairs = _get(data, "map")
        pairs = [] if pairs is None else pairs
        if not isinstance(pairs, list):
            raise CodecError(f"{where}.map", "must be a list of {key, value} pairs")
        out: dict[Any, Any] = {}
        for i, pair in enumerate(pairs):
            at = f"{where}.map[{i}]"
            if not isinstance(pair, dict):
                raise CodecError(at, "must be a {key, value} object")
            key = decode_token(_get(pair, "key"), f"{at}.key")
            if not isinstance(key, str | Expression | Directive):
                raise CodecError(f"{at}.key", f"a mapping key must be a string, not {type(key).__name__}")
            out[key] = decode_token(_get(pair, "value"), f"{at}.value")
        return out
    if kind is TokenType.EXPRESSION:
        text = _get(data, "expr")
        if not isinstance(text, str):
            raise CodecError(f"{where}.expr", "an expression token needs its `expr` string")
        return Expression(text)
    if kind is TokenType.INSERT_EXPRESSION:
        return Directive(str(_get(data, "directive") or "insert"))
    if kind is TokenType.BOOLEAN:
        value = _get(data, "bool")
        if not isinstance(value, bool):
            raise CodecError(f"{where}.bool", "a boolean token needs a true/false `bool`")
        return value
    if kind is TokenType.NUMBER:
        value = _get(data, "num")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CodecError(f"{where}.num", "a number token needs a numeric `num`")
        return value
    return None  # TokenType.NULL


def _string(data: dict[str, Any], where: str) -> str:
    lit = _get(data, "lit")
    if lit is None:
        return ""
    if not isinstance(lit, str):
        raise CodecError(f"{where}.lit", "a string token's `lit` must be a string")
    return lit


class ContextType(enum.IntEnum):
    """R: src/Sdk/DTPipelines/Pipelines/ContextData/PipelineContextDataType.cs"""

    STRING = 0
    ARRAY = 1
    DICTIONARY = 2
    BOOLEAN = 3
    NUMBER = 4
    CASE_SENSITIVE_DICTIONARY = 5


def decode_context(data: Any, where: str = "contextData") -> Any:
    """PipelineContextData JSON (§8.2) -> plain dict/list/scalars. Keys keep their spelling."""
    if data is None or isinstance(data, bool | int | float | str):
        return data
    if not isinstance(data, dict):
        raise CodecError(where, f"context data must be an object or a literal, not {type(data).__name__}")
    raw = _get(data, "t")
    try:
        kind = ContextType(int(raw))
    except (TypeError, ValueError):
        raise CodecError(f"{where}.t", f"unknown context data type {raw!r}") from None
    if kind is ContextType.STRING:
        value = _get(data, "s")
        return "" if value is None else str(value)
    if kind is ContextType.ARRAY:
        items = _get(data, "a")
        items = [] if items is None else items
        if not isinstance(items, list):
            raise CodecError(f"{where}.a", "must be a list")
        return [decode_context(v, f"{where}.a[{i}]") for i, v in enumerate(items)]
    if kind in (ContextType.DICTIONARY, ContextType.CASE_SENSITIVE_DICTIONARY):
        pairs = _get(data, "d")
        pairs = [] if pairs is None else pairs
        if not isinstance(pairs, list):
            raise CodecError(f"{where}.d", "must be a list of {k, v} pairs")
        out: dict[str, Any] = {}
        for i, pair in enumerate(pairs):
            if not isinstance(pair, dict) or not isinstance(_get(pair, "k"), str):
                raise CodecError(f"{where}.d[{i}].k", "a dictionary entry needs a string `k`")
            key = _get(pair, "k")
            out[key] = decode_context(_get(pair, "v"), f"{where}.{key}")
        return out
    if kind is ContextType.BOOLEAN:
        return bool(_get(data, "b"))
    value = _get(data, "n")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"{where}.n", "a number needs a numeric `n`")
    return value
