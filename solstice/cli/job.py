"""``solstice job run UUID``: the main process of solstice-job@UUID.service (the dispatcher starts
it). The runtime is solstice.job.service; this only parses, calls and prints."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from solstice.config import Config
from solstice.dispatch.contract import CREDENTIAL, EXIT_USAGE
from solstice.job.debugssh import keeper
from solstice.job.runner import JobSettings
from solstice.job.service import UsageError, run_service_job
from solstice.model import JobRequest
from solstice.queue import BatchingEventSink, decode_request

from .common import job_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="job_verb", metavar="COMMAND", required=True)
    run = sub.add_parser(
        "run",
        help="run job UUID: the main process of solstice-job@UUID.service (the dispatcher starts it)",
        allow_abbrev=False,
    )
    run.add_argument("job_id", metavar="UUID")
    # Also after `job run` (the dispatcher appends it there: solstice.dispatch.contract.job_argv);
    # SUPPRESS keeps a `solstice --config FILE job run` from being reset to None.
    run.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="configuration file (as solstice --config)",
    )
    run.add_argument(
        "--warm-vm",
        metavar="VM_ID",
        default="",
        help="take this warm pool VM instead of booting one (the dispatcher passes it; a VM that "
        "cannot be taken is replaced by a fresh boot)",
    )
    run.add_argument(
        "--request",
        metavar="FILE",
        help=f"the sealed JobRequest (default: $CREDENTIALS_DIRECTORY/{CREDENTIAL}, "
        "else <runtime_dir>/requests/UUID.json)",
    )


def service_settings(cfg: Config) -> JobSettings:
    """The service job's settings: those of ``solstice run``, plus debug SSH from ``[debug]``."""
    return job_settings(cfg, keep_on_failure=keeper(cfg.debug, cfg.paths.runtime_dir))


def outbox(request: JobRequest, cfg: Config) -> BatchingEventSink | None:
    return BatchingEventSink.for_request(cfg.broker, request)


def run(args: argparse.Namespace) -> int:
    if not args.debug:
        # pika logs each lost connection at ERROR; the queue layer says it once, as a WARNING.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        return run_service_job(
            args.job_id,
            args.request,
            args.config,
            settings=lambda cfg: dataclasses.replace(service_settings(cfg), warm_vm=args.warm_vm),
            decode=decode_request,
            outbox=outbox,
        )
    except UsageError as exc:
        print(f"solstice job run: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"  ({exc.hint})", file=sys.stderr)
        return EXIT_USAGE


def main(args: argparse.Namespace) -> int:
    if args.job_verb == "run":
        return run(args)
    raise AssertionError(args.job_verb)
