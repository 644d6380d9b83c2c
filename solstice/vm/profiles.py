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

from solstice.errors import ImageError


class SeedBus(enum.StrEnum):
    """Where the NoCloud seed ISO is attached."""

    #: Ubuntu: a second virtio disk confuses its root detection (LABEL=cloudimg-rootfs).
    IDE_CDROM = "ide-cdrom"
    #: Debian genericcloud (no ATA driver), FreeBSD, OmniOS.
    VIRTIO = "virtio"


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class GuestProfile:
    name: str
    #: The value of RUNNER_OS in the job: "Linux", "illumos", "FreeBSD".
    runner_os: str
    #: The login user cloud-init creates with our ephemeral key and passwordless sudo.
    user: str = "solstice"
    #: Absolute path of bash in the guest, or "" when the image has none.
    bash: str = "/bin/bash"
    sh: str = "/bin/sh"
    tar: str = "tar"
    seed_bus: SeedBus = SeedBus.VIRTIO
    #: Consecutive successful SSH logins before the guest counts as ready.
    readiness_probes: int = 1
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
                bash="/usr/bin/bash",
                login_shell="/usr/bin/bash",
                seed_bus=SeedBus.VIRTIO,
                readiness_probes=2,
                user_fields=_frozen({"profiles": "Primary Administrator"}),
            ),
            # OpenIndiana Hipster: a placeholder with omnios's fields so the catalog's entry names a
            # profile; its provisioner (the metadata-agent's cpio disk) comes with the guests work.
            GuestProfile(
                name="openindiana",
                runner_os="illumos",
                bash="/usr/bin/bash",
                login_shell="/usr/bin/bash",
                seed_bus=SeedBus.VIRTIO,
                readiness_probes=2,
                user_fields=_frozen({"profiles": "Primary Administrator"}),
            ),
            # FreeBSD nuageinit: label must be lowercase "cidata"; sudo and bash are packages, so
            # they are installed at first boot (needs the guest's network) and the login shell is
            # /bin/sh, which exists before they do.
            GuestProfile(
                name="freebsd",
                runner_os="FreeBSD",
                bash="/usr/local/bin/bash",
                login_shell="/bin/sh",
                seed_bus=SeedBus.VIRTIO,
                cloud_config=_frozen({"packages": ["sudo", "bash"]}),
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
