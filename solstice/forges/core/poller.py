"""The forge-neutral poller: take a forge's tasks into the pipeline, report their jobs back.

One thread does everything (pika's BlockingConnection is single-threaded; the forge's calls are
short); the forge itself is a ``Backend`` (backend.py)::

    backend.declare()                        at start, retried while the forge cannot be reached
    restore the tasks of an earlier run      taskstore: Report checkpoints, unpublished requests
    consume <events exchange>.<address>      the jobs' events; settled only after a checkpoint
    loop (every ~0.2 s):
        events -> each task's Report          (in process_events, by _on_events)
        publish the requests not yet out      a task is saved *before* its request is published
        report each task (report_interval,    backend.report: one round of log and state; a
          half of it while new log lines      cancel read from the forge goes to the dispatchers
          wait, so they show sooner)
        save checkpoints, then ack the events they cover
        backend.fetch (fetch_interval)        only with free capacity and no backlog in the
                                              label queues; else backend.declare as keepalive
        forget the tasks fully reported

Why events are acked only after a checkpoint: a poller killed at any moment restarts from its last
checkpoint, and RabbitMQ redelivers every event after it, so rows are rebuilt with the same
indices and the forge drops what it already has: no row lost, none duplicated. While the forge
cannot be reached, rows pile up only to ``MAX_BUFFERED_ROWS``; after that events stay in RabbitMQ
(the consumer's prefetch fills and it stops taking more).

Routing: a job goes to the queue of its label (the one non-generic ``runs-on`` label among the
runner's labels, solstice.model.labels); the poller needs no image catalog.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from solstice.backoff import Backoff
from solstice.config import BrokerConfig
from solstice.metrics import RunnerMetrics
from solstice.model import EventKind, JobEvent, Phase, Result
from solstice.model.labels import queue_labels
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

from .backend import Admission, Backend, Report, Verdict
from .errors import ForgeError, ForgeUnavailable, RegistrationGone, ReportBroken
from .taskstore import Saved, TaskStore

log = logging.getLogger("solstice.forges")

#: A forge shows a runner offline after about a minute without a call; keep well inside it.
CONTACT_AT_LEAST = 30.0
#: Unsent rows a task may hold in memory before its events are left in RabbitMQ.
MAX_BUFFERED_ROWS = 20_000
#: ... and their characters: 20,000 lines of 64 KiB would be over a gigabyte.
MAX_BUFFERED_BYTES = 32 * 1024 * 1024
#: After a cancel was sent, how long the job gets to confirm it before the task is ended here.
CANCEL_GRACE = 60.0
#: Consecutive refusals (not outages) of one task's reports before it is given up.
GIVE_UP_AFTER = 20
#: Seconds between two attempts to publish a request that no queue takes (no dispatcher yet).
REPUBLISH_AFTER = 5.0
#: Unsettled event messages the poller holds (RabbitMQ keeps the rest).
EVENT_PREFETCH = 200
LOOP_WAIT = 0.2


def first_line(job_id: str, label: str) -> str:
    """The poller's first line in a job's forge log: where to look on the host (any spawner)."""
    return (
        f"Solstice CI: job {job_id} for label {label}; `solstice status {job_id}` on the dispatcher's host"
    )


@dataclass
class Active:
    """A task this poller holds until the forge has its whole log and final state."""

    saved: Saved
    deliveries: list[tuple[int, Delivery[tuple[JobEvent, ...]]]] = field(default_factory=list)
    saved_seq: int = -1  # Report.last_seq in the stored checkpoint
    dirty: bool = True
    next_report: float = 0.0
    fresh_rows: bool = False  # log lines fed since the last report
    next_publish: float = 0.0
    refusals: int = 0
    cancel_at: float | None = None
    unroutable_noted: bool = False
    phases: dict[str, float] = field(default_factory=dict)  # phase -> its event's time (metrics)

    @property
    def report(self) -> Report:
        return self.saved.report

    @property
    def key(self) -> str:
        return self.saved.key


class Poller:
    def __init__(
        self,
        broker: BrokerConfig,
        backend: Backend[Any],
        *,
        key: bytes,
        notify: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.settings = backend.settings
        self.address = check_address(backend.address)
        self.store = TaskStore(backend.state_dir / "tasks", key)
        self.notify = notify or (lambda text: None)
        self.clock = clock
        # The job queues whose backlog tells whether the pipeline has room.
        self.queue_labels = queue_labels(backend.labels)
        # Declaring the label queues (docs/queue.md): a job published before any dispatcher
        # started waits in its queue instead of being unroutable.
        self.conn = Connection(
            broker,
            name=f"{backend.forge}-runner {backend.name}",
            labels=self.queue_labels,
            addresses=(self.address,),
        )
        self.consumer = Consumer(self.conn)
        self.publisher = Publisher(self.conn, timeout=10.0)
        self.names = Names(broker)
        self.tasks: dict[str, Active] = {}
        self.by_job: dict[str, Active] = {}
        self.backoff = Backoff(initial=1.0, maximum=self.settings.max_backoff)
        self.forge_down_since: float | None = None
        self.forge_retry_at = 0.0
        self.next_fetch = 0.0
        self.last_contact = 0.0
        self.stopping = False
        self._noted_missing: list[str] = []
        #: Served by the runner's command when [metrics] <forge>_runner is set (docs/metrics.md).
        self.metrics = RunnerMetrics(backend.forge, self.queue_labels, self.settings.capacity)

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
            self.metrics.forge_error("registration_gone")
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
        self.resume()
        self.consumer.consume_event_batches(self.address, self._on_events, prefetch=EVENT_PREFETCH)
        log.info(
            "runner %s (%s): labels %s, capacity %d, events at %s",
            self.backend.name,
            self.backend.url,
            ", ".join(self.backend.labels),
            self.settings.capacity,
            self.names.events_queue(self.address),
        )

    def resume(self) -> None:
        """Track the tasks an earlier run left on disk."""
        for saved in self.store.load_all(self.backend.restore):
            a = self._track(saved)
            a.saved_seq = saved.report.last_seq
            a.dirty = False
            if saved.cancel_sent and not saved.report.finished:
                a.cancel_at = self.clock()
            log.info("task %s: resuming its report (job %s)", saved.key, saved.job_id or "none")

    def stop(self) -> None:
        self.stopping = True

    def close(self) -> None:
        """Close the connections; unsettled events go back to RabbitMQ, jobs keep running (the next
        start resumes reporting them)."""
        self.notify("STOPPING=1")
        for closer in (self.consumer.close, self.publisher.close, self.conn.close, self.backend.close):
            try:
                closer()
            except Exception as exc:  # closing a broken connection: nothing left to do
                log.debug("closing: %s", exc)

    def _declare(self, should_stop: Callable[[], bool]) -> None:
        while True:
            try:
                self.backend.declare()
                self._forge_ok()
                return
            except ForgeUnavailable as exc:
                self._forge_down(exc)
            while self.clock() < self.forge_retry_at:
                self.notify("WATCHDOG=1")
                if self.stopping or should_stop():
                    return
                time.sleep(0.2)

    # --- one round -------------------------------------------------------------------------------

    def round(self) -> None:
        now = self.clock()
        for a in list(self.tasks.values()):
            if a.saved.request is not None and now >= a.next_publish:
                self._publish(a, now)
        for a in list(self.tasks.values()):
            if self.clock() < self.forge_retry_at:
                break
            # New log lines go out half an interval after the last report, not a whole one.
            if now >= a.next_report or (
                a.fresh_rows and now >= a.next_report - self.settings.report_interval / 2
            ):
                self._report(a, now)
        for a in list(self.tasks.values()):
            self._cancel_fallback(a, now)
            self._save(a)
            if a.report.done:
                self._forget(a)
        if not self.stopping and self.clock() >= max(self.forge_retry_at, self.next_fetch):
            self._fetch()
        self._status()

    def running(self) -> int:
        return sum(1 for a in self.tasks.values() if not a.report.finished)

    def held(self) -> int:
        """Tasks that take a slot of the capacity: a job's slot is free once the forge has its final
        state, not when the job ended (the forge would show one task more running than allowed)."""
        return sum(1 for a in self.tasks.values() if not a.report.done)

    def _status(self) -> None:
        forge = (
            "ok"
            if self.forge_down_since is None
            else f"UNREACHABLE for {self.clock() - self.forge_down_since:.0f} s"
        )
        broker = "ok" if self.conn.is_open else "reconnecting"
        self.metrics.round(running=self.running(), capacity=self.settings.capacity)
        self.notify(
            f"WATCHDOG=1\nSTATUS={self.running()}/{self.settings.capacity} tasks; {len(self.tasks)} "
            f"being reported; forge {forge}; broker {broker}"
        )

    # --- the forge's availability -----------------------------------------------------------------

    def _forge_down(self, exc: ForgeUnavailable) -> None:
        now = self.clock()
        delay = self.backoff.next_delay()
        self.metrics.forge_error("unavailable")
        self.metrics.forge_down(delay)
        if self.forge_down_since is None:
            self.forge_down_since = now
            log.warning(
                "the forge at %s cannot be reached (%s); retrying with backoff, jobs keep running",
                self.backend.url,
                exc,
            )
        else:
            log.debug("the forge is still unreachable (%s); next attempt in %.1f s", exc, delay)
        self.forge_retry_at = now + delay

    def _forge_ok(self) -> None:
        now = self.clock()
        if self.forge_down_since is not None:
            log.info(
                "the forge at %s answers again after %.0f s", self.backend.url, now - self.forge_down_since
            )
        self.forge_down_since = None
        self.backoff.reset()
        self.metrics.forge_ok()
        self.forge_retry_at = 0.0
        self.last_contact = now

    # --- taking tasks ----------------------------------------------------------------------------

    def _fetch(self) -> None:
        now = self.clock()
        interval = self.settings.fetch_interval
        self.next_fetch = now + interval
        if self.held() >= self.settings.capacity or not self._pipeline_has_room():
            if now - self.last_contact >= CONTACT_AT_LEAST - interval:
                self._keepalive()
            return
        try:
            tasks = self.backend.fetch()
        except ForgeUnavailable as exc:
            self._forge_down(exc)
            return
        except RegistrationGone:
            raise
        except ForgeError as exc:
            self.metrics.forge_error("refused")
            log.warning("fetching tasks refused: %s", exc)
            self.next_fetch = now + max(interval, 10.0)
            return
        self._forge_ok()
        if tasks:
            self.next_fetch = now  # more may wait: ask again at once while there is room
        for task in tasks:
            if self.backend.task_key(task) in self.tasks:
                continue  # the same task again (a retried request)
            self.accept(self.backend.admit(task, reply_to=self.address))

    def _keepalive(self) -> None:
        """No fetch now (no room) and no task to report: declaring keeps the runner online."""
        try:
            self.backend.declare()
            self._forge_ok()
        except ForgeUnavailable as exc:
            self._forge_down(exc)
        except RegistrationGone:
            raise
        except ForgeError as exc:
            self.metrics.forge_error("refused")
            log.warning("declare refused: %s", exc)

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
            channel, _ = self.conn.channel(self.clock() + 2.0)
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

    def accept(self, admission: Admission) -> None:
        """Track a translated task, saved to disk before anything else can happen to it."""
        request = admission.request
        if admission.verdict is Verdict.REFUSED:
            log.warning("task %s cannot run here: %s", admission.key, admission.reason)
        elif admission.verdict is Verdict.SKIPPED:
            log.info("task %s: skipped (%s)", admission.key, admission.reason)
        if admission.verdict is not Verdict.JOB or request is None:
            saved = Saved(key=admission.key, job_id="", label="", report=admission.report, request=None)
        else:
            admission.report.note(first_line(request.job_id, request.label), time.time())
            saved = Saved(
                key=admission.key,
                job_id=request.job_id,
                label=request.label,
                report=admission.report,
                request=request,
            )
            log.info(
                "task %s: job %s (%s, label %s)",
                admission.key,
                request.job_id,
                request.job.name,
                request.label,
            )
        self._save(self._track(saved), force=True)

    def _track(self, saved: Saved) -> Active:
        a = Active(saved=saved)
        self.tasks[saved.key] = a
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
                log.warning("task %s: %s", a.key, exc)
                a.report.note(f"Waiting for a dispatcher that serves label {request.label!r}", time.time())
                a.dirty = True
            return
        except BrokerError as exc:
            a.next_publish = now + 1.0
            log.warning("task %s: cannot publish its job yet: %s", a.key, exc)
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
        rows = a.report.buffered_rows
        for event in events:
            if event.kind is EventKind.PHASE and event.seq > a.report.last_seq:  # not a repeat
                self._phase(a, event)
            a.report.feed(event)
        a.fresh_rows = a.fresh_rows or a.report.buffered_rows > rows
        # Kept only to be acknowledged: without its events, which the report has now (up to
        # EVENT_PREFETCH deliveries of long lines would otherwise stay in memory twice).
        a.deliveries.append((max(e.seq for e in events), dataclasses.replace(delivery, message=())))
        a.dirty = True
        return None  # settled by _save once a checkpoint covers it

    def _phase(self, a: Active, event: JobEvent) -> None:
        """Boot (QEMU start to SSH) and take (job process start to VM ready) times, from the
        job's own clock: its prepare, boot and ready phase events."""
        a.phases[event.text] = event.time
        if event.text == Phase.READY.value:
            prepare, boot = a.phases.get(Phase.PREPARE.value), a.phases.get(Phase.BOOT.value)
            self.metrics.vm_ready(
                a.saved.label,
                take=None if prepare is None else event.time - prepare,
                boot=None if boot is None else event.time - boot,
                source="warm" if event.message.startswith("warm") else "cold",
            )

    # --- reporting ---------------------------------------------------------------------------------

    def _report(self, a: Active, now: float) -> None:
        a.next_report = now + self.settings.report_interval
        a.fresh_rows = False
        try:
            cancel = self.backend.report(a.report, alive=lambda: self.notify("WATCHDOG=1"))
        except ForgeUnavailable as exc:
            self._forge_down(exc)
            return
        except RegistrationGone:
            raise
        except ReportBroken as exc:
            self.metrics.forge_error("report_broken")
            log.error("task %s: %s; giving up its report", a.key, exc)
            self._abandon(a)
            return
        except ForgeError as exc:
            self.metrics.forge_error("refused")
            a.refusals += 1
            log.warning("task %s: the forge refused a report (%d): %s", a.key, a.refusals, exc)
            if a.refusals >= GIVE_UP_AFTER:
                log.error("task %s: giving up its report after %d refusals", a.key, a.refusals)
                self._abandon(a)
            return
        a.refusals = 0
        a.dirty = True
        self._forge_ok()
        if cancel and not a.saved.cancel_sent:
            self._cancel(a, "cancelled in the forge")

    def _cancel(self, a: Active, reason: str) -> None:
        if a.saved.request is not None or not a.saved.job_id:
            # never published: no dispatcher knows the job, end it here
            a.saved.request = None
            a.report.finish_here(Result.CANCELLED, f"{reason} before it reached a dispatcher", time.time())
        else:
            try:
                self.publisher.publish_cancel(a.saved.job_id, reason)
            except BrokerError as exc:
                log.warning("task %s: cannot send the cancellation yet: %s", a.key, exc)
                return
            log.info("task %s: %s; job %s is being stopped", a.key, reason, a.saved.job_id)
        a.saved.cancel_sent = True
        a.cancel_at = self.clock()
        a.dirty = True
        self._save(a, force=True)

    def _cancel_fallback(self, a: Active, now: float) -> None:
        if a.cancel_at is None or a.report.finished or now - a.cancel_at < CANCEL_GRACE:
            return
        log.warning(
            "task %s: job %s did not confirm its cancellation; ending the task", a.key, a.saved.job_id
        )
        a.report.finish_here(
            Result.CANCELLED,
            f"the job did not confirm its cancellation within {CANCEL_GRACE:.0f} s "
            f"(see `solstice status {a.saved.job_id}` on the dispatcher's host)",
            time.time(),
        )
        a.dirty = True

    def _abandon(self, a: Active) -> None:
        if a.saved.job_id and not a.report.finished and not a.saved.cancel_sent and a.saved.request is None:
            try:
                self.publisher.publish_cancel(
                    a.saved.job_id, "its task can no longer be reported to the forge"
                )
            except BrokerError as exc:
                log.warning("job %s: cannot cancel it: %s", a.saved.job_id, exc)
        self._forget(a)

    # --- checkpoints ---------------------------------------------------------------------------

    def _save(self, a: Active, *, force: bool = False) -> None:
        rep = a.report
        if not force:
            if not a.dirty and rep.last_seq == a.saved_seq:
                return
            if rep.buffered_rows > MAX_BUFFERED_ROWS or rep.buffered_bytes > MAX_BUFFERED_BYTES:
                return  # events stay unsettled in RabbitMQ until the forge takes rows again
        try:
            self.store.save(a.saved)
        except OSError as exc:
            log.error("task %s: cannot save its state (%s); its events stay in RabbitMQ", a.key, exc)
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
        self.store.remove(a.key)
        self.tasks.pop(a.key, None)
        if a.saved.job_id:
            self.by_job.pop(a.saved.job_id, None)
        self.metrics.task_reported(a.saved.label, a.report.result)
        log.info("task %s: reported (%s)", a.key, a.report.result or "unknown")

    def _registration_gone(self, exc: RegistrationGone) -> None:
        log.error("the forge at %s no longer knows this runner: %s", self.backend.url, exc)
        for a in list(self.tasks.values()):
            if a.saved.job_id and a.saved.request is None and not a.report.finished:
                try:
                    self.publisher.publish_cancel(a.saved.job_id, "the runner's registration was deleted")
                except BrokerError as err:
                    log.warning("job %s: cannot cancel it: %s", a.saved.job_id, err)
            self.store.remove(a.key)
        self.tasks.clear()
        self.by_job.clear()
