"""The runner service loop shared by ``forgejo-runner run`` and ``github-runner run``: logging, the
secrets key, the forge's backend in the poller core, SIGTERM/SIGINT as a clean stop."""

from __future__ import annotations

import argparse
import logging
import signal
import types
from collections.abc import Callable
from typing import Any

from solstice import config as configmod

log = logging.getLogger("solstice.forges")


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
    try:
        poller.run(should_stop=(lambda: stop_when(backend, poller)) if stop_when else (lambda: False))
    except RegistrationGone as exc:
        return backend, exc
    finally:
        poller.close()
    return backend, None
