"""Solstice's own ``actions/checkout``: the host packs the tree, the guest unpacks it with plain tar.

The archive is ustar (what every POSIX tar reads, illumos and BSD included); names too long for
ustar fall back to pax headers, which those tars also accept.

Forge jobs check out a commit of a remote repository: ``fetch_commit`` fetches that commit (or a
branch or tag) with the host's git, as deep as the step's ``fetch-depth``, with tags, submodules,
sparse checkout and LFS as asked (the token only in git's environment, as an HTTP header), and
``pack_tree(..., include_git=True)`` packs the work tree together with its ``.git``.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from solstice import proc
from solstice.errors import CommandError, InfraError
from solstice.model.masking import mask_text, mask_values
from solstice.workflow.checkout import CheckoutInputs, Submodules

#: How long one git command of a fetch may take (a big repository over a slow link).
GIT_TIMEOUT = 600.0
#: URL schemes ``fetch_commit`` accepts; anything else is a local directory.
URL_SCHEMES = ("http://", "https://", "git://", "ssh://", "file://")
_SHA = re.compile(r"[0-9a-fA-F]{40}([0-9a-fA-F]{24})?")


@dataclass(frozen=True)
class Archive:
    data: bytes
    files: int


def _git_files(root: Path) -> list[str] | None:
    """Tracked plus untracked-but-not-ignored files, so local changes are tested as they are."""
    try:
        out = proc.run(
            ["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        ).stdout
    except CommandError:
        return None
    names = [n for n in out.decode(errors="surrogateescape").split("\0") if n]
    return [n for n in names if os.path.lexists(root / n)]


def _walk(root: Path) -> list[str]:
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for f in filenames:
            names.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(names)


def _git_dir_entries(root: Path) -> list[str]:
    """``.git`` and everything under it, directories included (git needs its empty ``refs/``)."""
    top = root / ".git"
    if not top.is_dir() or top.is_symlink():
        return []
    names = [".git"]
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            names.append(os.path.relpath(os.path.join(dirpath, d), root))
        for f in filenames:
            names.append(os.path.relpath(os.path.join(dirpath, f), root))
    return names


def _gitlinks(root: Path) -> list[str]:
    """The paths of the submodules recorded in the index of the repository at ``root``."""
    try:
        out = proc.run(["git", "-C", root, "ls-files", "-z", "--stage"]).stdout
    except CommandError:
        return []
    links = []
    for entry in out.decode(errors="surrogateescape").split("\0"):
        meta, _, name = entry.partition("\t")
        if meta.startswith("160000 "):
            links.append(name)
    return links


def _tree_names(root: Path, submodules: Submodules, include_git: bool) -> tuple[list[str], set[str]]:
    """The work tree's files (``submodules`` checked-out submodules' too), and the ``.git`` entries
    to pack with them (the top one's and the submodules' ``.git`` files) when ``include_git``."""
    names = _git_files(root)
    if names is None:
        names = _walk(root)
    git_names = set(_git_dir_entries(root)) if include_git else set()
    if submodules is Submodules.NONE:
        return names, git_names
    nested = submodules if submodules is Submodules.RECURSIVE else Submodules.NONE
    for link in _gitlinks(root):
        sub = root / link
        if not (sub / ".git").exists():
            continue  # not initialised: nothing checked out to pack
        sub_names, sub_git = _tree_names(sub, nested, include_git)
        names.extend(f"{link}/{n}" for n in sub_names)
        git_names.update(f"{link}/{n}" for n in sub_git)
        if include_git and (sub / ".git").is_file():
            git_names.add(f"{link}/.git")  # "gitdir: ../.git/modules/<name>", packed above
    return names, git_names


def pack_tree(root: Path, *, include_git: bool = False, submodules: Submodules = Submodules.NONE) -> Archive:
    """Pack a local directory (a git work tree, or any directory).

    With ``include_git`` the repository itself (``.git``, a directory) goes into the archive too, so
    that ``git log`` or ``git describe`` work in the guest; ``files`` counts the work tree's files.
    ``submodules`` adds the files of checked-out submodules (``RECURSIVE``: theirs too).
    """
    if not root.is_dir():
        raise InfraError(f"checkout: {root} is not a directory")
    names, git_names = _tree_names(root, submodules, include_git)
    buf = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(set(names) | git_names):
            path = root / name
            if not os.path.lexists(path):
                continue
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if name in git_names:
                if info.isdir():
                    tar.addfile(info)
                    continue
                if not info.isreg():
                    continue
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
                continue
            if info.isreg():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            elif info.issym():
                tar.addfile(info)
            else:
                continue
            count += 1
    return Archive(buf.getvalue(), count)


def find_repo_root(start: Path) -> Path:
    """The git top level above ``start``, else ``start`` itself."""
    try:
        out = proc.run(["git", "-C", start, "rev-parse", "--show-toplevel"]).stdout
        return Path(out.decode().strip())
    except CommandError:
        return start


def head_commit(root: Path) -> str:
    try:
        return proc.run(["git", "-C", root, "rev-parse", "HEAD"]).stdout.decode().strip()
    except CommandError:
        return ""


# --- forge jobs: fetch one commit of a remote repository -------------------------------------


class CheckoutError(InfraError):
    """The host could not fetch the job's commit.

    An ``InfraError`` on purpose: the forge assigned this commit and handed out the token to fetch
    it, so a refused token, an unreachable server or a commit that vanished is a failure of the
    forge (or of the network between it and this host), not of the user's build. The job ends with
    result ``error``, like a VM that did not boot, and the message says which of those it was.

    ``kind`` is ``auth`` (the token was refused, HTTP 401/403), ``unreachable`` (no answer, no
    connection, a timeout), ``not-found`` (no such repository, or a commit the forge no longer
    has) or ``git`` (anything else git reported).
    """

    def __init__(self, message: str, *, url: str, commit: str, kind: str) -> None:
        super().__init__(message)
        self.url = url
        self.commit = commit
        self.kind = kind


def is_sha(text: str) -> bool:
    """Whether ``text`` is a full commit sha (SHA-1 or SHA-256)."""
    return _SHA.fullmatch(text) is not None


def is_url(source: str) -> bool:
    """Whether a ``checkout_source`` is a clone URL (else it is a local directory)."""
    return source.startswith(URL_SCHEMES)


def _auth_header(token: str) -> str:
    """What actions/checkout sends: Basic auth with the token as password."""
    return "Authorization: Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()


def _git_env(url: str, token: str, home: Path) -> dict[str, str]:
    """git's whole environment: nothing from the host's git configuration, no prompts, and the
    token only here, as an HTTP header scoped to the forge's scheme, host and port (so a redirect
    to another host does not receive it). It never reaches argv, a file or a log line."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.fspath(home),
        "LC_ALL": "C",  # git's messages in English: _classify reads them
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    }
    parts = urlsplit(url)
    if token and parts.scheme in ("http", "https"):
        env["GIT_CONFIG_COUNT"] = "1"
        env["GIT_CONFIG_KEY_0"] = f"http.{parts.scheme}://{parts.netloc}/.extraHeader"
        env["GIT_CONFIG_VALUE_0"] = _auth_header(token)
    return env


def _mask(text: str, token: str) -> str:
    if not token:
        return text
    # The token as git may print it: plain, and inside the Basic authorization it is sent in.
    header = _auth_header(token).split(" ", 2)[-1]
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return mask_text(text, mask_values((header, basic, token)))


def _tail(exc: CommandError, token: str) -> str:
    lines = [ln.strip() for ln in _mask(exc.stderr, token).strip().splitlines() if ln.strip()]
    return " | ".join(lines[-5:]) or f"git exited with status {exc.returncode}"


_AUTH = (
    "returned error: 401",
    "returned error: 403",
    "authentication failed",
    "could not read username",
    "could not read password",
    "terminal prompts disabled",
    "permission denied (publickey",
)
_UNREACHABLE = (
    "could not resolve host",
    "failed to connect",
    "couldn't connect",
    "connection refused",
    "connection reset",
    "connection timed out",
    "operation timed out",
    "timed out after",
    "empty reply from server",
    "recv failure",
    "returned error: 5",
    "network is unreachable",
    "no route to host",
)
_NOT_FOUND = ("not found", "does not appear to be a git repository", "returned error: 404")
#: How a server says no to fetching a commit by its sha (then the ref is fetched instead).
_REFUSED_SHA = (
    "not our ref",
    "unadvertised object",
    "couldn't find remote ref",
    "no such remote ref",
)


def _kind(stderr: str) -> str:
    low = stderr.lower()
    for kind, needles in (
        ("auth", _AUTH),
        ("unreachable", _UNREACHABLE),
        ("not-found", _NOT_FOUND + _REFUSED_SHA),
    ):
        if any(n in low for n in needles):
            return kind
    return "git"


def _error(exc: CommandError, url: str, commit: str, token: str, doing: str) -> CheckoutError:
    if exc.returncode is None and exc.argv[:1] == ["git"]:
        # not started at all: nothing to do with the forge
        return CheckoutError(
            f"checkout: git is not installed on this job host ({exc.stderr.strip()}); "
            "install the git package to check out forge repositories",
            url=url,
            commit=commit,
            kind="git",
        )
    tail = _tail(exc, token)
    kind = _kind(exc.stderr)
    if kind == "auth" and token:
        what = f"the forge refused the task token for {url} (HTTP 401/403) while {doing}"
    elif kind == "auth":
        what = f"{url} requires authentication and the job has no task token; {doing} failed"
    elif kind == "unreachable":
        what = f"cannot reach {url} while {doing}"
    elif kind == "not-found":
        what = f"{url}: the repository or the commit was not found while {doing}"
    else:
        what = f"git failed while {doing} from {url}"
    return CheckoutError(f"checkout: {what}: {tail}", url=url, commit=commit, kind=kind)


def _check_args(url: str, commit: str, ref: str) -> str:
    if not is_url(url):
        raise InfraError(f"checkout: {url!r} is not a clone URL")
    if urlsplit(url).username is not None or "@" in urlsplit(url).netloc:
        # It would end up in .git/config and in logs: credentials travel as secrets instead.
        raise InfraError("checkout: the clone URL must not carry credentials")
    if commit and not _SHA.fullmatch(commit):
        raise InfraError(f"checkout: {url}: {commit!r} is not a full commit sha")
    if ref.startswith("-") or ":" in ref or (not commit and not ref):
        raise InfraError(f"checkout: {url}: {ref!r} is not a ref")
    return commit.lower()


def fetch_commit(
    url: str,
    commit: str,
    ref: str,
    token: str,
    dest: Path,
    *,
    inputs: CheckoutInputs | None = None,
    timeout: float = GIT_TIMEOUT,
) -> Path:
    """Fetch ``commit`` of the repository at ``url`` into the new directory ``dest`` and check it
    out (detached HEAD); return ``dest``. ``commit`` "" means the tip of ``ref`` (a branch, a tag,
    or ``HEAD`` for the default branch).

    ``inputs`` says how much: ``fetch_depth`` commits (0: all history, every branch and tag),
    ``fetch_tags``, ``submodules``, ``sparse_checkout`` and ``lfs`` as actions/checkout means them.
    ``token`` (may be empty) authenticates over HTTP(S) as actions/checkout does; ``origin`` is
    set to ``url``, which must carry no credentials. The commit is fetched by its sha; a server
    that refuses that (protocol v0 without ``uploadpack.allow*SHA1InWant``) gets ``ref`` fetched
    instead, deepened to the whole history of ``ref`` if its tip has moved on. Raises
    ``CheckoutError`` (an ``InfraError``) naming the URL, the commit and git's last words, with
    the token masked.
    """
    commit = _check_args(url, commit, ref)
    inputs = inputs or CheckoutInputs()
    if inputs.lfs and shutil.which("git-lfs") is None:
        raise CheckoutError(
            "checkout: `lfs: true` needs git-lfs on the job host, which is not installed "
            "(install the git-lfs package, or drop `lfs:`)",
            url=url,
            commit=commit,
            kind="git",
        )
    try:
        dest.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if any(dest.iterdir()):
            raise InfraError(f"checkout: {dest} exists and is not empty") from None
    env = _git_env(url, token, dest.parent)

    def git(*args: str) -> str:
        out = proc.run(["git", "-C", dest, *args], env=env, timeout=timeout).stdout
        return out.decode(errors="replace").strip()

    depth = [f"--depth={inputs.fetch_depth}"] if inputs.fetch_depth > 0 else []
    doing = f"fetching commit {commit}" if commit else f"fetching {ref}"
    try:
        git("init", "-q")
        git("remote", "add", "origin", url)
        if not commit:
            git("fetch", *depth, "--no-tags", "origin", ref)
            commit = git("rev-parse", "FETCH_HEAD^{commit}")
        else:
            _fetch_sha(git, dest, env, url, commit, ref, depth)
        if inputs.fetch_depth == 0:
            doing = "fetching all branches and tags"
            git(
                "fetch",
                "--no-tags",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            )
        elif inputs.fetch_tags:
            doing = "fetching tags"
            git("fetch", *depth, "--no-tags", "origin", "+refs/tags/*:refs/tags/*")
        if inputs.sparse_checkout:
            doing = "setting up the sparse checkout"
            cone = [] if inputs.sparse_cone else ["--no-cone"]
            git("sparse-checkout", "set", *cone, "--", *inputs.sparse_checkout)
        doing = f"checking out commit {commit}"
        git("checkout", "-q", "--detach", commit)
        head = git("rev-parse", "HEAD")
        if inputs.submodules is not Submodules.NONE:
            doing = "fetching submodules"
            recursive = ["--recursive"] if inputs.submodules is Submodules.RECURSIVE else []
            git("submodule", "sync", *recursive)
            git("submodule", "update", "--init", "--force", *depth, *recursive)
        if inputs.lfs:
            doing = "fetching LFS objects"
            git("lfs", "install", "--local")
            git("lfs", "pull", "origin")
    except CommandError as exc:
        raise _error(exc, url, commit, token, doing) from None
    if head != commit:
        raise CheckoutError(
            f"checkout: {url}: HEAD is {head} after checking out {commit}",
            url=url,
            commit=commit,
            kind="git",
        )
    return dest


def _fetch_sha(
    git: Callable[..., str],
    dest: Path,
    env: dict[str, str],
    url: str,
    commit: str,
    ref: str,
    depth: list[str],
) -> None:
    """Fetch ``commit`` by its sha, else (a server refusing shas) ``ref`` deep enough to hold it."""
    try:
        git("fetch", *depth, "--no-tags", "origin", commit)
    except CommandError as exc:
        low = exc.stderr.lower()
        if (
            not ref
            or _kind(exc.stderr) in ("auth", "unreachable")
            or not any(n in low for n in _REFUSED_SHA)
        ):
            raise
        git("fetch", *depth, "--no-tags", "origin", ref)
        if git("rev-parse", "FETCH_HEAD") != commit and (dest / ".git" / "shallow").exists():
            git("fetch", "--unshallow", "--no-tags", "origin", ref)
        if proc.run(
            ["git", "-C", dest, "cat-file", "-e", f"{commit}^{{commit}}"], env=env, check=False
        ).returncode:
            raise CheckoutError(
                f"checkout: commit {commit} cannot be fetched by its sha from {url} and is "
                f"not in the history of {ref} (force-pushed away?)",
                url=url,
                commit=commit,
                kind="not-found",
            ) from None
