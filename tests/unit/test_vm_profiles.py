"""Guest profiles and their cloud-config."""

from __future__ import annotations

import pytest
import yaml

from solstice.errors import ImageError
from solstice.vm.profiles import PROFILES, SeedBus, get_profile

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample solstice-ci"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_user_data_is_cloud_config_with_the_key(name: str) -> None:
    profile = get_profile(name)
    text = profile.user_data(KEY, "solstice-abc")
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert doc["ssh_pwauth"] is False
    assert doc["disable_root"] is True
    assert doc["hostname"] == "solstice-abc"
    (user,) = doc["users"]
    assert user["name"] == profile.user
    assert user["ssh_authorized_keys"] == [KEY]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert user["lock_passwd"] is True


def test_hostile_values_stay_strings() -> None:
    doc = yaml.safe_load(get_profile("debian").user_data("a: b\n- c # d", "x\nusers: []"))
    assert doc["hostname"] == "x\nusers: []"
    assert doc["users"][0]["ssh_authorized_keys"] == ["a: b\n- c # d"]


def test_os_specific_facts() -> None:
    assert get_profile("debian").seed_bus is SeedBus.IDE_CDROM
    assert get_profile("ubuntu").seed_bus is SeedBus.IDE_CDROM
    assert get_profile("debian-genericcloud").seed_bus is SeedBus.VIRTIO
    assert get_profile("freebsd").seed_bus is SeedBus.VIRTIO
    assert get_profile("debian").user == "solstice"
    assert get_profile("debian").runner_os == "Linux"
    omnios = get_profile("omnios")
    assert omnios.runner_os == "illumos"
    assert omnios.bash == "/usr/bin/bash"
    assert omnios.readiness_probes == 2
    user = yaml.safe_load(omnios.user_data(KEY, "h"))["users"][0]
    assert user["profiles"] == "Primary Administrator"
    assert get_profile("freebsd").runner_os == "FreeBSD"
    for p in PROFILES.values():
        assert p.sh == "/bin/sh"
        assert p.readiness_probes >= 1
        assert p.bash == "" or p.bash.startswith("/")
        hash(p)  # frozen data


def test_unknown_profile_lists_known_names() -> None:
    with pytest.raises(ImageError) as exc:
        get_profile("plan9")
    for name in PROFILES:
        assert name in str(exc.value)
