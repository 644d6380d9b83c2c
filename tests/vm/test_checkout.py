"""actions/checkout with ``fetch-depth: 0`` and ``submodules: true`` in a real guest (one boot).

Local mode, from a repository made in tmp_path: two tagged commits and a submodule. The test image
has no git, so the guest checks what it unpacked with plain tools and sends its workspace back as
base64 in the log; the host then runs ``git describe --tags`` and ``git log`` on exactly that.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from solstice.cli.common import Origin, checkout_origin, local_request
from solstice.images import Catalog
from solstice.job import checkout
from solstice.job.runner import run_job
from solstice.model import EventKind, Result, Size
from solstice.workflow import parse_workflow
from tests.fakes.gitrepo import add_submodule, git, make_repo
from tests.fakes.jobsink import Collect
from tests.vm.test_job import settings, short_dir

pytestmark = pytest.mark.vm

WORKFLOW = """
on: push
jobs:
  history:
    runs-on: debian-12
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0
          submodules: true
      - name: inspect
        run: |
          test "$(cat sub/lib.txt)" = "from the submodule"
          test -d .git && test ! -e .git/shallow && test -f sub/.git
          echo BEGIN
          tar cf - --exclude=./.git/hooks . | gzip -9 | base64
          echo END
"""


def test_fetch_depth_0_and_submodules_reach_the_guest(test_image: Path, tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    make_repo(sub, "from the submodule\n", name="lib.txt")
    repo = tmp_path / "repo"
    make_repo(repo, "one\n", "two\n")
    git(repo, "tag", "v1", "HEAD~1")
    git(repo, "tag", "-a", "-m", "release 2", "v2")
    add_submodule(repo, sub, "sub", "../sub.git")
    head = checkout.head_commit(repo)
    workflows = repo / ".github" / "workflows"  # untracked: still checked out, as it is
    workflows.mkdir(parents=True)
    (workflows / "history.yml").write_text(WORKFLOW)

    (job,) = parse_workflow(WORKFLOW, "history.yml").jobs
    catalog = Catalog({}, test_image.parent)
    label = catalog.resolve(job.runs_on)
    origin = checkout_origin(workflows / "history.yml", explicit=True)
    assert origin == Origin(repo, head)  # what `solstice run` checks out
    size = Size(cpus=2, memory_mib=1024)
    request = local_request(job, label, origin, secrets={}, results={}, size=size)
    image = catalog.get(label)
    runtime = short_dir()
    sink = Collect()
    try:
        result = run_job(request, image, settings(runtime), sink)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    lines = [e.text for e in sink.events if e.kind is EventKind.LOG]
    assert result is Result.SUCCESS, lines
    assert "BEGIN" in lines and "END" in lines, lines[:3] + lines[-10:]
    data = base64.b64decode("".join(lines[lines.index("BEGIN") + 1 : lines.index("END")]))
    out = tmp_path / "from-guest"
    out.mkdir()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(out, filter="tar")

    def run(*args: str, cwd: Path = out) -> str:
        # the files are the guest user's (extracted as root here): git would call them dubious
        argv = ["git", "-c", "safe.directory=*", *args]
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run("rev-parse", "HEAD") == head
    assert run("describe", "--tags") == f"v2-1-g{head[:7]}"
    assert run("log", "--format=%s").split("\n") == ["submodule sub", "version 2", "version 1"]
    assert run("describe", "--tags", "HEAD~2") == "v1"
    assert (out / "sub" / "lib.txt").read_text() == "from the submodule\n"
    assert (out / ".github" / "workflows" / "history.yml").read_text() == WORKFLOW
    assert run("rev-parse", "HEAD", cwd=out / "sub") == checkout.head_commit(sub)
