"""``--cpus``/``--memory``: the size a command's jobs ask for (``run``, ``submit``); what is not
given stays unset, for the machine plan (solstice.images.plan) to decide."""

from __future__ import annotations

import argparse

from solstice.images import requested_size
from solstice.model import Size


def add_size_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cpus", type=int, metavar="N", help="virtual CPUs per VM (default: the image's, else [vm] cpus)"
    )
    p.add_argument(
        "--memory",
        metavar="SIZE",
        help="memory per VM, e.g. 2G or 1024M (default: the image's, else [vm] memory)",
    )


def size_of(args: argparse.Namespace) -> Size:
    return requested_size(args.cpus, args.memory)
