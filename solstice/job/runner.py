"""Run one job: boot its VM, run each step over SSH, stream events, clean up whatever happens.

One ExitStack owns every resource of the job (work directory, overlay, seed, port, QEMU); it unwinds
on success, on a failed step, on an infrastructure error, on cancellation and on SIGTERM alike.

Result: ``failure`` only when the workflow failed (a step's own exit, a step timeout, the user's
expressions, workflow or runner files); ``error`` when Solstice's machinery failed (the VM, the
guest, a subprocess of ours, the checkout fetch), since the build then never had its chance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import posixpath
import shlex
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from solstice import expr
from solstice.config import PathsConfig, VMConfig
from solstice.errors import (
    ExpressionError,
    GuestConnectionLost,
    InfraError,
    SolsticeError,
    VMError,
    WorkflowError,
)
from solstice.images import Image, MachinePlan, boot_timeout, plan_machine, warm
from solstice.images.plan import machine_spec
from solstice.job import checkout, filecmds, script
from solstice.job.commands import Command, CommandState
from solstice.job.events import Emitter, LineSplitter
from solstice.job.guest import Boot, Guest
from solstice.job.liveness import GuestMonitor, Liveness
from solstice.job.mask import Masker
from solstice.model import EventSink, JobRequest, Outcome, Phase, Result, Step, StepKind, Stream
from solstice.model.jobcontract import canonical_job_id
from solstice.notify import Notifier
from solstice.vm import leftovers, machine
from solstice.vm.console import ConsoleFollower, read_tail
from solstice.vm.machine import MachineSpec, start_machine
from solstice.workflow import checkout as checkout_inputs

log = logging.getLogger("solstice.job")

#: How long a killed step gets between SIGTERM and SIGKILL, and then to close its output.
KILL_GRACE = 3.0
STOP_GRACE = 3.0
#: A step's runner files are read into memory whole: bounded, as GitHub bounds the summary.
MAX_SUMMARY = 1024 * 1024
MAX_RUNNER_FILE = 16 * 1024 * 1024
#: How long a lost connection waits for QEMU's exit to be seen, to name the cause first.
QEMU_EXIT_WAIT = 2.0
#: The title of the folded group of boot console lines in the job's log.
BOOT_CONSOLE_GROUP = "Boot console"
#: The most lines of a warm VM's boot console copied into its job's log.
WARM_CONSOLE_LINES = 2000
WARM_CONSOLE_BYTES = 256 * 1024
#: The user's own doing: a job that ends on one of these failed; on any other error it errored.
WORKFLOW_ERRORS = (WorkflowError, ExpressionError, filecmds.FileCommandError)


def _default_runtime_dir() -> Path:
    return Path(PathsConfig().runtime_dir)


@dataclass(frozen=True)
class JobSettings:
    """Host-side settings for one run: the configuration's ``[vm]`` (with any command-line
    overrides already applied) and runtime directory. The VM's size is not here: plan_machine
    decides it from the request, the image and ``vm``."""

    vm: VMConfig = field(default_factory=VMConfig)
    runtime_dir: Path = field(default_factory=_default_runtime_dir)
    #: Called with the VM when the job failed (debug SSH: solstice.job.debugssh; ``solstice run
    #: --keep-on-failure``); returns when the VM may go.
    keep_on_failure: Callable[[FailedVM], None] | None = field(default=None, compare=False)
    #: Power the guest down politely at the end (image preparation, the self-test), up to
    #: ``vm.shutdown_timeout``; jobs' throwaway guests are just stopped.
    powerdown: bool = False
    #: A warm pool VM the dispatcher gave this job (solstice.images.warm); "" boots a fresh one,
    #: as does a warm VM that cannot be taken.
    warm_vm: str = ""


@dataclass(frozen=True)
class FailedVM:
    """What a keep_on_failure hook gets: the failed job's running VM and what it may do with it."""

    guest: machine.Guest
    workdir: Path
    request: JobRequest
    #: The job's stack: what the hook leases (a port) is released with the VM.
    stack: contextlib.ExitStack
    #: A job-level log line (masked, to the forge and the journal).
    log: Callable[[str], None]
    #: Send the job's final event now (once); the VM stays until the hook returns.
    report: Callable[[], None]
    #: Set when the job is cancelled or stopped (SIGTERM): the hook returns at once.
    cancel: threading.Event
    #: Tell the watchdog the job is alive for this many more seconds (no guest probes meanwhile).
    hold: Callable[[float], None]


@dataclass
class StepResult:
    outcome: Outcome
    exit_code: int | None = None
    message: str = ""
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FetchTarget:
    """What a checkout step fetches: ``commit`` ("" for the tip of ``ref``) of ``url``."""

    url: str
    commit: str
    ref: str
    token: str = field(default="", repr=False)


@dataclass(frozen=True)
class GuestPaths:
    home: str
    workspace: str
    temp: str

    @property
    def steps(self) -> str:
        return f"{self.temp}/_steps"

    @property
    def files(self) -> str:
        return f"{self.temp}/_runner_file_commands"


class JobRun:
    def __init__(
        self,
        request: JobRequest,
        image: Image,
        settings: JobSettings,
        sink: EventSink,
        *,
        cancel: threading.Event | None = None,
        notifier: Notifier | None = None,
        boot: Boot | None = None,
        host_log: str = "",
    ) -> None:
        """``boot`` provides the guest (default: a fresh VM of ``image``); ``host_log`` says where
        the job's host-side log is, for its first log line ("" says nothing)."""
        self.request = request
        self.job = request.job
        self.image = image
        self.settings = settings
        self.cancel = cancel or threading.Event()
        self.notifier = notifier or Notifier()
        self.boot: Boot = boot or self._boot_vm
        self.host_log = host_log
        #: [vm] boot_timeout, or the profile's when that is larger (a slow first boot); the
        #: dispatcher's RuntimeMaxSec counts the same (solstice.images.plan.boot_timeout).
        self.boot_timeout = boot_timeout(image, settings.vm)
        self.liveness = Liveness(self.boot_timeout, settings.vm.shutdown_timeout)
        self.monitor: GuestMonitor | None = None
        self.guest: Guest | None = None
        #: The first step whose failure failed the job, and why (for the job's message).
        self.failed_step: tuple[Step, str] | None = None
        self.masker = Masker(list(request.secrets.values()))
        self.emit = Emitter(request.job_id, sink, self.masker)
        self.commands = CommandState()
        self.job_status = "success"
        self.steps_ctx: dict[str, dict[str, Any]] = {}
        self.env_added: dict[str, str] = {}
        self.path_added: list[str] = []
        self.job_env: dict[str, str] = {}
        self.deadline: float | None = None
        self.timed_out = False
        #: The job's ``outputs:``, evaluated after its steps (for ``needs.<job>.outputs``).
        self.outputs: dict[str, str] = {}
        #: The job's work directory on the host (set by _run_in_vm; removed by its ExitStack).
        self.workdir: Path | None = None
        #: The final event went out early (a kept VM reports before it goes): not sent again.
        self.final_sent = False
        self._result: tuple[Result, str] = (Result.ERROR, "")
        #: What checkout steps fetched and packed, by target and inputs (a second step reuses it).
        self._fetched: dict[tuple[FetchTarget, checkout_inputs.CheckoutInputs], checkout.Archive] = {}

    # --- the whole job ---------------------------------------------------------------------

    def run(self) -> Result:
        self.emit.job_started(self.job.name)
        if self.host_log:
            self.emit.log(f"Host-side log: {self.host_log}", step=None)
        self.notifier.ready(f"job {self.request.job_id}: starting")
        self.notifier.start_watchdog(self.liveness.alive)
        result, message = Result.ERROR, ""
        try:
            with contextlib.ExitStack() as stack:
                try:
                    result, message = self._run_in_vm(stack)
                finally:
                    self.liveness.teardown()
                    if not self.final_sent:
                        self.emit.phase(Phase.TEARDOWN)
                    self.notifier.status("tearing down")
            if not self.final_sent:
                self.emit.phase(Phase.DONE)
        except WORKFLOW_ERRORS as exc:
            result, message = Result.FAILURE, str(exc)
            self.emit.log(f"Error: {exc}", step=None)
        except SolsticeError as exc:  # Solstice's machinery (InfraError, CommandError, ...)
            result, message = Result.ERROR, str(exc)
            self.emit.log(f"Error: {exc}", step=None)
        except KeyboardInterrupt:
            result, message = Result.CANCELLED, "the job was cancelled"
        except Exception as exc:  # a bug of ours: still end the job with a clear result
            log.error("internal error in job %s:\n%s", self.request.job_id, traceback.format_exc())
            result, message = Result.ERROR, f"internal error: {type(exc).__name__}: {exc}"
        if self.final_sent:
            result, message = self._result  # what the forge was told when the VM was kept
        else:
            self.emit.job_finished(result, message, outputs=self.outputs)
        self.notifier.status(f"finished: {result.value}")
        self.notifier.close()
        return result

    def _workdir(self, stack: contextlib.ExitStack) -> Path:
        root = Path(self.settings.runtime_dir)
        if canonical_job_id(self.request.job_id) is None:  # it names a directory we rm -rf later
            raise InfraError(f"job id {self.request.job_id[:80]!r} is not a uuid in canonical form")
        workdir = root / "jobs" / self.request.job_id
        root.mkdir(parents=True, exist_ok=True)
        (root / "jobs").mkdir(mode=0o755, exist_ok=True)
        # Under systemd the unit's RuntimeDirectory= already made it (empty, 0700).
        workdir.mkdir(mode=0o700, exist_ok=True)
        if any(workdir.iterdir()):
            raise InfraError(f"job work directory {workdir} is not empty: is this job already running?")
        # Held until the directory is gone: a later `solstice` command sweeps it only once this
        # process is dead (vm.leftovers), however it died.
        stack.callback(leftovers.claim_workdir(workdir).release)
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        return workdir

    def _machine_spec(self, plan: MachinePlan) -> MachineSpec:
        return machine_spec(
            self.image, plan, self.settings.vm, self.request.job_id, powerdown=self.settings.powerdown
        )

    def _phase(self, phase: Phase) -> None:
        self.emit.phase(phase)
        self.notifier.status(f"job {self.request.job_id}: {phase.value}")

    def _boot_vm(self, stack: contextlib.ExitStack) -> Guest:
        """The default ``boot``: the warm VM the dispatcher gave the job, else a fresh VM of the
        job's image in its work directory."""
        assert self.workdir is not None
        self.image.check()
        plan = plan_machine(self.request.size, self.image, self.settings.vm)
        if self.settings.warm_vm:
            guest = self._take_warm(stack, plan)
            if guest is not None:
                return guest
        self.emit.log(f"Booting {self.image.label} ({self.settings.vm.accel}, {plan.describe()})", step=None)
        # The serial console, live and folded, so a guest that does not come up shows why.
        self.emit.log(f"::group::{BOOT_CONSOLE_GROUP}", step=None)
        follower = ConsoleFollower(self.workdir / "console.log", self._console_line)
        follower.start()
        try:
            return start_machine(
                self._machine_spec(plan),
                self.workdir,
                Path(self.settings.runtime_dir) / "ports",
                stack,
                on_phase=self._phase,
            )
        finally:
            follower.stop()
            self.emit.log("::endgroup::", step=None)

    def _take_warm(self, stack: contextlib.ExitStack, plan: MachinePlan) -> Guest | None:
        """The warm VM ``settings.warm_vm``, or None (said in the log) when it cannot be taken."""
        vm_id = self.settings.warm_vm
        self._phase(Phase.PREPARE)
        taken: list[warm.Handover] = []
        attempt = contextlib.ExitStack()
        try:
            guest = warm.take_guest(
                self.settings.runtime_dir,
                vm_id,
                self.request.job_id,
                plan,
                self.image.profile,
                attempt,
                on_taken=taken.append,
            )
        except SolsticeError as exc:
            attempt.close()  # gives back nothing: a VM half taken is killed by its keeper
            self.emit.log(f"The warm VM could not be taken ({exc}); booting a fresh one", step=None)
            return None
        except BaseException:
            attempt.close()
            raise
        stack.push(attempt.pop_all())
        handover = taken[0]
        waited = max(0.0, time.time() - handover.ready_at)
        boot = f"booted in {handover.boot_seconds:.0f} s, " if handover.boot_seconds else ""
        self.emit.log(
            f"Took warm VM {vm_id} of {self.image.label} ({plan.describe()}; {boot}ready {waited:.0f} s)",
            step=None,
        )
        # Its boot log, folded as a cold boot's is: the journal and the forge keep it with the job.
        self.emit.log(f"::group::{BOOT_CONSOLE_GROUP} (warm VM {vm_id})", step=None)
        console = read_tail(handover.console, WARM_CONSOLE_LINES, max_bytes=WARM_CONSOLE_BYTES)
        for line in console.splitlines():
            self._console_line(line)
        self.emit.log("::endgroup::", step=None)
        self.emit.phase(Phase.READY, f"warm VM {vm_id}")
        self.notifier.status(f"job {self.request.job_id}: ready (warm VM {vm_id})")
        return guest

    def _console_line(self, line: str) -> None:
        # A console line must not open or close groups or look like a command in the forge's view.
        if line.lstrip().startswith(("::", "##[")):
            line = " " + line.lstrip().replace("::", ": :", 1).replace("##[", "# #[", 1)
        self.emit.log(line, step=None)

    def _run_in_vm(self, stack: contextlib.ExitStack) -> tuple[Result, str]:
        workdir = self._workdir(stack)
        self.workdir = workdir
        guest = self.boot(stack)
        self.guest = guest
        if self.cancel.is_set():
            return Result.CANCELLED, "the job was cancelled"
        self.monitor = GuestMonitor(guest, self.settings.vm.unresponsive_after)
        stack.callback(self.monitor.stop)
        self.monitor.start()
        self.liveness.running(self.monitor)
        try:
            paths = self._prepare_guest(guest)
            result, message = self._run_steps(guest, paths)
        except KeyboardInterrupt:
            guest.hurry()  # cancelled: the VM must be gone within seconds, not after a powerdown
            raise
        except GuestConnectionLost as exc:
            raise self._explain(exc) from exc
        if self.cancel.is_set():
            guest.hurry()
        if (
            result is Result.FAILURE
            and self.settings.keep_on_failure is not None
            and not self.cancel.is_set()
            and isinstance(guest, machine.Guest)  # debug SSH needs a real VM
        ):
            self._keep(guest, workdir, stack, result, message)
        return result, message

    def _keep(
        self, guest: machine.Guest, workdir: Path, stack: contextlib.ExitStack, result: Result, message: str
    ) -> None:
        def report() -> None:
            if not self.final_sent:
                self.emit.phase(Phase.TEARDOWN, "the failed VM is kept for debug SSH")
                self.emit.job_finished(result, message, outputs=self.outputs)
                self._result = (result, message)
                self.final_sent = True

        assert self.settings.keep_on_failure is not None
        self.settings.keep_on_failure(
            FailedVM(
                guest=guest,
                workdir=workdir,
                request=self.request,
                stack=stack,
                log=lambda text: self.emit.log(text, step=None),
                report=report,
                cancel=self.cancel,
                hold=self.liveness.hold,
            )
        )

    def _explain(self, exc: BaseException) -> BaseException:
        """What broke first: a lost connection after QEMU exited is QEMU's exit (then the drop);
        after the monitor gave the guest up it is the guest's unresponsiveness."""
        if not isinstance(exc, GuestConnectionLost):
            return exc
        # A killed QEMU's socket closes as it exits: allow its exit a moment to be reaped.
        ended = self.guest.exited(wait=QEMU_EXIT_WAIT) if self.guest is not None else ""
        if ended:
            first, _, rest = ended.partition("\n")
            return VMError(f"{first}; then {exc}" + (f"\n{rest}" if rest else ""))
        if self.monitor is not None and self.monitor.tripped.is_set():
            return self.monitor.error()
        return exc

    def _prepare_guest(self, guest: Guest) -> GuestPaths:
        repo = (self.request.repository.rstrip("/").rsplit("/", 1)[-1]) or "workspace"
        repo = "".join(c if c.isalnum() or c in "._-" else "_" for c in repo)
        rel = GuestPaths(home=".", workspace=f"work/{repo}/{repo}", temp="work/_temp")
        try:
            home = guest.make_dirs([rel.workspace, rel.steps, rel.files])
        except OSError as exc:
            raise InfraError(f"could not create the workspace in the guest as {guest.user}: {exc}") from None
        if not home.startswith("/"):
            raise InfraError(f"the guest's home of {guest.user} is not an absolute path: {home!r}")
        return GuestPaths(home=home, workspace=f"{home}/{rel.workspace}", temp=f"{home}/{rel.temp}")

    # --- contexts -------------------------------------------------------------------------

    def _github_context(self, paths: GuestPaths, action: str = "") -> dict[str, Any]:
        req = self.request
        given = dict(req.contexts.get("github", {}) or {})
        ref = req.ref or given.get("ref", "")
        base: dict[str, Any] = {
            "repository": req.repository,
            "repository_owner": req.repository.split("/")[0] if "/" in req.repository else "",
            "sha": req.commit,
            "ref": ref,
            "ref_name": ref.rsplit("/", 1)[-1] if ref else "",
            "workspace": paths.workspace,
            "job": self.job.key,
            "workflow": self.job.workflow_name,
            "event_name": "push",
            "run_id": "1",
            "run_number": "1",
            "run_attempt": "1",
            "actor": "",
            "server_url": "",
            "action": action,
            "event": {},
        }
        base.update(given)
        base["workspace"] = paths.workspace
        base["action"] = action
        token = self._checkout_token()
        if token:
            base["token"] = token  # the task token; a secret, so the masker hides it in output
        return base

    def _checkout_token(self) -> str:
        """The forge's task token (the secret named by ``checkout_token_secret``), or ""."""
        name = self.request.source_ids.get("checkout_token_secret", "")
        return self.request.secrets.get(name, "") if name else ""

    def _runner_context(self, paths: GuestPaths) -> dict[str, Any]:
        return {
            "os": self.image.profile.runner_os,
            "arch": "X64",
            "name": f"solstice-{self.image.label}",
            "temp": paths.temp,
            "workspace": paths.workspace.rsplit("/", 1)[0],
            "tool_cache": f"{paths.home}/work/_tool",
            "debug": "",
        }

    def _context(self, paths: GuestPaths, env: Mapping[str, str], action: str = "") -> expr.Context:
        contexts = self.request.contexts
        values: dict[str, Any] = {
            "github": self._github_context(paths, action),
            "env": dict(env),
            "matrix": dict(self.job.matrix),
            "secrets": dict(self.request.secrets),
            "steps": self.steps_ctx,
            "job": {"status": self.job_status},
            "runner": self._runner_context(paths),
            "vars": dict(contexts.get("vars", {}) or {}),
            "needs": dict(contexts.get("needs", {}) or {}),
            "inputs": dict(contexts.get("inputs", {}) or {}),
            "strategy": dict(contexts.get("strategy", {}) or {}),
        }
        return expr.Context(values=values, job_status=self.job_status)

    def _standard_env(self, paths: GuestPaths, action: str, number: int) -> dict[str, str]:
        gh = self._github_context(paths, action)
        rn = self._runner_context(paths)
        files = paths.files
        env = {
            "CI": "true",
            "GITHUB_ACTIONS": "true",
            "HOME": paths.home,
            "GITHUB_WORKSPACE": paths.workspace,
            "GITHUB_SHA": str(gh["sha"]),
            "GITHUB_REF": str(gh["ref"]),
            "GITHUB_REF_NAME": str(gh["ref_name"]),
            "GITHUB_REPOSITORY": str(gh["repository"]),
            "GITHUB_REPOSITORY_OWNER": str(gh["repository_owner"]),
            "GITHUB_RUN_ID": str(gh["run_id"]),
            "GITHUB_RUN_NUMBER": str(gh["run_number"]),
            "GITHUB_RUN_ATTEMPT": str(gh["run_attempt"]),
            "GITHUB_JOB": self.job.key,
            "GITHUB_ACTION": action,
            "GITHUB_WORKFLOW": self.job.workflow_name,
            "GITHUB_EVENT_NAME": str(gh["event_name"]),
            "GITHUB_SERVER_URL": str(gh["server_url"]),
            "GITHUB_ACTOR": str(gh["actor"]),
            "GITHUB_ENV": f"{files}/set_env_{number}",
            "GITHUB_OUTPUT": f"{files}/set_output_{number}",
            "GITHUB_PATH": f"{files}/add_path_{number}",
            "GITHUB_STEP_SUMMARY": f"{files}/step_summary_{number}",
            "GITHUB_STATE": f"{files}/save_state_{number}",
            "RUNNER_OS": str(rn["os"]),
            "RUNNER_ARCH": str(rn["arch"]),
            "RUNNER_NAME": str(rn["name"]),
            "RUNNER_TEMP": paths.temp,
            "RUNNER_WORKSPACE": str(rn["workspace"]),
            "RUNNER_TOOL_CACHE": str(rn["tool_cache"]),
        }
        return env

    # --- steps ----------------------------------------------------------------------------

    def _evaluate_job_env(self, paths: GuestPaths) -> None:
        ctx = self._context(paths, {})
        for name, value in self.job.env.items():
            self.job_env[name] = expr.interpolate(str(value), ctx)
            ctx = self._context(paths, self.job_env)

    def _minutes(self, value: float | str | None, ctx: expr.Context, what: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = expr.to_string(expr.evaluate_value(value, ctx))
        try:
            minutes = float(value)
        except ValueError:
            raise WorkflowError(f"{what}: timeout-minutes {value!r} is not a number") from None
        return minutes if minutes > 0 else None

    def _run_steps(self, guest: Guest, paths: GuestPaths) -> tuple[Result, str]:
        try:
            self._evaluate_job_env(paths)
            job_minutes = self._minutes(self.job.timeout_minutes, self._context(paths, self.job_env), "job")
        except (ExpressionError, WorkflowError) as exc:
            return Result.FAILURE, f"job {self.job.key}: {exc}"
        self.deadline = time.monotonic() + job_minutes * 60 if job_minutes else None
        for step in self.job.steps:
            self._run_one(guest, paths, step)
        self._evaluate_outputs(paths)
        if self.cancel.is_set():
            return Result.CANCELLED, "the job was cancelled"
        if self.timed_out:
            return Result.FAILURE, f"the job exceeded its maximum execution time of {job_minutes:g} minutes"
        if self.job_status == "failure":
            if self.failed_step is None:
                return Result.FAILURE, "the job failed"
            step, why = self.failed_step
            return Result.FAILURE, f"step {step.name!r} failed" + (f": {why}" if why else "")
        return Result.SUCCESS, ""

    def _evaluate_outputs(self, paths: GuestPaths) -> None:
        """``jobs.<id>.outputs``, evaluated at the job's end as GitHub does, also after a failure;
        one that cannot be evaluated is left out with a warning."""
        ctx = self._context(paths, {**self.job_env, **self.env_added})
        for name, value in self.job.outputs.items():
            try:
                self.outputs[name] = expr.interpolate(str(value), ctx)
            except ExpressionError as exc:
                self.emit.log(f"Warning: job output {name!r}: {exc}", step=None)

    def _step_key(self, step: Step) -> str:
        return step.id or f"__{step.number}"

    def _record(self, step: Step, outcome: Outcome, conclusion: Outcome, outputs: Mapping[str, str]) -> None:
        self.steps_ctx[self._step_key(step)] = {
            "outcome": outcome.value,
            "conclusion": conclusion.value,
            "outputs": dict(outputs),
        }

    def _run_one(self, guest: Guest, paths: GuestPaths, step: Step) -> None:
        action = self._step_key(step)
        env_ctx = {**self.job_env, **self.env_added}
        ctx = self._context(paths, env_ctx, action)
        if self.cancel.is_set() or self.timed_out:
            self.job_status = "cancelled"
            ctx = self._context(paths, env_ctx, action)
        try:
            should_run = expr.evaluate_condition(step.if_ or "", ctx)
        except ExpressionError as exc:
            self.emit.step_started(step.number, step.name)
            self.emit.log(f"Error: if: {exc}", step=step.number)
            self._finish(step, StepResult(Outcome.FAILURE, message=f"if: {exc}"), ctx)
            return
        if not should_run or self.cancel.is_set() or self.timed_out:
            # A cancelled or timed-out job runs no more steps, so the VM is gone promptly.
            self.emit.step_started(step.number, step.name)
            self._record(step, Outcome.SKIPPED, Outcome.SKIPPED, {})
            self.emit.step_finished(step.number, Outcome.SKIPPED, Outcome.SKIPPED)
            return
        self.emit.step_started(step.number, step.name)
        self.notifier.status(f"job {self.request.job_id}: step {step.number} {step.name}")
        try:
            if step.kind is StepKind.CHECKOUT:
                res = self._checkout(guest, paths, step, ctx)
            else:
                res = self._run_script(guest, paths, step, ctx)
        except WORKFLOW_ERRORS as exc:
            self.emit.log(f"Error: {exc}", step=step.number)
            res = StepResult(Outcome.FAILURE, message=str(exc))
        except Exception as exc:  # ours, not the step's: the job ends with it (run())
            error = self._explain(exc)
            self.emit.step_finished(step.number, Outcome.FAILURE, Outcome.FAILURE, message=str(error))
            if error is not exc:
                raise error from exc
            raise
        self._finish(step, res, ctx)

    def _finish(self, step: Step, res: StepResult, ctx: expr.Context) -> None:
        conclusion = res.outcome
        if res.outcome is Outcome.FAILURE:
            try:
                coe = step.continue_on_error
                if isinstance(coe, str):
                    # A value, not a condition: no implicit success() (it is false after a failure).
                    coe = expr.is_truthy(expr.evaluate_value(coe, ctx)) if coe.strip() else False
            except ExpressionError as exc:
                self.emit.log(f"Error: continue-on-error: {exc}", step=step.number)
                coe = False
            if coe:
                conclusion = Outcome.SUCCESS
        if conclusion is Outcome.FAILURE:
            self.job_status = "failure"
            if self.failed_step is None:
                self.failed_step = (step, res.message)
        if res.message and res.outcome is not Outcome.SUCCESS:
            self.emit.log(f"Error: {res.message}", step=step.number)
        self._record(step, res.outcome, conclusion, res.outputs)
        self.emit.step_finished(
            step.number,
            res.outcome,
            conclusion,
            exit_code=res.exit_code,
            message=res.message,
            outputs=res.outputs,
        )

    def _workdir_for(self, paths: GuestPaths, wd: str | None, ctx: expr.Context) -> str:
        if not wd:
            return paths.workspace
        wd = expr.interpolate(wd, ctx)
        return wd if wd.startswith("/") else f"{paths.workspace}/{wd}"

    def _checkout(self, guest: Guest, paths: GuestPaths, step: Step, ctx: expr.Context) -> StepResult:
        source = self.request.checkout_source
        if not source:
            return StepResult(Outcome.FAILURE, message="checkout: this job has no source tree to check out")
        # `token:` and the rest are expressions over secrets and the like, evaluated only now
        inputs = checkout_inputs.parse({k: expr.interpolate(str(v), ctx) for k, v in step.with_.items()})
        dest = paths.workspace
        if inputs.path:
            dest = posixpath.normpath(posixpath.join(paths.workspace, inputs.path))
            if dest != paths.workspace and not dest.startswith(paths.workspace + "/"):
                # as actions/checkout: the checkout goes into the workspace, nowhere else
                raise WorkflowError(
                    f"checkout: path {inputs.path!r} is not under the workspace {paths.workspace}"
                )
        target = self._target(source, inputs)
        if target is None:  # local mode: the work tree as it is
            archive = checkout.pack_tree(
                Path(source), include_git=inputs.needs_history, submodules=inputs.submodules
            )
            what = f"{self.request.repository or source} {self.request.commit[:12]}"
        else:
            archive = self._fetch(target, step, inputs)
            what = f"{target.url} {(target.commit or target.ref)[:12]}"
        self.emit.log(f"Checking out {what} into {dest}", step=step.number)
        err: list[bytes] = []
        cmd = f"mkdir -p {shlex.quote(dest)} && cd {shlex.quote(dest)} && {self.image.profile.tar} xf -"
        status = guest.exec(cmd, stdin=archive.data, on_stdout=lambda b: None, on_stderr=err.append)
        if status != 0:
            detail = b"".join(err).decode(errors="replace").strip()
            return StepResult(Outcome.FAILURE, status, f"checkout: unpacking failed in the guest: {detail}")
        self.emit.log(f"{archive.files} files, {len(archive.data) // 1024} KiB", step=step.number)
        return StepResult(Outcome.SUCCESS, 0)

    def _target(self, source: str, inputs: checkout_inputs.CheckoutInputs) -> FetchTarget | None:
        """What the host fetches for a checkout step; None for a local tree packed as it is."""
        req = self.request
        own = not inputs.repository or inputs.repository.lower() == req.repository.lower()
        if own and not checkout.is_url(source):
            # a linked worktree's (or a submodule's) .git is a file naming a repository elsewhere
            foreign_git = inputs.needs_history and (Path(source) / ".git").is_file()
            if not (inputs.ref or inputs.sparse_checkout or inputs.lfs or foreign_git):
                return None
            # another commit than the work tree's, or a git feature: clone the local repository
            url = Path(source).resolve().as_uri()
        elif own:
            url = source
        elif inputs.repository.startswith(("http://", "https://")):
            url = inputs.repository
        else:
            server = inputs.server_url or self._server_url(source)
            if not server:
                raise WorkflowError(
                    f"checkout: `repository: {inputs.repository}` needs `github-server-url:` here "
                    "(a local job has no forge to resolve owner/name against)"
                )
            url = f"{server}/{inputs.repository}.git"
        token = inputs.token or (self._checkout_token() if _same_host(url, source) else "")
        if inputs.ref:
            sha = checkout.is_sha(inputs.ref)
            return FetchTarget(url, inputs.ref if sha else "", "" if sha else inputs.ref, token)
        if own:
            return FetchTarget(url, req.commit, req.ref, token)
        return FetchTarget(url, "", "HEAD", token)  # another repository's default branch

    def _server_url(self, source: str) -> str:
        """The forge's URL: the job's clone URL without ``/<owner>/<name>.git``."""
        suffix = f"/{self.request.repository}.git"
        if checkout.is_url(source) and self.request.repository and source.endswith(suffix):
            return source[: -len(suffix)]
        return str((self.request.contexts.get("github") or {}).get("server_url") or "").rstrip("/")

    def _fetch(
        self, target: FetchTarget, step: Step, inputs: checkout_inputs.CheckoutInputs | None = None
    ) -> checkout.Archive:
        """``target`` fetched on the host and packed, once per job for the same inputs."""
        inputs = inputs or checkout_inputs.CheckoutInputs()
        key = (target, dataclasses.replace(inputs, path=""))
        if key not in self._fetched:
            if self.workdir is None:
                raise InfraError("checkout: the job has no work directory to fetch into")
            self.emit.log(f"Fetching {target.url} {(target.commit or target.ref)[:12]}", step=step.number)
            name = "checkout" if not self._fetched else f"checkout-{len(self._fetched) + 1}"
            tree = checkout.fetch_commit(
                target.url, target.commit, target.ref, target.token, self.workdir / name, inputs=inputs
            )
            self._fetched[key] = checkout.pack_tree(tree, include_git=True, submodules=inputs.submodules)
        return self._fetched[key]

    def _run_script(self, guest: Guest, paths: GuestPaths, step: Step, ctx: expr.Context) -> StepResult:
        n = step.number
        action = self._step_key(step)
        env_ctx = {**self.job_env, **self.env_added}
        step_env: dict[str, str] = {}
        for name, value in step.env.items():
            step_env[name] = expr.interpolate(
                str(value), self._context(paths, {**env_ctx, **step_env}, action)
            )
        full_ctx = self._context(paths, {**env_ctx, **step_env}, action)
        body = expr.interpolate(step.run, full_ctx)
        profile = self.image.profile
        shell = script.resolve_shell(step.shell or self.job.shell, profile.bash, profile.sh)
        workdir = self._workdir_for(paths, step.working_directory or self.job.working_directory, full_ctx)
        minutes = self._minutes(step.timeout_minutes, full_ctx, f"step {n}")

        std = self._standard_env(paths, action, n)
        env = {**std, **env_ctx, **step_env}
        for name in std:
            if name.startswith(("GITHUB_", "RUNNER_")) or name in ("CI", "HOME"):
                env[name] = std[name]  # the runner's own variables cannot be overridden
        # The steps' own GITHUB_PATH additions first (newest first), then the profile's.
        path = [*reversed(self.path_added), *profile.path_prepend]
        envfile_text, skipped = script.env_file(env, path)
        for name in skipped:
            self.emit.log(f"Warning: environment variable {name!r} is not a valid name; not set", step=n)
        script_path = f"{paths.steps}/{n}{shell.extension}"
        envfile = f"{paths.steps}/{n}.env"
        pidfile = f"{paths.steps}/{n}.pid"
        guest.put(script_path, body.encode(), 0o700)
        guest.put(envfile, envfile_text.encode(), 0o600)
        files = [std["GITHUB_ENV"], std["GITHUB_OUTPUT"], std["GITHUB_PATH"], std["GITHUB_STEP_SUMMARY"]]
        command = (
            " ".join(f": > {shlex.quote(f)};" for f in files)
            + " "
            + script.step_command(
                shell=shell, script=script_path, envfile=envfile, pidfile=pidfile, workdir=workdir
            )
        )

        outputs: dict[str, str] = {}
        status, reason = self._exec_supervised(guest, command, pidfile, n, minutes, outputs)

        # Runner files: read even after a failure, as GitHub does.
        env_text = self._runner_file(guest, std["GITHUB_ENV"], "GITHUB_ENV")
        out_text = self._runner_file(guest, std["GITHUB_OUTPUT"], "GITHUB_OUTPUT")
        path_text = self._runner_file(guest, std["GITHUB_PATH"], "GITHUB_PATH")
        summary_data = guest.get(std["GITHUB_STEP_SUMMARY"], MAX_SUMMARY)
        summary = summary_data.decode(errors="replace")
        if len(summary_data) > MAX_SUMMARY:
            self.emit.log(
                f"Warning: $GITHUB_STEP_SUMMARY is larger than {MAX_SUMMARY // 1024} KiB; "
                "not shown (as on GitHub)",
                step=n,
            )
            summary = ""
        self.env_added.update(filecmds.parse_key_values(env_text, "GITHUB_ENV"))
        outputs.update(filecmds.parse_key_values(out_text, "GITHUB_OUTPUT"))
        self.path_added.extend(filecmds.parse_path(path_text))
        if summary.strip():
            self.emit.log("Step summary:", step=n)
            for line in summary.rstrip("\n").split("\n"):
                self.emit.log(line, step=n)

        if reason == "cancelled":
            return StepResult(Outcome.CANCELLED, status, "the step was cancelled", outputs)
        if reason == "step-timeout":
            return StepResult(
                Outcome.FAILURE, status, f"the step timed out after {minutes:g} minutes", outputs
            )
        if reason == "job-timeout":
            return StepResult(
                Outcome.CANCELLED, status, "the job's maximum execution time was reached", outputs
            )
        if status == 0:
            return StepResult(Outcome.SUCCESS, 0, "", outputs)
        what = "was killed by a signal" if status is None or status < 0 else f"exited with code {status}"
        return StepResult(Outcome.FAILURE, status, f"the step's process {what}", outputs)

    def _runner_file(self, guest: Guest, path: str, name: str) -> str:
        data = guest.get(path, MAX_RUNNER_FILE)
        if len(data) > MAX_RUNNER_FILE:
            raise filecmds.FileCommandError(f"${name} is larger than {MAX_RUNNER_FILE // (1024 * 1024)} MiB")
        return data.decode(errors="replace")

    def _exec_supervised(
        self,
        guest: Guest,
        command: str,
        pidfile: str,
        n: int,
        minutes: float | None,
        outputs: dict[str, str],
    ) -> tuple[int | None, str]:
        """Run the step command, streaming lines; a watcher kills it on timeout or cancellation."""
        step_deadline = time.monotonic() + minutes * 60 if minutes else None
        stop = threading.Event()
        done = threading.Event()
        reason: list[str] = []

        def watch() -> None:
            while not done.wait(0.1):
                now = time.monotonic()
                if self.cancel.is_set():
                    reason.append("cancelled")
                elif step_deadline is not None and now >= step_deadline:
                    reason.append("step-timeout")
                elif self.deadline is not None and now >= self.deadline:
                    reason.append("job-timeout")
                    self.timed_out = True
                else:
                    continue
                self._kill(guest, pidfile, "TERM")
                if not done.wait(KILL_GRACE):
                    self._kill(guest, pidfile, "KILL")
                stop.set()
                return

        watcher = threading.Thread(target=watch, name=f"step-{n}-watch", daemon=True)
        watcher.start()
        out = LineSplitter(guard=self.masker)  # no cut of an over-long line splits a secret
        err = LineSplitter(guard=self.masker)

        def on_stdout(chunk: bytes) -> None:
            for line in out.feed(chunk):
                self._stdout_line(line, n, outputs)

        def on_stderr(chunk: bytes) -> None:
            for line in err.feed(chunk):
                self.emit.log(line, step=n, stream=Stream.STDERR)

        try:
            status = guest.exec(
                command, on_stdout=on_stdout, on_stderr=on_stderr, stop=stop, stop_grace=STOP_GRACE
            )
        finally:
            done.set()
            watcher.join()
        for line in out.flush():
            self._stdout_line(line, n, outputs)
        for line in err.flush():
            self.emit.log(line, step=n, stream=Stream.STDERR)
        return status, (reason[0] if reason else "")

    def _kill(self, guest: Guest, pidfile: str, signal: str) -> None:
        try:
            guest.exec(
                script.kill_command(pidfile, signal), on_stdout=lambda b: None, on_stderr=lambda b: None
            )
        except InfraError as exc:
            log.warning("could not signal step: %s", exc)

    def _stdout_line(self, line: str, n: int, outputs: dict[str, str]) -> None:
        cmd = self.commands.interpret(line)
        if cmd is not None:
            if cmd.command == Command.ADD_MASK:
                self.masker.add(cmd.value)
                return  # GitHub does not echo the command that carries the value
            if cmd.command == Command.SET_OUTPUT and "name" in cmd.params:
                outputs[cmd.params["name"]] = cmd.value
                return
        self.emit.log(line, step=n, stream=Stream.STDOUT)


def _same_host(url: str, source: str) -> bool:
    """Whether ``url`` is on the job's own forge: only there may the job's token go by default."""
    a, b = urlsplit(url), urlsplit(source)
    return checkout.is_url(source) and (a.scheme, a.netloc) == (b.scheme, b.netloc)


def run_job(
    request: JobRequest,
    image: Image,
    settings: JobSettings,
    sink: EventSink,
    *,
    cancel: threading.Event | None = None,
) -> Result:
    """Run ``request`` in a fresh VM of ``image``; every event goes to ``sink``; returns the result."""
    return JobRun(request, image, settings, sink, cancel=cancel).run()
