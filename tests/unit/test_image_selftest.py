"""The self-test's checks, its record, and prepared-image keys; the checks run through the real
job runner on an in-process guest (tests/vm/test_guests.py runs them on real guests)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path

import pytest

from solstice.config import ImageConfig
from solstice.images import Catalog
from solstice.images.prepared import find_prepared, prepared_key, prepared_path
from solstice.images.selftest import Check, SelftestResult, read_record, record_path, write_record
from solstice.job.guest import Guest
from solstice.job.runner import JobRun, JobSettings
from solstice.job.selftest import Recorder, judge, new_secret, selftest_request
from solstice.model import Phase
from solstice.vm.profiles import get_profile
from tests.fakes.jobsink import Collect
from tests.fakes.localguest import LocalGuest, stand_in_image


def run_checks(profile: str, tmp_path: Path) -> tuple[SelftestResult, Collect]:
    image = dataclasses.replace(stand_in_image("selftest-local"), profile=get_profile(profile))
    secret = new_secret()
    tree = tmp_path / "tree"
    tree.mkdir()
    request = selftest_request(image, tree, secret)
    sink = Collect()
    rec = Recorder(sink, secret)
    run = JobRun(request, image, JobSettings(runtime_dir=tmp_path / "run"), rec)

    def boot(stack: contextlib.ExitStack) -> Guest:
        run._phase(Phase.BOOT)
        guest = LocalGuest.booted(stack)
        run._phase(Phase.READY)
        return guest

    run.boot = boot
    run.run()
    assert not any(v in e.text for v in (secret, secret.upper()) for e in sink.events)
    return judge(rec, request.job.steps, powered_off=True), sink


def test_the_contract_passes_on_a_guest_that_meets_it(tmp_path: Path) -> None:
    # metadata-agent-test logs in as root with no privilege tool: right here only as root.
    result, _ = run_checks("metadata-agent-test", tmp_path)
    by_name = {c.name: c for c in result.checks}
    names = list(by_name)
    for want in ("boot", "shell: sh", "default shell (bash)", "checkout (tar)", "checked-out files",
                 "GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "masking", "privilege tool (none)",
                 "PATH additions", "clean shutdown"):  # fmt: skip
        assert want in names
    failed = [c for c in result.checks if not c.passed]
    if os.geteuid() == 0:
        assert failed == [], failed
        assert result.passed
    else:
        assert [c.name for c in failed] == ["privilege tool (none)"]
    assert by_name["masking"].detail == "secret and ::add-mask:: value shown as ***"
    assert by_name["GITHUB_PATH"].detail == "selftest tool on PATH"
    assert result.boot_seconds is not None and result.boot_seconds >= 0


def test_a_missing_privilege_tool_fails_only_its_check(tmp_path: Path) -> None:
    # The debian profile's sudo: this host has none (tests run without it), so only that fails.
    assert not any((Path(d) / "sudo").exists() for d in os.environ["PATH"].split(":"))
    result, _ = run_checks("debian", tmp_path)
    assert [c.name for c in result.checks if not c.passed] == ["privilege tool (sudo)"]
    assert not result.passed


def test_a_guest_that_never_booted_is_one_failed_check() -> None:
    rec = Recorder(Collect(), "x")
    result = judge(rec, (), powered_off=None)
    assert [(c.name, c.passed) for c in result.checks] == [("boot", False)]
    assert not result.passed and result.boot_seconds is None


def test_record_round_trip_and_format(tmp_path: Path) -> None:
    result = SelftestResult((Check("boot", True, "12 s"), Check("tar", False, "no tar")), 12.345)
    path = write_record(tmp_path, "omnios", result)
    assert path == record_path(tmp_path, "omnios") == tmp_path / "omnios" / "selftest.json"
    doc = json.loads(path.read_text())
    assert doc == {
        "passed": False,
        "at": result.at,
        "boot_seconds": 12.3,
        "checks": [
            {"name": "boot", "passed": True, "detail": "12 s"},
            {"name": "tar", "passed": False, "detail": "no tar"},
        ],
    }
    assert result.at.endswith("Z") and "T" in result.at
    back = read_record(tmp_path, "omnios")
    assert back is not None and back.checks == result.checks and not back.passed
    assert read_record(tmp_path, "nothing") is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "selftest.json").write_text("{")
    assert read_record(tmp_path, "broken") is None


def test_prepared_key_follows_base_and_commands(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"one")
    key = prepared_key(base, ["apt-get install -y gcc"])
    assert len(key) == 64
    assert prepared_key(base, ["apt-get install -y gcc"]) == key
    assert prepared_key(base, ["apt-get install -y gcc", "true"]) != key
    base.write_bytes(b"a new version of the base")
    assert prepared_key(base, ["apt-get install -y gcc"]) != key


def test_catalog_boots_the_prepared_copy_when_it_exists(tmp_path: Path) -> None:
    base = tmp_path / "my" / "base.qcow2"
    base.parent.mkdir()
    base.write_bytes(b"base")
    cfg = ImageConfig(label="my", path="my/base.qcow2", setup=("touch /etc/prepared",), format="raw")
    catalog = Catalog({"my": cfg}, tmp_path)
    assert catalog.get("my").base_image == base
    assert find_prepared(tmp_path, "my", base, cfg.setup) is None
    prepared = prepared_path(tmp_path, "my", base, cfg.setup)
    assert prepared.parent == tmp_path / "my" / "prepared"
    prepared.parent.mkdir()
    prepared.write_bytes(b"prepared")
    image = catalog.get("my")
    assert image.base_image == prepared and image.image_format == "qcow2" and image.unprepared == base
    plain = catalog.get("my", prepared=False)
    assert plain.base_image == base and plain.image_format == "raw" and plain.setup == cfg.setup
    # Other commands: another key, so back to the plain base until prepared again.
    changed = Catalog({"my": dataclasses.replace(cfg, setup=("true",))}, tmp_path)
    assert changed.get("my").base_image == base


def test_setup_must_be_command_strings() -> None:
    from solstice.errors import ConfigError

    with pytest.raises(ConfigError, match="setup"):
        ImageConfig(label="x", path="x.qcow2", setup=("",)).validate("f.toml")


def test_the_second_test_image_is_in_the_catalog(tmp_path: Path) -> None:
    image = Catalog({}, tmp_path).get("debian-12-metadata")
    assert image.profile.name == "metadata-agent-test"
    assert image.base_image == tmp_path / "debian-12-metadata" / "base.qcow2"


def test_setup_commands_become_privileged_steps_then_sync(tmp_path: Path) -> None:
    from solstice.errors import ImageError
    from solstice.job.prepare import prepare_image, setup_steps

    image = dataclasses.replace(stand_in_image("p"), setup=("pkg install gcc14", "touch /x"))
    steps = setup_steps(image)
    assert [s.run for s in steps] == [
        "sudo -n /bin/sh -c 'pkg install gcc14'",
        "sudo -n /bin/sh -c 'touch /x'",
        "sudo -n /bin/sh -c 'sync'",
    ]
    assert [s.name for s in steps] == ["setup: pkg install gcc14", "setup: touch /x", "sync"]
    with pytest.raises(ImageError, match="no setup commands"):
        prepare_image(stand_in_image("p"), tmp_path, JobSettings(runtime_dir=tmp_path), Collect())
