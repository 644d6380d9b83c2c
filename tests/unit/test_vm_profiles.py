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


# --- profile data the job and the provisioners read, and its validation -----------------------


def test_openindiana_and_its_test_double_use_the_metadata_agent() -> None:
    from solstice.vm.profiles import Privilege, Provisioning

    for name in ("openindiana", "metadata-agent-test"):
        p = get_profile(name)
        assert p.provisioning is Provisioning.METADATA_AGENT
        assert p.user == "root" and p.privilege is Privilege.NONE
        assert not p.uses_cloud_config
    oi = get_profile("openindiana")
    assert oi.runner_os == "illumos" and oi.path_prepend == ("/usr/gnu/bin",)
    assert "kvm-pit.lost_tick_policy=delay" in oi.qemu_args
    assert get_profile("omnios").privilege is Privilege.PFEXEC
    assert get_profile("freebsd").reboots_on_first_boot
    assert get_profile("freebsd").provisioning is Provisioning.NUAGEINIT


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user": "root"}, "privilege 'none' is for a root login"),
        ({"privilege": "none"}, "privilege 'none' is for a root login"),
        ({"provisioning": "metadata-agent"}, "installs keys for root only"),
        (
            {"provisioning": "metadata-agent", "user": "root", "privilege": "none", "seed_bus": "ide-cdrom"},
            "raw disk",
        ),
        ({"provisioning": "nuageinit", "seed_label": "CIDATA"}, "lowercase label 'cidata'"),
        ({"seed_label": "config-2"}, "cidata or CIDATA"),
        ({"provisioning": "nocloud-fat", "seed_bus": "ide-cdrom"}, "not a CD-ROM"),
        ({"sh": "sh"}, "sh must be an absolute path"),
        ({"bash": "bash"}, "bash must be an absolute path"),
        ({"path_prepend": ("usr/gnu/bin",)}, "path_prepend"),
        ({"readiness_probes": 0}, "at least 1"),
        ({"boot_timeout": -1.0}, "negative"),
    ],
)
def test_inconsistent_profiles_are_refused(fields: dict[str, object], message: str) -> None:
    from solstice.errors import ProfileError
    from solstice.vm.profiles import GuestProfile, Privilege, Provisioning

    kw: dict[str, object] = dict(fields)
    for key, enum_type in (("provisioning", Provisioning), ("privilege", Privilege), ("seed_bus", SeedBus)):
        if key in kw:
            kw[key] = enum_type(kw[key])
    with pytest.raises(ProfileError) as exc:
        GuestProfile(name="bad", runner_os="Linux", **kw)  # type: ignore[arg-type]
    assert message in str(exc.value)
    assert "'bad'" in str(exc.value)


@pytest.mark.parametrize(
    ("tool", "want"),
    [
        ("sudo", "sudo -n /bin/sh -c 'echo '\"'\"'a b'\"'\"''"),
        ("pfexec", "pfexec /bin/sh -c 'echo '\"'\"'a b'\"'\"''"),
        ("doas", "doas -n /bin/sh -c 'echo '\"'\"'a b'\"'\"''"),
        ("none", "/bin/sh -c 'echo '\"'\"'a b'\"'\"''"),
    ],
)
def test_privilege_tool_wraps_a_command(tool: str, want: str) -> None:
    import subprocess

    from solstice.vm.profiles import Privilege

    wrapped = Privilege(tool).wrap("echo 'a b'")
    assert wrapped == want
    if tool == "none":
        assert subprocess.run(wrapped, shell=True, capture_output=True, text=True).stdout == "a b\n"
