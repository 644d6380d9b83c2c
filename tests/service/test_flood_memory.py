"""A job flooding its output through the whole service pipeline (stand-in job -> RabbitMQ ->
``solstice forgejo-runner`` -> the fake Forgejo; a real dispatcher) keeps every process's memory
bounded and every line: a memory bound, not a timing one. Peak RSS is the kernel's VmHWM, read
while the processes run. scripts/bench-flood measures the job process with real output."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.forgejo import RunnerProcess, forgejo_config, register, wait_done
from helpers.pipeline import Pipeline, runner_pipeline, wait_until
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice.config import BrokerConfig
from solstice.forges.forgejo.translate import job_uuid
from tests.fakes.forgejo import FakeForgejo

MEGABYTES = 256
LINE = 65536  # the job's line limit: a flood of the longest lines a job sends
BOUND_MIB = 300


@pytest.fixture
def pipeline(broker_cfg: BrokerConfig, database_url: str) -> Iterator[Pipeline]:
    yield from runner_pipeline(broker_cfg, database_url, lambda key: forgejo_config(key))


def _hwm_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def test_a_flood_of_long_lines_keeps_every_process_bounded_and_every_line(pipeline: Pipeline) -> None:
    with FakeForgejo() as forge:
        register(pipeline, forge)
        dispatcher = pipeline.dispatcher(capacity=1)
        runner = RunnerProcess(pipeline).start()
        assert dispatcher.proc is not None and runner.proc is not None
        workflow = (
            "name: ci\non: push\njobs:\n  build:\n    runs-on: debian-12\n"
            f"    env:\n      FAKE: flood:{MEGABYTES}:{LINE}\n    steps:\n      - run: flood\n"
        )
        forge.enqueue(workflow)
        peaks: dict[str, float] = {"dispatcher": 0.0, "runner": 0.0, "job": 0.0}
        pids = {"dispatcher": dispatcher.proc.pid, "runner": runner.proc.pid}
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

            def taken() -> int | None:
                with forge.lock:
                    return next(iter(forge.tasks), None)

            task = wait_done(forge, wait_until("the runner to take the task", taken, 60), 240, runner)
        finally:
            stop.set()
            sampler.join()
        assert task.status == "success", task.lines()[-5:]
        expected = MEGABYTES * 1024 * 1024 // LINE
        assert sum(1 for line in task.lines() if line == "x" * LINE) == expected
        assert pipeline.runs(job_uuid(forge.url, task.id))
        assert peaks["job"] > 0 and peaks["runner"] > 0 and peaks["dispatcher"] > 0, peaks
        print(f"peak RSS (MiB) with {MEGABYTES} MiB of {LINE}-character lines: {peaks}")
        assert max(peaks.values()) < BOUND_MIB, peaks
        runner.terminate()
