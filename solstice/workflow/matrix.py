"""``strategy.matrix`` expansion, following GitHub's documented algorithm.

1. The combinations are the cartesian product of the vectors (every key other than ``include`` and
   ``exclude``), the first key varying slowest.
2. ``exclude`` removes every combination that matches all the key/values of one entry (so an entry
   naming only some keys removes all combinations with those values).
3. Each ``include`` entry is added to every original combination where none of its key/values
   overwrites one of the original matrix values (values added by an earlier include may be
   overwritten). If it can be added to none, it becomes a combination of its own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from solstice.errors import SolsticeError

#: GitHub's limit on the jobs one matrix may generate.
MAX_COMBINATIONS = 256


class MatrixError(SolsticeError):
    """The matrix is invalid; ``str()`` says why (translate adds the file:line)."""


def same_value(a: Any, b: Any) -> bool:
    """Equality of matrix values: by JSON type and value (``true`` is not ``1``), deep."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def _entries(value: Any, what: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise MatrixError(f"`{what}` must be a list of mappings")
    for entry in value:
        if not isinstance(entry, Mapping):
            raise MatrixError(f"every `{what}` entry must be a mapping of matrix keys to values")
    return list(value)


def expand(matrix: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The combinations of ``matrix`` (include/exclude applied), in GitHub's order."""
    vectors: dict[str, list[Any]] = {}
    for key, values in matrix.items():
        if key in ("include", "exclude"):
            continue
        if not isinstance(values, list | tuple):
            raise MatrixError(f"matrix vector `{key}` must be a list of values")
        if not values:
            raise MatrixError(f"matrix vector `{key}` does not contain any values")
        vectors[key] = list(values)
    include = _entries(matrix.get("include"), "include")
    exclude = _entries(matrix.get("exclude"), "exclude")
    if not vectors and not include:
        raise MatrixError("the matrix must define at least one vector or `include` entry")

    for entry in exclude:
        for key in entry:
            if key not in vectors:
                raise MatrixError(f"matrix exclude key `{key}` does not match any key within the matrix")

    base: list[dict[str, Any]] = []
    if vectors:
        for values in itertools.product(*vectors.values()):
            combo = dict(zip(vectors, values, strict=True))
            if not any(all(same_value(combo[k], v) for k, v in entry.items()) for entry in exclude):
                base.append(combo)

    extra: list[dict[str, Any]] = []
    for entry in include:
        added = False
        for combo in base:
            # Original values may not be overwritten; values added by an include may.
            if all(k not in vectors or same_value(combo[k], v) for k, v in entry.items()):
                combo.update(entry)
                added = True
        if not added:
            extra.append(dict(entry))

    combos = base + extra
    if not combos:
        raise MatrixError("the matrix produces no job: every combination is excluded")
    if len(combos) > MAX_COMBINATIONS:
        raise MatrixError(
            f"the matrix produces {len(combos)} jobs, more than GitHub's limit of {MAX_COMBINATIONS}"
        )
    return combos
