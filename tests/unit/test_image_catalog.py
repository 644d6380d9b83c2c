"""The catalog's files: the built-in set, [paths] images_d, solstice.toml; which wins, size
presets, aliases, and errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from solstice.config import load
from solstice.errors import ConfigError
from solstice.images import Catalog
from solstice.images.catalog_files import builtin
from solstice.vm.profiles import PROFILES


def host(tmp_path: Path, files: dict[str, str], config: str = "") -> Catalog:
    images_d = tmp_path / "images.d"
    images_d.mkdir(exist_ok=True)
    for name, text in files.items():
        (images_d / name).write_text(text)
    cfg = tmp_path / "solstice.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{tmp_path}/state"\nimages_d = "{images_d}"\n' + config)
    return Catalog.from_config(load(cfg, environ={}))


BUILTIN_LABELS = {
    "debian-12",
    "debian-12-metadata",
    "debian-12-genericcloud",
    "debian-13-genericcloud",
    "ubuntu-24.04",
    "omnios-r151058",
    "omnios-r151054",
    "omnios-bloody",
    "openindiana-hipster",
    "freebsd-14",
    "freebsd-15",
}


def test_the_built_in_catalog_covers_the_issues_oses_with_existing_profiles(tmp_path: Path) -> None:
    catalog = host(tmp_path, {})
    assert set(catalog.entries) == BUILTIN_LABELS
    for label in catalog.entries:
        entry = catalog.config(label)
        assert entry.profile in PROFILES
        assert entry.verified.startswith(("booted ", "not verified: ")), label
        assert entry.os, label
        if label == "omnios-bloody":
            assert (
                entry.source.endswith("/omnios-bloody-*.cloud.raw.zst")
                and entry.checksums == "{source}.sha256"
            )
        elif label not in ("debian-12", "debian-12-metadata"):
            assert entry.source.startswith("https://") and entry.checksums.startswith("https://"), label
    # the names a workflow author uses
    assert catalog.canonical("illumos-latest") == "omnios-r151058"
    assert catalog.canonical("omnios-lts") == "omnios-r151054"
    assert catalog.canonical("openindiana") == "openindiana-hipster"
    assert catalog.config("openindiana").profile == "openindiana"
    omnios = catalog.get("omnios")
    assert (omnios.cpus, omnios.memory_mib, omnios.disk_gib) == (2, 4096, 20)  # the illumos preset
    assert omnios.base_image == tmp_path / "state/images/omnios-r151058/disk.qcow2"
    freebsd = catalog.config("freebsd-14")
    assert freebsd.compression == "xz" and freebsd.checksums.endswith("/CHECKSUM.SHA256")
    assert builtin().origins["freebsd-14"].startswith("the built-in catalog")


def test_images_d_replaces_built_ins_and_solstice_toml_replaces_both(tmp_path: Path) -> None:
    catalog = host(
        tmp_path,
        {
            "10-mirror.toml": '[images.omnios-r151058]\nsource = "https://mirror.example/o.qcow2"\n'
            f'sha256 = "{"a" * 64}"\nprofile = "omnios"\naliases = ["illumos-latest"]\n'
            '[images.mine]\npath = "/srv/mine.qcow2"\n',
            "20-sizes.toml": '[sizes.illumos]\ncpus = 6\nmemory = "12G"\n',
        },
        '[images.mine]\npath = "/srv/other.qcow2"\nsize = "small"\n',
    )
    omnios = catalog.get("illumos-latest")
    assert omnios.label == "omnios-r151058" and omnios.config is not None
    assert omnios.config.source == "https://mirror.example/o.qcow2"
    assert omnios.origin == str(tmp_path / "images.d" / "10-mirror.toml")
    # the whole entry was replaced: the built-in aliases went with it
    assert catalog.canonical("omnios-stable") is None
    assert catalog.get("omnios-r151054").memory_mib == 12 * 1024  # images.d's preset replaced
    mine = catalog.get("mine")
    assert mine.base_image == Path("/srv/other.qcow2") and (mine.cpus, mine.memory_mib) == (1, 1024)
    assert mine.origin == str(tmp_path / "solstice.toml")


def test_the_operators_names_hide_built_in_ones(tmp_path: Path) -> None:
    catalog = host(
        tmp_path,
        {"a.toml": '[images.my-omnios]\npath = "/srv/o.qcow2"\nprofile = "omnios"\naliases = ["omnios"]\n'},
        '[labels]\n"ubuntu-24.04" = "debian-12"\nbookworm = "debian-12"\n',
    )
    assert catalog.canonical("omnios") == "my-omnios"  # not the built-in alias of r151058
    assert catalog.canonical("omnios-stable") == "omnios-r151058"
    assert catalog.canonical("ubuntu-24.04") == "debian-12"  # the built-in entry is hidden
    assert "ubuntu-24.04" not in catalog.entries
    assert catalog.canonical("bookworm") == "debian-12"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[images.x\n", "not valid TOML"),
        ('[image.x]\npath = "a"\n', "unknown table [image]"),
        ('[images.x]\npath = "a"\ncompresion = "zst"\n', "unknown key [images.x] compresion"),
        (
            '[images.x]\nsource = "https://h/a.zst"\nsha256 = "a"\ncompression = "lz4"\n',
            "compression = 'lz4'",
        ),
        ('[images.x]\nsource = "https://h/a"\nsha256 = "XYZ"\n', "[images.x] sha256 = 'XYZ': must be 64"),
        ('[images.x]\nsource = "https://h/a"\n', "[images.x] source needs sha256 or checksums"),
        (
            '[images.x]\nsource = "ftp://h/a"\nsha256 = "' + "a" * 64 + '"\n',
            "[images.x] source = 'ftp://h/a'",
        ),
        (
            '[images.x]\npath = "a"\nformat = "vdi"\n',
            "[images.x] format = 'vdi': must be qcow2, raw or vmdk",
        ),
        ('[images.x]\npath = "a"\narch = "sparc"\n', "[images.x] arch = 'sparc'"),
        ('[images.x]\npath = "a"\nprofile = "beos"\n', "[images.x] profile = 'beos': no such guest profile"),
        ('[images.x]\npath = "a"\nsize = "huge"\n', "[images.x] size = 'huge': no such size preset"),
        ('[sizes.huge]\nmemory = "lots"\n', "[sizes.huge] memory: 'lots' is not a size"),
        ('[images.x]\nchecksums = "https://h/SUMS"\npath = "a"\n', "[images.x] checksums needs a source"),
        ('[images.ubuntu-26.04]\npath = "a"\n', "[images.ubuntu-26.04] is not an image table"),
        ('[images.x]\nsource = "https://h/d-*.raw"\nsha256 = "' + "a" * 64 + '"\n', "a * pattern needs"),
        (
            '[images.x]\nsource = "https://h/*/d.raw"\nchecksums = "{source}.sha256"\n',
            "only be in the file name",
        ),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        host(tmp_path, {"bad.toml": text})
    assert message in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "images.d" / "bad.toml") + ": ")


def test_a_label_in_two_files_names_both(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        host(tmp_path, {"a.toml": '[images.x]\npath = "a"\n', "b.toml": '[images.x]\npath = "b"\n'})
    d = tmp_path / "images.d"
    assert str(info.value) == f"{d / 'b.toml'}: [images.x] is also defined in {d / 'a.toml'}"


def test_a_missing_images_d_is_empty_and_other_files_are_ignored(tmp_path: Path) -> None:
    cfg = tmp_path / "solstice.toml"
    cfg.write_text(f'[paths]\nimages_d = "{tmp_path}/nowhere"\n')
    assert set(Catalog.from_config(load(cfg, environ={})).entries) == BUILTIN_LABELS
    catalog = host(tmp_path, {"README": "not toml", "x.toml.disabled": "[images.y\n"})
    assert set(catalog.entries) == BUILTIN_LABELS


def test_a_dispatcher_serves_the_operators_images_and_the_pulled_built_ins(tmp_path: Path) -> None:
    catalog = host(
        tmp_path,
        {"a.toml": '[images.mine]\npath = "/srv/mine.qcow2"\naliases = ["my"]\n'},
        '[labels]\nubuntu-latest = "debian-12"\n',
    )
    assert catalog.served_labels() == ["debian-12", "mine", "my", "ubuntu-latest"]
    disk = catalog.get("freebsd-14").base_image
    disk.parent.mkdir(parents=True)
    disk.write_bytes(b"pulled")
    assert catalog.served_labels() == [
        "debian-12",
        "freebsd-14",
        "freebsd-14.3",
        "mine",
        "my",
        "ubuntu-latest",
    ]
