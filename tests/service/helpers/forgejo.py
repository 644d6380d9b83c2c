"""The Forgejo runner for tests: ``solstice forgejo-runner register`` and ``run`` as child processes
against the fake server (tests/fakes/forgejo.py), with the pipeline's configuration."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from helpers.pipeline import POLLER, ROOT, Pipeline, consumers, wait_until
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
