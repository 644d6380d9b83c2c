"""``Store``: one PostgreSQL connection per process, explicit transactions, compare-and-set transitions.

Every method is one short transaction (committed before it returns) except ``migrate``, which runs
each migration in its own. Autocommit is off; a failed statement rolls its transaction back.
A lost connection raises ``StoreUnavailable`` and closes the connection; ``reconnect()`` (or
``retry()``, which reconnects with backoff) opens a new one. See docs/database.md.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from solstice.config import DatabaseConfig
from solstice.errors import ConfigError, SolsticeError
from solstice.model.core import JobRequest, Result, Source, from_dict
from solstice.store.errors import (
    InvalidTransition,
    JobNotFound,
    SchemaError,
    StoreError,
    StoreUnavailable,
)
from solstice.store.migrations import BOOTSTRAP, LATEST, LOCK_KEY, MIGRATIONS, Migration
from solstice.store.scrub import request_document
from solstice.store.states import (
    ACTIVE,
    NON_TERMINAL,
    RESULT_STATE,
    STATE_RESULT,
    TIMESTAMP_COLUMN,
    JobState,
    allowed,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, Any]
Cursor = psycopg.Cursor[Row]

#: libpq parameters used unless the URL sets them: fail fast, and notice a dead peer on idle sockets.
CONNECT_DEFAULTS: Mapping[str, str | int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}

_COLUMNS = (
    "job_id, label, source, source_ids, repository, commit, request, state, queued_at, accepted_at,"
    " starting_at, running_at, finished_at, host, unit, result, exit_code, error, updated_at"
)
_OPEN_STATES = ", ".join(f"'{s.value}'" for s in sorted(NON_TERMINAL))


@dataclass(frozen=True)
class JobRecord:
    """One row of ``jobs``. ``request`` is the JobRequest document without secrets."""

    job_id: str
    label: str
    source: Source
    source_ids: Mapping[str, Any]
    repository: str
    commit: str
    request: Mapping[str, Any]
    state: JobState
    queued_at: datetime
    updated_at: datetime
    accepted_at: datetime | None = None
    starting_at: datetime | None = None
    running_at: datetime | None = None
    finished_at: datetime | None = None
    host: str | None = None
    unit: str | None = None
    result: Result | None = None
    exit_code: int | None = None
    error: str | None = None

    def job_request(self) -> JobRequest:
        """The stored request as a JobRequest (its ``secrets`` are empty: they are never stored)."""
        return from_dict(JobRequest, dict(self.request))

    def timestamps(self) -> dict[str, datetime | None]:
        return {
            "queued_at": self.queued_at,
            "accepted_at": self.accepted_at,
            "starting_at": self.starting_at,
            "running_at": self.running_at,
            "finished_at": self.finished_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    applied_at: datetime
    #: False when the shipped SQL of this version differs from what was applied (someone edited it).
    matches: bool | None  # None: this code does not know the version (the database is newer)


@dataclass(frozen=True)
class SchemaStatus:
    version: int  # highest applied version, 0 for an empty database
    latest: int  # highest version this code ships
    applied: Sequence[AppliedMigration] = field(default_factory=tuple)
    pending: Sequence[Migration] = field(default_factory=tuple)

    @property
    def up_to_date(self) -> bool:
        return not self.pending

    @property
    def newer_than_code(self) -> bool:
        return self.version > self.latest


def _job_uuid(job_id: str | uuid.UUID) -> uuid.UUID:
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(str(job_id))
    except ValueError:
        raise StoreError(f"{job_id!r} is not a job uuid") from None


def _state(value: JobState | str) -> JobState:
    try:
        return JobState(value)
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise StoreError(f"{value!r} is not a job state (one of {known})") from None


def _record(row: Row) -> JobRecord:
    result = row["result"]
    return JobRecord(
        job_id=str(row["job_id"]),
        label=row["label"],
        source=Source(row["source"]),
        source_ids=row["source_ids"],
        repository=row["repository"],
        commit=row["commit"],
        request=row["request"],
        state=JobState(row["state"]),
        queued_at=row["queued_at"],
        updated_at=row["updated_at"],
        accepted_at=row["accepted_at"],
        starting_at=row["starting_at"],
        running_at=row["running_at"],
        finished_at=row["finished_at"],
        host=row["host"],
        unit=row["unit"],
        result=Result(result) if result is not None else None,
        exit_code=row["exit_code"],
        error=row["error"],
    )


def describe(url: str) -> str:
    """``[database] url`` for messages: host, port, database and user, never the password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "PostgreSQL (unparsable [database] url)"
    host = params.get("host") or params.get("hostaddr") or "local socket"
    port = params.get("port") or "5432"
    where = f"{host}:{port}" if not str(host).startswith("/") else str(host)
    db = params.get("dbname") or params.get("user") or "?"
    user = f" as {params['user']}" if params.get("user") else ""
    return f"PostgreSQL at {where}/{db}{user}"


class Store:
    """The job database. Thread-safe (one transaction at a time); one instance per process."""

    def __init__(self, url: str, *, application_name: str = "solstice") -> None:
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise ConfigError(
                f"[database] url is not a PostgreSQL connection string or URL: {exc}",
                hint="e.g. postgresql://solstice@127.0.0.1:5432/solstice",
            ) from None
        self._url = url
        self._extra: dict[str, str | int] = {k: v for k, v in CONNECT_DEFAULTS.items() if k not in params}
        if "application_name" not in params:
            self._extra["application_name"] = application_name
        self.where = describe(url)
        self._conn: psycopg.Connection[Row] | None = None
        self._lock = threading.RLock()

    # --- connection -----------------------------------------------------------------------------

    @classmethod
    def connect(cls, cfg: DatabaseConfig, *, application_name: str = "solstice") -> Store:
        """Connect to ``cfg.url``; raises StoreUnavailable when PostgreSQL cannot be reached."""
        store = cls(cfg.url, application_name=application_name)
        store.reconnect()
        return store

    def reconnect(self) -> None:
        """Drop the current connection (if any) and open a new one."""
        with self._lock:
            self.close()
            try:
                conninfo = make_conninfo(self._url, **self._extra)
                conn = psycopg.connect(conninfo, autocommit=False, row_factory=dict_row)
            except psycopg.Error as exc:
                raise StoreUnavailable(
                    f"cannot connect to {self.where}: {_first_line(exc)}",
                    hint="is PostgreSQL running, and does [database] url name an existing database?",
                ) from exc
            self._conn = conn

    @property
    def connected(self) -> bool:
        """False after close() or once a lost connection was noticed (an operation raised)."""
        return self._conn is not None and not self._conn.closed

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def retry(
        self,
        op: Callable[[], T],
        *,
        timeout: float = 60.0,
        initial_delay: float = 0.2,
        max_delay: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """Run ``op`` (e.g. ``lambda: store.claim(...)``), reconnecting with exponential backoff
        while it raises StoreUnavailable, for at most ``timeout`` seconds; then the last
        StoreUnavailable propagates. Other errors propagate at once. Every Store operation is safe
        to repeat this way (see the "after a lost connection" table in docs/database.md)."""
        deadline = time.monotonic() + timeout
        delay = initial_delay
        while True:
            try:
                if not self.connected:
                    self.reconnect()
                return op()
            except StoreUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s; retrying in %.1f s", exc, delay)
                sleep(delay)
                delay = min(delay * 2, max_delay)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        """One transaction: committed on success, rolled back on any error; psycopg errors become
        StoreUnavailable (connection lost: the connection is closed) or StoreError."""
        with self._lock:
            conn = self._conn
            if conn is None or conn.closed:
                raise StoreUnavailable(
                    f"not connected to {self.where}", hint="the connection was lost; reconnect()"
                )
            try:
                with conn.cursor() as cur:
                    yield cur
                conn.commit()
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    conn.rollback()
                if isinstance(exc, psycopg.Error):
                    raise self._translate(conn, exc) from exc
                raise

    def _translate(self, conn: psycopg.Connection[Row], exc: psycopg.Error) -> SolsticeError:
        sqlstate = exc.sqlstate or ""
        lost = (
            conn.closed
            or isinstance(exc, psycopg.InterfaceError)
            or (
                isinstance(exc, psycopg.OperationalError)
                and (not sqlstate or sqlstate.startswith(("08", "57P")))
            )
        )
        if lost:
            self.close()
            return StoreUnavailable(
                f"lost the connection to {self.where}: {_first_line(exc)}",
                hint="the operation may or may not have committed; reconnect() and repeat it",
            )
        if isinstance(exc, psycopg.errors.UndefinedTable):
            return SchemaError(
                f"{self.where} has no Solstice schema: {_first_line(exc)}",
                hint="run `solstice db migrate`",
            )
        return StoreError(f"{self.where}: {_first_line(exc)}")

    # --- migrations -----------------------------------------------------------------------------

    def migrate(self) -> list[Migration]:
        """Apply the pending migrations, each in its own transaction, under an advisory lock so that
        concurrent callers (other processes or hosts) wait and then find nothing left to do.
        Returns the migrations this call applied (empty when the schema was up to date)."""
        with self._lock:
            with self._transaction() as cur:
                cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
            try:
                with self._transaction() as cur:
                    cur.execute(BOOTSTRAP)
                with self._transaction() as cur:
                    cur.execute("SELECT version FROM schema_migrations")
                    done = {int(row["version"]) for row in cur.fetchall()}
                applied: list[Migration] = []
                for migration in MIGRATIONS:
                    if migration.version in done:
                        continue
                    with self._transaction() as cur:
                        cur.execute(migration.sql, prepare=False)
                        cur.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                    log.info("applied migration %s", migration.id)
                    applied.append(migration)
                return applied
            finally:
                # Session-level lock: a lost connection releases it by itself.
                with contextlib.suppress(StoreUnavailable), self._transaction() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))

    def schema_status(self) -> SchemaStatus:
        with self._transaction() as cur:
            cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL AS present")
            row = cur.fetchone()
            rows: list[Row] = []
            if row is not None and row["present"]:
                cur.execute(
                    "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
                )
                rows = cur.fetchall()
        known = {m.version: m for m in MIGRATIONS}
        applied = [
            AppliedMigration(
                version=r["version"],
                name=r["name"],
                applied_at=r["applied_at"],
                matches=(known[r["version"]].checksum == r["checksum"]) if r["version"] in known else None,
            )
            for r in rows
        ]
        versions = {a.version for a in applied}
        return SchemaStatus(
            version=max(versions, default=0),
            latest=LATEST,
            applied=tuple(applied),
            pending=tuple(m for m in MIGRATIONS if m.version not in versions),
        )

    # --- jobs -----------------------------------------------------------------------------------

    def record_job(self, request: JobRequest, host: str | None) -> bool:
        """Record a job, idempotently on its uuid; True if this call inserted it, False if it was
        already there (then its row is unchanged: inspect it with ``get``). With a ``host`` the row
        starts in ``accepted`` by that host (a dispatcher recording what it consumed); without one
        in ``queued``. Secrets are never stored. Ack the broker message only after this returns."""
        job_id = _job_uuid(request.job_id)
        doc = request_document(request)
        state = JobState.ACCEPTED if host else JobState.QUEUED
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO jobs (job_id, label, source, source_ids, repository, commit, request,"
                " state, host, accepted_at)"
                " VALUES (%(id)s, %(label)s, %(source)s, %(source_ids)s, %(repository)s, %(commit)s,"
                " %(request)s, %(state)s, %(host)s, CASE WHEN %(accepted)s THEN now() END)"
                " ON CONFLICT (job_id) DO NOTHING",
                {
                    "id": job_id,
                    "label": doc["label"],
                    "source": doc["source"],
                    "source_ids": Jsonb(doc["source_ids"]),
                    "repository": doc["repository"],
                    "commit": doc["commit"],
                    "request": Jsonb(doc),
                    "state": state.value,
                    "host": host or None,
                    "accepted": state is JobState.ACCEPTED,
                },
            )
            return cur.rowcount == 1

    def accept(self, job_id: str, host: str) -> bool:
        """queued -> accepted by ``host``; False if the job is not queued (any more)."""
        with self._transaction() as cur:
            cur.execute(
                "UPDATE jobs SET state = 'accepted', host = %s, accepted_at = now(), updated_at = now()"
                " WHERE job_id = %s AND state = 'queued'",
                (host, _job_uuid(job_id)),
            )
            if cur.rowcount == 1:
                return True
            self._current(cur, job_id)
            return False

    def claim(self, job_id: str, host: str, unit: str) -> bool:
        """accepted -> starting, taking the job for ``host`` and its ``unit``. Exactly one of several
        concurrent claimers (on any hosts) gets True. Also True when this host and unit already hold
        the claim (a repeated call after a lost reply); False when anyone else has it, or the job
        is past ``starting``. Raises JobNotFound for an unknown job."""
        with self._transaction() as cur:
            cur.execute(
                "UPDATE jobs SET state = 'starting', host = %s, unit = %s, starting_at = now(),"
                " updated_at = now() WHERE job_id = %s AND state = 'accepted'",
                (host, unit, _job_uuid(job_id)),
            )
            if cur.rowcount == 1:
                return True
            row = self._current(cur, job_id)
            return bool(row["state"] == JobState.STARTING and row["host"] == host and row["unit"] == unit)

    def transition(
        self,
        job_id: str,
        from_state: JobState | str,
        to_state: JobState | str,
        *,
        result: Result | None = None,
        exit_code: int | None = None,
        error: str | None = None,
    ) -> bool:
        """Compare-and-set ``from_state -> to_state``: True if the job was in ``from_state`` and now
        is in ``to_state``, False if it was in another state (someone else moved it). Raises
        InvalidTransition for an edge the state machine does not have, JobNotFound for an unknown
        job. ``result`` defaults to the one a terminal state implies; ``exit_code`` and ``error``
        are kept when not given. Use ``claim`` to enter ``starting`` and ``finish`` to end a job
        from whatever state it is in."""
        src, dst = _state(from_state), _state(to_state)
        if not allowed(src, dst):
            raise InvalidTransition(src, dst, job_id=str(job_id))
        if dst is JobState.STARTING:
            raise StoreError("a job enters starting only through claim(job_id, host, unit)")
        implied = STATE_RESULT.get(dst)
        if result is not None and Result(result) is not implied:
            raise StoreError(f"result {Result(result).value} does not go with state {dst.value}")
        query = sql.SQL(
            "UPDATE jobs SET state = %(to)s, {ts} = now(), updated_at = now(), result = %(result)s,"
            " exit_code = COALESCE(%(exit_code)s::integer, exit_code),"
            " error = COALESCE(%(error)s::text, error)"
            " WHERE job_id = %(id)s AND state = %(from)s"
        ).format(ts=sql.Identifier(TIMESTAMP_COLUMN[dst]))
        with self._transaction() as cur:
            cur.execute(
                query,
                {
                    "to": dst.value,
                    "from": src.value,
                    "result": implied.value if implied else None,
                    "exit_code": exit_code,
                    "error": error,
                    "id": _job_uuid(job_id),
                },
            )
            if cur.rowcount == 1:
                return True
            self._current(cur, job_id)
            return False

    def finish(
        self, job_id: str, result: Result, exit_code: int | None = None, error: str | None = None
    ) -> bool:
        """End the job with ``result`` (success -> succeeded, failure -> failed, cancelled ->
        cancelled, error -> errored) from whatever non-terminal state it is in. Exactly once: True
        for the call that ended it, False when it had already ended (the first outcome stays).
        Raises JobNotFound for an unknown job. ``error`` must already be masked."""
        res = Result(result)
        state = RESULT_STATE[res]
        with self._transaction() as cur:
            cur.execute(
                "UPDATE jobs SET state = %(state)s, result = %(result)s,"
                " exit_code = COALESCE(%(exit_code)s::integer, exit_code),"
                " error = COALESCE(%(error)s::text, error), finished_at = now(), updated_at = now()"
                f" WHERE job_id = %(id)s AND state IN ({_OPEN_STATES})",
                {
                    "state": state.value,
                    "result": res.value,
                    "exit_code": exit_code,
                    "error": error,
                    "id": _job_uuid(job_id),
                },
            )
            if cur.rowcount == 1:
                return True
            self._current(cur, job_id)
            return False

    def _current(self, cur: Cursor, job_id: str) -> Row:
        cur.execute("SELECT state, host, unit FROM jobs WHERE job_id = %s", (_job_uuid(job_id),))
        row = cur.fetchone()
        if row is None:
            raise JobNotFound(str(job_id))
        return row

    # --- queries --------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        with self._transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM jobs WHERE job_id = %s", (_job_uuid(job_id),))
            row = cur.fetchone()
        return _record(row) if row is not None else None

    def find(self, prefix: str, *, limit: int = 10) -> list[JobRecord]:
        """Jobs whose uuid starts with ``prefix`` (as operators type a short one), newest first."""
        prefix = prefix.strip().lower()
        if not prefix or any(c not in "0123456789abcdef-" for c in prefix):
            return []
        with self._transaction() as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE job_id::text LIKE %s"
                " ORDER BY queued_at DESC, job_id LIMIT %s",
                (prefix + "%", limit),
            )
            return [_record(r) for r in cur.fetchall()]

    def list_jobs(
        self,
        state: JobState | str | Iterable[JobState | str] | None = None,
        host: str | None = None,
        limit: int | None = 50,
    ) -> list[JobRecord]:
        """Jobs, newest first, optionally only in ``state`` (one or several) and on ``host``."""
        where: list[sql.Composable] = []
        params: list[Any] = []
        if state is not None:
            states = [state] if isinstance(state, str) else list(state)
            where.append(sql.SQL("state = ANY(%s)"))
            params.append([_state(s).value for s in states])
        if host is not None:
            where.append(sql.SQL("host = %s"))
            params.append(host)
        query = sql.SQL("SELECT {cols} FROM jobs").format(cols=sql.SQL(_COLUMNS))
        if where:
            query = query + sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where)
        query = query + sql.SQL(" ORDER BY queued_at DESC, job_id")
        if limit is not None:
            query = query + sql.SQL(" LIMIT %s")
            params.append(limit)
        with self._transaction() as cur:
            cur.execute(query, params)
            return [_record(r) for r in cur.fetchall()]

    def running_on(self, host: str) -> list[JobRecord]:
        """The jobs ``host`` holds in starting or running: what its dispatcher reconciles against
        its units after a restart (oldest first). Jobs it accepted but has not claimed yet are
        ``list_jobs(state="accepted", host=host)``."""
        return sorted(
            self.list_jobs(state=ACTIVE, host=host, limit=None), key=lambda r: (r.queued_at, r.job_id)
        )

    def count_by_state(self) -> dict[JobState, int]:
        with self._transaction() as cur:
            cur.execute("SELECT state, count(*) AS n FROM jobs GROUP BY state")
            return {JobState(r["state"]): int(r["n"]) for r in cur.fetchall()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
