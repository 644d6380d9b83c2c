"""What every provisioner supplies: the seed's files, the seed disk and its bus, extra QEMU
arguments, and the readiness rule (docs/images.md "Provisioners")."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

from solstice.vm.profiles import GuestProfile, SeedBus


@dataclass(frozen=True)
class FirstBoot:
    """This VM's first-boot data: our ephemeral public key and its identity."""

    public_key: str  # one authorized_keys line
    instance_id: str
    hostname: str


@dataclass(frozen=True)
class Seed:
    """The seed disk as QEMU attaches it (always raw, read-only)."""

    path: Path
    bus: SeedBus


@dataclass(frozen=True)
class Readiness:
    """When a booted guest counts as ready for the job."""

    #: Consecutive successful SSH logins with our key.
    probes: int = 1
    #: A command that must exit 0 in the guest too ("" for none), e.g. a first boot is over.
    command: str = ""


class Provisioner(abc.ABC):
    """One provisioning strategy. Stateless: the profile and the VM's FirstBoot say everything."""

    #: The seed's file name in the VM's work directory.
    file_name: str = "seed.img"

    @abc.abstractmethod
    def files(self, profile: GuestProfile, boot: FirstBoot) -> dict[str, bytes]:
        """The files the seed holds, by name."""

    @abc.abstractmethod
    def write_media(self, path: Path, profile: GuestProfile, files: dict[str, bytes]) -> None:
        """Write the seed disk holding ``files`` to ``path``."""

    def write(self, directory: Path, profile: GuestProfile, boot: FirstBoot) -> Seed:
        path = directory / self.file_name
        self.write_media(path, profile, self.files(profile, boot))
        return Seed(path, profile.seed_bus)

    def qemu_args(self, profile: GuestProfile) -> tuple[str, ...]:
        """QEMU arguments this way of provisioning needs besides the seed disk."""
        return ()

    def readiness(self, profile: GuestProfile) -> Readiness:
        return Readiness(probes=profile.readiness_probes)
