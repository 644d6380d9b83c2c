"""What to write instead of the actions that run a job's commands in a VM of another OS
(``vmactions/<os>-vm``, ``cross-platform-actions/action``): in Solstice the job itself runs in that
VM, so they become ``runs-on: <label>`` and ``run:`` steps. The known labels come from the caller
(the CLI knows the image catalog; this package may not import solstice.images)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from solstice import expr

_VMACTIONS_RE = re.compile(r"^(?:https?://[^/\s]+/)?vmactions/([a-z0-9]+)-vm(?:@\S*)?$", re.IGNORECASE)
_CPA_RE = re.compile(r"^(?:https?://[^/\s]+/)?cross-platform-actions/action(?:@\S*)?$", re.IGNORECASE)
DOC = "docs/workflow-syntax.md#coming-from-vmactions-or-cross-platform-actions"


def _text(with_: Mapping[str, Any], key: str) -> str:
    value = with_.get(key)
    return expr.to_string(value).strip() if value is not None else ""


def _labels_for(os: str, known: Sequence[str] | None) -> str:
    if known is None:
        return f"the label of your {os} image in this host's catalog"
    matching = [k for k in known if k.lower().startswith(os.lower())]
    if matching:
        return f"labels for {os} on this host: {', '.join(matching)}"
    return f"this host has no {os} image yet: add one as [images.{os}-<release>] (docs/images.md)"


def _steps(commands: Sequence[tuple[str, str]]) -> str:
    given = [(k, v) for k, v in commands if v]
    if not given:
        return "its commands as `run:` steps"
    return ", then ".join(f"`{k}:` as a `run:` step" for k, _ in given)


def suggestion(uses: str, with_: Any, known: Sequence[str] | None) -> str | None:
    """The message for a VM-running action (what to write instead), or None for any other action."""
    w = with_ if isinstance(with_, Mapping) else {}
    uses = uses.strip()
    m = _VMACTIONS_RE.match(uses)
    if m:
        os = m.group(1).lower()
        release = _text(w, "release")
        extras = []
        if str(w.get("usesh", "")).lower() == "true":
            extras.append("`usesh: true` becomes `shell: sh`")
        if any(k in w for k in ("sync", "copyback")):
            extras.append(
                "`sync`/`copyback` are not needed: the checkout happens in the guest (actions/checkout)"
            )
        commands = [("prepare", _text(w, "prepare")), ("run", _text(w, "run"))]
        source = f"vmactions/{os}-vm"
    else:
        if not _CPA_RE.match(uses):
            return None
        os = _text(w, "operating_system").lower() or "<operating_system>"
        release = _text(w, "version")
        extras = []
        commands = [("run", _text(w, "run"))]
        source = "cross-platform-actions/action"
    label = f"{os}-{release}" if release else f"{os}-<release>"
    note = "; " + "; ".join(extras) if extras else ""
    return (
        f"{source} runs its commands in a VM ({os}), which Solstice does for the whole job: "
        f"write `runs-on: {label}` for the job ({_labels_for(os, known)}) and put "
        f"{_steps(commands)} in place of this step{note} ({DOC})"
    )
