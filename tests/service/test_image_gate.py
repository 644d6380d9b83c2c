"""The dispatcher takes jobs only for labels whose image is present and verified (docs/images.md,
"How the dispatcher decides"): real RabbitMQ, PostgreSQL, dispatcher process and stand-in job; the
image is pulled with ``solstice image pull`` from a local file while the dispatcher runs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.pipeline import LABEL, Pipeline, Poller, consumers, make_pipeline, make_request, wait_until
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice.cli.main import main as solstice
from solstice.config import BrokerConfig
from solstice.model import Result
from solstice.queue import Names


@pytest.fixture
def pipeline(broker_cfg: BrokerConfig, database_url: str) -> Iterator[Pipeline]:
    yield from make_pipeline(broker_cfg, database_url)


def gated_config(pipeline: Pipeline, source: Path) -> Path:
    """The pipeline's configuration with the image check on and debian-12 a pulled image."""
    text = pipeline.config_file.read_text()
    assert "check_images = false\n" in text and "[paths]\n" in text
    images_d = pipeline.runtime_dir / "images.d"
    images_d.mkdir()
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    text = text.replace("check_images = false\n", "check_images = true\n")
    text = text.replace("[paths]\n", f'[paths]\nimages_d = "{images_d}"\n')
    text += f'[images.{LABEL}]\nsource = "{source}"\nsha256 = "{sha}"\nformat = "raw"\nboot = "bios"\n'
    path = pipeline.runtime_dir / "gated.toml"
    path.write_text(text)
    return path


def test_jobs_wait_in_their_queue_until_the_image_is_pulled(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    source = pipeline.runtime_dir / "disk.raw"
    source.write_bytes(os.urandom(1 << 20))
    config = gated_config(pipeline, source)
    dispatcher = pipeline.dispatcher(env={"SOLSTICE_CONFIG": str(config)})
    poller = Poller(pipeline.cfg)
    try:
        disk = Path(pipeline.cfg.paths.state_dir) / "images" / LABEL / "disk.raw"
        wait_until(
            "the label's state in the log",
            lambda: f"label {LABEL}: not taking jobs" in dispatcher.output(),
            10,
        )
        assert f"{disk} does not exist (run `solstice image pull {LABEL}`)" in dispatcher.output()
        request = make_request("ok")
        poller.publish(request)
        poller.pump(2.0)
        # Not consumed: the job stays queued for a host that has the image.
        queue = Names(pipeline.cfg.broker).job_queue(LABEL)
        assert consumers(pipeline.cfg.broker, queue) == 0
        assert pipeline.runs(request.job_id) == [] and poller.final(request.job_id) is None

        assert solstice(["--config", str(config), "image", "pull", LABEL]) == 0
        assert f"pulled {LABEL}: {disk}" in capsys.readouterr().out
        final = poller.wait_final(request.job_id, 30)
        assert final.result is Result.SUCCESS
        out = dispatcher.output()
        assert f"label {LABEL}: taking jobs (image sha256 verified" in out
        # said once at the start, not again each round while nothing changed
        assert out.count(f"{disk} does not exist") == 1

        # A tampered disk fails `image verify`, and the label stops taking jobs.
        with disk.open("r+b") as f:
            f.write(b"tampered")
        assert solstice(["--config", str(config), "image", "verify", LABEL]) == 1
        wait_until(
            "the label to be given up",
            lambda: f"label {LABEL}: not taking jobs: failed verification" in dispatcher.output(),
            15,
        )
        wait_until("its queue to lose the consumer", lambda: consumers(pipeline.cfg.broker, queue) == 0, 10)
    finally:
        poller.close()
