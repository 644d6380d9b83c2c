"""``solstice image selftest``: the guest contract (docs/images.md) run as a real job.

One VM boot, one job through the real job runner: each check is a step (``if: always()``, so a
failed check does not hide the others), plus two the host judges from the job's events and its
end (masking, clean shutdown). The result goes to solstice.images.selftest for ``image list``.
"""

from __future__ import annotations

import dataclasses
import secrets as pysecrets
import tempfile
import threading
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from solstice.images import Image
from solstice.images.selftest import Check, SelftestResult
from solstice.job.guest import Guest
from solstice.job.runner import JobRun, JobSettings
from solstice.model import EventKind, EventSink, JobEvent, JobRequest, JobSpec, Phase, Source, Step, StepKind
from solstice.model.core import Result
from solstice.vm import machine
from solstice.vm.profiles import GuestProfile

#: The longest a self-test or a preparation waits for the guest to power itself off (seconds);
#: under TCG a Debian guest can take most of a minute.
POWEROFF_TIMEOUT = 120.0
CHECKOUT_FILE = "solstice-selftest.txt"
CHECKOUT_TEXT = "checked out by solstice image selftest\n"
SECRET_NAME = "SELFTEST_SECRET"
MASKED = "***"


def _step(number: int, name: str, run: str = "", **kw: object) -> Step:
    return Step(number=number, name=name, run=run, if_="always()", **kw)  # type: ignore[arg-type]


def selftest_steps(profile: GuestProfile) -> tuple[Step, ...]:
    """The contract as steps; a step's name is its check's name."""
    root = profile.privilege.wrap("id -u")
    in_path = " && ".join(
        f'case ":$PATH:" in *":{d}:"*) ;; *) echo "{d} is not on PATH: $PATH"; exit 1 ;; esac'
        for d in profile.path_prepend
    )
    default_shell = f"default shell ({'bash' if profile.bash else 'sh'})"
    default_test = (
        '[ -n "$BASH_VERSION" ] && echo "bash $BASH_VERSION"'
        if profile.bash
        else 'x=$((40 + 2)); [ "$x" = 42 ] && echo "sh arithmetic works"'
    )
    steps = [
        _step(
            1,
            "shell: sh",
            'x=$((40 + 2)); [ "$x" = 42 ] && command -v cd >/dev/null && echo "sh: $0"',
            shell="sh",
        ),
        _step(2, default_shell, default_test),
        Step(number=3, name="checkout (tar)", kind=StepKind.CHECKOUT, if_="always()"),
        _step(4, "checked-out files", f'[ "$(cat {CHECKOUT_FILE})" = "{CHECKOUT_TEXT.strip()}" ] && ls -l'),
        _step(
            5,
            "runner files written",
            'echo "answer=42" >> "$GITHUB_OUTPUT" && echo "SELFTEST_ENV=from-github-env" >> "$GITHUB_ENV" '
            '&& bin="$RUNNER_TEMP/selftest-bin" && mkdir -p "$bin" '
            '&& printf "#!/bin/sh\\necho selftest tool on PATH\\n" > "$bin/selftest-tool" '
            '&& chmod +x "$bin/selftest-tool" && echo "$bin" >> "$GITHUB_PATH"',
            id="files",
        ),
        _step(6, "GITHUB_OUTPUT", '[ "${{ steps.files.outputs.answer }}" = 42 ] && echo "output answer=42"'),
        _step(7, "GITHUB_ENV", '[ "$SELFTEST_ENV" = from-github-env ] && echo "SELFTEST_ENV=$SELFTEST_ENV"'),
        _step(8, "GITHUB_PATH", "selftest-tool"),
        _step(
            9,
            "masking",
            # The ::add-mask:: value is the secret in upper case: not masked unless the command works.
            'ADDED=$(printf %s "$SECRET" | tr a-z A-Z); echo "secret: $SECRET"; '
            'echo "::add-mask::$ADDED"; echo "added: $ADDED"',
            env={
                "SECRET": f"${{{{ secrets.{SECRET_NAME} }}}}",
            },
        ),
        _step(
            10,
            f"privilege tool ({profile.privilege.value})",
            f'uid=$({root}); echo "uid $uid"; [ "$uid" = 0 ]',
        ),
        _step(11, "PATH additions", (in_path + " && " if in_path else "") + 'echo "PATH=$PATH"'),
    ]
    return tuple(steps)


class Recorder:
    """Keeps what the checks are judged on and passes every event on."""

    def __init__(self, sink: EventSink, secret: str) -> None:
        self.sink = sink
        #: The secret and the ::add-mask:: value the masking step makes of it.
        self.values = (secret, secret.upper())
        self.lines: dict[int | None, list[str]] = {}
        self.finished: dict[int, JobEvent] = {}
        self.leaked = False
        self.boot_started: float | None = None
        self.boot_seconds: float | None = None
        self.result: JobEvent | None = None
        self._lock = threading.Lock()

    def emit(self, event: JobEvent) -> None:
        with self._lock:
            texts = [event.text, event.message, *event.outputs.values()]
            if any(v in t for v in self.values for t in texts):
                self.leaked = True
            if event.kind is EventKind.LOG:
                lines = self.lines.setdefault(event.step, [])
                lines.append(event.text)
                del lines[:-20]  # bounded: only the last lines are shown as a check's detail
            elif event.kind is EventKind.STEP_FINISHED and event.step is not None:
                self.finished[event.step] = event
            elif event.kind is EventKind.PHASE and event.text == Phase.BOOT.value:
                self.boot_started = event.time
            elif event.kind is EventKind.PHASE and event.text == Phase.READY.value and self.boot_started:
                self.boot_seconds = event.time - self.boot_started
            elif event.kind is EventKind.JOB_FINISHED:
                self.result = event
        self.sink.emit(event)


def _detail(rec: Recorder, step: Step) -> str:
    done = rec.finished.get(step.number)
    lines = [ln for ln in rec.lines.get(step.number, []) if ln.strip()]
    if done is None:
        return "did not run"
    if done.message:
        return done.message.splitlines()[0]
    return lines[-1] if lines else ""


def judge(rec: Recorder, steps: tuple[Step, ...], powered_off: bool | None) -> SelftestResult:
    if rec.boot_seconds is None:
        why = rec.result.message if rec.result is not None else "the job did not start"
        return SelftestResult((Check("boot", False, why.splitlines()[0] if why else "no boot"),), None)
    checks = [Check("boot", True, f"SSH answered after {rec.boot_seconds:.1f} s")]
    for step in steps:
        done = rec.finished.get(step.number)
        ok = done is not None and done.conclusion is not None and done.conclusion.value == "success"
        if step.name == "masking":
            shown = rec.lines.get(step.number, [])
            masked = f"secret: {MASKED}" in shown and f"added: {MASKED}" in shown
            leak = "the secret appeared in the log" if rec.leaked else ""
            ok = ok and masked and not rec.leaked
            checks.append(
                Check(
                    step.name,
                    ok,
                    leak or ("secret and ::add-mask:: value shown as ***" if ok else "not masked"),
                )
            )
            continue
        checks.append(Check(step.name, ok, _detail(rec, step)))
    if powered_off is not None:
        checks.append(
            Check(
                "clean shutdown",
                powered_off,
                "the guest powered off on the ACPI powerdown"
                if powered_off
                else f"the guest did not power off within {POWEROFF_TIMEOUT:.0f} s of the ACPI powerdown",
            )
        )
    return SelftestResult(tuple(checks), rec.boot_seconds)


def powerdown_settings(settings: JobSettings) -> JobSettings:
    vm = dataclasses.replace(
        settings.vm, shutdown_timeout=max(settings.vm.shutdown_timeout, POWEROFF_TIMEOUT)
    )
    return dataclasses.replace(settings, vm=vm, powerdown=True, keep_on_failure=None)


def capture_guest(
    run: JobRun, then: Callable[[machine.Guest, ExitStack], None] | None = None
) -> list[machine.Guest]:
    """Make ``run`` boot its VM as usual but keep the Guest (and call ``then`` with it and the
    job's stack, whose later callbacks run first at the unwind)."""
    booted: list[machine.Guest] = []
    default_boot = run.boot

    def boot(stack: ExitStack) -> Guest:
        guest = default_boot(stack)
        if isinstance(guest, machine.Guest):
            booted.append(guest)
            if then is not None:
                then(guest, stack)
        return guest

    run.boot = boot
    return booted


def selftest_request(image: Image, tree: Path, secret: str) -> JobRequest:
    """The self-test job: its steps, ``tree`` as what it checks out, ``secret`` to mask."""
    Path(tree, CHECKOUT_FILE).write_text(CHECKOUT_TEXT)
    return JobRequest(
        job_id=str(uuid.uuid4()),
        job=JobSpec(
            key="selftest",
            name=f"selftest {image.label}",
            runs_on=(image.label,),
            steps=selftest_steps(image.profile),
            timeout_minutes=15,
            workflow_name="solstice image selftest",
        ),
        label=image.label,
        source=Source.LOCAL,
        repository="selftest",
        commit="0" * 40,
        checkout_source=str(tree),
        secrets={SECRET_NAME: secret},
    )


def new_secret() -> str:
    return "selftest-" + pysecrets.token_hex(8)


def run_selftest(image: Image, settings: JobSettings, sink: EventSink) -> SelftestResult:
    """Boot ``image`` once and run the guest contract on it; events go to ``sink`` as well."""
    secret = new_secret()
    with tempfile.TemporaryDirectory(prefix="solstice-selftest-") as tree:
        request = selftest_request(image, Path(tree), secret)
        rec = Recorder(sink, secret)
        run = JobRun(request, image, powerdown_settings(settings), rec)
        booted = capture_guest(run)
        run.run()
    powered_off = booted[0].powered_off if booted else None
    if rec.result is not None and rec.result.result is Result.CANCELLED:
        powered_off = None
    return judge(rec, request.job.steps, powered_off)
