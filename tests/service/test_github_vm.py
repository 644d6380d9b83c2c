"""A GitHub job end to end with a real guest: the fake GitHub -> ``solstice github-runner run`` ->
RabbitMQ -> a dispatcher -> ``solstice job run`` in a TCG guest -> step logs and result in the fake.

One boot: checkout of the job's commit (fetched from the fake's git server with the job's
GITHUB_TOKEN), a secret printed masked, a step output and the job output it feeds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.github import github_config, register, runner, step_logs, wait_completed
from helpers.pipeline import Pipeline, load_config, make_pipeline, qemu_of, wait_until
from store_fixtures import database_url as database_url  # noqa: F401  (fixture)
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice.config import BrokerConfig
from solstice.forges.github.translate import job_uuid
from solstice.secrets import write_new_key
from tests.fakes.github import FakeGitHub
from tests.fakes.gitrepo import make_repo
from tests.testimage import IMAGES, build_test_image

pytestmark = pytest.mark.vm

SECRET = "canary-3c8e-github-vm-secret"

WORKFLOW = """
name: ci
on: push
jobs:
  build:
    runs-on: [self-hosted, debian-12]
    outputs:
      words: ${{ steps.count.outputs.words }}
    steps:
      - uses: actions/checkout@v4
      - name: Count
        id: count
        run: |
          cat hello.txt
          echo "words=$(wc -w < hello.txt)" >> "$GITHUB_OUTPUT"
          echo "secret is ${{ secrets.API_KEY }}"
      - name: Use the output
        run: echo "counted ${{ steps.count.outputs.words }} words"
"""


@pytest.fixture
def pipeline(broker_cfg: BrokerConfig, database_url: str) -> Iterator[Pipeline]:
    build_test_image()
    made = make_pipeline(broker_cfg, database_url, job_command=f"{sys.executable} -m solstice job run")
    pipeline = next(made)
    key = pipeline.runtime_dir / "secrets.key"
    write_new_key(key)
    accel = os.environ.get("SOLSTICE_VM_ACCEL", "tcg")
    # the images are <state_dir>/images: the shared test image; the registration stays the test's
    state = pipeline.runtime_dir / "state"
    state.mkdir(exist_ok=True)
    (state / "images").symlink_to(IMAGES)
    text = pipeline.config_file.read_text()
    text += f'[vm]\naccel = "{accel}"\ncpus = 1\nmemory = "1G"\nboot_timeout = 400\n'
    pipeline.config_file.write_text(text + github_config(key))
    pipeline.cfg = load_config(pipeline.config_file)
    try:
        yield pipeline
    finally:
        made.close()


def test_checkout_secret_and_output_in_a_guest(pipeline: Pipeline, tmp_path: Path) -> None:
    with FakeGitHub(poll_hold=2.0) as fake:
        repo = tmp_path / "repo"
        first, _second = make_repo(repo, "hello from the first commit\n", "hello from the second commit\n")
        fake.add_repository(fake.repository, repo)
        register(pipeline, fake, name="vm-runner")
        pipeline.dispatcher(capacity=1)
        proc = runner(pipeline).start()
        (job,) = fake.enqueue(WORKFLOW, secrets={"API_KEY": SECRET}, sha=first)
        done = wait_completed(fake, job, 600, proc)
        assert done.completed is not None
        assert done.completed["conclusion"] == "succeeded", step_logs(fake, job)
        logs = step_logs(fake, job)
        checkout = next(v for k, v in logs.items() if "checkout" in k.lower())
        assert f"{first[:12]}" in checkout, logs
        count = logs["Count"]
        assert "hello from the first commit" in count and "second commit" not in count
        assert "secret is ***" in count and SECRET not in count
        assert "counted 5 words" in logs["Use the output"]
        assert done.completed["outputs"] == {"words": {"value": "5", "isSecret": False}}
        assert [s["conclusion"] for s in done.completed["stepResults"]] == ["succeeded"] * 3
        with fake.lock:
            assert any(j == job.job_id and status == 200 for j, status in fake.git_fetches)
            bodies = b"".join(r.body for r in fake.requests) + b"".join(
                bytes(b) for b in fake.blobs.values()
            )
        assert SECRET.encode() not in bodies and job.github_token.encode() not in bodies
        wait_until("the VM to be gone", lambda: not qemu_of(job_uuid(fake.github_url, job.job_id)), 30)
        proc.terminate()
