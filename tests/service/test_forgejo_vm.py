"""Forgejo jobs end to end with real guests: the fake Forgejo -> ``solstice forgejo-runner run`` ->
RabbitMQ -> a dispatcher -> ``solstice job run`` in a TCG guest -> steps, logs and results in the
fake, per step.

One pipeline (module scope) serves the scenarios, which run one after another:

* a matrix workflow (two tasks, two guests at once): checkout of the task's commit fetched from
  the fake's git server with the task token, a secret and the token masked, per-step results;
* the runner killed mid-job and restarted, then the forge down for two minutes while the job ends:
  the log in the forge is complete, each line once and in order, and the result reported;
* a cancel in the forge while a step runs: cancelled, and the VM gone within 10 s.

The outage leaves the machine idle for a minute or more: the cancel scenario's job is taken just
before the forge goes down and boots meanwhile (its scenario then finds it running).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from helpers.forgejo import RunnerProcess, register, vm_pipeline, wait_done
from helpers.pipeline import (
    Pipeline,
    qemu_of,
    wait_until,
)
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice.config import BrokerConfig
from solstice.forges.forgejo.translate import job_uuid
from tests.fakes.forgejo import FakeForgejo, FakeTask
from tests.fakes.gitrepo import make_repo

pytestmark = pytest.mark.vm

SECRET = "canary-91fe-forgejo-vm-secret"
REPOSITORY = "alice/widgets"
DOWN_FOR = 120.0  # seconds the forge is unreachable in the outage scenario


@dataclass
class Env:
    forge: FakeForgejo
    pipeline: Pipeline
    runner: RunnerProcess
    first: str  # the commit the jobs check out
    second: str  # a later commit: must not be what they get
    #: the cancel scenario's task, taken by the outage scenario before the forge goes down
    long: FakeTask | None = None


@pytest.fixture(scope="module")
def env(
    module_broker_cfg: BrokerConfig, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    for pipeline, forge in vm_pipeline(module_broker_cfg, database_url):
        repo = tmp_path_factory.mktemp("repo") / "widgets"
        first, second = make_repo(repo, "hello from the first commit\n", "hello from the second commit\n")
        forge.add_repository(REPOSITORY, repo)
        register(pipeline, forge, name="vm-runner")
        pipeline.dispatcher(capacity=2)
        runner = RunnerProcess(pipeline).start()
        yield Env(forge, pipeline, runner, first, second)
        runner.kill()


def enqueue(env: Env, workflow: str, **kwargs: object) -> list[FakeTask]:
    jobs = env.forge.enqueue(workflow, repository=REPOSITORY, sha=env.first, **kwargs)  # type: ignore[arg-type]

    def tasks() -> list[FakeTask] | None:
        with env.forge.lock:
            found = [env.forge.task_of(j) for j in jobs]
        return [t for t in found if t is not None] if all(found) else None

    return wait_until("the runner to take the tasks", tasks, 60, 0.2)


def bodies(forge: FakeForgejo) -> str:
    with forge.lock:
        return json.dumps([body for _, _, body in forge.requests])


MATRIX = """
name: ci
on: push
jobs:
  test:
    runs-on: debian-12
    strategy:
      matrix:
        flavour: [alpha, beta]
    outputs:
      built: ${{ steps.build.outputs.built }}
    steps:
      - uses: actions/checkout@v4
      - name: Build
        id: build
        run: |
          echo "built=${{ matrix.flavour }}-$(cat hello.txt | wc -w)" >> "$GITHUB_OUTPUT"
          echo "building ${{ matrix.flavour }} on $(uname -s)"
          cat hello.txt
          test -f .git/HEAD && echo "git metadata present"
          echo "secret is ${{ secrets.API_KEY }}"
          echo "token is ${{ github.token }}"
      - name: Fail on beta
        if: matrix.flavour == 'beta'
        run: |
          echo "failing on purpose"
          exit 3
"""


def test_matrix_workflow_runs_in_guests_and_is_reported_per_step(env: Env) -> None:
    tasks = enqueue(env, MATRIX, secrets={"API_KEY": SECRET})
    assert len(tasks) == 2  # one task per matrix combination
    done = {t.job.name: wait_done(env.forge, t.id, 600, env.runner) for t in tasks}
    assert set(done) == {"test (alpha)", "test (beta)"}
    alpha, beta = done["test (alpha)"], done["test (beta)"]

    assert alpha.status == "success", alpha.lines()
    assert [s.status for s in alpha.steps] == ["success", "success", "skipped"]
    checkout = alpha.step_lines(0)
    assert any(
        f"Fetching http://127.0.0.1:{env.forge.port}/{REPOSITORY}.git {env.first[:12]}" in x
        for x in checkout
    ), checkout
    build = alpha.step_lines(1)
    assert "building alpha on Linux" in build, build
    assert "hello from the first commit" in build and "hello from the second commit" not in build
    assert "git metadata present" in build
    assert "secret is ***" in build and "token is ***" in build
    assert alpha.step_lines(2) == []
    assert alpha.lines()[-1] == "Job succeeded"
    assert alpha.outputs == {"built": "alpha-5"}  # job outputs reach the forge (needs.<job>.outputs)

    assert beta.status == "failure", beta.lines()
    assert [s.status for s in beta.steps] == ["success", "success", "failure"]
    failing = beta.step_lines(2)
    assert "failing on purpose" in failing and any("exit" in x and "3" in x for x in failing), failing
    assert len(failing) == len(set(failing)), failing  # the failure's reason is written once
    assert "building beta on Linux" in beta.step_lines(1)
    assert beta.outputs == {"built": "beta-5"}  # evaluated after a failure too

    # step logs are contiguous and in step order, with their times (what the UI draws)
    for task in (alpha, beta):
        ends = 0
        for s in task.steps:
            if s.log_length:
                assert s.log_index >= ends
                ends = s.log_index + s.log_length
            # a step that ran has a start time; a skipped one has none
            assert (s.started_at is None) == (s.status == "skipped"), s
        assert task.stopped_at is not None
    # secrets never reach the forge unmasked; the fetch used each task's own token
    sent = bodies(env.forge)
    assert SECRET not in sent and alpha.token not in sent and beta.token not in sent
    fetches = [r for r in env.forge.git_requests if r.status == 200]
    assert {r.task_id for r in fetches} == {alpha.id, beta.id}
    for t in (alpha, beta):
        wait_until("the VMs to be gone", lambda t=t: not qemu_of(job_uuid(env.forge.url, t.id)), 30)


CANCEL = """
name: long
on: push
jobs:
  long:
    runs-on: debian-12
    steps:
      - name: Sleep
        run: |
          echo long-step-started
          sleep 600
"""


COUNT = 45
OUTAGE = f"""
name: steady
on: push
jobs:
  steady:
    runs-on: debian-12
    steps:
      - name: Count
        run: |
          for i in $(seq 1 {COUNT}); do echo "line $i"; sleep 1; done
      - run: echo "after the count"
"""


def test_runner_restart_and_a_two_minute_forge_outage_lose_no_log_line(env: Env) -> None:
    (task,) = enqueue(env, OUTAGE)
    job_id = job_uuid(env.forge.url, task.id)

    def counted() -> list[int]:
        return [int(x.split()[1]) for x in task.lines() if re.fullmatch(r"line \d+", x)]

    wait_until("the count to start", lambda: len(counted()) >= 3, 600, 0.2)
    env.runner.kill()  # SIGKILL mid-step: no chance to save anything more
    time.sleep(3)
    env.runner.start()
    wait_until("the count to go on after the restart", lambda: len(counted()) >= 12, 120, 0.2)
    # The next scenario's job, taken now: its guest boots while the forge is down.
    (env.long,) = enqueue(env, CANCEL)
    assert qemu_of(job_id) and len(counted()) < COUNT, "the job ended before the forge went down"
    env.forge.down()
    down_at = time.monotonic()
    wait_until("the job to end while the forge is down", lambda: not qemu_of(job_id), DOWN_FOR, 0.5)
    time.sleep(max(0.0, DOWN_FOR - (time.monotonic() - down_at)))
    assert env.runner.proc is not None and env.runner.proc.poll() is None, env.runner.output()
    env.forge.up()
    done = wait_done(env.forge, task.id, 120, env.runner)
    lines = counted()
    assert lines == list(range(1, COUNT + 1)), lines
    assert done.status == "success", done.lines()
    assert [s.status for s in done.steps] == ["success", "success"]
    assert "after the count" in done.step_lines(1)
    assert done.lines().count("Job succeeded") == 1
    out = env.runner.output()
    assert "cannot be reached" in out and "answers again" in out


def test_cancel_in_the_forge_mid_step_stops_the_vm_within_10s(env: Env) -> None:
    if env.long is not None:  # taken by the outage scenario, booted during the outage
        task, env.long = env.long, None
    else:  # this scenario alone (-k)
        (task,) = enqueue(env, CANCEL)
    job_id = job_uuid(env.forge.url, task.id)
    wait_until("the step to run", lambda: "long-step-started" in task.lines(), 600, 0.2)
    assert qemu_of(job_id)
    started = time.monotonic()
    env.forge.cancel(task.id)
    wait_until("the VM to be gone", lambda: not qemu_of(job_id), 15, 0.1)
    gone_after = time.monotonic() - started
    assert gone_after < 10, gone_after
    done = wait_done(env.forge, task.id, 60, env.runner)
    assert done.status == "cancelled"
    assert done.lines()[-1] == "Job cancelled"
    assert not (env.pipeline.runtime_dir / "jobs" / job_id).exists()
