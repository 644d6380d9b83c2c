"""Workflow commands that steps print on stdout (``::add-mask::``, ``::group::``, ``::error::`` ...).

Only the commands that change what the runner does are interpreted here; display commands
(group, error, warning, notice, debug) pass through as log lines, which the forges' log viewers render.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Command(enum.StrEnum):
    ADD_MASK = "add-mask"
    GROUP = "group"
    ENDGROUP = "endgroup"
    ERROR = "error"
    WARNING = "warning"
    NOTICE = "notice"
    DEBUG = "debug"
    STOP_COMMANDS = "stop-commands"
    SET_OUTPUT = "set-output"
    ECHO = "echo"


@dataclass(frozen=True)
class WorkflowCommand:
    command: str
    value: str
    params: Mapping[str, str] = field(default_factory=dict)


def _unescape_data(s: str) -> str:
    return s.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def _unescape_property(s: str) -> str:
    return _unescape_data(s).replace("%3A", ":").replace("%2C", ",")


def parse(line: str) -> WorkflowCommand | None:
    """``::name key=v,key=v::value`` -> WorkflowCommand; anything else -> None."""
    stripped = line.lstrip()
    if not stripped.startswith("::"):
        return None
    end = stripped.find("::", 2)
    if end < 0:
        return None
    head = stripped[2:end]
    value = stripped[end + 2 :]
    name, _, props = head.partition(" ")
    if not name:
        return None
    params: dict[str, str] = {}
    for item in props.split(","):
        key, sep, val = item.partition("=")
        if sep and key.strip():
            params[key.strip()] = _unescape_property(val)
    return WorkflowCommand(name, _unescape_data(value), params)


class CommandState:
    """Per-job command state: ``::stop-commands::TOKEN`` suspends processing until ``::TOKEN::``."""

    def __init__(self) -> None:
        self.stop_token: str | None = None

    def interpret(self, line: str) -> WorkflowCommand | None:
        cmd = parse(line)
        if cmd is None:
            return None
        if self.stop_token is not None:
            if cmd.command == self.stop_token:
                self.stop_token = None
            return None
        if cmd.command == Command.STOP_COMMANDS and cmd.value:
            self.stop_token = cmd.value
        return cmd
