"""Solstice's own ``actions/checkout``: the host packs the tree, the guest unpacks it with plain tar.

The archive is ustar (what every POSIX tar reads, illumos and BSD included); names too long for
ustar fall back to pax headers, which those tars also accept.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from solstice import proc
from solstice.errors import CommandError, InfraError


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


def pack_tree(root: Path) -> Archive:
    """Pack a local directory (a git work tree, or any directory)."""
    if not root.is_dir():
        raise InfraError(f"checkout: {root} is not a directory")
    names = _git_files(root)
    if names is None:
        names = _walk(root)
    buf = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(names):
            path = root / name
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
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
