"""The Forgejo runner for tests: ``solstice forgejo-runner register`` and ``run`` as child processes
against the fake server (tests/fakes/forgejo.py), with the pipeline's configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from helpers.pipeline import POLLER, ROOT, Pipeline, consumers, load_config, make_pipeline, wait_until
from solstice.config import BrokerConfig
from solstice.queue import Names
from tests.fakes.forgejo import FakeForgejo, FakeTask

#: The runner's events address: one the broker fixture deletes afterwards.
ADDRESS = POLLER


def forgejo_config(key_file: Path, *, extra: str = "") -> str:
    """Config lines for the pipeline: the secrets key and a quick runner."""
    return (
        f'[secrets]\nkey_file = "{key_file}"\n'
        f'[forgejo]\naddress = "{ADDRESS}"\nfetch_interval = 0.5\nreport_interval = 0.5\n'
        f"max_backoff = 5\n{extra}"
    )


def cli(
    pipeline: Pipeline, *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "solstice", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=pipeline.env,
        timeout=timeout,
    )


def register(
    pipeline: Pipeline, forge: FakeForgejo, *, name: str = "solstice-test", labels: str = "debian-12"
) -> None:
    token = forge.create_registration_token()
    proc = cli(
        pipeline,
        "forgejo-runner",
        "register",
        "--url",
        forge.url,
        "--token",
        "-",
        "--name",
        name,
        "--labels",
        labels,
        stdin=token + "\n",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert token not in proc.stdout + proc.stderr


class RunnerProcess:
    """``solstice forgejo-runner run`` as a child process; its log in a file (appended across
    restarts)."""

    def __init__(self, pipeline: Pipeline, verb: str = "forgejo-runner", address: str = ADDRESS) -> None:
        self.pipeline = pipeline
        self.verb = verb
        self.address = address
        self.log = pipeline.runtime_dir / f"{verb}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> RunnerProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "solstice", self.verb, "run"],
                env=self.pipeline.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        if wait:
            self.wait_consuming()
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_consuming(self, timeout: float = 30.0) -> None:
        queue = Names(self.pipeline.cfg.broker).events_queue(self.address)

        def consuming() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the runner exited {self.proc.returncode}:\n{self.output()}")
            return consumers(self.pipeline.cfg.broker, queue) > 0

        wait_until("the runner to consume its events", consuming, timeout, 0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the runner did not exit within {timeout:.0f} s:\n{self.output()}"
            ) from None


def wait_done(
    forge: FakeForgejo, task_id: int, timeout: float, runner: RunnerProcess | None = None
) -> FakeTask:
    """Until the fake has the task's final state and its closed log."""

    def done() -> FakeTask | None:
        if runner is not None and runner.proc is not None and runner.proc.poll() is not None:
            raise AssertionError(f"the runner exited {runner.proc.returncode}:\n{runner.output()}")
        with forge.lock:
            task = forge.tasks.get(task_id)
            if (
                task is not None
                and task.status in ("success", "failure", "cancelled", "skipped")
                and task.archived
            ):
                return task
        return None

    try:
        return wait_until(f"task {task_id} to be reported", done, timeout, 0.2)
    except AssertionError:
        raise AssertionError(
            f"task {task_id} not reported within {timeout:.0f} s; runner log:\n"
            + (runner.output()[-4000:] if runner else "")
        ) from None


def vm_pipeline(
    broker: BrokerConfig, database_url: str, *, extra: str = ""
) -> Iterator[tuple[Pipeline, FakeForgejo]]:
    """A pipeline whose jobs are ``solstice job run`` in real TCG guests of the test image, with a
    started fake Forgejo and the runner's configuration (``extra``: more config lines). Nothing is
    registered or started yet."""
    from solstice.secrets import write_new_key
    from tests.testimage import IMAGES, build_test_image

    build_test_image()
    accel = os.environ.get("SOLSTICE_VM_ACCEL", "tcg")
    made = make_pipeline(broker, database_url, job_command=f"{sys.executable} -m solstice job run")
    pipeline = next(made)
    forge = FakeForgejo().start()
    try:
        key = pipeline.runtime_dir / "secrets.key"
        write_new_key(key)
        # state_dir: the images live in <state_dir>/images; the runner's files stay in the test's dir.
        text = pipeline.config_file.read_text().replace(
            f'state_dir = "{pipeline.runtime_dir}/state"', f'state_dir = "{IMAGES.parent}"'
        )
        text += f'[vm]\naccel = "{accel}"\ncpus = 1\nmemory = "1G"\nboot_timeout = 400\n{extra}'
        text += forgejo_config(
            key, extra=f'registration_file = "{pipeline.runtime_dir}/forgejo-runner/runner.json"\n'
        )
        pipeline.config_file.write_text(text)
        pipeline.cfg = load_config(pipeline.config_file)
        yield pipeline, forge
    finally:
        forge.stop()
        made.close()
