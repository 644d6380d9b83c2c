"""The job process's side of its contract with the dispatcher (solstice.dispatch.contract has
the whole contract): exit statuses, where its request is, the name of its credential.

In the model so that the job process (solstice.job) knows them without importing the dispatcher.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from solstice.model.core import Result

EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3
EXIT_ERROR = 4
EXIT_UNDELIVERED = 5

RESULT_EXIT: dict[Result, int] = {
    Result.SUCCESS: EXIT_SUCCESS,
    Result.FAILURE: EXIT_FAILURE,
    Result.CANCELLED: EXIT_CANCELLED,
    Result.ERROR: EXIT_ERROR,
}
#: Exit statuses meaning "the job process reported its final event itself".
EXIT_RESULT: dict[int, Result] = {code: result for result, code in RESULT_EXIT.items()}

#: The name of the systemd credential carrying the sealed request.
CREDENTIAL = "job-request"
#: The process spawner tells its job where the job's log file is (the job names it in its first log line).
JOB_LOG_ENV = "SOLSTICE_JOB_LOG"


def canonical_job_id(text: str) -> str | None:
    """``text`` if it is a uuid in canonical form (lower case, hyphens), else None. Only such ids
    become unit names and file names."""
    try:
        value = str(uuid.UUID(text))
    except (ValueError, AttributeError, TypeError):
        return None
    return value if value == text else None


def requests_dir(runtime_dir: str | Path) -> Path:
    return Path(runtime_dir) / "requests"


def request_file(runtime_dir: str | Path, job_id: str) -> Path:
    return requests_dir(runtime_dir) / f"{job_id}.json"
