"""Debug SSH with real guests: the fake Forgejo (serving the user's public key) -> ``solstice
forgejo-runner`` -> RabbitMQ -> a dispatcher (process spawner, capacity 1) -> ``solstice job run``
in TCG guests. Four boots, one at a time, in two scenarios:

* two failing opt-in jobs of alice/widgets are enqueued together. The first to run (X) is kept:
  the forge shows it failed and has the log line (``ssh -p PORT solstice@127.0.0.2`` and the
  expiry) while the VM still runs; the user's key gets a shell that sees the job's workspace,
  another key is refused, the port is on the configured address only; ``solstice debug list``
  shows it. The other (Y) runs meanwhile (the kept VM does not count against capacity 1), is
  refused with the reason in its log, and its VM goes at once. Then X's job process and the
  dispatcher get SIGKILL: X's VM is gone within seconds (the process spawner's supervisor, like a
  unit's cgroup, kills QEMU with the job process), long before its TTL, its port and registry
  entry with it.
* with a TTL of 25 s, a failing opt-in job (Z) and a failing job without the switch (W, another
  repository): Z's VM goes at its expiry, not before; W's VM is never kept.
"""

from __future__ import annotations

import calendar
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import paramiko
import pytest
from helpers.forgejo import RunnerProcess, cli, register, vm_pipeline, wait_done
from helpers.pipeline import DispatcherProcess, Pipeline, qemu_of, wait_until
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice.config import BrokerConfig
from solstice.forges.forgejo.translate import job_uuid
from solstice.model import debugssh
from solstice.vm.keys import KeyPair, generate_keypair
from tests.fakes.forgejo import FakeForgejo, FakeTask

pytestmark = pytest.mark.vm

TTL = 900  # seconds: covers the second job's boot (TCG, a loaded machine) while the first VM is kept;
# nothing waits for it (the first VM is killed, the second scenario sets a short TTL)
SHORT_TTL = 25
ADDRESS = "127.0.0.2"  # the operator's debug address: not the loopback address jobs use
PORTS = (22640, 22659)

FAILING = """
name: ci
on: push
jobs:
  build:
    runs-on: debian-12
{env}    steps:
      - name: Fail
        run: |
          echo "evidence of run ${{{{ github.run_id }}}}" > marker.txt
          echo "failing on purpose"
          exit 1
"""


@dataclass
class Env:
    forge: FakeForgejo
    pipeline: Pipeline
    runner: RunnerProcess
    dispatcher: DispatcherProcess
    user: KeyPair  # mona's key pair; the fake publishes its public half


@pytest.fixture(scope="module")
def env(module_broker_cfg: BrokerConfig, database_url: str) -> Iterator[Env]:
    debug = (
        f'[debug]\nenabled = true\nttl = {TTL}\naddress = "{ADDRESS}"\nport_min = {PORTS[0]}\n'
        f'port_max = {PORTS[1]}\nmax_vms = 2\nallow = ["alice/*", "carol/gadgets"]\n'
    )
    for pipeline, forge in vm_pipeline(module_broker_cfg, database_url, extra=debug):
        user = generate_keypair("mona@laptop")
        forge.user_keys["mona"] = [user.public_line]
        register(pipeline, forge, name="debug-runner")
        dispatcher = pipeline.dispatcher(capacity=1)
        runner = RunnerProcess(pipeline).start()
        yield Env(forge, pipeline, runner, dispatcher, user)
        runner.kill()


def enqueue(env: Env, *, repository: str = "alice/widgets", switch: str = "on-failure") -> str:
    block = f"    env:\n      SOLSTICE_DEBUG_SSH: {switch}\n" if switch else ""
    (job,) = env.forge.enqueue(FAILING.format(env=block), repository=repository, actor="mona")
    task_id = wait_until("the runner to take the task", lambda: job.task_id, 120, 0.2)
    return job_uuid(env.forge.url, task_id)


def task_of(env: Env, job_id: str) -> int:
    with env.forge.lock:
        return next(t.id for t in env.forge.tasks.values() if job_uuid(env.forge.url, t.id) == job_id)


def finished(env: Env, job_id: str) -> FakeTask:
    task = wait_done(env.forge, task_of(env, job_id), 600, env.runner)
    assert task.status == "failure", task.lines()
    return task


def connect_line(task: FakeTask) -> tuple[int, float]:
    """The port and the expiry (epoch) the job's log announces."""
    log = "\n".join(task.lines())
    port = re.search(rf"Debug SSH: connect with: ssh -p (\d+) solstice@{re.escape(ADDRESS)}$", log, re.M)
    until = re.search(r"kept until (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC \(.+, not renewable\)", log)
    assert port and until, log
    expiry = calendar.timegm(time.strptime(until.group(1), "%Y-%m-%d %H:%M:%S"))
    return int(port.group(1)), float(expiry)


def ssh(port: int, key: KeyPair, command: str) -> str:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # a fresh VM: no known host key
    try:
        client.connect(
            ADDRESS,
            port,
            username="solstice",
            pkey=key.pkey,
            timeout=20,
            look_for_keys=False,
            allow_agent=False,
        )
        _, out, _ = client.exec_command(command, timeout=30)
        return out.read().decode()
    finally:
        client.close()


def listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) == 0


def test_a_failed_opt_in_job_is_kept_for_its_user_reported_at_once_and_dies_with_its_job(env: Env) -> None:
    # Two failing opt-in jobs of one repository, enqueued together; capacity 1 runs one, and the
    # other only starts because a kept VM does not count against capacity.
    first, second = enqueue(env), enqueue(env)

    def kept_one() -> str | None:
        with env.forge.lock:
            done = [j for j in (first, second) if env.forge.tasks[task_of(env, j)].status == "failure"]
        return done[0] if done else None

    x = wait_until("one of the jobs to fail", kept_one, 600, 0.5)
    y = second if x == first else first
    task = finished(env, x)
    assert qemu_of(x), "the forge has the failure while the VM is still kept"
    port, expiry = connect_line(task)
    assert PORTS[0] <= port <= PORTS[1] and time.time() < expiry
    log = "\n".join(task.lines())
    assert "for the 1 public SSH key(s) of mona on the forge" in log and "sudo poweroff" in log
    assert "PRIVATE KEY" not in log

    # the user's key gets a shell in the failed VM, with the failed step's workspace
    seen = ssh(port, env.user, "cat ~/work/widgets/widgets/marker.txt; sudo -n true && echo sudo-ok")
    assert "evidence of run" in seen and "sudo-ok" in seen, seen
    with pytest.raises(paramiko.AuthenticationException):
        ssh(port, generate_keypair("mallory"), "true")
    assert not listening("127.0.0.1", port)  # exposed on the configured address only

    listed = cli(env.pipeline, "debug", "list")
    assert listed.returncode == 0 and x in listed.stdout, listed.stdout + listed.stderr
    assert f"ssh -p {port} solstice@{ADDRESS}" in listed.stdout

    # the second job fails while the first VM is kept: refused, with the reason in its log
    refused = "\n".join(finished(env, y).lines())
    assert time.time() < expiry, "the second job failed too late to test the refusal: raise TTL"
    assert f"Debug SSH: not kept: a debug VM of alice/widgets is already kept (job {x}, until" in refused, (
        refused
    )
    assert "connect with" not in refused
    wait_until("the refused job's VM to go", lambda: not qemu_of(y), 30, 0.5)
    assert qemu_of(x)

    # every Solstice process of the kept VM dies: the VM goes with its job process
    (hold,) = debugssh.holds(env.pipeline.cfg.paths.runtime_dir)
    assert hold.job_id == x
    os.kill(hold.pid, signal.SIGKILL)
    env.dispatcher.kill()
    killed = time.time()
    wait_until("the kept VM to go with its job process", lambda: not qemu_of(x), 30, 0.5)
    # QEMU's threads may still hold its sockets for a moment after its /proc cmdline is gone.
    wait_until("the kept VM's port to close", lambda: not listening(ADDRESS, port), 10, 0.2)
    assert time.time() - killed < 30 and time.time() < expiry
    assert debugssh.holds(env.pipeline.cfg.paths.runtime_dir) == []


def test_a_kept_vm_goes_at_its_ttl_and_a_job_without_the_switch_is_never_kept(env: Env) -> None:
    config = env.pipeline.config_file
    config.write_text(config.read_text().replace(f"ttl = {TTL}\n", f"ttl = {SHORT_TTL}\n"))
    env.dispatcher = env.pipeline.dispatcher(capacity=1)  # the first one was killed
    z, w = enqueue(env), enqueue(env, repository="carol/gadgets", switch="")
    task = finished(env, z)
    port, expiry = connect_line(task)
    assert f"({SHORT_TTL} s, not renewable)" in "\n".join(task.lines())
    assert qemu_of(z) or time.time() > expiry, "the kept VM went before its TTL"
    wait_until("the kept VM to go at its TTL", lambda: not qemu_of(z), expiry - time.time() + 30, 0.5)
    assert time.time() >= expiry - 1, "the VM went before its TTL"
    wait_until("the kept VM's port to close", lambda: not listening(ADDRESS, port), 10, 0.2)

    plain = "\n".join(finished(env, w).lines())
    assert "failing on purpose" in plain and "Debug SSH" not in plain, plain
    wait_until("the job's VM without the switch to go", lambda: not qemu_of(w), 30, 0.5)
    assert debugssh.holds(env.pipeline.cfg.paths.runtime_dir) == []
