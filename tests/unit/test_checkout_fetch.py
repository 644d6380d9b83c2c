"""Checkout of forge jobs: the host fetches the task's commit from a (fake) Forgejo over smart HTTP
with real git, authenticated by the task token, and packs it with its .git for the guest."""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from solstice import expr
from solstice.errors import InfraError
from solstice.job.checkout import CheckoutError, fetch_commit, pack_tree
from solstice.job.runner import FetchTarget, GuestPaths, JobRun, JobSettings
from solstice.model import JobEvent, JobRequest, JobSpec, Source, Step, StepKind
from tests.fakes.checkouts import commit, git, running_task, unpack
from tests.fakes.forgejo import FakeForgejo
from tests.fakes.localguest import stand_in_image


@dataclass
class Repo:
    path: Path
    first: str
    second: str


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    path = tmp_path / "upstream"
    path.mkdir()
    git("init", "-q", "-b", "main", cwd=path)
    (path / "a.txt").write_text("first\n")
    (path / "tools").mkdir()
    (path / "tools" / "build.sh").write_text("#!/bin/sh\necho build\n")
    (path / "tools" / "build.sh").chmod(0o755)
    first = commit(path, "one")
    (path / "a.txt").write_text("second\n")
    (path / "b.txt").write_text("only in the second commit\n")
    second = commit(path, "two")
    return Repo(path, first, second)


@pytest.fixture
def fake(repo: Repo) -> Iterator[FakeForgejo]:
    with FakeForgejo() as f:
        f.add_repository("owner/repo", repo.path)
        yield f


def clone_url(fake: FakeForgejo) -> str:
    return f"{fake.url}/owner/repo.git"


def test_fetch_checks_out_the_task_commit_with_its_git_directory(
    fake: FakeForgejo, repo: Repo, tmp_path: Path
) -> None:
    task = running_task(fake, repo.first)
    url = clone_url(fake)
    tree = fetch_commit(url, repo.first, "refs/heads/main", task.token, tmp_path / "job" / "checkout")
    archive = pack_tree(tree, include_git=True)
    assert archive.files == 2  # the work tree's files; .git is extra

    out = unpack(archive, tmp_path / "guest")
    assert (out / "a.txt").read_text() == "first\n"
    assert not (out / "b.txt").exists()
    assert (out / "tools" / "build.sh").stat().st_mode & 0o111
    assert (out / ".git").is_dir()
    assert git("rev-parse", "HEAD", cwd=out) == repo.first
    assert git("log", "--format=%s", cwd=out) == "one"
    assert (out / ".git" / "shallow").read_text().strip() == repo.first  # depth 1, by sha
    assert git("status", "--porcelain", cwd=out) == ""
    assert git("config", "remote.origin.url", cwd=out) == url

    # the token never reaches .git: not as itself, not inside the Basic header
    header = base64.b64encode(f"x-access-token:{task.token}".encode())
    for path in (out / ".git").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert task.token.encode() not in data, path
            assert header not in data, path

    reqs = fake.git_requests
    assert reqs and all(r.status == 200 and r.task_id == task.id for r in reqs)
    assert reqs[0].method == "GET" and reqs[0].service == "git-upload-pack"
    assert any(r.method == "POST" and r.path.endswith("/owner/repo.git/git-upload-pack") for r in reqs)
    assert reqs[0].protocol == "version=2"


def test_a_fetched_tree_holds_no_untracked_files_of_the_host(
    fake: FakeForgejo, repo: Repo, tmp_path: Path
) -> None:
    task = running_task(fake, repo.second)
    tree = fetch_commit(clone_url(fake), repo.second, "refs/heads/main", task.token, tmp_path / "co")
    out = unpack(pack_tree(tree, include_git=True), tmp_path / "guest")
    assert (out / "a.txt").read_text() == "second\n" and (out / "b.txt").exists()
    assert git("rev-parse", "HEAD", cwd=out) == repo.second


def test_a_wrong_token_is_refused_and_not_shown(fake: FakeForgejo, repo: Repo, tmp_path: Path) -> None:
    running_task(fake, repo.first)
    wrong = "f00dfeed" * 5
    with pytest.raises(CheckoutError) as info:
        fetch_commit(clone_url(fake), repo.first, "refs/heads/main", wrong, tmp_path / "co")
    err = info.value
    assert err.kind == "auth"
    assert "refused the task token" in str(err)
    assert clone_url(fake) in str(err) and repo.first in str(err)
    assert wrong not in str(err)
    assert base64.b64encode(f"x-access-token:{wrong}".encode()).decode() not in str(err)
    assert fake.git_requests[-1].status == 401


def test_the_token_of_a_finished_task_is_refused(fake: FakeForgejo, repo: Repo, tmp_path: Path) -> None:
    task = running_task(fake, repo.first)
    fake.cancel(task.id)
    with pytest.raises(CheckoutError, match="refused the task token") as info:
        fetch_commit(clone_url(fake), repo.first, "refs/heads/main", task.token, tmp_path / "co")
    assert task.token not in str(info.value)
    assert fake.git_requests[-1].status == 401


def test_the_token_of_another_repositorys_task_is_refused(
    fake: FakeForgejo, repo: Repo, tmp_path: Path
) -> None:
    task = running_task(fake, repo.first, repository="owner/other")
    with pytest.raises(CheckoutError, match="refused the task token"):
        fetch_commit(clone_url(fake), repo.first, "refs/heads/main", task.token, tmp_path / "co")
    assert fake.git_requests[-1].status == 403


def test_no_token_for_a_private_repository(fake: FakeForgejo, repo: Repo, tmp_path: Path) -> None:
    with pytest.raises(CheckoutError, match="requires authentication and the job has no task token"):
        fetch_commit(clone_url(fake), repo.first, "refs/heads/main", "", tmp_path / "co")
    assert fake.git_requests[-1].status == 401


def test_a_server_that_is_down(fake: FakeForgejo, repo: Repo, tmp_path: Path) -> None:
    task = running_task(fake, repo.first)
    fake.down()
    with pytest.raises(CheckoutError) as info:
        fetch_commit(clone_url(fake), repo.first, "refs/heads/main", task.token, tmp_path / "co")
    assert info.value.kind == "unreachable"
    assert f"cannot reach {clone_url(fake)}" in str(info.value)
    assert repo.first in str(info.value)


def test_an_unknown_repository(fake: FakeForgejo, repo: Repo, tmp_path: Path) -> None:
    task = running_task(fake, repo.first)
    url = f"{fake.url}/owner/missing.git"
    with pytest.raises(CheckoutError) as info:
        fetch_commit(url, repo.first, "refs/heads/main", task.token, tmp_path / "co")
    assert info.value.kind == "not-found" and url in str(info.value)


def test_a_server_refusing_shas_gets_the_ref_fetched_and_deepened(repo: Repo, tmp_path: Path) -> None:
    with FakeForgejo() as fake:
        fake.add_repository("owner/repo", repo.path, sha_fetch=False)
        task = running_task(fake, repo.first)  # main has moved on to the second commit since
        tree = fetch_commit(clone_url(fake), repo.first, "refs/heads/main", task.token, tmp_path / "co")
        assert git("rev-parse", "HEAD", cwd=tree) == repo.first
        assert (tree / "a.txt").read_text() == "first\n"
        # the sha was refused, main's tip is not it: main's whole history was fetched instead
        assert not (tree / ".git" / "shallow").exists()
        assert git("log", "--format=%s", "FETCH_HEAD", cwd=tree).split() == ["two", "one"]


def test_a_commit_gone_from_its_branch(repo: Repo, tmp_path: Path) -> None:
    git("checkout", "-q", "-b", "side", repo.first, cwd=repo.path)
    (repo.path / "c.txt").write_text("side\n")
    side = commit(repo.path, "side")
    git("checkout", "-q", "main", cwd=repo.path)
    git("branch", "-q", "-D", "side", cwd=repo.path)
    with FakeForgejo() as fake:
        fake.add_repository("owner/repo", repo.path, sha_fetch=False)
        task = running_task(fake, side)
        with pytest.raises(CheckoutError, match="not in the history of refs/heads/main") as info:
            fetch_commit(clone_url(fake), side, "refs/heads/main", task.token, tmp_path / "co")
        assert info.value.kind == "not-found"


def test_bad_arguments_are_refused_before_git_runs(tmp_path: Path) -> None:
    sha = "a" * 40
    with pytest.raises(InfraError, match="must not carry credentials"):
        fetch_commit("https://x-access-token:t@forge.example/o/r.git", sha, "", "", tmp_path / "a")
    with pytest.raises(InfraError, match="not a full commit sha"):
        fetch_commit("https://forge.example/o/r.git", "main", "", "", tmp_path / "b")
    with pytest.raises(InfraError, match="not a ref"):
        fetch_commit("https://forge.example/o/r.git", sha, "--upload-pack=x", "", tmp_path / "c")
    assert not any(tmp_path.iterdir())


def test_the_fake_reads_chunked_request_bodies(fake: FakeForgejo, repo: Repo) -> None:
    task = running_task(fake, repo.first)
    pkt = b"0014command=ls-refs\n" + b"0001" + b"0000"
    auth = base64.b64encode(f"x-access-token:{task.token}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/owner/repo.git/git-upload-pack",
            body=iter([pkt[:10], pkt[10:]]),
            headers={
                "Authorization": f"Basic {auth}",
                "Content-Type": "application/x-git-upload-pack-request",
                "Git-Protocol": "version=2",
            },
            encode_chunked=True,
        )
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200
    assert f"{repo.second} refs/heads/main".encode() in body


def test_the_fake_keeps_refusing_get_on_other_paths(fake: FakeForgejo) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    try:
        conn.request("GET", "/api/actions/ping.v1.PingService/Ping")
        assert conn.getresponse().status == 405
    finally:
        conn.close()


# --- the job process: github.token and the checkout step's fetch ------------------------------


class Sink:
    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    def emit(self, event: JobEvent) -> None:
        self.events.append(event)


STEP = Step(number=1, name="Checkout", kind=StepKind.CHECKOUT)
PATHS = GuestPaths(home="/home/s", workspace="/home/s/work/repo/repo", temp="/home/s/work/_temp")


def job_run(url: str, sha: str, secrets: dict[str, str], token_secret: str, sink: Sink) -> JobRun:
    job = JobSpec(key="build", name="build", runs_on=("debian-12",), steps=(STEP,))
    request = JobRequest(
        job_id="00000000-0000-0000-0000-000000000001",
        job=job,
        label="debian-12",
        source=Source.FORGEJO,
        source_ids={"checkout_token_secret": token_secret},
        repository="owner/repo",
        commit=sha,
        ref="refs/heads/main",
        checkout_source=url,
        secrets=secrets,
    )
    return JobRun(request, stand_in_image("debian-12"), JobSettings(), sink)


def test_github_token_is_the_task_token_and_masked() -> None:
    run = job_run(
        "https://forge.example/owner/repo.git", "a" * 40, {"GITHUB_TOKEN": "tok-123"}, "GITHUB_TOKEN", Sink()
    )
    assert run._github_context(PATHS)["token"] == "tok-123"
    ctx = run._context(PATHS, {})
    assert expr.interpolate("${{ github.token }}", ctx) == "tok-123"
    assert run.masker.apply("the token tok-123") == "the token ***"


def test_no_github_token_without_a_checkout_token_secret() -> None:
    run = job_run("https://forge.example/owner/repo.git", "a" * 40, {"GITHUB_TOKEN": "tok-123"}, "", Sink())
    assert "token" not in run._github_context(PATHS)


def test_the_checkout_step_fetches_the_task_commit_once(
    fake: FakeForgejo, repo: Repo, tmp_path: Path
) -> None:
    task = running_task(fake, repo.first)
    sink = Sink()
    run = job_run(clone_url(fake), repo.first, dict(task.secrets), "GITHUB_TOKEN", sink)
    run.workdir = tmp_path / "job"
    run.workdir.mkdir()
    target = FetchTarget(clone_url(fake), repo.first, "refs/heads/main", task.token)
    archive = run._fetch(target, STEP)
    out = unpack(archive, tmp_path / "guest")
    assert git("rev-parse", "HEAD", cwd=out) == repo.first
    assert (run.workdir / "checkout" / ".git").is_dir()
    texts = [e.text for e in sink.events]
    assert f"Fetching {clone_url(fake)} {repo.first[:12]}" in texts
    count = len(fake.git_requests)
    assert run._fetch(target, STEP) is archive  # a second checkout step: no second fetch
    assert len(fake.git_requests) == count
    assert not any(task.token in t for t in texts)


def test_a_commit_the_forge_does_not_have(fake: FakeForgejo, repo: Repo, tmp_path: Path) -> None:
    task = running_task(fake, repo.first)
    gone = "0123456789abcdef" * 2 + "01234567"
    with pytest.raises(CheckoutError) as info:
        fetch_commit(clone_url(fake), gone, "refs/heads/main", task.token, tmp_path / "co")
    assert info.value.kind == "not-found"
    assert f"commit {gone} cannot be fetched by its sha from {clone_url(fake)}" in str(info.value)


def test_a_commit_the_forge_does_not_have_without_a_ref(
    fake: FakeForgejo, repo: Repo, tmp_path: Path
) -> None:
    task = running_task(fake, repo.first)
    gone = "0123456789abcdef" * 2 + "01234567"
    with pytest.raises(CheckoutError) as info:
        fetch_commit(clone_url(fake), gone, "", task.token, tmp_path / "co")
    assert info.value.kind == "not-found" and gone in str(info.value)


def test_a_job_host_without_git_says_so(
    fake: FakeForgejo, repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = running_task(fake, repo.first)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(CheckoutError) as info:
        fetch_commit(clone_url(fake), repo.first, "refs/heads/main", task.token, tmp_path / "c")
    message = str(info.value)
    assert "git is not installed on this job host" in message and "install the git package" in message
    assert "not found while" not in message and task.token not in message
