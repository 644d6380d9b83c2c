"""Streamed decompression of a downloaded image into its disk file: zstd (the ``zstandard``
library), xz and gzip (the standard library), in chunks, hashing what it writes."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import zstandard

from solstice.config import COMPRESSIONS
from solstice.errors import DownloadError

CHUNK = 1 << 20
_SUFFIXES = {".zst": "zst", ".zstd": "zst", ".xz": "xz", ".gz": "gz"}


def compression_of(name: str, declared: str = "") -> str:
    """The entry's ``compression``, else what the file name says (``.zst``, ``.xz``, ``.gz``)."""
    if declared:
        return declared
    for suffix, kind in _SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return "none"


def _reader(kind: str, f: BinaryIO) -> BinaryIO:
    if kind == "zst":
        # read_across_frames: zstd's CLI writes several frames for big inputs (--long, -T).
        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    if kind == "xz":
        return lzma.open(f)  # type: ignore[return-value]
    if kind == "gz":
        return gzip.open(f)  # type: ignore[return-value]
    raise ValueError(f"compression {kind!r}: not one of {', '.join(COMPRESSIONS)}")


def decompress(src: Path, dst: Path, kind: str, progress: Callable[[int], None] | None = None) -> str:
    """Write ``src`` decompressed to ``dst``; return the sha256 of what was written."""
    h = hashlib.sha256()
    written = 0
    try:
        with src.open("rb") as raw, dst.open("wb") as out:
            if kind == "none":
                reader: BinaryIO = raw
            else:
                reader = _reader(kind, raw)
            while chunk := reader.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
                written += len(chunk)
                if progress is not None:
                    progress(written)
            out.flush()
            os.fsync(out.fileno())
    except (zstandard.ZstdError, lzma.LZMAError, EOFError, gzip.BadGzipFile) as exc:
        dst.unlink(missing_ok=True)
        raise DownloadError(f"{src.name}: not valid {kind} data: {exc}") from None
    except OSError as exc:  # a full disk, mostly
        dst.unlink(missing_ok=True)
        raise DownloadError(f"{dst}: cannot write the decompressed image: {exc.strerror}") from None
    return h.hexdigest()
