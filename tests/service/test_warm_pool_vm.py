"""The warm pool with real guests: the fake Forgejo -> runner -> RabbitMQ -> a dispatcher with
``[pool.debian-12] size = 1`` -> keepers booting TCG guests -> a job that takes one.

One pipeline (module scope) serves the scenarios, which run one after another and build on each
other (each waits for the state it needs):

1. the pool fills: one ready VM whose guest holds nothing of any job;
2. a job takes it (no boot: "Took warm VM" in its log, the guest's host name is the VM's), a secret
   of the job stays masked and never reaches the keeper, the VM is gone after the job, and the
   pool boots a replacement;
3. a ready VM whose QEMU dies is replaced;
4. a dispatcher killed and restarted adopts the ready VM (no second boot), and with a shorter
   max_age recycles it: destroyed unused, a fresh one booting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.forgejo import RunnerProcess, register, vm_pipeline, wait_done
from helpers.pipeline import DispatcherProcess, Pipeline, qemu_of, wait_until
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice.config import BrokerConfig
from solstice.forges.forgejo.translate import job_uuid
from solstice.images import poolstate
from tests.fakes.forgejo import FakeForgejo, FakeTask
from tests.scrape import free_port, scrape, value

pytestmark = pytest.mark.vm

SECRET = "canary-5d1e-warm-pool-secret"
REPOSITORY = "alice/warm"
BOOT = 400.0  # seconds a TCG boot may take here, with the other tests' load

METRICS = free_port()
POOL = f"""
[pool]
memory = "2G"
health_interval = 5
[pool.debian-12]
size = 1
max_age = 3600
[metrics]
dispatcher = "127.0.0.1:{METRICS}"
"""


@dataclass
class Env:
    forge: FakeForgejo
    pipeline: Pipeline
    runner: RunnerProcess
    dispatcher: DispatcherProcess
    seen: dict[str, bytes]  # vm id -> its seed and console before any job took it


@pytest.fixture(scope="module")
def env(module_broker_cfg: BrokerConfig, database_url: str) -> Iterator[Env]:  # noqa: F811
    for pipeline, forge in vm_pipeline(module_broker_cfg, database_url, extra=POOL):
        register(pipeline, forge, name="warm-runner")
        dispatcher = pipeline.dispatcher(capacity=2)
        runner = RunnerProcess(pipeline).start()
        env = Env(forge, pipeline, runner, dispatcher, {})
        yield env
        runner.kill()
        env.dispatcher.kill()
        # SIGKILL every keeper (some run with another configuration file than the pipeline's):
        # their QEMUs die with them (PR_SET_PDEATHSIG).
        for vm in states(env):
            seen_ids.add(vm.vm_id)
            with contextlib.suppress(ProcessLookupError):
                os.kill(vm.keeper_pid, signal.SIGKILL)
        wait_until("the pool's QEMUs to be gone", lambda: not any(qemu_of(v) for v in seen_ids), 30)


seen_ids: set[str] = set()


def states(env: Env) -> list[poolstate.PoolVM]:
    return poolstate.list_states(env.pipeline.runtime_dir)


def ready_vm(env: Env, other_than: set[str] = frozenset(), timeout: float = BOOT) -> poolstate.PoolVM:  # type: ignore[assignment]
    def probe() -> poolstate.PoolVM | None:
        if env.dispatcher.proc is not None and env.dispatcher.proc.poll() is not None:
            raise AssertionError(f"the dispatcher exited:\n{env.dispatcher.output()[-3000:]}")
        for vm in states(env):
            seen_ids.add(vm.vm_id)
            if vm.state is poolstate.VMState.READY and vm.vm_id not in other_than:
                return vm
        return None

    try:
        return wait_until("a ready warm VM", probe, timeout, 0.5)
    except AssertionError:
        raise AssertionError(
            f"no ready warm VM; states {states(env)}\ndispatcher log:\n{env.dispatcher.output()[-3000:]}"
        ) from None


def snapshot(env: Env, vm: poolstate.PoolVM) -> bytes:
    """What the guest got from the host before any job: its seed, and its console so far."""
    vm_dir = poolstate.vm_dir(env.pipeline.runtime_dir, vm.vm_id)
    data = b""
    for path in sorted(vm_dir.iterdir()):
        if path.name.startswith(("seed", "cidata", "console")) or path.suffix in (".iso", ".img"):
            data += path.read_bytes()
    return data


def test_the_pool_fills_with_a_vm_that_holds_nothing_of_a_job(env: Env) -> None:
    vm = ready_vm(env)
    assert vm.label == "debian-12" and vm.job_id == "" and vm.port and vm.qemu_pid
    assert [v.vm_id for v in states(env)] == [vm.vm_id]  # size 1: one, not more
    assert qemu_of(vm.vm_id) == [vm.qemu_pid]  # QEMU's -name is the VM's id, not a job's
    seed = snapshot(env, vm)
    assert vm.vm_id.encode() in seed  # the instance id cloud-init saw is the VM's own
    env.seen[vm.vm_id] = seed
    # The keeper process's command line and environment: no secret, no job.
    keeper = Path(f"/proc/{vm.keeper_pid}")
    held = (keeper / "cmdline").read_bytes() + (keeper / "environ").read_bytes()
    assert SECRET.encode() not in held and b"job run" not in held
    # The dispatcher's metrics show it (a real Prometheus text parser reads them).
    found = wait_until(
        "the pool gauge",
        lambda: (
            (m := scrape(METRICS))
            and value(m, "solstice_pool_vms", label="debian-12", state="ready") == 1
            and m
        ),
        10,
    )
    assert value(found, "solstice_pool_vms", label="debian-12", state="booting") == 0


WORKFLOW = """
name: warm
on: push
jobs:
  warm:
    runs-on: debian-12
    steps:
      - name: Where am I
        run: |
          echo "host is $(hostname)"
          echo "secret is ${{ secrets.API_KEY }}"
          cat /var/lib/cloud/data/instance-id 2>/dev/null | sed 's/^/instance /'
"""


def run_job(env: Env) -> tuple[FakeTask, str]:
    (job,) = env.forge.enqueue(WORKFLOW, repository=REPOSITORY, sha="0" * 40, secrets={"API_KEY": SECRET})

    def task() -> FakeTask | None:
        with env.forge.lock:
            return env.forge.task_of(job)

    t = wait_until("the runner to take the task", task, 60, 0.2)
    return wait_done(env.forge, t.id, 300, env.runner), job_uuid(env.forge.url, t.id)


def test_a_job_takes_the_ready_vm_and_the_pool_boots_another(env: Env) -> None:
    vm = ready_vm(env)
    env.seen.setdefault(vm.vm_id, snapshot(env, vm))
    done, job_id = run_job(env)
    lines = done.lines()
    assert done.status == "success", lines
    assert any(f"Took warm VM {vm.vm_id} of debian-12" in x for x in lines), lines
    assert not any(x.startswith("Booting debian-12") for x in lines), lines  # no boot of its own
    step = done.step_lines(0)
    assert f"host is solstice-{vm.vm_id[:8]}" in step, step
    assert f"instance {vm.vm_id}" in step, step
    assert "secret is ***" in step and SECRET not in "\n".join(lines)
    # Its boot console is in the job's log, folded.
    assert any(x.startswith("::group::Boot console (warm VM") for x in lines) or any(
        "Boot console (warm VM" in x for x in lines
    ), lines
    # Nothing of the job reached the VM before it was taken, nor the keeper since.
    before = env.seen[vm.vm_id]
    assert job_id.encode() not in before and SECRET.encode() not in before
    keeper_log = next(env.pipeline.runtime_dir.glob(f"processes/*/pool-{vm.vm_id}.log")).read_text()
    assert SECRET not in keeper_log and f"taken by job {job_id}" in keeper_log
    # The VM served that job only and is gone with it; the pool has a new one.
    wait_until("the taken VM to be gone", lambda: not qemu_of(vm.vm_id), 30)
    wait_until(
        "its record to be gone", lambda: poolstate.read_state(env.pipeline.runtime_dir, vm.vm_id) is None, 30
    )
    assert not poolstate.vm_dir(env.pipeline.runtime_dir, vm.vm_id).exists()
    fresh = wait_until("a replacement", lambda: [v for v in states(env) if v.vm_id != vm.vm_id] or None, 30)
    assert len(fresh) == 1
    seen_ids.update(v.vm_id for v in fresh)


def test_a_ready_vm_whose_qemu_dies_is_replaced(env: Env) -> None:
    vm = ready_vm(env, other_than=set(env.seen))
    os.kill(vm.qemu_pid or 0, signal.SIGKILL)
    # The keeper's health check (every 5 s) finds it dead and ends; the dispatcher boots another.
    wait_until(
        "the dead VM's record to go",
        lambda: poolstate.read_state(env.pipeline.runtime_dir, vm.vm_id) is None,
        60,
    )
    replacement = wait_until(
        "a replacement", lambda: [v for v in states(env) if v.vm_id != vm.vm_id] or None, 30
    )
    assert len(replacement) == 1
    assert "ended unused; the pool replaces it" in env.dispatcher.output()
    assert value(scrape(METRICS), "solstice_pool_recycled_total", label="debian-12") >= 1
    env.seen[vm.vm_id] = b""


def test_a_restarted_dispatcher_adopts_the_ready_vm_then_recycles_it_at_max_age(env: Env) -> None:
    vm = ready_vm(env, other_than=set(env.seen))
    env.dispatcher.kill()
    time.sleep(2)
    assert poolstate.read_state(env.pipeline.runtime_dir, vm.vm_id) is not None  # the VM outlived it
    short = env.pipeline.runtime_dir / "short-max-age.toml"
    short.write_text(env.pipeline.config_file.read_text().replace("max_age = 3600", "max_age = 30"))
    env.dispatcher = env.pipeline.dispatcher(capacity=2, env={"SOLSTICE_CONFIG": str(short)})
    wait_until(
        "the adoption",
        lambda: f"warm VM {vm.vm_id} (debian-12, ready): adopted" in env.dispatcher.output(),
        30,
    )
    assert [v.vm_id for v in states(env)] == [vm.vm_id]  # adopted, not booted again
    # Ready for more than 30 s now or soon: recycled unused, and a fresh one boots.
    wait_until("the recycling", lambda: poolstate.read_state(env.pipeline.runtime_dir, vm.vm_id) is None, 90)
    assert "recycled" in env.dispatcher.output()
    wait_until("the recycled VM's QEMU to be gone", lambda: not qemu_of(vm.vm_id), 30)
    fresh = wait_until("a fresh one", lambda: [v for v in states(env) if v.vm_id != vm.vm_id] or None, 30)
    assert len(fresh) == 1
    seen_ids.update(v.vm_id for v in fresh)
