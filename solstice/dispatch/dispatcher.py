"""The dispatcher loop: JobRequests in, one unit per job, every job to exactly one end.

One thread does everything (pika's BlockingConnection is single-threaded): ``process_events``
runs the handlers for arriving jobs and cancellations, then each round follows the running units,
finishes the ended ones, adjusts the prefetch to the free capacity and pings the watchdog.

Per JobRequest delivery (``_on_job``)::

    record_job(request, host)      committed in PostgreSQL (idempotent on the uuid)
    claim(job_id, host, unit)      accepted -> starting: exactly one host wins, whatever the queue did
    write <runtime_dir>/requests/<uuid>.json (0600, sealed)
    ack                            only now does RabbitMQ forget the job
    spawner.start(...)             the unit; then starting -> running

A redelivered or duplicated request finds the row and is acked without a second unit (starting,
running or ended), or is claimed if nobody did yet (accepted: the host that recorded it died
before its claim). PostgreSQL unavailable: the delivery goes back to the queue (REQUEUE) and the
dispatcher takes no jobs (prefetch 0) until it has reconnected; it keeps following its units and
finishes them once the database is back. RabbitMQ unavailable: the queue layer reconnects; units
keep running and are followed.

A job ends (``_finish``) when its unit has ended: ``judge`` decides the result; when the job
process did not report it itself, a synthetic JOB_FINISHED (seq SYNTHETIC_SEQ) goes to the job's
``reply_to`` first, then ``store.finish`` records it (exactly once), then the unit is released and
the job's files removed. A crash anywhere in between repeats the steps after a restart, and
repeating them is harmless (the event's seq dedupes it, ``finish`` is once only).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from solstice.backoff import Backoff
from solstice.config import Config
from solstice.dispatch.contract import (
    cancel_marker,
    canonical_job_id,
    mark_cancelled,
    remove_job_files,
    request_file,
    synthetic_final_event,
    write_request,
)
from solstice.dispatch.pool import Pool
from solstice.dispatch.spawner import RUNNING, Spawner, Verdict, judge
from solstice.dispatch.systemd import runtime_max
from solstice.errors import CommandError, SolsticeError
from solstice.images import Catalog, plan_machine
from solstice.images.poolstate import read_state
from solstice.images.state import Readiness, readiness
from solstice.metrics import DispatcherMetrics
from solstice.model import JobRequest, JobSpec, Result, debugssh
from solstice.queue import (
    ACK,
    PUBLISHED_HEADER,
    REQUEUE,
    BrokerError,
    CancelJob,
    Connection,
    Consumer,
    Decision,
    Delivery,
    Publisher,
    Unroutable,
    dead_letter,
)
from solstice.queue.topology import check_address
from solstice.store import JobState, SchemaError, Store, StoreError, StoreUnavailable

log = logging.getLogger("solstice.dispatcher")

#: Seconds between two looks at the labels' images (a pull finishing makes a label ready).
IMAGE_CHECK_INTERVAL = 5.0


@dataclass
class Tracked:
    """A job this host has claimed and not yet finished."""

    job_id: str
    reply_to: str
    label: str = ""  # the image label, for the metrics
    adopted: bool = False  # found at start-up (reconciliation), not started by this process
    started_at: float | None = None  # monotonic time the unit was started (adopted: when found)
    runtime_max: float | None = None
    db_running: bool = False  # the row is in `running`
    cancel_requested: bool = False  # cancelled through the control path
    verdict: Verdict | None = None  # how it ended, once it has
    event_done: bool = False  # the synthetic final event is out (or not needed)
    warm_vm: str = ""  # the warm pool VM it took; its QEMU joins the job's unit once that runs
    attach_tries: int = 0


class Dispatcher:
    def __init__(
        self,
        cfg: Config,
        *,
        host: str,
        labels: Sequence[str],
        capacity: int,
        spawner: Spawner,
        store: Store | None = None,
        notify: Callable[[str], None] | None = None,
        poll_interval: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.host = check_address(host)
        self.labels = tuple(labels)
        if not self.labels:
            raise SolsticeError("the dispatcher has no labels to consume (no images configured?)")
        self.capacity = capacity
        self.spawner = spawner
        self.catalog = Catalog.from_config(cfg)
        self.runtime_dir = Path(cfg.paths.runtime_dir)
        self.poll_interval = poll_interval or cfg.dispatcher.poll_interval
        self.notify = notify or (lambda text: None)
        self.store = store or Store(cfg.database.url, application_name=f"solstice dispatcher@{host}")
        self.conn = Connection(
            cfg.broker, name=f"dispatcher@{host}", labels=self.labels, control_host=self.host
        )
        self.consumer = Consumer(self.conn)
        # Synthetic events: a short timeout, the loop must go on (a failed publish is retried).
        self.publisher = Publisher(self.conn, timeout=2.0)
        self.jobs: dict[str, Tracked] = {}
        self.orphans: set[str] = set()  # units the database does not know as running here
        self.stopping = False
        self._db_failures = 0
        self._db_backoff = Backoff(initial=0.5, maximum=15.0, jitter=0.0)
        self._db_retry_at = 0.0
        self._consuming = False
        self._ready = False
        self.check_images = cfg.dispatcher.check_images
        self.images: dict[str, Readiness] = {}  # label -> its image's state (check_images)
        self._images_checked = 0.0
        #: Served by `solstice dispatcher` when [metrics] dispatcher is set (docs/metrics.md).
        self.metrics = DispatcherMetrics(self.labels, capacity)
        #: Booted, never-used VMs per label ([pool.<label>] size; docs/warm-pool.md).
        self.pool = Pool(cfg, spawner, self.catalog, self.labels, self.metrics)

    # --- capacity ------------------------------------------------------------------------------

    def running(self) -> int:
        """Jobs that count against capacity: a VM kept for debug SSH does not (its job has
        reported; [debug] max_vms caps those)."""
        return sum(
            1
            for t in self.jobs.values()
            if t.verdict is None and not debugssh.held(self.runtime_dir, t.job_id)
        )

    def free(self) -> int:
        if not self.store.connected:
            return 0
        return max(0, self.capacity - self.running())

    # --- the database ---------------------------------------------------------------------------

    def _db(self) -> bool:
        """True when the database connection is up; else one reconnect attempt when due."""
        if self.store.connected:
            return True
        now = time.monotonic()
        if now < self._db_retry_at:
            return False
        try:
            self.store.reconnect()
        except StoreUnavailable as exc:
            self._db_failures += 1
            delay = self._db_backoff.delay(self._db_failures)
            self._db_retry_at = now + delay
            log.warning("%s; next attempt in %.1f s", exc, delay)
            return False
        if self._db_failures:
            log.info("reconnected to %s after %d failed attempt(s)", self.store.where, self._db_failures)
        self._db_failures = 0
        return True

    def _db_lost(self, exc: StoreUnavailable) -> None:
        log.warning("database: %s", exc)
        self._db_retry_at = 0.0

    # --- running ------------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Until ``should_stop()`` (or ``stop()``): reconcile, then consume and follow jobs."""
        self.notify("STATUS=connecting to the database")
        while not self._db():
            self.notify("WATCHDOG=1")
            if should_stop() or self.stopping:
                return
            time.sleep(0.2)
        status = self._schema_check()
        while True:
            try:
                self.reconcile()
                break
            except StoreUnavailable as exc:
                self._db_lost(exc)
                while not self._db():
                    self.notify("WATCHDOG=1")
                    if should_stop() or self.stopping:
                        return
                    time.sleep(0.2)
        log.info(
            "dispatcher %s: labels %s, capacity %d, spawner %s, %s",
            self.host,
            ", ".join(self.labels),
            self.capacity,
            self.spawner.name,
            status,
        )
        self.check_labels()
        self.pool.adopt()  # also without a pool now: a previous one's keepers are stopped
        self.consumer.consume_jobs(
            self.labels, self._on_job, prefetch=self.free(), active=self.takes_labels()
        )
        self.consumer.consume_control(self.host, self._on_cancel)
        self._consuming = True
        while not (self.stopping or should_stop()):
            self.consumer.process_events(self.poll_interval)
            self.round()

    def stop(self) -> None:
        self.stopping = True

    def close(self) -> None:
        """Stop consuming and close the connections; running jobs keep running (their units are
        separate; the next dispatcher adopts them)."""
        self.notify("STOPPING=1")
        for closer in (self.consumer.close, self.publisher.close, self.conn.close, self.store.close):
            try:
                closer()
            except Exception as exc:  # closing a broken connection: nothing left to do
                log.debug("closing: %s", exc)

    def _schema_check(self) -> str:
        try:
            schema = self.store.schema_status()
        except StoreError as exc:
            raise SchemaError(str(exc), hint="run `solstice db migrate`") from None
        if schema.pending:
            raise SchemaError(
                f"the job database at {self.store.where} is at schema version {schema.version}, "
                f"this code needs {schema.latest}",
                hint="run `solstice db migrate`",
            )
        return f"database {self.store.where} (schema {schema.version})"

    # --- images ---------------------------------------------------------------------------------

    def takes_labels(self) -> list[str]:
        """The labels whose jobs this host takes now: all, or those whose image is ready."""
        if not self.check_images:
            return list(self.labels)
        return [label for label in self.labels if self.images[label].ready]

    def _readiness(self, label: str) -> Readiness:
        canon = self.catalog.canonical(label)
        if canon is None:
            return Readiness(False, False, "no image of this host's catalog has that label")
        return readiness(self.catalog.get(canon))

    def check_labels(self) -> bool:
        """Look at every label's image; log each label whose state is new or changed. True when
        the set of labels this host takes jobs for changed."""
        self._images_checked = time.monotonic()
        if not self.check_images:
            return False
        before = self.takes_labels() if self.images else None
        for label in self.labels:
            state = self._readiness(label)
            old = self.images.get(label)
            if old is None or old.ready != state.ready or (not state.ready and old.reason != state.reason):
                if state.ready:
                    log.info("label %s: taking jobs (image %s)", label, state.reason)
                else:
                    # a label that stops being usable is news; one never pulled is the usual start
                    level = logging.WARNING if old is not None and old.ready else logging.INFO
                    log.log(level, "label %s: not taking jobs: %s", label, state.reason)
            self.images[label] = state
        return before is not None and before != self.takes_labels()

    def round(self) -> None:
        """One look at everything outside the handlers: the database, the units, the prefetch."""
        self._db()
        self.follow()
        due = time.monotonic() - self._images_checked >= IMAGE_CHECK_INTERVAL
        if self._consuming and due and self.check_labels():
            self.consumer.set_job_labels(self.takes_labels())
        if self._consuming and self.store.connected:
            self.pool.round(self.capacity - self.running() - self.pool.count(), self.takes_labels())
        if self._consuming:
            self.consumer.set_prefetch(self.free())
            if not self._ready and self.conn.is_open:
                self._ready = True
                self.notify("READY=1")
        self.metrics.round(
            running=self.running(),
            capacity=self.capacity,
            database=self.store.connected,
            broker=self.conn.is_open,
        )
        db = "ok" if self.store.connected else "UNAVAILABLE"
        broker = "ok" if self.conn.is_open else "reconnecting"
        images = f"; {len(self.takes_labels())}/{len(self.labels)} labels ready" if self.images else ""
        self.notify(
            f"WATCHDOG=1\nSTATUS={self.running()}/{self.capacity} jobs running; database {db}; "
            f"broker {broker}{images}"
        )

    # --- reconciliation -------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Match the units on this host with the database: adopt the jobs it says run here (the
        next round finds out whether their units still run, ended, or are gone), and stop units
        it does not know as running here."""
        units = set(self.spawner.list_units())
        records = {r.job_id: r for r in self.store.running_on(self.host)}
        for job_id, rec in records.items():
            if job_id in self.jobs:
                continue
            reply_to = rec.request.get("reply_to")
            self.jobs[job_id] = Tracked(
                job_id=job_id,
                reply_to=reply_to if isinstance(reply_to, str) else "",
                label=rec.label,
                adopted=True,
                started_at=time.monotonic(),
                db_running=rec.state is JobState.RUNNING,
                cancel_requested=cancel_marker(self.runtime_dir, job_id).exists(),
            )
            log.info(
                "job %s: %s on this host; %s",
                job_id,
                rec.state.value,
                "adopting its unit" if job_id in units else "its unit is not there",
            )
        for job_id in sorted(units - records.keys()):
            status = self.spawner.status([job_id])[job_id]
            if status.state == RUNNING:
                log.warning(
                    "stopping %s: the database does not know it as running on this host",
                    self.spawner.unit_name(job_id),
                )
                self.spawner.stop(job_id)
            self.orphans.add(job_id)

    # --- following units ----------------------------------------------------------------------

    def follow(self) -> None:
        watched = [j for j, t in self.jobs.items() if t.verdict is None and t.started_at is not None]
        ids = watched + sorted(self.orphans)
        try:
            statuses = self.spawner.status(ids) if ids else {}
        except (CommandError, OSError) as exc:
            log.warning("cannot look at the job units: %s", exc)
            statuses = {}
        now = time.monotonic()
        for job_id in watched:
            status = statuses.get(job_id)
            t = self.jobs[job_id]
            if status is None:
                continue
            if status.state == RUNNING:
                if not t.db_running:
                    self._mark_running(t)
                elif t.warm_vm:
                    self._attach_warm(t)
                continue
            t.verdict = judge(
                status,
                cancel_requested=t.cancel_requested,
                ran_for=None if t.adopted or t.started_at is None else now - t.started_at,
                runtime_max=t.runtime_max,
                adopted=t.adopted,
            )
            log.info(
                "job %s: unit ended (%s%s) -> %s%s",
                job_id,
                status.result or status.state,
                f", {status.main_code} {status.main_status}" if status.main_code else "",
                t.verdict.result.value,
                f": {t.verdict.message}" if t.verdict.message else "",
            )
        for t in [t for t in self.jobs.values() if t.verdict is not None]:
            self._finish(t)
        for job_id in sorted(self.orphans):
            status = statuses.get(job_id)
            if status is not None and status.state != RUNNING:
                self._release_orphan(job_id)

    def _mark_running(self, t: Tracked) -> None:
        if not self.store.connected:
            return
        try:
            moved = self.store.transition(t.job_id, JobState.STARTING, JobState.RUNNING)
        except StoreUnavailable as exc:
            self._db_lost(exc)
            return
        except StoreError as exc:
            log.error("job %s: cannot mark it running: %s", t.job_id, exc)
            moved = False
        t.db_running = True
        if not moved:
            log.debug("job %s: already past starting", t.job_id)
        self._attach_warm(t)

    def _attach_warm(self, t: Tracked) -> None:
        """Move a taken warm VM's QEMU into the job's unit (its limits, its cleanup); tried on the
        first rounds that see the unit running, then left to the keeper (which kills the VM when
        the job's process is gone)."""
        if not t.warm_vm or t.attach_tries >= 3:
            return
        t.attach_tries += 1
        record = read_state(self.runtime_dir, t.warm_vm)
        if record is None or not record.qemu_pid:
            return
        try:
            self.spawner.attach(t.job_id, [record.qemu_pid])
        except (CommandError, OSError) as exc:
            log.warning("job %s: the warm VM's QEMU could not join its unit: %s", t.job_id, exc)
            return
        t.attach_tries = 3
        log.info("job %s: warm VM %s's QEMU (pid %d) is in its unit", t.job_id, t.warm_vm, record.qemu_pid)

    def _finish(self, t: Tracked) -> None:
        verdict = t.verdict
        assert verdict is not None
        if not verdict.reported and not t.event_done:
            if t.reply_to:
                event = synthetic_final_event(t.job_id, verdict.result, verdict.message)
                try:
                    self.publisher.publish_event(event, t.reply_to)
                except Unroutable:
                    log.warning("job %s: nobody listens at %r for its final event", t.job_id, t.reply_to)
                except BrokerError as exc:
                    log.warning("job %s: final event not published yet (%s); retrying", t.job_id, exc)
                    return
            t.event_done = True
        if not self.store.connected:
            return
        try:
            first = self.store.finish(
                t.job_id, verdict.result, exit_code=verdict.exit_code, error=verdict.message or None
            )
        except StoreUnavailable as exc:
            self._db_lost(exc)
            return
        except StoreError as exc:
            log.error("job %s: cannot record its end: %s", t.job_id, exc)
            first = False
        if first:
            log.info("job %s: %s", t.job_id, verdict.result.value)
            self.metrics.job_finished(t.label, verdict.result.value)
        else:
            log.info("job %s: had ended already; its first outcome stays", t.job_id)
        try:
            self.spawner.release(t.job_id)
        except (CommandError, OSError) as exc:
            log.warning("job %s: cannot release its unit: %s", t.job_id, exc)
        remove_job_files(self.runtime_dir, t.job_id)
        with contextlib.suppress(OSError):  # a killed job leaves its debug registry entry behind
            debugssh.hold_file(self.runtime_dir, t.job_id).unlink(missing_ok=True)
        del self.jobs[t.job_id]

    def _release_orphan(self, job_id: str) -> None:
        if not self.store.connected:
            return
        try:
            rec = self.store.get(job_id)
        except StoreUnavailable as exc:
            self._db_lost(exc)
            return
        try:
            self.spawner.release(job_id)
        except (CommandError, OSError) as exc:
            log.warning("cannot release %s: %s", self.spawner.unit_name(job_id), exc)
            return
        if rec is None or rec.state.terminal:
            remove_job_files(self.runtime_dir, job_id)
        self.orphans.discard(job_id)
        log.info("released %s (not a job of this host)", self.spawner.unit_name(job_id))

    # --- JobRequests ----------------------------------------------------------------------------

    def _on_job(self, delivery: Delivery[JobRequest]) -> Decision | None:
        request = delivery.message
        job_id = canonical_job_id(request.job_id)
        if job_id is None:
            return dead_letter(f"job_id {request.job_id[:80]!r} is not a uuid in canonical form")
        if request.reply_to:
            try:
                check_address(request.reply_to)
            except ValueError as exc:
                return dead_letter(str(exc))
        if request.secrets:
            return dead_letter("the request carries plaintext secrets: the poller must seal them")
        if job_id in self.jobs:
            return ACK  # a duplicate of a job this host runs
        if not self.store.connected or self.free() <= 0:
            return REQUEUE
        try:
            start = self._take(request, delivery.redelivered)
        except StoreUnavailable as exc:
            self.jobs.pop(job_id, None)
            self._db_lost(exc)
            log.warning("job %s: back to the queue (database unavailable)", job_id)
            return REQUEUE
        except StoreError as exc:
            self.jobs.pop(job_id, None)
            return dead_letter(f"the job database refused it: {exc}")
        if not start:
            return ACK
        # Recorded and claimed, request file written: now RabbitMQ may forget the job.
        self.consumer.settle(delivery, ACK)
        published = delivery.headers.get(PUBLISHED_HEADER)
        if isinstance(published, int) and not isinstance(published, bool):  # absent: an older poller
            self.metrics.job_accepted(request.label, time.time() - published / 1000)
        self._start(self.jobs[job_id], request)
        return None

    def _take(self, request: JobRequest, redelivered: bool) -> bool:
        """Record the job and claim it for this host; True when this host is to start it."""
        job_id = request.job_id
        if not self.store.record_job(request, self.host):
            rec = self.store.get(job_id)
            if rec is None:  # deleted in between: nothing sensible to do
                return False
            if rec.state is JobState.QUEUED:
                self.store.accept(job_id, self.host)
            elif rec.state.terminal:
                if rec.starting_at is None and rec.result is not None and request.reply_to:
                    # Cancelled before any host started it; the canceller may not have known
                    # where to report it. Tell the poller (repeats are dropped by seq).
                    self._publish_final(request.job_id, request.reply_to, rec.result, rec.error or "")
                log.info("job %s: delivered again, already %s", job_id, rec.state.value)
                return False
            elif rec.state is not JobState.ACCEPTED:
                log.info(
                    "job %s: delivered again%s, already %s on %s",
                    job_id,
                    " (redelivery)" if redelivered else "",
                    rec.state.value,
                    rec.host,
                )
                return False
        self.jobs[job_id] = Tracked(job_id=job_id, reply_to=request.reply_to, label=request.label)
        self.consumer.set_prefetch(self.free())  # one less, before the ack
        if not self.store.claim(job_id, self.host, self.spawner.unit_name(job_id)):
            del self.jobs[job_id]
            rec = self.store.get(job_id)
            log.info(
                "job %s: not claimed here (%s on %s)",
                job_id,
                rec.state.value if rec else "gone",
                rec.host if rec else "-",
            )
            return False
        write_request(self.runtime_dir, request)
        return True

    def _start(self, t: Tracked, request: JobRequest) -> None:
        try:
            deadline = runtime_max(request, self.cfg, self.catalog.get(request.label))
            plan = plan_machine(request.size, self.catalog.get(request.label), self.cfg.vm)
            canon = self.catalog.canonical(request.label) or request.label
            t.warm_vm = self.pool.take(canon, plan)
            over = self.running() + self.pool.count() - self.capacity
            if over > 0:
                self.pool.make_room(over, canon)
            self.spawner.start(request, request_file(self.runtime_dir, t.job_id), deadline, plan, t.warm_vm)
        except (SolsticeError, OSError) as exc:
            log.error("job %s: its unit could not be started: %s", t.job_id, exc)
            if t.warm_vm:
                self.pool.discard(t.warm_vm)
            t.verdict = Verdict(Result.ERROR, False, f"the job's unit could not be started: {exc}")
            self._finish(t)
            return
        t.started_at = time.monotonic()
        t.runtime_max = deadline
        log.info(
            "job %s: started %s (%s, %s%s)",
            t.job_id,
            self.spawner.unit_name(t.job_id),
            request.label,
            plan.describe(),
            f", warm VM {t.warm_vm}" if t.warm_vm else "",
        )
        self._mark_running(t)

    def _publish_final(self, job_id: str, reply_to: str, result: Result, message: str) -> None:
        try:
            self.publisher.publish_event(synthetic_final_event(job_id, result, message), reply_to)
        except BrokerError as exc:
            log.warning("job %s: could not publish its final event: %s", job_id, exc)

    # --- cancellation -------------------------------------------------------------------------

    def _on_cancel(self, delivery: Delivery[CancelJob]) -> Decision | None:
        cancel = delivery.message
        job_id = canonical_job_id(cancel.job_id)
        if job_id is None:
            return dead_letter(f"job_id {cancel.job_id[:80]!r} is not a uuid in canonical form")
        reason = cancel.reason or "cancelled"
        t = self.jobs.get(job_id)
        if t is not None:
            if t.verdict is None:
                log.info("job %s: cancelling (%s)", job_id, reason)
                t.cancel_requested = True
                mark_cancelled(self.runtime_dir, job_id, reason)
                self.spawner.stop(job_id)  # raises: requeued, tried again after a pause
            return ACK
        if not self.store.connected:
            raise StoreUnavailable("the job database is unavailable")  # requeued, with a pause
        try:
            self._cancel_elsewhere(job_id, reason)
        except StoreUnavailable as exc:
            self._db_lost(exc)
            raise
        return ACK

    def _cancel_elsewhere(self, job_id: str, reason: str) -> None:
        """A cancellation for a job this host does not run: if nobody started it, record it as
        cancelled (whoever takes its JobRequest later sees that); else it is another host's."""
        rec = self.store.get(job_id)
        if rec is None:
            placeholder = JobRequest(
                job_id=job_id,
                job=JobSpec(key="", name="(cancelled before it was received)", runs_on=(), steps=()),
                label="(unknown)",
            )
            self.store.record_job(placeholder, None)
            if self.store.transition(job_id, JobState.QUEUED, JobState.CANCELLED, error=reason):
                log.info("job %s: cancelled before any dispatcher received it", job_id)
            return
        if rec.state in (JobState.QUEUED, JobState.ACCEPTED):
            if self.store.transition(
                job_id, rec.state, JobState.CANCELLED, error=f"cancelled before it started: {reason}"
            ):
                log.info("job %s: cancelled before it started", job_id)
                reply_to = rec.request.get("reply_to")
                if isinstance(reply_to, str) and reply_to:
                    self._publish_final(job_id, reply_to, Result.CANCELLED, f"cancelled: {reason}")
            return
        if rec.state in (JobState.STARTING, JobState.RUNNING) and rec.host != self.host:
            log.debug("job %s: runs on %s, which cancels it", job_id, rec.host)
