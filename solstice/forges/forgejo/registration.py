"""The runner's registration: what ``solstice forgejo-runner register`` stores and ``run`` reads.

The file follows the Forgejo runner's ``.runner`` (forgejo-runner-protocol.md §3.1 step 4): id,
uuid, name, token (the runner credential, not the registration token), address (the instance URL)
and labels. It is written with mode 0600 into a 0700 directory under the state directory, by an
atomic rename, so a crash never leaves half a credential behind.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from solstice.errors import ConfigError
from solstice.files import atomic_write

WARNING = "This file is written by `solstice forgejo-runner register`; do not edit or share it."
DIR_NAME = "forgejo-runner"
FILE_NAME = "runner.json"


@dataclass(frozen=True)
class Registration:
    id: int
    uuid: str
    name: str
    token: str
    address: str  # the instance's root URL (sub-path included)
    labels: tuple[str, ...]
    ephemeral: bool = False

    def __repr__(self) -> str:  # never print the token, not even in a traceback
        return (
            f"Registration(id={self.id}, uuid={self.uuid!r}, name={self.name!r}, address={self.address!r})"
        )


def default_path(state_dir: str | Path, configured: str = "") -> Path:
    if configured:
        p = Path(configured)
        return p if p.is_absolute() else Path(state_dir) / p
    return Path(state_dir) / DIR_NAME / FILE_NAME


def save(path: Path, reg: Registration) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data: dict[str, Any] = {"WARNING": WARNING, **asdict(reg)}
    data["labels"] = list(reg.labels)
    atomic_write(path, json.dumps(data, indent=2) + "\n", mode=0o600, durable=True)


def load(path: Path) -> Registration:
    hint = "register first: solstice forgejo-runner register --url URL --token TOKEN --name NAME --labels L"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"this runner is not registered: {path} does not exist", hint=hint) from None
    except PermissionError:
        raise ConfigError(f"{path} is not readable by this user (it holds the runner's token)") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})", hint=hint) from None
    try:
        labels = data["labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError("labels must be a list of strings")
        return Registration(
            id=int(data.get("id", 0)),
            uuid=str(data["uuid"]),
            name=str(data["name"]),
            token=str(data["token"]),
            address=str(data["address"]),
            labels=tuple(labels),
            ephemeral=bool(data.get("ephemeral", False)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a runner registration ({exc})", hint=hint) from None
