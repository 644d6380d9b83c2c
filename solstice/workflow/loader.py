"""YAML with line numbers, read the way GitHub reads workflow files.

PyYAML composes the node tree; we build plain values from it ourselves so that every mapping
remembers the line of each key and every sequence the line of each item. Plain scalars are typed
by the YAML 1.2 core schema, as GitHub's parser does, not by PyYAML's YAML 1.1 rules: ``on``,
``yes`` and ``off`` stay strings, ``010`` is ten, and ``2024-01-01`` is not a date.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from solstice.errors import SolsticeError

_TAG = "tag:yaml.org,2002:"
_MAX_DEPTH = 100  # recursive aliases (`&a [*a]`) would otherwise never end
#: A workflow file is untrusted input (any pusher writes it) and is parsed by the pollers and the
#: job, so its size is bounded before parsing and its shape while composing.
MAX_BYTES = 1024 * 1024
#: Values the document expands to with every alias followed: a "billion laughs" document of a few
#: hundred bytes expands to 10^9, and the translation and the JSON of its jobs would visit each.
MAX_VALUES = 100_000


class LoadError(SolsticeError):
    """A problem at a 1-based line of the document (translate turns it into a WorkflowError)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class LineDict(dict[str, Any]):
    """A mapping that knows its own line and the line of each key."""

    line: int
    key_lines: dict[str, int]

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines = {}

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list[Any]):
    """A sequence that knows its own line and the line of each item."""

    line: int
    item_lines: list[int]

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines = []

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _CoreLoader(yaml.SafeLoader):
    """SafeLoader whose implicit typing is the YAML 1.2 core schema, and which refuses to nest
    deeper than _MAX_DEPTH while composing (PyYAML's composer recurses: `[[[[...` of some
    thousand levels would end in a RecursionError)."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        try:
            if self._depth > _MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise LoadError(int(mark.line) + 1, f"the document nests deeper than {_MAX_DEPTH} levels")
            node: Node | None = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1


_CoreLoader.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in (
    ("null", r"^(?:~|null|Null|NULL|)$", list("~nN") + [""]),
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+.0123456789"),
    ),
):
    _CoreLoader.add_implicit_resolver(_TAG + _tag, re.compile(_regexp), _first)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _scalar(node: ScalarNode) -> Any:
    value: str = node.value
    tag = node.tag
    if tag == _TAG + "null":
        return None
    if tag == _TAG + "bool":
        return value.lower() == "true"
    if tag == _TAG + "int":
        try:
            if value.startswith("0o"):
                return int(value[2:], 8)
            if value.startswith("0x"):
                return int(value[2:], 16)
            return int(value)
        except ValueError:
            raise LoadError(_line(node), f"{value!r} is not an integer") from None
    if tag == _TAG + "float":
        low = value.lower()
        if low.endswith(".inf"):
            return -math.inf if low.startswith("-") else math.inf
        if low == ".nan":
            return math.nan
        try:
            return float(value)
        except ValueError:
            raise LoadError(_line(node), f"{value!r} is not a number") from None
    if tag.startswith(_TAG):
        return value  # str, and also explicit !!timestamp, !!binary: their text
    # A local tag: most often an unquoted `if: !cancelled()`, which YAML reads as a tag.
    raise LoadError(
        _line(node),
        f"YAML tag `{tag}` is not supported "
        "(a value that starts with `!` must be quoted or written as ${{ ... }})",
    )


class _Builder:
    def __init__(self) -> None:
        self.done: dict[int, Any] = {}  # aliases share the value built for their anchor
        self.depth = 0

    def build(self, node: Node) -> Any:
        key = id(node)
        if key in self.done:
            return self.done[key]
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise LoadError(_line(node), f"the document nests deeper than {_MAX_DEPTH} levels")
        try:
            if isinstance(node, ScalarNode):
                value: Any = _scalar(node)
            elif isinstance(node, SequenceNode):
                value = self.sequence(node)
            elif isinstance(node, MappingNode):
                value = self.mapping(node)
            else:  # pragma: no cover - PyYAML has no other node kinds
                raise LoadError(_line(node), "unexpected YAML node")
        finally:
            self.depth -= 1
        self.done[key] = value
        return value

    def sequence(self, node: SequenceNode) -> LineList:
        out = LineList(_line(node))
        for item in node.value:
            out.append(self.build(item))
            out.item_lines.append(_line(item))
        return out

    def mapping(self, node: MappingNode) -> LineDict:
        out = LineDict(_line(node))
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise LoadError(_line(key_node), "a mapping key must be a plain string")
            # The key's text, not its YAML type: `on:` is the string "on", not True.
            key = str(key_node.value)
            if key in out:
                raise LoadError(
                    _line(key_node), f"duplicate key `{key}` (first on line {out.key_lines[key]})"
                )
            out[key] = self.build(value_node)
            out.key_lines[key] = _line(key_node)
        return out


def _expanded_size(root: Node) -> int:
    """How many values ``root`` stands for with every alias followed (each shared node counted
    at every place it is used), stopping as soon as that passes MAX_VALUES."""
    sizes: dict[int, int] = {}

    def size(node: Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if depth > _MAX_DEPTH:  # an alias cycle (`&a [*a]`): _Builder reports it with its line
            return 1
        total = 1
        if isinstance(node, SequenceNode):
            children: list[Node] = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_VALUES:
                raise LoadError(
                    _line(node),
                    f"the document expands to more than {MAX_VALUES} values through its aliases "
                    "(`*name`); write the values out or use fewer aliases",
                )
        sizes[id(node)] = total
        return total

    return size(root, 0)


def load(text: str) -> Any:
    """Parse one YAML document into plain values (LineDict, LineList, str, int, float, bool, None).

    Raises LoadError for malformed YAML, with the line the parser stopped at, and for a document
    over MAX_BYTES, nesting deeper than _MAX_DEPTH or expanding (aliases) to over MAX_VALUES values.
    """
    if len(text) > MAX_BYTES:
        raise LoadError(1, f"the document is larger than {MAX_BYTES // 1024} KiB ({len(text)} characters)")
    try:
        # The reader checks the text when made: a control character raises here already.
        loader = _CoreLoader(text)
    except yaml.YAMLError as exc:
        raise LoadError(1, f"invalid YAML: {exc}") from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = int(mark.line) + 1 if mark is not None else 1
            what = " ".join(p for p in (exc.context, exc.problem) if p)
            raise LoadError(line, f"invalid YAML: {what}") from None
        except yaml.YAMLError as exc:
            raise LoadError(1, f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    if node is None:
        return None
    _expanded_size(node)
    return _Builder().build(node)
