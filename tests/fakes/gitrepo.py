"""Small git repositories for the fake forge to serve (FakeForgejo.add_repository)."""

from __future__ import annotations

import subprocess
from pathlib import Path


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
