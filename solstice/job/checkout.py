"""Solstice's own ``actions/checkout``: the host packs the tree, the guest unpacks it with plain tar.

The archive is ustar (what every POSIX tar reads, illumos and BSD included); names too long for
ustar fall back to pax headers, which those tars also accept.

Forge jobs check out a commit of a remote repository: ``fetch_commit`` fetches exactly that commit
with the host's git (the task token only in git's environment, as an HTTP header), and
``pack_tree(..., include_git=True)`` packs the work tree together with its ``.git``.
"""

from __future__ import annotations

import base64
import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from solstice import proc
from solstice.errors import CommandError, InfraError

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


def pack_tree(root: Path, *, include_git: bool = False) -> Archive:
    """Pack a local directory (a git work tree, or any directory).

    With ``include_git`` the repository itself (``.git``, a directory) goes into the archive too, so
    that ``git log`` or ``git describe`` work in the guest; ``files`` counts the work tree's files.
    """
    if not root.is_dir():
        raise InfraError(f"checkout: {root} is not a directory")
    names = _git_files(root)
    if names is None:
        names = _walk(root)
    git_names = set(_git_dir_entries(root)) if include_git else set()
    buf = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(set(names) | git_names):
            path = root / name
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
    for secret in (
        _auth_header(token).split(" ", 2)[-1],
        base64.b64encode(f"x-access-token:{token}".encode()).decode(),
        token,
    ):
        text = text.replace(secret, "***")
    return text


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


def fetch_commit(
    url: str,
    commit: str,
    ref: str,
    token: str,
    dest: Path,
    *,
    timeout: float = GIT_TIMEOUT,
) -> Path:
    """Fetch exactly ``commit`` of the repository at ``url`` into the new directory ``dest`` and
    check it out (detached HEAD, shallow); return ``dest``.

    ``token`` (may be empty) authenticates over HTTP(S) as actions/checkout does; ``origin`` is
    set to ``url``, which must carry no credentials. The commit is fetched by its sha; a server
    that refuses that (protocol v0 without ``uploadpack.allow*SHA1InWant``) gets ``ref`` fetched
    instead, deepened to the whole history of ``ref`` if its tip has moved on. Raises
    ``CheckoutError`` (an ``InfraError``) naming the URL, the commit and git's last words, with
    the token masked.
    """
    if not is_url(url):
        raise InfraError(f"checkout: {url!r} is not a clone URL")
    if urlsplit(url).username is not None or "@" in urlsplit(url).netloc:
        # It would end up in .git/config and in logs: credentials travel as secrets instead.
        raise InfraError("checkout: the clone URL must not carry credentials")
    if not _SHA.fullmatch(commit):
        raise InfraError(f"checkout: {url}: {commit!r} is not a full commit sha")
    commit = commit.lower()
    if ref.startswith("-") or ":" in ref:
        raise InfraError(f"checkout: {url}: {ref!r} is not a ref")
    try:
        dest.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if any(dest.iterdir()):
            raise InfraError(f"checkout: {dest} exists and is not empty") from None
    env = _git_env(url, token, dest.parent)

    def git(*args: str) -> str:
        out = proc.run(["git", "-C", dest, *args], env=env, timeout=timeout).stdout
        return out.decode(errors="replace").strip()

    doing = f"fetching commit {commit}"
    try:
        git("init", "-q")
        git("remote", "add", "origin", url)
        try:
            git("fetch", "--depth=1", "--no-tags", "origin", commit)
        except CommandError as exc:
            low = exc.stderr.lower()
            if (
                not ref
                or _kind(exc.stderr) in ("auth", "unreachable")
                or not any(n in low for n in _REFUSED_SHA)
            ):
                raise
            doing = f"fetching {ref} for commit {commit}"
            git("fetch", "--depth=1", "--no-tags", "origin", ref)
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
        doing = f"checking out commit {commit}"
        git("checkout", "-q", "--detach", commit)
        head = git("rev-parse", "HEAD")
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
