"""The runner service loop shared by ``forgejo-runner run`` and ``github-runner run``: logging, the
secrets key, the forge's backend in the poller core, SIGTERM/SIGINT as a clean stop."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from solstice import config as configmod

log = logging.getLogger("solstice.forges")


def print_tasks(tasks_dir: Path, noun: str, describe: Callable[[dict[str, Any]], str]) -> None:
    """``show``'s list of the tasks a runner is still reporting (its checkpoints in the core's
    task store): ``describe`` makes one line's text from a checkpoint's JSON."""
    tasks = sorted(tasks_dir.glob("*.json"))
    print(f"{noun} being reported: {len(tasks)}")
    for t in tasks:
        try:
            data = json.loads(t.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now, or broken (the runner renames it at its start)
        age = time.time() - t.stat().st_mtime
        print(f"  {describe(data)}; saved {age:.0f} s ago")


def start_hint(verb: str, config: Path | None, systemd_dir: Path = Path("/run/systemd/system")) -> str:
    """How to start the runner ``verb`` (``forgejo-runner``, ``github-runner``) after ``register``:
    the unit where systemd runs, else the command, with the configuration file it was registered
    with (a runner started without it would look for its registration elsewhere)."""
    custom = config is not None and config != configmod.DEFAULT_PATH
    if systemd_dir.is_dir():
        hint = f"start the service: systemctl enable --now solstice-{verb}"
        if custom:
            hint += (
                f"\n  (the unit reads {configmod.DEFAULT_PATH}; if that is not {config}, give it "
                f"`--config {config}` with a drop-in: docs/systemd.md)"
            )
        return hint
    option = f" --config {config}" if custom else ""
    return f"start the runner: solstice{option} {verb} run  (systemd is not running on this host)"


def serve(
    cfg: configmod.Config,
    args: argparse.Namespace,
    forge: str,
    *,
    stop_when: Callable[[Any, Any], bool] | None = None,
) -> tuple[Any, Exception | None]:
    """Run ``forge``'s backend until stopped; ``stop_when(backend, poller)`` ends it early. Returns
    the backend and the RegistrationGone that ended it, if one did (the caller says what to do)."""
    # Only the forge-neutral core and that forge's backend: no vm, images or job (DESIGN.md).
    from solstice.forges.core import Poller, RegistrationGone, open_backend
    from solstice.metrics import serve as serve_metrics
    from solstice.notify import Notifier
    from solstice.secrets import key_path, load_key

    if not args.debug:
        logging.getLogger("solstice").setLevel(logging.INFO)
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        logging.getLogger("urllib3").setLevel(logging.WARNING)
    key = load_key(key_path(cfg.secrets.key_file))
    backend = open_backend(forge, cfg, key)
    poller = Poller(cfg.broker, backend, key=key, notify=Notifier().send)

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        log.info(
            "%s: stopping (the jobs keep running; the next start resumes their reports)",
            signal.Signals(signum).name,
        )
        poller.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    metrics = None
    try:
        metrics = serve_metrics(poller.metrics.registry, *cfg.metrics.address(forge))
        poller.run(should_stop=(lambda: stop_when(backend, poller)) if stop_when else (lambda: False))
    except RegistrationGone as exc:
        return backend, exc
    finally:
        poller.close()
        if metrics is not None:
            metrics.close()
    return backend, None
