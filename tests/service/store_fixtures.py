"""PostgreSQL fixtures for the store tests (imported by test_store*.py; kept out of conftest.py).

A real server is needed: 127.0.0.1:5432 with trust auth as on the build machines (scripts/services
starts it), or ``SOLSTICE_TEST_POSTGRES`` naming a maintenance database to connect to. Each test
session creates its own databases, ``solstice_test_<random>...``, and drops them at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from solstice.config import DatabaseConfig
from solstice.model.core import JobRequest, JobSpec, Source, Step
from solstice.store import Store

#: The fixtures, for ``from store_fixtures import *`` in the test modules.
__all__ = ["pg_databases", "store_url", "empty_db_url", "store", "connect"]

ADMIN_URL = os.environ.get("SOLSTICE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


class Databases:
    """Creates throw-away databases and drops them all at the end of the session."""

    def __init__(self) -> None:
        self.prefix = f"solstice_test_{secrets.token_hex(4)}"
        self.names: list[str] = []

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10)

    def create(self) -> str:
        name = f"{self.prefix}_{len(self.names)}"
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.names.append(name)
        return make_conninfo(ADMIN_URL, dbname=name)

    def create_migrated(self) -> str:
        url = self.create()
        with Store.connect(DatabaseConfig(url=url)) as store:
            store.migrate()
        return url

    def drop_all(self) -> None:
        wait_for_postgres()
        with self.admin() as conn:
            for name in self.names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def postgres_ready() -> bool:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def wait_for_postgres(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not postgres_ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"PostgreSQL at {ADMIN_URL} is not ready after {timeout:.0f} s")
        time.sleep(0.2)


def local_cluster() -> list[str] | None:
    """``pg_ctlcluster`` argv prefix for the local cluster the tests use, or None when the server is
    not a local Debian cluster (then the restart test cannot run)."""
    host = conninfo_to_dict(ADMIN_URL).get("host", "")
    if shutil.which("pg_ctlcluster") is None or host not in ("127.0.0.1", "localhost", "::1"):
        return None
    versions = sorted(
        (p.name for p in Path("/etc/postgresql").glob("*") if (p / "main").is_dir()),
        key=lambda v: [int(x) for x in v.split(".") if x.isdigit()],
    )
    if not versions:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main"]


def pg_ctl(action: str) -> None:
    argv = local_cluster()
    assert argv is not None
    proc = subprocess.run([*argv, action], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"pg_ctlcluster {action} failed: {proc.stdout}{proc.stderr}"


def ensure_postgres_running() -> None:
    """Start the local cluster again if a test left it stopped."""
    if postgres_ready():
        return
    argv = local_cluster()
    if argv is not None:
        subprocess.run([*argv, "start"], capture_output=True, text=True, timeout=120)
    wait_for_postgres()


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[Databases]:
    if not postgres_ready():
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_URL}: run scripts/services, or point "
            "SOLSTICE_TEST_POSTGRES at a server where this user may create databases"
        )
    dbs = Databases()
    try:
        yield dbs
    finally:
        dbs.drop_all()


@pytest.fixture(scope="session")
def store_url(pg_databases: Databases) -> str:
    """A migrated database shared by the session (tests use fresh job uuids and host names)."""
    return pg_databases.create_migrated()


@pytest.fixture
def empty_db_url(pg_databases: Databases) -> str:
    """A fresh database without the schema."""
    return pg_databases.create()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store.connect(DatabaseConfig(url=store_url), application_name="solstice-test")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def connect(store_url: str) -> Iterator[Callable[[], Store]]:
    """More stores on the same database (one connection each), closed after the test."""
    opened: list[Store] = []

    def _connect() -> Store:
        s = Store.connect(DatabaseConfig(url=store_url), application_name="solstice-test")
        opened.append(s)
        return s

    try:
        yield _connect
    finally:
        for s in opened:
            s.close()


def make_request(
    *,
    label: str = "debian-12",
    secrets: dict[str, str] | None = None,
    job_id: str | None = None,
    **fields: object,
) -> JobRequest:
    spec = JobSpec(
        key="test",
        name="test (3.11)",
        runs_on=(label,),
        steps=(Step(1, "Run make", run="make check"), Step(2, "Run echo", run="echo done")),
        workflow_name="CI",
        workflow_file=".forgejo/workflows/ci.yml",
    )
    values: dict[str, object] = {
        "source": Source.FORGEJO,
        "source_ids": {"task_id": "4711", "runner": "r1"},
        "repository": "owner/project",
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "ref": "refs/heads/main",
    }
    values.update(fields)
    return JobRequest(
        job_id=job_id or str(uuid.uuid4()),
        job=spec,
        label=label,
        secrets=secrets or {},
        **values,  # type: ignore[arg-type]
    )


def unique_host() -> str:
    return f"host-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def database_url(pg_databases: Databases) -> str:
    """A migrated database of the module's own (its dispatchers see only its jobs)."""
    return pg_databases.create_migrated()
