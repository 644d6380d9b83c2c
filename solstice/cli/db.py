"""Manage the job database: apply schema migrations, show the schema version.

``solstice db migrate`` applies the migrations this version ships that the database lacks (safe to
run on several hosts at once: they take turns). ``solstice db status [--check]`` shows the schema
version. The database is ``[database] url`` (or ``SOLSTICE_DATABASE_URL``); see docs/database.md.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from solstice import config as configmod
from solstice.errors import SolsticeError

if TYPE_CHECKING:
    from solstice.store import Store


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the verb it sets args.config; absent, it leaves the global option alone.
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="configuration file (default /etc/solstice/solstice.toml)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    sub = parser.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    migrate = sub.add_parser(
        "migrate", help="apply pending schema migrations and print what was done", allow_abbrev=False
    )
    add_config_argument(migrate)
    status = sub.add_parser("status", help="show the schema version and migrations", allow_abbrev=False)
    add_config_argument(status)
    status.add_argument(
        "--check", action="store_true", help="exit with status 1 when migrations are pending"
    )


def open_store(args: argparse.Namespace, *, application_name: str) -> Store:
    """Connect to the configured database (the store is imported here: psycopg is optional)."""
    try:
        from solstice.store import Store
    except ImportError as exc:
        raise SolsticeError(
            f"the job database needs psycopg 3, which cannot be imported ({exc})",
            hint="install python3-psycopg (or pip install psycopg) and libpq5",
        ) from None
    path = getattr(args, "config", None)
    cfg = configmod.load(Path(path) if path else None)
    return Store.connect(cfg.database, application_name=application_name)


def format_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _migrate(store: Store) -> int:
    applied = store.migrate()
    for migration in applied:
        print(f"applied {migration.id}")
    status = store.schema_status()
    if status.newer_than_code:
        print(
            f"schema version {status.version} is newer than this solstice knows ({status.latest}):"
            " nothing to apply"
        )
    elif applied:
        print(f"schema version {status.version} (up to date)")
    else:
        print(f"nothing to apply: schema version {status.version} is up to date")
    return 0


def _status(store: Store, check: bool) -> int:
    status = store.schema_status()
    if status.version == 0:
        state = "empty: run `solstice db migrate`"
    elif status.newer_than_code:
        state = f"newer than this solstice ({status.latest})"
    elif status.pending:
        state = f"{len(status.pending)} migration(s) pending: run `solstice db migrate`"
    else:
        state = "up to date"
    print(f"schema version {status.version} (latest {status.latest}): {state}")
    for applied in status.applied:
        note = ""
        if applied.matches is False:
            note = "  (WARNING: the shipped SQL of this migration changed after it was applied)"
        elif applied.matches is None:
            note = "  (unknown to this solstice)"
        print(f"  {applied.version:04d}_{applied.name:<20} applied {format_time(applied.applied_at)}{note}")
    for migration in status.pending:
        print(f"  {migration.id:<25} pending")
    return 1 if check and status.pending else 0


def main(args: argparse.Namespace) -> int:
    with open_store(args, application_name=f"solstice db {args.db_command}") as store:
        print(f"database: {store.where}")
        if args.db_command == "migrate":
            return _migrate(store)
        return _status(store, args.check)
