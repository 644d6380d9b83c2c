"""Show jobs and their states from the job database, or one job in detail.

``solstice status [JOB] [--state S] [--host H] [--limit N] [--json]``. JOB is a job uuid or a unique
prefix of one. The JSON document's schema is ``solstice.status.v1`` (see docs/database.md).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from solstice.cli.db import add_config_argument, format_time, open_store
from solstice.errors import SolsticeError
from solstice.model.terminal import safe_text

if TYPE_CHECKING:
    from solstice.store import JobRecord, Store

SCHEMA = "solstice.status.v1"
STATES = ("queued", "accepted", "starting", "running", "succeeded", "failed", "cancelled", "errored")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB", nargs="?", help="one job: its uuid or a unique prefix")
    parser.add_argument(
        "--state", action="append", choices=STATES, help="only jobs in this state (repeatable)"
    )
    parser.add_argument("--host", help="only jobs on this host")
    parser.add_argument("--limit", type=int, default=50, help="at most this many jobs (default 50)")
    parser.add_argument("--json", action="store_true", help=f"print a JSON document ({SCHEMA})")
    add_config_argument(parser)


def age(since: datetime, now: datetime | None = None) -> str:
    seconds = max(0, int(((now or datetime.now(UTC)) - since).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def job_json(job: JobRecord, *, request: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "job_id": job.job_id,
        "label": job.label,
        "state": job.state.value,
        "host": job.host,
        "unit": job.unit,
        "result": job.result.value if job.result else None,
        "exit_code": job.exit_code,
        "error": job.error,
        "source": job.source.value,
        "source_ids": dict(job.source_ids),
        "repository": job.repository,
        "commit": job.commit,
        **{name: _iso(value) for name, value in job.timestamps().items()},
        "age_seconds": round((datetime.now(UTC) - job.queued_at).total_seconds(), 3),
    }
    if request:
        doc["request"] = dict(job.request)
    return doc


def _table(jobs: list[JobRecord]) -> list[str]:
    rows = [("UUID", "LABEL", "STATE", "HOST", "RESULT", "AGE")]
    now = datetime.now(UTC)
    for job in jobs:
        result = job.result.value if job.result else "-"
        rows.append(
            (job.job_id, job.label, job.state.value, job.host or "-", result, age(job.queued_at, now))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _detail(job: JobRecord) -> list[str]:
    spec = job.request.get("job")
    spec = spec if isinstance(spec, dict) else {}
    name = str(spec.get("name", ""))
    workflow = ", ".join(str(v) for v in (spec.get("workflow_name"), spec.get("workflow_file")) if v)
    steps = spec.get("steps")
    ids = ", ".join(f"{k}={v}" for k, v in sorted(job.source_ids.items()))
    where = job.repository + (f" @ {job.commit}" if job.commit else "")
    now = datetime.now(UTC)
    lines = [
        ("job", job.job_id),
        ("name", name + (f"  ({workflow})" if workflow else "")),
        ("label", job.label),
        ("state", job.state.value),
        ("result", job.result.value if job.result else "-"),
        ("exit code", "-" if job.exit_code is None else str(job.exit_code)),
        ("error", job.error or "-"),
        ("host", job.host or "-"),
        ("unit", job.unit or "-"),
        ("source", job.source.value + (f"  ({ids})" if ids else "")),
        ("repository", where or "-"),
        ("steps", str(len(steps)) if isinstance(steps, list) else "-"),
    ]
    for label, value in job.timestamps().items():
        text = format_time(value)
        if value is not None:
            text += f"  ({age(value, now)} ago)"
        lines.append((label.removesuffix("_at"), text))
    out = [f"{label + ':':<12}{value}" for label, value in lines]
    if job.unit:
        out.append(f"log:        journalctl -u {job.unit}   (on {job.host})")
    return out


def _one(store: Store, key: str) -> JobRecord:
    matches = store.find(key)
    exact = [job for job in matches if job.job_id == key.strip().lower()]
    if exact:
        return exact[0]
    if not matches:
        raise SolsticeError(f"no job matches {key!r}", hint="`solstice status` lists recent jobs")
    if len(matches) > 1:
        shown = ", ".join(job.job_id for job in matches[:5])
        raise SolsticeError(f"{key!r} matches several jobs: {shown}", hint="give more of the uuid")
    return matches[0]


def main(args: argparse.Namespace) -> int:
    with open_store(args, application_name="solstice status") as store:
        if args.job:
            job = _one(store, args.job)
            if args.json:
                print(json.dumps({"schema": SCHEMA, "job": job_json(job, request=True)}, indent=2))
            else:
                print(safe_text("\n".join(_detail(job))))  # messages carry a guest's console lines
            return 0
        jobs = store.list_jobs(state=args.state, host=args.host, limit=args.limit)
        if args.json:
            print(json.dumps({"schema": SCHEMA, "jobs": [job_json(j) for j in jobs]}, indent=2))
            return 0
        if not jobs:
            print("no jobs" + (" match" if args.state or args.host else " recorded yet"))
        else:
            print(safe_text("\n".join(_table(jobs))))
        counts = store.count_by_state()
        if counts:
            order = {state: i for i, state in enumerate(STATES)}
            summary = ", ".join(
                f"{n} {state.value}" for state, n in sorted(counts.items(), key=lambda kv: order[kv[0]])
            )
            print(f"\nall jobs: {summary}")
        return 0
