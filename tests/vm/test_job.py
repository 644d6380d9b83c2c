"""The job process end to end in a real guest under TCG.

One VM boot per test guest runs a job whose steps cover most behaviours (streaming, checkout, runner
files, masking, continue-on-error, timeouts, conditions); the tests below each assert on its event
stream. The guests: the cloud-init test image and the metadata-agent one (no cloud-init, root's key
from an odc cpio disk, root login without sudo: the OpenIndiana provisioner end to end).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from solstice.config import VMConfig
from solstice.images import Catalog, Image
from solstice.job.runner import JobSettings, run_job
from solstice.model import EventKind, JobEvent, JobRequest, Outcome, Result, Size, Stream
from solstice.vm.qmp import qmp_command
from solstice.workflow import parse_workflow
from tests.fakes.jobsink import Collect
from tests.testimage import build_test_image

pytestmark = pytest.mark.vm

SECRET = "s3cr3t-Value-99"
MASKED = "hunter2-masked-value"

WORKFLOW = textwrap.dedent(
    r"""
    name: behaviours
    on: push
    env:
      WF_LEVEL: from-workflow
    jobs:
      all:
        runs-on: debian-12
        env:
          JOB_LEVEL: from-job
        steps:
          - uses: actions/checkout@v4
          - name: stream
            run: |
              echo first
              sleep 2
              echo second
              echo to-stderr >&2
          - name: checkout content
            run: |
              test "$(cat hello.txt)" = "hello from the host"
              test -x sub/tool.sh
              echo checked
          - name: set runner files
            id: set
            run: |
              echo "FOO=bar" >> "$GITHUB_ENV"
              echo "val=42" >> "$GITHUB_OUTPUT"
              { echo "multi<<EOF"; echo "line one"; echo "line two"; echo "EOF"; } >> "$GITHUB_OUTPUT"
              echo "/opt/solstice-test-bin" >> "$GITHUB_PATH"
              echo "## summary heading" >> "$GITHUB_STEP_SUMMARY"
          - name: read runner files
            env:
              MULTI: ${{ steps.set.outputs.multi }}
            run: |
              test "$FOO" = bar
              echo "val=${{ steps.set.outputs.val }}"
              test "$MULTI" = "$(printf 'line one\nline two')"
              case "$PATH" in /opt/solstice-test-bin:*) echo path-ok ;; *) echo "PATH=$PATH"; exit 1 ;; esac
              echo "levels: $WF_LEVEL $JOB_LEVEL ${{ env.FOO }}"
          - name: masking
            env:
              MYSECRET: ${{ secrets.MYSECRET }}
            run: |
              echo "::add-mask::hunter2-masked-value"
              echo "masked: hunter2-masked-value"
              echo "secret via env: $MYSECRET"
              echo "secret inline: ${{ secrets.MYSECRET }}"
          - name: login user
            run: echo "user=$(id -un)"
          - name: standard variables
            run: |
              test "$CI" = true
              test "$GITHUB_ACTIONS" = true
              test "$GITHUB_WORKSPACE" = "$(pwd)"
              test "$RUNNER_OS" = Linux
              test -n "$GITHUB_SHA"
              echo "job=$GITHUB_JOB"
          - name: shells
            shell: sh
            run: echo "sh says $0"
          - name: python
            shell: python
            run: print("python says", 6 * 7)
          - name: custom template
            shell: bash -c "echo custom; . {0}"
            run: echo from-template
          - name: working directory
            working-directory: sub
            run: pwd
          - name: allowed to fail
            id: coe
            continue-on-error: true
            run: exit 3
          - name: sees the outcome
            if: steps.coe.outcome == 'failure' && steps.coe.conclusion == 'success'
            run: echo outcome-seen
          - name: too slow
            timeout-minutes: 0.1
            continue-on-error: true
            run: |
              echo sleeping
              sleep 120
          - name: fails
            run: |
              echo about to fail
              exit 7
          - name: not run after failure
            run: echo should-not-run
          - name: on failure
            if: failure()
            run: echo failure-handler-ran
          - name: always
            if: always()
            run: echo always-ran
    """
)


def settings(runtime: Path, **kw: object) -> JobSettings:
    vm = VMConfig(
        accel=os.environ.get("SOLSTICE_VM_ACCEL", "tcg"),
        memory="1G",
        boot_timeout=float(kw.pop("boot_timeout", 240.0)),  # type: ignore[arg-type]
        unresponsive_after=float(kw.pop("unresponsive_after", VMConfig.unresponsive_after)),  # type: ignore[arg-type]
    )
    return JobSettings(vm=vm, runtime_dir=runtime)


def short_dir() -> Path:
    """A runtime directory short enough for unix socket paths (pytest's tmp paths are too long)."""
    return Path(tempfile.mkdtemp(prefix="sol-", dir="/tmp"))


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    path = short_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def checkout_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    (root / "hello.txt").write_text("hello from the host")
    (root / "sub").mkdir()
    (root / "sub" / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (root / "sub" / "tool.sh").chmod(0o755)
    return root


@pytest.fixture(scope="module", params=["debian-12", "debian-12-metadata"])
def behaviours(
    request: pytest.FixtureRequest,
    test_image: Path,
    checkout_tree: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Result, list[JobEvent], Path]]:
    """The scenario on the cloud-init test guest, then on the metadata-agent one (root, no sudo:
    the OpenIndiana provisioner end to end). One boot each."""
    runtime = short_dir()
    wf = parse_workflow(WORKFLOW, "behaviours.yml")
    (job,) = wf.jobs
    catalog = Catalog({}, test_image.parent)
    if request.param == "debian-12-metadata":
        build_test_image(test_image.parent, variant="metadata")
    image = catalog.get(request.param)
    job_request = JobRequest(
        job_id=str(uuid.uuid4()),
        job=job,
        label=image.label,
        repository="example/tree",
        commit="0123456789abcdef0123456789abcdef01234567",
        checkout_source=str(checkout_tree),
        secrets={"MYSECRET": SECRET},
        size=Size(cpus=2, memory_mib=1024),
    )
    sink = Collect()
    result = run_job(job_request, image, settings(runtime), sink)
    yield result, sink.events, runtime
    shutil.rmtree(runtime, ignore_errors=True)


def step_events(events: list[JobEvent], name: str) -> tuple[JobEvent, list[JobEvent]]:
    started = [e for e in events if e.kind is EventKind.STEP_STARTED and e.text == name]
    assert started, f"no step named {name!r}"
    n = started[0].step
    finished = [e for e in events if e.kind is EventKind.STEP_FINISHED and e.step == n]
    logs = [e for e in events if e.kind is EventKind.LOG and e.step == n]
    return finished[0], logs


def texts(logs: list[JobEvent]) -> list[str]:
    return [e.text for e in logs]


def test_job_result_is_failure_because_of_the_failing_step(
    behaviours: tuple[Result, list[JobEvent], Path],
) -> None:
    result, events, _ = behaviours
    assert result is Result.FAILURE
    final = events[-1]
    assert final.kind is EventKind.JOB_FINISHED and final.result is Result.FAILURE
    fin, logs = step_events(events, "fails")
    assert fin.outcome is Outcome.FAILURE and fin.exit_code == 7
    assert "about to fail" in texts(logs)


def test_events_are_numbered_without_gaps(behaviours: tuple[Result, list[JobEvent], Path]) -> None:
    _, events, _ = behaviours
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].kind is EventKind.JOB_STARTED


def test_output_streams_while_the_step_runs(behaviours: tuple[Result, list[JobEvent], Path]) -> None:
    _, events, _ = behaviours
    fin, logs = step_events(events, "stream")
    assert fin.outcome is Outcome.SUCCESS
    by_text = {e.text: e for e in logs}
    assert by_text["second"].time - by_text["first"].time > 1.5  # first line arrived before the sleep ended
    assert by_text["to-stderr"].stream is Stream.STDERR
    assert by_text["first"].stream is Stream.STDOUT


def test_checkout_content_is_in_the_guest(behaviours: tuple[Result, list[JobEvent], Path]) -> None:
    _, events, _ = behaviours
    fin, _ = step_events(events, "Checkout")
    assert fin.outcome is Outcome.SUCCESS
    fin, logs = step_events(events, "checkout content")
    assert fin.outcome is Outcome.SUCCESS and "checked" in texts(logs)


def test_runner_files_carry_across_steps(behaviours: tuple[Result, list[JobEvent], Path]) -> None:
    _, events, _ = behaviours
    fin, logs = step_events(events, "set runner files")
    assert fin.outcome is Outcome.SUCCESS
    assert fin.outputs["val"] == "42" and fin.outputs["multi"] == "line one\nline two"
    assert "## summary heading" in texts(logs)
    fin, logs = step_events(events, "read runner files")
    assert fin.outcome is Outcome.SUCCESS, texts(logs)
    assert "val=42" in texts(logs) and "path-ok" in texts(logs)
    assert "levels: from-workflow from-job bar" in texts(logs)


def test_secret_and_add_mask_are_masked_everywhere(behaviours: tuple[Result, list[JobEvent], Path]) -> None:
    _, events, _ = behaviours
    fin, logs = step_events(events, "masking")
    assert fin.outcome is Outcome.SUCCESS
    assert texts(logs) == ["masked: ***", "secret via env: ***", "secret inline: ***"], [
        (e.kind, e.step, e.text, e.message) for e in events if e.step == fin.step
    ]
    for e in events:
        blob = e.text + e.message + "".join(e.outputs.values())
        assert SECRET not in blob and MASKED not in blob


def test_the_job_runs_as_the_profiles_user(
    behaviours: tuple[Result, list[JobEvent], Path], request: pytest.FixtureRequest
) -> None:
    """The metadata-agent guest has no user but root (its key from the cpio disk); the cloud-init
    guest has the user cloud-init made with our key."""
    _, events, _ = behaviours
    profile = Catalog({}, Path("/nonexistent")).get(request.node.callspec.params["behaviours"]).profile
    fin, logs = step_events(events, "login user")
    assert fin.outcome is Outcome.SUCCESS and texts(logs) == [f"user={profile.user}"], texts(logs)
    assert (profile.user == "root") == (profile.name == "metadata-agent-test")


def test_standard_variables_and_shells(behaviours: tuple[Result, list[JobEvent], Path]) -> None:
    _, events, _ = behaviours
    fin, logs = step_events(events, "standard variables")
    assert fin.outcome is Outcome.SUCCESS, texts(logs)
    assert "job=all" in texts(logs)
    fin, logs = step_events(events, "shells")
    assert fin.outcome is Outcome.SUCCESS and texts(logs)[0].startswith("sh says ")
    fin, logs = step_events(events, "python")
    assert fin.outcome is Outcome.SUCCESS and texts(logs) == ["python says 42"]
    fin, logs = step_events(events, "custom template")
    assert texts(logs) == ["custom", "from-template"]
    fin, logs = step_events(events, "working directory")
    assert texts(logs)[0].endswith("/sub")


def test_continue_on_error_and_outcomes(behaviours: tuple[Result, list[JobEvent], Path]) -> None:
    _, events, _ = behaviours
    fin, _ = step_events(events, "allowed to fail")
    assert (fin.outcome, fin.conclusion, fin.exit_code) == (Outcome.FAILURE, Outcome.SUCCESS, 3)
    fin, logs = step_events(events, "sees the outcome")
    assert fin.outcome is Outcome.SUCCESS and texts(logs) == ["outcome-seen"]


def test_step_timeout_kills_the_step(behaviours: tuple[Result, list[JobEvent], Path]) -> None:
    _, events, _ = behaviours
    fin, logs = step_events(events, "too slow")
    started = next(e for e in events if e.kind is EventKind.STEP_STARTED and e.step == fin.step)
    assert fin.outcome is Outcome.FAILURE and fin.conclusion is Outcome.SUCCESS
    assert "timed out" in fin.message
    assert fin.time - started.time < 6 + 10  # 6 s limit, plus kill grace
    assert "sleeping" in texts(logs)


def test_conditions_after_a_failure(behaviours: tuple[Result, list[JobEvent], Path]) -> None:
    _, events, _ = behaviours
    fin, logs = step_events(events, "not run after failure")
    assert fin.outcome is Outcome.SKIPPED and not logs
    fin, logs = step_events(events, "on failure")
    assert fin.outcome is Outcome.SUCCESS and texts(logs) == ["failure-handler-ran"]
    fin, logs = step_events(events, "always")
    assert fin.outcome is Outcome.SUCCESS and texts(logs) == ["always-ran"]


def _qemu_running(marker: str) -> bool:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return any("qemu-system" in line and marker in line for line in out.splitlines())


def test_nothing_left_after_the_job(behaviours: tuple[Result, list[JobEvent], Path]) -> None:
    _, events, runtime = behaviours
    assert not _qemu_running(str(runtime))
    assert list((runtime / "jobs").iterdir()) == []
    locks = list((runtime / "ports").glob("*")) if (runtime / "ports").exists() else []
    for lock in locks:  # a leftover lock file is fine only if nobody holds it
        import fcntl

        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_guest_that_never_boots_is_an_infrastructure_error(test_image: Path, runtime_dir: Path) -> None:
    runtime = runtime_dir
    catalog = Catalog({}, test_image.parent)
    good = catalog.get("debian-12")
    broken = Image(**{**good.__dict__, "cmdline": "root=/dev/nonexistent console=ttyS0 panic=0"})
    wf = parse_workflow(
        "on: push\njobs:\n  j:\n    runs-on: debian-12\n    steps:\n      - run: true\n", "x.yml"
    )
    request = JobRequest(job_id=str(uuid.uuid4()), job=wf.jobs[0], label="debian-12")
    sink = Collect()
    result = run_job(request, broken, settings(runtime, boot_timeout=25.0), sink)
    assert result is Result.ERROR
    final = sink.events[-1]
    assert final.kind is EventKind.JOB_FINISHED and final.result is Result.ERROR
    assert "25" in final.message and "console" in final.message.lower()
    # The console was streamed into the job's log as it booted, folded in one group, cleaned.
    logs = [e.text for e in sink.events if e.kind is EventKind.LOG and e.step is None]
    start, end = logs.index("::group::Boot console"), logs.index("::endgroup::")
    console = logs[start + 1 : end]
    assert any("Linux version" in line for line in console), console[:20]
    assert any("nonexistent" in line for line in console)  # why it did not boot
    assert not any(c in line for line in console for c in "\x1b\r\x00")
    assert start < end and logs.count("::group::Boot console") == 1
    elapsed = final.time - sink.events[0].time
    assert elapsed < 25 + 30
    assert not _qemu_running(str(runtime))
    assert list((runtime / "jobs").iterdir()) == []


#: The guest monitor's bound in the freeze test (the default, [vm] unresponsive_after, is 60 s).
FREEZE_BOUND = 20.0


def test_a_frozen_guest_ends_the_job_as_error(test_image: Path, runtime_dir: Path) -> None:
    """QMP ``stop`` pauses the vCPUs mid-step: sshd stops answering while the TCP connection to
    SLIRP stays up. The job must give the guest up within its bound and end ``error``."""
    catalog = Catalog({}, test_image.parent)
    image = catalog.get("debian-12")
    wf = parse_workflow(
        "on: push\njobs:\n  j:\n    runs-on: debian-12\n    steps:\n"
        "      - name: hangs\n        run: echo working; sleep 600\n"
        "      - name: always\n        if: always()\n        run: echo always\n",
        "x.yml",
    )
    request = JobRequest(job_id=str(uuid.uuid4()), job=wf.jobs[0], label="debian-12")
    qmp = runtime_dir / "jobs" / request.job_id / "qmp.sock"
    frozen: list[float] = []
    status: list[str] = []

    def freeze(event: JobEvent) -> None:
        if event.kind is EventKind.LOG and event.text == "working" and not frozen:
            qmp_command(qmp, "stop")
            frozen.append(time.time())
            status.append(qmp_command(qmp, "query-status")["status"])

    sink = Collect(freeze)
    result = run_job(request, image, settings(runtime_dir, unresponsive_after=FREEZE_BOUND), sink)
    assert frozen and status == ["paused"], [e.text for e in sink.events]
    assert result is Result.ERROR
    final = sink.events[-1]
    assert final.kind is EventKind.JOB_FINISHED and final.result is Result.ERROR
    assert "the guest stopped responding" in final.message, final.message
    assert "Last console lines" in final.message
    # The bound counts from the last answer, up to one probe interval (5 s) before the freeze;
    # then QMP quit of the paused QEMU and the unwind.
    elapsed = final.time - frozen[0]
    assert FREEZE_BOUND - 5 <= elapsed < FREEZE_BOUND + 15, elapsed
    started = [e for e in sink.events if e.kind is EventKind.STEP_STARTED]
    assert [e.text for e in started] == ["hangs"]  # the job ends at once: no always() step
    assert not _qemu_running(str(runtime_dir))
    assert list((runtime_dir / "jobs").iterdir()) == []


def test_solstice_run_builtin_example(test_image: Path, tmp_path: Path, runtime_dir: Path) -> None:
    """The README's first command, minus the setup: the built-in example in a real VM."""
    env = {
        **os.environ,
        "SOLSTICE_PATHS_STATE_DIR": str(test_image.parent.parent),
        "SOLSTICE_PATHS_RUNTIME_DIR": str(runtime_dir),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "solstice", "run", "--accel", os.environ.get("SOLSTICE_VM_ACCEL", "tcg")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the answer is 42" in proc.stdout
    assert "success" in proc.stdout
