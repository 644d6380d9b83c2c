"""Run this host's dispatcher: take jobs from RabbitMQ, run each as a unit, follow it to its end.

``solstice dispatcher [--host NAME] [--capacity N] [--labels a,b] [--spawner systemd|process]``;
the defaults come from ``[dispatcher]`` in the configuration (docs/dispatcher.md). It is the main
process of solstice-dispatcher.service (Type=notify: READY once consuming, WATCHDOG from its loop,
STATUS with the running jobs). SIGTERM stops it: it stops consuming, closes its connections and
exits 0; the jobs keep running (they are units of their own) and the next start adopts them.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import signal
import sys
import types
from pathlib import Path

from solstice import config as configmod
from solstice.errors import ConfigError

log = logging.getLogger("solstice.dispatcher")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", metavar="NAME", help="this host's name (default: [dispatcher] host)")
    parser.add_argument(
        "--capacity", type=int, metavar="N", help="at most N jobs at once (default: [dispatcher] capacity)"
    )
    parser.add_argument(
        "--labels",
        metavar="A,B",
        help="consume these labels' queues (default: [dispatcher] labels, else the catalog's labels "
        "of images configured or pulled on this host)",
    )
    parser.add_argument(
        "--spawner",
        choices=("systemd", "process"),
        help="run jobs as transient systemd units or as child processes (default: [dispatcher] spawner)",
    )


def main(args: argparse.Namespace) -> int:
    from solstice.dispatch.dispatcher import Dispatcher
    from solstice.dispatch.process import ProcessSpawner
    from solstice.dispatch.spawner import Spawner
    from solstice.dispatch.systemd import SystemdSpawner
    from solstice.images import Catalog
    from solstice.metrics import serve as serve_metrics
    from solstice.notify import Notifier

    if not args.debug:
        logging.getLogger("solstice").setLevel(logging.INFO)
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    cfg = configmod.load(Path(args.config) if args.config else None)
    dcfg = cfg.dispatcher
    host = args.host or dcfg.host
    capacity = dcfg.capacity if args.capacity is None else args.capacity
    if capacity < 0:
        raise ConfigError("--capacity must be 0 or more")
    if args.labels:
        labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    else:
        labels = list(dcfg.labels) or Catalog.from_config(cfg).served_labels()
    kind = args.spawner or dcfg.spawner
    command = shlex.split(dcfg.job_command) if dcfg.job_command else None
    spawner: Spawner
    if kind == "systemd":
        spawner = SystemdSpawner(cfg, command=command)
    else:
        if command is None:
            found = shutil.which("solstice")
            command = [found, "job", "run"] if found else [sys.executable, "-m", "solstice", "job", "run"]
        spawner = ProcessSpawner(cfg.paths.runtime_dir, host, command, config_file=cfg.path)

    dispatcher = Dispatcher(
        cfg, host=host, labels=labels, capacity=capacity, spawner=spawner, notify=Notifier().send
    )

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        log.info("%s: stopping (running jobs keep running)", signal.Signals(signum).name)
        dispatcher.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    metrics = None
    try:
        metrics = serve_metrics(dispatcher.metrics.registry, *cfg.metrics.address("dispatcher"))
        dispatcher.run()
    finally:
        dispatcher.close()
        if metrics is not None:
            metrics.close()
    log.info("dispatcher %s stopped; %d job(s) left running", host, dispatcher.running())
    return 0
