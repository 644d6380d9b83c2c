"""Prepared images: a label's base image with its ``setup`` commands already run
(``solstice image prepare``), stored as ``<images_dir>/<label>/prepared/<key>.qcow2``.

The key is sha256 over the base image's identity and the commands, so editing either makes a new
one (and jobs go back to the plain base until it is prepared again).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from solstice.errors import ImageError

PREPARED_DIR = "prepared"


def base_identity(base: Path) -> str:
    """What names one version of a base image without reading gigabytes: its resolved path, size
    and modification time (a pull or rebuild installs a new file, which changes them)."""
    try:
        st = base.resolve().stat()
    except OSError as exc:
        raise ImageError(f"base image {base}: {exc.strerror}") from None
    return f"{base.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def prepared_key(base: Path, commands: Sequence[str]) -> str:
    doc = json.dumps({"base": base_identity(base), "setup": list(commands)}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def prepared_path(images_dir: Path, label: str, base: Path, commands: Sequence[str]) -> Path:
    return images_dir / label / PREPARED_DIR / f"{prepared_key(base, commands)}.qcow2"


def find_prepared(images_dir: Path, label: str, base: Path, commands: Sequence[str]) -> Path | None:
    """The prepared image for these commands on this base, when ``image prepare`` made it."""
    if not commands or not base.exists():
        return None
    path = prepared_path(images_dir, label, base, commands)
    return path if path.is_file() else None
