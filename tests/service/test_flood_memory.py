"""A job flooding its output through the whole service pipeline (stand-in job -> RabbitMQ ->
``solstice forgejo-runner`` / ``github-runner`` -> the fake forge; a real dispatcher) keeps every
process's memory bounded, and the Forgejo log every line: a memory bound, not a timing one. Peak
RSS is the kernel's VmHWM, read while the processes run. scripts/bench-flood measures the job
process with a real guest's output."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from helpers.forgejo import RunnerProcess, wait_done
from helpers.forgejo import register as register_forgejo
from helpers.github import register as register_github
from helpers.github import runner, wait_completed
from helpers.pipeline import Pipeline, wait_until
from helpers.runner_fixtures import forgejo_pipeline as forgejo_pipeline  # noqa: F401  (fixture)
from helpers.runner_fixtures import github_pipeline as github_pipeline  # noqa: F401  (fixture)
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from tests.fakes.forgejo import FakeForgejo
from tests.fakes.github import FakeGitHub

MEGABYTES = 256
LINE = 65536  # the job's line limit: a flood of the longest lines a job sends
BOUND_MIB = 300


def _workflow(runs_on: str) -> str:
    return (
        f"name: ci\non: push\njobs:\n  build:\n    runs-on: {runs_on}\n"
        f"    env:\n      FAKE: flood:{MEGABYTES}:{LINE}\n    steps:\n      - run: flood\n"
    )


def _hwm_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _peaks(
    pipeline: Pipeline, forge_runner: RunnerProcess, until_done: Callable[[], object]
) -> dict[str, float]:
    """Peak RSS of the dispatcher, the forge runner and the stand-in job while ``until_done`` waits."""
    (dispatcher,) = pipeline.dispatchers
    assert dispatcher.proc is not None and forge_runner.proc is not None
    pids = {"dispatcher": dispatcher.proc.pid, "runner": forge_runner.proc.pid}
    peaks = {"dispatcher": 0.0, "runner": 0.0, "job": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            for runs in pipeline.runs_dir.glob("*"):
                pids["job"] = int(runs.read_text().split()[0])
            for name, pid in pids.items():
                peaks[name] = max(peaks[name], _hwm_mib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        until_done()
    finally:
        stop.set()
        sampler.join()
    print(f"peak RSS (MiB), {MEGABYTES} MiB of {LINE}-character lines: {peaks}")
    assert all(peaks.values()), peaks  # each process was seen
    return peaks


def test_forgejo_flood_keeps_every_process_bounded_and_every_line(forgejo_pipeline: Pipeline) -> None:
    with FakeForgejo() as forge:
        register_forgejo(forgejo_pipeline, forge)
        forgejo_pipeline.dispatcher(capacity=1)
        proc = RunnerProcess(forgejo_pipeline).start()
        forge.enqueue(_workflow("debian-12"))
        done: list[object] = []

        def taken() -> int | None:
            with forge.lock:
                return next(iter(forge.tasks), None)

        peaks = _peaks(
            forgejo_pipeline,
            proc,
            lambda: done.append(
                wait_done(forge, wait_until("the runner to take the task", taken, 60), 240, proc)
            ),
        )
        (task,) = done
        assert task.status == "success", task.lines()[-5:]  # type: ignore[attr-defined]
        kept = sum(1 for line in task.lines() if line == "x" * LINE)  # type: ignore[attr-defined]
        assert kept == MEGABYTES * 1024 * 1024 // LINE
        assert max(peaks.values()) < BOUND_MIB, peaks
        proc.terminate()


def test_github_flood_keeps_every_process_bounded(github_pipeline: Pipeline) -> None:
    with FakeGitHub(poll_hold=2.0) as fake:
        register_github(github_pipeline, fake)
        github_pipeline.dispatcher(capacity=1)
        proc = runner(github_pipeline).start()
        (job,) = fake.enqueue(_workflow("[self-hosted, debian-12]"))
        peaks = _peaks(github_pipeline, proc, lambda: wait_completed(fake, job, 240, proc))
        assert job.completed is not None and job.completed["conclusion"] == "succeeded", job.completed
        # The job log is over the blob limit the service announced: cut, and it says so.
        assert "the log was cut at" in fake.log_text(job)
        assert max(peaks.values()) < BOUND_MIB, peaks
        proc.terminate()
