"""Virtual machines for jobs: QEMU argv, QMP, overlay disks, cloud-init seed, ports, SSH, guest
profiles. Knows nothing of forges or workflows (see docs/vm.md).

The job process uses ``start_machine`` and the ``Guest`` it returns; the rest is public for the
image catalog and tests.
"""

from solstice.vm.argv import BootMode
from solstice.vm.machine import Guest, MachineSpec, start_machine
from solstice.vm.profiles import PROFILES, GuestProfile, SeedBus, get_profile

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
