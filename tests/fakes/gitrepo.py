"""Small git repositories for the fake forges to serve, and git's smart HTTP for them
(FakeForgejo.add_repository, FakeGitHub.add_repository): ``git http-backend`` as a CGI."""

from __future__ import annotations

import os
import subprocess
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from solstice import proc


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def make_repo(path: Path, *versions: str, name: str = "hello.txt") -> list[str]:
    """A repository at ``path`` with one commit per text in ``versions`` (each the whole content
    of ``name``) on branch main; the commits' shas, oldest first."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    shas = []
    for i, text in enumerate(versions):
        (path / name).write_text(text)
        git(path, "add", name)
        git(path, "commit", "-q", "-m", f"version {i + 1}")
        shas.append(git(path, "rev-parse", "HEAD"))
    return shas


def add_submodule(repo: Path, sub: Path, name: str, url: str) -> str:
    """Add the repository ``sub`` to ``repo`` as the submodule ``name``, recorded with ``url`` (such
    as ``../sub.git``, relative to the superproject's origin); commit; the new commit's sha."""
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), name)
    git(repo, "config", "-f", ".gitmodules", f"submodule.{name}.url", url)
    git(repo, "add", ".gitmodules")
    git(repo, "commit", "-q", "-m", f"submodule {name}")
    return git(repo, "rev-parse", "HEAD")


def reply(h: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    h.send_response(status)
    h.send_header("Content-Type", "text/plain; charset=utf-8")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def read_git_body(h: BaseHTTPRequestHandler) -> bytes:
    """A git client's request body (chunked or not)."""
    if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size = int(h.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline().strip():  # trailers up to the empty line
                    pass
                return b"".join(parts)
            parts.append(h.rfile.read(size))
            h.rfile.readline()  # the CRLF after each chunk
    length = int(h.headers.get("Content-Length", "0") or 0)
    return h.rfile.read(length) if length else b""


def http_backend(
    h: BaseHTTPRequestHandler,
    git_dir: Path,
    full_name: str,
    endpoint: str,
    query: str,
    body: bytes,
    user: str,
    *,
    sha_fetch: bool = True,
) -> int:
    """Run ``git http-backend`` as a CGI for one request; relay its answer; return the status."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.fspath(git_dir),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_HTTP_EXPORT_ALL": "1",
        "PATH_TRANSLATED": f"{git_dir}/{endpoint}",
        "PATH_INFO": f"/{full_name}.git/{endpoint}",
        "REQUEST_METHOD": h.command,
        "QUERY_STRING": query,
        "CONTENT_TYPE": h.headers.get("Content-Type", ""),
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_USER": user,
        "REMOTE_ADDR": h.client_address[0],
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    if h.headers.get("Content-Encoding"):
        env["HTTP_CONTENT_ENCODING"] = h.headers["Content-Encoding"]
    if sha_fetch:
        # what Forgejo sets in its git config (modules/git/git.go), and protocol v2
        env.update(
            {
                "GIT_CONFIG_COUNT": "2",
                "GIT_CONFIG_KEY_0": "uploadpack.allowAnySHA1InWant",
                "GIT_CONFIG_VALUE_0": "true",
                "GIT_CONFIG_KEY_1": "uploadpack.allowFilter",
                "GIT_CONFIG_VALUE_1": "true",
            }
        )
        if h.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = h.headers["Git-Protocol"]
    result = proc.run(["git", "http-backend"], check=False, input=body, env=env, timeout=120)
    out = result.stdout
    ends = [i for i in (out.find(b"\r\n\r\n"), out.find(b"\n\n")) if i >= 0]
    if result.returncode != 0 and not ends:
        reply(h, 500, result.stderr or b"git http-backend failed\n")
        return 500
    cut = min(ends) if ends else len(out)
    head, payload = out[:cut], out[cut + (4 if out.startswith(b"\r\n\r\n", cut) else 2) :]
    status = 200
    headers: list[tuple[str, str]] = []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if not name.strip():
            continue
        if name.strip().lower() == "status":
            status = int(value.strip().split()[0])
        elif name.strip().lower() != "content-length":
            headers.append((name.strip(), value.strip()))
    h.send_response(status)
    for name, value in headers:
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(payload)))
    h.end_headers()
    h.wfile.write(payload)
    return status
