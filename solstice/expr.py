"""GitHub Actions expressions (``${{ ... }}``): parse, evaluate, interpolate.

Follows GitHub's documented semantics ("Evaluate expressions in workflows and actions") and, where
the documentation is silent, the behaviour of the Actions runner's evaluator:

* literals ``null``, ``true``, ``false``, numbers (JSON, hex ``0xff``, octal ``0o17``, exponents),
  ``'single-quoted'`` strings with ``''`` as the escaped quote;
* operators, loosest first: ``||``, ``&&``, ``== !=``, ``< <= > >=``, ``!``, then ``.``, ``[]``
  and ``( )``; ``&&``/``||`` return one of their operands (like JavaScript);
* loose equality: operands of different types are compared as numbers, strings case-insensitively,
  objects and arrays only by identity;
* ``a.b``, ``a['b']``, ``a[0]`` and object filters ``a.*.b``; a missing property is ``null``;
* context and function names are case-insensitive.

Only the standard library is used: both the workflow translator and the job process import this.
``hashFiles`` is rejected when the expression is parsed: the files live in the guest, not on the host.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from solstice.errors import ExpressionError

__all__ = [
    "CONTEXT_NAMES",
    "FUNCTIONS",
    "STATUS_FUNCTIONS",
    "Context",
    "contains_expression",
    "evaluate",
    "evaluate_condition",
    "evaluate_value",
    "interpolate",
    "is_truthy",
    "references",
    "split_template",
    "to_string",
    "validate",
    "validate_condition",
    "validate_template",
]

#: Named values an expression may start with (lower case; matching is case-insensitive).
CONTEXT_NAMES = frozenset(
    "github env matrix secrets steps job jobs runner vars needs inputs strategy".split()
)
STATUS_FUNCTIONS = frozenset({"success", "failure", "always", "cancelled"})

_MAX_DEPTH = 50  # GitHub's own nesting limit; also keeps Python's recursion far away
_MAX_LENGTH = 21000  # GitHub's limit on the length of one expression


@dataclass(frozen=True)
class Context:
    """What an expression can see.

    ``values`` maps context names (``github``, ``env``, ``matrix``, ``secrets``, ``steps``, ``job``,
    ``runner``, ``vars``, ``needs``, ``inputs``, ``strategy``) to JSON-like values; a context that is
    absent evaluates to ``null``. ``job_status`` drives ``success()``, ``failure()`` and ``cancelled()``.
    """

    values: Mapping[str, Any] = field(default_factory=dict)
    job_status: str = "success"  # "success" | "failure" | "cancelled"


# --- syntax tree ---------------------------------------------------------------------------------


class _Wildcard:
    """The ``*`` of ``a.*`` and ``a[*]``."""

    def __repr__(self) -> str:
        return "*"


WILDCARD = _Wildcard()


@dataclass(frozen=True)
class _Literal:
    value: Any


@dataclass(frozen=True)
class _Named:
    name: str  # lower case


@dataclass(frozen=True)
class _Property:
    target: _Node
    name: str | _Wildcard


@dataclass(frozen=True)
class _Index:
    target: _Node
    index: _Node | _Wildcard


@dataclass(frozen=True)
class _Not:
    operand: _Node


@dataclass(frozen=True)
class _Compare:
    op: str
    left: _Node
    right: _Node


@dataclass(frozen=True)
class _Logical:
    op: str  # "&&" or "||"; n-ary so that long chains do not nest deeply
    operands: tuple[_Node, ...]


@dataclass(frozen=True)
class _Call:
    name: str  # lower case
    args: tuple[_Node, ...]


@dataclass(frozen=True)
class _Template:
    """A string with embedded expressions (an ``if:`` written as ``${{ a }} text``)."""

    parts: tuple[str | _Node, ...]


_Node = _Literal | _Named | _Property | _Index | _Not | _Compare | _Logical | _Call | _Template


# --- lexer ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "num", "str", "ident", "kw" (true/false/null), "punct", "eof"
    text: str
    pos: int  # 0-based offset in the expression
    value: Any = None


_NUMBER_RE = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|Infinity)"
)
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_PUNCT = ("&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "(", ")", "[", "]", ".", ",", "*")
_KEYWORDS = {"true": True, "false": False, "null": None, "NaN": math.nan, "Infinity": math.inf}
# After these a "." is a property access, never the start of a number such as ".5".
_VALUE_END = {"num", "str", "ident", "kw"}


def _error(message: str, expression: str, pos: int | None = None) -> ExpressionError:
    if pos is None:
        return ExpressionError(f"{message}. Expression: {expression}")
    return ExpressionError(f"{message}. Located at position {pos + 1} within expression: {expression}")


def _parse_number_literal(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    low = body.lower()
    if low.startswith("0x"):
        return sign * int(body[2:], 16)
    if low.startswith("0o"):
        return sign * int(body[2:], 8)
    return sign * float(body)


def _tokenize(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c.isspace():
            i += 1
            continue
        prev = tokens[-1] if tokens else None
        after_value = prev is not None and (
            prev.kind in _VALUE_END or (prev.kind == "punct" and prev.text in (")", "]", "*"))
        )
        if c == "'":
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise _error("Unterminated string literal", expr, i)
                if expr[j] == "'":
                    if j + 1 < n and expr[j + 1] == "'":
                        buf.append("'")
                        j += 2
                        continue
                    break
                buf.append(expr[j])
                j += 1
            tokens.append(_Token("str", expr[i : j + 1], i, "".join(buf)))
            i = j + 1
            continue
        starts_number = c.isdigit() or (
            c in "+-." and not (c == "." and after_value) and _NUMBER_RE.match(expr, i) is not None
        )
        if starts_number:
            m = _NUMBER_RE.match(expr, i)
            if m is None or (m.end() < n and (expr[m.end()].isalnum() or expr[m.end()] in "_.")):
                end = m.end() if m else i + 1
                while end < n and (expr[end].isalnum() or expr[end] in "_.-+"):
                    end += 1
                raise _error(f"Unexpected symbol: '{expr[i:end]}'", expr, i)
            tokens.append(_Token("num", m.group(), i, _parse_number_literal(m.group())))
            i = m.end()
            continue
        m = _IDENT_RE.match(expr, i)
        if m:
            word = m.group()
            # After "." every word is a property name, even "true" or "null".
            is_property = prev is not None and prev.kind == "punct" and prev.text == "."
            if word in _KEYWORDS and not is_property:
                tokens.append(_Token("kw", word, i, _KEYWORDS[word]))
            else:
                tokens.append(_Token("ident", word, i))
            i = m.end()
            continue
        for p in _PUNCT:
            if expr.startswith(p, i):
                tokens.append(_Token("punct", p, i))
                i += len(p)
                break
        else:
            raise _error(f"Unexpected symbol: '{c}'", expr, i)
    tokens.append(_Token("eof", "", n))
    return tokens


# --- parser --------------------------------------------------------------------------------------

#: name (lower case) -> (display name, minimum arguments, maximum arguments or None for unbounded)
FUNCTIONS: dict[str, tuple[str, int, int | None]] = {
    "success": ("success", 0, 0),
    "failure": ("failure", 0, 0),
    "always": ("always", 0, 0),
    "cancelled": ("cancelled", 0, 0),
    "contains": ("contains", 2, 2),
    "startswith": ("startsWith", 2, 2),
    "endswith": ("endsWith", 2, 2),
    "format": ("format", 1, None),
    "join": ("join", 1, 2),
    "tojson": ("toJSON", 1, 1),
    "fromjson": ("fromJSON", 1, 1),
    "case": ("case", 3, None),  # case(pred1, val1, ..., default): an odd count, checked when parsing
}
_COMPARISONS = ("<", "<=", ">", ">=")
_EQUALITIES = ("==", "!=")


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = _tokenize(expr)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def fail(self, tok: _Token) -> ExpressionError:
        if tok.kind == "eof":
            return _error("Unexpected end of expression", self.expr, len(self.expr) - 1)
        return _error(f"Unexpected symbol: '{tok.text}'", self.expr, tok.pos)

    def accept(self, text: str) -> bool:
        if self.tok.kind == "punct" and self.tok.text == text:
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            raise self.fail(self.tok)

    def nest(self, tok: _Token) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _error(f"Exceeded max expression depth {_MAX_DEPTH}", self.expr, tok.pos)

    def parse(self) -> _Node:
        if self.tok.kind == "eof":
            raise ExpressionError(f"An expression was expected. Expression: {self.expr!r}")
        node = self.parse_or()
        if self.tok.kind != "eof":
            raise self.fail(self.tok)
        return node

    def parse_or(self) -> _Node:
        return self.parse_logical("||", self.parse_and)

    def parse_and(self) -> _Node:
        return self.parse_logical("&&", self.parse_equality)

    def parse_logical(self, op: str, operand: Callable[[], _Node]) -> _Node:
        items = [operand()]
        while self.accept(op):
            items.append(operand())
        return items[0] if len(items) == 1 else _Logical(op, tuple(items))

    def parse_equality(self) -> _Node:
        node = self.parse_comparison()
        while self.tok.kind == "punct" and self.tok.text in _EQUALITIES:
            op = self.tok.text
            self.i += 1
            node = _Compare(op, node, self.parse_comparison())
        return node

    def parse_comparison(self) -> _Node:
        node = self.parse_unary()
        while self.tok.kind == "punct" and self.tok.text in _COMPARISONS:
            op = self.tok.text
            self.i += 1
            node = _Compare(op, node, self.parse_unary())
        return node

    def parse_unary(self) -> _Node:
        tok = self.tok
        if self.accept("!"):
            self.nest(tok)
            node: _Node = _Not(self.parse_unary())
            self.depth -= 1
            return node
        return self.parse_postfix()

    def parse_postfix(self) -> _Node:
        node = self.parse_primary()
        while True:
            tok = self.tok
            if self.accept("."):
                if self.accept("*"):
                    node = _Property(node, WILDCARD)
                elif self.tok.kind == "ident":
                    node = _Property(node, self.tok.text)
                    self.i += 1
                else:
                    raise self.fail(self.tok)
            elif self.accept("["):
                self.nest(tok)
                if self.accept("*"):
                    node = _Index(node, WILDCARD)
                else:
                    node = _Index(node, self.parse_or())
                self.expect("]")
                self.depth -= 1
            else:
                return node

    def parse_primary(self) -> _Node:
        tok = self.tok
        if tok.kind in ("num", "str", "kw"):
            self.i += 1
            return _Literal(tok.value)
        if tok.kind == "punct" and tok.text == "(":
            self.i += 1
            self.nest(tok)
            node = self.parse_or()
            self.expect(")")
            self.depth -= 1
            return node
        if tok.kind == "ident":
            self.i += 1
            if self.accept("("):
                return self.parse_call(tok)
            name = tok.text.lower()
            if name not in CONTEXT_NAMES:
                raise _error(f"Unrecognized named-value: '{tok.text}'", self.expr, tok.pos)
            return _Named(name)
        raise self.fail(tok)

    def parse_call(self, tok: _Token) -> _Node:
        name = tok.text.lower()
        if name == "hashfiles":
            raise _error("hashFiles is not supported by Solstice", self.expr, tok.pos)
        if name not in FUNCTIONS:
            # Most often a newer GitHub function: say it is Solstice's gap, not the workflow's.
            supported = ", ".join(d for d, _, _ in FUNCTIONS.values())
            raise _error(
                f"Unrecognized function: '{tok.text}' is not supported by Solstice (supported: {supported})",
                self.expr,
                tok.pos,
            )
        self.nest(tok)
        args: list[_Node] = []
        if not self.accept(")"):
            while True:
                args.append(self.parse_or())
                if self.accept(")"):
                    break
                self.expect(",")
        self.depth -= 1
        display, low, high = FUNCTIONS[name]
        if len(args) < low:
            raise _error(f"Too few parameters supplied: '{display}'", self.expr, tok.pos)
        if high is not None and len(args) > high:
            raise _error(f"Too many parameters supplied: '{display}'", self.expr, tok.pos)
        if name == "case" and len(args) % 2 == 0:
            raise _error(
                "case() takes pairs of predicate and value, then a default: an odd number of arguments",
                self.expr,
                tok.pos,
            )
        return _Call(name, tuple(args))


@functools.lru_cache(maxsize=4096)
def _parse(expression: str) -> _Node:
    if len(expression) > _MAX_LENGTH:
        raise ExpressionError(f"Expression is longer than {_MAX_LENGTH} characters")
    return _Parser(expression).parse()


def validate(expression: str) -> None:
    """Parse ``expression`` (text without ``${{ }}``); raise ExpressionError if it is invalid."""
    _parse(expression)


# --- templates -----------------------------------------------------------------------------------


def split_template(template: str) -> list[tuple[bool, str]]:
    """``template`` as (is_expression, text) pieces; expression texts are without ``${{ }}``.

    ``}}`` inside a quoted string does not close the expression (``format('{{0}}', x)``).
    """
    pieces: list[tuple[bool, str]] = []
    i = 0
    while True:
        start = template.find("${{", i)
        if start < 0:
            if i < len(template):
                pieces.append((False, template[i:]))
            return pieces
        if start > i:
            pieces.append((False, template[i:start]))
        k, quoted = start + 3, False
        while k < len(template):
            c = template[k]
            if quoted:
                if c == "'":
                    if template.startswith("''", k):
                        k += 1
                    else:
                        quoted = False
            elif c == "'":
                quoted = True
            elif template.startswith("}}", k):
                break
            k += 1
        else:
            raise ExpressionError(
                f"An expression is not closed: missing '}}}}' after '${{{{' in: {template}"
            )
        pieces.append((True, template[start + 3 : k].strip()))
        i = k + 2


def contains_expression(text: str) -> bool:
    """True if ``text`` contains ``${{`` (and so needs interpolation, or is an invalid template)."""
    return "${{" in text


def _parse_template(template: str) -> list[tuple[bool, str, _Node | None]]:
    return [(is_expr, text, _parse(text) if is_expr else None) for is_expr, text in split_template(template)]


def validate_template(template: str) -> None:
    """Check every ``${{ }}`` in ``template``; raise ExpressionError for the first invalid one."""
    _parse_template(template)


@functools.lru_cache(maxsize=1024)
def _parse_condition(condition: str) -> _Node:
    text = condition.strip()
    if "${{" not in text:
        return _parse(text)
    pieces = split_template(text)
    if len(pieces) == 1 and pieces[0][0]:
        return _parse(pieces[0][1])
    # Literal text around ${{ }}: the whole is a string (GitHub's behaviour, a known pitfall).
    return _Template(tuple(_parse(t) if is_expr else t for is_expr, t in pieces))


def validate_condition(condition: str) -> None:
    """Check an ``if:`` value (with or without ``${{ }}``); raise ExpressionError if it is invalid."""
    if condition.strip():
        _parse_condition(condition)


# --- values --------------------------------------------------------------------------------------


class _Filtered(list[Any]):
    """The result of an object filter (``a.*``): later ``.b`` and ``[i]`` apply to each item."""


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_array(v: Any) -> bool:
    return isinstance(v, list | tuple)


def _is_primitive(v: Any) -> bool:
    return not (_is_array(v) or isinstance(v, Mapping))


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if _is_number(v):
        return "number"
    if isinstance(v, str):
        return "string"
    if _is_array(v):
        return "array"
    if isinstance(v, Mapping):
        return "object"
    return "string"  # anything else is shown as its str()


_STRING_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _string_to_number(s: str) -> float:
    t = s.strip()
    if not t:
        return 0.0
    low = t.lower()
    try:
        if low.startswith("0x"):
            return float(int(t[2:], 16))
        if low.startswith("0o"):
            return float(int(t[2:], 8))
    except ValueError:
        return math.nan
    if t in ("Infinity", "+Infinity"):
        return math.inf
    if t == "-Infinity":
        return -math.inf
    if _STRING_NUMBER_RE.fullmatch(t):
        return float(t)
    return math.nan


def _to_number(v: Any) -> float:
    k = _kind(v)
    if k == "null":
        return 0.0
    if k == "bool":
        return 1.0 if v else 0.0
    if k == "number":
        try:
            return float(v)
        except OverflowError:  # a Python int beyond any double
            return math.inf if v > 0 else -math.inf
    if k == "string":
        return _string_to_number(str(v))
    return math.nan


def is_truthy(v: Any) -> bool:
    """Actions truthiness: false, 0, -0, '', null and NaN are falsy; objects and arrays are truthy."""
    k = _kind(v)
    if k == "null":
        return False
    if k == "bool":
        return bool(v)
    if k == "number":
        return not (v == 0 or math.isnan(v))
    if k == "string":
        return str(v) != ""
    return True


def _fold(s: str) -> str:
    return s.upper()  # .NET OrdinalIgnoreCase compares upper-cased characters


def _coerce(left: Any, right: Any) -> tuple[Any, str, Any, str]:
    """The runner's type coercion before comparing: mismatched primitives become numbers."""
    lk, rk = _kind(left), _kind(right)
    if lk == rk:
        return left, lk, right, rk
    if lk == "number" and rk == "string":
        return left, lk, _to_number(right), "number"
    if lk == "string" and rk == "number":
        return _to_number(left), "number", right, rk
    if lk in ("bool", "null"):
        return _coerce(_to_number(left), right)
    if rk in ("bool", "null"):
        return _coerce(left, _to_number(right))
    return left, lk, right, rk


def _loose_equal(left: Any, right: Any) -> bool:
    left, lk, right, rk = _coerce(left, right)
    if lk != rk:
        return False
    if lk == "null":
        return True
    if lk == "number":
        return bool(left == right)  # NaN is unequal to everything
    if lk == "string":
        return _fold(str(left)) == _fold(str(right))
    if lk == "bool":
        return bool(left) == bool(right)
    return left is right  # objects and arrays: identity


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return _loose_equal(left, right)
    if op == "!=":
        return not _loose_equal(left, right)
    left, lk, right, rk = _coerce(left, right)
    if lk != rk or lk not in ("number", "string", "bool"):
        return False
    a: Any
    b: Any
    if lk == "string":
        a, b = _fold(str(left)), _fold(str(right))
    elif lk == "bool":
        a, b = int(left), int(right)
    else:
        a, b = left, right  # comparisons with NaN are false, as in JavaScript
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


# --- strings -------------------------------------------------------------------------------------


def _format_number(x: float) -> str:
    """A number as JavaScript's Number#toString prints it."""
    if isinstance(x, int) and abs(x) < 10**21:
        return str(x)
    x = _to_number(x)  # also turns an int too large for a double into +-Infinity
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    # repr() gives the shortest digits that round-trip, which is also what JavaScript uses.
    mantissa, _, exp_text = repr(abs(float(x))).partition("e")
    whole, _, frac = mantissa.partition(".")
    raw = whole + frac
    stripped = raw.lstrip("0")
    # n: where the decimal point goes relative to the significant digits (ECMA-262 Number::toString).
    point = len(whole) + (int(exp_text) if exp_text else 0) - (len(raw) - len(stripped))
    digits = stripped.rstrip("0")
    k, n = len(digits), point
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    exp = ("+" if e >= 0 else "-") + str(abs(e))
    if k == 1:
        return f"{sign}{digits}e{exp}"
    return f"{sign}{digits[0]}.{digits[1:]}e{exp}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if _is_array(v):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**63:
        return int(v)
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def _to_json(v: Any) -> str:
    # GitHub's toJSON pretty-prints with two spaces.
    return json.dumps(_jsonable(v), indent=2, ensure_ascii=False)


def to_string(value: Any) -> str:
    """Actions string coercion: null -> '', booleans -> 'true'/'false', numbers as JavaScript prints
    them, objects and arrays -> (indented) JSON."""
    k = _kind(value)
    if k == "null":
        return ""
    if k == "bool":
        return "true" if value else "false"
    if k == "number":
        return _format_number(value)
    if k in ("array", "object"):
        return _to_json(value)
    return str(value)


# --- evaluation ----------------------------------------------------------------------------------


def _lookup(obj: Mapping[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    folded = key.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == folded:
            return v
    return None


def _get_property(target: Any, name: str) -> Any:
    return _lookup(target, name) if isinstance(target, Mapping) else None


def _get_index(target: Any, index: Any) -> Any:
    if isinstance(target, Mapping):
        return _lookup(target, to_string(index)) if _is_primitive(index) else None
    if _is_array(target):
        n = _to_number(index)
        if math.isnan(n) or n < 0 or n >= len(target):
            return None
        i = math.floor(n)
        return target[i] if i < len(target) else None
    return None


def _children(value: Any) -> Iterator[Any]:
    if isinstance(value, Mapping):
        yield from value.values()
    elif _is_array(value):
        yield from value


def _select(target: Any, key: Any, getter: Callable[[Any, Any], Any]) -> Any:
    """Apply ``.name``/``[i]`` (``getter``) or a wildcard to ``target``, mapping over filtered arrays."""
    if isinstance(target, _Filtered):
        out = _Filtered()
        for item in target:
            if key is WILDCARD:
                out.extend(_children(item))
            else:
                value = getter(item, key)
                if value is not None:
                    out.append(value)
        return out
    if key is WILDCARD:
        return _Filtered(_children(target)) if not _is_primitive(target) else None
    return getter(target, key)


def _status(name: str, ctx: Context) -> bool:
    if name == "always":
        return True
    return ctx.job_status == name


def _format(fmt: str, args: Sequence[Any], expression: str) -> str:
    out: list[str] = []
    i, n = 0, len(fmt)
    while i < n:
        c = fmt[i]
        if c == "{":
            if fmt.startswith("{{", i):
                out.append("{")
                i += 2
                continue
            end = fmt.find("}", i)
            ref = fmt[i + 1 : end] if end > 0 else ""
            if not ref.isdigit():
                raise _error(f"format: the format string is invalid: {fmt!r}", expression)
            if int(ref) >= len(args):
                raise _error(
                    f"format: the format string references more arguments than were supplied: {fmt!r}",
                    expression,
                )
            out.append(to_string(args[int(ref)]))
            i = end + 1
        elif c == "}":
            if not fmt.startswith("}}", i):
                raise _error(f"format: the format string is invalid: {fmt!r}", expression)
            out.append("}")
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _call(name: str, args: list[Any], ctx: Context, expression: str) -> Any:
    if name in STATUS_FUNCTIONS:
        return _status(name, ctx)
    if name == "contains":
        search, item = args
        if _is_primitive(search):
            return _fold(to_string(item)) in _fold(to_string(search))
        if _is_array(search):
            return any(_loose_equal(x, item) for x in search)
        return False
    if name in ("startswith", "endswith"):
        text, part = args
        if not (_is_primitive(text) and _is_primitive(part)):
            return False
        a, b = _fold(to_string(text)), _fold(to_string(part))
        return a.startswith(b) if name == "startswith" else a.endswith(b)
    if name == "format":
        return _format(to_string(args[0]), args[1:], expression)
    if name == "join":
        sep = to_string(args[1]) if len(args) > 1 else ","
        if _is_array(args[0]):
            return sep.join(to_string(x) for x in args[0])
        return to_string(args[0]) if _is_primitive(args[0]) else ""
    if name == "tojson":
        return _to_json(args[0])
    if name == "fromjson":
        text = to_string(args[0])
        try:
            # Actions numbers are doubles: integers too long for one become floats.
            return json.loads(text, parse_int=lambda d: int(d) if len(d.lstrip("-")) <= 15 else float(d))
        except ValueError as exc:
            raise _error(f"fromJSON: {text!r} is not valid JSON ({exc})", expression) from None
        except RecursionError:
            raise _error("fromJSON: the JSON nests too deeply", expression) from None
    raise _error(f"Unrecognized function: '{name}'", expression)  # unreachable: checked when parsing


def _eval(node: _Node, ctx: Context, expression: str) -> Any:
    if isinstance(node, _Literal):
        return node.value
    if isinstance(node, _Named):
        return _lookup(ctx.values, node.name)
    if isinstance(node, _Property):
        return _select(_eval(node.target, ctx, expression), node.name, _get_property)
    if isinstance(node, _Index):
        target = _eval(node.target, ctx, expression)
        key = WILDCARD if isinstance(node.index, _Wildcard) else _eval(node.index, ctx, expression)
        return _select(target, key, _get_index)
    if isinstance(node, _Not):
        return not is_truthy(_eval(node.operand, ctx, expression))
    if isinstance(node, _Compare):
        return _compare(node.op, _eval(node.left, ctx, expression), _eval(node.right, ctx, expression))
    if isinstance(node, _Logical):
        # Short-circuit and return the deciding operand, as JavaScript does.
        value: Any = None
        for operand in node.operands:
            value = _eval(operand, ctx, expression)
            if is_truthy(value) == (node.op == "||"):
                return value
        return value
    if isinstance(node, _Call) and node.name == "case":
        # Lazy, like && and ||: only the chosen value is evaluated.
        *pairs, default = node.args
        for pred, value in zip(pairs[::2], pairs[1::2], strict=True):
            if is_truthy(_eval(pred, ctx, expression)):
                return _eval(value, ctx, expression)
        return _eval(default, ctx, expression)
    if isinstance(node, _Call):
        return _call(node.name, [_eval(a, ctx, expression) for a in node.args], ctx, expression)
    return "".join(p if isinstance(p, str) else to_string(_eval(p, ctx, expression)) for p in node.parts)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, _Filtered) else value


def _too_deep(text: str) -> ExpressionError:
    return ExpressionError(f"Exceeded max expression depth: {text[:200]}")


def evaluate(expression: str, ctx: Context) -> Any:
    """Evaluate ``expression`` (text without ``${{ }}``) to a JSON-like Python value."""
    try:
        return _plain(_eval(_parse(expression), ctx, expression))
    except RecursionError:  # e.g. thousands of chained `.a` or `==`: an error, never a traceback
        raise _too_deep(expression) from None


def interpolate(template: str, ctx: Context) -> str:
    """Replace every ``${{ expr }}`` in ``template`` by ``to_string`` of its value."""
    if "${{" not in template:
        return template
    out = []
    try:
        for is_expr, text, node in _parse_template(template):
            out.append(to_string(_eval(node, ctx, text)) if is_expr and node is not None else text)
    except RecursionError:
        raise _too_deep(template) from None
    return "".join(out)


def evaluate_value(text: str, ctx: Context) -> Any:
    """A YAML value that may hold expressions, as Actions reads typed fields (``timeout-minutes``,
    ``continue-on-error``, ``strategy.matrix``): exactly one ``${{ }}`` gives that expression's value
    with its type (a number, a boolean, a list); anything else is interpolated to a string."""
    try:
        pieces = split_template(text.strip())
    except ExpressionError:
        pieces = []
    if len(pieces) == 1 and pieces[0][0]:
        return evaluate(pieces[0][1], ctx)
    return interpolate(text, ctx)


def _calls_status_function(node: _Node) -> bool:
    if isinstance(node, _Call):
        return node.name in STATUS_FUNCTIONS or any(_calls_status_function(a) for a in node.args)
    if isinstance(node, _Property):
        return _calls_status_function(node.target)
    if isinstance(node, _Index):
        index = node.index
        return _calls_status_function(node.target) or (
            not isinstance(index, _Wildcard) and _calls_status_function(index)
        )
    if isinstance(node, _Not):
        return _calls_status_function(node.operand)
    if isinstance(node, _Compare):
        return _calls_status_function(node.left) or _calls_status_function(node.right)
    if isinstance(node, _Logical):
        return any(_calls_status_function(o) for o in node.operands)
    if isinstance(node, _Template):
        return any(not isinstance(p, str) and _calls_status_function(p) for p in node.parts)
    return False


def evaluate_condition(condition: str | bool | None, ctx: Context) -> bool:
    """Evaluate an ``if:`` value.

    Empty means ``success()``. The text may be written with or without ``${{ }}``. Unless it calls
    one of success(), failure(), always() or cancelled(), it is evaluated as ``success() && (expr)``,
    as GitHub does; that also holds for a YAML boolean (``if: true`` does not run after a failure).
    """
    if condition is None or condition is False or condition is True:
        return _status("success", ctx) and condition is not False
    if not condition.strip():
        return _status("success", ctx)
    try:
        node = _parse_condition(condition)
        if not _calls_status_function(node) and not _status("success", ctx):
            return False
        return is_truthy(_eval(node, ctx, condition.strip()))
    except RecursionError:
        raise _too_deep(condition) from None


def _paths(node: _Node) -> Iterator[str]:
    if isinstance(node, _Named):
        yield node.name
    elif isinstance(node, _Property):
        inner = list(_paths(node.target))
        if isinstance(node.target, _Named | _Property) and inner and isinstance(node.name, str):
            yield f"{inner[0]}.{node.name.lower()}"  # one path: extend the chain
            yield from inner[1:]
        else:
            yield from inner
    elif isinstance(node, _Index):
        yield from _paths(node.target)
        if not isinstance(node.index, _Wildcard):
            yield from _paths(node.index)
    elif isinstance(node, _Not):
        yield from _paths(node.operand)
    elif isinstance(node, _Compare):
        yield from _paths(node.left)
        yield from _paths(node.right)
    elif isinstance(node, _Logical | _Call):
        for child in node.operands if isinstance(node, _Logical) else node.args:
            yield from _paths(child)
    elif isinstance(node, _Template):
        for part in node.parts:
            if not isinstance(part, str):
                yield from _paths(part)


def references(template: str) -> tuple[str, ...]:
    """The context paths the ``${{ }}`` of ``template`` read, in order (``needs.gen.outputs.m``),
    so a caller can tell what a value waits for. Raises ExpressionError for bad syntax."""
    out: list[str] = []
    for is_expr, _, node in _parse_template(template):
        if is_expr and node is not None:
            out.extend(p for p in _paths(node) if p not in out)
    return tuple(out)
