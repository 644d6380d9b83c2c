"""Manage the key that seals job secrets: ``solstice secrets init [--key-file F]``.

The key (a Fernet key) must be the same on every poller and job host; pollers seal secrets with
it, job processes open them (solstice.secrets). ``init`` writes a new key, mode 0600, and refuses
to overwrite one: jobs sealed with the old key could no longer be opened.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from solstice import config as configmod
from solstice.errors import ConfigError
from solstice.secrets import write_new_key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="secrets_verb", metavar="COMMAND", required=True)
    init = sub.add_parser("init", help="write a new secrets key (mode 0600)", allow_abbrev=False)
    init.add_argument("--key-file", metavar="FILE", help="where (default: [secrets] key_file)")


def main(args: argparse.Namespace) -> int:
    if args.secrets_verb != "init":
        raise AssertionError(args.secrets_verb)
    if args.key_file:
        path = Path(args.key_file)
    else:
        path = Path(configmod.load(Path(args.config) if args.config else None).secrets.key_file)
    try:
        write_new_key(path)
    except FileExistsError:
        raise ConfigError(
            f"{path} exists already; not overwriting it",
            hint="jobs sealed with that key could not be opened any more; remove it first if you mean it",
        ) from None
    except PermissionError:
        raise ConfigError(f"cannot write {path}: permission denied") from None
    print(f"wrote a new secrets key to {path} (mode 0600)")
    print("copy it to every poller and job host; the units read it as the credential secrets-key")
    return 0
