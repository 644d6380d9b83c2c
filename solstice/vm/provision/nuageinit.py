"""FreeBSD's nuageinit (base since 14.1): a NoCloud-style ISO, label ``cidata`` in lowercase only
(the profile check enforces it), and a first boot that runs freebsd-update and reboots: a login
on that first boot does not count until ``/firstboot`` is gone (reference/guests.md §4)."""

from __future__ import annotations

from solstice.vm.profiles import GuestProfile
from solstice.vm.provision.base import Readiness
from solstice.vm.provision.nocloud import NoCloudISO

#: rc(8) removes this sentinel at the end of the first boot, just before its reboot.
FIRSTBOOT_SENTINEL = "/firstboot"


class Nuageinit(NoCloudISO):
    def readiness(self, profile: GuestProfile) -> Readiness:
        command = f"test ! -e {FIRSTBOOT_SENTINEL}" if profile.reboots_on_first_boot else ""
        return Readiness(probes=profile.readiness_probes, command=command)
