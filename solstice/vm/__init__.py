"""Virtual machines for jobs: QEMU argv, QMP, overlay disks, cloud-init seed, ports, SSH, guest
profiles. Knows nothing of forges or workflows (see docs/vm.md).

The job process uses ``start_machine`` and the ``Guest`` it returns; the rest is public for the
image catalog and tests. The names below are imported on first use: a daemon that only needs
``solstice.vm.leftovers`` (every command sweeps leftovers at start) does not load paramiko,
cryptography and qemu.qmp into memory.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from solstice.vm.argv import BootMode
    from solstice.vm.machine import Guest, MachineSpec, start_machine
    from solstice.vm.profiles import PROFILES, GuestProfile, SeedBus, get_profile

_WHERE = {
    "BootMode": "solstice.vm.argv",
    "Guest": "solstice.vm.machine",
    "MachineSpec": "solstice.vm.machine",
    "start_machine": "solstice.vm.machine",
    "PROFILES": "solstice.vm.profiles",
    "GuestProfile": "solstice.vm.profiles",
    "SeedBus": "solstice.vm.profiles",
    "get_profile": "solstice.vm.profiles",
}

__all__ = [
    "PROFILES",
    "BootMode",
    "Guest",
    "GuestProfile",
    "MachineSpec",
    "SeedBus",
    "get_profile",
    "start_machine",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(where), name)
