"""Through the pipeline: the dispatcher plans a job's VM from the label's image (a Forgejo task,
which asks for no size), and a dispatcher started with ``--config FILE`` runs job processes that
read that file (and keep the dispatcher's SOLSTICE_* overrides) with the process spawner."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from helpers.forgejo import RunnerProcess, forgejo_config, register, wait_done
from helpers.pipeline import (
    LABEL,
    ROOT,
    Pipeline,
    Poller,
    kill_processes_with_env,
    load_config,
    make_pipeline,
    make_request,
    wait_state,
    wait_until,
)
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice.config import BrokerConfig, DatabaseConfig
from solstice.forges.forgejo.translate import job_uuid
from solstice.model import EventKind, Result
from solstice.queue.sequencer import SYNTHETIC_SEQ
from solstice.secrets import write_new_key
from solstice.store import Store
from tests.fakes.forgejo import FakeForgejo
from tests.testimage import IMAGES

IMAGE_DIR = IMAGES / "debian-12"  # the stand-in job boots nothing; the files are the test image's
BIG_IMAGE = (
    f"[images.{LABEL}]\n"
    f'path = "{IMAGE_DIR}/base.qcow2"\nboot = "kernel"\n'
    f'kernel = "{IMAGE_DIR}/vmlinuz"\ninitrd = "{IMAGE_DIR}/initrd.img"\n'
    'cmdline = "root=/dev/vda rw console=ttyS0"\ncpus = 4\nmemory = "6G"\n'
)
WORKFLOW = (
    "on: push\njobs:\n  build:\n    runs-on: debian-12\n"
    "    env:\n      FAKE: ok\n    steps:\n      - run: echo one\n"
)


@pytest.fixture
def forgejo_pipeline(broker_cfg: BrokerConfig, database_url: str) -> Iterator[Pipeline]:
    made = make_pipeline(broker_cfg, database_url)
    pipeline = next(made)
    key = pipeline.runtime_dir / "secrets.key"
    write_new_key(key)
    with pipeline.config_file.open("a") as fh:
        fh.write(forgejo_config(key) + BIG_IMAGE)
    pipeline.cfg = load_config(pipeline.config_file)
    try:
        yield pipeline
    finally:
        made.close()


def test_a_forgejo_task_gets_the_images_size_at_the_dispatcher(
    forgejo_pipeline: Pipeline, database_url: str
) -> None:
    pipeline = forgejo_pipeline
    with FakeForgejo() as forge:
        register(pipeline, forge)
        dispatcher = pipeline.dispatcher()
        runner = RunnerProcess(pipeline).start()
        forge.enqueue(WORKFLOW)
        task_id = wait_until("a task", lambda: next(iter(forge.tasks), None), 30)
        task = wait_done(forge, task_id, 60, runner)
        assert task.status == "success", task.lines()
        job_id = job_uuid(forge.url, task.id)
        store = Store.connect(DatabaseConfig(url=database_url), application_name="test-plan")
        try:
            rec = wait_state(store, job_id, {"succeeded"}, 20)
        finally:
            store.close()
        # The task asked for no size, and the request says so; the host's plan is the image's.
        assert rec.request["size"] == {"cpus": None, "memory_mib": None, "disk_gib": None}
        assert f"job {job_id}: started solstice-job@{job_id}.service ({LABEL}, 4 CPUs, 6144 MiB)" in (
            dispatcher.output()
        )
        runner.terminate()


def test_a_dispatcher_with_config_runs_jobs_that_read_that_file(
    broker_cfg: BrokerConfig, database_url: str
) -> None:
    # The real job process; an image whose disk does not exist ends the job right after it has
    # read its request (from the file's runtime_dir), so no VM boots.
    made = make_pipeline(
        broker_cfg,
        database_url,
        job_command=f"{sys.executable} -m solstice job run",
        extra=f'[images.{LABEL}]\npath = "plan-test.qcow2"\nboot = "bios"\n',
    )
    pipeline = next(made)
    state_dir = pipeline.runtime_dir / "env-state"  # an environment override, not in the file
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
    env.update({"SOLSTICE_PATHS_STATE_DIR": str(state_dir), "PLAN_TEST_MARKER": marker})
    log = pipeline.runtime_dir / "dispatcher.log"
    with log.open("ab") as out:
        dispatcher = subprocess.Popen(
            [sys.executable, "-m", "solstice", "--config", str(pipeline.config_file), "dispatcher"]
            + ["--host", "host-a"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    poller = Poller(pipeline.cfg)
    try:
        request = make_request()
        poller.publish(request)
        final = poller.wait_final(request.job_id, 60)
        output = log.read_text(errors="replace")
        # The job process itself reported (not the dispatcher's synthetic "exited with status 2"
        # that a job looking for /run/solstice/requests/<uuid>.json gets).
        assert final.seq != SYNTHETIC_SEQ, (final.message, output)
        assert final.result is Result.ERROR
        assert f"{state_dir}/images/plan-test.qcow2 does not exist" in final.message, final.message
        started = [e for e in poller.events[request.job_id] if e.kind is EventKind.JOB_STARTED]
        assert len(started) == 1
        log_file = pipeline.runtime_dir / "processes" / "host-a" / f"{request.job_id}.log"
        assert "cannot read the job request" not in log_file.read_text(errors="replace")
    finally:
        poller.close()
        dispatcher.kill()
        dispatcher.wait(10)
        kill_processes_with_env("PLAN_TEST_MARKER", marker)
        made.close()
