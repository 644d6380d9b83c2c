"""A canary secret through real jobs is nowhere on the host in plaintext, and SSH private keys are
nowhere but in memory (docs/security.md "What the tests check").

Two scenarios, one TCG guest each:

* local: ``solstice run --secret CANARY`` (the value in the caller's environment, as documented);
* the Forgejo pipeline: the fake Forgejo -> ``solstice forgejo-runner run`` -> RabbitMQ -> the
  dispatcher -> ``solstice job run`` -> the guest -> events -> the fake.

The canary is made at run time and reaches the job only as a secret. Its step prints it whole,
split in two writes with a pause between, byte by byte with a pause after each, on stderr, into a
job output; then it says ``canary-step-running`` and sleeps while the test samples every host
process's command line and environment and reads the files a job could write (run directories,
temporary directories, state directories, the serial console log). After the job: the same files
again, the database's tables (COPY, what pg_dump writes), RabbitMQ's message store on disk, the
journal when journald runs, and every event that left the job (the terminal, the forge's requests).

The one place the canary may be during the job is the guest's own disk: the overlay file, 0600 in
the job's run directory and deleted with it (checked after the job), which the guest writes as it
pleases (the step's environment file goes there before it is removed).

The pipeline's guest boots while the local scenario runs (the local fixture starts it): its job
first waits at a gate, a host port the guest tries (bash's /dev/tcp to the user network's host
address) until the test listens on it, so its canary step runs only once the local scenario is
done, and each scenario's samples see its own job's step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers.forgejo import RunnerProcess, forgejo_config, register, wait_done
from helpers.leaks import Hit, Scanner, new_canary, rabbitmq_dir, temp_roots, walk
from helpers.pipeline import Pipeline, load_config, make_pipeline, qemu_of, wait_until
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice.config import BrokerConfig
from solstice.forges.forgejo.translate import job_uuid
from solstice.secrets import write_new_key
from tests.fakes.forgejo import FakeForgejo, FakeTask
from tests.testimage import IMAGES, build_test_image

pytestmark = pytest.mark.vm

ACCEL = os.environ.get("SOLSTICE_VM_ACCEL", "tcg")
MARKER = "canary-step-running"
SAMPLES = 3  # process samples while the step sleeps, 2 s apart

STEP = f"""
        env:
          CANARY: ${{{{ secrets.CANARY }}}}
        run: |
          echo "whole: $CANARY"
          printf 'split: %s' "${{CANARY:0:16}}"; sleep 2; printf '%s\\n' "${{CANARY:16}}"
          printf 'bytes: '
          for i in $(seq 0 $((${{#CANARY}} - 1))); do printf '%s' "${{CANARY:$i:1}}"; sleep 0.05; done
          echo
          echo "stderr: $CANARY" >&2
          echo "leak=$CANARY" >> "$GITHUB_OUTPUT"
          echo "{MARKER}"
          sleep 12
          echo "canary-step-done"
"""

WORKFLOW = f"""
name: canary
on: push
jobs:
  canary:
    runs-on: debian-12
    outputs:
      leak: ${{{{ steps.leak.outputs.leak }}}}
    steps:
      - name: Leak attempts
        id: leak
{STEP}
"""


# The pipeline job's first step: wait (at most 15 min) until the test opens the gate.
GATE_STEP = """
      - name: Wait for the gate
        run: |
          for i in $(seq 1800); do
            if (exec 3<>/dev/tcp/10.0.2.2/{port}) 2>/dev/null; then echo gate-open; exit 0; fi
            sleep 0.5
          done
          echo "the gate never opened"; exit 1
"""


def gated_workflow(port: int) -> str:
    """WORKFLOW with GATE_STEP before its canary step."""
    head, steps, tail = WORKFLOW.partition("    steps:\n")
    assert steps, WORKFLOW
    return head + steps + GATE_STEP.format(port=port).lstrip("\n") + tail


@dataclass
class Observed:
    """What one scenario saw, for the tests below."""

    canary: str
    during: list[Hit] = field(default_factory=list)
    after: list[Hit] = field(default_factory=list)
    scanned: list[str] = field(default_factory=list)  # files read during the job
    output: str = ""  # every event that left the job, as text
    extra: dict[str, object] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)  # files in the run directories after the job

    def halves(self) -> list[str]:
        return [self.canary[:16], self.canary[16:]]


def own_state(state: Path) -> Path:
    """A state directory of the scenario's own (every file in it is Solstice's), the test image
    linked in as <state_dir>/images/debian-12 (the scan does not follow the link)."""
    (state / "images").mkdir(parents=True, exist_ok=True)
    (state / "images" / "debian-12").symlink_to(IMAGES / "debian-12")
    return state


def others_temp(ours: list[Path]) -> list[Path]:
    """Other sessions' pytest and pipeline directories: not scanned for key material (their
    own tests may write keys); the canary is looked for everywhere."""
    out = []
    for parent in (Path("/tmp"), Path(f"/tmp/pytest-of-{os.environ.get('USER', 'root')}")):
        if parent.is_dir():
            for p in parent.iterdir():
                if p.name.startswith(("pytest-", "sol-")) and not any(
                    p == o or p in o.parents for o in ours
                ):
                    out.append(p)
    return out


def scan_during(
    scanner: Scanner,
    canary_only: Scanner,
    *,
    run_roots: list[Path],
    overlays: list[Path],
    state_dir: Path,
    started: float,
    skip_pids: list[int],
    caller: int | None,
    obs: Observed,
) -> None:
    for _ in range(SAMPLES):
        hits = canary_only.processes(skip=skip_pids)
        # The operator put the canary into the caller's environment (`--secret NAME` reads it
        # from there): that one environment is theirs, its command line is still checked.
        obs.during += [
            h for h in hits if caller is None or not h.where.startswith(f"/proc/{caller}/environ")
        ]
        time.sleep(2)
    exclude = list(overlays)
    obs.scanned = [str(p) for p in walk(run_roots, exclude)]
    obs.during += scanner.files(run_roots, exclude=exclude)
    obs.during += scanner.files([state_dir], exclude=exclude)
    temp = temp_roots()
    obs.during += canary_only.files(temp, exclude=[*exclude, *run_roots])
    obs.during += scanner.files(
        temp, exclude=[*exclude, *run_roots, *others_temp(run_roots)], newer_than=started
    )


# --- local: solstice run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, pipeline_started: Started) -> Observed:
    """``pipeline_started``: the pipeline's guest boots meanwhile (its job waits at the gate)."""
    build_test_image()
    canary = new_canary()
    obs = Observed(canary)
    scanner, canary_only = Scanner(canary), Scanner(canary, keys=False)
    base = tmp_path_factory.mktemp("local")
    runtime = base / "run"
    (base / "canary.yml").write_text(WORKFLOW)
    config = base / "solstice.toml"
    state = own_state(base / "state")
    config.write_text(
        f'[paths]\nruntime_dir = "{runtime}"\nstate_dir = "{state}"\n'
        f'[vm]\naccel = "{ACCEL}"\ncpus = 1\nmemory = "1G"\nboot_timeout = 400\n'
    )
    started = time.time()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "solstice",
            "--config",
            str(config),
            "run",
            "--secret",
            "CANARY",
            "canary.yml",
        ],
        env={**os.environ, "CANARY": canary},
        cwd=base,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(lambda: proc.stdout.readline().decode(errors="replace"), "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        wait_until("the step to run", lambda: any(MARKER in x for x in lines), 600, 0.2)
        overlays = list(runtime.rglob("*.qcow2"))
        obs.extra["overlays"] = overlays
        scan_during(
            scanner,
            canary_only,
            run_roots=[runtime],
            overlays=overlays,
            state_dir=state,
            started=started,
            skip_pids=[os.getpid()],
            caller=proc.pid,
            obs=obs,
        )
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    obs.output = "".join(lines)
    obs.extra["returncode"] = proc.returncode
    obs.after += scanner.files([runtime, state])
    obs.after += canary_only.files(temp_roots())
    obs.left = [str(p) for p in runtime.rglob("*") if p.is_file()]
    return obs


def test_local_the_job_ran_and_printed_masked(local: Observed) -> None:
    assert local.extra["returncode"] == 0, local.output
    out = local.output
    assert "canary-step-done" in out, out
    for label in ("whole", "split", "bytes", "stderr"):
        assert f"{label}: ***" in out, (label, out)
    assert local.canary not in out and not [h for h in local.halves() if h in out], out


def test_local_nothing_on_the_host_during_the_job(local: Observed) -> None:
    assert any(p.endswith("console.log") for p in local.scanned), local.scanned  # the serial log
    assert local.extra["overlays"], "no overlay found: the run directory's layout changed"
    assert not local.during, "\n".join(map(str, local.during))


def test_local_nothing_left_after_the_job(local: Observed) -> None:
    assert not local.after, "\n".join(map(str, local.after))
    left = [str(p) for p in local.left]
    assert not [p for p in left if p.endswith((".qcow2", ".iso", ".log"))], left


# --- the Forgejo pipeline --------------------------------------------------------------------------


@dataclass
class Started:
    """The pipeline scenario up to its gate: the job taken, its guest booting or waiting."""

    obs: Observed
    scanner: Scanner
    canary_only: Scanner
    pipeline: Pipeline
    forge: FakeForgejo
    runner: RunnerProcess
    gate: socket.socket  # bound, not listening: the guest's tries are refused until listen()
    task: FakeTask
    job_id: str
    state: Path
    started: float


@pytest.fixture(scope="module")
def pipeline_started(
    module_broker_cfg: BrokerConfig, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Started]:
    build_test_image()
    canary = new_canary()
    obs = Observed(canary)
    scanner, canary_only = Scanner(canary), Scanner(canary, keys=False)
    made = make_pipeline(
        module_broker_cfg, database_url, job_command=f"{sys.executable} -m solstice job run"
    )
    pipeline = next(made)
    forge = FakeForgejo().start()
    runner = RunnerProcess(pipeline)
    gate = socket.socket()
    try:
        gate.bind(("127.0.0.1", 0))
        key = pipeline.runtime_dir / "secrets.key"
        write_new_key(key)
        state = own_state(pipeline.runtime_dir / "state")
        text = pipeline.config_file.read_text()
        text += f'[vm]\naccel = "{ACCEL}"\ncpus = 1\nmemory = "1G"\nboot_timeout = 400\n'
        text += forgejo_config(
            key, extra=f'registration_file = "{pipeline.runtime_dir}/forgejo-runner/runner.json"\n'
        )
        pipeline.config_file.write_text(text)
        pipeline.cfg = load_config(pipeline.config_file)
        register(pipeline, forge, name="leak-runner")
        pipeline.dispatcher(capacity=1)
        runner.start()
        started = time.time()
        workflow = gated_workflow(gate.getsockname()[1])
        (job,) = forge.enqueue(workflow, repository="alice/leaks", secrets={"CANARY": canary})
        task = wait_until("the runner to take the task", lambda: forge.task_of(job), 60, 0.2)
        job_id = job_uuid(forge.url, task.id)
        yield Started(obs, scanner, canary_only, pipeline, forge, runner, gate, task, job_id, state, started)
    finally:
        gate.close()
        runner.kill()
        forge.stop()
        made.close()


@pytest.fixture(scope="module")
def pipeline_run(pipeline_started: Started, database_url: str) -> Observed:
    s = pipeline_started
    obs, scanner, canary_only, pipeline, task, job_id = (
        s.obs,
        s.scanner,
        s.canary_only,
        s.pipeline,
        s.task,
        s.job_id,
    )
    assert MARKER not in task.lines(), "the canary step ran before the gate opened"
    s.gate.listen()
    wait_until("the step to run", lambda: MARKER in task.lines(), 600, 0.2)
    overlays = list(pipeline.runtime_dir.rglob("*.qcow2"))
    obs.extra["overlays"] = overlays
    # a run directory of the job, 0700, holding no key file
    jobdir = pipeline.runtime_dir / "jobs" / job_id
    obs.extra["jobdir_mode"] = oct(jobdir.stat().st_mode & 0o777) if jobdir.is_dir() else None
    scan_during(
        scanner,
        canary_only,
        run_roots=[pipeline.runtime_dir],
        overlays=overlays,
        state_dir=s.state,
        started=s.started,
        skip_pids=[],  # the fake forge is this process: its memory, not its environment
        caller=None,
        obs=obs,
    )
    done = wait_done(s.forge, task.id, 300, s.runner)
    wait_until("the VM to be gone", lambda: not qemu_of(job_id), 60)
    obs.extra["status"] = done.status
    obs.extra["lines"] = done.lines()
    obs.extra["outputs"] = dict(done.outputs)
    with s.forge.lock:
        obs.output = json.dumps([body for _, _, body in s.forge.requests]) + "\n".join(done.lines())
    obs.after += scanner.files([pipeline.runtime_dir])  # the state directory is in it
    obs.after += canary_only.files(temp_roots())
    obs.after += scanner.database(database_url)
    obs.after += canary_only.files([rabbitmq_dir()])
    journald, hits = scanner.journal(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.started)))
    obs.extra["journald"] = journald
    obs.after += hits
    obs.left = [str(p) for p in (pipeline.runtime_dir / "jobs").rglob("*")]
    return obs


def test_pipeline_the_job_ran_and_the_forge_got_it_masked(pipeline_run: Observed) -> None:
    lines = pipeline_run.extra["lines"]
    assert pipeline_run.extra["status"] == "success", lines
    assert isinstance(lines, list) and "canary-step-done" in lines
    for label in ("whole", "split", "bytes", "stderr"):
        assert f"{label}: ***" in lines, (label, lines)
    assert pipeline_run.extra["outputs"] == {"leak": "***"}
    out = pipeline_run.output
    assert pipeline_run.canary not in out and not [h for h in pipeline_run.halves() if h in out]


def test_pipeline_nothing_on_the_host_during_the_job(pipeline_run: Observed) -> None:
    assert any(p.endswith("console.log") for p in pipeline_run.scanned), pipeline_run.scanned
    assert any(p.endswith(".log") and "dispatcher" in p for p in pipeline_run.scanned)
    assert pipeline_run.extra["overlays"], "no overlay found: the run directory's layout changed"
    assert pipeline_run.extra["jobdir_mode"] == "0o700"
    assert not pipeline_run.during, "\n".join(map(str, pipeline_run.during))


def test_pipeline_nothing_in_database_broker_files_after_the_job(pipeline_run: Observed) -> None:
    assert not pipeline_run.after, "\n".join(map(str, pipeline_run.after))
    assert pipeline_run.left == [], pipeline_run.left
