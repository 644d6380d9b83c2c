"""``solstice db migrate``, ``solstice db status`` and ``solstice status`` against a real PostgreSQL,
pointed at the test database with ``SOLSTICE_DATABASE_URL``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from store_fixtures import *  # noqa: F403  (the fixtures: pg_databases, store_url, store, ...)
from store_fixtures import make_request, unique_host

from solstice.cli import status as status_cli
from solstice.cli.main import main
from solstice.config import DatabaseConfig
from solstice.model.core import Result
from solstice.store import LATEST, MIGRATIONS, JobState, Store

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[[str | None], Run]:
    """run(url)(*argv) -> (exit status, stdout, stderr) of ``solstice *argv``, with an empty
    configuration file and SOLSTICE_DATABASE_URL=url (unset for None)."""
    config = tmp_path / "solstice.toml"
    config.write_text("")
    monkeypatch.setenv("SOLSTICE_CONFIG", str(config))

    def for_url(url: str | None) -> Run:
        def _run(*argv: str) -> tuple[int, str, str]:
            if url is None:
                monkeypatch.delenv("SOLSTICE_DATABASE_URL", raising=False)
            else:
                monkeypatch.setenv("SOLSTICE_DATABASE_URL", url)
            capsys.readouterr()
            code = main(list(argv))
            out, err = capsys.readouterr()
            return code, out, err

        return _run

    return for_url


def test_db_migrate_and_status(run: Callable[[str | None], Run], empty_db_url: str) -> None:
    solstice = run(empty_db_url)
    code, out, _ = solstice("db", "status", "--check")
    assert code == 1
    assert f"schema version 0 (latest {LATEST}): empty" in out
    assert all(f"{m.id}" in out and "pending" in out for m in MIGRATIONS)
    assert "database: PostgreSQL at 127.0.0.1:5432/" in out

    code, out, _ = solstice("db", "migrate")
    assert code == 0
    assert [line for line in out.splitlines() if line.startswith("applied")] == [
        f"applied {m.id}" for m in MIGRATIONS
    ]
    assert f"schema version {LATEST} (up to date)" in out

    code, out, _ = solstice("db", "migrate")
    assert code == 0
    assert "applied" not in out and f"nothing to apply: schema version {LATEST} is up to date" in out

    code, out, _ = solstice("db", "status", "--check")
    assert code == 0
    assert f"schema version {LATEST} (latest {LATEST}): up to date" in out
    assert "0001_jobs" in out and "applied 20" in out


def test_config_option_before_or_after_the_verb(
    run: Callable[[str | None], Run], empty_db_url: str, tmp_path: Path
) -> None:
    solstice = run(None)  # no SOLSTICE_DATABASE_URL: the file decides
    config = tmp_path / "other.toml"
    config.write_text(f'[database]\nurl = "{empty_db_url}"\n')
    code, out, _ = solstice("db", "migrate", "--config", str(config))
    assert code == 0 and "applied 0001_jobs" in out
    code, out, _ = solstice("--config", str(config), "db", "status")
    assert code == 0 and "up to date" in out
    code, out, _ = solstice("status", "--config", str(config))
    assert code == 0 and "no jobs recorded yet" in out


def test_db_errors_are_one_line(run: Callable[[str | None], Run]) -> None:
    code, out, err = run("postgresql://postgres:hunter2@127.0.0.1:5432/solstice_no_such_db")("db", "status")
    assert code == 1 and out == ""
    assert err.startswith(
        "solstice: error: cannot connect to PostgreSQL at 127.0.0.1:5432/solstice_no_such_db"
    )
    assert "hunter2" not in err and "Traceback" not in err


def test_status_lists_jobs_and_shows_one(run: Callable[[str | None], Run], empty_db_url: str) -> None:
    code, out, _ = run(empty_db_url)("db", "migrate")
    assert code == 0
    solstice = run(empty_db_url)
    code, out, _ = solstice("status")
    assert code == 0 and "no jobs recorded yet" in out

    host = unique_host()
    canary = "canary-status-secret"
    with Store.connect(DatabaseConfig(url=empty_db_url)) as db:
        running = make_request(secrets={"TOKEN": canary})
        done = make_request(label="omnios-bloody")
        queued = make_request()
        assert db.record_job(running, host) and db.record_job(done, host) and db.record_job(queued, None)
        assert db.claim(running.job_id, host, f"solstice-job@{running.job_id}.service")
        assert db.transition(running.job_id, JobState.STARTING, JobState.RUNNING)
        assert db.claim(done.job_id, host, "u2")
        assert db.finish(done.job_id, Result.ERROR, None, "the guest did not answer SSH within 300 s")

    code, out, _ = solstice("status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["UUID", "LABEL", "STATE", "HOST", "RESULT", "AGE"]
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert rows[running.job_id][1:5] == ["debian-12", "running", host, "-"]
    assert rows[done.job_id][1:5] == ["omnios-bloody", "errored", host, "error"]
    assert rows[queued.job_id][1:5] == ["debian-12", "queued", "-", "-"]
    assert rows[running.job_id][5].endswith("s")
    assert "all jobs: 1 queued, 1 running, 1 errored" in out

    code, out, _ = solstice("status", "--state", "running", "--state", "errored", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["schema"] == "solstice.status.v1"
    assert {j["job_id"] for j in doc["jobs"]} == {running.job_id, done.job_id}
    errored = next(j for j in doc["jobs"] if j["job_id"] == done.job_id)
    assert errored["result"] == "error" and errored["error"].startswith("the guest did not answer")
    assert errored["finished_at"] and errored["running_at"] is None and "request" not in errored

    code, out, _ = solstice("status", "--host", host, "--limit", "1", "--json")
    assert len(json.loads(out)["jobs"]) == 1

    code, out, _ = solstice("status", running.job_id[:8])
    assert code == 0
    assert f"job:        {running.job_id}" in out
    assert "state:      running" in out and f"host:       {host}" in out
    assert f"journalctl -u solstice-job@{running.job_id}.service" in out
    assert "name:       test (3.11)  (CI, .forgejo/workflows/ci.yml)" in out
    assert "source:     forgejo  (runner=r1, task_id=4711)" in out
    assert "steps:      2" in out and "finished:   -" in out

    code, out, _ = solstice("status", running.job_id, "--json")
    job = json.loads(out)["job"]
    assert job["state"] == "running" and job["unit"] == f"solstice-job@{running.job_id}.service"
    assert job["request"]["job_id"] == running.job_id and "secrets" not in job["request"]
    assert canary not in out


def test_status_unknown_and_ambiguous_jobs(
    run: Callable[[str | None], Run], store_url: str, store: Store
) -> None:
    solstice = run(store_url)
    code, out, err = solstice("status", "ffffffff-ffff-4fff-8fff-ffffffffffff")
    assert code == 1 and "no job matches" in err
    for _ in range(20):  # among 20 uuids two share their first hex digit
        store.record_job(make_request(), unique_host())
    firsts = [j.job_id[0] for j in store.list_jobs(limit=None)]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    code, out, err = solstice("status", shared)
    assert code == 1 and "matches several jobs" in err


def test_status_state_choices_are_the_job_states() -> None:
    assert status_cli.STATES == tuple(s.value for s in JobState)


def test_age() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert [status_cli.age(now - timedelta(seconds=s), now) for s in (5, 300, 3 * 3600, 3 * 86400)] == [
        "5s",
        "5m",
        "3h",
        "3d",
    ]
