"""``solstice github-runner`` against the fake GitHub (tests/fakes/github.py), through the real
pipeline (RabbitMQ, PostgreSQL, a dispatcher) with the stand-in job program (helpers/fake_job.py,
driven by the job's ``FAKE`` env)."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.forgejo import RunnerProcess, cli
from helpers.github import (
    github_config,
    register,
    runner,
    step_logs,
    wait_acquired,
    wait_completed,
)
from helpers.pipeline import Pipeline, runner_pipeline, wait_until
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice.config import BrokerConfig
from tests.fakes.github import FakeGitHub, FakeJob

SECRET = "canary-7f3b-github-secret"


def workflow(fake: str, *, steps: str = "      - run: echo one\n", extra: str = "") -> str:
    return (
        "name: ci\non: push\njobs:\n  build:\n    runs-on: [self-hosted, debian-12]\n"
        f"    env:\n      FAKE: {fake}\n{extra}    steps:\n{steps}"
    )


TWO_STEPS = "      - name: First\n        run: echo one\n      - name: Second\n        run: echo two\n"


def _pipeline(broker_cfg: BrokerConfig, database_url: str, extra: str = "") -> Iterator[Pipeline]:
    return runner_pipeline(broker_cfg, database_url, lambda key: github_config(key, extra=extra))


@pytest.fixture
def pipeline(broker_cfg: BrokerConfig, database_url: str) -> Iterator[Pipeline]:
    yield from _pipeline(broker_cfg, database_url, extra="lease_renewal = 1\n")


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    with FakeGitHub(poll_hold=2.0) as gh:
        yield gh


def start_all(pipeline: Pipeline, fake: FakeGitHub, **kw: bool) -> RunnerProcess:
    register(pipeline, fake, **kw)
    pipeline.dispatcher()
    return runner(pipeline).start()


def wait_running(fake: FakeGitHub, job: FakeJob, step: str) -> None:
    """Until GitHub shows ``step`` in progress: the job runs in the pipeline and is reported."""

    def running() -> bool:
        with fake.lock:
            return any(s["name"] == step and s["status"] == 3 for s in job.steps.values())

    wait_until(f"step {step!r} to be in progress", running, 30)


def all_bodies(fake: FakeGitHub) -> bytes:
    with fake.lock:
        return b"\n".join(r.body for r in fake.requests) + b"\n".join(bytes(b) for b in fake.blobs.values())


# --- register -------------------------------------------------------------------------------------


def test_register_stores_credentials_and_show_hides_them(pipeline: Pipeline, fake: FakeGitHub) -> None:
    bad = cli(
        pipeline,
        *("github-runner", "register", "--url", fake.github_url, "--token", "x", "--name", "r"),
        *("--labels", "self-hosted,linux"),
    )
    assert bad.returncode == 1 and "give at least one image label" in bad.stderr
    r = register(pipeline, fake, labels="debian-12,self-hosted")
    path = Path(pipeline.cfg.paths.state_dir) / "github-runner" / "runner.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    shown = cli(pipeline, "github-runner", "show")
    assert shown.returncode == 0, shown.stderr
    assert r.name in shown.stdout and "debian-12" in shown.stdout
    assert "PRIVATE KEY" not in shown.stdout and data["private_key"] not in shown.stdout
    remove = fake.remove_token()
    gone = cli(pipeline, "github-runner", "unregister", "--token", "-", stdin=remove + "\n")
    assert gone.returncode == 0, gone.stderr
    assert not path.exists()
    with fake.lock:
        assert r.id not in fake.runners or fake.runners[r.id].deleted


# --- jobs through the pipeline ---------------------------------------------------------------------


def test_job_runs_and_its_steps_logs_and_result_reach_github(pipeline: Pipeline, fake: FakeGitHub) -> None:
    proc = start_all(pipeline, fake)
    (job,) = fake.enqueue(
        workflow("steps", steps=TWO_STEPS + "      - run: echo ${{ secrets.API_KEY }}\n"),
        secrets={"API_KEY": SECRET},
    )
    done = wait_completed(fake, job, 60, proc)
    assert done.completed is not None
    assert done.completed["conclusion"] == "succeeded", done.completed
    assert job.acknowledged and job.renewals >= 1
    results = done.completed["stepResults"]
    assert [s["name"] for s in results][:2] == ["First", "Second"]
    assert all(s["conclusion"] == "succeeded" for s in results)
    logs = step_logs(fake, job)
    assert "step 1: First" in logs["First"] and "step 2: Second" in logs["Second"]
    assert "Set up job" in logs and "Solstice CI: job" in logs["Set up job"]
    assert "Job succeeded" in logs["Complete job"]
    with fake.lock:
        assert all(s["status"] == 6 for s in job.steps.values())
        assert job.log_lines[""] >= 5  # the job log
    job_log = fake.log_text(job)
    assert "step 1: First" in job_log and job_log.index("step 1") < job_log.index("step 2")
    assert SECRET.encode() not in all_bodies(fake)
    assert job.token.encode() not in all_bodies(fake)
    state = Path(pipeline.cfg.paths.state_dir) / "github-runner"
    wait_until(
        "the job's checkpoint and log spool files to go",
        lambda: not list((state / "tasks").glob("*")) and not list((state / "logs").glob("*")),
        10,
    )
    proc.terminate()


def test_secrets_never_reach_github_unmasked_even_when_the_job_leaks_them(
    pipeline: Pipeline, fake: FakeGitHub
) -> None:
    proc = start_all(pipeline, fake)
    (job,) = fake.enqueue(workflow("leak"), secrets={"API_KEY": SECRET})
    done = wait_completed(fake, job, 60, proc)
    assert done.completed is not None and done.completed["conclusion"] == "succeeded"
    logs = step_logs(fake, job)
    assert "secret API_KEY is ***" in logs["Set up job"], (logs, fake.log_text(job))
    assert "secret GITHUB_TOKEN is ***" in logs["Set up job"]  # the job's token is masked too
    bodies = all_bodies(fake)
    assert SECRET.encode() not in bodies and job.github_token.encode() not in bodies
    assert job.token.encode() not in bodies  # the job's results/run-service token
    tasks = Path(pipeline.cfg.paths.state_dir) / "github-runner" / "tasks"
    for path in tasks.glob("*.json"):  # a report still on disk holds no secret in clear
        assert SECRET not in path.read_text()
    proc.terminate()


def test_matrix_jobs_each_run_and_report(pipeline: Pipeline, fake: FakeGitHub) -> None:
    proc = start_all(pipeline, fake)
    jobs = fake.enqueue(workflow("ok", extra="    strategy:\n      matrix:\n        v: [a, b]\n"))
    assert len(jobs) == 2
    for job in jobs:
        done = wait_completed(fake, job, 60, proc)
        assert done.completed is not None and done.completed["conclusion"] == "succeeded"
    names = sorted(j.spec.name for j in jobs)
    assert names == ["build (a)", "build (b)"]
    proc.terminate()


def test_unsupported_action_fails_in_github_before_any_job_is_published(
    pipeline: Pipeline, fake: FakeGitHub
) -> None:
    proc = start_all(pipeline, fake)
    (job,) = fake.enqueue(workflow("ok", steps=TWO_STEPS), uses={2: "actions/setup-node@v4"})
    done = wait_completed(fake, job, 30, proc)
    assert done.completed is not None and done.completed["conclusion"] == "failed"
    message = " ".join(a["message"] for a in done.completed.get("annotations", []))
    assert "actions/setup-node@v4 is not supported" in message
    logs = step_logs(fake, job)
    assert "actions/setup-node@v4 is not supported" in logs["Set up job"]
    assert not list(pipeline.runs_dir.iterdir())  # no job process ever started
    proc.terminate()


def test_cancellation_in_github_stops_the_job(pipeline: Pipeline, fake: FakeGitHub) -> None:
    proc = start_all(pipeline, fake)
    (job,) = fake.enqueue(workflow("steps:30", steps=TWO_STEPS))
    wait_acquired(fake, job)
    wait_running(fake, job, "First")
    started = time.monotonic()
    fake.send(job.runner_id, "JobCancellation", {"jobId": job.job_id, "timeout": "00:05:00"})
    done = wait_completed(fake, job, 30, proc)
    assert time.monotonic() - started < 10
    assert done.completed is not None and done.completed["conclusion"] == "canceled"
    (run,) = pipeline.runs_dir.iterdir()
    pid = int(pipeline.runs(run.name)[0].split()[0])
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    logs = step_logs(fake, job)
    assert "Job cancelled" in logs["Complete job"]
    proc.terminate()


def test_lease_lost_stops_the_job_and_says_so(pipeline: Pipeline, fake: FakeGitHub) -> None:
    proc = start_all(pipeline, fake)
    (job,) = fake.enqueue(workflow("steps:30", steps=TWO_STEPS))
    wait_acquired(fake, job)
    wait_running(fake, job, "First")
    fake.expire_lease(job)
    wait_until(
        "the runner to give the job up",
        lambda: "lease" in proc.output() and "ends here" in proc.output(),
        40,
    )
    assert "is being stopped" in proc.output()  # the core published the cancel
    assert job.completed is None  # GitHub took it back: nothing completes it any more
    proc.terminate()


def test_token_expiry_mid_job_is_renewed(pipeline: Pipeline, fake: FakeGitHub) -> None:
    proc = start_all(pipeline, fake)
    (job,) = fake.enqueue(workflow("steps:3", steps=TWO_STEPS))
    wait_acquired(fake, job)
    with fake.lock:
        exchanges = len(fake.algorithms)
    fake.expire_tokens()
    done = wait_completed(fake, job, 60, proc)
    assert done.completed is not None and done.completed["conclusion"] == "succeeded"
    (second,) = fake.enqueue(workflow("ok"))  # the runner still polls with a new token
    assert wait_completed(fake, second, 60, proc).completed is not None
    with fake.lock:
        assert len(fake.algorithms) > exchanges  # a new runner token was minted
    proc.terminate()


def test_session_conflict_at_start_is_retried(pipeline: Pipeline, fake: FakeGitHub) -> None:
    r = register(pipeline, fake)
    with fake.lock:
        r.session_id = "held-by-another-process"
    pipeline.dispatcher()
    proc = runner(pipeline).start(wait=False)
    wait_until(
        "the conflict to be logged", lambda: "another process holds the broker session" in proc.output(), 20
    )
    with fake.lock:
        r.session_id = ""
    (job,) = fake.enqueue(workflow("ok"))
    assert wait_completed(fake, job, 60, proc).completed is not None
    proc.terminate()


def test_runner_deleted_in_github_exits_78(pipeline: Pipeline, fake: FakeGitHub) -> None:
    proc = start_all(pipeline, fake)
    with fake.lock:
        (r,) = fake.runners.values()
    fake.delete_runner(r.id)
    assert proc.wait_exit(30) == 78
    assert "GitHub no longer knows runner" in proc.output()


def test_ephemeral_runner_exits_after_one_job(pipeline: Pipeline, fake: FakeGitHub) -> None:
    proc = start_all(pipeline, fake, ephemeral=True)
    first, second = fake.enqueue(workflow("ok", extra="    strategy:\n      matrix:\n        v: [a, b]\n"))
    done = wait_completed(fake, first, 60, proc)
    assert done.completed is not None
    assert proc.wait_exit(30) == 0
    assert second.token == ""  # never taken


def test_jit_runner_exits_after_one_job(pipeline: Pipeline, fake: FakeGitHub) -> None:
    config, _ = fake.jit_config("jit-1", ["debian-12"])
    reg = cli(pipeline, "github-runner", "register", "--jitconfig", config, "--labels", "debian-12")
    assert reg.returncode == 0, reg.stderr
    pipeline.dispatcher()
    proc = runner(pipeline).start()
    (job,) = fake.enqueue(workflow("ok"))
    assert wait_completed(fake, job, 60, proc).completed is not None
    assert proc.wait_exit(30) == 0


def test_runner_restart_mid_job_loses_and_duplicates_no_line(pipeline: Pipeline, fake: FakeGitHub) -> None:
    proc = start_all(pipeline, fake)
    (job,) = fake.enqueue(workflow("steps:4", steps=TWO_STEPS))
    wait_acquired(fake, job)
    wait_running(fake, job, "First")
    time.sleep(2)
    proc.kill()
    assert job.completed is None  # killed mid-job
    with fake.lock:
        fake.runners[job.runner_id].session_id = ""  # the dead process's session expires
    proc.start()
    done = wait_completed(fake, job, 60, proc)
    assert done.completed is not None and done.completed["conclusion"] == "succeeded"
    for number in (1, 2):
        log = step_logs(fake, job)["First" if number == 1 else "Second"]
        ticks = [line.split(" tick ")[1] for line in log.splitlines() if f"step {number} tick " in line]
        assert ticks == [str(n) for n in range(1, len(ticks) + 1)], log
        assert len(ticks) >= 20
    assert len(list(pipeline.runs_dir.iterdir())) == 1
    assert len(pipeline.runs(next(iter(pipeline.runs_dir.iterdir())).name)) == 1
    proc.terminate()


def test_ephemeral_runner_exits_cleanly_when_its_job_is_taken(pipeline: Pipeline, fake: FakeGitHub) -> None:
    register(pipeline, fake, ephemeral=True)
    (job,) = fake.enqueue(workflow("ok"))
    with fake.lock:
        job.token = "acquired-by-another-runner"  # acquirejob answers 409 (§6.1)
    pipeline.dispatcher()
    proc = runner(pipeline).start()
    assert proc.wait_exit(30) == 0
    assert "another runner has it" in proc.output()
    assert not list(pipeline.runs_dir.iterdir())


def test_a_refused_runner_version_stops_with_the_setting_to_change(
    broker_cfg: BrokerConfig, database_url: str
) -> None:
    with FakeGitHub(min_version="9.0.0") as fake:
        for pipeline in _pipeline(broker_cfg, database_url):
            register(pipeline, fake)
            proc = runner(pipeline).start(wait=False)
            assert proc.wait_exit(30) == 78
            out = proc.output()
            assert "RunnerVersionTooOld" in out and "runner_version in the [github] section" in out


def test_an_infrastructure_error_fails_with_its_category(pipeline: Pipeline, fake: FakeGitHub) -> None:
    proc = start_all(pipeline, fake)
    (job,) = fake.enqueue(workflow("error"))
    done = wait_completed(fake, job, 60, proc)
    assert done.completed is not None and done.completed["conclusion"] == "failed"
    assert done.completed["infrastructureFailureCategory"] == "solstice_infrastructure_failure"
    (note,) = done.completed["annotations"]
    assert note["isInfrastructureIssue"] and "fake error" in note["message"]
    assert "infrastructure error" in step_logs(fake, job)["Complete job"]
    proc.terminate()


def test_an_invalid_session_is_recreated(pipeline: Pipeline, fake: FakeGitHub) -> None:
    proc = start_all(pipeline, fake)
    with fake.lock:
        (r,) = fake.runners.values()
        old = r.session_id
        r.session_id = ""  # the broker forgot it: the next poll answers RunnerSessionInvalid
    wait_until("a new session", lambda: r.session_id not in ("", old), 20)
    assert "creating a new one" in proc.output()
    (job,) = fake.enqueue(workflow("ok"))
    assert wait_completed(fake, job, 60, proc).completed is not None
    proc.terminate()


def test_a_broker_migration_moves_the_long_poll(pipeline: Pipeline, fake: FakeGitHub) -> None:
    proc = start_all(pipeline, fake)
    with fake.lock:
        (r,) = fake.runners.values()
    fake.send(r.id, "BrokerMigration", {"brokerBaseUrl": f"{fake.url}/broker-v2"})

    def polls_moved() -> bool:
        with fake.lock:
            return any(x.path == "/broker-v2/message" for x in fake.requests)

    wait_until("the long-poll at the new broker", polls_moved, 20)
    (job,) = fake.enqueue(workflow("ok"))
    assert wait_completed(fake, job, 60, proc).completed is not None
    with fake.lock:
        acks = [x.path for x in fake.requests if x.path.endswith("/acknowledge")]
    assert acks == ["/broker-v2/acknowledge"]
    proc.terminate()
