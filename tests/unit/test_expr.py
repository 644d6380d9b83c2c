"""GitHub Actions expressions: literals, operators, coercion, functions, conditions, errors."""

from __future__ import annotations

import math
from typing import Any

import pytest

from solstice import expr
from solstice.errors import ExpressionError
from solstice.expr import Context, evaluate, evaluate_condition, interpolate, to_string

CTX = Context(
    {
        "github": {
            "ref": "refs/heads/main",
            "event_name": "push",
            "event": {
                "pull_request": {"labels": [{"name": "bug"}, {"name": "docs"}, {"other": 1}]},
                "commits": [{"author": {"name": "ann"}}, {"author": {"name": "bob"}}],
            },
        },
        "env": {"GREETING": "hello", "EMPTY": ""},
        "matrix": {"os": "omnios", "python": 3.1, "flags": ["a", "b"]},
        "steps": {
            "build": {"outcome": "failure", "conclusion": "success", "outputs": {"artifact": "out.tar"}},
        },
        "secrets": {"TOKEN": "s3cr3t"},
        "needs": {"build-job": {"result": "success", "outputs": {"version": "1.2"}}},
    }
)


def ev(text: str, ctx: Context = CTX) -> Any:
    return evaluate(text, ctx)


# --- literals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("null", None),
        ("true", True),
        ("false", False),
        ("711", 711),
        ("-9.2", -9.2),
        ("0xff", 255),
        ("-2.99e-2", -0.0299),
        ("1e3", 1000),
        (".5", 0.5),
        ("'Mona the Octocat'", "Mona the Octocat"),
        ("'It''s open source!'", "It's open source!"),
        ("''", ""),
    ],
)
def test_literals(text: str, value: Any) -> None:
    result = ev(text)
    if value is None or isinstance(value, bool):
        assert result is value
    else:
        assert result == value and not isinstance(result, bool)


def test_double_quotes_are_not_strings() -> None:
    with pytest.raises(ExpressionError, match="Unexpected symbol"):
        ev('"abc"')


# --- operators and precedence --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1 < 2", True),
        ("2 <= 2", True),
        ("3 > 4", False),
        ("4 >= 4", True),
        ("1 == 1", True),
        ("1 != 1", False),
        ("!true", False),
        ("!!'x'", True),
        ("!0", True),
        ("!''", True),
        ("!null", True),
        ("(1 == 1)", True),
        # && binds tighter than ||.
        ("true || false && false", True),
        ("(true || false) && false", False),
        # comparisons bind tighter than equality: (1 < 2) == true
        ("1 < 2 == true", True),
        # ! binds tighter than ==: (!1) == false
        ("!1 == false", True),
    ],
)
def test_operators(text: str, value: Any) -> None:
    assert ev(text) is value


def test_and_or_return_operands() -> None:
    assert ev("'a' && 'b'") == "b"
    assert ev("'' && 'b'") == ""
    assert ev("null || 'fallback'") == "fallback"
    assert ev("'first' || 'fallback'") == "first"
    assert ev("env.MISSING || 'default'") == "default"
    assert ev("0 || null") is None


def test_ternary_idiom() -> None:
    assert ev("github.ref == 'refs/heads/main' && 'prod' || 'dev'") == "prod"
    assert ev("github.ref == 'refs/heads/other' && 'prod' || 'dev'") == "dev"


# --- coercion ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("'abc' == 'ABC'", True),  # strings: case-insensitive
        ("'abc' != 'ABD'", True),
        ("1 == '1'", True),  # string -> number
        ("1 == '1.0'", True),
        ("'0x1f' == 31", True),
        ("'' == 0", True),
        ("' 2 ' == 2", True),  # whitespace is trimmed before parsing a number
        ("'abc' == 0", False),  # NaN
        ("null == 0", True),
        ("null == false", True),
        ("null == ''", True),  # both become 0
        ("null == null", True),
        ("true == 1", True),
        ("false == 0", True),
        ("true == 'true'", False),  # 1 vs NaN
        ("'1' == true", True),
        ("NaN == NaN", False),
        ("NaN != NaN", True),
        ("1 < 'x'", False),  # NaN comparisons are false
        ("1 >= 'x'", False),
        ("'a' < 'B'", True),  # strings order case-insensitively
        ("'b' > 'A'", True),
        ("true > false", True),
        ("github.event == github.event", True),  # same object instance
        ("fromJSON('{}') == fromJSON('{}')", False),  # objects compare by identity
        ("fromJSON('[1]') == 1", False),
        ("github.event == 0", False),
    ],
)
def test_loose_equality_and_comparison(text: str, value: bool) -> None:
    assert ev(text) is value


@pytest.mark.parametrize(
    ("value", "truthy"),
    [(None, False), (False, False), (0, False), (0.0, False), (-0.0, False), ("", False), (math.nan, False)]
    + [(True, True), (1, True), (-1, True), ("0", True), ("false", True), ({}, True), ([], True)],
)
def test_truthiness(value: Any, truthy: bool) -> None:
    assert expr.is_truthy(value) is truthy


# --- to_string -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (1, "1"),
        (1.0, "1"),
        (3.1, "3.1"),
        (-0.5, "-0.5"),
        (0.0, "0"),
        (-0.0, "0"),
        (123456789.0, "123456789"),
        (1e21, "1e+21"),
        (1.5e22, "1.5e+22"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (0.000001, "0.000001"),
        (100.25, "100.25"),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        ("text", "text"),
        ([1, "a"], '[\n  1,\n  "a"\n]'),
        ({"a": 1.0}, '{\n  "a": 1\n}'),
    ],
)
def test_to_string(value: Any, text: str) -> None:
    assert to_string(value) == text


# --- property access, index, filters -------------------------------------------------------------


def test_property_access() -> None:
    assert ev("github.ref") == "refs/heads/main"
    assert ev("github['ref']") == "refs/heads/main"
    assert ev("github['event']['pull_request'].labels[1].name") == "docs"
    assert ev("matrix.flags[0]") == "a"
    assert ev("matrix.flags[1.9]") == "b"  # indices are floored
    assert ev("matrix.flags['1']") == "b"  # and coerced to numbers
    assert ev("needs.build-job.outputs.version") == "1.2"  # `-` belongs to property names


def test_missing_properties_are_null() -> None:
    assert ev("github.nope") is None
    assert ev("github.nope.deeper.still") is None
    assert ev("matrix.flags[5]") is None
    assert ev("matrix.flags[-1]") is None
    assert ev("github.ref.length") is None  # properties of a string
    assert ev("vars.ANYTHING") is None  # an absent context


def test_names_are_case_insensitive() -> None:
    assert ev("GitHub.REF") == "refs/heads/main"
    assert ev("Env.greeting") == "hello"
    assert ev("TOJSON(1)") == "1"
    assert ev("StartsWith('Hello', 'he')") is True


def test_object_filters() -> None:
    assert ev("github.event.pull_request.labels.*.name") == ["bug", "docs"]
    assert ev("github.event.commits.*.author.name") == ["ann", "bob"]
    assert ev("github.event.commits[*].author.name") == ["ann", "bob"]
    assert ev("contains(github.event.pull_request.labels.*.name, 'BUG')") is True
    assert ev("join(github.event.commits.*.author.name, ' ')") == "ann bob"
    assert ev("needs.*.result") == ["success"]
    assert ev("steps.*.outputs.artifact") == ["out.tar"]


def test_steps_context() -> None:
    assert ev("steps.build.outcome") == "failure"
    assert ev("steps.build.conclusion") == "success"
    assert ev("steps.build.outputs.artifact") == "out.tar"
    assert ev("steps.nope.outputs.x") is None


# --- functions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("contains('Hello world', 'llo')", True),
        ("contains('Hello world', 'LLO')", True),
        ("contains('Hello world', 'xyz')", False),
        ('contains(fromJSON(\'["push", "pull_request"]\'), github.event_name)', True),
        ("contains(fromJSON('[1, 2]'), '2')", True),  # loose equality on items
        ("contains(fromJSON('[1, 2]'), 3)", False),
        ("contains(123, 2)", True),  # primitives are compared as strings
        ("contains(github.event, 'x')", False),  # objects contain nothing
        ("startsWith('Hello world', 'he')", True),
        ("startsWith('Hello world', 'world')", False),
        ("endsWith('Hello world', 'ORLD')", True),
        ("endsWith('Hello world', 'hello')", False),
        ("endsWith(github.event, '}')", False),
    ],
)
def test_string_functions(text: str, value: bool) -> None:
    assert ev(text) is value


def test_format() -> None:
    assert ev("format('Hello {0} {1} {2}', 'Mona', 'the', 'Octocat')") == "Hello Mona the Octocat"
    assert ev("format('{{Hello {0} {1} {2}!}}', 'Mona', 'the', 'Octocat')") == "{Hello Mona the Octocat!}"
    assert ev("format('{0}{0}', 1.0)") == "11"
    assert ev("format('{0}', null)") == ""
    assert ev("format('plain')") == "plain"


@pytest.mark.parametrize("fmt", ["'{0'", "'}'", "'{x}'", "'{0}{1}'"])
def test_format_errors(fmt: str) -> None:
    with pytest.raises(ExpressionError, match="format"):
        ev(f"format({fmt}, 'a')")


def test_join() -> None:
    assert ev("join(matrix.flags)") == "a,b"
    assert ev("join(matrix.flags, ', ')") == "a, b"
    assert ev("join('abc', ',')") == "abc"  # a primitive is returned as a string
    assert ev("join(fromJSON('[1, true, null]'), '-')") == "1-true-"


def test_tojson_fromjson() -> None:
    assert ev("toJSON(matrix.flags)") == '[\n  "a",\n  "b"\n]'
    assert ev("toJSON('x')") == '"x"'
    assert ev("toJSON(null)") == "null"
    assert ev('fromJSON(\'{"a": {"b": [1, 2]}}\').a.b[1]') == 2
    assert ev("fromJSON('true')") is True
    assert ev("fromJSON(toJSON(matrix)).os") == "omnios"


def test_fromjson_invalid_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError, match="fromJSON"):
        ev("fromJSON('{oops')")


def test_status_functions() -> None:
    ok = Context({}, "success")
    failed = Context({}, "failure")
    cancelled = Context({}, "cancelled")
    assert [ev("success()", c) for c in (ok, failed, cancelled)] == [True, False, False]
    assert [ev("failure()", c) for c in (ok, failed, cancelled)] == [False, True, False]
    assert [ev("cancelled()", c) for c in (ok, failed, cancelled)] == [False, False, True]
    assert [ev("always()", c) for c in (ok, failed, cancelled)] == [True, True, True]


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope(1)", "Unrecognized function: 'nope'"),
        ("contains('a')", "Too few parameters supplied: 'contains'"),
        ("success(1)", "Too many parameters supplied: 'success'"),
        ("join(1, 2, 3)", "Too many parameters supplied: 'join'"),
        ("format()", "Too few parameters supplied: 'format'"),
        ("hashFiles('**/x')", "hashFiles is not supported by Solstice"),
        ("foo.bar", "Unrecognized named-value: 'foo'"),
        ("a = b", "Unexpected symbol: '='"),
        ("1 &", "Unexpected symbol: '&'"),
        ("'unterminated", "Unterminated string literal"),
        ("(1", "Unexpected end of expression"),
        ("1 2", "Unexpected symbol: '2'"),
        ("github.", "Unexpected end of expression"),
        ("github[0", "Unexpected end of expression"),
        ("", "An expression was expected"),
        ("12abc", "Unexpected symbol: '12abc'"),
    ],
)
def test_errors_name_the_problem_and_expression(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        ev(text)
    assert message in str(info.value)
    assert text in str(info.value)


def test_syntax_errors_name_the_position() -> None:
    with pytest.raises(ExpressionError, match="position 8 within expression: github = 1"):
        ev("github = 1")


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ExpressionError, match="depth"):
        ev("(" * 200 + "1" + ")" * 200)
    with pytest.raises(ExpressionError, match="depth"):
        ev("!" * 500 + "true")
    # Long flat chains are fine.
    assert ev(" || ".join(["false"] * 2000) + " || 'x'") == "x"


def test_validate_parses_without_evaluating() -> None:
    expr.validate("steps.a.outputs.b == 'x' && success()")
    with pytest.raises(ExpressionError):
        expr.validate("steps.a.outputs.b === 'x'")


# --- templates -----------------------------------------------------------------------------------


def test_interpolate() -> None:
    assert interpolate("echo ${{ env.GREETING }}, ${{ matrix.os }}!", CTX) == "echo hello, omnios!"
    assert interpolate("no expressions", CTX) == "no expressions"
    assert interpolate("${{ matrix.python }}", CTX) == "3.1"
    assert interpolate("${{ true }}/${{ null }}/${{ 2.0 }}", CTX) == "true//2"
    assert interpolate("${{ matrix.flags }}", CTX) == '[\n  "a",\n  "b"\n]'
    assert interpolate("x${{matrix.os}}y", CTX) == "xomniosy"


def test_interpolate_braces_inside_strings() -> None:
    assert interpolate("${{ format('{{0}}', 1) }}", CTX) == "{0}"
    assert interpolate("${{ 'a}}b' }}", CTX) == "a}}b"


def test_interpolate_errors() -> None:
    with pytest.raises(ExpressionError, match="not closed"):
        interpolate("echo ${{ matrix.os ", CTX)
    with pytest.raises(ExpressionError, match="Unrecognized function"):
        interpolate("echo ${{ frobnicate() }}", CTX)
    with pytest.raises(ExpressionError, match="An expression was expected"):
        interpolate("echo ${{ }}", CTX)


def test_contains_expression() -> None:
    assert expr.contains_expression("echo ${{ x }}")
    assert not expr.contains_expression("echo ${ x }")
    assert not expr.contains_expression("echo $x")


# --- conditions ----------------------------------------------------------------------------------


OK = Context(CTX.values, "success")
FAILED = Context(CTX.values, "failure")
CANCELLED = Context(CTX.values, "cancelled")


def test_condition_empty_means_success() -> None:
    assert evaluate_condition("", OK) is True
    assert evaluate_condition("  ", FAILED) is False
    assert evaluate_condition(None, OK) is True
    assert evaluate_condition(None, CANCELLED) is False


def test_condition_with_or_without_braces() -> None:
    assert evaluate_condition("github.event_name == 'push'", OK) is True
    assert evaluate_condition("${{ github.event_name == 'push' }}", OK) is True
    assert evaluate_condition("  ${{ github.event_name == 'pull_request' }}  ", OK) is False


def test_condition_implicit_success() -> None:
    # Without a status function the condition is success() && (expr).
    assert evaluate_condition("github.event_name == 'push'", FAILED) is False
    assert evaluate_condition("true", FAILED) is False
    assert evaluate_condition("always()", FAILED) is True
    assert evaluate_condition("failure()", FAILED) is True
    assert evaluate_condition("failure()", OK) is False
    assert evaluate_condition("cancelled()", CANCELLED) is True
    assert evaluate_condition("!cancelled()", FAILED) is True
    assert evaluate_condition("failure() && steps.build.outcome == 'failure'", FAILED) is True
    assert evaluate_condition("${{ always() && matrix.os == 'omnios' }}", CANCELLED) is True
    # A status function anywhere counts, even inside another call.
    assert evaluate_condition("contains(format('{0}', failure()), 'true')", FAILED) is True


def test_condition_booleans() -> None:
    assert evaluate_condition(True, OK) is True
    assert evaluate_condition(False, OK) is False
    assert evaluate_condition(True, FAILED) is False  # `if: true` is success() && true


def test_condition_truthiness() -> None:
    assert evaluate_condition("env.GREETING", OK) is True
    assert evaluate_condition("env.EMPTY", OK) is False
    assert evaluate_condition("steps.build.outputs.missing", OK) is False
    assert evaluate_condition("0", OK) is False


def test_condition_with_text_around_braces_is_a_string() -> None:
    # GitHub's pitfall: literal text makes the whole `if:` a (non-empty, so truthy) string.
    assert evaluate_condition("${{ false }} && true", OK) is True
    assert evaluate_condition("${{ false }} && true", FAILED) is False


def test_condition_errors() -> None:
    with pytest.raises(ExpressionError, match="Unrecognized function: 'sucess'"):
        evaluate_condition("sucess()", OK)
    expr.validate_condition("${{ success() }}")
    with pytest.raises(ExpressionError):
        expr.validate_condition("${{ 1 == }}")


# --- robustness ----------------------------------------------------------------------------------


def test_huge_numbers_and_deep_json() -> None:
    ctx = Context({"github": {"n": 10**400, "a": [1, 2]}})
    assert to_string(ev("github.n", ctx)) == "Infinity"
    assert ev("github.n > 1", ctx) is True
    assert ev("github.a[Infinity]", ctx) is None
    assert ev("fromJSON('1" + "0" * 400 + "')") == math.inf
    with pytest.raises(ExpressionError, match="nests too deeply"):
        ev("fromJSON('" + "[" * 20000 + "')")
    with pytest.raises(ExpressionError, match="depth"):
        ev("github" + ".a" * 5000)
    with pytest.raises(ExpressionError, match="depth"):
        evaluate_condition("1" + " == 1" * 3000, CTX)


def test_random_input_raises_only_expression_errors() -> None:
    import random

    atoms = ["github", "matrix", ".", "*", "[", "]", "(", ")", "'x'", "'{0}'", "'[1]'", "1", "0x1", "1e400"]
    atoms += [
        "NaN",
        "true",
        "null",
        "==",
        "<",
        "&&",
        "||",
        "!",
        ",",
        "contains",
        "format",
        "fromJSON",
        "join",
    ]
    atoms += ["success", "a", "${{", "}}", "'", " "]
    rnd = random.Random(7)
    ctx = Context({"github": {"a": [1, {"b": "x"}]}, "matrix": {"m": "1"}}, "failure")
    for _ in range(3000):
        text = "".join(rnd.choice(atoms) for _ in range(rnd.randint(1, 10)))
        for fn in (evaluate, interpolate, evaluate_condition):
            try:
                fn(text, ctx)
            except ExpressionError:
                pass


def test_evaluate_value_keeps_the_type_of_a_single_expression() -> None:
    assert expr.evaluate_value("${{ matrix.python }}", CTX) == 3.1
    assert expr.evaluate_value("  ${{ matrix.flags }} ", CTX) == ["a", "b"]
    assert expr.evaluate_value("${{ 1 == 1 }}", CTX) is True
    assert expr.evaluate_value("${{ matrix.os }}-${{ matrix.python }}", CTX) == "omnios-3.1"
    assert expr.evaluate_value("15", CTX) == "15"
    with pytest.raises(ExpressionError, match="not closed"):
        expr.evaluate_value("${{ matrix.os", CTX)


# --- case() and unsupported functions -------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("case(vars.os == 'omnios', 'illumos', vars.os == 'freebsd', 'bsd', 'other')", "bsd"),
        ("case(vars.os == 'linux', 'gnu', 'other')", "other"),
        ("case(true, 1, 2)", 1),
        ("case(vars.missing, 'a', '', 'b', 0, 'c', 'default')", "default"),
        # Lazy: the chosen value only is evaluated (fromJSON('') would fail).
        ("case(true, 'ok', fromJSON(''))", "ok"),
    ],
)
def test_case_returns_the_value_after_the_first_truthy_predicate(expression: str, expected: object) -> None:
    assert expr.evaluate(expression, expr.Context({"vars": {"os": "freebsd"}})) == expected


@pytest.mark.parametrize("expression", ["case(true, 1)", "case(true, 1, false, 2)"])
def test_case_needs_an_odd_number_of_arguments(expression: str) -> None:
    with pytest.raises(ExpressionError, match="case"):
        expr.validate(expression)


def test_an_unknown_function_is_named_as_not_supported_by_solstice() -> None:
    with pytest.raises(ExpressionError, match="'frobnicate' is not supported by Solstice"):
        expr.validate("frobnicate(1)")


def test_references_lists_the_context_paths_a_template_reads() -> None:
    text = "${{ fromJSON(needs.gen.outputs.matrix) }}-${{ github.ref }}"
    assert expr.references(text) == ("needs.gen.outputs.matrix", "github.ref")
    assert expr.references("no expressions") == ()
