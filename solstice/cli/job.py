"""Run one job of the service (solstice job run UUID): the main process of solstice-job@UUID.service.

The dispatcher starts it (docs/dispatcher.md). It reads the sealed JobRequest (``--request FILE``,
else the credential ``$CREDENTIALS_DIRECTORY/job-request``, else
``<runtime_dir>/requests/UUID.json``), opens the secrets with the installation's key, boots the
job's VM and runs its steps. Every event goes to RabbitMQ at the request's ``reply_to`` (batched,
confirmed) and, as a human line, to stdout, which is the unit's journal.

SIGTERM (``systemctl stop``, the dispatcher's cancellation) cancels the job: a running step is
killed and the remaining steps are skipped; while the VM boots, the boot is abandoned. Either way
the VM is stopped and the job ends ``cancelled`` within a few seconds.

Exit status: 0 success, 1 failure, 3 cancelled, 4 error (infrastructure) -- the job's own final
event was delivered; 2 usage or configuration error (no events sent); 5 the events could not be
delivered to RabbitMQ.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from solstice import config as configmod
from solstice.config import Config
from solstice.dispatch.contract import (
    CREDENTIAL,
    EXIT_CANCELLED,
    EXIT_ERROR,
    EXIT_UNDELIVERED,
    EXIT_USAGE,
    RESULT_EXIT,
    canonical_job_id,
    request_file,
)
from solstice.errors import SolsticeError
from solstice.job.events import Emitter
from solstice.job.mask import Masker
from solstice.model import EventKind, JobEvent, JobRequest, Outcome, Phase, Result
from solstice.queue import BatchingEventSink, EventDeliveryError, InvalidMessage, decode_request

from .common import job_settings

log = logging.getLogger("solstice.job")

#: After SIGTERM during the steps: how long the step gets to end before the job is interrupted.
FORCE_AFTER = 4.0
#: How long the job waits at its end for RabbitMQ to confirm its remaining events.
DELIVERY_TIMEOUT = 60.0


class UsageError(SolsticeError):
    """No usable request or configuration: exit status 2, no events."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="job_verb", metavar="COMMAND", required=True)
    run = sub.add_parser(
        "run",
        help="run job UUID: the main process of solstice-job@UUID.service (the dispatcher starts it)",
        allow_abbrev=False,
    )
    run.add_argument("job_id", metavar="UUID")
    # Also after `job run` (the dispatcher appends it there: solstice.dispatch.contract.job_argv);
    # SUPPRESS keeps a `solstice --config FILE job run` from being reset to None.
    run.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="configuration file (as solstice --config)",
    )
    run.add_argument(
        "--request",
        metavar="FILE",
        help=f"the sealed JobRequest (default: $CREDENTIALS_DIRECTORY/{CREDENTIAL}, "
        "else <runtime_dir>/requests/UUID.json)",
    )


# --- shared with stand-in job programs (tests) ---------------------------------------------------


def load_config(config: str | None) -> Config:
    try:
        return configmod.load(Path(config) if config else None)
    except SolsticeError as exc:
        raise UsageError(str(exc), hint=exc.hint) from None


def find_request(job_id: str, explicit: str | None, cfg: Config) -> Path:
    """Where the job's request is: --request, the systemd credential, the runtime directory."""
    if explicit:
        return Path(explicit)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / CREDENTIAL).is_file():
        return Path(creds) / CREDENTIAL
    return request_file(cfg.paths.runtime_dir, job_id)


def read_request(job_id: str, explicit: str | None, cfg: Config) -> JobRequest:
    if canonical_job_id(job_id) is None:
        raise UsageError(f"{job_id!r} is not a job uuid (canonical form)")
    path = find_request(job_id, explicit, cfg)
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the job request {path}: {exc.strerror}") from None
    try:
        request = decode_request(body)
    except InvalidMessage as exc:
        raise UsageError(f"{path}: {exc.reason}") from None
    if request.job_id != job_id:
        raise UsageError(f"{path} is the request of job {request.job_id}, not {job_id}")
    return request


_MARKS = {Outcome.SUCCESS: "✓", Outcome.FAILURE: "✗", Outcome.CANCELLED: "⊘", Outcome.SKIPPED: "-"}


def journal_line(event: JobEvent, label: str) -> str:
    """One event as a line of the job's journal (journald adds the time; no colours)."""
    kind = event.kind
    if kind is EventKind.LOG:
        return event.text
    if kind is EventKind.JOB_STARTED:
        return f"▶ {event.text} on {label} (job {event.job_id})"
    if kind is EventKind.PHASE:
        return f"phase {event.text}" + (f": {event.message}" if event.message else "")
    if kind is EventKind.STEP_STARTED:
        return f"── Step {event.step}: {event.text}"
    if kind is EventKind.STEP_FINISHED:
        mark = _MARKS.get(event.conclusion or Outcome.FAILURE, "?")
        extra = [f"{event.outcome.value}" if event.outcome else "?"]
        if event.exit_code not in (None, 0):
            extra.append(f"exit {event.exit_code}")
        if event.message:
            extra.append(event.message)
        return f"{mark} Step {event.step} ({', '.join(extra)})"
    result = event.result.value if event.result else "?"
    return f"■ {result}" + (f": {event.message}" if event.message else "")


class Journal:
    """The job's stdout (its journal under systemd): one line per event, flushed at most every
    0.1 s by a timer thread, since 20,000 lines a second need not be 20,000 writes."""

    def __init__(self, out: TextIO, label: str, interval: float = 0.1) -> None:
        self.out = out
        self.label = label
        self._lock = threading.Lock()
        self._dirty = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="journal", daemon=True)
        self._thread.start()

    def emit(self, event: JobEvent) -> None:
        line = journal_line(event, self.label)
        with self._lock:
            self.out.write(line + "\n")
            self._dirty = True

    def sync(self) -> None:
        with self._lock:
            if self._dirty:
                self._dirty = False
                try:
                    self.out.flush()
                except (OSError, ValueError):
                    pass

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sync()

    def close(self) -> None:
        self._stop.set()
        self.sync()


class ServiceSink:
    """Every event to the poller (batched; when the request has a ``reply_to``) and as a human
    line to ``out`` (the journal). Text is already masked by the job's Emitter. A JOB_FINISHED
    with result error while the job is being cancelled becomes cancelled."""

    def __init__(
        self,
        request: JobRequest,
        cfg: Config,
        out: TextIO | None = None,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.cancelled = cancelled
        self.journal = Journal(out or sys.stdout, request.label)
        self.queue = (
            BatchingEventSink(cfg.broker, request.reply_to, name=f"job@{request.job_id}")
            if request.reply_to
            else None
        )
        self.final_seen = False
        self.phase = ""
        self.in_emit = False
        self.interrupt_pending = False

    def emit(self, event: JobEvent) -> None:
        if (
            event.kind is EventKind.JOB_FINISHED
            and event.result is Result.ERROR
            and self.cancelled is not None
            and self.cancelled.is_set()
        ):
            # Cancelled while an infrastructure error happened: under systemd, SIGTERM reaches QEMU
            # too (KillMode=control-group), so the guest connection drops as the job is cancelled.
            event = dataclasses.replace(
                event, result=Result.CANCELLED, message=f"the job was cancelled ({event.message})"
            )
        self.in_emit = True
        try:
            if self.queue is not None:
                self.queue.emit(event)
            if event.kind is EventKind.PHASE:
                self.phase = event.text
            elif event.kind is EventKind.JOB_FINISHED:
                self.final_seen = True
            try:
                self.journal.emit(event)
            except (OSError, ValueError):  # stdout is gone; the events still reach the poller
                pass
            if event.kind is EventKind.JOB_FINISHED:
                self.journal.sync()
        finally:
            self.in_emit = False
        if self.interrupt_pending and not self.final_seen:
            self.interrupt_pending = False
            raise KeyboardInterrupt

    def close(self, timeout: float = DELIVERY_TIMEOUT) -> bool:
        """Deliver what is left; False when RabbitMQ did not confirm everything in time."""
        self.journal.close()
        if self.queue is None:
            return True
        try:
            self.queue.close(timeout)
        except EventDeliveryError as exc:
            log.error("%s", exc)
            print(f"solstice: error: {exc}", file=sys.stderr, flush=True)
            return False
        return True


@dataclass
class Cancellation:
    """SIGTERM/SIGINT -> cancel. During the steps the job ends them itself (the step is killed,
    the rest skipped); while the VM boots, or if the steps do not end within FORCE_AFTER, the main
    thread is interrupted (KeyboardInterrupt), which unwinds the job's ExitStack and stops QEMU.
    Never during the teardown, and never inside an event emission."""

    sink: ServiceSink
    event: threading.Event
    armed: bool = False  # the job runs: interrupting it is how it ends quickly
    done: bool = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_force)

    def _on_term(self, signum: int, frame: types.FrameType | None) -> None:
        if self.event.is_set():
            return
        self.event.set()
        with contextlib.suppress(Exception):  # a signal handler may interrupt another write
            name = signal.Signals(signum).name
            print(f"solstice: {name}: cancelling the job", file=sys.stderr, flush=True)
        if self.sink.queue is not None:
            self.sink.queue.stop_waiting()
        if not self.armed or self.done:
            return
        if self.sink.phase == Phase.READY.value:
            main = threading.main_thread().ident
            assert main is not None

            def force() -> None:
                time.sleep(FORCE_AFTER)
                if not self.done:
                    signal.pthread_kill(main, signal.SIGUSR1)

            threading.Thread(target=force, name="cancel-force", daemon=True).start()
        else:
            self._interrupt()

    def _on_force(self, signum: int, frame: types.FrameType | None) -> None:
        if self.event.is_set():
            self._interrupt()

    def _interrupt(self) -> None:
        if self.done or self.sink.final_seen:
            return
        if self.sink.phase in (Phase.TEARDOWN.value, Phase.DONE.value):
            return  # already on its way out; interrupting would only cut the cleanup short
        if self.sink.in_emit:
            self.sink.interrupt_pending = True
            return
        raise KeyboardInterrupt


def _prelude_failure(sink: ServiceSink, request: JobRequest, result: Result, message: str) -> None:
    """The job's whole event stream when it could not even start its VM."""
    emitter = Emitter(request.job_id, sink, Masker([]))
    emitter.job_started(request.job.name)
    if result is Result.ERROR:
        emitter.log(f"Error: {message}", step=None)
    emitter.job_finished(result, message)


def run(args: argparse.Namespace) -> int:
    from solstice.images import Catalog
    from solstice.job.runner import JobRun
    from solstice.secrets import key_path, load_key, unseal

    if not args.debug:
        # pika logs each lost connection at ERROR; the queue layer says it once, as a WARNING.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    cancel = threading.Event()
    # Until the sink exists, a SIGTERM only sets the flag.
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    try:
        cfg = load_config(args.config)
        request = read_request(args.job_id, args.request, cfg)
    except UsageError as exc:
        print(f"solstice job run: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"  ({exc.hint})", file=sys.stderr)
        return EXIT_USAGE
    sink = ServiceSink(request, cfg, cancelled=cancel)
    cancellation = Cancellation(sink, cancel)
    cancellation.install()
    try:
        if cancel.is_set():
            _prelude_failure(sink, request, Result.CANCELLED, "the job was cancelled")
            return EXIT_CANCELLED if sink.close() else EXIT_UNDELIVERED
        try:
            if request.sealed_secrets:
                request = unseal(request, load_key(key_path(cfg.secrets.key_file)))
            image = Catalog.from_config(cfg).get(request.label)
        except SolsticeError as exc:
            log.error("job %s: %s", request.job_id, exc)
            _prelude_failure(sink, request, Result.ERROR, str(exc))
            return EXIT_ERROR if sink.close() else EXIT_UNDELIVERED
        settings = job_settings(cfg)  # a cancelled job's VM gets no powerdown wait (vm.machine)
        job = JobRun(request, image, settings, sink, cancel=cancel)
        cancellation.armed = True
        try:
            result = job.run()
        except KeyboardInterrupt:
            result = Result.CANCELLED
            if not sink.final_seen:
                job.emit.job_finished(Result.CANCELLED, "the job was cancelled")
        finally:
            cancellation.armed = False
            cancellation.done = True
        if result is Result.ERROR and cancel.is_set():
            result = Result.CANCELLED  # as its final event said (ServiceSink.emit)
        return RESULT_EXIT[result] if sink.close() else EXIT_UNDELIVERED
    except KeyboardInterrupt:  # a SIGTERM before the job started
        cancellation.done = True
        if not sink.final_seen:
            _prelude_failure(sink, request, Result.CANCELLED, "the job was cancelled")
        return EXIT_CANCELLED if sink.close() else EXIT_UNDELIVERED


def main(args: argparse.Namespace) -> int:
    if args.job_verb == "run":
        return run(args)
    raise AssertionError(args.job_verb)
