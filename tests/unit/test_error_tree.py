"""Every public exception Solstice defines derives from SolsticeError and is in the documented
tree of solstice/errors.py, under the parent it really has."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import solstice
from solstice import errors
from solstice.errors import SolsticeError


def solstice_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(solstice.__path__, "solstice."):
        if info.name == "solstice.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found[f"{obj.__module__}.{name}"] = obj
    return found


def documented_tree() -> dict[str, str | None]:
    """class name -> parent name, from the ``+--`` drawing in errors.py's docstring."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        m = re.match(r"^[\s|]*(?:\+-- )?([A-Z]\w+)\b", line)
        if not m or not ("+-- " in line or line.startswith("    SolsticeError")):
            continue
        depth, name = m.start(1), m.group(1)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def test_every_public_exception_derives_from_solstice_error() -> None:
    stray = [q for q, cls in solstice_exceptions().items() if not issubclass(cls, SolsticeError)]
    assert not stray, f"not SolsticeErrors: {stray}"


def test_every_public_exception_is_in_the_documented_tree_with_its_parent() -> None:
    tree = documented_tree()
    assert tree.get("SolsticeError", "missing") is None
    problems = []
    for qualified, cls in solstice_exceptions().items():
        name = cls.__name__
        if name not in tree:
            problems.append(f"{qualified} is not in the tree of solstice/errors.py")
            continue
        parent = tree[name]
        bases = [b.__name__ for b in cls.__mro__[1:]]
        if parent is not None and parent not in bases:
            problems.append(f"{qualified}: drawn under {parent}, but its bases are {bases[:3]}")
    assert not problems, "\n".join(problems)


def test_the_tree_is_parsed() -> None:
    tree = documented_tree()
    assert tree["PortForwardError"] == "VMError" and tree["VMError"] == "InfraError"
