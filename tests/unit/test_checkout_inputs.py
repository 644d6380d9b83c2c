"""actions/checkout's inputs: refused at plan time when Solstice cannot honour them, and honoured by
the host's fetch (real git against the fake Forgejo's smart HTTP) and by local mode's packing."""

from __future__ import annotations

import base64
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from solstice.errors import WorkflowError
from solstice.job import checkout
from solstice.job.checkout import CheckoutError, fetch_commit, pack_tree
from solstice.job.runner import FetchTarget, JobRun, JobSettings
from solstice.model import EventKind, JobRequest, Result, Source
from solstice.workflow import WorkflowProblems, parse_workflow
from solstice.workflow.checkout import INPUTS, CheckoutInputs, Submodules, parse, problems
from tests.fakes.checkouts import WORKFLOW, commit, git, running_task, unpack
from tests.fakes.forgejo import FakeForgejo, FakeTask
from tests.fakes.gitrepo import add_submodule, make_repo
from tests.fakes.jobsink import Collect
from tests.fakes.localguest import LocalGuest, stand_in_image


@dataclass
class Repos:
    main: Path
    sub: Path
    first: str  # tagged v1, on main
    second: str  # tagged v2 (annotated)
    third: str  # adds the submodule `sub`: main's tip
    side: str  # branch `side`, off the first commit


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.fixture
def repos(tmp_path: Path) -> Repos:
    sub = tmp_path / "sub"
    make_repo(sub, "from the submodule\n", name="lib.txt")
    main = tmp_path / "main"
    write(main, {"a.txt": "first\n", "docs/guide.md": "guide\n", "src/code.py": "print(1)\n"})
    git("init", "-q", "-b", "main", cwd=main)
    first = commit(main, "one")
    git("tag", "v1", cwd=main)
    write(main, {"a.txt": "second\n"})
    second = commit(main, "two")
    git("tag", "-a", "-m", "release 2", "v2", cwd=main)
    third = add_submodule(main, sub, "sub", "../sub.git")
    git("checkout", "-q", "-b", "side", first, cwd=main)
    write(main, {"side.txt": "side\n"})
    side = commit(main, "side")
    git("checkout", "-q", "main", cwd=main)
    return Repos(main, sub, first, second, third, side)


@pytest.fixture
def fake(repos: Repos) -> Iterator[FakeForgejo]:
    with FakeForgejo() as f:
        f.add_repository("owner/repo", repos.main)
        f.add_repository("owner/sub", repos.sub, public=True)
        yield f


def url(fake: FakeForgejo) -> str:
    return f"{fake.url}/owner/repo.git"


def fetched(
    fake: FakeForgejo, tmp_path: Path, sha: str, ref: str, inputs: CheckoutInputs, task_sha: str = ""
) -> tuple[Path, FakeTask]:
    """Fetch as a job would, pack, and unpack as the guest would: the guest's tree."""
    task = running_task(fake, task_sha or sha or "0" * 40)
    tree = fetch_commit(url(fake), sha, ref, task.token, tmp_path / "co", inputs=inputs)
    archive = pack_tree(tree, include_git=True, submodules=inputs.submodules)
    return unpack(archive, tmp_path / "guest"), task


# --- plan time ----------------------------------------------------------------------------------


def plan(with_: str) -> list[str]:
    text = (
        "on: push\njobs:\n  b:\n    runs-on: debian-12\n    steps:\n"
        "      - uses: actions/checkout@v4\n        with:\n" + with_
    )
    try:
        parse_workflow(text, "wf.yml")
    except WorkflowProblems as exc:
        return [str(p) for p in exc.entries]
    return []


def test_every_documented_input_is_known_and_the_honoured_ones_plan() -> None:
    assert (
        plan(
            "          fetch-depth: 0\n          fetch-tags: true\n          ref: v1\n"
            "          submodules: recursive\n          clean: false\n          persist-credentials: false\n"
            "          lfs: false\n          sparse-checkout: |\n            src\n"
            "          sparse-checkout-cone-mode: false\n          repository: owner/other\n"
            "          token: ${{ secrets.OTHER }}\n          github-server-url: https://forge.example\n"
            "          path: here\n          show-progress: false\n          set-safe-directory: true\n"
        )
        == []
    )
    docs = (Path(__file__).parents[2] / "docs" / "workflow-syntax.md").read_text()
    for name in INPUTS:
        assert f"| `{name}` |" in docs, name


def test_an_unknown_input_is_an_error_at_its_line() -> None:
    (message,) = plan("          path: x\n          fetch-dept: 0\n")
    assert message.startswith("wf.yml:9: step 1 (uses: actions/checkout@v4): `with.fetch-dept`: ")
    assert "unknown input of actions/checkout" in message and "fetch-depth" in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("fetch-depth: -1", "`with.fetch-depth`: must be a number of commits (0 for all history), not '-1'"),
        ("fetch-depth: all", "not 'all'"),
        ("submodules: yes", "`with.submodules`: must be true, false or recursive, not 'yes'"),
        ("fetch-tags: maybe", "`with.fetch-tags`: must be true or false, not 'maybe'"),
        ("persist-credentials: 1", "`with.persist-credentials`: must be true or false"),
        ("ssh-key: ${{ secrets.KEY }}x", "`with.ssh-key`"),
        ("ssh-key: abc", "SSH keys are not supported"),
        ("filter: blob:none", "`with.filter`: partial clones are not supported"),
        ("ssh-user: bob", "`with.ssh-user`"),
        ("repository: just-a-name", "must be owner/name or an http(s) clone URL"),
    ],
)
def test_an_unsupported_value_is_an_error(line: str, expected: str) -> None:
    found = plan(f"          {line}\n")
    if "${{" in line:
        assert found == []  # an expression is checked when the job evaluates it
        with pytest.raises(WorkflowError, match="SSH keys are not supported"):
            parse({"ssh-key": "the evaluated key"})
        return
    (message,) = found
    assert message.startswith("wf.yml:8: step 1 (uses: actions/checkout@v4): ") and expected in message


def test_parse_has_actions_checkouts_defaults() -> None:
    assert parse({}) == CheckoutInputs()
    assert not parse({}).needs_history
    got = parse(
        {"fetch-depth": "0", "submodules": "Recursive", "sparse-checkout": "a\n\n b \n", "lfs": "true"}
    )
    assert got.fetch_depth == 0 and got.needs_history and got.submodules is Submodules.RECURSIVE
    assert got.sparse_checkout == ("a", "b") and got.lfs and got.sparse_cone
    assert problems({"fetch-depth": "${{ matrix.depth }}"}) == []


# --- the host's fetch ---------------------------------------------------------------------------


def test_fetch_depth_0_fetches_all_history_branches_and_tags(
    fake: FakeForgejo, repos: Repos, tmp_path: Path
) -> None:
    out, task = fetched(fake, tmp_path, repos.second, "refs/heads/main", CheckoutInputs(fetch_depth=0))
    assert git("rev-parse", "HEAD", cwd=out) == repos.second
    assert not (out / ".git" / "shallow").exists()
    assert git("log", "--format=%s", cwd=out).split("\n") == ["two", "one"]
    assert git("describe", "--tags", cwd=out) == "v2"
    assert git("describe", "--tags", "HEAD~1", cwd=out) == "v1"
    assert set(git("tag", cwd=out).split()) == {"v1", "v2"}
    assert git("rev-parse", "origin/side", cwd=out) == repos.side
    assert git("status", "--porcelain", cwd=out) == ""
    assert task.token not in (out / ".git" / "config").read_text()


def test_fetch_depth_n_is_shallow_at_n_commits(fake: FakeForgejo, repos: Repos, tmp_path: Path) -> None:
    out, _ = fetched(fake, tmp_path, repos.third, "refs/heads/main", CheckoutInputs(fetch_depth=2))
    assert git("log", "--format=%s", cwd=out).split("\n") == ["submodule sub", "two"]
    assert (out / ".git" / "shallow").exists()
    assert git("tag", cwd=out) == ""  # no tags unless asked


def test_fetch_tags_with_depth_1(fake: FakeForgejo, repos: Repos, tmp_path: Path) -> None:
    out, _ = fetched(fake, tmp_path, repos.second, "refs/heads/main", CheckoutInputs(fetch_tags=True))
    assert git("describe", "--tags", cwd=out) == "v2"
    assert git("log", "--format=%s", cwd=out) == "two"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [("side", "side"), ("v1", "first"), ("refs/tags/v2", "second"), ("HEAD", "third")],
)
def test_ref_checks_out_a_branch_or_a_tag(
    fake: FakeForgejo, repos: Repos, tmp_path: Path, ref: str, expected: str
) -> None:
    out, _ = fetched(fake, tmp_path, "", ref, CheckoutInputs(ref=ref), task_sha=repos.third)
    assert git("rev-parse", "HEAD", cwd=out) == getattr(repos, expected)


def test_ref_checks_out_a_sha(fake: FakeForgejo, repos: Repos, tmp_path: Path) -> None:
    out, _ = fetched(fake, tmp_path, repos.first, "", CheckoutInputs(ref=repos.first), task_sha=repos.third)
    assert git("rev-parse", "HEAD", cwd=out) == repos.first
    assert (out / "a.txt").read_text() == "first\n"


def test_a_ref_that_does_not_exist(fake: FakeForgejo, repos: Repos, tmp_path: Path) -> None:
    task = running_task(fake, repos.third)
    with pytest.raises(CheckoutError) as info:
        fetch_commit(url(fake), "", "no-such-branch", task.token, tmp_path / "co")
    assert info.value.kind == "not-found" and "no-such-branch" in str(info.value)


def test_submodules_are_fetched_with_the_task_token(fake: FakeForgejo, repos: Repos, tmp_path: Path) -> None:
    inputs = CheckoutInputs(submodules=Submodules.TOP)
    out, task = fetched(fake, tmp_path, repos.third, "refs/heads/main", inputs)
    assert (out / "sub" / "lib.txt").read_text() == "from the submodule\n"
    assert git("rev-parse", "HEAD", cwd=out / "sub") == git("rev-parse", "HEAD", cwd=repos.sub)
    assert git("status", "--porcelain", cwd=out) == ""
    assert any(r.repository == "owner/sub" and r.task_id == task.id for r in fake.git_requests)
    header = base64.b64encode(f"x-access-token:{task.token}".encode())
    for path in (out / ".git").rglob("*"):  # persist-credentials: nothing of the token in .git
        if path.is_file():
            assert task.token.encode() not in path.read_bytes() and header not in path.read_bytes(), path


def test_without_submodules_the_submodule_stays_empty(
    fake: FakeForgejo, repos: Repos, tmp_path: Path
) -> None:
    out, _ = fetched(fake, tmp_path, repos.third, "refs/heads/main", CheckoutInputs())
    assert not (out / "sub" / "lib.txt").exists()
    assert not any(r.repository == "owner/sub" for r in fake.git_requests)


def test_sparse_checkout(fake: FakeForgejo, repos: Repos, tmp_path: Path) -> None:
    inputs = CheckoutInputs(sparse_checkout=("src",))
    out, _ = fetched(fake, tmp_path, repos.third, "refs/heads/main", inputs)
    assert (out / "src" / "code.py").exists()
    assert (out / "a.txt").exists()  # cone mode keeps the top level's files, as git does
    assert not (out / "docs").exists()
    no_cone = CheckoutInputs(sparse_checkout=("docs/guide.md",), sparse_cone=False)
    out2 = unpack(
        pack_tree(
            fetch_commit(
                url(fake),
                repos.third,
                "",
                running_task(fake, repos.third).token,
                tmp_path / "co2",
                inputs=no_cone,
            ),
            include_git=True,
        ),
        tmp_path / "guest2",
    )
    assert (out2 / "docs" / "guide.md").exists()
    assert not (out2 / "a.txt").exists() and not (out2 / "src").exists()


def test_lfs_without_git_lfs_on_the_host_says_so(
    fake: FakeForgejo, repos: Repos, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkout.shutil, "which", lambda name: None)
    with pytest.raises(CheckoutError, match="`lfs: true` needs git-lfs on the job host"):
        fetch_commit(url(fake), repos.third, "", "", tmp_path / "co", inputs=CheckoutInputs(lfs=True))
    assert not (tmp_path / "co").exists()


# --- the job: which target each step fetches -----------------------------------------------------


def job(source: str, repository: str = "owner/repo", token: str = "job-token") -> JobRun:
    (spec,) = parse_workflow(WORKFLOW, "wf.yml").jobs
    request = JobRequest(
        job_id=str(uuid.uuid4()),
        job=spec,
        label="debian-12",
        source=Source.FORGEJO if checkout.is_url(source) else Source.LOCAL,
        source_ids={"checkout_token_secret": "GITHUB_TOKEN"},
        repository=repository,
        commit="a" * 40,
        ref="refs/heads/main",
        checkout_source=source,
        secrets={"GITHUB_TOKEN": token},
    )
    return JobRun(request, stand_in_image("debian-12"), JobSettings(), Collect())


def test_targets_of_forge_jobs() -> None:
    run = job("https://forge.example/sub/path/owner/repo.git")
    assert run._target(run.request.checkout_source, CheckoutInputs()) == FetchTarget(
        "https://forge.example/sub/path/owner/repo.git", "a" * 40, "refs/heads/main", "job-token"
    )
    other = run._target(run.request.checkout_source, CheckoutInputs(repository="o/lib", token="t2"))
    assert other == FetchTarget("https://forge.example/sub/path/o/lib.git", "", "HEAD", "t2")
    tagged = run._target(
        run.request.checkout_source,
        CheckoutInputs(repository="o/lib", ref="v1", server_url="https://other.example"),
    )
    # another host gets no job token unless `token:` says so
    assert tagged == FetchTarget("https://other.example/o/lib.git", "", "v1", "")
    elsewhere = CheckoutInputs(repository="https://other.example/o/lib.git", token="t3")
    assert run._target(run.request.checkout_source, elsewhere) == FetchTarget(
        "https://other.example/o/lib.git", "", "HEAD", "t3"
    )
    sha = run._target(run.request.checkout_source, CheckoutInputs(ref="b" * 40))
    assert sha is not None and (sha.commit, sha.ref) == ("b" * 40, "")


def test_targets_of_local_jobs(tmp_path: Path) -> None:
    run = job(str(tmp_path), repository=tmp_path.name)
    assert run._target(str(tmp_path), CheckoutInputs(fetch_depth=0)) is None  # packed as it is
    assert run._target(str(tmp_path), CheckoutInputs(ref="v1")) == FetchTarget(
        tmp_path.as_uri(), "", "v1", ""
    )
    with pytest.raises(WorkflowError, match="needs `github-server-url:`"):
        run._target(str(tmp_path), CheckoutInputs(repository="o/lib"))


# --- local mode, end to end in a LocalGuest (git runs in the "guest") ----------------------------


def run_local(
    tmp_path: Path, source: Path, inputs: str, script: str, more: str = ""
) -> tuple[Result, list[str]]:
    """Run a local job in a LocalGuest: a checkout with ``inputs`` (``with:`` lines), ``script``,
    then the steps in ``more``; its result and log lines."""
    steps = f"- uses: actions/checkout@v4\n  with:\n{textwrap.indent(inputs, '    ')}- run: |\n"
    steps += textwrap.indent(script, "    ") + more
    text = "on: push\njobs:\n  b:\n    runs-on: debian-12\n    steps:\n" + textwrap.indent(steps, "      ")
    (spec,) = parse_workflow(text, "wf.yml").jobs
    request = JobRequest(
        job_id=str(uuid.uuid4()),
        job=spec,
        label="local",
        source=Source.LOCAL,
        repository=source.name,
        commit=checkout.head_commit(source),
        checkout_source=str(source),
    )
    sink = Collect()
    runtime = tmp_path / "rt"
    result = JobRun(
        request, stand_in_image(), JobSettings(runtime_dir=runtime), sink, boot=LocalGuest.booted
    ).run()
    lines = [e.text for e in sink.events if e.kind in (EventKind.LOG, EventKind.JOB_FINISHED)]
    return result, lines


def test_local_mode_packs_the_tree_as_it_is_and_with_fetch_depth_0_its_git(
    repos: Repos, tmp_path: Path
) -> None:
    git("-c", "protocol.file.allow=always", "submodule", "update", "--init", cwd=repos.main)
    (repos.main / "a.txt").write_text("changed, not committed\n")
    (repos.main / "new.txt").write_text("untracked\n")
    script = """\
test "$(cat a.txt)" = "changed, not committed" && test -f new.txt
git log --format=%s | tr '\\n' ' '; echo
echo "described $(git describe --tags --dirty)"
echo "sub: $(cat sub/lib.txt)"
"""
    plain = """\
- uses: actions/checkout@v4
  with: {path: plain}
- run: test ! -e plain/.git && test ! -e plain/sub/lib.txt && test -f plain/a.txt && echo plain-ok
"""
    result, lines = run_local(tmp_path, repos.main, "fetch-depth: 0\nsubmodules: true\n", script, plain)
    assert result is Result.SUCCESS, lines
    assert "submodule sub two one " in lines
    assert "described v2-1-g" + repos.third[:7] + "-dirty" in lines
    assert "sub: from the submodule" in lines
    assert "plain-ok" in lines


def test_local_mode_with_a_ref_clones_the_local_repository(repos: Repos, tmp_path: Path) -> None:
    (repos.main / "a.txt").write_text("uncommitted\n")
    script = 'test "$(cat a.txt)" = first && test -f side.txt && git rev-parse HEAD\n'
    result, lines = run_local(tmp_path, repos.main, "ref: side\n", script)
    assert result is Result.SUCCESS, lines
    assert repos.side in lines


def test_an_input_whose_evaluated_value_is_wrong_fails_the_step(repos: Repos, tmp_path: Path) -> None:
    result, lines = run_local(tmp_path, repos.main, "fetch-depth: ${{ 'deep' }}\n", "echo not reached\n")
    assert result is Result.FAILURE and "not reached" not in lines
    assert any("`with.fetch-depth`: must be a number of commits" in ln for ln in lines), lines


def test_another_repository_of_the_forge_is_fetched_with_the_job_token(
    fake: FakeForgejo, repos: Repos, tmp_path: Path
) -> None:
    task = running_task(fake, repos.third)
    run = job(url(fake), token=task.token)
    run.workdir = tmp_path / "job"
    run.workdir.mkdir()
    inputs = parse({"repository": "owner/sub", "path": "lib"})
    target = run._target(url(fake), inputs)
    assert target == FetchTarget(f"{fake.url}/owner/sub.git", "", "HEAD", task.token)
    out = unpack(run._fetch(target, run.job.steps[0], inputs), tmp_path / "guest")
    assert (out / "lib.txt").read_text() == "from the submodule\n"
    assert git("rev-parse", "HEAD", cwd=out) == git("rev-parse", "HEAD", cwd=repos.sub)
    assert (run.workdir / "checkout" / ".git").is_dir()
    assert any(r.repository == "owner/sub" and r.task_id == task.id for r in fake.git_requests)


def test_local_mode_in_a_linked_worktree_clones_its_repository(repos: Repos, tmp_path: Path) -> None:
    worktree = tmp_path / "linked"
    git("worktree", "add", "-q", "--detach", worktree, repos.second, cwd=repos.main)
    assert (worktree / ".git").is_file()
    script = 'git rev-parse HEAD && git describe --tags && test "$(cat a.txt)" = second\n'
    result, lines = run_local(tmp_path, worktree, "fetch-depth: 0\n", script)
    assert result is Result.SUCCESS, lines
    assert repos.second in lines and "v2" in lines


def test_recursive_submodules(repos: Repos, tmp_path: Path) -> None:
    nested = tmp_path / "nested"
    make_repo(nested, "deep inside\n", name="deep.txt")
    add_submodule(repos.sub, nested, "nested", "../nested.git")
    outer = add_submodule(repos.main, repos.sub, "sub2", "../sub.git")
    with FakeForgejo() as fake:
        fake.add_repository("owner/repo", repos.main)
        fake.add_repository("owner/sub", repos.sub, public=True)
        fake.add_repository("owner/nested", nested, public=True)
        top, _ = fetched(fake, tmp_path / "top", outer, "", CheckoutInputs(submodules=Submodules.TOP))
        assert (top / "sub2" / "lib.txt").exists() and not (top / "sub2" / "nested" / "deep.txt").exists()
        inputs = CheckoutInputs(submodules=Submodules.RECURSIVE)
        out, _ = fetched(fake, tmp_path / "all", outer, "", inputs)
    assert (out / "sub2" / "nested" / "deep.txt").read_text() == "deep inside\n"
    assert git("status", "--porcelain", cwd=out / "sub2") == ""
