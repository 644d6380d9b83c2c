"""The inputs of ``actions/checkout``: which ones Solstice honours, and their values checked.

``problems`` runs at plan time over the step's ``with:`` as written (a value with ``${{ }}`` is
checked only once the job evaluates it); ``parse`` runs in the job over the evaluated values and
returns ``CheckoutInputs``. An input Solstice cannot honour is an error, never ignored.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from solstice import expr
from solstice.errors import WorkflowError


class Submodules(enum.StrEnum):
    NONE = "false"
    TOP = "true"
    RECURSIVE = "recursive"


#: Every input of actions/checkout (v4, v5), as its action.yml spells it; docs/workflow-syntax.md
#: says what each does in Solstice.
HONOURED = (
    "repository",
    "ref",
    "token",
    "path",
    "fetch-depth",
    "fetch-tags",
    "submodules",
    "sparse-checkout",
    "sparse-checkout-cone-mode",
    "lfs",
    "github-server-url",
)
#: Accepted with a documented difference (nothing to do in a fresh VM, or no effect in Solstice).
ACCEPTED = ("clean", "persist-credentials", "show-progress", "set-safe-directory", "ssh-strict", "ssh-user")
#: Refused when set: Solstice's host fetches over HTTP(S) with a token, never over SSH.
REFUSED = {
    "ssh-key": "Solstice fetches over HTTPS with a token; SSH keys are not supported (use `token:`)",
    "ssh-known-hosts": "Solstice fetches over HTTPS; SSH is not supported",
    "filter": "partial clones are not supported (the guest has no credentials to fetch the rest later)",
}
INPUTS = (*HONOURED, *ACCEPTED, *REFUSED)
BOOLEANS = (
    "fetch-tags",
    "sparse-checkout-cone-mode",
    "lfs",
    "clean",
    "persist-credentials",
    "show-progress",
    "set-safe-directory",
    "ssh-strict",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class CheckoutInputs:
    """One checkout step's evaluated inputs (actions/checkout's defaults when absent)."""

    repository: str = ""  # owner/name (or a clone URL); "" is the job's own repository
    ref: str = ""  # branch, tag or sha; "" is the job's commit
    token: str = ""  # "" is the job's token
    path: str = ""
    fetch_depth: int = 1  # 0: all history and tags
    fetch_tags: bool = False
    submodules: Submodules = Submodules.NONE
    sparse_checkout: tuple[str, ...] = ()
    sparse_cone: bool = True
    lfs: bool = False
    server_url: str = ""

    @property
    def needs_history(self) -> bool:
        """Whether the guest needs a git repository, not just the work tree's files."""
        return self.fetch_depth != 1 or self.fetch_tags


def _value_problem(name: str, value: str) -> str | None:
    v = value.strip()
    if name in REFUSED and v:
        return REFUSED[name]
    if name in BOOLEANS and v.lower() not in ("true", "false", ""):
        return f"must be true or false, not {value!r}"
    if name == "fetch-depth" and not (v.isdigit() or v == ""):
        return f"must be a number of commits (0 for all history), not {value!r}"
    if name == "submodules" and v.lower() not in ("true", "false", "recursive", ""):
        return f"must be true, false or recursive, not {value!r}"
    if name == "ssh-user" and v not in ("", "git"):
        return "Solstice fetches over HTTPS; SSH is not supported"
    if name == "repository" and v and not (_NAME_RE.match(v) or v.startswith(("http://", "https://"))):
        return f"must be owner/name or an http(s) clone URL, not {value!r}"
    return None


def problems(with_: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(input, message)`` for each input Solstice cannot honour; values with ``${{ }}`` pass."""
    out: list[tuple[str, str]] = []
    for name, value in with_.items():
        if name not in INPUTS:
            out.append(
                (name, f"`with.{name}`: unknown input of actions/checkout (inputs: {', '.join(INPUTS)})")
            )
            continue
        if expr.contains_expression(value):
            continue
        why = _value_problem(name, value)
        if why:
            out.append((name, f"`with.{name}`: {why}"))
    return out


def _flag(values: Mapping[str, str], name: str, default: bool) -> bool:
    v = values.get(name, "").strip().lower()
    return default if v == "" else v == "true"


def parse(values: Mapping[str, str]) -> CheckoutInputs:
    """The evaluated ``with:`` -> ``CheckoutInputs``; raises ``WorkflowError`` naming the input."""
    bad = problems(values)
    if bad:
        raise WorkflowError([f"checkout: {msg}" for _, msg in bad])
    depth = values.get("fetch-depth", "").strip()
    patterns = tuple(p.strip() for p in values.get("sparse-checkout", "").splitlines() if p.strip())
    return CheckoutInputs(
        repository=values.get("repository", "").strip(),
        ref=values.get("ref", "").strip(),
        token=values.get("token", "").strip(),
        path=values.get("path", "").strip(),
        fetch_depth=int(depth) if depth else 1,
        fetch_tags=_flag(values, "fetch-tags", False),
        submodules=Submodules(values.get("submodules", "").strip().lower() or "false"),
        sparse_checkout=patterns,
        sparse_cone=_flag(values, "sparse-checkout-cone-mode", True),
        lfs=_flag(values, "lfs", False),
        server_url=values.get("github-server-url", "").strip().rstrip("/"),
    )
