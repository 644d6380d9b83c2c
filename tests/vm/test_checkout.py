"""actions/checkout with ``fetch-depth: 0`` and ``submodules: true`` in a real guest: the
session's shared guest (tests/vm/sharedguest.py; test_machine.py's), given to the job through
JobRun's ``boot`` hook, so this module boots nothing of its own (run_job's boot is test_job.py's).

Local mode, from a repository made in tmp_path: two tagged commits and a submodule; the job runs
``git describe --tags`` and ``git log`` in the guest (the test image has git, as real images do).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from solstice.cli.common import Origin, checkout_origin, local_request
from solstice.images import Catalog
from solstice.job import checkout
from solstice.job.runner import JobRun
from solstice.model import EventKind, Result, Size
from solstice.workflow import parse_workflow
from tests.fakes.gitrepo import add_submodule, git, make_repo
from tests.fakes.jobsink import Collect
from tests.vm.sharedguest import SharedGuest
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
          echo "head $(git rev-parse HEAD)"
          echo "describe $(git describe --tags)"
          echo "first $(git describe --tags HEAD~2)"
          git log --format='log %s'
          echo "sub $(git -C sub rev-parse HEAD)"
          test -f .github/workflows/history.yml && echo untracked-kept
"""


def test_fetch_depth_0_and_submodules_reach_the_guest(
    test_image: Path, shared_guest: SharedGuest, tmp_path: Path
) -> None:
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
    guest = shared_guest.booted().guest
    try:
        # the guest is the session's: the job's ExitStack does not own it (nothing to register)
        result = JobRun(request, image, settings(runtime), sink, boot=lambda stack: guest).run()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    lines = [e.text for e in sink.events if e.kind is EventKind.LOG]
    assert result is Result.SUCCESS, lines
    step = [e.text for e in sink.events if e.kind is EventKind.LOG and e.step == 2]
    assert step == [
        f"head {head}",
        f"describe v2-1-g{head[:7]}",
        "first v1",
        "log submodule sub",
        "log version 2",
        "log version 1",
        f"sub {checkout.head_commit(sub)}",
        "untracked-kept",
    ], lines[-20:]
