"""cloud-init's NoCloud datasource: ``user-data`` (#cloud-config) and ``meta-data`` (JSON) on a
volume labelled ``cidata`` or ``CIDATA``, as ISO9660 or FAT (reference/guests.md §8)."""

from __future__ import annotations

from pathlib import Path

from solstice.vm.profiles import GuestProfile
from solstice.vm.provision.base import FirstBoot, Provisioner
from solstice.vm.seed import meta_data, write_fat, write_iso


class NoCloudISO(Provisioner):
    file_name = "seed.iso"

    def files(self, profile: GuestProfile, boot: FirstBoot) -> dict[str, bytes]:
        return {
            "user-data": profile.user_data(boot.public_key, boot.hostname).encode(),
            "meta-data": meta_data(boot.instance_id, boot.hostname).encode(),
        }

    def write_media(self, path: Path, profile: GuestProfile, files: dict[str, bytes]) -> None:
        write_iso(path, files, profile.seed_label)


class NoCloudFAT(NoCloudISO):
    """The same seed on FAT: for guests that read pcfs/vfat only (the metadata-agent's NoCloud
    path, some illumos and BSD agents)."""

    file_name = "seed.fat"

    def write_media(self, path: Path, profile: GuestProfile, files: dict[str, bytes]) -> None:
        write_fat(path, files, profile.seed_label)
