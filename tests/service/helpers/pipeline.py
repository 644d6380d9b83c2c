"""The service pipeline for tests: a configuration of its own (unique broker names, a fresh
database, a short runtime directory), dispatcher processes, and a poller-side event collector.

Everything a test starts carries the configuration file's path in its environment
(SOLSTICE_CONFIG); teardown kills every process that does (dispatchers, supervisors, job
processes, QEMU), so nothing outlives a failed test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pika

from solstice import config as configmod
from solstice.backoff import Backoff
from solstice.config import BrokerConfig, Config
from solstice.model import EventKind, JobEvent, JobRequest, JobSpec, Result, Step
from solstice.queue import ACK, Connection, Consumer, Decision, Delivery, EventSequencer, Names, Publisher
from solstice.store import JobRecord
from tests import waiting

ROOT = Path(__file__).resolve().parents[3]
FAKE_JOB = Path(__file__).resolve().parent / "fake_job.py"
POLLER = "poller-1"
LABEL = "debian-12"
FAST = Backoff(initial=0.1, factor=2.0, maximum=1.0, jitter=0.1)

T = TypeVar("T")


def wait_until(what: str, probe: Callable[[], T | None | bool], timeout: float, interval: float = 0.1) -> T:
    return waiting.wait_until(what, probe, timeout, interval)


def qemu_of(job_id: str) -> list[int]:
    """The QEMU processes of a job (its guest's host name carries the uuid)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu" in cmdline and f"solstice-{job_id}".encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def short_dir(prefix: str = "sol-") -> Path:
    """A short directory (unix socket paths of real VMs must stay under 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def write_config(
    path: Path,
    broker: BrokerConfig,
    database_url: str,
    runtime_dir: Path,
    *,
    job_command: str | None = None,
    extra: str = "",
) -> None:
    command = job_command if job_command is not None else f"{sys.executable} {FAKE_JOB}"
    lines = [
        "[paths]",
        f'runtime_dir = "{runtime_dir}"',
        f'state_dir = "{runtime_dir}/state"',
        "[broker]",
        *(f'{k} = "{getattr(broker, k)}"' for k in broker.__dataclass_fields__),
        "[database]",
        f'url = "{database_url}"',
        "[dispatcher]",
        'spawner = "process"',
        f'labels = ["{LABEL}"]',
        f'job_command = "{command}"',
        "poll_interval = 0.2",
        # the stand-in job boots nothing: no image to check (tests/service/test_image_gate.py does)
        "check_images = false",
    ]
    path.write_text("\n".join(lines) + "\n" + extra)


@dataclass
class Pipeline:
    """One test's service setup."""

    config_file: Path
    cfg: Config
    runtime_dir: Path
    runs_dir: Path
    dispatchers: list[DispatcherProcess] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SOLSTICE_CONFIG": str(self.config_file), "FAKE_RUNS_DIR": str(self.runs_dir)}

    def dispatcher(
        self,
        host: str = "host-a",
        *,
        capacity: int = 4,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        args: Sequence[str] = (),
    ) -> DispatcherProcess:
        """``args``: more command-line arguments (e.g. ``--labels``); ``env`` may name another
        SOLSTICE_CONFIG (a host with other images)."""
        d = DispatcherProcess(self, host, capacity, dict(env or {}), tuple(args))
        d.start()
        self.dispatchers.append(d)
        if wait:
            d.wait_consuming()
        return d

    def runs(self, job_id: str) -> list[str]:
        """The fake job's starts for ``job_id``: '<pid> <host>' each."""
        path = self.runs_dir / job_id
        return path.read_text().splitlines() if path.exists() else []

    def cleanup(self) -> None:
        for d in self.dispatchers:
            d.kill()
        kill_processes_with_env("SOLSTICE_CONFIG", str(self.config_file))


def kill_processes_with_env(name: str, value: str) -> list[int]:
    """SIGKILL every process whose environment has ``name=value``; returns their pids."""
    needle = f"{name}={value}".encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in environ:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed


class DispatcherProcess:
    """``solstice dispatcher --host HOST --capacity N`` as a child process, its log in a file."""

    def __init__(
        self, pipeline: Pipeline, host: str, capacity: int, env: dict[str, str], args: tuple[str, ...] = ()
    ) -> None:
        self.pipeline = pipeline
        self.args = args
        self.host = host
        self.capacity = capacity
        self.extra_env = env
        self.log = pipeline.runtime_dir / f"dispatcher-{host}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "solstice",
                    "dispatcher",
                    "--host",
                    self.host,
                    "--capacity",
                    str(self.capacity),
                    *self.args,
                ],
                env={**self.pipeline.env, "FAKE_HOST": self.host, **self.extra_env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_consuming(self, timeout: float = 20.0) -> None:
        """Until its control queue has a consumer (it consumes jobs from then on)."""
        names = Names(self.pipeline.cfg.broker)

        def consuming() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the dispatcher exited {self.proc.returncode}:\n{self.output()}")
            return consumers(self.pipeline.cfg.broker, names.control_queue(self.host)) > 0

        wait_until(f"dispatcher {self.host} to consume", consuming, timeout, 0.1)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def consumers(broker: BrokerConfig, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        channel = conn.channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True).method.consumer_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
    finally:
        if conn.is_open:
            conn.close()


def make_request(
    fake: str = "ok",
    *,
    job_id: str | None = None,
    reply_to: str = POLLER,
    label: str = LABEL,
    timeout_minutes: float = 360,
    steps: tuple[Step, ...] = (),
    **fields: Any,
) -> JobRequest:
    spec = JobSpec(
        key="test",
        name=f"test {fake}",
        runs_on=(label,),
        steps=steps,
        env={"FAKE": fake},
        timeout_minutes=timeout_minutes,
    )
    return JobRequest(job_id=job_id or str(uuid.uuid4()), job=spec, label=label, reply_to=reply_to, **fields)


class Poller:
    """The poller's side: publishes jobs and cancellations, collects events (deduplicated by seq)."""

    def __init__(self, cfg: Config, address: str = POLLER) -> None:
        self.conn = Connection(
            cfg.broker, name="test-poller", labels=(LABEL,), addresses=(address,), backoff=FAST
        )
        self.conn.connect()
        self.publisher = Publisher(self.conn)
        self.consumer = Consumer(self.conn)
        self.sequencer = EventSequencer()
        self.events: dict[str, list[JobEvent]] = {}
        self.raw: dict[str, list[int]] = {}  # every seq received, duplicates included
        self.gaps: list[tuple[str, range]] = []
        self.consumer.consume_event_batches(address, self._on_events, prefetch=50)

    def _on_events(self, delivery: Delivery[tuple[JobEvent, ...]]) -> Decision:
        for event in delivery.message:
            self.raw.setdefault(event.job_id, []).append(event.seq)
            check = self.sequencer.observe(event)
            if check.gap:
                self.gaps.append((event.job_id, check.missing))
            if check.deliver:
                self.events.setdefault(event.job_id, []).append(event)
        return ACK

    def publish(self, request: JobRequest) -> str:
        self.publisher.publish_job(request)
        return request.job_id

    def pump(self, seconds: float = 0.1) -> None:
        self.consumer.process_events(seconds)

    def wait(self, what: str, probe: Callable[[], T | None | bool], timeout: float = 30.0) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value is not None and value is not False:
                return value  # type: ignore[return-value]
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.pump(0.1)

    def final(self, job_id: str) -> JobEvent | None:
        """The last JOB_FINISHED of the job so far (a synthetic one supersedes the job's)."""
        done = [e for e in self.events.get(job_id, []) if e.kind is EventKind.JOB_FINISHED]
        return done[-1] if done else None

    def wait_final(self, job_id: str, timeout: float = 30.0) -> JobEvent:
        return self.wait(f"the final event of job {job_id}", lambda: self.final(job_id), timeout)

    def close(self) -> None:
        self.consumer.close()
        self.publisher.close()
        self.conn.close()


def wait_state(store: Any, job_id: str, states: set[str], timeout: float = 30.0) -> JobRecord:
    def probe() -> JobRecord | None:
        try:
            rec: JobRecord | None = store.get(job_id)
        except Exception:
            store.close()
            try:
                store.reconnect()
            except Exception:
                return None
            return None
        return rec if rec is not None and rec.state.value in states else None

    return wait_until(f"job {job_id} in {states}", probe, timeout, 0.1)


def load_config(path: Path) -> Config:
    return configmod.load(path, environ={})


def make_pipeline(broker: BrokerConfig, database_url: str, **config: Any) -> Iterator[Pipeline]:
    runtime = short_dir()
    runs = runtime / "runs"
    runs.mkdir()
    config_file = runtime / "solstice.toml"
    write_config(config_file, broker, database_url, runtime, **config)
    pipeline = Pipeline(config_file, load_config(config_file), runtime, runs)
    try:
        yield pipeline
    finally:
        pipeline.cleanup()
        shutil.rmtree(runtime, ignore_errors=True)


__all__ = [
    "FAKE_JOB",
    "LABEL",
    "POLLER",
    "DispatcherProcess",
    "Pipeline",
    "Poller",
    "Result",
    "consumers",
    "kill_processes_with_env",
    "make_pipeline",
    "make_request",
    "short_dir",
    "wait_state",
    "wait_until",
]


def runner_pipeline(
    broker: BrokerConfig, database_url: str, runner_config: Callable[[Path], str]
) -> Iterator[Pipeline]:
    """A pipeline for a forge runner: a fresh secrets key and ``runner_config(key file)`` (the
    runner's configuration lines) appended to the pipeline's configuration file."""
    from solstice.secrets import write_new_key

    made = make_pipeline(broker, database_url)
    pipeline = next(made)
    key = pipeline.runtime_dir / "secrets.key"
    write_new_key(key)
    with pipeline.config_file.open("a") as fh:
        fh.write(runner_config(key))
    pipeline.cfg = load_config(pipeline.config_file)
    try:
        yield pipeline
    finally:
        made.close()
