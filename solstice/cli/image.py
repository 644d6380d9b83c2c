"""Manage this host's images: list, pull, verify and remove them (docs/images.md).

``solstice image list [--json]``, ``image pull LABEL...``, ``image verify [LABEL...]``,
``image rm LABEL...``. Each subcommand is a :class:`Subcommand` in ``SUBCOMMANDS``; adding one
(``selftest`` and ``prepare``, which boot the image, come from ``image_ops``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from solstice import config as configmod
from solstice.config import Config
from solstice.errors import SolsticeError

from .image_ops import add_image_ops

SCHEMA = "solstice.images.v1"


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace, Config], int]


def _labels_argument(required: bool) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "labels",
            metavar="LABEL",
            nargs="+" if required else "*",
            help="image labels or aliases" + ("" if required else " (default: every present image)"),
        )

    return add


def _list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help=f"print a JSON document ({SCHEMA})")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return "-"


def image_rows(cfg: Config) -> list[dict[str, Any]]:
    """One row per catalog entry: what ``image list`` shows."""
    from solstice.images import Catalog
    from solstice.images.pull import disk_usage
    from solstice.images.selftest import read_record
    from solstice.images.state import readiness

    catalog = Catalog.from_config(cfg)
    rows = []
    for label in catalog.entries:
        image = catalog.get(label)
        ready = readiness(image)
        selftest = read_record(cfg.paths.images_dir, label) if image.state_dir is not None else None
        entry = image.config
        assert entry is not None
        rows.append(
            {
                "label": label,
                "aliases": list(entry.aliases),
                "os": entry.os,
                "arch": entry.arch,
                "path": str(image.pristine),
                "size_on_disk": disk_usage(image.pristine),
                "present": ready.present,
                "verified": ready.verified,
                "reason": ready.reason,
                "selftest": None
                if selftest is None
                else {"passed": selftest.passed, "at": selftest.at, "boot_seconds": selftest.boot_seconds},
                "boot_verified": entry.verified,
                "origin": image.origin,
            }
        )
    return rows


def _list(args: argparse.Namespace, cfg: Config) -> int:
    rows = image_rows(cfg)
    if args.json:
        print(json.dumps({"schema": SCHEMA, "images": rows}, indent=2))
        return 0
    table = [("LABEL", "OS", "ARCH", "SIZE", "PRESENT", "VERIFIED", "SELF-TEST", "CATALOG ENTRY")]
    for r in rows:
        st = r["selftest"]
        selftest = "-" if st is None else ("passed " if st["passed"] else "FAILED ") + st["at"]
        table.append(
            (
                r["label"],
                r["os"] or "-",
                r["arch"],
                _size(r["size_on_disk"]) if r["present"] else "-",
                "yes" if r["present"] else "no",
                "yes" if r["verified"] else "no",
                selftest,
                r["boot_verified"] or "-",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    waiting = [r for r in rows if not (r["present"] and r["verified"])]
    if waiting:
        print("\nnot usable yet (the dispatcher takes no jobs for them):")
        for r in waiting:
            print(f"  {r['label']}: {r['reason']}")
    return 0


def _puller(cfg: Config) -> Any:
    from solstice.images.pull import Puller

    return Puller(qemu_img=cfg.vm.qemu_img)


def _each(labels: list[str], action: Callable[[str], None]) -> int:
    """Run ``action`` for every label; report each failure and go on with the next."""
    failed = 0
    for label in labels:
        try:
            action(label)
        except SolsticeError as exc:
            failed += 1
            print(f"solstice: error: {label}: {exc}", file=sys.stderr)
            if exc.hint:
                print(f"  ({exc.hint})", file=sys.stderr)
    return 1 if failed else 0


def _pull(args: argparse.Namespace, cfg: Config) -> int:
    from solstice.cli.progress import ProgressPrinter
    from solstice.images import Catalog

    catalog = Catalog.from_config(cfg)
    puller = _puller(cfg)

    def pull(label: str) -> None:
        image = catalog.get(label)
        printer = ProgressPrinter(image.label, sys.stderr)
        try:
            state = puller.pull(image, printer)
        finally:
            printer.finish()
        print(f"pulled {image.label}: {state.path} ({_size(state.size)}), sha256 {state.sha256}")

    return _each(args.labels, pull)


def _verify(args: argparse.Namespace, cfg: Config) -> int:
    from solstice.images import Catalog
    from solstice.images.state import needs_verification, readiness

    catalog = Catalog.from_config(cfg)
    puller = _puller(cfg)
    labels = args.labels or [label for label in catalog.entries if catalog.get(label).pristine.is_file()]

    def verify(label: str) -> None:
        image = catalog.get(label)
        if not needs_verification(image):
            ready = readiness(image)
            if not ready.ready:
                raise SolsticeError(ready.reason)
            print(f"ok {image.label}: {ready.reason}")
            return
        state = puller.verify(image)
        if not state.ok:
            raise SolsticeError(f"verification failed: {state.problem}")
        print(f"ok {image.label}: sha256 {state.sha256} verified {state.verified_at}")

    if not labels:
        print("no image is present; `solstice image list` shows the catalog")
        return 0
    return _each(labels, verify)


def _rm(args: argparse.Namespace, cfg: Config) -> int:
    from solstice.images import Catalog

    catalog = Catalog.from_config(cfg)
    puller = _puller(cfg)

    def rm(label: str) -> None:
        removed = puller.remove(catalog.get(label))
        print(f"removed {label}: " + (", ".join(str(p) for p in removed) or "nothing was there"))

    return _each(args.labels, rm)


#: The ``image`` subcommands, in help order. Another subcommand is one more entry.
SUBCOMMANDS: list[Subcommand] = [
    Subcommand("list", "the catalog: present, verified, self-tested", _list_arguments, _list),
    Subcommand("pull", "download, verify and install images", _labels_argument(True), _pull),
    Subcommand(
        "verify", "check present images against their recorded sha256", _labels_argument(False), _verify
    ),
    Subcommand("rm", "remove pulled images", _labels_argument(True), _rm),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="image_command", metavar="SUBCOMMAND")
    for command in SUBCOMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help, allow_abbrev=False)
        command.add_arguments(p)
    add_image_ops(sub)


def main(args: argparse.Namespace) -> int:
    commands = {c.name: c for c in SUBCOMMANDS}
    if not args.image_command:
        print(
            "solstice image: name a subcommand: " + ", ".join([*commands, "selftest", "prepare"]),
            file=sys.stderr,
        )
        return 2
    handler = getattr(args, "image_handler", None)
    if handler is not None:
        result: int = handler(args)
        return result
    cfg = configmod.load(Path(args.config) if args.config else None)
    return commands[args.image_command].main(args, cfg)
