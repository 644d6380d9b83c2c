"""The Forgejo runner service: take the forge's tasks into the pipeline, report their jobs back.

One thread does everything (pika's BlockingConnection is single-threaded; the HTTP calls are
short)::

    Declare(labels, version)                 at start, retried while the forge cannot be reached
    restore the tasks of an earlier run      taskstate: Reporter checkpoints, unpublished requests
    consume <events exchange>.<address>      the jobs' events; settled only after a checkpoint
    loop (every ~0.2 s):
        events -> each task's Reporter        (in process_events, by _on_events)
        publish the requests not yet out      a task is saved *before* its request is published
        report each task (report_interval)    UpdateLog, then UpdateTask (§3.5); a cancel read
                                              from the answer goes to the dispatchers (§3.7)
        save checkpoints, then ack the events they cover
        FetchTask (fetch_interval)            only with free capacity and no backlog in the job
                                              queues; tasks_version per §3.3
        forget the tasks fully reported

Why events are acked only after a checkpoint: a runner killed at any moment restarts from its last
checkpoint, and RabbitMQ redelivers every event after it, so rows are rebuilt with the same
indices and the server's ack drops what it already has: no row lost, none duplicated. While the
forge cannot be reached, rows pile up only to ``MAX_BUFFERED_ROWS``; after that events stay in
RabbitMQ (the consumer's prefetch fills and it stops taking more).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from solstice import __version__
from solstice.backoff import Backoff
from solstice.config import Config
from solstice.images import Catalog
from solstice.model import JobEvent, Result
from solstice.queue import (
    ACK,
    BrokerError,
    Connection,
    Consumer,
    Decision,
    Delivery,
    Names,
    Publisher,
    Unroutable,
)
from solstice.queue.topology import check_address

from . import messages as m
from .client import (
    Client,
    Credentials,
    ForgeError,
    ForgeUnavailable,
    LogArchived,
    RegistrationGone,
)
from .registration import Registration
from .reporter import Reporter, ReportError, report_rejection, report_skipped
from .taskstate import Saved, TaskStore
from .translate import Rejected, Skipped, translate

log = logging.getLogger("solstice.forgejo")

VERSION = f"solstice-ci {__version__}"
#: The forge shows a runner offline after a minute without a call (§3.8); keep well inside it.
CONTACT_AT_LEAST = 30.0
#: Unsent rows a task may hold in memory before its events are left in RabbitMQ.
MAX_BUFFERED_ROWS = 20_000
#: After a cancel was sent, how long the job gets to confirm it before the task is ended here.
CANCEL_GRACE = 60.0
#: Consecutive refusals (not outages) of one task's reports before it is given up.
GIVE_UP_AFTER = 20
#: UpdateLog requests per task and round (1000 rows each).
LOG_REQUESTS_PER_ROUND = 20
#: Seconds between two attempts to publish a request that no queue takes (no dispatcher yet).
REPUBLISH_AFTER = 5.0
#: Unsettled event messages the runner holds (RabbitMQ keeps the rest).
EVENT_PREFETCH = 200
LOOP_WAIT = 0.2


@dataclass
class Active:
    """A task this runner holds until the forge has its whole log and final state."""

    saved: Saved
    deliveries: list[tuple[int, Delivery[tuple[JobEvent, ...]]]] = field(default_factory=list)
    saved_seq: int = -1  # Reporter.last_seq in the stored checkpoint
    dirty: bool = True
    next_report: float = 0.0
    next_publish: float = 0.0
    refusals: int = 0
    cancel_at: float | None = None
    unroutable_noted: bool = False

    @property
    def reporter(self) -> Reporter:
        return self.saved.reporter

    @property
    def task_id(self) -> int:
        return self.saved.task_id


class RunnerService:
    def __init__(
        self,
        cfg: Config,
        registration: Registration,
        *,
        key: bytes,
        state_dir: Path,
        catalog: Catalog | None = None,
        client: Client | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.fcfg = cfg.forgejo
        self.reg = registration
        self.key = key
        self.catalog = catalog or Catalog.from_config(cfg)
        self.client = client or Client(
            registration.address,
            Credentials(registration.uuid, registration.token),
            timeout=self.fcfg.request_timeout,
            user_agent=VERSION.replace(" ", "/"),
        )
        self.address = check_address(self.fcfg.address or f"forgejo-{registration.uuid}")
        self.store = TaskStore(state_dir / "tasks", key)
        self.notify = notify or (lambda text: None)
        # The job queues whose backlog tells whether the pipeline has room (canonical labels).
        self.queue_labels = sorted(
            {c for c in (self.catalog.canonical(x) for x in registration.labels) if c is not None}
        )
        # Declaring the label queues (docs/queue.md): a job published before any dispatcher
        # started waits in its queue instead of being unroutable.
        self.conn = Connection(
            cfg.broker,
            name=f"forgejo-runner {registration.name}",
            labels=self.queue_labels,
            addresses=(self.address,),
        )
        self.consumer = Consumer(self.conn)
        self.publisher = Publisher(self.conn, timeout=10.0)
        self.names = Names(cfg.broker)
        self.tasks: dict[int, Active] = {}
        self.by_job: dict[str, Active] = {}
        self.tasks_version = 0
        self.backoff = Backoff(initial=1.0, maximum=self.fcfg.max_backoff)
        self.forge_down_since: float | None = None
        self.forge_retry_at = 0.0
        self.next_fetch = 0.0
        self.last_contact = 0.0
        self.stopping = False
        self._noted_missing: list[str] = []

    # --- life cycle ------------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Until ``stop()`` (or ``should_stop()``). Raises RegistrationGone when the forge no longer
        knows this runner (after cancelling the jobs it cannot report any more)."""
        try:
            self.start(should_stop)
            while not (self.stopping or should_stop()):
                self.consumer.process_events(LOOP_WAIT)
                self.round()
        except RegistrationGone as exc:
            self._registration_gone(exc)
            raise
        finally:
            for a in self.tasks.values():
                self._save(a, force=True)

    def start(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        # READY at once: a forge that is down at start is a state to wait out (and to show in
        # STATUS), not a failed start for systemd to restart again and again.
        self.notify("READY=1\nSTATUS=declaring labels to the forge")
        self._declare(should_stop)
        for saved in self.store.load_all(cancel_on_failure=self.fcfg.cancel_on_failure):
            a = self._track(saved)
            a.saved_seq = saved.reporter.last_seq
            a.dirty = False
            if saved.cancel_sent and not saved.reporter.finished:
                a.cancel_at = time.monotonic()
            log.info("task %d: resuming its report (job %s)", saved.task_id, saved.job_id or "none")
        self.consumer.consume_event_batches(self.address, self._on_events, prefetch=EVENT_PREFETCH)
        log.info(
            "forgejo runner %s (%s): labels %s, capacity %d, events at %s",
            self.reg.name,
            self.reg.address,
            ", ".join(self.reg.labels),
            self.fcfg.capacity,
            self.names.events_queue(self.address),
        )

    def stop(self) -> None:
        self.stopping = True

    def close(self) -> None:
        """Close the connections; unsettled events go back to RabbitMQ, jobs keep running (the next
        start resumes reporting them)."""
        self.notify("STOPPING=1")
        for closer in (self.consumer.close, self.publisher.close, self.conn.close, self.client.close):
            try:
                closer()
            except Exception as exc:  # closing a broken connection: nothing left to do
                log.debug("closing: %s", exc)

    def _declare(self, should_stop: Callable[[], bool]) -> None:
        labels = list(self.reg.labels)
        while True:
            try:
                self.client.declare(version=VERSION, labels=labels)
                self._forge_ok()
                return
            except ForgeUnavailable as exc:
                self._forge_down(exc)
            while time.monotonic() < self.forge_retry_at:
                self.notify("WATCHDOG=1")
                if self.stopping or should_stop():
                    return
                time.sleep(0.2)

    # --- one round -------------------------------------------------------------------------------

    def round(self) -> None:
        now = time.monotonic()
        for a in list(self.tasks.values()):
            if a.saved.request is not None and now >= a.next_publish:
                self._publish(a, now)
        for a in list(self.tasks.values()):
            if time.monotonic() < self.forge_retry_at:
                break
            if now >= a.next_report:
                self._report(a, now)
        for a in list(self.tasks.values()):
            self._cancel_fallback(a, now)
            self._save(a)
            if a.reporter.done:
                self._forget(a)
        if not self.stopping and time.monotonic() >= max(self.forge_retry_at, self.next_fetch):
            self._fetch()
        self._status()

    def _status(self) -> None:
        running = sum(1 for a in self.tasks.values() if not a.reporter.finished)
        forge = (
            "ok"
            if self.forge_down_since is None
            else f"UNREACHABLE for {time.monotonic() - self.forge_down_since:.0f} s"
        )
        broker = "ok" if self.conn.is_open else "reconnecting"
        self.notify(
            f"WATCHDOG=1\nSTATUS={running}/{self.fcfg.capacity} tasks; {len(self.tasks)} being "
            f"reported; forge {forge}; broker {broker}"
        )

    # --- the forge's availability -----------------------------------------------------------------

    def _forge_down(self, exc: ForgeUnavailable) -> None:
        now = time.monotonic()
        delay = self.backoff.next_delay()
        if self.forge_down_since is None:
            self.forge_down_since = now
            log.warning(
                "the forge at %s cannot be reached (%s); retrying with backoff, jobs keep running",
                self.reg.address,
                exc,
            )
        else:
            log.debug("the forge is still unreachable (%s); next attempt in %.1f s", exc, delay)
        self.forge_retry_at = now + delay

    def _forge_ok(self) -> None:
        now = time.monotonic()
        if self.forge_down_since is not None:
            log.info(
                "the forge at %s answers again after %.0f s", self.reg.address, now - self.forge_down_since
            )
        self.forge_down_since = None
        self.backoff.reset()
        self.forge_retry_at = 0.0
        self.last_contact = now

    # --- taking tasks ----------------------------------------------------------------------------

    def _running(self) -> int:
        return sum(1 for a in self.tasks.values() if not a.reporter.finished)

    def _fetch(self) -> None:
        now = time.monotonic()
        interval = self.fcfg.fetch_interval
        self.next_fetch = now + interval
        if self._running() >= self.fcfg.capacity or not self._pipeline_has_room():
            if now - self.last_contact >= CONTACT_AT_LEAST - interval:
                self._keepalive()
            return
        try:
            resp = self.client.fetch_task(self.tasks_version)
        except ForgeUnavailable as exc:
            self._forge_down(exc)
            return
        except RegistrationGone:
            raise
        except ForgeError as exc:
            log.warning("FetchTask refused: %s", exc)
            self.next_fetch = now + max(interval, 10.0)
            return
        self._forge_ok()
        if resp.tasks_version > self.tasks_version:
            self.tasks_version = resp.tasks_version
        tasks = ([resp.task] if resp.task is not None else []) + list(resp.additional_tasks)
        if tasks:
            self.tasks_version = 0  # so the next FetchTask makes the server look again (§3.3)
            self.next_fetch = now  # more may wait: ask again at once while there is room
        for task in tasks:
            if task.id in self.tasks:
                continue  # the same task again (a retried request key, §1.2)
            self._accept(task)

    def _keepalive(self) -> None:
        """No FetchTask now (no room) and no task to report: Declare keeps the runner online."""
        try:
            self.client.declare(version=VERSION, labels=list(self.reg.labels))
            self._forge_ok()
        except ForgeUnavailable as exc:
            self._forge_down(exc)
        except RegistrationGone:
            raise
        except ForgeError as exc:
            log.warning("Declare refused: %s", exc)

    def _pipeline_has_room(self) -> bool:
        """No job waits in this runner's label queues: the dispatchers have capacity. (A task
        fetched now would otherwise wait here instead of being free for another runner.) A label
        whose queue no dispatcher declared yet does not count; with none declared at all, no task
        is taken."""
        if not self.queue_labels:
            return True
        backlog, found, missing = 0, 0, []
        for label in self.queue_labels:
            count = self._queue_depth(self.names.job_queue(label))
            if count is None:
                missing.append(label)
            else:
                found += 1
                backlog += count
        if missing and missing != self._noted_missing:
            log.warning(
                "no dispatcher has declared the job queue of label(s) %s (yet); %s",
                ", ".join(missing),
                "taking no tasks" if not found else "tasks for them wait in this runner",
            )
        self._noted_missing = missing
        return found > 0 and backlog == 0

    def _queue_depth(self, queue: str) -> int | None:
        """Ready messages in ``queue``; None when it does not exist or the broker is away."""
        try:
            channel, _ = self.conn.channel(time.monotonic() + 2.0)
        except BrokerError:
            return None
        try:
            return int(channel.queue_declare(queue=queue, passive=True).method.message_count)
        except Exception:  # 404 (the broker closes the channel), or the link broke
            return None
        finally:
            try:
                if channel.is_open:
                    channel.close()
            except Exception:  # a channel the broker closed cannot be closed again
                pass

    def _accept(self, task: m.Task) -> None:
        result = translate(
            task,
            server_url=self.reg.address,
            secrets_key=self.key,
            resolve_label=self.catalog.resolve,
            reply_to=self.address,
        )
        now = time.time()
        if isinstance(result, Rejected):
            log.warning("task %d cannot run here: %s", task.id, result.reason)
            reporter = report_rejection(task.id, result.step_count, result.log_lines(), now)
            saved = Saved(task_id=task.id, job_id="", label="", reporter=reporter, request=None)
        elif isinstance(result, Skipped):
            log.info("task %d: skipped (%s)", task.id, result.reason)
            reporter = report_skipped(task.id, result.step_count, result.reason, now)
            saved = Saved(task_id=task.id, job_id="", label="", reporter=reporter, request=None)
        else:
            request = result.request
            reporter = Reporter(
                task.id,
                result.step_count,
                mask=result.mask,
                cancel_on_failure=self.fcfg.cancel_on_failure,
            )
            reporter.note(
                f"Solstice CI: job {request.job_id} in a fresh {request.label} VM "
                f"(on its host: journalctl -u solstice-job@{request.job_id})",
                now,
            )
            saved = Saved(
                task_id=task.id,
                job_id=request.job_id,
                label=request.label,
                reporter=reporter,
                request=request,
            )
            log.info(
                "task %d: job %s (%s, label %s)", task.id, request.job_id, request.job.name, request.label
            )
        a = self._track(saved)
        self._save(a, force=True)  # known on disk before anything else can happen to it

    def _track(self, saved: Saved) -> Active:
        a = Active(saved=saved)
        self.tasks[saved.task_id] = a
        if saved.job_id:
            self.by_job[saved.job_id] = a
        return a

    def _publish(self, a: Active, now: float) -> None:
        request = a.saved.request
        assert request is not None
        try:
            self.publisher.publish_job(request)
        except Unroutable as exc:
            a.next_publish = now + REPUBLISH_AFTER
            if not a.unroutable_noted:
                a.unroutable_noted = True
                log.warning("task %d: %s", a.task_id, exc)
                a.reporter.note(f"Waiting for a dispatcher that serves label {request.label!r}", time.time())
                a.dirty = True
            return
        except BrokerError as exc:
            a.next_publish = now + 1.0
            log.warning("task %d: cannot publish its job yet: %s", a.task_id, exc)
            return
        a.saved.request = None
        a.dirty = True
        self._save(a, force=True)

    # --- events ------------------------------------------------------------------------------------

    def _on_events(self, delivery: Delivery[tuple[JobEvent, ...]]) -> Decision | None:
        events = delivery.message
        if not events:
            return ACK
        a = self.by_job.get(events[0].job_id)
        if a is None:
            # A job whose task is fully reported (a late synthetic event), or not this runner's.
            log.debug("events of job %s, which no task of this runner waits for", events[0].job_id)
            return ACK
        for event in events:
            a.reporter.feed(event)
        a.deliveries.append((max(e.seq for e in events), delivery))
        a.dirty = True
        return None  # settled by _save once a checkpoint covers it

    # --- reporting ---------------------------------------------------------------------------------

    def _report(self, a: Active, now: float) -> None:
        rep = a.reporter
        a.next_report = now + self.fcfg.report_interval
        try:
            for _ in range(LOG_REQUESTS_PER_ROUND):
                req = rep.next_update_log()
                if req is None:
                    break
                try:
                    resp = self.client.update_log(req)
                except LogArchived:
                    log.warning("task %d: the forge closed its log already; the rest is dropped", a.task_id)
                    rep.on_log_archived()
                    break
                rep.on_log_ack(resp)
                self.notify("WATCHDOG=1")  # a slow forge must not look like a hung runner
                if resp.ack_index < req.index + len(req.rows):
                    break
            req_task = rep.next_update_task()
            if req_task is not None:
                rep.on_task_ack(self.client.update_task(req_task))
        except ForgeUnavailable as exc:
            self._forge_down(exc)
            return
        except RegistrationGone:
            raise
        except ReportError as exc:
            log.error("task %d: %s; giving up its report", a.task_id, exc)
            self._abandon(a)
            return
        except ForgeError as exc:
            a.refusals += 1
            log.warning("task %d: the forge refused a report (%d): %s", a.task_id, a.refusals, exc)
            if a.refusals >= GIVE_UP_AFTER:
                log.error("task %d: giving up its report after %d refusals", a.task_id, a.refusals)
                self._abandon(a)
            return
        a.refusals = 0
        a.dirty = True
        self._forge_ok()
        if rep.cancel_requested and not a.saved.cancel_sent:
            self._cancel(a, "cancelled in the forge")

    def _cancel(self, a: Active, reason: str) -> None:
        if a.saved.request is not None or not a.saved.job_id:
            # never published: no dispatcher knows the job, end it here
            a.saved.request = None
            a.reporter.finish_here(Result.CANCELLED, f"{reason} before it reached a dispatcher", time.time())
        else:
            try:
                self.publisher.publish_cancel(a.saved.job_id, reason)
            except BrokerError as exc:
                log.warning("task %d: cannot send the cancellation yet: %s", a.task_id, exc)
                return
            log.info("task %d: %s; job %s is being stopped", a.task_id, reason, a.saved.job_id)
        a.saved.cancel_sent = True
        a.cancel_at = time.monotonic()
        a.dirty = True
        self._save(a, force=True)

    def _cancel_fallback(self, a: Active, now: float) -> None:
        if a.cancel_at is None or a.reporter.finished or now - a.cancel_at < CANCEL_GRACE:
            return
        log.warning(
            "task %d: job %s did not confirm its cancellation; ending the task", a.task_id, a.saved.job_id
        )
        a.reporter.finish_here(
            Result.CANCELLED,
            f"the job did not confirm its cancellation within {CANCEL_GRACE:.0f} s "
            f"(see journalctl -u solstice-job@{a.saved.job_id} on its host)",
            time.time(),
        )
        a.dirty = True

    def _abandon(self, a: Active) -> None:
        if (
            a.saved.job_id
            and not a.reporter.finished
            and not a.saved.cancel_sent
            and a.saved.request is None
        ):
            try:
                self.publisher.publish_cancel(
                    a.saved.job_id, "its task can no longer be reported to the forge"
                )
            except BrokerError as exc:
                log.warning("job %s: cannot cancel it: %s", a.saved.job_id, exc)
        self._forget(a)

    # --- checkpoints ---------------------------------------------------------------------------

    def _save(self, a: Active, *, force: bool = False) -> None:
        rep = a.reporter
        if not force:
            if not a.dirty and rep.last_seq == a.saved_seq:
                return
            if rep.buffered_rows > MAX_BUFFERED_ROWS:
                return  # events stay unsettled in RabbitMQ until the forge takes rows again
        try:
            self.store.save(a.saved)
        except OSError as exc:
            log.error("task %d: cannot save its state (%s); its events stay in RabbitMQ", a.task_id, exc)
            return
        a.saved_seq = rep.last_seq
        a.dirty = False
        keep = []
        for seq, delivery in a.deliveries:
            if seq <= a.saved_seq:
                self.consumer.settle(delivery, ACK)  # False: channel gone, it comes again (deduped)
            else:
                keep.append((seq, delivery))
        a.deliveries = keep

    def _forget(self, a: Active) -> None:
        for _, delivery in a.deliveries:
            self.consumer.settle(delivery, ACK)
        a.deliveries = []
        self.store.remove(a.task_id)
        self.tasks.pop(a.task_id, None)
        if a.saved.job_id:
            self.by_job.pop(a.saved.job_id, None)
        log.info("task %d: reported (%s)", a.task_id, a.reporter.s.result or "unknown")

    def _registration_gone(self, exc: RegistrationGone) -> None:
        log.error("the forge at %s no longer knows this runner: %s", self.reg.address, exc)
        for a in list(self.tasks.values()):
            if a.saved.job_id and a.saved.request is None and not a.reporter.finished:
                try:
                    self.publisher.publish_cancel(a.saved.job_id, "the runner's registration was deleted")
                except BrokerError as err:
                    log.warning("job %s: cannot cancel it: %s", a.saved.job_id, err)
            self.store.remove(a.task_id)
        self.tasks.clear()
        self.by_job.clear()
