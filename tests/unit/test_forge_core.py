"""The forge-neutral poller (solstice.forges.core) driven by a tiny in-test backend, no broker: the
capacity limit, checkpoint-then-ack and cancel grace. The same with RabbitMQ and the Forgejo
backend is tests/service/test_forgejo_runner.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from solstice.config import BrokerConfig
from solstice.forges.core import Admission, Poller, PollerSettings, Verdict
from solstice.forges.core.poller import CANCEL_GRACE
from solstice.model import EventKind, JobEvent, JobRequest, JobSpec, Result, Step, StepKind
from solstice.model.labels import RoutingError, queue_labels, route
from solstice.queue import ACK, Decision, Delivery

KEY = Fernet.generate_key()


class FakeReport:
    def __init__(self, last_seq: int = 0, result: str = "") -> None:
        self.last_seq = last_seq
        self.result = result
        self.lines: list[str] = []
        self.reported = False
        self.rows = 0  # LOG events fed since the last report

    @property
    def finished(self) -> bool:
        return bool(self.result)

    @property
    def done(self) -> bool:
        return self.finished and self.reported

    @property
    def buffered_rows(self) -> int:
        return self.rows

    @property
    def buffered_bytes(self) -> int:
        return 0

    def feed(self, event: JobEvent) -> None:
        self.last_seq = max(self.last_seq, event.seq)
        self.rows += event.kind is EventKind.LOG
        if event.kind is EventKind.JOB_FINISHED and event.result is not None:
            self.result = event.result.value

    def note(self, text: str, time: float) -> None:
        self.lines.append(text)

    def finish_here(self, result: Result, message: str, time: float) -> None:
        self.result = result.value
        self.lines.append(message)

    def checkpoint(self) -> dict[str, Any]:
        return {"last_seq": self.last_seq, "result": self.result, "mask": ["s3cret"]}


@dataclass
class FakeBackend:
    state_dir: Path
    queued: list[str] = field(default_factory=list)
    capacity: int = 1
    cancel: bool = False
    fetches: int = 0
    declares: int = 0
    forge: str = "fake"
    name: str = "fake"
    url: str = "https://forge.invalid"
    labels: tuple[str, ...] = ("self-hosted",)  # generic only: no queue to check for backlog
    address: str = "fake-runner"
    report_interval: float = 0.2
    reports: list[float] = field(default_factory=list)  # the clock at each report
    clock: Callable[[], float] = time.monotonic
    take_final: bool = True  # False: the forge does not take a final state (yet)

    @property
    def settings(self) -> PollerSettings:
        return PollerSettings(
            capacity=self.capacity, fetch_interval=0.5, report_interval=self.report_interval, max_backoff=5
        )

    def declare(self) -> None:
        self.declares += 1

    def fetch(self) -> Sequence[str]:
        self.fetches += 1
        return [self.queued.pop(0)] if self.queued else []

    def task_key(self, task: str) -> str:
        return task

    def admit(self, task: str, *, reply_to: str) -> Admission:
        job = JobSpec(
            key="a", name="a", runs_on=("x",), steps=(Step(number=1, name="x", kind=StepKind.RUN, run="x"),)
        )
        request = JobRequest(job_id=f"job-{task}", job=job, label="x", reply_to=reply_to)
        return Admission(task, Verdict.JOB, FakeReport(), request=request)

    def report(self, report: Any, *, alive: Callable[[], None]) -> bool:
        self.reports.append(self.clock())
        report.rows = 0
        if report.finished and self.take_final:
            report.reported = True
        return self.cancel

    def restore(self, checkpoint: dict[str, Any]) -> FakeReport:
        return FakeReport(int(checkpoint["last_seq"]), str(checkpoint["result"]))

    def close(self) -> None:
        pass


class FakePublisher:
    def __init__(self) -> None:
        self.jobs: list[str] = []
        self.cancels: list[str] = []

    def publish_job(self, request: JobRequest) -> None:
        self.jobs.append(request.job_id)

    def publish_cancel(self, job_id: str, reason: str = "") -> None:
        self.cancels.append(job_id)


class FakeConsumer:
    """Records each ack with the last_seq stored on disk at that moment."""

    def __init__(self, tasks_dir: Path) -> None:
        self.tasks_dir = tasks_dir
        self.acked: list[tuple[int, int]] = []  # (delivery tag, stored last_seq)

    def settle(self, delivery: Delivery[Any], decision: Decision) -> bool:
        assert decision == ACK
        stored = [json.loads(p.read_text())["reporter"]["last_seq"] for p in self.tasks_dir.glob("*.json")]
        self.acked.append((delivery.delivery_tag, max(stored, default=-1)))
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, backend: FakeBackend) -> tuple[Poller, FakePublisher, FakeConsumer, Clock]:
    clock = Clock()
    poller = Poller(BrokerConfig(), backend, key=KEY, clock=clock)
    publisher, consumer = FakePublisher(), FakeConsumer(tmp_path / "tasks")
    poller.publisher = publisher  # type: ignore[assignment]
    poller.consumer = consumer  # type: ignore[assignment]
    return poller, publisher, consumer, clock


def delivery(
    job_id: str, seq: int, tag: int, kind: EventKind = EventKind.LOG
) -> Delivery[tuple[JobEvent, ...]]:
    result = Result.SUCCESS if kind is EventKind.JOB_FINISHED else None
    event = JobEvent(job_id=job_id, seq=seq, time=1.0, kind=kind, text="x", result=result)
    return Delivery((event,), "events", "q", "r", False, tag, 1)


def test_no_task_beyond_capacity_and_a_keepalive_instead(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path, queued=["1", "2", "3"], capacity=2)
    poller, publisher, _, clock = make(tmp_path, backend)
    for _ in range(10):
        poller.round()
        clock.now += 1.0
    assert sorted(poller.tasks) == ["1", "2"] and backend.queued == ["3"]
    assert publisher.jobs == ["job-1", "job-2"]
    assert backend.fetches == 2  # no fetch while full
    clock.now += 30.0
    poller.round()
    assert backend.fetches == 2 and backend.declares == 0  # reporting keeps the runner online
    # the first line of a job's log is forge-neutral and names no systemd unit
    (line,) = poller.tasks["1"].report.lines  # type: ignore[attr-defined]
    assert line == "Solstice CI: job job-1 for label x; `solstice status job-1` on the dispatcher's host"


def test_events_are_acked_only_after_a_checkpoint_covers_them(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path, queued=["7"])
    poller, _, consumer, clock = make(tmp_path, backend)
    poller.round()  # takes task 7, saves it
    assert poller._on_events(delivery("job-7", 1, tag=11)) is None  # not settled by the handler
    assert poller._on_events(delivery("job-7", 2, tag=12)) is None
    assert consumer.acked == []
    clock.now += 1.0
    poller.round()
    assert consumer.acked == [(11, 2), (12, 2)]  # acked after the checkpoint with seq 2 was stored
    # the checkpoint's masking list is sealed, not in clear
    (path,) = (tmp_path / "tasks").glob("*.json")
    assert "s3cret" not in path.read_text()
    # a restarted poller resumes from the file
    again, _, _, _ = make(tmp_path, FakeBackend(tmp_path))
    again.resume()
    assert again.tasks["7"].report.last_seq == 2 and again.by_job["job-7"] is again.tasks["7"]
    # the job ends, the forge gets it, the task is forgotten and its file removed
    poller._on_events(delivery("job-7", 3, tag=13, kind=EventKind.JOB_FINISHED))
    for _ in range(3):
        clock.now += 1.0
        poller.round()
    assert poller.tasks == {} and not list((tmp_path / "tasks").glob("*.json"))
    assert consumer.acked[-1][0] == 13


def test_a_slot_is_free_once_the_forge_has_the_final_state_not_when_the_job_ended(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path, queued=["1", "2"], capacity=1, take_final=False)
    poller, publisher, _, clock = make(tmp_path, backend)
    poller.round()
    poller._on_events(delivery("job-1", 1, tag=1, kind=EventKind.JOB_FINISHED))
    for _ in range(5):
        clock.now += 1.0
        poller.round()
    assert sorted(poller.tasks) == ["1"] and publisher.jobs == ["job-1"]  # the forge shows 1 running
    backend.take_final = True
    for _ in range(3):
        clock.now += 1.0
        poller.round()
    assert sorted(poller.tasks) == ["2"] and publisher.jobs == ["job-1", "job-2"]


def test_new_log_lines_are_reported_after_half_the_interval_a_quiet_task_after_all_of_it(
    tmp_path: Path,
) -> None:
    backend = FakeBackend(tmp_path, queued=["3"], report_interval=1.0)
    poller, _, _, clock = make(tmp_path, backend)
    backend.clock = clock
    poller.round()  # takes task 3
    poller.round()  # and reports it at once (its first line)
    start = clock.now
    assert backend.reports == [start]

    def run(seconds: float) -> None:
        for _ in range(round(seconds / 0.1)):
            clock.now = round(clock.now + 0.1, 1)
            poller.round()

    run(2.0)  # quiet: one report per interval
    assert backend.reports == [start, start + 1.0, start + 2.0]
    clock.now = round(clock.now + 0.1, 1)
    poller._on_events(delivery("job-3", 1, tag=1))  # a line, 0.1 s after the last report
    run(1.0)
    # reported at half the interval, then the quiet cadence again from there
    assert backend.reports[3:] == [start + 2.5], backend.reports
    run(1.0)
    assert backend.reports[3:] == [start + 2.5, start + 3.5], backend.reports


def test_a_cancel_unconfirmed_within_the_grace_ends_the_task(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path, queued=["5"])
    poller, publisher, _, clock = make(tmp_path, backend)
    poller.round()  # take
    clock.now += 1.0
    poller.round()  # publish, report
    backend.cancel = True
    clock.now += 1.0
    poller.round()
    assert publisher.cancels == ["job-5"]
    report = poller.tasks["5"].report
    clock.now += CANCEL_GRACE - 5
    poller.round()
    assert not report.finished  # the job still has time to confirm
    clock.now += 10
    poller.round()
    assert report.result == "cancelled" and publisher.cancels == ["job-5"]


def test_routing_by_the_runners_labels() -> None:
    served = ("self-hosted", "debian-12", "bookworm")
    assert route(["self-hosted", "bookworm"], served) == "bookworm"  # an alias is its own queue
    assert route(["Linux", "debian-12", "debian-12"], served) == "debian-12"
    assert queue_labels(served) == ["bookworm", "debian-12"]
    with pytest.raises(RoutingError, match="unknown label 'omnios'"):
        route(["omnios"], served)
    with pytest.raises(RoutingError, match="names no image label"):
        route(["self-hosted"], served)
    with pytest.raises(RoutingError, match="several labels"):
        route(["debian-12", "bookworm"], served)


def test_the_poller_imports_no_vm_images_or_job() -> None:
    code = (
        "import sys\n"
        "import solstice.cli.forgejo, solstice.forges.core, solstice.forges.forgejo.backend\n"
        "import solstice.notify, solstice.secrets\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('paramiko', 'qemu', 'pycdlib')\n"
        "       or m.split('.')[:2] in (['solstice', 'vm'], ['solstice', 'images'], ['solstice', 'job'])]\n"
        "print(','.join(bad))\n"
        "assert 'solstice.forges.core.poller' in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_register_says_how_to_start_the_runner_on_this_host(tmp_path: Path) -> None:
    from solstice.cli.poller import start_hint
    from solstice.config import DEFAULT_PATH

    # systemd runs
    assert start_hint("forgejo-runner", None, tmp_path) == (
        "start the service: systemctl enable --now solstice-forgejo-runner"
    )
    assert start_hint("github-runner", DEFAULT_PATH, tmp_path).endswith("solstice-github-runner")
    custom = start_hint("github-runner", Path("/srv/ci.toml"), tmp_path)
    assert "solstice-github-runner" in custom and "--config /srv/ci.toml" in custom
    # no systemd: the command, with the configuration the runner was registered with
    hint = start_hint("forgejo-runner", None, tmp_path / "absent")
    assert "systemctl" not in hint and "solstice forgejo-runner run" in hint
    hint = start_hint("github-runner", Path("/srv/ci.toml"), tmp_path / "absent")
    assert "solstice --config /srv/ci.toml github-runner run" in hint


def test_show_lists_the_tasks_being_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from solstice.cli.poller import print_tasks

    (tmp_path / "7.json").write_text(json.dumps({"task_id": 7, "job_id": "j-7"}))
    (tmp_path / "8.json").write_text("{half a checkpoint")  # being replaced: left out
    print_tasks(tmp_path, "tasks", lambda d: f"task {d['task_id']}: job {d['job_id']}")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "tasks being reported: 2"
    assert out[1].startswith("  task 7: job j-7; saved ") and out[1].endswith(" s ago")
    assert len(out) == 2
