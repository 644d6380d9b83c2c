"""The one place that decides a job VM's size and boot timeout: the dispatcher sets the unit's cgroup
limits and RuntimeMaxSec from them and the job process boots QEMU with them, from the same inputs
(the request, the label's image, the host's ``[vm]``), so the two cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from solstice.config import ImageConfig, VMConfig, parse_size_gib, parse_size_mib
from solstice.errors import ConfigError
from solstice.images.catalog import Image
from solstice.model import Size

if TYPE_CHECKING:  # the machine module loads paramiko and qemu.qmp: the dispatcher needs neither
    from solstice.vm.machine import MachineSpec


@dataclass(frozen=True)
class MachinePlan:
    cpus: int
    memory_mib: int
    disk_gib: int | None  # None: the overlay keeps the base image's size

    def describe(self) -> str:
        return f"{self.cpus} CPUs, {self.memory_mib} MiB" + (
            f", {self.disk_gib} GiB disk" if self.disk_gib is not None else ""
        )


def requested_size(cpus: int | None, memory: str | None) -> Size:
    """--cpus/--memory as the request's size; what is not given stays unset (the image's default
    size, then [vm], decide it: solstice.images.plan)."""
    if cpus is not None and cpus < 1:
        raise ConfigError(f"--cpus {cpus}: must be at least 1")
    try:
        memory_mib = parse_size_mib(memory) if memory else None
    except ValueError as exc:
        raise ConfigError(f"--memory: {exc}") from None
    return Size(cpus=cpus, memory_mib=memory_mib)


def _image_size(image: Image | ImageConfig) -> Size:
    if isinstance(image, Image):
        return Size(image.cpus, image.memory_mib, image.disk_gib)
    return Size(
        image.cpus,
        parse_size_mib(image.memory) if image.memory else None,
        parse_size_gib(image.disk) if image.disk else None,
    )


def plan_machine(size: Size, image: Image | ImageConfig, vm: VMConfig) -> MachinePlan:
    """Each of cpus, memory, disk: the request's (the job's or the command line's) if set, else the
    image's default, else ``[vm]`` (which has no disk size: the base image's is kept)."""
    default = _image_size(image)
    cpus = size.cpus or default.cpus or vm.cpus
    memory = size.memory_mib or default.memory_mib or parse_size_mib(vm.memory)
    return MachinePlan(cpus=cpus, memory_mib=memory, disk_gib=size.disk_gib or default.disk_gib)


def boot_timeout(image: Image, vm: VMConfig) -> float:
    """How long the guest may take to answer SSH: ``[vm] boot_timeout``, or the image's profile's
    when that is larger (an OS whose first boot is slow, e.g. FreeBSD's reboot after updating)."""
    return max(vm.boot_timeout, image.profile.boot_timeout)


def machine_spec(
    image: Image, plan: MachinePlan, vm: VMConfig, instance_id: str, *, powerdown: bool = False
) -> MachineSpec:
    """The VM to boot for ``image`` at ``plan``: a job's (``instance_id`` its uuid) or a warm pool
    VM's (its own id). The id is cloud-init's instance id and, shortened, the guest's host name."""
    from solstice.vm.machine import MachineSpec

    return MachineSpec(
        base_image=image.base_image,
        image_format=image.image_format,
        boot=image.boot,
        kernel=image.kernel,
        initrd=image.initrd,
        cmdline=image.cmdline,
        profile=image.profile,
        accel=vm.accel,
        cpus=plan.cpus,
        memory_mib=plan.memory_mib,
        disk_gib=plan.disk_gib,
        boot_timeout=boot_timeout(image, vm),
        shutdown_timeout=vm.shutdown_timeout,
        qemu=vm.qemu,
        qemu_img=vm.qemu_img,
        ovmf_code=vm.ovmf_code,
        ovmf_vars=vm.ovmf_vars,
        instance_id=instance_id,
        hostname="solstice-" + instance_id[:8],
        powerdown=powerdown,
    )
