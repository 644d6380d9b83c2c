"""The store's errors. They fit into the tree of :mod:`solstice.errors`:

SolsticeError
 +-- StoreError              a store operation cannot be done as asked (a bug, or a schema problem)
 |    +-- InvalidTransition  the state machine has no such edge (names both states)
 |    +-- JobNotFound        no row for that job uuid
 |    +-- SchemaError        the schema is missing or not what this code expects
 +-- InfraError
      +-- StoreUnavailable   PostgreSQL cannot be reached or the connection was lost: reconnect
"""

from __future__ import annotations

from solstice.errors import InfraError, SolsticeError


class StoreError(SolsticeError):
    pass


class InvalidTransition(StoreError):
    """``from_state -> to_state`` is not an edge of the job state machine."""

    def __init__(self, from_state: str, to_state: str, *, job_id: str | None = None) -> None:
        self.from_state = str(from_state)
        self.to_state = str(to_state)
        self.job_id = job_id
        which = f"job {job_id}: " if job_id else ""
        super().__init__(
            f"{which}invalid state transition {self.from_state} -> {self.to_state}",
            hint="see docs/database.md for the job state machine",
        )


class JobNotFound(StoreError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id} in the database")


class SchemaError(StoreError):
    pass


class StoreUnavailable(InfraError):
    """PostgreSQL is down or the connection broke. The operation that raised it may or may not have
    committed (a lost reply to COMMIT is indistinguishable from a lost COMMIT); every store operation
    is safe to repeat after :meth:`Store.reconnect`, see docs/database.md."""
