"""The dispatcher's warm pool: how many booted, never-used VMs each label keeps ready, and which
job gets which (docs/warm-pool.md). The VMs themselves are solstice.images.warm's keepers.

Each round, after the jobs: forget keepers that ended (a recycled, unhealthy or killed VM; its
label is refilled), then start keepers until every label with ``[pool.<label>] size`` has that
many, as long as jobs and pool VMs together stay within ``capacity`` and the pool's planned memory
within ``[pool] memory``. Pool VMs never hold a job off: the prefetch counts jobs only, and a job
that would exceed capacity first has the least useful pool VM destroyed (booting before ready,
other labels before its own). A job of a pooled label whose plan is the pool's takes the oldest
ready VM (``take``); the VM then belongs to that job alone, and the pool boots a replacement.

A restarted dispatcher adopts the keepers it finds (``adopt``) when their label and plan are
still wanted, and stops the others; a VM a job had taken is left to that job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from solstice.config import Config, parse_size_mib
from solstice.dispatch.spawner import Spawner
from solstice.errors import CommandError, SolsticeError
from solstice.images import Catalog, MachinePlan, plan_machine
from solstice.images.poolstate import VMState, new_vm_id, read_state, state_file
from solstice.metrics import DispatcherMetrics
from solstice.model import Size

log = logging.getLogger("solstice.dispatcher")

#: Seconds a just-started keeper may be missing from the spawner's list (systemd-run --no-block).
START_GRACE = 15.0
#: After a keeper that ended before its VM was ready: wait RETRY, doubling up to MAX_RETRY.
RETRY = 10.0
MAX_RETRY = 900.0


@dataclass
class Warm:
    """A pool VM this dispatcher counts (not yet taken)."""

    vm_id: str
    label: str
    plan: MachinePlan
    started: float  # monotonic: started or adopted
    was_ready: bool = False  # seen ready once: its end is not a failed boot

    def state(self, runtime_dir: str) -> VMState:
        record = read_state(runtime_dir, self.vm_id)
        return record.state if record is not None else VMState.BOOTING


class Pool:
    def __init__(
        self,
        cfg: Config,
        spawner: Spawner,
        catalog: Catalog,
        labels: Collection[str],
        metrics: DispatcherMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.spawner = spawner
        self.runtime_dir = cfg.paths.runtime_dir
        self.metrics = metrics
        self.budget = parse_size_mib(cfg.pool.memory)
        self.sizes: dict[str, int] = {}
        self.plans: dict[str, MachinePlan] = {}
        for label in labels:
            size = cfg.pool.size(label)
            if size <= 0:
                continue
            try:
                self.plans[label] = plan_machine(Size(), catalog.get(label), cfg.vm)
            except SolsticeError as exc:
                log.warning("[pool.%s]: no warm pool for it: %s", label, exc)
                continue
            self.sizes[label] = size
        unknown = sorted(set(cfg.pool.labels) - set(labels))
        for label in unknown:
            if cfg.pool.size(label) > 0:
                log.warning("[pool.%s]: not a label this dispatcher serves; no warm pool for it", label)
        self.vms: dict[str, Warm] = {}
        #: Per label: keepers in a row that ended before their VM was ready, and when to try again
        #: (a broken image must not be booted in a tight loop).
        self.failures: dict[str, int] = {}
        self.retry_at: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.sizes)

    def count(self, label: str | None = None) -> int:
        return sum(1 for vm in self.vms.values() if label is None or vm.label == label)

    def memory(self) -> int:
        return sum(vm.plan.memory_mib for vm in self.vms.values())

    # --- start-up -----------------------------------------------------------------------------

    def adopt(self) -> None:
        """Take over the keepers a previous dispatcher left, or stop those not wanted now."""
        try:
            running = self.spawner.keepers()
        except (CommandError, OSError) as exc:
            log.warning("cannot list the warm pool's keepers: %s", exc)
            return
        for vm_id in running:
            record = read_state(self.runtime_dir, vm_id)
            if record is not None and record.state is VMState.TAKEN:
                log.info("warm VM %s: taken by job %s; left to it", vm_id, record.job_id)
                continue
            wanted = (
                record is not None
                and record.label in self.sizes
                and record.plan == self.plans[record.label]
                and self.count(record.label) < self.sizes[record.label]
            )
            if record is not None and wanted:
                self.vms[vm_id] = Warm(vm_id, record.label, record.plan, time.monotonic())
                log.info("warm VM %s (%s, %s): adopted", vm_id, record.label, record.state.value)
                continue
            why = "no record" if record is None else f"{record.label}, {record.plan.describe()}: not wanted"
            log.info("warm VM %s: stopping it (%s)", vm_id, why)
            self._stop(vm_id)

    # --- each round ---------------------------------------------------------------------------

    def round(self, free: int, labels: Collection[str]) -> None:
        """Forget ended keepers, then fill the pool of ``labels`` (those whose image is ready)
        with at most ``free`` new VMs."""
        if not self.enabled and not self.vms:
            return
        try:
            alive = set(self.spawner.keepers())
        except (CommandError, OSError) as exc:
            log.warning("cannot list the warm pool's keepers: %s", exc)
            return
        now = time.monotonic()
        for vm in list(self.vms.values()):
            if vm.vm_id in alive or now - vm.started < START_GRACE:
                if vm.state(self.runtime_dir) is VMState.READY:
                    vm.was_ready = True
                    self.failures.pop(vm.label, None)
                continue
            del self.vms[vm.vm_id]
            state_file(self.runtime_dir, vm.vm_id).unlink(missing_ok=True)
            try:
                self.spawner.release_keeper(vm.vm_id)
            except (CommandError, OSError) as exc:
                log.warning("warm VM %s: cannot release its keeper: %s", vm.vm_id, exc)
            if self.metrics is not None:
                self.metrics.pool_recycled(vm.label)
            if vm.was_ready:
                log.info("warm VM %s (%s): ended unused; the pool replaces it", vm.vm_id, vm.label)
                continue
            failed = self.failures[vm.label] = self.failures.get(vm.label, 0) + 1
            delay = min(MAX_RETRY, RETRY * 2 ** (failed - 1))
            self.retry_at[vm.label] = now + delay
            log.warning(
                "warm VM %s (%s): ended before it was ready (%d in a row; see its keeper's log); "
                "next one in %.0f s",
                vm.vm_id,
                vm.label,
                failed,
                delay,
            )
        self._recycle_old()
        for label, size in self.sizes.items():
            if label not in labels:
                continue
            plan = self.plans[label]
            if now < self.retry_at.get(label, 0.0):
                continue
            while self.count(label) < size and free > 0 and self.memory() + plan.memory_mib <= self.budget:
                vm_id = new_vm_id()
                try:
                    self.spawner.start_keeper(vm_id, label, plan)
                except (SolsticeError, OSError) as exc:
                    log.error("warm VM of %s: its keeper could not be started: %s", label, exc)
                    break
                self.vms[vm_id] = Warm(vm_id, label, plan, time.monotonic())
                free -= 1
                log.info("warm VM %s (%s, %s): booting", vm_id, label, plan.describe())
        if self.metrics is not None:
            self.metrics.pool_round(self.counts())

    def _recycle_old(self) -> None:
        """Ready VMs unused for longer than their label's max_age (as this dispatcher is
        configured: an adopted keeper may have been started with another) go; fresh ones boot."""
        now = time.time()
        for vm in list(self.vms.values()):
            record = read_state(self.runtime_dir, vm.vm_id)
            entry = self.cfg.pool.labels.get(vm.label)
            if record is None or record.state is not VMState.READY or not record.ready_at or entry is None:
                continue
            if now - record.ready_at > entry.max_age:
                log.info(
                    "warm VM %s (%s): unused for %.0f s (max_age %.0f): recycled",
                    vm.vm_id,
                    vm.label,
                    now - record.ready_at,
                    entry.max_age,
                )
                del self.vms[vm.vm_id]
                self._stop(vm.vm_id)
                if self.metrics is not None:
                    self.metrics.pool_recycled(vm.label)

    def counts(self) -> Mapping[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for label in self.sizes:
            out[(label, VMState.READY.value)] = 0
            out[(label, VMState.BOOTING.value)] = 0
        for vm in self.vms.values():
            state = vm.state(self.runtime_dir)
            if state is not VMState.TAKEN:
                key = (vm.label, state.value)
                out[key] = out.get(key, 0) + 1
        return out

    # --- jobs ---------------------------------------------------------------------------------

    def take(self, label: str, plan: MachinePlan) -> str:
        """The id of a ready VM of ``label`` with ``plan`` for a job, now no longer the pool's;
        "" when there is none (the job boots its own)."""
        ready = [
            vm
            for vm in self.vms.values()
            if vm.label == label and vm.plan == plan and vm.state(self.runtime_dir) is VMState.READY
        ]
        if not ready:
            return ""
        vm = min(ready, key=lambda v: v.started)
        del self.vms[vm.vm_id]
        return vm.vm_id

    def make_room(self, count: int, label: str) -> None:
        """Destroy ``count`` pool VMs for a job of ``label``: booting ones first, other labels'
        first, the newest first."""
        order = sorted(
            self.vms.values(),
            key=lambda v: (v.label == label, v.state(self.runtime_dir) is VMState.READY, -v.started),
        )
        for vm in order[: max(0, count)]:
            log.info("warm VM %s (%s): destroyed to make room for a job of %s", vm.vm_id, vm.label, label)
            del self.vms[vm.vm_id]
            self._stop(vm.vm_id)
            if self.metrics is not None:
                self.metrics.pool_recycled(vm.label)

    def discard(self, vm_id: str) -> None:
        """A VM given to a job that never started: nobody else may have it."""
        self.vms.pop(vm_id, None)
        self._stop(vm_id)

    def _stop(self, vm_id: str) -> None:
        try:
            self.spawner.stop_keeper(vm_id)
        except (CommandError, OSError) as exc:
            log.warning("warm VM %s: cannot stop its keeper: %s", vm_id, exc)
