"""Both test guests through the operator's commands under TCG: ``solstice image selftest`` on the
cloud-init guest and on the metadata-agent guest (no cloud-init: root's key from an odc cpio disk,
the OpenIndiana provisioner), and ``solstice image prepare`` followed by a job that uses what the
setup commands made. A non-default configuration file and state directory, as an operator has.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from solstice import config as configmod
from solstice.images import Catalog
from solstice.job.runner import JobSettings, run_job
from solstice.model import EventKind, JobRequest, Result
from solstice.workflow import parse_workflow
from tests.fakes.jobsink import Collect
from tests.testimage import build_test_image

pytestmark = pytest.mark.vm

MARKER = "/opt/solstice-prepared/marker"
SETUP = [f"mkdir -p {os.path.dirname(MARKER)}", f"echo installed-by-prepare > {MARKER}"]


@pytest.fixture(scope="module")
def metadata_image(test_image: Path) -> Path:
    return build_test_image(test_image.parent, variant="metadata")


@pytest.fixture(scope="module")
def operator(test_image: Path, metadata_image: Path) -> Iterator[Path]:
    """A configuration file whose state directory holds both test images (linked) and an image
    ``prep-test``: the cloud-init guest with setup commands."""
    state = Path(tempfile.mkdtemp(prefix="sol-state-", dir="/var/tmp"))
    runtime = Path(tempfile.mkdtemp(prefix="sol-", dir="/tmp"))
    images = state / "images"
    images.mkdir()
    for image in (test_image, metadata_image):
        (images / image.name).symlink_to(image)
    cmdline = (test_image / "cmdline").read_text().strip()
    cfg = state / "solstice.toml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            [paths]
            state_dir = "{state}"
            runtime_dir = "{runtime}"

            [vm]
            accel = "{os.environ.get("SOLSTICE_VM_ACCEL", "tcg")}"
            memory = "1G"
            boot_timeout = 240

            [images.prep-test]
            path = "debian-12/base.qcow2"
            boot = "kernel"
            kernel = "debian-12/vmlinuz"
            initrd = "debian-12/initrd.img"
            cmdline = "{cmdline}"
            profile = "debian"
            setup = {json.dumps(SETUP)}
            """
        )
    )
    yield cfg
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(runtime, ignore_errors=True)


def solstice(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "solstice", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )


def selftest(cfg: Path, label: str, images: Path) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    record = images / label / "selftest.json"
    record.unlink(missing_ok=True)  # the record must be this run's
    proc = solstice(cfg, "image", "selftest", label)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr
    doc = json.loads(record.read_text())
    assert doc["passed"] is True and doc["boot_seconds"] > 0, doc
    names = [c["name"] for c in doc["checks"]]
    for want in ("boot", "shell: sh", "checkout (tar)", "GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH",
                 "masking", "PATH additions", "clean shutdown"):  # fmt: skip
        assert want in names, names
    assert all(c["passed"] for c in doc["checks"]), doc
    assert f"{label}: self-test passed" in proc.stdout
    assert "boot " in proc.stdout and "pass" in proc.stdout
    return proc, doc


def test_selftest_passes_on_the_cloud_init_guest(operator: Path, test_image: Path) -> None:
    proc, doc = selftest(operator, "debian-12", test_image.parent)
    assert "privilege tool (sudo)" in [c["name"] for c in doc["checks"]]
    assert "::group::Boot console" in proc.stdout and "::endgroup::" in proc.stdout


def test_selftest_passes_on_the_metadata_agent_guest(operator: Path, metadata_image: Path) -> None:
    """No cloud-init in this guest: root's key came from the odc cpio archive at LBA 0 of the
    metadata disk, read by the guest's boot script the way the illumos metadata-agent reads it."""
    proc, doc = selftest(operator, "debian-12-metadata", metadata_image.parent)
    assert "privilege tool (none)" in [c["name"] for c in doc["checks"]]
    # The boot console (streamed into the job's log) shows the agent at work.
    assert "solstice-metadata: metadata from the odc cpio archive on /dev/vdb" in proc.stdout
    assert "solstice-metadata: installed root's authorized_keys" in proc.stdout
    assert "solstice-metadata: DHCP on " in proc.stdout
    assert "cloud-init" not in proc.stdout.lower()


def test_prepare_then_a_job_uses_what_setup_made(operator: Path) -> None:
    proc = solstice(operator, "image", "prepare", "prep-test")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr
    cfg = configmod.load(operator)
    prepared = list((cfg.paths.images_dir / "prep-test" / "prepared").glob("*.qcow2"))
    assert len(prepared) == 1 and f"prepared {prepared[0]}" in proc.stdout
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(prepared[0])],
                                     capture_output=True, check=True, text=True).stdout)  # fmt: skip
    assert "backing-filename" not in info  # flattened: independent of the base
    # Up to date: nothing boots.
    started = time.monotonic()
    again = solstice(operator, "image", "prepare", "prep-test")
    assert again.returncode == 0 and "already prepared" in again.stdout
    assert time.monotonic() - started < 30

    catalog = Catalog.from_config(cfg)
    image = catalog.get("prep-test")
    assert image.base_image == prepared[0]
    wf = parse_workflow(
        f"on: push\njobs:\n  j:\n    runs-on: prep-test\n    steps:\n      - run: cat {MARKER}\n",
        "prepared.yml",
    )
    request = JobRequest(job_id=str(uuid.uuid4()), job=wf.jobs[0], label="prep-test")
    sink = Collect()
    settings = JobSettings(vm=cfg.vm, runtime_dir=Path(cfg.paths.runtime_dir))
    assert run_job(request, image, settings, sink) is Result.SUCCESS, [e.text for e in sink.events]
    assert "installed-by-prepare" in [e.text for e in sink.events if e.kind is EventKind.LOG]
