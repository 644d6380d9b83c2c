"""``solstice image selftest LABEL`` and ``solstice image prepare LABEL``: the commands that boot an
image (solstice.job.selftest, solstice.job.prepare); ``add_image_ops`` adds them to the ``image``
verb's subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from solstice import config as configmod
from solstice.images import Catalog
from solstice.images.selftest import SelftestResult, write_record
from solstice.job.prepare import prepare_image
from solstice.job.selftest import run_selftest
from solstice.model import Result

from .common import job_settings
from .render import JobSummary, TerminalSink


def add_image_ops(sub: Any) -> None:
    """Add ``selftest`` and ``prepare`` to ``sub`` (the ``image`` verb's add_subparsers())."""
    st = sub.add_parser(
        "selftest",
        help="boot LABEL's image and check the guest contract; record the result for `image list`",
        allow_abbrev=False,
    )
    st.add_argument("label", metavar="LABEL")
    _vm_arguments(st)
    st.set_defaults(image_handler=selftest)

    pr = sub.add_parser(
        "prepare",
        help="boot LABEL's base image, run its setup commands as root and keep the result for its jobs",
        allow_abbrev=False,
    )
    pr.add_argument("label", metavar="LABEL")
    pr.add_argument("--force", action="store_true", help="prepare again even if it is up to date")
    _vm_arguments(pr)
    pr.set_defaults(image_handler=prepare)


def _vm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accel", choices=("kvm", "tcg"), help="QEMU accelerator (default from [vm] accel)")
    p.add_argument("--boot-timeout", type=float, metavar="SECONDS", help="give up on a guest not up by then")
    p.add_argument("--quiet", action="store_true", help="do not print the job's log, only the result")


def _sink(args: argparse.Namespace, label: str) -> TerminalSink:
    out = open("/dev/null", "w") if args.quiet else sys.stdout  # noqa: SIM115 (lives as long as the command)
    return TerminalSink(JobSummary(name=label, label=label), out=out)


def print_table(label: str, result: SelftestResult, record: Path, out: Any = None) -> None:
    out = out or sys.stdout
    width = max(len(c.name) for c in result.checks)
    boot = f"{result.boot_seconds:.1f} s" if result.boot_seconds is not None else "-"
    print(f"\nself-test of {label}: boot {boot}", file=out)
    print(f"{'check'.ljust(width)}  result  detail", file=out)
    print(f"{'-' * width}  ------  ------", file=out)
    for c in result.checks:
        print(f"{c.name.ljust(width)}  {'pass' if c.passed else 'FAIL':6}  {c.detail}".rstrip(), file=out)
    verdict = "passed" if result.passed else "FAILED"
    print(f"\n{label}: self-test {verdict} (recorded in {record})", file=out)


def selftest(args: argparse.Namespace) -> int:
    cfg = configmod.load(Path(args.config) if args.config else None)
    catalog = Catalog.from_config(cfg)
    image = catalog.get(args.label)
    settings = job_settings(cfg, accel=args.accel, boot_timeout=args.boot_timeout)
    result = run_selftest(image, settings, _sink(args, image.label))
    record = write_record(cfg.paths.images_dir, image.label, result)
    print_table(image.label, result, record)
    return 0 if result.passed else 1


def prepare(args: argparse.Namespace) -> int:
    cfg = configmod.load(Path(args.config) if args.config else None)
    catalog = Catalog.from_config(cfg)
    image = catalog.get(args.label, prepared=False)
    settings = job_settings(cfg, accel=args.accel, boot_timeout=args.boot_timeout)
    done = prepare_image(image, cfg.paths.images_dir, settings, _sink(args, image.label), force=args.force)
    if done.reused:
        print(f"{image.label}: already prepared: {done.path}")
        return 0
    if done.result is Result.SUCCESS:
        print(f"{image.label}: prepared {done.path}; its jobs boot it from now on")
        return 0
    print(
        f"solstice: error: {image.label} was not prepared ({done.result.value}): {done.message}",
        file=sys.stderr,
    )
    return 1
