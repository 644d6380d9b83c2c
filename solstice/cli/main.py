"""``solstice``: argument parsing, dispatch to one module per verb, and friendly errors at the edge."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import types
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path

from solstice import __version__
from solstice import config as configmod
from solstice.errors import SolsticeError
from solstice.model.terminal import safe_text
from solstice.vm import leftovers

#: verb -> module under solstice.cli with ``add_arguments(parser)`` and ``main(args) -> int``.
VERBS: dict[str, str] = {
    "run": "run",
    "plan": "plan",
    "db": "db",
    "status": "status",
    "submit": "submit",
    "dispatcher": "dispatcher",
    "job": "job",
    "secrets": "secrets_cmd",
    "forgejo-runner": "forgejo",
    "github-runner": "github",
    "image": "image",
    "doctor": "doctor",
    "debug": "debug",
    "pool": "pool",
}

EXIT_USAGE = 2
EXIT_ERROR = 1


def _sigterm_to_exit(signum: int, frame: types.FrameType | None) -> None:
    # So that every ``finally`` and ExitStack runs on ``systemctl stop`` as on Ctrl-C; a second
    # SIGTERM must not interrupt that cleanup half-way (systemd's SIGKILL comes later anyway).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def chosen_verb(argv: Sequence[str]) -> str | None:
    """The verb of a command line, if it names one (after the global options), else None."""
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            next(args, None)
        elif arg in VERBS:
            return arg
        elif not arg.startswith("-"):
            return None
    return None


def build_parser(
    only: str | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    """The parser of every verb, or of ``only``: importing a verb's module is what costs (``job``
    loads paramiko, qemu.qmp and pycdlib), and a daemon should not carry the others' libraries."""
    parser = argparse.ArgumentParser(
        prog="solstice",
        description="Run GitHub/Forgejo Actions jobs in a fresh QEMU virtual machine per job.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"solstice {__version__}")
    parser.add_argument(
        "--config", metavar="FILE", help="configuration file (default /etc/solstice/solstice.toml)"
    )
    parser.add_argument("--debug", action="store_true", help="log every command and show tracebacks")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {}
    for verb, modname in VERBS.items():
        if only is not None and verb != only:
            continue
        mod = import_module(f"solstice.cli.{modname}")
        p = sub.add_parser(
            verb, help=mod.__doc__.splitlines()[0] if mod.__doc__ else None, allow_abbrev=False
        )
        mod.add_arguments(p)
        handlers[verb] = mod.main
    return parser, handlers


def _sweep_leftovers(args: argparse.Namespace) -> None:
    """What jobs killed earlier left behind (work directories, QEMUs, port locks) goes first."""
    try:
        cfg = configmod.load(Path(args.config) if args.config else None)
    except SolsticeError:
        return  # the command itself reports a bad configuration
    leftovers.sweep(Path(cfg.paths.runtime_dir))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, handlers = build_parser(chosen_verb(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.debug:
        # qemu.qmp logs expected connection retries at ERROR level; our own errors say what matters.
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    if not args.verb:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _sigterm_to_exit)
    _sweep_leftovers(args)
    try:
        return handlers[args.verb](args)
    except SolsticeError as exc:
        if args.debug:
            raise
        print(safe_text(f"solstice: error: {exc}"), file=sys.stderr)  # may quote a guest's console
        if exc.hint:
            print(f"  ({exc.hint})", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("solstice: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`solstice plan ... | head`): not an error, and nothing more to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
