"""Manage the images behind runs-on labels (``solstice image selftest|prepare LABEL``)."""

from __future__ import annotations

import argparse

from .image_ops import add_image_ops


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="image_verb", metavar="COMMAND", required=True)
    add_image_ops(sub)


def main(args: argparse.Namespace) -> int:
    handler = args.image_handler
    result: int = handler(args)
    return result
