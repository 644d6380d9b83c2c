"""The Prometheus endpoints of a real dispatcher and Forgejo and GitHub runners (docs/metrics.md),
scraped over HTTP and parsed with prometheus_client's text parser after jobs ran through the whole
pipeline (fake forge -> runner -> RabbitMQ -> dispatcher -> stand-in job -> events -> fake forge);
off unless configured; an address that cannot be used stops the service with the key named."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import github
from helpers.forgejo import RunnerProcess, forgejo_config, register, wait_done
from helpers.pipeline import ROOT, Pipeline, make_pipeline, runner_pipeline, wait_until
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice import __version__
from solstice.config import BrokerConfig
from tests.fakes.forgejo import FakeForgejo
from tests.fakes.github import FakeGitHub
from tests.scrape import Samples, free_port, label_values, scrape, value

LABEL = "debian-12"


def workflow(fake: str) -> str:
    return (
        "name: ci\non: push\njobs:\n  build:\n    runs-on: debian-12\n"
        f"    env:\n      FAKE: {fake}\n    steps:\n      - run: echo one\n"
    )


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its sockets' inodes in /proc/net/tcp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture
def pipeline(broker_cfg: BrokerConfig, database_url: str, ports: tuple[int, int]) -> Iterator[Pipeline]:
    extra = f'[metrics]\ndispatcher = "127.0.0.1:{ports[0]}"\nforgejo_runner = "127.0.0.1:{ports[1]}"\n'
    yield from runner_pipeline(broker_cfg, database_url, lambda key: forgejo_config(key, extra=extra))


def test_dispatcher_and_runner_endpoints_count_the_jobs(pipeline: Pipeline, ports: tuple[int, int]) -> None:
    dispatcher_port, runner_port = ports
    with FakeForgejo() as forge:
        register(pipeline, forge)
        pipeline.dispatcher(capacity=3)
        runner = RunnerProcess(pipeline).start()
        # Before any job: every series of the fixed label sets exists, at 0.
        d = scrape(dispatcher_port)
        assert value(d, "solstice_build_info", version=__version__, component="dispatcher") == 1
        assert value(d, "solstice_jobs_total", label=LABEL, result="success") == 0
        assert value(d, "solstice_queue_wait_seconds_count", label=LABEL) == 0
        r = scrape(runner_port)
        assert value(r, "solstice_build_info", version=__version__, component="forgejo-runner") == 1
        assert value(r, "solstice_vm_boot_seconds_count", label=LABEL) == 0

        forge.enqueue(workflow("boot:0.4"))
        forge.enqueue(workflow("fail"))
        forge.enqueue(workflow("ok"))

        def three_tasks() -> list[int] | None:
            with forge.lock:
                return list(forge.tasks) if len(forge.tasks) == 3 else None

        for task_id in wait_until("the runner to take three tasks", three_tasks, 60, 0.2):
            assert wait_done(forge, task_id, 60, runner).status in ("success", "failure")

        d = scrape(dispatcher_port)
        assert value(d, "solstice_jobs_total", label=LABEL, result="success") == 2
        assert value(d, "solstice_jobs_total", label=LABEL, result="failure") == 1
        assert value(d, "solstice_jobs_total", label=LABEL, result="error") == 0
        assert value(d, "solstice_queue_wait_seconds_count", label=LABEL) == 3
        assert 0 < value(d, "solstice_queue_wait_seconds_sum", label=LABEL) < 3 * 30
        assert value(d, "solstice_queue_wait_seconds_bucket", label=LABEL, le="+Inf") == 3
        assert value(d, "solstice_dispatcher_capacity") == 3
        assert (
            value(d, "solstice_dispatcher_database_up") == 1
            and value(d, "solstice_dispatcher_broker_up") == 1
        )
        assert value(d, "solstice_pool_vms", label=LABEL, state="ready") == 0
        labels = label_values(d, "label") | label_values(scrape(runner_port), "label")
        assert labels <= {None, LABEL, "other"}  # image labels only, never a job id

        def runner_counted() -> Samples | None:
            r = scrape(runner_port)  # a task is counted once the forge has all of it
            done = sum(
                value(r, "solstice_runner_tasks_total", label=LABEL, result=x)
                for x in ("success", "failure")
            )
            return r if done == 3 else None

        r = wait_until("the runner to count three tasks", runner_counted, 20, 0.2)
        assert value(r, "solstice_runner_tasks_total", label=LABEL, result="failure") == 1
        assert value(r, "solstice_runner_tasks_running") == 0 and value(r, "solstice_runner_capacity") == 2
        # Only the boot:0.4 job sent VM phases: one boot of about 0.4 s, its take 0.1 s longer.
        assert value(r, "solstice_vm_boot_seconds_count", label=LABEL) == 1
        boot = value(r, "solstice_vm_boot_seconds_sum", label=LABEL)
        take = value(r, "solstice_vm_take_seconds_sum", label=LABEL, source="cold")
        assert 0.4 <= boot < 5 and boot + 0.1 <= take < boot + 5
        assert value(r, "solstice_vm_boot_seconds_bucket", label=LABEL, le="0.25") == 0
        assert value(r, "solstice_vm_boot_seconds_bucket", label=LABEL, le="+Inf") == 1
        assert value(r, "solstice_vm_take_seconds_count", label=LABEL, source="warm") == 0
        assert value(r, "solstice_forge_up") == 1 and value(r, "solstice_forge_backoff_seconds") == 0
        assert value(r, "solstice_forge_errors_total", kind="unavailable") == 0

        # The forge goes away: errors count up, the backoff shows; it comes back: both clear.
        forge.down()

        def backing_off() -> Samples | None:
            r = scrape(runner_port)
            return r if value(r, "solstice_forge_errors_total", kind="unavailable") >= 2 else None

        r = wait_until("the runner to back off", backing_off, 30, 0.2)
        assert value(r, "solstice_forge_up") == 0 and value(r, "solstice_forge_backoff_seconds") > 0
        forge.up()
        wait_until(
            "the runner to reach the forge again",
            lambda: value(scrape(runner_port), "solstice_forge_backoff_seconds") == 0,
            30,
            0.2,
        )
        assert value(scrape(runner_port), "solstice_forge_up") == 1
        runner.terminate()


def test_the_github_runner_serves_the_same_metrics(
    broker_cfg: BrokerConfig, database_url: str, ports: tuple[int, int]
) -> None:
    extra = f'[metrics]\ngithub_runner = "127.0.0.1:{ports[1]}"\n'
    made = runner_pipeline(broker_cfg, database_url, lambda key: github.github_config(key, extra=extra))
    pipeline = next(made)
    try:
        with FakeGitHub(poll_hold=2.0) as fake:
            github.register(pipeline, fake)
            d = pipeline.dispatcher()
            runner = github.runner(pipeline).start()
            (job,) = fake.enqueue(
                "name: ci\non: push\njobs:\n  build:\n    runs-on: [self-hosted, debian-12]\n"
                "    env:\n      FAKE: boot:0.3\n    steps:\n      - run: echo one\n"
            )
            assert github.wait_completed(fake, job, 60, runner).completed is not None

            def counted() -> Samples | None:
                r = scrape(ports[1])
                return (
                    r
                    if value(r, "solstice_runner_tasks_total", label=LABEL, result="success") == 1
                    else None
                )

            r = wait_until("the GitHub runner to count its job", counted, 20, 0.2)
            assert value(r, "solstice_build_info", version=__version__, component="github-runner") == 1
            assert value(r, "solstice_vm_boot_seconds_count", label=LABEL) == 1
            assert value(r, "solstice_vm_take_seconds_count", label=LABEL, source="cold") == 1
            assert value(r, "solstice_forge_up") == 1
            assert d.proc is not None and listening_ports(d.proc.pid) == set()  # its key is not set
            runner.terminate()
    finally:
        made.close()


def test_no_endpoint_without_configuration(broker_cfg: BrokerConfig, database_url: str) -> None:
    made = make_pipeline(broker_cfg, database_url)
    pipeline = next(made)
    try:
        d = pipeline.dispatcher()
        assert d.proc is not None
        assert listening_ports(d.proc.pid) == set()
    finally:
        made.close()


def test_an_address_in_use_stops_the_dispatcher_naming_the_key(
    broker_cfg: BrokerConfig, database_url: str
) -> None:
    made = make_pipeline(broker_cfg, database_url)
    pipeline = next(made)
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            started = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "solstice", "dispatcher", "--host", "host-a"],
                env={**pipeline.env, "SOLSTICE_METRICS_DISPATCHER": f"127.0.0.1:{port}"},
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=60,
            )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"[metrics] dispatcher = '127.0.0.1:{port}': cannot listen there" in proc.stderr
        assert time.monotonic() - started < 30
    finally:
        made.close()
