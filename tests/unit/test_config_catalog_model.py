"""Configuration loading, the image catalog's label resolution, and the model's JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from solstice.config import load, parse_size_mib
from solstice.errors import ConfigError, ImageError
from solstice.images import Catalog
from solstice.model import (
    EventKind,
    JobEvent,
    JobRequest,
    JobSpec,
    Outcome,
    Size,
    Step,
    StepKind,
    Stream,
    from_dict,
    to_dict,
)
from solstice.vm.machine import BootMode


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "solstice.toml"
    p.write_text(text)
    return p


def test_defaults_without_a_file() -> None:
    cfg = load(environ={})
    assert cfg.vm.accel == "kvm" and cfg.vm.cpus == 2 and cfg.images == {}


def test_file_and_environment_override(tmp_path: Path) -> None:
    p = write(tmp_path, '[vm]\naccel = "kvm"\ncpus = 4\n[paths]\nstate_dir = "/srv/s"\n')
    cfg = load(p, environ={"SOLSTICE_VM_ACCEL": "tcg", "SOLSTICE_VM_BOOT_TIMEOUT": "60"})
    assert (cfg.vm.accel, cfg.vm.cpus, cfg.vm.boot_timeout) == ("tcg", 4, 60.0)
    assert cfg.paths.images_dir == Path("/srv/s/images")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[vm]\naccel = "xen"\n', 'accel = \'xen\': must be "kvm" or "tcg"'),
        ('[vm]\ncpus = "two"\n', "[vm] cpus = 'two': expected an integer"),
        ('[vm]\nmemory = "lots"\n', "[vm] memory: 'lots' is not a size"),
        ("[vm]\nspeed = 3\n", "unknown key [vm] speed"),
        ("[databse]\nurl = 1\n", "unknown table [databse]"),
        ("[vm\n", "not valid TOML"),
        ('[images.x]\nboot = "bios"\n', "[images.x]"),
        ('[images.x]\npath = "a"\nboot = "floppy"\n', "boot = 'floppy'"),
        ('[images.x]\npath = "a"\nboot = "kernel"\n', "needs kernel"),
        ('[images.ubuntu-24.04]\npath = "a"\n', "[images.ubuntu-24.04] is not an image table"),
    ],
)
def test_config_errors_name_the_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(p, environ={})
    assert message in str(info.value)
    assert str(p) in str(info.value)


def test_env_override_error_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="SOLSTICE_VM_CPUS"):
        load(environ={"SOLSTICE_VM_CPUS": "many"})


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize(
    ("text", "mib"), [("2G", 2048), ("512M", 512), ("1024", 1024), (768, 768), ("1.5GiB", 1536)]
)
def test_sizes(text: str | int, mib: int) -> None:
    assert parse_size_mib(text) == mib


def catalog(tmp_path: Path) -> Catalog:
    p = write(
        tmp_path,
        '[images.omnios-r151058]\npath = "omnios.qcow2"\nprofile = "omnios"\naliases = ["omnios"]\n'
        '[images."ubuntu-24.04"]\npath = "/abs/noble.img"\nformat = "raw"\n'
        'profile = "ubuntu"\nmemory = "4G"\n',
    )
    cfg = load(p, environ={"SOLSTICE_PATHS_STATE_DIR": str(tmp_path)})
    return Catalog.from_config(cfg)


def test_catalog_resolves_labels(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    assert cat.resolve(["debian-12"]) == "debian-12"
    assert cat.resolve(["self-hosted", "omnios"]) == "omnios-r151058"
    assert cat.resolve(("Linux", "X64", "ubuntu-24.04")) == "ubuntu-24.04"


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["windows-latest"], "unknown label 'windows-latest'"),
        (["self-hosted"], "names no image"),
        (["debian-12", "ubuntu-24.04"], "several images"),
        (["debian-12", "gpu"], "unknown label 'gpu'"),
    ],
)
def test_catalog_label_errors_list_what_exists(tmp_path: Path, labels: list[str], message: str) -> None:
    with pytest.raises(ImageError) as info:
        catalog(tmp_path).resolve(labels)
    assert message in str(info.value)
    assert "debian-12" in str(info.value)


def test_catalog_builds_images(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    omnios = cat.get("omnios")
    assert omnios.base_image == tmp_path / "images" / "omnios.qcow2"
    assert omnios.boot is BootMode.BIOS and omnios.profile.name == "omnios"
    ubuntu = cat.get("ubuntu-24.04")
    assert (
        ubuntu.base_image == Path("/abs/noble.img")
        and ubuntu.memory_mib == 4096
        and ubuntu.image_format == "raw"
    )
    deb = cat.get("debian-12")
    assert deb.boot is BootMode.KERNEL and deb.kernel == tmp_path / "images" / "debian-12" / "vmlinuz"
    with pytest.raises(ImageError, match="does not exist") as info:
        deb.check()
    assert info.value.hint is not None and "build-test-image" in info.value.hint


def test_model_json_round_trip() -> None:
    step = Step(
        number=1, name="x", kind=StepKind.CHECKOUT, with_={"path": "src"}, timeout_minutes="${{ 3 }}"
    )
    job = JobSpec(
        key="b", name="b (1)", runs_on=("debian-12",), steps=(step,), matrix={"v": [1, {"a": None}]}
    )
    req = JobRequest(job_id="u", job=job, label="debian-12", secrets={"S": "v"}, size=Size(4, 4096, 20))
    assert from_dict(JobRequest, json.loads(json.dumps(to_dict(req)))) == req
    ev = JobEvent(job_id="u", seq=3, time=1.5, kind=EventKind.STEP_FINISHED, step=1, outcome=Outcome.FAILURE)
    assert from_dict(JobEvent, json.loads(json.dumps(to_dict(ev)))) == ev
    log = JobEvent(job_id="u", seq=4, time=2.0, kind=EventKind.LOG, stream=Stream.STDERR, text="x")
    assert to_dict(log)["stream"] == "stderr" and to_dict(log)["schema_version"] == "jobevent.v1"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"kind": "explode"}, "JobEvent.kind"),
        ({"seq": "3"}, "JobEvent.seq: expected an integer"),
        ({"bogus": 1}, "unknown field(s) bogus"),
    ],
)
def test_model_rejects_bad_shapes(patch: dict[str, object], message: str) -> None:
    data = to_dict(JobEvent(job_id="u", seq=1, time=1.0, kind=EventKind.LOG))
    data.update(patch)
    with pytest.raises(ValueError) as info:
        from_dict(JobEvent, data)
    assert message in str(info.value)


def test_broker_names_derive_from_one_prefix() -> None:
    from solstice.config import BrokerConfig

    assert BrokerConfig.named("solstice") == BrokerConfig()
    other = BrokerConfig.named("ci2", url="amqp://h/")
    assert (other.jobs_exchange, other.dead_letter_queue, other.queue_prefix) == (
        "ci2.jobs",
        "ci2.dead-letter",
        "ci2.jobs.",
    )
    assert other.url == "amqp://h/"


# --- [labels]: GitHub-hosted names -> images -------------------------------------------------------

LABELS = """
[images.omnios-r151058]
path = "omnios.qcow2"
profile = "omnios"
aliases = ["omnios"]

[labels]
ubuntu-latest = "debian-12"
illumos-latest = "omnios"
"""


def test_labels_map_github_hosted_names_to_images_like_aliases(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, LABELS), environ={})
    assert cfg.labels == {"ubuntu-latest": "debian-12", "illumos-latest": "omnios"}
    catalog = Catalog.from_config(cfg)
    assert catalog.resolve(["ubuntu-latest"]) == "debian-12"
    assert catalog.resolve(["illumos-latest"]) == "omnios-r151058"
    # Dispatchers consume every label in Catalog.labels: the mapped ones too.
    assert {"ubuntu-latest", "illumos-latest"} <= set(catalog.labels)
    assert catalog.get("ubuntu-latest").label == "debian-12"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[labels]\nubuntu-latest = 3\n", "[labels] ubuntu-latest = 3: expected the label of an image"),
        ('[labels]\nubuntu-latest = ""\n', "[labels] ubuntu-latest = '': expected the label"),
        ('[labels]\na = "b"\nb = "debian-12"\n', "[labels] a = 'b': 'b' is itself a [labels] key"),
        ('labels = "debian-12"\n', "[labels] must be a table"),
    ],
)
def test_bad_labels_tables_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, table), environ={})
    assert message in str(info.value)


def test_a_label_mapped_to_no_image_is_named(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, '[labels]\nubuntu-latest = "ubuntu-22.04"\n'), environ={})
    with pytest.raises(
        ConfigError, match=r"\[labels\] ubuntu-latest = 'ubuntu-22.04': no image has that label"
    ):
        Catalog.from_config(cfg)
    text = '[images.o]\npath = "o.qcow2"\naliases = ["omnios"]\n[labels]\nomnios = "debian-12"\n'
    cfg = load(write(tmp_path, text), environ={})
    with pytest.raises(ConfigError, match=r"\[labels\] omnios: already a label of image 'o'"):
        Catalog.from_config(cfg)
