"""The QEMU command line, built in one place from one frozen description."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

from solstice.vm.profiles import DiskBus, SeedBus

#: The id of the guest's SLIRP network (a debug VM's extra forward is added to it at run time).
NETDEV = "net0"


class BootMode(enum.StrEnum):
    #: Firmware (SeaBIOS) boots the disk's own boot loader: most cloud images.
    BIOS = "bios"
    #: OVMF: read-only CODE plus a per-VM copy of VARS.
    UEFI = "uefi"
    #: Direct kernel boot (-kernel/-initrd/-append): the test image.
    KERNEL = "kernel"


@dataclass(frozen=True)
class QemuArgs:
    qemu: str
    accel: str  # "kvm" or "tcg"
    cpus: int
    memory_mib: int
    disk: Path  # the job's qcow2 overlay
    seed: Path  # the provisioner's seed disk (raw)
    seed_bus: SeedBus
    ssh_port: int
    qmp_socket: Path
    console_log: Path
    boot: BootMode = BootMode.BIOS
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    ovmf_code: Path | None = None
    ovmf_vars: Path | None = None  # the per-VM copy, written by the guest's firmware
    name: str = "solstice"
    machine: str = "pc"
    nic: str = "virtio-net-pci"
    extra: tuple[str, ...] = ()
    disk_bus: DiskBus = DiskBus.VIRTIO


def _p(path: Path | str) -> str:
    # QEMU option values are comma-separated; a literal comma in a path is written twice.
    return os.fspath(path).replace(",", ",,")


def qemu_argv(a: QemuArgs) -> list[str]:
    if a.accel == "kvm":
        accel, cpu = "kvm", "host"
    elif a.accel == "tcg":
        # thread=multi: one host thread per vCPU (MTTCG); "max" offers every emulated feature.
        accel, cpu = "tcg,thread=multi", "max"
    else:
        raise ValueError(f"unknown accelerator {a.accel!r} (use kvm or tcg)")

    argv = [
        a.qemu,
        "-name", a.name,
        "-nodefaults",
        "-no-user-config",
        "-machine", a.machine,
        "-accel", accel,
        "-cpu", cpu,
        "-smp", str(a.cpus),
        "-m", f"{a.memory_mib}M",
        "-display", "none",
        "-qmp", f"unix:{_p(a.qmp_socket)},server=on,wait=off",
        "-serial", f"file:{_p(a.console_log)}",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip

    if a.boot is BootMode.UEFI:
        if a.ovmf_code is None or a.ovmf_vars is None:
            raise ValueError("UEFI boot needs ovmf_code and the VM's copy of ovmf_vars")
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_p(a.ovmf_code)}",
            "-drive", f"if=pflash,format=raw,unit=1,file={_p(a.ovmf_vars)}",
        ]  # fmt: skip
    elif a.boot is BootMode.KERNEL:
        if a.kernel is None:
            raise ValueError("kernel boot needs a kernel")
        argv += ["-kernel", os.fspath(a.kernel)]
        if a.initrd is not None:
            argv += ["-initrd", os.fspath(a.initrd)]
        if a.cmdline:
            argv += ["-append", a.cmdline]

    # cache=unsafe: the overlay is thrown away after the job, so flushes buy nothing.
    disk = f"file={_p(a.disk)},format=qcow2,cache=unsafe,discard=unmap"
    if a.disk_bus is DiskBus.SATA:
        argv += [
            "-device", "ahci,id=ahci0",
            "-drive", f"{disk},if=none,id=disk0",
            "-device", "ide-hd,drive=disk0,bus=ahci0.0,bootindex=0",
        ]  # fmt: skip
    else:
        argv += ["-drive", f"{disk},if=virtio"]
    if a.seed_bus is SeedBus.IDE_CDROM:
        argv += ["-drive", f"file={_p(a.seed)},format=raw,if=ide,media=cdrom,readonly=on"]
    else:
        argv += ["-drive", f"file={_p(a.seed)},format=raw,if=virtio,readonly=on"]

    # SLIRP: the guest's sshd is reachable only from this host's loopback.
    argv += [
        "-netdev", f"user,id={NETDEV},hostfwd=tcp:127.0.0.1:{a.ssh_port}-:22",
        "-device", f"{a.nic},netdev={NETDEV}",
    ]  # fmt: skip
    argv += list(a.extra)
    return argv
