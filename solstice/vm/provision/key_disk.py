"""A prebaked image (one built for Solstice, cross-platform-actions style): no agent, just a FAT
disk labelled ``seed_label`` holding ``authorized_keys``, which the image's own boot script copies
to its login user (docs/images.md "Provisioners")."""

from __future__ import annotations

from pathlib import Path

from solstice.vm.profiles import GuestProfile
from solstice.vm.provision.base import FirstBoot, Provisioner
from solstice.vm.seed import write_fat


class KeyDisk(Provisioner):
    file_name = "keys.fat"

    def files(self, profile: GuestProfile, boot: FirstBoot) -> dict[str, bytes]:
        return {"authorized_keys": (boot.public_key + "\n").encode()}

    def write_media(self, path: Path, profile: GuestProfile, files: dict[str, bytes]) -> None:
        write_fat(path, files, profile.seed_label)
