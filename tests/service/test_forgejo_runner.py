"""``solstice forgejo-runner`` against the fake Forgejo, through the real pipeline (RabbitMQ,
PostgreSQL, a dispatcher) with the stand-in job program (helpers/fake_job.py, driven by the job's
``FAKE`` env). The same scenarios with real guests are in test_forgejo_vm.py."""

from __future__ import annotations

import json
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.forgejo import RunnerProcess, cli, forgejo_config, register, wait_done
from helpers.pipeline import Pipeline, runner_pipeline, wait_state, wait_until
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice.config import BrokerConfig, DatabaseConfig
from solstice.forges.forgejo import messages as m
from solstice.forges.forgejo.translate import job_uuid
from solstice.store import Store
from tests.fakes.forgejo import FakeForgejo, FakeTask

SECRET = "canary-5d2a-forgejo-secret"


def workflow(fake: str, *, steps: str = "      - run: echo one\n", extra: str = "") -> str:
    return (
        "name: ci\non: push\njobs:\n  build:\n    runs-on: debian-12\n"
        f"    env:\n      FAKE: {fake}\n{extra}    steps:\n{steps}"
    )


@pytest.fixture
def db(database_url: str) -> Iterator[Store]:
    store = Store.connect(DatabaseConfig(url=database_url), application_name="test-forgejo")
    yield store
    store.close()


def _pipeline(broker_cfg: BrokerConfig, database_url: str, extra: str = "") -> Iterator[Pipeline]:
    return runner_pipeline(broker_cfg, database_url, lambda key: forgejo_config(key, extra=extra))


@pytest.fixture
def pipeline(broker_cfg: BrokerConfig, database_url: str) -> Iterator[Pipeline]:
    yield from _pipeline(broker_cfg, database_url)


@pytest.fixture(params=["forgejo", "gitea"])
def forge(request: pytest.FixtureRequest) -> Iterator[FakeForgejo]:
    with FakeForgejo(mode=request.param) as fake:
        yield fake


@pytest.fixture
def forgejo_only() -> Iterator[FakeForgejo]:
    with FakeForgejo() as fake:
        yield fake


def start_all(pipeline: Pipeline, forge: FakeForgejo, *, dispatcher_capacity: int = 4) -> RunnerProcess:
    """Register with ``forge``, start a dispatcher and the runner (consuming its events)."""
    register(pipeline, forge)
    pipeline.dispatcher(capacity=dispatcher_capacity)
    return RunnerProcess(pipeline).start()


def registration(pipeline: Pipeline) -> dict[str, object]:
    path = Path(pipeline.cfg.paths.state_dir) / "forgejo-runner" / "runner.json"
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def one_task(forge: FakeForgejo, timeout: float = 30) -> FakeTask:
    def probe() -> FakeTask | None:
        with forge.lock:
            return next(iter(forge.tasks.values()), None)

    return wait_until("the runner to take a task", probe, timeout, 0.1)


def bodies(forge: FakeForgejo) -> str:
    with forge.lock:
        return json.dumps([body for _, _, body in forge.requests])


# --- register ----------------------------------------------------------------------------------------


def test_register_checks_labels_and_stores_credentials(
    pipeline: Pipeline, forgejo_only: FakeForgejo
) -> None:
    forge = forgejo_only
    token = forge.create_registration_token()
    bad = cli(
        pipeline,
        *("forgejo-runner", "register", "--url", forge.url, "--token", token, "--name", "r"),
        *("--labels", "self-hosted,linux"),
    )
    assert bad.returncode == 1
    assert "give at least one image label" in bad.stderr and "self-hosted, linux" in bad.stderr
    assert not forge.runners  # nothing registered
    schema = cli(
        pipeline,
        *("forgejo-runner", "register", "--url", forge.url, "--token", token, "--name", "r"),
        *("--labels", "debian-12:docker://node:20"),
    )
    assert schema.returncode == 1 and "names only" in schema.stderr

    register(pipeline, forge, name="host-a-runner", labels="debian-12,self-hosted")
    path = Path(pipeline.cfg.paths.state_dir) / "forgejo-runner" / "runner.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = registration(pipeline)
    (runner,) = forge.runners.values()
    assert data["uuid"] == runner.uuid and data["token"] == runner.token
    assert data["labels"] == ["debian-12", "self-hosted"] == runner.labels
    assert data["address"] == forge.url and data["name"] == "host-a-runner"

    again = cli(
        pipeline,
        *("forgejo-runner", "register", "--url", forge.url, "--token", token, "--name", "r"),
        *("--labels", "debian-12"),
    )
    assert again.returncode == 1 and "registered already as 'host-a-runner'" in again.stderr
    shown = cli(pipeline, "forgejo-runner", "show")
    assert shown.returncode == 0 and runner.uuid in shown.stdout and runner.token not in shown.stdout

    forge.invalidate_registration_token(token)
    refused = cli(
        pipeline,
        *("forgejo-runner", "register", "--force", "--url", forge.url, "--token", token, "--name", "r"),
        *("--labels", "debian-12"),
    )
    assert refused.returncode == 1 and "invalidated" in refused.stderr


def test_run_without_registration_says_how_to_register(pipeline: Pipeline) -> None:
    proc = cli(pipeline, "forgejo-runner", "run", timeout=30)
    assert proc.returncode == 1
    assert "not registered" in proc.stderr and "solstice forgejo-runner register" in proc.stderr


# --- tasks through the pipeline ----------------------------------------------------------------------


def test_task_runs_through_the_pipeline_and_is_reported(
    pipeline: Pipeline, forge: FakeForgejo, db: Store
) -> None:
    runner = start_all(pipeline, forge)
    (job,) = forge.enqueue(
        workflow("ok", steps="      - run: echo one\n      - run: echo two\n"), secrets={"API_KEY": SECRET}
    )
    task = wait_done(forge, one_task(forge).id, 60, runner)
    assert task.status == "success", task.lines()
    lines = task.lines()
    assert any("fake job ok" in line for line in lines), lines
    assert lines[-1] == "Job succeeded"
    job_id = job_uuid(forge.url, task.id)
    assert (
        f"Solstice CI: job {job_id} for label debian-12; `solstice status {job_id}` on the dispatcher's host"
        in lines
    )
    assert not any("journalctl" in line for line in lines), lines
    assert task.stopped_at is not None and task.stopped_at.year > 2000
    # the job is the pipeline's, known to the database by the task's uuid
    rec = wait_state(db, job_uuid(forge.url, task.id), {"succeeded"}, 20)
    assert rec.request["source"] == "forgejo"
    # no secret and no token in the clear: not in the forge's requests, not in the database row
    assert SECRET not in bodies(forge) and task.token not in bodies(forge)
    assert SECRET not in json.dumps(rec.request) and task.token not in json.dumps(rec.request)
    # the runner declared its labels and version at start
    with forge.lock:
        procedures = [p for p, _, _ in forge.requests]
    after_register = procedures[[p.rsplit("/", 1)[-1] for p in procedures].index("Register") + 1 :]
    assert after_register[0].endswith("/Declare"), procedures
    (r,) = forge.runners.values()
    assert r.version.startswith("solstice-ci ")
    # the task's report state is gone once everything was acknowledged
    wait_until(
        "the task's state file to be removed",
        lambda: not list((Path(pipeline.cfg.paths.state_dir) / "forgejo-runner" / "tasks").glob("*.json")),
        10,
    )
    runner.terminate()


def test_a_job_that_cannot_run_fails_in_the_forge_with_the_reason(
    pipeline: Pipeline, forgejo_only: FakeForgejo
) -> None:
    forge = forgejo_only
    runner = start_all(pipeline, forge)
    forge.enqueue(workflow("ok", steps="      - uses: actions/setup-go@v5\n      - run: go test\n"))
    task = wait_done(forge, one_task(forge).id, 30, runner)
    assert task.status == "failure"
    text = "\n".join(task.lines())
    assert "Solstice cannot run this job" in text and "actions/setup-go@v5" in text, text
    assert [s.status for s in task.steps] == ["cancelled", "cancelled"]
    runner.terminate()


def test_cancel_in_the_forge_stops_the_job(pipeline: Pipeline, forgejo_only: FakeForgejo, db: Store) -> None:
    forge = forgejo_only
    runner = start_all(pipeline, forge)
    forge.enqueue(workflow("sleep:120"))
    task = one_task(forge)
    job_id = job_uuid(forge.url, task.id)
    wait_until("ticks in the forge", lambda: any(x.startswith("tick") for x in task.lines()), 30, 0.2)
    started = time.monotonic()
    forge.cancel(task.id)
    wait_state(db, job_id, {"cancelled"}, 10)
    assert time.monotonic() - started < 10
    done = wait_done(forge, task.id, 20, runner)
    assert done.status == "cancelled"
    assert done.lines()[-1] == "Job cancelled"
    runner.terminate()


def _ticks(task: FakeTask) -> list[int]:
    return [int(x.split()[1]) for x in task.lines() if re.fullmatch(r"tick \d+", x)]


def test_runner_killed_mid_job_resumes_without_gaps_or_duplicates(
    pipeline: Pipeline, forgejo_only: FakeForgejo
) -> None:
    forge = forgejo_only
    runner = start_all(pipeline, forge)
    forge.enqueue(workflow("sleep:8"))
    task = one_task(forge)
    wait_until("a few ticks in the forge", lambda: len(_ticks(task)) >= 5, 30, 0.1)
    runner.kill()  # SIGKILL: no chance to save anything more
    time.sleep(2)  # the job goes on meanwhile
    runner.start()
    done = wait_done(forge, task.id, 60, runner)
    ticks = _ticks(done)
    assert ticks == list(range(1, len(ticks) + 1)) and len(ticks) > 40, ticks
    assert done.status == "success" and done.lines().count("Job succeeded") == 1
    runner.terminate()


def test_forge_down_then_back_the_job_is_reported(
    pipeline: Pipeline, forgejo_only: FakeForgejo, db: Store
) -> None:
    forge = forgejo_only
    runner = start_all(pipeline, forge)
    forge.enqueue(workflow("sleep:3"))
    task = one_task(forge)
    wait_until("ticks in the forge", lambda: len(_ticks(task)) >= 2, 30, 0.1)
    forge.down()
    wait_state(db, job_uuid(forge.url, task.id), {"succeeded"}, 30)  # ends while the forge is down
    time.sleep(3)
    assert runner.proc is not None and runner.proc.poll() is None  # it waits, it does not give up
    forge.up()
    done = wait_done(forge, task.id, 30, runner)
    ticks = _ticks(done)
    assert done.status == "success" and ticks == list(range(1, len(ticks) + 1)), ticks
    assert "cannot be reached" in runner.output() and "answers again" in runner.output()
    runner.terminate()


def test_registration_revoked_exits_with_a_clear_error(pipeline: Pipeline, forge: FakeForgejo) -> None:
    runner = start_all(pipeline, forge)
    forge.delete_runner(str(registration(pipeline)["uuid"]))
    status = runner.wait_exit(30)
    out = runner.output()
    assert status == 78, out
    assert "no longer knows runner" in out and "register again" in out, out


def test_no_task_is_taken_beyond_capacity(
    broker_cfg: BrokerConfig, database_url: str, forgejo_only: FakeForgejo
) -> None:
    forge = forgejo_only
    made = _pipeline(broker_cfg, database_url, extra="capacity = 1\n")
    pipeline = next(made)
    try:
        runner = start_all(pipeline, forge, dispatcher_capacity=4)
        jobs = forge.enqueue(workflow("sleep:3", extra="    strategy:\n      matrix:\n        n: [1, 2]\n"))
        assert len(jobs) == 2
        busy_together = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with forge.lock:
                running = [t for t in forge.tasks.values() if t.status == "running"]
                finished = [t for t in forge.tasks.values() if t.archived and t.status == "success"]
            busy_together = busy_together or len(running) > 1
            if len(finished) == 2:
                break
            time.sleep(0.1)
        assert len(finished) == 2 and not busy_together
        assert {t.job.name for t in finished} == {"build (1)", "build (2)"}
        runner.terminate()
    finally:
        made.close()


def test_task_state_on_disk_holds_no_secret(pipeline: Pipeline, forgejo_only: FakeForgejo) -> None:
    forge = forgejo_only
    runner = start_all(pipeline, forge)
    forge.enqueue(workflow("sleep:30"), secrets={"API_KEY": SECRET})
    task = one_task(forge)
    tasks_dir = Path(pipeline.cfg.paths.state_dir) / "forgejo-runner" / "tasks"
    wait_until("ticks", lambda: len(_ticks(task)) >= 3, 30, 0.1)
    files = list(tasks_dir.glob("*.json"))
    assert files
    for f in files:
        text = f.read_text()
        assert SECRET not in text and task.token not in text
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    forge.cancel(task.id)
    assert wait_done(forge, task.id, 30, runner).status == "cancelled"
    assert task.result == m.Result.RESULT_CANCELLED
    runner.terminate()


DONE = ("success", "failure", "cancelled", "skipped")


def test_the_jobs_if_decides_whether_it_runs(
    pipeline: Pipeline, forgejo_only: FakeForgejo, db: Store
) -> None:
    forge = forgejo_only
    runner = start_all(pipeline, forge)
    forge.enqueue(
        "name: ci\non: push\njobs:\n"
        "  a:\n    runs-on: debian-12\n    env: {FAKE: fail}\n    steps: [{run: x}]\n"
        "  cleanup:\n    needs: a\n    if: failure()\n    runs-on: debian-12\n    env: {FAKE: ok}\n"
        "    steps: [{run: y}]\n"
        "  release:\n    if: github.ref == 'refs/heads/release'\n    runs-on: debian-12\n"
        "    env: {FAKE: ok}\n    steps: [{run: z}, {run: w}]\n"
    )

    def tasks_by_key() -> dict[str, FakeTask] | None:
        with forge.lock:
            # The log's end and the final state are two calls: wait for both.
            found = {t.job.key: t for t in forge.tasks.values() if t.archived and t.status in DONE}
        return found if len(found) == 3 else None

    try:
        done = wait_until("the three tasks to be reported", tasks_by_key, 60, 0.2)
    except AssertionError:
        raise AssertionError(runner.output()[-3000:]) from None
    assert done["a"].status == "failure"
    assert done["cleanup"].status == "success"  # needs.a failed and if: failure() holds
    release = done["release"]
    assert release.status == "skipped" and [s.status for s in release.steps] == ["skipped", "skipped"]
    assert release.lines() == [
        "Skipping the job: the job's condition is false: if: github.ref == 'refs/heads/release'",
        "Job skipped",
    ]
    assert db.get(job_uuid(forge.url, release.id)) is None  # no job, no VM for it
    runner.terminate()


# --- routing: a job goes to the queue of its label; only the dispatchers know the images ------------


def test_a_runner_with_no_image_catalog_routes_to_its_labels_queue(
    broker_cfg: BrokerConfig, database_url: str, forgejo_only: FakeForgejo
) -> None:
    forge = forgejo_only
    # images_dir is <state_dir>/images: an empty state dir has no image files at all, and
    # omnios-bloody is in the runner's catalog neither: it registers and routes by the label
    # alone; only the dispatcher's host (its own configuration) knows the image, to plan its VM
    made = _pipeline(broker_cfg, database_url)
    pipeline = next(made)
    try:
        assert not pipeline.cfg.paths.images_dir.exists()
        register(pipeline, forge, labels="self-hosted,omnios-bloody")
        host = _host_config(pipeline, "host-a", 'labels = ["omnios-bloody"]\n', OMNIOS_IMAGE)
        pipeline.dispatcher(env={"SOLSTICE_CONFIG": str(host)})
        runner = RunnerProcess(pipeline).start()
        forge.enqueue(workflow("ok").replace("runs-on: debian-12", "runs-on: [self-hosted, omnios-bloody]"))
        task = wait_done(forge, one_task(forge).id, 60, runner)
        assert task.status == "success", task.lines()
        assert any("fake job ok" in line for line in task.lines())
        job_id = job_uuid(forge.url, task.id)
        assert [line.split()[1] for line in pipeline.runs(job_id)] == ["host-a"]
        assert f"for label omnios-bloody; `solstice status {job_id}`" in "\n".join(task.lines())
        runner.terminate()
    finally:
        made.close()


#: An image table for a dispatcher host (the stand-in job boots nothing; the plan reads the table).
OMNIOS_IMAGE = '[images.omnios-bloody]\npath = "omnios/base.qcow2"\nprofile = "omnios"\nboot = "uefi"\n'


def _host_config(pipeline: Pipeline, name: str, labels: str, extra: str = "") -> Path:
    """The pipeline's configuration for another host: its own images and [dispatcher] labels
    (``labels`` "" : none, so it consumes the queues of its catalog's labels and aliases)."""
    text = pipeline.config_file.read_text()
    assert 'labels = ["debian-12"]\n' in text
    path = pipeline.runtime_dir / f"{name}.toml"
    path.write_text(text.replace('labels = ["debian-12"]\n', labels) + extra)
    return path


def test_each_labels_jobs_reach_only_the_dispatchers_with_its_image(
    pipeline: Pipeline, forgejo_only: FakeForgejo
) -> None:
    forge = forgejo_only
    # host-a has the built-in debian-12 with an alias; host-b only the [dispatcher] labels it names
    a_cfg = _host_config(
        pipeline, "host-a", "", '[images.debian-12]\npath = "debian-12/base.qcow2"\naliases = ["bookworm"]\n'
    )
    b_cfg = _host_config(pipeline, "host-b", 'labels = ["omnios-bloody"]\n', OMNIOS_IMAGE)
    register(pipeline, forge, labels="self-hosted,debian-12,bookworm,omnios-bloody")
    pipeline.dispatcher("host-a", env={"SOLSTICE_CONFIG": str(a_cfg)})
    pipeline.dispatcher("host-b", env={"SOLSTICE_CONFIG": str(b_cfg)})
    runner = RunnerProcess(pipeline).start()
    wanted = {"debian-12": "host-a", "bookworm": "host-a", "omnios-bloody": "host-b"}
    for label in wanted:
        forge.enqueue(workflow("ok").replace("runs-on: debian-12", f"runs-on: {label}"))

    def all_done() -> list[FakeTask] | None:
        with forge.lock:
            done = [t for t in forge.tasks.values() if t.archived]
        return done if len(done) == len(wanted) else None

    try:
        done = wait_until("the three tasks to be reported", all_done, 90, 0.2)
    except AssertionError:
        raise AssertionError(runner.output()[-3000:]) from None
    for task in done:
        assert task.status == "success", task.lines()
        (label,) = task.job.runs_on
        hosts = [line.split()[1] for line in pipeline.runs(job_uuid(forge.url, task.id))]
        assert hosts == [wanted[label]], (label, hosts)
    runner.terminate()
