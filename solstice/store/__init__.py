"""PostgreSQL: the schema and its migrations, and the job state machine.

The job uuid is the primary key, so recording a job is idempotent and every state change is a
compare-and-set ``UPDATE ... WHERE state = <expected>``: dispatchers on several hosts sharing one
database can never both move the same job forward. Secrets are never stored. See docs/database.md.

    store = Store.connect(cfg.database)
    store.migrate()
    if store.record_job(request, host):   # then ack the broker message
        ...
    if store.claim(job_id, host, unit):   # accepted -> starting; exactly one host wins
        ...start the unit...
    store.finish(job_id, Result.SUCCESS, exit_code=0, error=None)   # exactly once
"""

from solstice.store.errors import (
    InvalidTransition,
    JobNotFound,
    SchemaError,
    StoreError,
    StoreUnavailable,
)
from solstice.store.migrations import LATEST, MIGRATIONS, Migration
from solstice.store.scrub import request_document
from solstice.store.states import (
    ACTIVE,
    NON_TERMINAL,
    RESULT_STATE,
    STATE_RESULT,
    TERMINAL,
    TRANSITIONS,
    JobState,
)
from solstice.store.store import AppliedMigration, JobRecord, SchemaStatus, Store, describe

__all__ = [
    "ACTIVE",
    "LATEST",
    "MIGRATIONS",
    "NON_TERMINAL",
    "RESULT_STATE",
    "STATE_RESULT",
    "TERMINAL",
    "TRANSITIONS",
    "AppliedMigration",
    "InvalidTransition",
    "JobNotFound",
    "JobRecord",
    "JobState",
    "Migration",
    "SchemaError",
    "SchemaStatus",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "describe",
    "request_document",
]
