"""The forge-neutral poller (DESIGN.md, "Boundaries"): one loop for every forge.

* ``backend``: the ``Backend`` and ``Report`` protocols a forge implements, ``Admission``;
* ``errors``: ForgeError, ForgeUnavailable, RegistrationGone, ReportBroken (every backend raises
  these);
* ``poller``: the loop (fetch with capacity and backlog check, publish, events, report, cancel with
  grace, checkpoint-then-ack, restart resume, forge up/down with backoff, WATCHDOG/STATUS);
* ``taskstore``: one checkpoint file per task.

A backend is chosen by name: ``open_backend("forgejo", cfg, key)`` imports only that forge.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, cast

from solstice.config import Config
from solstice.errors import ConfigError

from .backend import Admission, Backend, PollerSettings, Report, Verdict
from .errors import ForgeError, ForgeUnavailable, RegistrationGone, ReportBroken
from .poller import Poller

#: Backend name -> the module whose ``open_backend(cfg, key)`` makes it (imported on demand).
backends: dict[str, str] = {
    "forgejo": "solstice.forges.forgejo.backend",
    "github": "solstice.forges.github.backend",
}


def open_backend(name: str, cfg: Config, key: bytes) -> Backend[Any]:
    try:
        module = importlib.import_module(backends[name])
    except KeyError:
        raise ConfigError(f"no forge backend {name!r}; known: {', '.join(sorted(backends))}") from None
    factory = cast(Callable[[Config, bytes], Backend[Any]], module.open_backend)
    return factory(cfg, key)


__all__ = [
    "Admission",
    "Backend",
    "ForgeError",
    "ForgeUnavailable",
    "Poller",
    "PollerSettings",
    "RegistrationGone",
    "Report",
    "ReportBroken",
    "Verdict",
    "backends",
    "open_backend",
]
