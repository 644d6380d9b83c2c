"""Guest profiles: everything that differs between guest operating systems.

A profile decides the provisioning seed's bus, the login user, the shells and tar the job uses, the
readiness rule and the ``#cloud-config`` the guest gets. Adding an OS means adding a profile here;
the VM code reads only these fields (see docs/vm.md and reference/guests.md).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from solstice.errors import ImageError, ProfileError


class SeedBus(enum.StrEnum):
    """Where the provisioner's seed disk is attached."""

    #: Ubuntu: a second virtio disk confuses its root detection (LABEL=cloudimg-rootfs).
    IDE_CDROM = "ide-cdrom"
    #: Debian genericcloud (no ATA driver), FreeBSD, OmniOS, the metadata-agent's cpio disk.
    VIRTIO = "virtio"


class DiskBus(enum.StrEnum):
    """Where the job's disk (the overlay on the base image) is attached."""

    VIRTIO = "virtio"
    #: AHCI, for a guest without virtio-blk drivers (anyvm boots OpenIndiana this way).
    SATA = "sata"


class Provisioning(enum.StrEnum):
    """How the guest learns our key at first boot: one module of solstice.vm.provision each."""

    #: cloud-init's NoCloud datasource, seed on an ISO9660 volume.
    NOCLOUD_ISO = "nocloud-iso"
    #: cloud-init's NoCloud datasource, seed on a FAT volume.
    NOCLOUD_FAT = "nocloud-fat"
    #: FreeBSD's nuageinit: NoCloud-like, label "cidata" in lowercase only.
    NUAGEINIT = "nuageinit"
    #: The illumos metadata-agent's generic provider: an odc cpio archive at LBA 0 of a raw disk.
    METADATA_AGENT = "metadata-agent"
    #: An image made for Solstice: a FAT disk holding ``authorized_keys``, copied by the image.
    KEY_DISK = "key-disk"


class Privilege(enum.StrEnum):
    """How the login user becomes root (image preparation, the self-test, workflow authors)."""

    SUDO = "sudo"
    PFEXEC = "pfexec"
    DOAS = "doas"
    #: The login user is root.
    NONE = "none"

    def wrap(self, command: str) -> str:
        """``command`` (a POSIX sh command line) run as root, without a password prompt."""
        quoted = "'" + command.replace("'", "'\"'\"'") + "'"
        prefix = {"sudo": "sudo -n ", "pfexec": "pfexec ", "doas": "doas -n ", "none": ""}[self.value]
        return f"{prefix}/bin/sh -c {quoted}"


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class GuestProfile:
    """One guest OS's facts. Data only: the provisioner named by ``provisioning`` and the VM code
    read these fields, so adding an OS is adding a profile (docs/images.md "Adding an OS")."""

    name: str
    #: The value of RUNNER_OS in the job: "Linux", "illumos", "FreeBSD".
    runner_os: str
    provisioning: Provisioning = Provisioning.NOCLOUD_ISO
    #: The seed's volume label, where the provisioner has one: "cidata" or "CIDATA".
    seed_label: str = "cidata"
    #: The login user: made by cloud-init with our ephemeral key, or root for the metadata-agent.
    user: str = "solstice"
    privilege: Privilege = Privilege.SUDO
    #: Absolute path of bash in the guest, or "" when the image has none.
    bash: str = "/bin/bash"
    #: The POSIX shell for ``shell: sh`` steps (and for default ones when there is no bash).
    sh: str = "/bin/sh"
    #: The tar that unpacks checkouts (ustar from stdin: ``<tar> xf -``).
    tar: str = "tar"
    #: Directories put in front of the guest's PATH for every step (e.g. illumos' /usr/gnu/bin).
    path_prepend: tuple[str, ...] = ()
    seed_bus: SeedBus = SeedBus.VIRTIO
    disk_bus: DiskBus = DiskBus.VIRTIO
    #: Consecutive successful SSH logins before the guest counts as ready.
    readiness_probes: int = 1
    #: The first boot reboots the guest (FreeBSD's firstboot scripts): ready only once
    #: ``/firstboot`` is gone, so a login on the doomed first boot does not count.
    reboots_on_first_boot: bool = False
    #: The least boot timeout this OS needs (seconds); [vm] boot_timeout applies when larger.
    boot_timeout: float = 0.0
    #: The user's login shell.
    login_shell: str = "/bin/bash"
    #: QEMU machine type and NIC model; the defaults suit every guest we know of.
    machine: str = "pc"
    nic: str = "virtio-net-pci"
    #: Extra QEMU arguments for an OS's quirks (e.g. OpenBSD's "-cpu max,-pdpe1gb").
    qemu_args: tuple[str, ...] = ()
    #: Extra keys for the user's entry in ``users:`` (e.g. illumos RBAC profiles).
    user_fields: Mapping[str, Any] = field(default_factory=_frozen, hash=False)
    #: Extra top-level ``#cloud-config`` keys.
    cloud_config: Mapping[str, Any] = field(default_factory=_frozen, hash=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ProfileError when the fields contradict each other or the provisioner."""

        def bad(why: str) -> ProfileError:
            return ProfileError(f"guest profile {self.name!r}: {why}")

        for what, path in (("sh", self.sh), ("login_shell", self.login_shell)):
            if not path.startswith("/"):
                raise bad(f"{what} must be an absolute path, not {path!r}")
        if self.bash and not self.bash.startswith("/"):
            raise bad(f"bash must be an absolute path or empty, not {self.bash!r}")
        for d in self.path_prepend:
            if not d.startswith("/") or ":" in d:
                raise bad(f"path_prepend entry {d!r} must be an absolute path without ':'")
        if self.readiness_probes < 1:
            raise bad("readiness_probes must be at least 1")
        if self.boot_timeout < 0:
            raise bad("boot_timeout cannot be negative")
        if (self.user == "root") != (self.privilege is Privilege.NONE):
            raise bad(
                "privilege 'none' is for a root login, and root needs no privilege tool "
                f"(user {self.user!r}, privilege {self.privilege.value!r})"
            )
        if self.provisioning is Provisioning.METADATA_AGENT:
            if self.user != "root":
                raise bad("the metadata-agent installs keys for root only: user must be 'root'")
            if self.seed_bus is not SeedBus.VIRTIO:
                raise bad("the metadata-agent reads its cpio archive from a raw disk: seed_bus 'virtio'")
        if self.provisioning is Provisioning.NUAGEINIT and self.seed_label != "cidata":
            raise bad("nuageinit looks only for the lowercase label 'cidata'")
        if self.provisioning in (Provisioning.NOCLOUD_ISO, Provisioning.NOCLOUD_FAT):
            if self.seed_label not in ("cidata", "CIDATA"):
                raise bad(f"cloud-init's NoCloud needs the label cidata or CIDATA, not {self.seed_label!r}")
            if self.user == "root":
                raise bad("cloud-init provisioning makes a user of its own: user must not be 'root'")
        if self.provisioning is Provisioning.NOCLOUD_FAT and self.seed_bus is SeedBus.IDE_CDROM:
            raise bad("a FAT seed is a disk, not a CD-ROM: seed_bus 'virtio'")
        if self.provisioning is Provisioning.KEY_DISK and self.seed_bus is not SeedBus.VIRTIO:
            raise bad("the key disk is a raw disk: seed_bus 'virtio'")

    @property
    def uses_cloud_config(self) -> bool:
        return self.provisioning in (
            Provisioning.NOCLOUD_ISO,
            Provisioning.NOCLOUD_FAT,
            Provisioning.NUAGEINIT,
        )

    def user_data(self, public_key: str, hostname: str) -> str:
        """The ``#cloud-config`` document: our user with sudo and the key, no passwords, no root."""
        user: dict[str, Any] = {
            "name": self.user,
            "gecos": "Solstice CI",
            "shell": self.login_shell,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "lock_passwd": True,
            **self.user_fields,
            "ssh_authorized_keys": [public_key],
        }
        doc: dict[str, Any] = {
            "hostname": hostname,
            "preserve_hostname": False,
            "users": [user],
            "ssh_pwauth": False,
            "disable_root": True,
            **self.cloud_config,
        }
        return "#cloud-config\n" + _yaml(doc)


def _yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars. Scalars are written as JSON, which YAML
    reads back unchanged, so a key or hostname can never break the document's structure."""
    pad = " " * indent
    out: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, Mapping | list | tuple) and item:
                out.append(f"{pad}{key}:\n{_yaml(item, indent + 2)}")
            else:
                out.append(f"{pad}{key}: {_scalar(item)}\n")
    elif isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, Mapping) and item:
                # "- " then the mapping's first line; its other lines are indented to match.
                body = _yaml(item, indent + 2)
                out.append(f"{pad}- {body[indent + 2 :]}")
            elif isinstance(item, list | tuple) and item:
                out.append(f"{pad}-\n{_yaml(item, indent + 2)}")
            else:
                out.append(f"{pad}- {_scalar(item)}\n")
    else:
        out.append(f"{pad}{_scalar(value)}\n")
    return "".join(out)


def _scalar(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list | tuple):
        return "[]"
    return json.dumps(value)


# Linux guests only need an ed25519 host key: RSA key generation costs seconds under TCG.
_LINUX_CLOUD_CONFIG = _frozen({"ssh_genkeytypes": ["ed25519"]})

#: illumos: GNU coreutils, grep, sed, find come first, as workflow authors expect (guests.md §2).
_ILLUMOS_PATH = ("/usr/gnu/bin",)
#: illumos needs an emulated i8254 PIT; with KVM its ticks must not be lost (anyvm, guests.md §8).
_ILLUMOS_QUIRKS = ("-global", "kvm-pit.lost_tick_policy=delay")

PROFILES: Mapping[str, GuestProfile] = MappingProxyType(
    {
        p.name: p
        for p in (
            # The test image (scripts/build-test-image): TESTBED verified the seed on IDE CD-ROM.
            GuestProfile(
                name="debian",
                runner_os="Linux",
                seed_bus=SeedBus.IDE_CDROM,
                cloud_config=_LINUX_CLOUD_CONFIG,
            ),
            # cloud.debian.org genericcloud: its kernel has no ATA driver, so the seed is virtio.
            GuestProfile(
                name="debian-genericcloud",
                runner_os="Linux",
                seed_bus=SeedBus.VIRTIO,
                cloud_config=_LINUX_CLOUD_CONFIG,
            ),
            # Ubuntu: a second virtio disk breaks LABEL=cloudimg-rootfs root detection.
            GuestProfile(
                name="ubuntu",
                runner_os="Linux",
                seed_bus=SeedBus.IDE_CDROM,
                cloud_config=_LINUX_CLOUD_CONFIG,
            ),
            # OmniOS: the user is made like the image's own "omnios" user (RBAC profile, so pfexec
            # works); cloud-init restarts sshd once after it first answers, hence two probes.
            GuestProfile(
                name="omnios",
                runner_os="illumos",
                privilege=Privilege.PFEXEC,
                bash="/usr/bin/bash",
                login_shell="/usr/bin/bash",
                path_prepend=_ILLUMOS_PATH,
                seed_bus=SeedBus.VIRTIO,
                readiness_probes=2,
                boot_timeout=300.0,
                qemu_args=_ILLUMOS_QUIRKS,
                user_fields=_frozen({"profiles": "Primary Administrator"}),
            ),
            # OpenIndiana Hipster cloud image: its metadata-agent selects the generic provider on
            # QEMU's SMBIOS and takes root's keys from an odc cpio archive at LBA 0 of a raw disk
            # (guests.md §3). Root logs in; no sudo is needed. Not booted here (no image download).
            GuestProfile(
                name="openindiana",
                runner_os="illumos",
                provisioning=Provisioning.METADATA_AGENT,
                user="root",
                privilege=Privilege.NONE,
                bash="/usr/bin/bash",
                login_shell="/usr/bin/bash",
                path_prepend=_ILLUMOS_PATH,
                seed_bus=SeedBus.VIRTIO,
                boot_timeout=300.0,
                qemu_args=_ILLUMOS_QUIRKS,
            ),
            # FreeBSD nuageinit: label must be lowercase "cidata"; sudo and bash are packages, so
            # they are installed at first boot (needs the guest's network) and the login shell is
            # /bin/sh, which exists before they do. The first boot runs freebsd-update and reboots.
            GuestProfile(
                name="freebsd",
                runner_os="FreeBSD",
                provisioning=Provisioning.NUAGEINIT,
                bash="/usr/local/bin/bash",
                login_shell="/bin/sh",
                seed_bus=SeedBus.VIRTIO,
                reboots_on_first_boot=True,
                boot_timeout=600.0,
                cloud_config=_frozen({"packages": ["sudo", "bash"]}),
            ),
            # The second test image (build-test-image --variant metadata): Debian without
            # cloud-init, provisioned exactly like OpenIndiana, so that provisioner is proven here.
            GuestProfile(
                name="metadata-agent-test",
                runner_os="Linux",
                provisioning=Provisioning.METADATA_AGENT,
                user="root",
                privilege=Privilege.NONE,
                seed_bus=SeedBus.VIRTIO,
            ),
        )
    }
)


def get_profile(name: str) -> GuestProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ImageError(
            f"unknown guest profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}"
        ) from None
