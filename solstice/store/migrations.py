"""The schema, as ordered migrations shipped inside the package (SQL in Python, so no package data).

Rules for adding one: append a new ``Migration`` with the next version; never edit or reorder one that
has shipped (``solstice db status`` flags an applied migration whose SQL changed). Each migration runs
in its own transaction together with its row in ``schema_migrations``, so it is applied entirely or
not at all. Keep them additive where possible: several hosts share one database and are upgraded one
at a time, so code one version behind must keep working on the new schema.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

#: Session advisory lock held while migrating, so that concurrent ``migrate()`` calls serialise.
#: The bytes of "solstice" as a positive bigint.
LOCK_KEY = 0x736F6C7374696365

#: Created outside the numbered migrations: it is what records them.
BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str = field(repr=False)

    @property
    def id(self) -> str:
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


_0001_JOBS = """
CREATE TABLE jobs (
    job_id      uuid        PRIMARY KEY,
    label       text        NOT NULL,
    source      text        NOT NULL
                CONSTRAINT jobs_source_check CHECK (source IN ('local', 'forgejo', 'github')),
    source_ids  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    repository  text        NOT NULL DEFAULT '',
    commit      text        NOT NULL DEFAULT '',
    request     jsonb       NOT NULL,
    state       text        NOT NULL
                CONSTRAINT jobs_state_check CHECK (state IN ('queued', 'accepted', 'starting', 'running',
                                                             'succeeded', 'failed', 'cancelled', 'errored')),
    queued_at   timestamptz NOT NULL DEFAULT now(),
    accepted_at timestamptz,
    starting_at timestamptz,
    running_at  timestamptz,
    finished_at timestamptz,
    host        text,
    unit        text,
    result      text,
    exit_code   integer,
    error       text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- result is set exactly in the terminal states, and agrees with the state
    CONSTRAINT jobs_result_check CHECK (result IS NOT DISTINCT FROM CASE state
        WHEN 'succeeded' THEN 'success' WHEN 'failed' THEN 'failure'
        WHEN 'cancelled' THEN 'cancelled' WHEN 'errored' THEN 'error' END),
    CONSTRAINT jobs_finished_check CHECK (
        (finished_at IS NOT NULL) = (state IN ('succeeded', 'failed', 'cancelled', 'errored'))),
    -- a job that a host is starting or running names that host and its unit
    CONSTRAINT jobs_claimed_check CHECK (
        state NOT IN ('starting', 'running') OR (host IS NOT NULL AND unit IS NOT NULL))
);

CREATE INDEX jobs_queued_at_idx ON jobs (queued_at DESC);
CREATE INDEX jobs_state_idx ON jobs (state, queued_at DESC);
CREATE INDEX jobs_host_open_idx ON jobs (host, state) WHERE state IN ('accepted', 'starting', 'running');

COMMENT ON TABLE jobs IS
    'One row per job, keyed by the JobRequest uuid. Written by solstice.store; see docs/database.md.';
COMMENT ON COLUMN jobs.request IS
    'The JobRequest as JSON WITHOUT secrets (dropped and masked before insert).';
COMMENT ON COLUMN jobs.host IS 'The host whose dispatcher accepted, then claimed, the job.';
COMMENT ON COLUMN jobs.unit IS 'The systemd unit running the job, solstice-job@<uuid>.service.';
"""

MIGRATIONS: tuple[Migration, ...] = (Migration(1, "jobs", _0001_JOBS),)

LATEST: int = MIGRATIONS[-1].version

assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1)), "versions must be 1..N"
