"""The fault matrix (docs/reliability.md): jobs through the fake Forgejo -> ``solstice forgejo-runner
run`` -> a private RabbitMQ -> ``solstice dispatcher`` (private PostgreSQL) -> job processes, while
faults are injected; then every job is counted.

Process faults (the stand-in job, helpers/fake_job.py, so the loop is fast): SIGKILL of the forge
runner, the dispatcher and a job process at random moments; the private RabbitMQ and PostgreSQL
restarted mid-job; the state directory (a small tmpfs) full. Guest faults (real TCG guests): QEMU
SIGKILLed mid-step, a guest that hangs (QEMU stopped with SIGSTOP), a guest whose sshd dies
mid-step, a step that floods output, and the job process itself SIGKILLed mid-step (its QEMU must
die with it: PR_SET_PDEATHSIG, checked with the supervisor stopped so that its cleanup cannot be
what kills QEMU).

Used by scripts/chaos (the whole matrix) and tests/service/test_chaos_subset.py (a short seeded
subset). Needs root (tmpfs mount, PostgreSQL as user postgres).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from helpers.forgejo import RunnerProcess, forgejo_config, register
from helpers.pipeline import DispatcherProcess, Pipeline, load_config, qemu_of, short_dir, write_config
from helpers.services import PrivatePostgres, PrivateRabbit, free_port
from solstice.config import BrokerConfig, DatabaseConfig
from solstice.forges.forgejo.translate import job_uuid
from solstice.secrets import write_new_key
from solstice.store import Store
from tests.fakes.forgejo import DONE, FakeForgejo, FakeTask

PROCESS_FAULTS = (
    "kill-runner",
    "kill-dispatcher",
    "kill-job",
    "restart-rabbitmq",
    "restart-postgres",
    "state-disk-full",
)
GUEST_FAULTS = ("kill-qemu", "guest-hang", "ssh-drop", "output-flood", "kill-job-guest")
#: How long a QEMU may outlive its SIGKILLed job process (the kernel's PR_SET_PDEATHSIG SIGKILL
#: is immediate; a QEMU with many threads takes a moment to go).
QEMU_GRACE = 10.0
MARKER = "chaos-step-running"
JOB_EXIT_GRACE = 15.0  # s after the last report for the job processes to have exited
STATE_SIZE = "4m"  # the state directory's tmpfs: small enough to fill at once


def fake_workflow(seconds: float) -> str:
    return (
        "name: chaos\non: push\njobs:\n  job:\n    runs-on: debian-12\n"
        f"    env:\n      FAKE: sleep:{seconds:.1f}\n    steps:\n      - run: echo one\n"
    )


GUEST_STEPS = {
    "kill-qemu": f"echo {MARKER}; sleep 120",
    "guest-hang": f"echo {MARKER}; sleep 120",
    "ssh-drop": f"echo {MARKER}; sleep 3; sudo pkill -9 sshd; sleep 60",
    "output-flood": f"echo {MARKER}; seq 1 300000 | sed 's/^/flood line /'; echo flood-done",
    "kill-job-guest": f"echo {MARKER}; sleep 120",
}


def guest_workflow(fault: str) -> str:
    return (
        "name: chaos\non: push\njobs:\n  job:\n    runs-on: debian-12\n    steps:\n"
        f"      - name: {fault}\n        run: {json.dumps(GUEST_STEPS[fault])}\n"
    )


@dataclass
class Row:
    """One line of the results table."""

    name: str
    submitted: int = 0
    reported_once: int = 0
    reported_twice: int = 0
    stuck: int = 0
    ran_twice: int = 0
    qemu: int = 0
    overlays: int = 0
    ports: int = 0
    units: int = 0
    results: Counter[str] = field(default_factory=Counter)

    COLUMNS = (
        "submitted",
        "reported_once",
        "reported_twice",
        "stuck",
        "ran_twice",
        "qemu",
        "overlays",
        "ports",
        "units",
    )

    @property
    def clean(self) -> bool:
        return self.submitted == self.reported_once and not any(getattr(self, c) for c in self.COLUMNS[2:])


def table(rows: list[Row], injected: Counter[str]) -> str:
    head = ["run", *Row.COLUMNS, "results"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r.name, *(str(getattr(r, c)) for c in Row.COLUMNS)]
        cells.append(", ".join(f"{k} {v}" for k, v in sorted(r.results.items())))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(injected.items())))
    return "\n".join(lines)


class Chaos:
    """One installation on private services, its faults and its accounting."""

    def __init__(
        self,
        base: Path,
        *,
        rabbit: PrivateRabbit,
        postgres: PrivatePostgres,
        rng: random.Random,
        guests: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.base = base
        self.rabbit = rabbit
        self.postgres = postgres
        self.rng = rng
        self.guests = guests
        self.log = log
        self.injected: Counter[str] = Counter()
        self.notes: dict[str, str] = {}  # per guest fault: what the forge shows of the job's end
        #: Per group: QEMU processes still alive QEMU_GRACE s after their job process was SIGKILLed
        #: (counted as leftover QEMU: the run's supervisor would kill them later, but the job
        #: process's death alone must).
        self.outlived: Counter[str] = Counter()
        self.qemu_death: dict[str, str] = {}  # per group: how long QEMU outlived its job process
        self.tasks: dict[int, str] = {}  # forge job id -> the fault or phase it belongs to
        self.forge = FakeForgejo()
        self.runtime = short_dir("chaos-")
        self.state = self.runtime / "state"
        self.mounted = False
        self.dispatcher: DispatcherProcess | None = None
        self.runner: RunnerProcess | None = None
        self.pipeline: Pipeline | None = None

    # --- setup -------------------------------------------------------------------------------------

    def start(self, capacity: int = 4) -> Chaos:
        from tests.testimage import IMAGES

        db = self.postgres.createdb(f"solstice_{os.getpid()}_{int(time.time() * 1000) % 100000}")
        with Store.connect(DatabaseConfig(url=db)) as store:
            store.migrate()
        broker = BrokerConfig.named("chaos", url=self.rabbit.url, queue_type="quorum")
        runs = self.runtime / "runs"
        runs.mkdir()
        config = self.runtime / "solstice.toml"
        extra = ""
        if self.guests:
            command = f"{sys.executable} -m solstice job run"
            accel = os.environ.get("SOLSTICE_VM_ACCEL", "tcg")
            extra = (
                f'[vm]\naccel = "{accel}"\ncpus = 1\nmemory = "1G"\nboot_timeout = 400\n'
                "unresponsive_after = 20\n"
            )
        else:
            command = None
            self.state.mkdir()
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={STATE_SIZE},mode=0755", "tmpfs", str(self.state)],
                check=True,
                capture_output=True,
            )
            self.mounted = True
        write_config(config, broker, db, self.runtime, job_command=command, extra=extra)
        if self.guests:  # the images live under <state_dir>/images
            text = config.read_text().replace(
                f'state_dir = "{self.runtime}/state"', f'state_dir = "{IMAGES.parent}"'
            )
            config.write_text(text)
        key = self.runtime / "secrets.key"
        write_new_key(key)
        registration = (
            f'registration_file = "{self.runtime}/forgejo-runner/runner.json"\n' if self.guests else ""
        )
        with config.open("a") as fh:
            fh.write(forgejo_config(key, extra=f"capacity = {capacity}\n{registration}"))
        self.pipeline = Pipeline(config, load_config(config), self.runtime, runs)
        self.forge.start()
        register(self.pipeline, self.forge, name="chaos-runner")
        self.dispatcher = self.pipeline.dispatcher(capacity=capacity)
        self.runner = RunnerProcess(self.pipeline).start()
        return self

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.runner:
                self.runner.kill()
        if self.pipeline:
            self.pipeline.cleanup()
        self.forge.stop()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.state)], check=False, capture_output=True)
        shutil.rmtree(self.runtime, ignore_errors=True)

    # --- jobs ----------------------------------------------------------------------------------------

    def submit(self, workflow: str, group: str) -> int:
        (job,) = self.forge.enqueue(workflow, repository="chaos/repo")
        self.tasks[job.id] = group
        return job.id

    def task(self, job_id: int) -> FakeTask | None:
        with self.forge.lock:
            return self.forge.task_of(self.forge.jobs[job_id])

    def job_uuid(self, forge_job: int) -> str | None:
        task = self.task(forge_job)
        return job_uuid(self.forge.url, task.id) if task else None

    def done(self, forge_job: int) -> bool:
        task = self.task(forge_job)
        return task is not None and task.status in DONE and task.archived

    def wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.keep_alive()
            if all(self.done(j) for j in self.tasks):
                return
            time.sleep(0.5)

    def keep_alive(self) -> None:
        """A poller or dispatcher that exited on its own is a finding (its log says why); it is
        started again so the run goes on, as systemd's Restart=on-failure would."""
        assert self.pipeline and self.runner and self.dispatcher
        if self.runner.proc is not None and self.runner.proc.poll() is not None:
            self.log(f"  the runner exited {self.runner.proc.returncode}; restarting it")
            self.injected["runner exited by itself"] += 1
            self.runner.start(wait=False)
        if self.dispatcher.proc is not None and self.dispatcher.proc.poll() is not None:
            self.log(f"  the dispatcher exited {self.dispatcher.proc.returncode}; restarting it")
            self.injected["dispatcher exited by itself"] += 1
            self.dispatcher = self.pipeline.dispatcher(capacity=self.dispatcher.capacity, wait=False)

    # --- faults --------------------------------------------------------------------------------------

    def inject(self, fault: str) -> bool:
        """Apply one process fault now; False when it had no target (no job running)."""
        assert self.pipeline and self.runner and self.dispatcher
        pause = self.rng.uniform(0.3, 2.0)
        if fault == "kill-runner":
            self.runner.kill()
            time.sleep(pause)
            self.runner.start(wait=False)
        elif fault == "kill-dispatcher":
            self.dispatcher.kill()
            time.sleep(pause)
            self.dispatcher = self.pipeline.dispatcher(capacity=self.dispatcher.capacity, wait=False)
        elif fault == "kill-job":
            pids = self.job_processes()
            if not pids:
                return False
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.rng.choice(pids), signal.SIGKILL)
        elif fault == "restart-rabbitmq":
            self.rabbit.restart(down_for=pause)
        elif fault == "restart-postgres":
            self.postgres.restart()
        elif fault == "state-disk-full":
            filler = self.state / "filler"
            with filler.open("wb") as fh, contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            time.sleep(self.rng.uniform(3, 8))
            filler.unlink()
        else:
            raise ValueError(fault)
        self.injected[fault] += 1
        return True

    def job_processes(self) -> list[int]:
        """The job processes (stand-in or real) of this installation."""
        assert self.pipeline
        needle = f"SOLSTICE_CONFIG={self.pipeline.config_file}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if needle in environ and (b"fake_job.py" in cmdline or b"job\0run" in cmdline):
                pids.append(int(entry.name))
        return pids

    def settled_job_processes(self, grace: float = JOB_EXIT_GRACE) -> list[int]:
        """The job processes still there ``grace`` s after every task was reported: a job process
        sends its final event, then closes its connections and exits, and its supervisor writes the
        exit record, which on a loaded host can trail the forge's report by a second or two."""
        pids = self.job_processes()
        if pids:
            self.log(f"  job processes after the last report: {pids}; waiting up to {grace:.0f} s")
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = self.job_processes()
        for pid in pids:
            argv = _cmdline(pid).replace(b"\0", b" ").decode(errors="replace")
            self.log(f"  job process {pid} left behind: {argv}")
        return pids

    # --- accounting ----------------------------------------------------------------------------------

    def final_results(self) -> dict[int, list[str]]:
        """Per forge task id, every final result the runner sent (UpdateTask with a result)."""
        out: dict[int, list[str]] = {}
        with self.forge.lock:
            requests = list(self.forge.requests)
        for proc, _, body in requests:
            if not proc.endswith("/UpdateTask") or not isinstance(body, dict):
                continue
            state = body.get("state") or {}
            result = state.get("result")
            if result and result not in ("RESULT_UNSPECIFIED", 0):
                out.setdefault(int(state.get("id", 0)), []).append(str(result))
        return out

    def count(self, name: str, group: str | None = None) -> Row:
        assert self.pipeline
        row = Row(name)
        finals = self.final_results()
        jobs = [j for j, g in self.tasks.items() if group is None or g == group]
        for j in jobs:
            row.submitted += 1
            task = self.task(j)
            if task is None or task.status not in DONE or not task.archived:
                row.stuck += 1
                continue
            distinct = set(finals.get(task.id, []))
            if len(distinct) > 1:
                row.reported_twice += 1
            else:
                row.reported_once += 1
            row.results[task.status] += 1
            runs = self.pipeline.runs(job_uuid(self.forge.url, task.id))
            if len(runs) > 1:
                row.ran_twice += 1
        ids = [u for u in (self.job_uuid(j) for j in jobs) if u]
        row.qemu = sum(len(qemu_of(u)) for u in ids) + (
            self.outlived[group] if group else sum(self.outlived.values())
        )
        row.overlays = len(list(self.runtime.rglob("*.qcow2")))
        row.ports = self.held_ports()
        row.units = len(self.settled_job_processes())
        return row

    def findings(self) -> Counter[str]:
        """What the services' logs say about the faults (for the report, not the verdict)."""
        assert self.pipeline
        found: Counter[str] = Counter()
        for log in self.runtime.glob("*.log"):
            text = log.read_text(errors="replace")
            found["logs: No space left on device"] += text.count("No space left on device")
            found["logs: Traceback"] += text.count("Traceback (most recent call last)")
        return found

    def held_ports(self) -> int:
        held = 0
        for lock in (self.runtime / "ports").glob("*.lock"):
            try:
                fd = os.open(lock, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                held += 1
            finally:
                os.close(fd)
        return held


# --- the two loops -----------------------------------------------------------------------------------


def process_loop(
    chaos: Chaos, *, jobs: int, faults: list[str], gap: tuple[float, float] = (0.3, 1.2)
) -> None:
    """Submit ``jobs`` stand-in jobs, a fault from ``faults`` (in order, cycled) after every few."""
    every = max(1, jobs // max(1, len(faults)))
    queue = list(faults)
    for n in range(jobs):
        chaos.submit(fake_workflow(chaos.rng.uniform(0.5, 4.0)), "process")
        time.sleep(chaos.rng.uniform(*gap))
        chaos.keep_alive()
        if queue and n % every == every - 1:
            fault = queue.pop(0)
            chaos.log(f"  job {n + 1}/{jobs}: {fault}")
            if not chaos.inject(fault):
                time.sleep(1.5)  # no job running yet: once more, a little later
                if not chaos.inject(fault):
                    chaos.log(f"  {fault}: no target")
    for fault in queue:  # whatever is left, while the last jobs run
        chaos.inject(fault)


def guest_run(chaos: Chaos, fault: str, timeout: float = 900) -> None:
    """One real-guest job with ``fault`` applied once its step runs."""
    forge_job = chaos.submit(guest_workflow(fault), fault)
    deadline = time.monotonic() + timeout

    def step_running() -> bool:
        task = chaos.task(forge_job)
        return task is not None and MARKER in task.lines()

    while not step_running():
        if time.monotonic() > deadline or chaos.done(forge_job):
            chaos.log(f"  {fault}: the step never ran")
            return
        time.sleep(0.3)
    uuid = chaos.job_uuid(forge_job)
    assert uuid
    pids = qemu_of(uuid)
    if fault == "kill-qemu":
        time.sleep(chaos.rng.uniform(0.5, 3))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    elif fault == "guest-hang":
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
    elif fault == "kill-job-guest":
        if not kill_job_process(chaos, fault, pids):
            return
    chaos.injected[fault] += 1
    while not chaos.done(forge_job) and time.monotonic() < deadline:
        time.sleep(0.5)
    task = chaos.task(forge_job)
    if task is None:
        return
    lines = task.lines()
    if fault == "output-flood":
        flood = [x for x in lines if x.startswith("flood line ")]
        complete = flood == [f"flood line {i}" for i in range(1, 300001)] and "flood-done" in lines
        order = "all in order" if complete else "NOT all in order"
        chaos.notes[fault] = f"{len(flood)} flood lines in the forge, {order}"
        if not complete:
            chaos.injected["flood lines lost"] += 1
    else:
        # what the job said broke (its last line naming an error)
        errors = [x for x in lines if "error" in x.lower()]
        chaos.notes[fault] = errors[-1] if errors else (lines[-1] if lines else "")
        if fault in chaos.qemu_death:
            chaos.notes[fault] = f"{chaos.qemu_death[fault]}; the forge: {chaos.notes[fault]}"


def _stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent pid, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def kill_job_process(chaos: Chaos, fault: str, qemus: list[int]) -> bool:
    """SIGKILL the job process (the parent of the job's QEMU) while its step runs, with its
    supervisor stopped meanwhile: the supervisor kills whatever names the job once its child is
    gone, which would hide a QEMU that does not die with its job process. Then QEMU must be gone
    within QEMU_GRACE s; one that is not counts as left over. False when there was nothing to kill."""
    parents = {st[1] for st in (_stat(q) for q in qemus) if st is not None}
    jobs = [p for p in parents if b"job\0run" in _cmdline(p)]
    if len(jobs) != 1:
        chaos.log(f"  {fault}: no single job process owns QEMU {qemus} (parents {sorted(parents)})")
        chaos.notes[fault] = "no job process to kill"
        return False
    (job,) = jobs
    supervisor = st[1] if (st := _stat(job)) is not None else None
    if supervisor is not None and b"solstice.dispatch.supervise" not in _cmdline(supervisor):
        supervisor = None  # not the process spawner's supervisor: nothing to hold back
    if supervisor is not None:
        os.kill(supervisor, signal.SIGSTOP)
    try:
        killed = time.monotonic()
        os.kill(job, signal.SIGKILL)
        while any(_alive(q) for q in qemus) and time.monotonic() - killed < QEMU_GRACE:
            time.sleep(0.05)
        left = [q for q in qemus if _alive(q)]
        took = time.monotonic() - killed
    finally:
        if supervisor is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(supervisor, signal.SIGCONT)
    if left:
        chaos.outlived[fault] += len(left)
        chaos.log(
            f"  {fault}: QEMU {left} still running {QEMU_GRACE:.0f} s after job process {job} was killed"
        )
    else:
        chaos.log(f"  {fault}: QEMU {qemus} gone {took:.2f} s after job process {job} was killed")
    chaos.qemu_death[fault] = (
        f"QEMU still running {QEMU_GRACE:.0f} s after its job process was killed"
        if left
        else f"QEMU gone {took:.2f} s after its job process was killed"
    )
    return True


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@contextlib.contextmanager
def services(
    base: Path, rabbit_port: int | None = None, pg_port: int | None = None
) -> Iterator[tuple[PrivateRabbit, PrivatePostgres]]:
    """A private RabbitMQ and PostgreSQL; without ports, free ones above 5679 and 5439 (so two
    sessions on one machine do not collide)."""
    rport = rabbit_port or free_port(5679, 5779, also=20000)
    pport = pg_port or free_port(5439, 5539)
    name = f"chaos{os.getpid()}"
    with PrivateRabbit(base, port=rport, name=name) as rabbit, PrivatePostgres(base, port=pport) as pg:
        yield rabbit, pg
