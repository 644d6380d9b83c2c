"""Forgejo/Gitea as a backend of the poller core (solstice.forges.core): the client's calls, the
translation and the Reporter behind the core's ``Backend`` protocol, nothing else."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from solstice import __version__
from solstice.config import Config
from solstice.forges.core.backend import Admission, PollerSettings, Report, Verdict
from solstice.forges.core.userkeys import with_debug_access
from solstice.model.labels import route

from . import messages as m
from .client import Client, Credentials, LogArchived
from .registration import Registration, default_path, load
from .reporter import Reporter, report_rejection, report_skipped
from .translate import Rejected, Skipped, translate

log = logging.getLogger("solstice.forgejo")

VERSION = f"solstice-ci {__version__}"
USER_AGENT = VERSION.replace(" ", "/")
#: UpdateLog requests per task and round (1000 rows each).
LOG_REQUESTS_PER_ROUND = 20


class ForgejoBackend:
    def __init__(
        self,
        cfg: Config,
        registration: Registration,
        *,
        key: bytes,
        state_dir: Path,
        client: Client | None = None,
    ) -> None:
        fcfg = cfg.forgejo
        self.reg = registration
        self.key = key
        self.cancel_on_failure = fcfg.cancel_on_failure
        self.timeout = fcfg.request_timeout
        self.client = client or Client(
            registration.address,
            Credentials(registration.uuid, registration.token),
            timeout=fcfg.request_timeout,
            user_agent=USER_AGENT,
        )
        self.forge = "forgejo"
        self.name = registration.name
        self.url = registration.address
        self.labels = tuple(registration.labels)
        self.address = fcfg.address or f"forgejo-{registration.uuid}"
        self.settings = PollerSettings(
            capacity=fcfg.capacity,
            fetch_interval=fcfg.fetch_interval,
            report_interval=fcfg.report_interval,
            max_backoff=fcfg.max_backoff,
        )
        self.state_dir = state_dir
        self.tasks_version = 0

    def declare(self) -> None:
        self.client.declare(version=VERSION, labels=list(self.labels))

    def fetch(self) -> Sequence[m.Task]:
        resp = self.client.fetch_task(self.tasks_version)
        if resp.tasks_version > self.tasks_version:
            self.tasks_version = resp.tasks_version
        tasks = ([resp.task] if resp.task is not None else []) + list(resp.additional_tasks)
        if tasks:
            self.tasks_version = 0  # so the next FetchTask makes the server look again (§3.3)
        return tasks

    def task_key(self, task: m.Task) -> str:
        return str(task.id)

    def admit(self, task: m.Task, *, reply_to: str) -> Admission:
        result = translate(
            task,
            server_url=self.url,
            secrets_key=self.key,
            resolve_label=lambda runs_on: route(runs_on, self.labels),
            reply_to=reply_to,
        )
        key = self.task_key(task)
        now = time.time()
        if isinstance(result, Rejected):
            report = report_rejection(task.id, result.step_count, result.log_lines(), now)
            return Admission(key, Verdict.REFUSED, report, reason=result.reason)
        if isinstance(result, Skipped):
            report = report_skipped(task.id, result.step_count, result.reason, now)
            return Admission(key, Verdict.SKIPPED, report, reason=result.reason)
        reporter = Reporter(
            task.id, result.step_count, mask=result.mask, cancel_on_failure=self.cancel_on_failure
        )
        request = with_debug_access(
            result.request, f"{self.url.rstrip('/')}/api/v1", timeout=self.timeout, user_agent=USER_AGENT
        )
        return Admission(key, Verdict.JOB, reporter, request=request)

    def report(self, report: Report, *, alive: Callable[[], None]) -> bool:
        """UpdateLog (up to LOG_REQUESTS_PER_ROUND requests), then UpdateTask (§3.5)."""
        assert isinstance(report, Reporter)
        for _ in range(LOG_REQUESTS_PER_ROUND):
            req = report.next_update_log()
            if req is None:
                break
            try:
                resp = self.client.update_log(req)
            except LogArchived:
                log.warning("task %d: the forge closed its log already; the rest is dropped", report.task_id)
                report.on_log_archived()
                break
            report.on_log_ack(resp)
            alive()  # a slow forge must not look like a hung runner
            if resp.ack_index < req.index + len(req.rows):
                break
        req_task = report.next_update_task()
        if req_task is not None:
            report.on_task_ack(self.client.update_task(req_task))
        return report.cancel_requested

    def restore(self, checkpoint: dict[str, Any]) -> Report:
        return Reporter.restore(checkpoint, cancel_on_failure=self.cancel_on_failure)

    def close(self) -> None:
        self.client.close()


def open_backend(cfg: Config, key: bytes) -> ForgejoBackend:
    """The backend of this installation's registration (ConfigError when there is none)."""
    path = default_path(cfg.paths.state_dir, cfg.forgejo.registration_file)
    return ForgejoBackend(cfg, load(path), key=key, state_dir=path.parent)
