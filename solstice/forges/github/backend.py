"""GitHub as a backend of the poller core (solstice.forges.core): the runner protocol's calls, the
translation and the Reporter behind the core's ``Backend`` protocol.

How the broker's long-poll fits the core's loop (which must not block for long: it reports running
jobs every few seconds and pings the systemd watchdog): the poll runs on its own thread
(listener.py) into a bounded inbox; ``declare`` (the core's keepalive), ``fetch`` and ``report``
drain the inbox on the loop's thread, so acknowledging, acquiring, cancelling and migrating all
happen there, each a short call. The session is created by the first ``declare``, so a session
conflict at start is retried by the core's backoff like an outage (with a clear log line).

Per job (``report``): renew the lease every ``RENEW_EVERY`` s (§6.3; a lost lease stops the job), the
finished steps' logs (signed URL, PUT, metadata, §7.1), the step list when it changed, then at the
end the job log and ``completejob`` (§6.4).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from solstice import __version__
from solstice.config import Config, GithubConfig
from solstice.errors import ConfigError, SolsticeError
from solstice.forges.core.backend import Admission, PollerSettings, Report, Verdict
from solstice.forges.core.errors import ForgeError, ForgeUnavailable, RegistrationGone
from solstice.forges.core.userkeys import with_debug_access
from solstice.model.labels import queue_labels

from . import auth
from . import messages as m
from .client import DEFAULT_RUNNER_VERSION, JobClient, RunnerClient, RunnerScope, owner_name
from .errors import JobGone, LeaseLost, SessionConflict
from .listener import Listener
from .registration import Registration, default_path, load
from .reporter import Reporter
from .translate import Refused, translate

log = logging.getLogger("solstice.github")

USER_AGENT = f"solstice-ci/{__version__}"
#: Job requests held between two fetches (the listener's inbox is bounded too).
MAX_PENDING = 16


def the_label(labels: Sequence[str]) -> str:
    """The one image label of a GitHub runner: the job message does not say which of several
    labels GitHub matched, so a runner serves exactly one (its queue)."""
    found = queue_labels(labels)
    if len(found) != 1:
        raise ConfigError(
            f"a GitHub runner serves exactly one image label; this one has {', '.join(found) or 'none'}",
            hint="register one runner per image label (generic labels such as self-hosted may be added)",
        )
    return found[0]


class GitHubBackend:
    def __init__(self, registration: Registration, g: GithubConfig, key: bytes, state_dir: Path) -> None:
        self.reg = registration
        self.key = key
        self.clock = time.monotonic
        self.version = g.runner_version or DEFAULT_RUNNER_VERSION
        self.timeout = g.request_timeout
        self.tokens = auth.TokenSource(registration.credentials, registration.key, timeout=g.request_timeout)
        self.client = self._runner_client()
        self.forge = "github"
        self.name = registration.settings.agent_name
        self.url = registration.settings.github_url
        self.labels = tuple(registration.labels)
        self.label = the_label(self.labels)
        self.address = g.address or f"github-{registration.settings.agent_id}"
        self.ephemeral = registration.ephemeral
        self.settings = PollerSettings(
            capacity=1 if self.ephemeral else g.capacity,
            fetch_interval=g.fetch_interval,
            report_interval=g.report_interval,
            max_backoff=g.max_backoff,
        )
        self.state_dir = state_dir
        self.owner = owner_name(socket.gethostname(), os.getpid())
        self.max_backoff = g.max_backoff
        self.renew_every = g.lease_renewal
        self.listener: Listener | None = None
        self.pending: deque[m.RunnerJobRequest] = deque()
        self.reports: dict[str, Reporter] = {}  # GitHub job id -> its live report
        self.clients: dict[str, JobClient] = {}
        self.renewed: dict[str, float] = {}
        self.jobs_taken = 0
        self.exhausted = False  # ephemeral/JIT: its one job is over
        self.fatal: ForgeError | None = None  # stops the runner (version too old)
        self.shutdown = ""

    def _runner_client(self) -> RunnerClient:
        return RunnerClient(
            self.reg.settings,
            self.tokens,
            version=self.version,
            timeout=self.timeout,
            user_agent=USER_AGENT,
        )

    # --- the core's calls ------------------------------------------------------------------------

    def declare(self) -> None:
        if self.listener is None:
            self._open_session()
        else:
            self._drain()

    def fetch(self) -> Sequence[m.AgentJobRequestMessage]:
        self._drain()
        jobs = []
        while self.pending and not self.exhausted:
            if self.ephemeral and self.jobs_taken:
                self.pending.clear()  # one job per ephemeral runner (GitHub sends no second)
                break
            ref = self.pending.popleft()
            job = self._take(ref)
            if job is not None:
                jobs.append(job)
        self._set_status(len(jobs))
        return jobs

    def task_key(self, task: m.AgentJobRequestMessage) -> str:
        return task.job_id

    def admit(self, task: m.AgentJobRequestMessage, *, reply_to: str) -> Admission:
        result = translate(
            task, github_url=self.url, label=self.label, secrets_key=self.key, reply_to=reply_to
        )
        steps = [(s.external_id, s.name) for s in result.steps]
        try:
            token = task.system_connection.access_token
            mask = (*result.mask, token) if not isinstance(result, Refused) else (*task.secret_values, token)
            report = Reporter.for_job(task, steps, mask=mask, token=token, spool_dir=self.state_dir / "logs")
        except m.CodecError as exc:
            # no run/results service to report to: nothing can be said to GitHub (it times the job out)
            log.error("job %s cannot be reported (%s); leaving it", task.job_id, exc)
            gone = Reporter(task.plan.plan_id, task.job_id, "", "", "", [], finished=True, done=True)
            return Admission(task.job_id, Verdict.REFUSED, gone, reason=str(exc))
        self.reports[task.job_id] = report
        if isinstance(result, Refused):
            report.refuse(result.reason, result.details, time.time())
            return Admission(task.job_id, Verdict.REFUSED, report, reason=result.reason)
        request = with_debug_access(
            result.request,
            RunnerScope.from_url(self.url).api_url,
            timeout=self.timeout,
            user_agent=USER_AGENT,
        )
        return Admission(task.job_id, Verdict.JOB, report, request=request)

    def report(self, report: Report, *, alive: Callable[[], None]) -> bool:
        assert isinstance(report, Reporter)
        self._drain()
        if report.done:
            return False
        jc = self._job_client(report)
        try:
            self._renew(report, jc)
            for target, lines in report.logs_to_upload():
                jc.upload_log(target, lines)
                report.log_uploaded(target)
                alive()  # a slow results service must not look like a hung runner
            whole = report.job_log()
            if whole is not None:
                jc.upload_log(*whole)
                report.job_log_sent()
                alive()
            update = report.steps_update(time.time())
            if update is not None:
                jc.update_steps(update)
                report.steps_sent()
            done = report.completion()
            if done is not None:
                jc.complete(done)
                report.completed()
                self._forget(report)
                self._set_status()
                log.info("job %s: completed as %s", report.job_id, done.conclusion.value)
        except LeaseLost as exc:
            report.lose_lease(str(exc), time.time())
            if report.finished:
                log.warning(
                    "job %s: GitHub no longer holds it (%s); its report ends here", report.job_id, exc
                )
                report.completed()
                self._forget(report)
        except m.CodecError as exc:
            raise ForgeError(str(exc)) from None
        return report.cancel_requested

    def restore(self, checkpoint: dict[str, Any]) -> Report:
        report = Reporter.restore(checkpoint)
        if not report.done:
            self.reports[report.job_id] = report
            self.jobs_taken += 1
        return report

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            try:
                self.client.delete_session()  # §9: may 401 once the server removed an ephemeral runner
            except (ForgeError, SolsticeError) as exc:
                log.debug("deleting the broker session: %s", exc)
        for jc in self.clients.values():
            jc.close()
        self.client.close()

    def should_stop(self) -> bool:
        """The runner's loop ends: its one job is done (ephemeral/JIT), or it cannot go on."""
        if self.ephemeral and self.jobs_taken and not self.reports:
            self.exhausted = True
        return self.exhausted or bool(self.shutdown)

    # --- the broker --------------------------------------------------------------------------------

    def _open_session(self) -> None:
        try:
            session = self.client.create_session(self.owner)
        except SessionConflict as exc:
            # §5.1: the official runner retries for 4 min; a service should wait for the other
            # process (a second runner with this registration, or a session not yet expired).
            log.warning(
                "another process holds the broker session of runner %r (%s); is a second "
                "`solstice github-runner run` using this registration? Retrying with backoff",
                self.name,
                exc,
            )
            raise ForgeUnavailable(f"session conflict: {exc}", code="SessionConflict") from None
        log.info("broker session %s opened at %s", session.session_id, self.client.broker)
        self.listener = Listener(self._runner_client(), session, self.owner, max_backoff=self.max_backoff)
        self.listener.start()

    def _drain(self) -> None:
        if self.listener is None:
            return
        for message in self.listener.drain():
            self._on_message(message)
        fatal = self.listener.fatal
        if fatal is None:
            return
        if isinstance(fatal, RegistrationGone):
            if self.ephemeral and self.jobs_taken:
                self.exhausted = True  # GitHub removes an ephemeral runner after its job (§3.6)
                return
            raise fatal
        self.fatal = fatal

    def _on_message(self, message: m.TaskAgentMessage) -> None:
        try:
            body = m.decode_body(message)
        except m.CodecError as exc:
            log.warning("broker message %d cannot be read: %s", message.message_id, exc)
            return
        if isinstance(body, m.RunnerJobRequest):
            if len(self.pending) < MAX_PENDING:
                self.pending.append(body)
            else:
                log.warning(
                    "job request %s left for another runner: too many waiting", body.runner_request_id
                )
        elif isinstance(body, m.JobCancellation):
            report = self.reports.get(body.job_id)
            if report is not None:
                log.info("job %s: cancelled in GitHub", body.job_id)
                report.request_cancel()
        elif isinstance(body, m.BrokerMigration):
            log.info("the broker moved to %s", body.broker_base_url)
            self.client.migrate(body.broker_base_url)
            if self.listener is not None:
                self.listener.client.migrate(body.broker_base_url)
        elif isinstance(body, m.ForceTokenRefresh):
            self.tokens.invalidate()
        elif isinstance(body, m.RunnerRefresh):
            log.info(
                "GitHub offers runner version %s; Solstice does not self-update (set [github] "
                "runner_version when GitHub refuses the reported one)",
                body.target_version,
            )
        elif isinstance(body, m.RunnerShutdown):
            log.warning("GitHub asks this runner to shut down (%s)", body.reason or "no reason given")
            self.shutdown = body.reason or "shutdown requested"
        elif isinstance(body, m.RunnerRefreshConfig):
            log.info("ignoring a runner configuration refresh (%s)", body.config_type)
        else:
            log.debug("ignoring broker message type %s", message.message_type)

    def _set_status(self, coming: int = 0) -> None:
        """Busy on the long-poll while the runner is full (R polls Busy while it runs its job, §9)."""
        if self.listener is not None:
            running = coming + sum(1 for r in self.reports.values() if not r.finished)
            full = running >= self.settings.capacity
            self.listener.status = m.RunnerStatus.BUSY if full else m.RunnerStatus.ONLINE

    def _take(self, ref: m.RunnerJobRequest) -> m.AgentJobRequestMessage | None:
        assert self.listener is not None
        if ref.should_acknowledge:
            try:  # §5.3: best effort, before acquiring
                self.client.acknowledge(self.listener.session.session_id, ref.runner_request_id)
            except JobGone as exc:
                log.info("job request %s: gone before acknowledging (%s)", ref.runner_request_id, exc)
                return None
            except ForgeError as exc:
                log.debug("acknowledge %s: %s", ref.runner_request_id, exc)
        try:
            job = self.client.acquire_job(ref)
        except JobGone as exc:
            log.info(
                "job request %s: another runner has it, or it is no more (%s)", ref.runner_request_id, exc
            )
            if self.ephemeral:
                self.exhausted = True  # §12: an ephemeral runner exits instead of looping
            return None
        self.jobs_taken += 1
        log.info("acquired job %s (%s)", job.job_id, job.job_display_name)
        return job

    # --- one job's calls ---------------------------------------------------------------------------

    def _job_client(self, report: Reporter) -> JobClient:
        jc = self.clients.get(report.job_id)
        if jc is None:
            s = report
            endpoint = m.ServiceEndpoint(
                name=m.SYSTEM_CONNECTION,
                url=s.run_url,
                parameters={"AccessToken": report.token},
                data={"ResultsServiceUrl": s.results_url},
            )
            job = m.AgentJobRequestMessage(
                plan=m.PlanReference(plan_id=s.plan_id),
                job_id=s.job_id,
                job_display_name="",
                job_name="",
                request_id=0,
                endpoints=(endpoint,),
            )
            jc = JobClient(job, timeout=self.timeout, user_agent=USER_AGENT)
            self.clients[report.job_id] = jc
        return jc

    def _renew(self, report: Reporter, jc: JobClient) -> None:
        if report.lease_lost:
            return
        now = self.clock()
        last = self.renewed.get(report.job_id)
        if last is not None and now - last < self.renew_every:
            return
        jc.renew()
        self.renewed[report.job_id] = now

    def _forget(self, report: Reporter) -> None:
        self.reports.pop(report.job_id, None)
        self.renewed.pop(report.job_id, None)
        jc = self.clients.pop(report.job_id, None)
        if jc is not None:
            jc.close()


def open_backend(cfg: Config, key: bytes) -> GitHubBackend:
    """The backend of this installation's registration (ConfigError when there is none)."""
    path = default_path(cfg.paths.state_dir)
    return GitHubBackend(load(path), cfg.github, key, path.parent)
