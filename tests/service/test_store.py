"""solstice.store against a real PostgreSQL: migrations, the state machine, races between hosts,
secrets, and a server restart. No mocks: every test talks to the server (see store_fixtures.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from store_fixtures import *  # noqa: F403  (the fixtures: pg_databases, store_url, store, ...)
from store_fixtures import (
    ensure_postgres_running,
    local_cluster,
    make_request,
    pg_ctl,
    unique_host,
    wait_for_postgres,
)

from solstice.config import DatabaseConfig
from solstice.errors import ConfigError, InfraError
from solstice.model.core import JobRequest, Result, from_dict, to_dict
from solstice.store import (
    LATEST,
    MIGRATIONS,
    RESULT_STATE,
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    JobNotFound,
    JobState,
    SchemaError,
    Store,
    StoreError,
    StoreUnavailable,
)
from solstice.store.states import TIMESTAMP_COLUMN

S = JobState
ROOT = Path(__file__).resolve().parents[2]


def _in_parallel(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) in n threads released at the same moment."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait(timeout=30)
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def _put(store: Store, state: JobState, host: str) -> str:
    """A new job brought to ``state`` along the state machine's normal path."""
    request = make_request()
    job = request.job_id
    assert store.record_job(request, None if state is S.QUEUED else host)
    if state in (S.QUEUED, S.ACCEPTED):
        return job
    assert store.claim(job, host, f"solstice-job@{job}.service")
    if state is S.STARTING:
        return job
    assert store.transition(job, S.STARTING, S.RUNNING)
    if state is S.RUNNING:
        return job
    assert store.finish(job, {v: k for k, v in RESULT_STATE.items()}[state], 0, None)
    return job


# --- migrations ---------------------------------------------------------------------------------


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert LATEST == MIGRATIONS[-1].version
    assert len({m.id for m in MIGRATIONS}) == len(MIGRATIONS)


def test_migrate_applies_once_then_is_a_noop(empty_db_url: str) -> None:
    with Store.connect(DatabaseConfig(url=empty_db_url)) as store:
        before = store.schema_status()
        assert (before.version, before.applied, before.up_to_date) == (0, (), False)
        assert [m.version for m in store.migrate()] == [m.version for m in MIGRATIONS]
        assert store.migrate() == []
        status = store.schema_status()
        assert status.version == LATEST and status.up_to_date and not status.newer_than_code
        assert all(a.matches for a in status.applied)
    with psycopg.connect(empty_db_url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]


def test_concurrent_migrate_from_threads_applies_each_migration_once(empty_db_url: str) -> None:
    stores = [Store.connect(DatabaseConfig(url=empty_db_url)) for _ in range(4)]
    try:
        results = _in_parallel(4, lambda i: stores[i].migrate())
    finally:
        for s in stores:
            s.close()
    applied = sorted(m.version for r in results for m in r)
    assert applied == [m.version for m in MIGRATIONS]
    assert sum(1 for r in results if r) == 1


def test_concurrent_migrate_from_processes(empty_db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "solstice.toml"
    config.write_text("")
    env = {
        "SOLSTICE_DATABASE_URL": empty_db_url,
        "SOLSTICE_CONFIG": str(config),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "solstice", "db", "migrate"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    applied = [line for out, _ in outputs for line in out.splitlines() if line.startswith("applied ")]
    assert applied == [f"applied {m.id}" for m in MIGRATIONS]


def test_operations_without_schema_say_to_migrate(empty_db_url: str) -> None:
    with Store.connect(DatabaseConfig(url=empty_db_url)) as store:
        with pytest.raises(SchemaError) as info:
            store.record_job(make_request(), "h")
        assert "solstice db migrate" in (info.value.hint or "")
        # the failed transaction was rolled back: the connection is usable
        assert store.schema_status().version == 0


def test_schema_has_no_column_for_keys_or_secrets(store: Store, store_url: str) -> None:
    with psycopg.connect(store_url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'"
            " AND column_name ~* '(secret|key|token|password|credential)'"
        ).fetchall()
    assert rows == []


# --- recording ----------------------------------------------------------------------------------


def test_record_job_is_idempotent_on_the_uuid(store: Store, store_url: str) -> None:
    request = make_request()
    assert store.record_job(request, "host-a") is True
    assert store.record_job(request, "host-a") is False
    assert store.record_job(request, "host-b") is False  # a redelivery to another host
    with psycopg.connect(store_url) as conn:
        row = conn.execute("SELECT count(*) FROM jobs WHERE job_id = %s", (request.job_id,)).fetchone()
        assert row == (1,)
    job = store.get(request.job_id)
    assert job is not None
    assert (job.state, job.host, job.label, job.repository) == (
        S.ACCEPTED,
        "host-a",
        "debian-12",
        "owner/project",
    )
    assert job.source_ids == {"task_id": "4711", "runner": "r1"}
    assert job.commit == request.commit
    assert job.accepted_at is not None and job.starting_at is None and job.result is None
    assert job.job_request() == request  # no secrets in it, so it reads back whole


def test_concurrent_record_job_one_insert(connect: Callable[[], Store]) -> None:
    request = make_request()
    stores = [connect() for _ in range(4)]
    results = _in_parallel(4, lambda i: stores[i].record_job(request, f"host-{i}"))
    assert sorted(results) == [False, False, False, True]


def test_record_without_host_is_queued_then_accepted(store: Store) -> None:
    request = make_request()
    assert store.record_job(request, None)
    job = store.get(request.job_id)
    assert job is not None and (job.state, job.host, job.accepted_at) == (S.QUEUED, None, None)
    assert store.accept(request.job_id, "host-a") is True
    assert store.accept(request.job_id, "host-b") is False
    job = store.get(request.job_id)
    assert job is not None and (job.state, job.host) == (S.ACCEPTED, "host-a")
    assert job.accepted_at is not None


def test_record_job_refuses_a_job_id_that_is_not_a_uuid(store: Store) -> None:
    with pytest.raises(StoreError, match="not a job uuid"):
        store.record_job(make_request(job_id="not-a-uuid"), "h")


# --- transitions --------------------------------------------------------------------------------

EDGES = [(src, dst) for src, dsts in TRANSITIONS.items() for dst in sorted(dsts)]
NON_EDGES = [(src, dst) for src in S for dst in S if dst not in TRANSITIONS[src]]


def test_the_state_machine_is_the_documented_one() -> None:
    assert set(EDGES) == {
        (S.QUEUED, S.ACCEPTED),
        (S.QUEUED, S.CANCELLED),
        (S.ACCEPTED, S.STARTING),
        (S.ACCEPTED, S.CANCELLED),
        (S.ACCEPTED, S.ERRORED),
        (S.STARTING, S.RUNNING),
        (S.STARTING, S.CANCELLED),
        (S.STARTING, S.ERRORED),
        (S.RUNNING, S.SUCCEEDED),
        (S.RUNNING, S.FAILED),
        (S.RUNNING, S.CANCELLED),
        (S.RUNNING, S.ERRORED),
    }


@pytest.mark.parametrize(("src", "dst"), EDGES, ids=[f"{a}->{b}" for a, b in EDGES])
def test_every_valid_transition(store: Store, src: JobState, dst: JobState) -> None:
    host = unique_host()
    job = _put(store, src, host)
    if dst is S.STARTING:
        assert store.claim(job, host, "unit")
    else:
        assert store.transition(job, src, dst, exit_code=3 if dst.terminal else None, error="why")
    record = store.get(job)
    assert record is not None
    assert record.state is dst
    assert getattr(record, TIMESTAMP_COLUMN[dst]) is not None
    assert record.updated_at >= record.queued_at
    if dst.terminal:
        assert record.result is {v: k for k, v in RESULT_STATE.items()}[dst]
        assert (record.exit_code, record.error) == (3, "why")
        assert record.finished_at is not None
    else:
        assert record.result is None and record.finished_at is None
    # compare-and-set: the same move again finds the job elsewhere
    if dst is not S.STARTING:
        assert store.transition(job, src, dst) is False


@pytest.mark.parametrize(("src", "dst"), NON_EDGES, ids=[f"{a}->{b}" for a, b in NON_EDGES])
def test_invalid_transitions_are_refused(store: Store, src: JobState, dst: JobState) -> None:
    job = _put(store, src, unique_host())
    before = store.get(job)
    with pytest.raises(InvalidTransition) as info:
        store.transition(job, src, dst)
    assert (info.value.from_state, info.value.to_state) == (src.value, dst.value)
    assert f"{src.value} -> {dst.value}" in str(info.value)
    assert store.get(job) == before


def test_transition_from_a_stale_state_changes_nothing(store: Store) -> None:
    job = _put(store, S.ACCEPTED, unique_host())
    assert store.transition(job, S.RUNNING, S.SUCCEEDED) is False
    assert store.transition(job, S.QUEUED, S.CANCELLED) is False
    record = store.get(job)
    assert record is not None and record.state is S.ACCEPTED and record.finished_at is None


def test_transition_argument_errors(store: Store) -> None:
    job = _put(store, S.RUNNING, unique_host())
    with pytest.raises(StoreError, match="does not go with"):
        store.transition(job, S.RUNNING, S.SUCCEEDED, result=Result.FAILURE)
    with pytest.raises(StoreError, match="claim"):
        store.transition(job, S.ACCEPTED, S.STARTING)
    with pytest.raises(StoreError, match="not a job state"):
        store.transition(job, "running", "done")
    with pytest.raises(JobNotFound):
        store.transition(str(uuid.uuid4()), S.RUNNING, S.FAILED)
    assert store.transition(job, "running", "failed", result=Result.FAILURE, exit_code=2)
    record = store.get(job)
    assert record is not None and (record.state, record.result, record.exit_code) == (
        S.FAILED,
        Result.FAILURE,
        2,
    )


# --- claims across hosts ------------------------------------------------------------------------


def test_concurrent_claims_exactly_one_wins(connect: Callable[[], Store], store: Store) -> None:
    contenders = 4
    stores = [connect() for _ in range(contenders)]
    for _ in range(10):
        job = _put(store, S.ACCEPTED, "host-0")
        unit = f"solstice-job@{job}.service"
        results = _in_parallel(
            contenders, lambda i, job=job, unit=unit: stores[i].claim(job, f"host-{i}", unit)
        )
        assert results.count(True) == 1, results
        record = store.get(job)
        assert record is not None and record.state is S.STARTING
        assert record.host == f"host-{results.index(True)}" and record.unit == unit


def test_claim_is_repeatable_by_the_winner_only(store: Store) -> None:
    job = _put(store, S.ACCEPTED, "host-a")
    assert store.claim(job, "host-b", "u@1") is True
    assert store.claim(job, "host-b", "u@1") is True  # a retry after a lost reply
    assert store.claim(job, "host-a", "u@1") is False
    assert store.transition(job, S.STARTING, S.RUNNING)
    assert store.claim(job, "host-b", "u@1") is False  # not while it runs
    with pytest.raises(JobNotFound):
        store.claim(str(uuid.uuid4()), "host-a", "u")


def test_claim_needs_an_accepted_job(store: Store) -> None:
    job = _put(store, S.QUEUED, "h")
    assert store.claim(job, "h", "u") is False


# --- finishing ----------------------------------------------------------------------------------


def test_finish_exactly_once(store: Store) -> None:
    job = _put(store, S.RUNNING, unique_host())
    assert store.finish(job, Result.SUCCESS, 0, None) is True
    assert store.finish(job, Result.FAILURE, 1, "late") is False
    assert store.finish(job, Result.SUCCESS, 0, None) is False
    record = store.get(job)
    assert record is not None
    assert (record.state, record.result, record.exit_code, record.error) == (
        S.SUCCEEDED,
        Result.SUCCESS,
        0,
        None,
    )
    with pytest.raises(JobNotFound):
        store.finish(str(uuid.uuid4()), Result.ERROR)


def test_concurrent_finish_exactly_once(connect: Callable[[], Store], store: Store) -> None:
    outcomes = [Result.SUCCESS, Result.FAILURE, Result.CANCELLED, Result.ERROR]
    stores = [connect() for _ in outcomes]
    for _ in range(5):
        job = _put(store, S.RUNNING, unique_host())
        results = _in_parallel(len(outcomes), lambda i, job=job: stores[i].finish(job, outcomes[i], i))
        assert results.count(True) == 1
        winner = results.index(True)
        record = store.get(job)
        assert record is not None
        assert (record.result, record.state, record.exit_code) == (
            outcomes[winner],
            RESULT_STATE[outcomes[winner]],
            winner,
        )


@pytest.mark.parametrize("result", list(Result))
@pytest.mark.parametrize("state", [S.QUEUED, S.ACCEPTED, S.STARTING, S.RUNNING])
def test_finish_maps_results_from_any_open_state(store: Store, state: JobState, result: Result) -> None:
    job = _put(store, state, unique_host())
    assert store.finish(job, result, None, "infra: boot timeout" if result is Result.ERROR else None)
    record = store.get(job)
    assert record is not None
    assert record.state is RESULT_STATE[result] and record.state in TERMINAL
    assert record.result is result and record.finished_at is not None
    assert store.finish(job, result) is False


# --- queries ------------------------------------------------------------------------------------


def test_running_on_and_list_jobs(store: Store) -> None:
    host, other = unique_host(), unique_host()
    starting = _put(store, S.STARTING, host)
    running = _put(store, S.RUNNING, host)
    accepted = _put(store, S.ACCEPTED, host)
    _put(store, S.SUCCEEDED, host)
    _put(store, S.RUNNING, other)
    assert [j.job_id for j in store.running_on(host)] == [starting, running]
    assert {j.state for j in store.running_on(other)} == {S.RUNNING}
    assert store.running_on(unique_host()) == []
    assert [j.job_id for j in store.list_jobs(state=S.ACCEPTED, host=host)] == [accepted]
    mine = store.list_jobs(host=host)
    assert len(mine) == 4 and mine[0].queued_at >= mine[-1].queued_at  # newest first
    assert len(store.list_jobs(host=host, limit=2)) == 2
    assert {j.state for j in store.list_jobs(state=["starting", "running"], host=host)} == {
        S.STARTING,
        S.RUNNING,
    }
    counts = store.count_by_state()
    assert counts[S.RUNNING] >= 2 and counts[S.SUCCEEDED] >= 1


def test_get_and_find(store: Store) -> None:
    assert store.get(str(uuid.uuid4())) is None
    job = _put(store, S.ACCEPTED, unique_host())
    found = store.find(job[:13])
    assert [j.job_id for j in found] == [job]
    assert store.find(job.upper()) and store.find("zz") == [] and store.find("") == []


# --- secrets ------------------------------------------------------------------------------------


def test_secrets_never_reach_any_table(store: Store, store_url: str) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    token = f"tok-{uuid.uuid4().hex}"
    password = f"pw-{uuid.uuid4().hex}"
    request = make_request(
        secrets={"API_TOKEN": canary, "MULTI": f"first line\n{canary}-line2\n"},
        contexts={"github": {"token": token, "event_name": "push"}, "secrets": {"X": canary}},
        checkout_source=f"https://x-access-token:{password}@forge.example/owner/project.git",
        reply_to=f"reply-{canary}",
    )
    # the canaries are really in the request, in several places
    dumped = str(to_dict(request))
    assert canary in dumped and token in dumped and password in dumped
    assert store.record_job(request, "host-a")
    assert store.claim(request.job_id, "host-a", "unit")
    assert store.transition(request.job_id, S.STARTING, S.RUNNING)
    assert store.finish(request.job_id, Result.FAILURE, 1, "step 2 failed")

    with psycopg.connect(store_url) as conn:
        tables = conn.execute(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)"
            " FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        assert {"public.jobs", "public.schema_migrations"} <= {t[0] for t in tables}
        for (table,) in tables:
            for needle in (canary, token, password, "line2"):
                hits = conn.execute(
                    sql.SQL("SELECT count(*) FROM {} AS t WHERE strpos(t::text, %s) > 0").format(
                        sql.SQL(table)
                    ),
                    (needle,),
                ).fetchone()
                assert hits == (0,), f"{needle} found in {table}"
        # the row is there, with what may be stored
        doc = conn.execute("SELECT request FROM jobs WHERE job_id = %s", (request.job_id,)).fetchone()
    assert doc is not None
    stored = doc[0]
    assert "secrets" not in stored and "token" not in stored["contexts"]["github"]
    assert stored["reply_to"] == "reply-***"
    assert stored["checkout_source"] == "https://x-access-token:***@forge.example/owner/project.git"
    back = from_dict(JobRequest, stored)
    assert back.secrets == {} and back.job == request.job


# --- connection loss ----------------------------------------------------------------------------


def test_a_killed_connection_raises_store_unavailable_and_reconnect_restores(
    store: Store, store_url: str
) -> None:
    job = _put(store, S.ACCEPTED, unique_host())
    with psycopg.connect(store_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'solstice-test'"
        )
    with pytest.raises(StoreUnavailable) as info:
        store.get(job)
    assert isinstance(info.value, InfraError)
    assert not store.connected
    with pytest.raises(StoreUnavailable, match="not connected"):
        store.list_jobs()
    store.reconnect()
    record = store.get(job)
    assert record is not None and record.state is S.ACCEPTED


def test_retry_reconnects_with_backoff(store: Store, store_url: str) -> None:
    job = _put(store, S.ACCEPTED, unique_host())
    store.close()
    delays: list[float] = []
    assert store.retry(lambda: store.claim(job, "host-r", "u"), sleep=delays.append) is True
    assert delays == []  # a closed store reconnects before the first attempt
    bad = Store("postgresql://postgres@127.0.0.1:5432/solstice_no_such_database")
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        bad.retry(lambda: bad.list_jobs(), timeout=1.0, initial_delay=0.2, sleep=delays.append)
    assert delays == [0.2, 0.4, 0.8]


def test_connect_errors() -> None:
    with pytest.raises(ConfigError, match=r"\[database\] url"):
        Store.connect(DatabaseConfig(url="host=127.0.0.1 no_such_option=1"))
    with pytest.raises(StoreUnavailable) as info:
        Store.connect(DatabaseConfig(url="postgresql://postgres:hunter2@127.0.0.1:5432/solstice_no_such_db"))
    assert "hunter2" not in str(info.value) and "solstice_no_such_db" in str(info.value)


def test_postgres_restart(store: Store, store_url: str) -> None:
    assert local_cluster() is not None, "the server is not a local pg_ctlcluster cluster (scripts/services)"
    request = make_request()
    assert store.record_job(request, "host-a")
    assert store.claim(request.job_id, "host-a", "unit-a")
    try:
        pg_ctl("restart")
        wait_for_postgres()
        with pytest.raises(StoreUnavailable, match="lost the connection"):
            store.transition(request.job_id, S.STARTING, S.RUNNING)
        store.reconnect()
        record = store.get(request.job_id)
        assert record is not None
        assert (record.state, record.host, record.unit) == (S.STARTING, "host-a", "unit-a")
        assert store.transition(request.job_id, S.STARTING, S.RUNNING)

        # The retry helper rides out an outage: stop the server, start it again in a second.
        pg_ctl("stop")
        timer = threading.Timer(1.0, pg_ctl, args=("start",))
        timer.start()
        try:
            assert store.retry(lambda: store.finish(request.job_id, Result.SUCCESS, 0), timeout=90.0)
        finally:
            timer.join()
        record = store.get(request.job_id)
        assert record is not None and record.state is S.SUCCEEDED
    finally:
        ensure_postgres_running()
