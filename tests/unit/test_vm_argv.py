"""The QEMU argv for each boot mode, accelerator and seed bus."""

from __future__ import annotations

from pathlib import Path

import pytest

from solstice.vm.argv import BootMode, QemuArgs, qemu_argv
from solstice.vm.profiles import SeedBus


def make(**kw: object) -> QemuArgs:
    base: dict[str, object] = dict(
        qemu="qemu-system-x86_64",
        accel="kvm",
        cpus=2,
        memory_mib=2048,
        disk=Path("/run/j/overlay.qcow2"),
        seed=Path("/run/j/seed.iso"),
        seed_bus=SeedBus.IDE_CDROM,
        ssh_port=40022,
        qmp_socket=Path("/run/j/qmp.sock"),
        console_log=Path("/run/j/console.log"),
    )
    base.update(kw)
    return QemuArgs(**base)  # type: ignore[arg-type]


def values(argv: list[str], option: str) -> list[str]:
    """Every value given to ``option`` (options and values must alternate as pairs)."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == option]


def test_common_options() -> None:
    argv = qemu_argv(make())
    assert argv[0] == "qemu-system-x86_64"
    assert "-nodefaults" in argv and "-no-user-config" in argv
    assert values(argv, "-display") == ["none"]
    assert values(argv, "-smp") == ["2"]
    assert values(argv, "-m") == ["2048M"]
    assert values(argv, "-qmp") == ["unix:/run/j/qmp.sock,server=on,wait=off"]
    assert values(argv, "-serial") == ["file:/run/j/console.log"]
    assert "virtio-rng-pci" in values(argv, "-device")
    assert values(argv, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"]
    assert "virtio-net-pci,netdev=net0" in values(argv, "-device")
    assert not any("vnc" in a for a in argv)
    disk = [d for d in values(argv, "-drive") if "overlay.qcow2" in d]
    assert disk == ["file=/run/j/overlay.qcow2,format=qcow2,cache=unsafe,discard=unmap,if=virtio"]


@pytest.mark.parametrize(
    ("accel", "want_accel", "want_cpu"),
    [("kvm", "kvm", "host"), ("tcg", "tcg,thread=multi", "max")],
)
def test_accelerator(accel: str, want_accel: str, want_cpu: str) -> None:
    argv = qemu_argv(make(accel=accel))
    assert values(argv, "-accel") == [want_accel]
    assert values(argv, "-cpu") == [want_cpu]
    assert "-enable-kvm" not in argv


def test_unknown_accelerator() -> None:
    with pytest.raises(ValueError, match="hvf"):
        qemu_argv(make(accel="hvf"))


@pytest.mark.parametrize(
    ("bus", "drive"),
    [
        (SeedBus.IDE_CDROM, "file=/run/j/seed.iso,format=raw,if=ide,media=cdrom,readonly=on"),
        (SeedBus.VIRTIO, "file=/run/j/seed.iso,format=raw,if=virtio,readonly=on"),
    ],
)
def test_seed_bus(bus: SeedBus, drive: str) -> None:
    argv = qemu_argv(make(seed_bus=bus))
    assert [d for d in values(argv, "-drive") if "seed.iso" in d] == [drive]


def test_bios_boot_has_no_kernel_or_pflash() -> None:
    argv = qemu_argv(make(boot=BootMode.BIOS))
    assert "-kernel" not in argv and "-append" not in argv
    assert not any("pflash" in d for d in values(argv, "-drive"))


def test_kernel_boot() -> None:
    argv = qemu_argv(
        make(
            boot=BootMode.KERNEL,
            kernel=Path("/img/vmlinuz"),
            initrd=Path("/img/initrd.img"),
            cmdline="root=/dev/vda rw console=ttyS0",
        )
    )
    assert values(argv, "-kernel") == ["/img/vmlinuz"]
    assert values(argv, "-initrd") == ["/img/initrd.img"]
    assert values(argv, "-append") == ["root=/dev/vda rw console=ttyS0"]


def test_kernel_boot_needs_a_kernel() -> None:
    with pytest.raises(ValueError):
        qemu_argv(make(boot=BootMode.KERNEL))


def test_uefi_boot() -> None:
    argv = qemu_argv(
        make(
            boot=BootMode.UEFI,
            ovmf_code=Path("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            ovmf_vars=Path("/run/j/OVMF_VARS.fd"),
        )
    )
    pflash = [d for d in values(argv, "-drive") if "pflash" in d]
    assert pflash == [
        "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        "if=pflash,format=raw,unit=1,file=/run/j/OVMF_VARS.fd",
    ]
    assert "-kernel" not in argv
    with pytest.raises(ValueError):
        qemu_argv(make(boot=BootMode.UEFI))


def test_commas_in_paths_are_escaped() -> None:
    argv = qemu_argv(make(disk=Path("/run/a,b/overlay.qcow2"), qmp_socket=Path("/run/a,b/q.sock")))
    assert any(d.startswith("file=/run/a,,b/overlay.qcow2,") for d in values(argv, "-drive"))
    assert values(argv, "-qmp") == ["unix:/run/a,,b/q.sock,server=on,wait=off"]


def test_profile_extras() -> None:
    argv = qemu_argv(make(machine="q35", nic="e1000", extra=("-cpu", "max,-pdpe1gb")))
    assert values(argv, "-machine") == ["q35"]
    assert "e1000,netdev=net0" in values(argv, "-device")
    assert argv[-2:] == ["-cpu", "max,-pdpe1gb"]


def test_sata_disk_bus() -> None:
    from solstice.vm.profiles import DiskBus

    argv = qemu_argv(make(disk_bus=DiskBus.SATA))
    assert "ahci,id=ahci0" in values(argv, "-device")
    assert "ide-hd,drive=disk0,bus=ahci0.0,bootindex=0" in values(argv, "-device")
    disk = [d for d in values(argv, "-drive") if "overlay.qcow2" in d]
    assert disk == ["file=/run/j/overlay.qcow2,format=qcow2,cache=unsafe,discard=unmap,if=none,id=disk0"]


def test_profile_and_provisioner_arguments_reach_qemu(tmp_path: Path) -> None:
    """What start_machine passes as ``extra`` for the metadata-agent on illumos."""
    from solstice.vm.profiles import get_profile
    from solstice.vm.provision import for_profile

    oi = get_profile("openindiana")
    extra = (*for_profile(oi).qemu_args(oi), *oi.qemu_args)
    argv = qemu_argv(make(extra=extra, seed=Path("/run/j/metadata.img"), seed_bus=oi.seed_bus))
    assert values(argv, "-smbios") == ["type=1,manufacturer=QEMU"]
    assert values(argv, "-global") == ["kvm-pit.lost_tick_policy=delay"]
    assert "file=/run/j/metadata.img,format=raw,if=virtio,readonly=on" in values(argv, "-drive")
