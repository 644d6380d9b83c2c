"""Every built-in profile's seed, written by its provisioner and read back from the medium: the
ISO with pycdlib, FAT with mtools and its boot sector, the metadata-agent's disk with a cpio
reader of its own (odc, as the agent parses it)."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml

from solstice.vm.profiles import PROFILES, GuestProfile, Provisioning, SeedBus
from solstice.vm.provision import PROVISIONERS, FirstBoot, for_profile
from solstice.vm.seed import CPIO_DISK_BYTES, meta_data, odc_archive, write_fat, write_iso

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample solstice-ci"
BOOT = FirstBoot(public_key=KEY, instance_id="job-123", hostname="solstice-job123")


def read_iso(path: Path) -> tuple[str, dict[str, bytes]]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.has_joliet() and iso.has_rock_ridge()
        label = iso.pvd.volume_identifier.rstrip(b" \x00").decode()
        files = {}
        for child in iso.list_children(rr_path="/"):
            name = child.rock_ridge.name().decode() if child.rock_ridge else ""
            if name in ("", ".", ".."):
                continue
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            joliet = io.BytesIO()
            iso.get_file_from_iso_fp(joliet, joliet_path=f"/{name}")
            assert joliet.getvalue() == out.getvalue()
            files[name] = out.getvalue()
        return label, files
    finally:
        iso.close()


def read_fat(path: Path, names: list[str]) -> tuple[str, dict[str, bytes]]:
    boot = path.read_bytes()[:512]
    assert boot[510:512] == b"\x55\xaa"
    label = boot[43:54].decode().rstrip()  # FAT12/16 extended boot record
    files = {}
    for name in names:
        files[name] = subprocess.run(
            ["mtype", "-i", str(path), f"::{name}"], check=True, capture_output=True
        ).stdout
    listing = subprocess.run(["mdir", "-b", "-i", str(path), "::"], check=True, capture_output=True)
    assert sorted(line.rsplit("/", 1)[-1] for line in listing.stdout.decode().split()) == sorted(names)
    return label, files


def read_odc(data: bytes) -> dict[str, bytes]:
    """A reader written from POSIX's odc description: 76-byte octal header, name, data."""
    files: dict[str, bytes] = {}
    pos = 0
    while True:
        header = data[pos : pos + 76]
        assert header[:6] == b"070707", f"no odc magic at {pos}: {header[:6]!r}"
        mode = int(header[18:24], 8)
        namesize = int(header[59:65], 8)
        filesize = int(header[65:76], 8)
        name = data[pos + 76 : pos + 76 + namesize]
        assert name.endswith(b"\0")
        body = data[pos + 76 + namesize : pos + 76 + namesize + filesize]
        pos += 76 + namesize + filesize
        if name[:-1] == b"TRAILER!!!":
            return files
        assert mode & 0o170000 == 0o100000  # a regular file
        files[name[:-1].decode()] = body


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_renders_its_seed(name: str, tmp_path: Path) -> None:
    profile = PROFILES[name]
    seed = for_profile(profile).write(tmp_path, profile, BOOT)
    assert seed.path.parent == tmp_path and seed.bus is profile.seed_bus
    kind = profile.provisioning
    if kind in (Provisioning.NOCLOUD_ISO, Provisioning.NUAGEINIT):
        label, files = read_iso(seed.path)
    elif kind in (Provisioning.NOCLOUD_FAT, Provisioning.KEY_DISK):
        label, files = read_fat(seed.path, sorted(for_profile(profile).files(profile, BOOT)))
    else:
        assert kind is Provisioning.METADATA_AGENT
        data = seed.path.read_bytes()
        assert len(data) == CPIO_DISK_BYTES
        assert data[:6] == b"070707"  # at LBA 0; newc (070701) would be refused by the agent
        label, files = "", read_odc(data)
    if profile.uses_cloud_config:
        assert label == profile.seed_label
        assert set(files) == {"user-data", "meta-data"}
        doc = yaml.safe_load(files["user-data"].decode())
        assert files["user-data"].startswith(b"#cloud-config\n")
        assert doc["users"][0]["name"] == profile.user
        assert doc["users"][0]["ssh_authorized_keys"] == [KEY]
        assert json.loads(files["meta-data"]) == {"instance-id": "job-123", "local-hostname": BOOT.hostname}
    elif kind is Provisioning.METADATA_AGENT:
        assert profile.user == "root"
        assert files == {"authorized_keys": (KEY + "\n").encode(), "nodename": b"solstice-job123\n"}
    else:
        assert files == {"authorized_keys": (KEY + "\n").encode()}


@pytest.mark.parametrize("label", ["cidata", "CIDATA"])
def test_nocloud_label_case_is_kept(label: str, tmp_path: Path) -> None:
    files = {"user-data": b"#cloud-config\n", "meta-data": meta_data("i", "h").encode()}
    write_iso(tmp_path / "s.iso", files, label)
    write_fat(tmp_path / "s.fat", files, label)
    assert read_iso(tmp_path / "s.iso") == (label, files)
    assert read_fat(tmp_path / "s.fat", sorted(files)) == (label, files)


@pytest.mark.parametrize("kind", list(Provisioning))
def test_each_strategy_renders_with_a_profile_of_its_own(kind: Provisioning, tmp_path: Path) -> None:
    """Also the strategies no built-in profile uses yet (a FAT NoCloud seed, a key disk)."""
    root = kind is Provisioning.METADATA_AGENT
    profile = GuestProfile(
        name=f"test-{kind}",
        runner_os="Linux",
        provisioning=kind,
        user="root" if root else "solstice",
        privilege=PROFILES["openindiana"].privilege if root else PROFILES["debian"].privilege,
        seed_label="CIDATA" if kind is Provisioning.NOCLOUD_FAT else "cidata",
    )
    seed = PROVISIONERS[kind].write(tmp_path, profile, BOOT)
    assert seed.path.stat().st_size > 0
    if kind is Provisioning.NOCLOUD_FAT:
        assert read_fat(seed.path, ["meta-data", "user-data"])[0] == "CIDATA"


def test_odc_archive_refuses_paths_and_round_trips() -> None:
    assert read_odc(odc_archive({"a": b"1", "b": b""})) == {"a": b"1", "b": b""}
    with pytest.raises(ValueError):
        odc_archive({"../x": b""})


def test_seed_buses_of_the_known_guests() -> None:
    assert PROFILES["openindiana"].seed_bus is SeedBus.VIRTIO
    assert PROFILES["metadata-agent-test"].provisioning is PROFILES["openindiana"].provisioning
