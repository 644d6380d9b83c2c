"""The GitHub runner for tests: ``solstice github-runner register`` and ``run`` as child processes
against the fake GitHub (tests/fakes/github.py), with the pipeline's configuration."""

from __future__ import annotations

from pathlib import Path

from helpers.forgejo import RunnerProcess, cli
from helpers.pipeline import POLLER, Pipeline, wait_until
from tests.fakes.github import FakeGitHub, FakeJob, FakeRunner

ADDRESS = POLLER


def github_config(key_file: Path, *, extra: str = "") -> str:
    return (
        f'[secrets]\nkey_file = "{key_file}"\n'
        f'[github]\naddress = "{ADDRESS}"\nfetch_interval = 0.3\nreport_interval = 0.5\n'
        f"max_backoff = 2\n{extra}"
    )


def register(
    pipeline: Pipeline,
    fake: FakeGitHub,
    *,
    name: str = "solstice-test",
    labels: str = "debian-12",
    ephemeral: bool = False,
) -> FakeRunner:
    token = fake.registration_token()
    args = ["github-runner", "register", "--url", fake.github_url, "--token", "-", "--name", name]
    proc = cli(
        pipeline, *args, "--labels", labels, *(["--ephemeral"] if ephemeral else []), stdin=token + "\n"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert token not in proc.stdout + proc.stderr
    with fake.lock:
        return next(r for r in fake.runners.values() if r.name == name)


def runner(pipeline: Pipeline) -> RunnerProcess:
    return RunnerProcess(pipeline, verb="github-runner", address=ADDRESS)


def wait_completed(
    fake: FakeGitHub, job: FakeJob, timeout: float, proc: RunnerProcess | None = None
) -> FakeJob:
    def done() -> FakeJob | None:
        if (
            proc is not None
            and proc.proc is not None
            and proc.proc.poll() is not None
            and proc.proc.returncode
        ):
            raise AssertionError(f"the runner exited {proc.proc.returncode}:\n{proc.output()}")
        with fake.lock:
            return job if job.completed is not None else None

    try:
        return wait_until(f"job {job.job_id} to be completed", done, timeout, 0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrunner log:\n{proc.output()[-4000:] if proc else ''}") from None


def wait_acquired(fake: FakeGitHub, job: FakeJob, timeout: float = 30) -> None:
    wait_until("the runner to acquire the job", lambda: bool(job.token), timeout, 0.1)


def step_logs(fake: FakeGitHub, job: FakeJob) -> dict[str, str]:
    """Each step's uploaded log by its name in the last WorkflowStepsUpdate."""
    with fake.lock:
        return {s["name"]: fake.log_text(job, ext) for ext, s in job.steps.items()}
