"""Provisioners: how a guest gets our key and first-boot data, one module per strategy.

A profile names its strategy (``GuestProfile.provisioning``); ``for_profile`` returns the
provisioner, which writes the seed disk, adds its QEMU arguments and says when the guest is ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from solstice.vm.profiles import GuestProfile, Provisioning
from solstice.vm.provision.base import FirstBoot, Provisioner, Readiness, Seed
from solstice.vm.provision.key_disk import KeyDisk
from solstice.vm.provision.metadata_agent import MetadataAgent
from solstice.vm.provision.nocloud import NoCloudFAT, NoCloudISO
from solstice.vm.provision.nuageinit import Nuageinit

__all__ = ["PROVISIONERS", "FirstBoot", "Provisioner", "Readiness", "Seed", "for_profile"]

PROVISIONERS: Mapping[Provisioning, Provisioner] = MappingProxyType(
    {
        Provisioning.NOCLOUD_ISO: NoCloudISO(),
        Provisioning.NOCLOUD_FAT: NoCloudFAT(),
        Provisioning.NUAGEINIT: Nuageinit(),
        Provisioning.METADATA_AGENT: MetadataAgent(),
        Provisioning.KEY_DISK: KeyDisk(),
    }
)


def for_profile(profile: GuestProfile) -> Provisioner:
    return PROVISIONERS[profile.provisioning]
