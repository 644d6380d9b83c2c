"""Digests and the checksum files images are published with: GNU ``SHA256SUMS``/``SHA512SUMS``
(``<hex>  <name>``, ``<hex> *<name>``), BSD ``SHA256 (<name>) = <hex>`` (FreeBSD's CHECKSUM.SHA256),
and a bare digest alone in a file (OmniOS's ``<file>.sha256``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from solstice.errors import DownloadError

CHUNK = 1 << 20
#: hex length -> algorithm, for GNU-style lines and bare digests
_BY_LENGTH = {64: "sha256", 128: "sha512"}
_BSD = re.compile(r"^(SHA256|SHA512) \((.+)\) = ([0-9a-fA-F]+)$")
_GNU = re.compile(r"^([0-9a-fA-F]{64}|[0-9a-fA-F]{128})(?:\s+\*?(.+))?$")


@dataclass(frozen=True)
class Digest:
    algorithm: str  # "sha256" | "sha512"
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def new(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file, read in chunks (bounded memory)."""
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def parse_checksums(text: str, name: str, where: str) -> Digest:
    """The digest that ``text`` (a checksum file from ``where``) lists for the file ``name``."""
    entries: list[tuple[str, Digest]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        bsd = _BSD.match(line)
        if bsd:
            algorithm = bsd.group(1).lower()
            if len(bsd.group(3)) == {"sha256": 64, "sha512": 128}[algorithm]:
                entries.append((bsd.group(2), Digest(algorithm, bsd.group(3).lower())))
            continue
        gnu = _GNU.match(line)
        if gnu:
            hexdigest = gnu.group(1).lower()
            entries.append(((gnu.group(2) or "").strip(), Digest(_BY_LENGTH[len(hexdigest)], hexdigest)))
    found = [d for n, d in entries if n and PurePosixPath(n).name == name]
    if found:
        return found[0]
    if len(entries) == 1 and not entries[0][0]:
        return entries[0][1]  # a bare digest: the file is about one image
    listed = ", ".join(n for n, _ in entries[:5] if n) or "no file names"
    raise DownloadError(
        f"{where}: no sha256 or sha512 checksum for {name} (it lists {listed})",
        hint="check the entry's checksums URL, or give sha256 in the catalog entry",
    )
