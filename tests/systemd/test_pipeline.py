"""The whole service in the nspawn testbed, with real guests: ``solstice submit`` on the host ->
RabbitMQ -> the dispatcher (units/solstice-dispatcher.service, systemd spawner) in the container ->
PostgreSQL -> a transient ``solstice-job@<uuid>.service`` whose ``solstice job run`` boots a TCG
guest and runs the steps -> the job's events back to the host.

The host runs RabbitMQ and PostgreSQL; the container shares its network. The installation has names
of its own (exchanges, queues, the dispatcher's host name: a random token) and a fresh database, all
removed at the end, whatever happens. The host watches every event of the installation through a
tap queue bound with ``#`` to the events exchange (docs/queue.md), as an operator would.

The dispatcher runs with ``--config`` (a drop-in's ExecStart) pointing at a file of its own,
/etc/solstice/pipeline-test.toml, which (unlike the container's default file) has the
``debian-12-big`` image (4 CPUs, 6 GiB): its job units must run ``solstice job run --config <that
file>`` and plan that image's size.

Deadlines: the dispatcher sets ``RuntimeMaxSec = timeout-minutes * 60 + [vm] boot_timeout +
[dispatcher] runtime_margin`` (solstice.dispatch.systemd.runtime_max). To have systemd end a job on
its deadline within seconds, the dispatcher runs with ``SOLSTICE_VM_BOOT_TIMEOUT=5`` (its unit's
drop-in). It passes its SOLSTICE_* overrides on to the job units (``--setenv``), so a drop-in for the
job units sets the boot timeout back for the jobs: the test's one deliberate difference between the
dispatcher's configuration and the jobs'.

Real guests: about 40 s per boot under TCG on an idle build machine; the jobs run one after another.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import pika  # type: ignore[import-untyped,unused-ignore]
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from solstice.config import BrokerConfig, DatabaseConfig
from solstice.model import EventKind, JobEvent, Result, Size
from solstice.queue import SYNTHETIC_SEQ, EventSequencer, Names, declare_topology, decode_events
from solstice.store import JobRecord, Store, StoreError
from tests.testimage import build_test_image
from tests.waiting import wait_until

if TYPE_CHECKING:
    from conftest import Testbed

pytestmark = [pytest.mark.systemd, pytest.mark.vm]

ROOT = Path(__file__).resolve().parents[2]
IMAGES = Path("/var/lib/solstice/images")
AMQP_URL = os.environ.get("SOLSTICE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
ADMIN_URL = os.environ.get("SOLSTICE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")

DISPATCHER = "solstice-dispatcher.service"
DROPIN = "/run/systemd/system/solstice-dispatcher.service.d/pipeline-test.conf"
JOB_DROPIN = "/run/systemd/system/solstice-job@.service.d/pipeline-test.conf"
CONFIG = "/etc/solstice/solstice.toml"
#: The dispatcher's own configuration file (--config): CONFIG plus the big image.
DISPATCHER_CONFIG = "/etc/solstice/pipeline-test.toml"
BIG_LABEL = "debian-12-big"
BIG_IMAGE = f"""
[images.{BIG_LABEL}]
path = "{IMAGES}/debian-12/base.qcow2"
boot = "kernel"
kernel = "{IMAGES}/debian-12/vmlinuz"
initrd = "{IMAGES}/debian-12/initrd.img"
cmdline = "root=/dev/vda rw console=ttyS0"
cpus = 4
memory = "6G"
"""
KEY = "/etc/solstice/secrets.key"
BACKUP = ".pipeline-test-backup"

SECRET = "canary-5d2f-pipeline-secret"
#: The jobs' size (the dispatcher's host's [vm]: submit asks for none) and the dispatcher's knobs.
VM_CPUS = 2
VM_MEMORY_MIB = 1024
MEMORY_OVERHEAD_MIB = 384
TASKS_MAX = 300
RUNTIME_MARGIN = 5
DISPATCHER_BOOT_TIMEOUT = 5
CAPACITY = 2
#: Generous: a TCG boot takes 40 s on an idle machine, much longer while other guests run.
BOOT_WAIT = 300.0

T = TypeVar("T")

HELLO_WORKFLOW = """
name: pipeline
on: push
jobs:
  hello:
    runs-on: debian-12
    timeout-minutes: 10
    steps:
      - name: Sleep a little
        run: |
          echo "before the sleep on $(uname -s), token ${{ secrets.TOKEN }}"
          sleep 8
          echo "after the sleep"
"""

LONG_WORKFLOW = """
name: pipeline
on: push
jobs:
  long:
    runs-on: debian-12
    timeout-minutes: TIMEOUT
    steps:
      - name: Sleep long
        run: |
          echo "long step started"
          sleep 600
          echo "long step ended"
"""


def retrying(action: Callable[[], object], timeout: float = 60) -> None:
    """Run ``action`` until it succeeds (for teardown: other tests restart RabbitMQ and PostgreSQL
    now and then); the last error is raised after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            action()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def timespan(seconds: int) -> str:
    """systemd's rendering of a whole number of seconds below an hour (``10min 10s``)."""
    minutes, rest = divmod(seconds, 60)
    parts = ([f"{minutes}min"] if minutes else []) + ([f"{rest}s"] if rest or not minutes else [])
    return " ".join(parts)


def runtime_max_sec(timeout_minutes: float) -> int:
    return int(timeout_minutes * 60 + DISPATCHER_BOOT_TIMEOUT + RUNTIME_MARGIN)


def answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2
        ):
            return True
    except OSError:
        return False


# --- the host's view: events and records ------------------------------------------------------------


class Tap:
    """Every event published to the installation's events exchange (a durable queue bound with
    ``#``), deduplicated by seq. Reconnects by itself: other tests may restart the broker."""

    def __init__(self, broker: BrokerConfig, queue: str) -> None:
        self.broker = broker
        self.queue = queue
        self.sequencer = EventSequencer()
        self.events: dict[str, list[JobEvent]] = {}
        self._conn: Any = None
        self._channel: Any = None
        self._open()

    def _open(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.broker.url))
        channel = conn.channel()
        declare_topology(channel, self.broker)
        channel.queue_declare(queue=self.queue, durable=True)
        channel.queue_bind(queue=self.queue, exchange=self.broker.events_exchange, routing_key="#")
        self._conn, self._channel = conn, channel

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._conn is not None and self._conn.is_open:
                self._conn.close()
        self._conn = self._channel = None

    def pump(self) -> None:
        try:
            if self._channel is None:
                self._open()
            while True:
                method, _props, body = self._channel.basic_get(self.queue, auto_ack=False)
                if method is None:
                    return
                for event in decode_events(body):
                    if self.sequencer.observe(event).deliver:
                        self.events.setdefault(event.job_id, []).append(event)
                self._channel.basic_ack(method.delivery_tag)
        except (pika.exceptions.AMQPError, OSError):
            self.close()  # the next pump reconnects; unacked messages come again (deduplicated)

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        def pumped() -> T | None:
            self.pump()
            return probe()

        return wait_until(what, pumped, timeout)

    def text_event(self, job_id: str, text: str) -> JobEvent | None:
        return next((e for e in self.events.get(job_id, []) if text in e.text), None)

    def finals(self, job_id: str) -> list[JobEvent]:
        return [e for e in self.events.get(job_id, []) if e.kind is EventKind.JOB_FINISHED]

    def final(self, job_id: str) -> JobEvent | None:
        finals = self.finals(job_id)
        return finals[-1] if finals else None

    def verdict(self, job_id: str) -> JobEvent | None:
        """The dispatcher's synthetic JOB_FINISHED (seq SYNTHETIC_SEQ), which supersedes the job's."""
        return next((e for e in self.finals(job_id) if e.seq == SYNTHETIC_SEQ), None)


@dataclass
class Submission:
    """A `solstice submit` on the host, its output in a file."""

    proc: subprocess.Popen[bytes]
    output: Path

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def job_id(self, timeout: float = 60) -> str:
        def probe() -> str | None:
            match = re.search(r"^submitted \S+: job ([0-9a-f-]{36}) ", self.text(), re.M)
            if match is None and self.proc.poll() is not None:
                raise AssertionError(f"solstice submit exited {self.proc.returncode}:\n{self.text()}")
            return match.group(1) if match else None

        return wait_until("solstice submit to publish its job", probe, timeout)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


@dataclass
class Pipeline:
    testbed: Testbed
    token: str
    broker: BrokerConfig
    database_url: str
    host_config: Path
    workdir: Path
    tap: Tap
    jobs: list[str] = field(default_factory=list)
    submissions: list[Submission] = field(default_factory=list)

    def submit(self, name: str, workflow: str, *, secret: bool = False) -> Submission:
        path = self.workdir / f"{name}.yml"
        path.write_text(workflow)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
        argv = [sys.executable, "-m", "solstice", "--config", str(self.host_config), "submit", str(path)]
        if secret:
            argv += ["--secret", "TOKEN"]
            env["TOKEN"] = SECRET
        output = self.workdir / f"{name}.out"
        with output.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env
            )
        submission = Submission(proc, output)
        self.submissions.append(submission)
        return submission

    def started(self, submission: Submission) -> tuple[str, str]:
        """The job's uuid and unit, once the dispatcher has started the unit."""
        job_id = submission.job_id()
        self.jobs.append(job_id)
        unit = f"solstice-job@{job_id}.service"
        wait_until(
            f"{unit} to be started",
            lambda: self.testbed.show(unit, "ActiveState")["ActiveState"] in ("activating", "active"),
            60,
        )
        return job_id, unit

    def record(self, job_id: str) -> JobRecord | None:
        try:
            with Store.connect(DatabaseConfig(url=self.database_url), application_name="test-pipeline") as s:
                return s.get(job_id)
        except StoreError:  # another test may be restarting PostgreSQL
            return None

    def wait_record(self, job_id: str, state: str, timeout: float = 60) -> JobRecord:
        def probe() -> JobRecord | None:
            rec = self.record(job_id)
            return rec if rec is not None and rec.state.value == state else None

        return wait_until(f"job {job_id} to be {state} in the database", probe, timeout)

    def vm_processes(self, job_id: str) -> list[str]:
        return [p for p in self.testbed.processes(f"solstice-{job_id}") if "qemu-system" in p]

    def unit_loaded(self, unit: str) -> bool:
        return self.testbed.show(unit, "LoadState")["LoadState"] == "loaded"

    def explain(self, job_id: str | None = None) -> str:
        """The dispatcher's journal (and the job's), for assertion messages."""
        text = "\n--- dispatcher:\n" + "\n".join(self.testbed.journal(DISPATCHER).splitlines()[-30:])
        if job_id:
            unit = f"solstice-job@{job_id}.service"
            text += f"\n--- {unit}:\n" + "\n".join(self.testbed.journal(unit).splitlines()[-30:])
        return text


# --- setting it up and tearing it down ---------------------------------------------------------------


def config_text(token: str, broker: BrokerConfig, database_url: str, key_file: str | None) -> str:
    lines = [
        "[vm]",
        'accel = "tcg"',  # KVM hangs on the build machines (TESTBED.md)
        f"cpus = {VM_CPUS}",
        f'memory = "{VM_MEMORY_MIB}M"',
        "boot_timeout = 400",
        "shutdown_timeout = 3",  # under TCG the guest ignores system_powerdown anyway
        "[broker]",
        *(f'{key} = "{getattr(broker, key)}"' for key in broker.__dataclass_fields__),
        "[database]",
        f'url = "{database_url}"',
        "[dispatcher]",
        f'host = "{token}"',
        f'labels = ["debian-12", "{BIG_LABEL}"]',
        'spawner = "systemd"',
        f"capacity = {CAPACITY}",
        f'memory_overhead = "{MEMORY_OVERHEAD_MIB}M"',
        f"tasks_max = {TASKS_MAX}",
        f"runtime_margin = {RUNTIME_MARGIN}",
        "poll_interval = 0.5",
    ]
    if key_file:
        lines += ["[secrets]", f'key_file = "{key_file}"']
    return "\n".join(lines) + "\n"


def delete_broker_objects(broker: BrokerConfig, token: str) -> None:
    names = Names(broker)
    queues = {broker.dead_letter_queue, names.control_queue(token)}
    queues |= {names.job_queue("debian-12"), names.job_queue(BIG_LABEL)}
    exchanges = {broker.jobs_exchange, broker.events_exchange, broker.control_exchange}
    exchanges.add(broker.dead_letter_exchange)
    for what, found in (("list_queues", queues), ("list_exchanges", exchanges)):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = subprocess.run(
                ["rabbitmqctl", "-q", what, "name"], capture_output=True, text=True, timeout=60
            )
            found.update(n.strip() for n in proc.stdout.splitlines() if n.strip().startswith(token))
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        channel = conn.channel()
        for queue in sorted(queues):
            channel.queue_delete(queue=queue)
        for exchange in sorted(exchanges):
            channel.exchange_delete(exchange=exchange)
    finally:
        if conn.is_open:
            conn.close()


def replace_in_container(testbed: Testbed, path: str, text: str, owner: str, mode: str) -> None:
    """Write ``path`` in the container, keeping what was there for :func:`restore_in_container`."""
    testbed.run(
        "sh",
        "-ec",
        'if [ -e "$1" ] && [ ! -e "$1$2" ]; then cp -p "$1" "$1$2"; fi\n'
        '(umask 077; cat >"$1.new"); chown "$3" "$1.new"; chmod "$4" "$1.new"; mv "$1.new" "$1"',
        "sh",
        path,
        BACKUP,
        owner,
        mode,
        input=text,
    )


def restore_in_container(testbed: Testbed, path: str) -> None:
    testbed.run(
        "sh", "-c", 'if [ -e "$1$2" ]; then mv -f "$1$2" "$1"; else rm -f "$1"; fi', "sh", path, BACKUP
    )


@pytest.fixture(scope="module")
def pipeline(installed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """The installation: a fresh database, broker names of its own, a secrets key made with
    `solstice secrets init` (the host's file; the container's /etc/solstice/secrets.key, which the job
    units load as a credential), /etc/solstice/solstice.toml in the container, and the dispatcher
    running as units/solstice-dispatcher.service. Everything is undone at the end."""
    if not answers(AMQP_URL, 5672):
        pytest.fail(f"no RabbitMQ answers at {AMQP_URL} (start it: scripts/services)")
    if not answers(ADMIN_URL, 5432):
        pytest.fail(f"no PostgreSQL answers at {ADMIN_URL} (start it: scripts/services)")
    build_test_image(IMAGES)

    testbed = installed
    token = f"solstice-pipeline-{secrets.token_hex(4)}"
    workdir = tmp_path_factory.mktemp("pipeline")
    broker = BrokerConfig.named(token, url=AMQP_URL, queue_type="quorum")
    database = token.replace("-", "_")
    database_url = make_conninfo(ADMIN_URL, dbname=database)

    with contextlib.ExitStack() as cleanup:
        # The database.
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))

        def drop_database() -> None:
            with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=30) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
                )

        cleanup.callback(retrying, drop_database)
        with Store.connect(DatabaseConfig(url=database_url)) as store:
            store.migrate()

        # The secrets key, made the documented way, the same on the host (submit seals) and in the
        # container (the job units open).
        key_file = workdir / "secrets.key"
        proc = subprocess.run(
            [sys.executable, "-m", "solstice", "secrets", "init", "--key-file", str(key_file)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        cleanup.callback(restore_in_container, testbed, KEY)
        replace_in_container(testbed, KEY, key_file.read_text(), "root:root", "0600")

        host_config = workdir / "solstice.toml"
        # submit resolves the label here too (so a bad one fails before anything is published)
        host_config.write_text(config_text(token, broker, database_url, str(key_file)) + BIG_IMAGE)
        cleanup.callback(restore_in_container, testbed, CONFIG)
        replace_in_container(
            testbed, CONFIG, config_text(token, broker, database_url, None), "root:solstice", "0640"
        )
        cleanup.callback(restore_in_container, testbed, DISPATCHER_CONFIG)
        replace_in_container(
            testbed,
            DISPATCHER_CONFIG,
            config_text(token, broker, database_url, None) + BIG_IMAGE,
            "root:solstice",
            "0640",
        )

        cleanup.callback(retrying, lambda: delete_broker_objects(broker, token))
        tap = Tap(broker, f"{token}.tap")
        cleanup.callback(tap.close)

        pipe = Pipeline(testbed, token, broker, database_url, host_config, workdir, tap)

        def stop_jobs() -> None:
            for submission in pipe.submissions:
                if submission.proc.poll() is None:
                    submission.proc.kill()
                    submission.proc.wait(timeout=10)
            for job_id in pipe.jobs:
                unit = f"solstice-job@{job_id}.service"
                testbed.run("systemctl", "stop", unit, check=False, timeout=60)
                testbed.run("systemctl", "reset-failed", unit, check=False)

        cleanup.callback(stop_jobs)

        def stop_dispatcher() -> None:
            testbed.run("systemctl", "stop", DISPATCHER, check=False, timeout=60)
            testbed.run("systemctl", "reset-failed", DISPATCHER, check=False)
            for dropin in (DROPIN, JOB_DROPIN):
                testbed.run("rm", "-f", dropin)
                testbed.run("rmdir", "--ignore-fail-on-non-empty", str(Path(dropin).parent), check=False)
            testbed.run("systemctl", "daemon-reload")

        cleanup.callback(stop_dispatcher)
        testbed.write(
            DROPIN,
            "[Service]\n"
            "Restart=no\n"
            "ExecStart=\n"
            f"ExecStart=/usr/bin/solstice --config {DISPATCHER_CONFIG} dispatcher\n"
            "# The dispatcher's RuntimeMaxSec = timeout-minutes * 60 + this + runtime_margin.\n"
            f"Environment=SOLSTICE_VM_BOOT_TIMEOUT={DISPATCHER_BOOT_TIMEOUT}\n",
        )
        # ... which the job units get too (--setenv); a drop-in (applied after the transient
        # unit's own settings) gives the jobs their real boot timeout back.
        testbed.write(JOB_DROPIN, "[Service]\nEnvironment=SOLSTICE_VM_BOOT_TIMEOUT=400\n")
        testbed.run("systemctl", "daemon-reload")
        # Type=notify: returns once the dispatcher consumes (READY=1).
        start = testbed.run("systemctl", "start", DISPATCHER, check=False, timeout=90)
        assert start.returncode == 0, start.stderr + pipe.explain()
        yield pipe


# --- the scenarios ------------------------------------------------------------------------------------


def test_a_submitted_job_runs_as_its_unit_with_its_limits(pipeline: Pipeline) -> None:
    """submit -> solstice-job@<uuid>.service, active while the step runs, with the job's limits ->
    the step's output in the unit's journal -> success on the host and in the database."""
    testbed = pipeline.testbed
    submission = pipeline.submit("hello", HELLO_WORKFLOW, secret=True)
    job_id, unit = pipeline.started(submission)
    tap = pipeline.tap

    before = tap.wait(
        "the step to start sleeping",
        lambda: tap.text_event(job_id, "before the sleep"),
        BOOT_WAIT,
    )
    assert before.text == "before the sleep on Linux, token ***", before
    looked_at = time.time()
    status = testbed.run("systemctl", "status", "--no-pager", "--full", "--lines=0", unit).stdout
    limits = testbed.show(unit, "MemoryMax", "CPUQuotaPerSecUSec", "TasksMax", "RuntimeMaxUSec")
    assert f"{unit} - Solstice CI job {job_id}" in status, status
    assert "Active: active (running)" in status, status
    assert "Until:" in status, status  # its RuntimeMaxSec deadline
    # /usr/bin/solstice execs python; the dispatcher's --config comes along.
    assert f"-m solstice job run --config {DISPATCHER_CONFIG} {job_id}" in status, status
    assert f'Status: "job {job_id}: step 1 Sleep a little"' in status, status
    assert "qemu-system-x86_64" in status, status  # the guest is a process of the job's unit
    # As the dispatcher documents them: MemoryMax = the VM's memory + memory_overhead, CPUQuota =
    # its vCPUs * 100 %, TasksMax = tasks_max, RuntimeMaxSec = timeout-minutes * 60 + boot_timeout
    # + runtime_margin.
    assert limits == {
        "MemoryMax": str((VM_MEMORY_MIB + MEMORY_OVERHEAD_MIB) * 1024 * 1024),
        "CPUQuotaPerSecUSec": f"{VM_CPUS}s",
        "TasksMax": str(TASKS_MAX),
        "RuntimeMaxUSec": timespan(runtime_max_sec(10)),
    }, limits

    final = tap.wait("the job's final event", lambda: tap.final(job_id), 120)
    assert final.result is Result.SUCCESS, final
    after = tap.text_event(job_id, "after the sleep")
    assert after is not None and after.time > looked_at  # the unit was looked at mid-step
    assert tap.verdict(job_id) is None  # the job reported its own end: no synthetic event

    assert submission.wait(60) == 0, submission.text()
    out = submission.text()
    assert "before the sleep on Linux, token ***" in out and "■ success" in out, out
    assert SECRET not in out

    def finished_journal() -> str | None:
        journal = testbed.journal(unit)
        return journal if "■ success" in journal else None

    journal = wait_until("the step's output in the unit's journal", finished_journal, 20)
    assert "before the sleep on Linux, token ***" in journal, journal
    assert "after the sleep" in journal, journal
    assert SECRET not in journal

    record = pipeline.wait_record(job_id, "succeeded")
    assert record.job_request().size == Size()  # submit asks for no size; the host's [vm] decides
    assert (record.host, record.unit) == (pipeline.token, unit)
    shown = testbed.run("solstice", "status", job_id).stdout  # reads /etc/solstice/solstice.toml
    assert re.search(r"^state:\s+succeeded$", shown, re.M), shown
    assert re.search(r"^result:\s+success$", shown, re.M), shown
    assert f"journalctl -u {unit}" in shown, shown
    # Exit 0: systemd unloads the unit at once.
    wait_until(f"{unit} to be unloaded", lambda: not pipeline.unit_loaded(unit), 20)


BIG_WORKFLOW = f"""
name: pipeline
on: push
jobs:
  big:
    runs-on: {BIG_LABEL}
    timeout-minutes: 10
    steps:
      - run: echo never reached
"""


def test_an_images_size_sets_the_units_limits_and_the_vm(pipeline: Pipeline) -> None:
    """One machine plan: the image's 4 CPUs / 6 GiB are the unit's limits (the dispatcher) and
    QEMU's -smp/-m (the job, which read the dispatcher's --config file: only it has the image)."""
    testbed = pipeline.testbed
    submission = pipeline.submit("big", BIG_WORKFLOW)
    job_id, unit = pipeline.started(submission)
    limits = testbed.show(unit, "MemoryMax", "CPUQuotaPerSecUSec", "ExecStart")
    assert limits["MemoryMax"] == str((6144 + MEMORY_OVERHEAD_MIB) * 1024 * 1024), limits
    assert limits["CPUQuotaPerSecUSec"] == "4s", limits
    assert f"job run --config {DISPATCHER_CONFIG} {job_id} " in limits["ExecStart"] + " ", limits
    booting = f"Booting {BIG_LABEL} (tcg, 4 CPUs, 6144 MiB)"
    wait_until(booting, lambda: booting in testbed.journal(unit), 60)
    qemu = wait_until("QEMU", lambda: pipeline.vm_processes(job_id), 60)
    assert " -smp 4 " in f" {qemu[0]} " and " -m 6144M " in f" {qemu[0]} ", qemu
    # No need to wait for the boot: cancel it (Ctrl-C of submit cancels its jobs).
    submission.proc.send_signal(signal.SIGINT)
    assert submission.wait(120) == 130, submission.text()
    wait_until("the VM to be gone", lambda: not pipeline.vm_processes(job_id), 30)
    pipeline.wait_record(job_id, "cancelled")


def test_systemctl_kill_mid_step_ends_the_job_as_error(pipeline: Pipeline) -> None:
    """`systemctl kill` during a step: the job process reports `cancelled` itself, the dispatcher's
    synthetic JOB_FINISHED supersedes it with `error` and systemd's reason, the VM is gone."""
    testbed, tap = pipeline.testbed, pipeline.tap
    submission = pipeline.submit("killed", LONG_WORKFLOW.replace("TIMEOUT", "10"))
    job_id, unit = pipeline.started(submission)
    tap.wait("the long step to run", lambda: tap.text_event(job_id, "long step started"), BOOT_WAIT)
    assert pipeline.vm_processes(job_id), testbed.processes("qemu")
    assert testbed.show(unit, "ActiveState")["ActiveState"] == "active"

    killed = time.monotonic()
    testbed.run("systemctl", "kill", unit)
    verdict = tap.wait("the dispatcher's verdict", lambda: tap.verdict(job_id), 60)
    wait_until("the VM to be gone", lambda: not pipeline.vm_processes(job_id), 15)
    gone_after = time.monotonic() - killed

    assert verdict.result is Result.ERROR, verdict
    assert "SIGTERM" in verdict.message and "systemctl stop/kill" in verdict.message, verdict.message
    own = [e for e in tap.finals(job_id) if e is not verdict]
    assert [e.result for e in own] == [Result.CANCELLED], own  # superseded by the verdict
    assert gone_after < 10, gone_after

    record = pipeline.wait_record(job_id, "errored")
    assert record.result is Result.ERROR and record.error == verdict.message, record
    assert record.exit_code == 3, record  # the job process ended on SIGTERM as cancelled
    journal = testbed.journal(unit)
    assert "long step started" in journal, journal
    assert "SIGTERM: cancelling the job" in journal, journal
    assert "Failed with result 'exit-code'" in journal, journal
    # The dispatcher read the failed unit and released it (systemctl reset-failed).
    wait_until(f"{unit} to be released", lambda: not pipeline.unit_loaded(unit), 20)
    submission.wait(60)


def test_runtime_max_sec_ends_the_job_as_error_timeout(pipeline: Pipeline) -> None:
    """A job whose deadline (RuntimeMaxSec) passes is ended by systemd; the dispatcher reports it as
    `error` with "timeout". Its deadline, 16 s, passes while the guest boots."""
    testbed, tap = pipeline.testbed, pipeline.tap
    minutes = 0.1
    deadline = runtime_max_sec(minutes)
    submission = pipeline.submit("deadline", LONG_WORKFLOW.replace("TIMEOUT", str(minutes)))
    job_id, unit = pipeline.started(submission)
    started = time.monotonic()
    assert testbed.show(unit, "RuntimeMaxUSec")["RuntimeMaxUSec"] == timespan(deadline)

    verdict = tap.wait("the dispatcher's verdict", lambda: tap.verdict(job_id), deadline + 60)
    ended_after = time.monotonic() - started
    assert verdict.result is Result.ERROR, verdict
    assert "timeout" in verdict.message, verdict.message
    assert f"RuntimeMaxSec={deadline} exceeded" in verdict.message, verdict.message
    assert deadline - 3 < ended_after < deadline + 30, ended_after
    own = [e for e in tap.finals(job_id) if e is not verdict]
    assert [e.result for e in own] == [Result.CANCELLED], own  # superseded by the verdict

    record = pipeline.wait_record(job_id, "errored")
    assert record.result is Result.ERROR and record.error == verdict.message, record
    journal = testbed.journal(unit)
    assert "Service reached runtime time limit" in journal, journal
    assert "Failed with result 'timeout'" in journal, journal
    wait_until("the VM to be gone", lambda: not pipeline.vm_processes(job_id), 15)
    wait_until(f"{unit} to be released", lambda: not pipeline.unit_loaded(unit), 20)
    submission.wait(60)


def test_submit_shows_the_dispatchers_verdict_of_a_unit_ended_by_systemd(pipeline: Pipeline) -> None:
    """`solstice submit` must show how the job ended, the dispatcher's verdict included. The
    dispatcher is held (SIGSTOP) while the unit is killed, so the verdict comes after the job's own
    final event whatever the timing, as it does from a busy dispatcher."""
    testbed, tap = pipeline.testbed, pipeline.tap
    submission = pipeline.submit("killed-early", LONG_WORKFLOW.replace("TIMEOUT", "10"))
    job_id, unit = pipeline.started(submission)
    tap.wait("the job to start", lambda: pipeline.tap.events.get(job_id), 60)
    hold = ["systemctl", "kill", "--kill-whom=main", DISPATCHER]
    testbed.run(*hold, "--signal=SIGSTOP")
    try:
        testbed.run("systemctl", "kill", unit)
        with contextlib.suppress(subprocess.TimeoutExpired):
            submission.wait(20)
    finally:
        testbed.run(*hold, "--signal=SIGCONT")
    verdict = tap.wait("the dispatcher's verdict", lambda: tap.verdict(job_id), 60)
    assert verdict.result is Result.ERROR, verdict
    pipeline.wait_record(job_id, "errored")
    code = submission.wait(60)
    out = submission.text()
    assert f"■ error: {verdict.message}" in out, out
    assert code == 1, out


FORGEJO_RUNNER = "solstice-forgejo-runner.service"
REGISTRATION = "/var/lib/solstice/forgejo-runner/runner.json"
FORGE_WORKFLOW = """
name: forge
on: push
jobs:
  build:
    runs-on: debian-12
    steps:
      - uses: actions/checkout@v4
      - name: Show
        run: |
          echo "checked out: $(cat hello.txt)"
          echo "key ${{ secrets.API_KEY }}"
"""


def test_the_forgejo_runner_unit_runs_a_task_and_stops_for_good_when_unregistered(
    pipeline: Pipeline,
) -> None:
    """units/solstice-forgejo-runner.service as packaged: `register` as root hands the credentials
    to user solstice; the unit (Type=notify, the secrets key as a credential, its StateDirectory)
    takes a task from the fake Forgejo on the host; the job unit fetches the commit with git and
    runs it in a guest; the result and logs reach the forge. A deleted registration ends the unit
    with status 78, which it does not restart from."""
    from solstice.forges.forgejo.translate import job_uuid
    from tests.fakes.forgejo import FakeForgejo
    from tests.fakes.gitrepo import make_repo

    testbed = pipeline.testbed
    repo = pipeline.workdir / "repo"
    (sha,) = make_repo(repo, "hello from nspawn\n")

    with contextlib.ExitStack() as cleanup, FakeForgejo() as forge:
        forge.add_repository("alice/tools", repo)

        def stop_runner() -> None:
            testbed.run("systemctl", "stop", FORGEJO_RUNNER, check=False, timeout=60)
            testbed.run("systemctl", "reset-failed", FORGEJO_RUNNER, check=False)
            testbed.run(
                "rm", "-rf", REGISTRATION, str(Path(REGISTRATION).parent / "tasks"), "/root/reg-token"
            )

        cleanup.callback(stop_runner)
        testbed.write("/root/reg-token", forge.create_registration_token() + "\n", "0600")
        reg = testbed.run(
            *("solstice", "forgejo-runner", "register", "--url", forge.url, "--token", "@/root/reg-token"),
            *("--name", "nspawn-runner", "--labels", "debian-12"),
        )
        assert "registered runner 'nspawn-runner'" in reg.stdout, reg.stdout
        owner = testbed.run("stat", "-c", "%U %a", REGISTRATION).stdout.split()
        assert owner == ["solstice", "600"], owner
        runner_uuid = json.loads(testbed.run("cat", REGISTRATION).stdout)["uuid"]

        start = testbed.run("systemctl", "start", FORGEJO_RUNNER, check=False, timeout=90)
        assert start.returncode == 0, start.stderr + testbed.journal(FORGEJO_RUNNER)
        (job,) = forge.enqueue(
            FORGE_WORKFLOW, repository="alice/tools", sha=sha, secrets={"API_KEY": SECRET}
        )

        def reported() -> Any:
            with forge.lock:
                task = forge.task_of(job)
                return task if task is not None and task.archived else None

        try:
            task = wait_until("the task to be reported", reported, BOOT_WAIT + 120)
        except AssertionError:
            raise AssertionError(testbed.journal(FORGEJO_RUNNER)[-3000:] + pipeline.explain()) from None
        job_id = job_uuid(forge.url, task.id)
        pipeline.jobs.append(job_id)
        assert task.status == "success", "\n".join(task.lines())
        assert "checked out: hello from nspawn" in task.step_lines(1), task.lines()
        assert "key ***" in task.step_lines(1)
        with forge.lock:
            sent = json.dumps([body for _, _, body in forge.requests])
        assert SECRET not in sent and task.token not in sent
        fetches = {r.task_id for r in forge.git_requests if r.status == 200}
        assert fetches == {task.id}, forge.git_requests

        def finished_journal() -> str | None:
            text = testbed.journal(f"solstice-job@{job_id}.service")
            return text if "■ success" in text else None

        journal = wait_until("the job's journal", finished_journal, 30)
        assert "checked out: hello from nspawn" in journal and SECRET not in journal
        assert f"task {task.id}: reported" in testbed.journal(FORGEJO_RUNNER)
        status = testbed.show(FORGEJO_RUNNER, "ActiveState", "StatusText")
        assert status["ActiveState"] == "active" and "forge ok" in status["StatusText"], status

        forge.delete_runner(runner_uuid)
        wait_until(
            "the runner unit to stop",
            lambda: testbed.show(FORGEJO_RUNNER, "ActiveState")["ActiveState"] in ("failed", "inactive"),
            60,
        )
        time.sleep(7)  # longer than RestartSec=5s: it must not come back
        shown = testbed.show(FORGEJO_RUNNER, "ActiveState", "ExecMainStatus", "NRestarts")
        assert shown == {"ActiveState": "failed", "ExecMainStatus": "78", "NRestarts": "0"}, shown
        assert "no longer knows runner 'nspawn-runner'" in testbed.journal(FORGEJO_RUNNER)


def test_nothing_is_left_behind(pipeline: Pipeline) -> None:
    """After the jobs: no QEMU in the container, no job unit active or loaded, no job files; the
    dispatcher is still running, with no job."""
    testbed = pipeline.testbed
    assert pipeline.jobs, "no job ran in this module"
    for job_id in pipeline.jobs:
        record = pipeline.record(job_id)
        assert record is not None and record.state.terminal, (job_id, record)
    wait_until("no QEMU left", lambda: not [p for p in testbed.processes("qemu-system")], 15)
    units = testbed.run(
        "systemctl", "list-units", "--all", "--plain", "--no-legend", "solstice-job@*"
    ).stdout
    assert not [line for line in units.splitlines() if " active " in f" {line} "], units
    for job_id in pipeline.jobs:
        assert job_id not in units, units
        assert testbed.run("test", "-e", f"/run/solstice/jobs/{job_id}", check=False).returncode == 1
    requests = testbed.run("ls", "-A", "/run/solstice/requests").stdout.split()
    assert not [name for name in requests if name.split(".")[0] in pipeline.jobs], requests
    status = testbed.show(DISPATCHER, "ActiveState", "StatusText")
    assert status["ActiveState"] == "active", status
    assert status["StatusText"].startswith(f"0/{CAPACITY} jobs running"), status
    assert not [s.output.name for s in pipeline.submissions if s.proc.poll() is None]
