"""Step semantics of JobRun against an in-process guest (tests/fakes/localguest.py): runner files,
outputs, masking, conditions, continue-on-error, timeouts, shells, results and their messages.
The same behaviours run in a real guest in tests/vm/test_job.py; these take milliseconds each."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from solstice.config import VMConfig
from solstice.errors import CommandError, ImageError
from solstice.job import checkout
from solstice.job.guest import Guest
from solstice.job.runner import JobRun, JobSettings
from solstice.model import EventKind, JobEvent, JobRequest, Outcome, Result, Stream
from solstice.workflow import parse_workflow
from tests.fakes.jobsink import Collect
from tests.fakes.localguest import LocalGuest, stand_in_image

SECRET = "s3cr3t-Value-99"
MASKED = "hunter2-masked-value"

IMAGE = stand_in_image()


@dataclass
class Ran:
    result: Result
    events: list[JobEvent]
    guest: LocalGuest | None
    seconds: float
    job: JobRun = field(repr=False)

    @property
    def final(self) -> JobEvent:
        assert self.events[-1].kind is EventKind.JOB_FINISHED
        return self.events[-1]

    def step(self, name: str) -> tuple[JobEvent, list[str]]:
        """The STEP_FINISHED event of the step named ``name`` and the texts of its log lines."""
        started = [e for e in self.events if e.kind is EventKind.STEP_STARTED and e.text == name]
        assert started, f"no step named {name!r}: {[e.text for e in self.events]}"
        n = started[0].step
        finished = [e for e in self.events if e.kind is EventKind.STEP_FINISHED and e.step == n]
        assert len(finished) == 1
        logs = [e.text for e in self.events if e.kind is EventKind.LOG and e.step == n]
        return finished[0], logs


@pytest.fixture
def runtime() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sol-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def workflow(steps: str, job_extra: str = "") -> str:
    return (
        "on: push\njobs:\n  j:\n    runs-on: debian-12\n"
        + textwrap.indent(textwrap.dedent(job_extra), "    ")
        + "    steps:\n"
        + textwrap.indent(textwrap.dedent(steps), "      ")
    )


def run(
    runtime: Path,
    steps: str,
    job_extra: str = "",
    *,
    secrets: dict[str, str] | None = None,
    checkout_source: str = "",
    boot: Callable[[contextlib.ExitStack], Guest] | None = None,
    on_event: Callable[[JobEvent], None] | None = None,
    cancel: threading.Event | None = None,
    **settings: float,
) -> Ran:
    (job,) = parse_workflow(workflow(steps, job_extra), "t.yml").jobs
    request = JobRequest(
        job_id=str(uuid.uuid4()),
        job=job,
        label="local",
        repository="example/tree",
        commit="0123456789abcdef0123456789abcdef01234567",
        checkout_source=checkout_source,
        secrets=secrets or {},
    )
    guests: list[LocalGuest] = []

    def local_boot(stack: contextlib.ExitStack) -> Guest:
        guest = LocalGuest.booted(stack)
        guests.append(guest)
        return guest

    sink = Collect(on_event)
    jr = JobRun(
        request,
        IMAGE,
        JobSettings(vm=VMConfig(**settings), runtime_dir=runtime),  # type: ignore[arg-type]
        sink,
        boot=boot or local_boot,
        cancel=cancel,
    )
    started = time.monotonic()
    result = jr.run()
    return Ran(result, sink.events, guests[0] if guests else None, time.monotonic() - started, jr)


# --- runner files, outputs ----------------------------------------------------------------------


def test_runner_files_carry_across_steps(runtime: Path) -> None:
    out = run(
        runtime,
        """
        - name: set
          id: set
          run: |
            echo "FOO=bar" >> "$GITHUB_ENV"
            { echo "BIG<<EOF"; echo "a"; echo "b"; echo "EOF"; } >> "$GITHUB_ENV"
            echo "val=42" >> "$GITHUB_OUTPUT"
            { echo "multi<<EOF"; echo "line one"; echo "line two"; echo "EOF"; } >> "$GITHUB_OUTPUT"
            mkdir -p "$HOME/bin" && printf '#!/bin/sh\\necho tool-ran\\n' > "$HOME/bin/mytool"
            chmod +x "$HOME/bin/mytool"
            echo "$HOME/bin" >> "$GITHUB_PATH"
            echo "## summary heading" >> "$GITHUB_STEP_SUMMARY"
            echo "::set-output name=old::style"
        - name: read
          env:
            MULTI: ${{ steps.set.outputs.multi }}
          run: |
            test "$FOO" = bar
            test "$BIG" = "$(printf 'a\\nb')"
            echo "val=${{ steps.set.outputs.val }} old=${{ steps.set.outputs.old }} env=${{ env.FOO }}"
            test "$MULTI" = "$(printf 'line one\\nline two')"
            mytool
        - name: files are fresh per step
          run: test ! -s "$GITHUB_ENV" && test ! -s "$GITHUB_OUTPUT" && echo fresh
        """,
    )
    assert out.result is Result.SUCCESS, out.final.message
    fin, logs = out.step("set")
    assert fin.outputs == {"val": "42", "multi": "line one\nline two", "old": "style"}
    assert logs == ["Step summary:", "## summary heading"]  # the ::set-output line is not shown
    fin, logs = out.step("read")
    assert fin.outcome is Outcome.SUCCESS, logs
    assert logs == ["val=42 old=style env=bar", "tool-ran"]
    assert out.step("files are fresh per step")[1] == ["fresh"]


def test_a_bad_runner_file_fails_the_step_not_the_machinery(runtime: Path) -> None:
    out = run(
        runtime,
        """
        - name: bad env file
          run: echo "NAME<<" >> "$GITHUB_ENV"
        """,
    )
    assert out.result is Result.FAILURE
    fin, _ = out.step("bad env file")
    assert fin.outcome is Outcome.FAILURE and "GITHUB_ENV" in fin.message


def test_job_outputs_are_evaluated_at_the_end(runtime: Path) -> None:
    out = run(
        runtime,
        """
        - id: make
          run: echo "v=from-step" >> "$GITHUB_OUTPUT"
        - run: echo "LATER=env-later" >> "$GITHUB_ENV"
        """,
        """
        outputs:
          o: ${{ steps.make.outputs.v }}
          e: ${{ env.LATER }}
          missing: ${{ steps.nope.outputs.x }}
        """,
    )
    assert out.result is Result.SUCCESS
    assert out.final.outputs == {"o": "from-step", "e": "env-later", "missing": ""}
    assert out.job.outputs == out.final.outputs


# --- masking -------------------------------------------------------------------------------------


def test_secrets_and_add_mask_are_masked_in_every_event(runtime: Path) -> None:
    out = run(
        runtime,
        """
        - name: masking
          id: m
          env:
            MYSECRET: ${{ secrets.MYSECRET }}
          run: |
            echo "::add-mask::hunter2-masked-value"
            echo "masked: hunter2-masked-value"
            echo "secret via env: $MYSECRET"
            echo "secret inline: ${{ secrets.MYSECRET }}"
            echo "on stderr: $MYSECRET" >&2
            echo "out=$MYSECRET and hunter2-masked-value" >> "$GITHUB_OUTPUT"
            echo "summary $MYSECRET" >> "$GITHUB_STEP_SUMMARY"
        - name: later step
          run: |
            echo "still masked: hunter2-masked-value"
            echo "fail with $MYSECRET" && exit 9
        """,
        """
        outputs:
          leak: ${{ steps.m.outputs.out }}
        """,
        secrets={"MYSECRET": SECRET},
    )
    assert out.result is Result.FAILURE
    fin, logs = out.step("masking")
    assert logs == [
        "masked: ***",
        "secret via env: ***",
        "secret inline: ***",
        "on stderr: ***",
        "Step summary:",
        "summary ***",
    ]
    assert fin.outputs == {"out": "*** and ***"}
    assert out.step("later step")[1][0] == "still masked: ***"
    assert out.final.outputs == {"leak": "*** and ***"}
    for e in out.events:
        blob = e.text + e.message + "".join(e.outputs.values())
        assert SECRET not in blob and MASKED not in blob, e
    # The secret reached the guest only through the step's env file, which the step removed.
    assert out.guest is not None
    assert all(SECRET not in c for c in out.guest.commands)
    assert not list(out.guest.root.rglob("*.env"))


# --- conditions, continue-on-error, results ------------------------------------------------------


def test_conditions_follow_real_outcomes(runtime: Path) -> None:
    out = run(
        runtime,
        """
        - name: ok
          run: echo ok
        - name: only on success
          if: success()
          run: echo success-ran
        - name: allowed to fail
          id: coe
          continue-on-error: true
          run: exit 3
        - name: sees the outcome
          if: steps.coe.outcome == 'failure' && steps.coe.conclusion == 'success'
          run: echo outcome-seen
        - name: not yet a failure
          if: failure()
          run: echo too-early
        - name: Run tests
          run: |
            echo about to fail
            exit 7
        - name: not run after failure
          run: echo should-not-run
        - name: success() after failure
          if: success()
          run: echo nope
        - name: on failure
          if: failure()
          run: echo failure-handler-ran
        - name: always
          if: always()
          run: echo always-ran
        - name: job status
          if: always()
          run: echo "status=${{ job.status }}"
        """,
    )
    assert out.result is Result.FAILURE
    assert out.step("only on success")[1] == ["success-ran"]
    fin, _ = out.step("allowed to fail")
    assert (fin.outcome, fin.conclusion, fin.exit_code) == (Outcome.FAILURE, Outcome.SUCCESS, 3)
    assert out.step("sees the outcome")[1] == ["outcome-seen"]
    assert out.step("not yet a failure")[0].outcome is Outcome.SKIPPED
    fin, logs = out.step("Run tests")
    assert (fin.outcome, fin.conclusion, fin.exit_code) == (Outcome.FAILURE, Outcome.FAILURE, 7)
    assert "about to fail" in logs and "exited with code 7" in fin.message
    for name in ("not run after failure", "success() after failure"):
        fin, logs = out.step(name)
        assert fin.outcome is Outcome.SKIPPED and logs == []
    assert out.step("on failure")[1] == ["failure-handler-ran"]
    assert out.step("always")[1] == ["always-ran"]
    assert out.step("job status")[1] == ["status=failure"]
    # The job's message names the step by its name, not an internal key.
    assert out.final.result is Result.FAILURE
    assert out.final.message.startswith("step 'Run tests' failed"), out.final.message
    assert "__" not in out.final.message


def test_unnamed_failing_step_is_named_by_its_command(runtime: Path) -> None:
    out = run(runtime, "- run: exit 5\n")
    assert out.result is Result.FAILURE
    assert out.final.message.startswith("step 'Run exit 5' failed"), out.final.message


def test_continue_on_error_keeps_the_job_green(runtime: Path) -> None:
    out = run(
        runtime,
        """
        - continue-on-error: ${{ true }}
          name: flaky
          run: exit 1
        - run: echo after
          name: after
        """,
    )
    assert out.result is Result.SUCCESS and out.final.message == ""
    assert out.step("after")[1] == ["after"]


def test_an_invalid_expression_is_the_workflows_failure(runtime: Path) -> None:
    out = run(
        runtime,
        """
        - name: bad
          run: echo ${{ fromJSON('not json') }}
        - name: next
          run: echo next
        """,
    )
    assert out.result is Result.FAILURE
    assert out.step("bad")[0].outcome is Outcome.FAILURE
    assert out.step("next")[0].outcome is Outcome.SKIPPED


# --- timeouts ------------------------------------------------------------------------------------


def test_step_timeout_kills_the_step(runtime: Path) -> None:
    out = run(
        runtime,
        """
        - name: too slow
          timeout-minutes: 0.01
          continue-on-error: true
          run: |
            echo sleeping
            sleep 60 &
            sleep 60
        - name: next
          run: echo next-ran
        """,
    )
    assert out.result is Result.SUCCESS
    fin, logs = out.step("too slow")
    assert (fin.outcome, fin.conclusion) == (Outcome.FAILURE, Outcome.SUCCESS)
    assert "timed out after 0.01 minutes" in fin.message and logs[0] == "sleeping"
    assert out.step("next")[1] == ["next-ran"]
    assert out.seconds < 10  # 0.6 s limit, then TERM to the whole process group


def test_job_timeout_cancels_the_step_and_skips_the_rest(runtime: Path) -> None:
    out = run(
        runtime,
        """
        - name: long
          run: sleep 60
        - name: always
          if: always()
          run: echo always
        """,
        "timeout-minutes: 0.02\n",
    )
    assert out.result is Result.FAILURE
    assert "maximum execution time of 0.02 minutes" in out.final.message
    assert out.step("long")[0].outcome is Outcome.CANCELLED
    assert out.step("always")[0].outcome is Outcome.SKIPPED
    assert out.seconds < 10


def test_cancellation_kills_the_step(runtime: Path) -> None:
    cancel = threading.Event()

    def on_event(e: JobEvent) -> None:
        if e.kind is EventKind.LOG and e.text == "started":
            cancel.set()

    out = run(
        runtime,
        """
        - name: long
          run: echo started && sleep 60
        - name: always
          if: always()
          run: echo always
        """,
        on_event=on_event,
        cancel=cancel,
    )
    assert out.result is Result.CANCELLED
    assert out.step("long")[0].outcome is Outcome.CANCELLED
    assert out.step("always")[0].outcome is Outcome.SKIPPED
    assert out.seconds < 10


# --- shells, working directory, variables --------------------------------------------------------


def test_shells(runtime: Path) -> None:
    out = run(
        runtime,
        """
        - name: default
          run: |
            false | true
            echo default-ok
        - name: bash has pipefail
          shell: bash
          continue-on-error: true
          run: |
            false | true
            echo not-reached
        - name: sh
          shell: sh
          run: echo "sh says $0"
        - name: python
          shell: python
          run: print("python says", 6 * 7)
        - name: custom template
          shell: bash -c "echo custom; . {0}"
          run: echo from-template
        """,
    )
    assert out.result is Result.SUCCESS, out.final.message
    assert out.step("default")[1] == ["default-ok"]
    fin, logs = out.step("bash has pipefail")
    assert fin.outcome is Outcome.FAILURE and "not-reached" not in logs
    fin, logs = out.step("sh")
    assert logs[0].startswith("sh says ") and logs[0].endswith(".sh")
    assert out.step("python")[1] == ["python says 42"]
    assert out.step("custom template")[1] == ["custom", "from-template"]


def test_working_directory_and_standard_variables(runtime: Path) -> None:
    out = run(
        runtime,
        """
        - name: make dirs
          working-directory: ${{ github.workspace }}
          run: mkdir -p sub/deeper other
        - name: step level
          working-directory: sub
          run: pwd
        - name: job default
          run: pwd
        - name: absolute
          working-directory: ${{ github.workspace }}/other
          run: pwd
        - name: missing
          working-directory: nowhere
          continue-on-error: true
          run: pwd
        - name: standard variables
          env:
            GITHUB_SHA: overridden
            MINE: ${{ github.sha }}
          run: |
            test "$CI" = true && test "$GITHUB_ACTIONS" = true
            test "$GITHUB_WORKSPACE" = "$HOME/work/tree/tree"
            test "$RUNNER_OS" = Linux
            test "$MINE" = "$GITHUB_SHA"
            echo "job=$GITHUB_JOB sha=$GITHUB_SHA repo=$GITHUB_REPOSITORY temp=$RUNNER_TEMP"
        """,
        "defaults:\n  run:\n    working-directory: sub/deeper\n",
    )
    assert out.result is Result.SUCCESS, out.final.message
    assert out.guest is not None
    ws = out.guest.root / "work" / "tree" / "tree"
    assert out.step("step level")[1] == [str(ws / "sub")]
    assert out.step("job default")[1] == [str(ws / "sub" / "deeper")]
    assert out.step("absolute")[1] == [str(ws / "other")]
    fin, logs = out.step("missing")
    assert fin.exit_code == 2 and any("does not exist" in line for line in logs)
    sha = "0123456789abcdef0123456789abcdef01234567"
    (line,) = out.step("standard variables")[1]
    assert line == f"job=j sha={sha} repo=example/tree temp={out.guest.root}/work/_temp"


def test_output_streams_keep_their_stream(runtime: Path) -> None:
    out = run(runtime, "- name: s\n  run: echo out; echo err >&2\n")
    n = out.step("s")[0].step
    streams = {e.text: e.stream for e in out.events if e.kind is EventKind.LOG and e.step == n}
    assert streams == {"out": Stream.STDOUT, "err": Stream.STDERR}


def test_checkout_unpacks_the_tree(runtime: Path, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello from the host")
    out = run(
        runtime,
        """
        - uses: actions/checkout@v4
        - name: content
          run: cat hello.txt
        """,
        checkout_source=str(tmp_path),
    )
    assert out.result is Result.SUCCESS, out.final.message
    assert out.step("content")[1] == ["hello from the host"]


# --- error, not failure --------------------------------------------------------------------------


def test_a_failing_boot_is_an_error(runtime: Path) -> None:
    def boot(stack: contextlib.ExitStack) -> Guest:
        raise CommandError(["qemu-img", "create"], 1, "qemu-img: Could not open backing file")

    out = run(runtime, "- run: true\n", boot=boot)
    assert out.result is Result.ERROR
    assert out.final.result is Result.ERROR and "qemu-img exited with status 1" in out.final.message
    assert list((runtime / "jobs").iterdir()) == []


def test_a_machinery_error_in_a_step_is_an_error(runtime: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(root: Path, **kw: object) -> checkout.Archive:
        raise CommandError(["git", "ls-files"], 128, "fatal: something of ours broke")

    monkeypatch.setattr(checkout, "pack_tree", broken)
    out = run(
        runtime,
        """
        - uses: actions/checkout@v4
        - name: never
          run: echo never
        """,
        checkout_source="/somewhere",
    )
    assert out.result is Result.ERROR
    fin, _ = out.step("Checkout")
    assert fin.outcome is Outcome.FAILURE and "git exited with status 128" in fin.message
    assert not [e for e in out.events if e.text == "never"]
    assert "git exited with status 128" in out.final.message


def test_a_broken_base_image_is_an_error_of_the_real_boot(runtime: Path, tmp_path: Path) -> None:
    """The default boot (a real VM): qemu-img refuses a base image that is not qcow2."""
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"not a disk image at all")
    image = stand_in_image(base_image=base)
    (job,) = parse_workflow(workflow("- run: true\n"), "t.yml").jobs
    request = JobRequest(job_id=str(uuid.uuid4()), job=job, label="local")
    sink = Collect()
    result = JobRun(request, image, JobSettings(runtime_dir=runtime), sink).run()
    assert result is Result.ERROR
    final = sink.events[-1]
    assert final.result is Result.ERROR and "overlay" in final.message, final.message
    assert list((runtime / "jobs").iterdir()) == []


def test_a_missing_image_is_an_error(runtime: Path) -> None:
    (job,) = parse_workflow(workflow("- run: true\n"), "t.yml").jobs
    request = JobRequest(job_id=str(uuid.uuid4()), job=job, label="local")
    sink = Collect()
    assert JobRun(request, IMAGE, JobSettings(runtime_dir=runtime), sink).run() is Result.ERROR
    assert "does not exist" in sink.events[-1].message
    with pytest.raises(ImageError):
        IMAGE.check()


# --- a guest that stops responding ---------------------------------------------------------------


def test_a_frozen_guest_ends_the_job_as_error(runtime: Path) -> None:
    frozen: list[float] = []
    guests: list[LocalGuest] = []

    def boot(stack: contextlib.ExitStack) -> Guest:
        guest = LocalGuest.booted(stack, console="[  12.3] last words of the kernel")
        guests.append(guest)
        return guest

    def on_event(e: JobEvent) -> None:
        if e.kind is EventKind.LOG and e.text == "working" and not frozen:
            frozen.append(time.time())  # events carry wall-clock times
            guests[0].freeze()

    out = run(
        runtime,
        """
        - name: hangs
          run: echo working && sleep 60
        - name: always
          if: always()
          run: echo always
        """,
        boot=boot,
        on_event=on_event,
        unresponsive_after=1.0,
    )
    assert out.result is Result.ERROR
    msg = out.final.message
    assert "the guest stopped responding" in msg and "1 s" in msg, msg
    assert "last words of the kernel" in msg
    fin, _ = out.step("hangs")
    assert fin.outcome is Outcome.FAILURE and "stopped responding" in fin.message
    assert not [e for e in out.events if e.text == "always"]
    ended = out.final.time - frozen[0]
    # The bound counts from the last answer, up to one probe interval (0.25 s) before the freeze.
    assert 1.0 - 0.25 <= ended < 1.0 + 5.0, ended
    assert guests[0].hurried  # no powerdown wait for a frozen guest
    assert list((runtime / "jobs").iterdir()) == []


def test_a_slow_but_answering_guest_is_not_given_up(runtime: Path) -> None:
    out = run(runtime, "- name: slow\n  run: sleep 4 && echo done\n", unresponsive_after=1.5)
    assert out.result is Result.SUCCESS, out.final.message
    assert out.step("slow")[1] == ["done"]


# --- the host-side log line ------------------------------------------------------------------


def test_first_log_line_says_where_the_host_log_is(runtime: Path) -> None:
    (job,) = parse_workflow(workflow("- run: true\n"), "t.yml").jobs
    request = JobRequest(job_id=str(uuid.uuid4()), job=job, label="local")
    sink = Collect()
    where = f"journalctl -u solstice-job@{request.job_id} (on host)"
    jr = JobRun(
        request, IMAGE, JobSettings(runtime_dir=runtime), sink, boot=LocalGuest.booted, host_log=where
    )
    assert jr.run() is Result.SUCCESS
    logs = [e for e in sink.events if e.kind is EventKind.LOG]
    assert logs[0].text == f"Host-side log: {where}" and logs[0].step is None
    # Without one (local mode) nothing extra is said.
    sink = Collect()
    JobRun(request, IMAGE, JobSettings(runtime_dir=runtime), sink, boot=LocalGuest.booted).run()
    assert not [e for e in sink.events if "Host-side log" in e.text]


def test_a_workspace_the_guest_cannot_make_is_an_error(runtime: Path) -> None:
    class ReadOnlyHome(LocalGuest):
        def make_dirs(self, relative: Sequence[str]) -> str:
            raise PermissionError(13, "Permission denied", f"{self.root}/{relative[0]}")

    def boot(stack: contextlib.ExitStack) -> Guest:
        guest = ReadOnlyHome(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        stack.callback(guest.close)
        return guest

    out = run(runtime, "- run: echo never\n", boot=boot)
    assert out.result is Result.ERROR
    assert "could not create the workspace in the guest as solstice" in out.events[-1].message
    assert "Permission denied" in out.events[-1].message
    assert not any(e.text == "never" for e in out.events)
