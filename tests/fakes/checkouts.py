"""Helpers of the checkout tests: a running Forgejo task whose token fetches, and the guest's
side of a checkout (an archive unpacked as ``tar xf`` would)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from solstice.forges.forgejo.client import Client, Credentials
from solstice.job import checkout
from tests.fakes.forgejo import FakeForgejo, FakeTask

#: A push of a one-job workflow whose job checks out (the fake needs a workflow to make a task).
WORKFLOW = "on: push\njobs:\n  b:\n    runs-on: debian-12\n    steps: [{uses: actions/checkout@v4}]\n"


def git(*args: str | Path, cwd: Path) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=x", "-c", "user.email=x@x", *map(str, args)],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def commit(repo: Path, message: str) -> str:
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


def running_task(fake: FakeForgejo, sha: str, repository: str = "owner/repo") -> FakeTask:
    """A task of a pushed run of ``repository`` at ``sha``, picked by a runner through FetchTask."""
    fake.enqueue(WORKFLOW, repository=repository, sha=sha)
    runner = fake.add_runner(f"r{len(fake.runners)}", ["debian-12"])
    client = Client(fake.url, Credentials(runner.uuid, runner.token))
    try:
        task = client.fetch_task(0).task
    finally:
        client.close()
    assert task is not None
    assert task.context["repositoryUrl"] == f"{fake.url}/{repository}.git"
    return fake.tasks[task.id]


def unpack(archive: checkout.Archive, dest: Path) -> Path:
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.data)) as tar:
        tar.extractall(dest, filter="tar")
    return dest
