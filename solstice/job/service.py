"""The service runtime of one job (``solstice job run UUID``, the main process of
solstice-job@UUID.service): find and read its request, open its secrets, run it with the service's
sink and signal handling, and turn the result into the exit status of solstice.dispatch.contract.

The dispatcher starts it (docs/dispatcher.md). The request is ``--request FILE``, else the
credential ``$CREDENTIALS_DIRECTORY/job-request``, else ``<runtime_dir>/requests/UUID.json``. Every
event goes to RabbitMQ at the request's ``reply_to`` (batched, confirmed) and, as a human line, to
stdout, which is the unit's journal.

SIGTERM (``systemctl stop``, the dispatcher's cancellation) cancels the job: a running step is
killed and the remaining steps are skipped; while the VM boots, the boot is abandoned. Either way
the VM is stopped and the job ends ``cancelled`` within a few seconds.

Exit status: 0 success, 1 failure, 3 cancelled, 4 error (infrastructure) -- the job's own final
event was delivered; 5 the events could not be delivered to RabbitMQ. A UsageError (no usable
request or configuration, exit status 2 at the CLI) is raised before any event is sent.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from solstice import config as configmod
from solstice.config import Config
from solstice.errors import SolsticeError
from solstice.job.cancel import Cancellation
from solstice.job.events import Emitter
from solstice.job.mask import Masker
from solstice.job.runner import JobSettings
from solstice.job.sink import Outbox, ServiceSink
from solstice.model import JobRequest, Result
from solstice.model.jobcontract import (
    CREDENTIAL,
    EXIT_CANCELLED,
    EXIT_ERROR,
    EXIT_UNDELIVERED,
    JOB_LOG_ENV,
    RESULT_EXIT,
    canonical_job_id,
    request_file,
)

log = logging.getLogger("solstice.job")


class UsageError(SolsticeError):
    """No usable request or configuration: exit status 2, no events."""


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


#: Turns a request file's bytes into a JobRequest (queue.decode_request); raises a SolsticeError
#: with a short reason, never the body.
Decode = Callable[[bytes], JobRequest]
#: The job's outbox for its events (queue.BatchingEventSink.for_request), None without reply_to.
OutboxFor = Callable[[JobRequest, Config], Outbox | None]


def read_request(job_id: str, explicit: str | None, cfg: Config, decode: Decode) -> JobRequest:
    if canonical_job_id(job_id) is None:
        raise UsageError(f"{job_id!r} is not a job uuid (canonical form)")
    path = find_request(job_id, explicit, cfg)
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the job request {path}: {exc.strerror}") from None
    try:
        request = decode(body)
    except SolsticeError as exc:
        raise UsageError(f"{path}: {getattr(exc, 'reason', exc)}") from None
    if request.job_id != job_id:
        raise UsageError(f"{path} is the request of job {request.job_id}, not {job_id}")
    return request


def host_log(job_id: str, environ: Mapping[str, str] | None = None) -> str:
    """Where this job's host-side log is, for its first log line: the unit's journal under systemd,
    the process spawner's log file, or "" when neither is known."""
    env = os.environ if environ is None else environ
    host = socket.gethostname().split(".")[0]
    if env.get("INVOCATION_ID") or env.get("JOURNAL_STREAM"):
        return f"journalctl -u solstice-job@{job_id} (on {host})"
    if env.get(JOB_LOG_ENV):
        return f"{env[JOB_LOG_ENV]} (on {host})"
    return ""


def prelude_failure(
    sink: ServiceSink, request: JobRequest, result: Result, message: str, where: str = ""
) -> None:
    """The job's whole event stream when it could not even start its VM."""
    emitter = Emitter(request.job_id, sink, Masker([]))
    emitter.job_started(request.job.name)
    if where:
        emitter.log(f"Host-side log: {where}", step=None)
    if result is Result.ERROR:
        emitter.log(f"Error: {message}", step=None)
    emitter.job_finished(result, message)


def run_service_job(
    job_id: str,
    request_path: str | None,
    config_path: str | None,
    *,
    settings: Callable[[Config], JobSettings],
    decode: Decode,
    outbox: OutboxFor,
) -> int:
    """Run job ``job_id`` as the service does; returns the exit status (solstice.dispatch.contract).

    ``settings`` makes the job's settings from the configuration (the CLI's job_settings);
    ``decode`` and ``outbox`` are the pipeline's request codec and event sink, which the CLI
    hands in because the job package does not import the queue (docs/development.md). Raises
    UsageError, before any event, when the request or the configuration is unusable."""
    from solstice.images import Catalog
    from solstice.job.runner import JobRun
    from solstice.secrets import key_path, load_key, unseal

    cancel = threading.Event()
    # Until the sink exists, a SIGTERM only sets the flag.
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    cfg = load_config(config_path)
    request = read_request(job_id, request_path, cfg, decode)
    where = host_log(request.job_id)
    sink = ServiceSink(request, outbox(request, cfg), cancelled=cancel)
    cancellation = Cancellation(sink, cancel)
    cancellation.install()
    try:
        if cancel.is_set():
            prelude_failure(sink, request, Result.CANCELLED, "the job was cancelled", where)
            return EXIT_CANCELLED if sink.close() else EXIT_UNDELIVERED
        try:
            if request.sealed_secrets:
                request = unseal(request, load_key(key_path(cfg.secrets.key_file)))
            image = Catalog.from_config(cfg).get(request.label)
        except SolsticeError as exc:
            log.error("job %s: %s", request.job_id, exc)
            prelude_failure(sink, request, Result.ERROR, str(exc), where)
            return EXIT_ERROR if sink.close() else EXIT_UNDELIVERED
        # A cancelled job's VM gets no powerdown wait (vm.machine).
        job = JobRun(request, image, settings(cfg), sink, cancel=cancel, host_log=where)
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
            prelude_failure(sink, request, Result.CANCELLED, "the job was cancelled", where)
        return EXIT_CANCELLED if sink.close() else EXIT_UNDELIVERED
