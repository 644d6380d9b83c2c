"""The illumos metadata-agent's generic provider (OpenIndiana, reference/guests.md §3).

On QEMU (SMBIOS manufacturer "QEMU") the agent looks for a cpio archive at LBA 0 of each raw
disk, in the odc format (newc is refused), and installs its ``authorized_keys`` as root's and its
``nodename`` as the host name; it then DHCPs the first NIC. So the login user is root.
"""

from __future__ import annotations

from pathlib import Path

from solstice.vm.profiles import GuestProfile
from solstice.vm.provision.base import FirstBoot, Provisioner
from solstice.vm.seed import write_cpio_disk


class MetadataAgent(Provisioner):
    file_name = "metadata.img"

    def files(self, profile: GuestProfile, boot: FirstBoot) -> dict[str, bytes]:
        return {
            "authorized_keys": (boot.public_key + "\n").encode(),
            "nodename": (boot.hostname + "\n").encode(),
        }

    def write_media(self, path: Path, profile: GuestProfile, files: dict[str, bytes]) -> None:
        write_cpio_disk(path, files)

    def qemu_args(self, profile: GuestProfile) -> tuple[str, ...]:
        # QEMU's default, pinned: any other manufacturer sends the agent down another provider.
        return ("-smbios", "type=1,manufacturer=QEMU")
