"""A warm pool VM's record, ``<runtime_dir>/pool/<vm-id>.json``: written by its keeper
(solstice.images.warm), read by the dispatcher (solstice.dispatch.pool) and ``solstice pool list``.
Apart from the keeper, so that the dispatcher does not load the VM side (paramiko, qemu.qmp)."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from solstice.images.plan import MachinePlan


class VMState(enum.StrEnum):
    BOOTING = "booting"
    READY = "ready"
    TAKEN = "taken"


@dataclass(frozen=True)
class PoolVM:
    """A warm VM's record, ``<runtime_dir>/pool/<vm-id>.json`` (written by its keeper)."""

    vm_id: str
    label: str
    state: VMState
    keeper_pid: int
    cpus: int
    memory_mib: int
    disk_gib: int | None
    created: float  # wall clock: the keeper started
    ready_at: float | None = None  # wall clock: SSH answered
    boot_seconds: float | None = None
    qemu_pid: int | None = None
    port: int | None = None
    job_id: str = ""  # who took it (host side only; never given to the guest)

    @property
    def plan(self) -> MachinePlan:
        return MachinePlan(self.cpus, self.memory_mib, self.disk_gib)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PoolVM:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data["state"] = VMState(data["state"])
        return cls(**data)


def new_vm_id() -> str:
    return str(uuid.uuid4())


def pool_dir(runtime_dir: str | Path) -> Path:
    return Path(runtime_dir) / "pool"


def vm_dir(runtime_dir: str | Path, vm_id: str) -> Path:
    return pool_dir(runtime_dir) / vm_id


def state_file(runtime_dir: str | Path, vm_id: str) -> Path:
    return pool_dir(runtime_dir) / f"{vm_id}.json"


def read_state(runtime_dir: str | Path, vm_id: str) -> PoolVM | None:
    try:
        return PoolVM.from_json(state_file(runtime_dir, vm_id).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_states(runtime_dir: str | Path) -> list[PoolVM]:
    """Every warm VM record of this host, oldest first."""
    out = []
    with contextlib.suppress(OSError):
        for path in pool_dir(runtime_dir).glob("*.json"):
            vm = read_state(runtime_dir, path.stem)
            if vm is not None:
                out.append(vm)
    return sorted(out, key=lambda v: v.created)
