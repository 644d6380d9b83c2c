"""``solstice image pull``, ``verify`` and ``rm``: an image from its catalog ``source`` to a verified
disk under ``<images_dir>``, never leaving a usable-looking file that is not the right one.

A pull, for the disk ``<dir>/disk.qcow2``::

    <dir>/.disk.qcow2.download.part   fetched (resumed after an interruption), then its digest checked
    <dir>/.disk.qcow2.part            decompressed from it (or it, renamed, when not compressed)
    qemu-img info                     the format must be the entry's
    <dir>/disk.qcow2                  renamed into place; then state.json (solstice.images.state)

A digest mismatch deletes the download; an interrupted one is kept for the next pull to resume.
Only the final rename makes ``disk.qcow2``, so a partial or wrong file never has the image's name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from solstice import proc
from solstice.errors import ChecksumMismatch, CommandError, DownloadError, ImageError
from solstice.files import try_lock
from solstice.images import oci
from solstice.images.catalog import BUILD_HINT, LOCAL_BUILD, Image
from solstice.images.checksum import Digest, file_digest, parse_checksums
from solstice.images.compression import compression_of, decompress
from solstice.images.download import Downloader, Progress, local_path
from solstice.images.listing import is_pattern, newest
from solstice.images.prepared import PREPARED_DIR
from solstice.images.selftest import RECORD_NAME
from solstice.images.state import (
    STATE_FILE,
    ImageState,
    read_state,
    utc_now,
    write_state,
)

log = logging.getLogger("solstice.images")

#: phase ("download", "decompress"), done bytes, total bytes or None
PhaseProgress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class Fetch:
    url: str
    name: str  # the published file's name (for the checksum file and its compression)
    digest: Digest
    headers: dict[str, str]
    source: str  # what state.json records: the entry's source, or the file a pattern matched


def part_of(path: Path, what: str = "") -> Path:
    """A hidden ``.part`` sibling of ``path``: never the image's name, and ignored by everything."""
    return path.parent / f".{path.name}{what}.part"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One pull or verify of a label at a time."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = try_lock(directory / ".pull.lock")
    if fd is None:
        raise ImageError(f"{directory}: another pull or verify of this image is running")
    try:
        yield
    finally:
        os.close(fd)


class Puller:
    def __init__(self, downloader: Downloader | None = None, *, qemu_img: str = "qemu-img") -> None:
        self.downloader = downloader or Downloader()
        self.qemu_img = qemu_img

    # --- pull -----------------------------------------------------------------------------------

    def resolve(self, image: Image) -> Fetch:
        """Where the entry's file is and the digest it must have."""
        cfg = image.config
        if cfg is None or cfg.source == LOCAL_BUILD:
            raise ImageError(f"image {image.label!r} is built on this host, not pulled", hint=BUILD_HINT)
        if not cfg.source:
            raise ImageError(
                f"image {image.label!r} ({image.origin}) has no source to pull it from",
                hint=f"give [images.{image.label}] a source in a file of [paths] images_d "
                "(docs/images.md), or put the disk at " + str(image.pristine),
            )
        source = cfg.source
        if source.startswith("oci://"):
            blob = oci.resolve(self.downloader.session, source, self.downloader.timeout)
            if cfg.sha256 and blob.digest != Digest("sha256", cfg.sha256):
                raise ChecksumMismatch(
                    f"{source}: the registry's layer is {blob.digest}, the entry pins sha256:{cfg.sha256}"
                )
            return Fetch(blob.url, blob.name, blob.digest, blob.headers, source)
        _check_transport(source, pinned=bool(cfg.sha256), what="source")
        if is_pattern(source):
            source = newest(self.downloader, source)
        path = local_path(source)
        name = path.name if path is not None else PurePosixPath(urlsplit(source).path).name
        checksums = cfg.checksums.replace("{source}", source)
        if cfg.sha256:
            digest = Digest("sha256", cfg.sha256)
        else:
            _check_transport(checksums, pinned=False, what="checksums")
            digest = parse_checksums(self.downloader.text(checksums), name, checksums)
        return Fetch(source, name, digest, {}, source)

    def pull(self, image: Image, progress: PhaseProgress | None = None) -> ImageState:
        cfg = image.config
        fetch = self.resolve(image)
        assert cfg is not None and image.state_dir is not None
        disk = image.pristine
        disk.parent.mkdir(parents=True, exist_ok=True)
        with _locked(image.state_dir):
            started = time.monotonic()
            download = part_of(disk, ".download")
            on_bytes: Progress | None = (lambda d, t: progress("download", d, t)) if progress else None
            self.downloader.fetch(fetch.url, download, headers=fetch.headers, progress=on_bytes)
            got = file_digest(download, fetch.digest.algorithm)
            if got != fetch.digest.hex:
                download.unlink()
                raise ChecksumMismatch(
                    f"{fetch.url}: {fetch.digest.algorithm} is {got}, expected {fetch.digest.hex}; "
                    "the download was deleted",
                    hint="a changed or corrupted file on the server, or a stale checksum in the entry",
                )
            kind = compression_of(fetch.name, cfg.compression)
            staged = part_of(disk)
            if kind == "none":
                with download.open("rb+") as f:
                    os.fsync(f.fileno())  # on disk before state.json can call it verified
                os.replace(download, staged)
                sha256 = got if fetch.digest.algorithm == "sha256" else file_digest(staged)
            else:
                on_out = (lambda d: progress("decompress", d, None)) if progress else None
                try:
                    sha256 = decompress(download, staged, kind, on_out)
                finally:
                    download.unlink(missing_ok=True)
            try:
                self.check_format(staged, cfg.format, fetch.url)
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
            # The old state goes first: a crash between the two steps leaves "not verified".
            (image.state_dir / STATE_FILE).unlink(missing_ok=True)
            os.replace(staged, disk)
            st = disk.stat()
            now = utc_now()
            state = ImageState(
                label=image.label,
                source=fetch.source,
                path=str(disk),
                format=cfg.format,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                sha256=sha256,
                download=str(fetch.digest),
                pulled_at=now,
                verified_at=now,
            )
            write_state(image.state_dir, state)
            log.info(
                "%s: pulled %s (%d bytes) in %.1f s",
                image.label,
                fetch.url,
                st.st_size,
                time.monotonic() - started,
            )
            return state

    def check_format(self, path: Path, expected: str, what: str) -> None:
        """``qemu-img info``'s format must be the entry's (raw is what it says of anything else)."""
        try:
            out = proc.run([self.qemu_img, "info", "--output=json", path]).stdout
        except CommandError as exc:
            raise DownloadError(f"{what}: not a usable {expected} image: {exc}") from None
        try:
            found = str(json.loads(out).get("format", ""))
        except (ValueError, AttributeError):
            raise DownloadError(f"{what}: qemu-img info printed no JSON object") from None
        if found != expected:
            raise DownloadError(f"{what}: qemu-img says this is a {found} image, the entry says {expected}")

    # --- verify ---------------------------------------------------------------------------------

    def verify(self, image: Image) -> ImageState:
        """Hash the disk again and compare it with what was recorded at pull time (or with the
        entry's sha256 for a file the operator put there); the result is recorded either way."""
        cfg = image.config
        assert cfg is not None and image.state_dir is not None
        disk = image.pristine
        if not disk.is_file():
            raise ImageError(
                f"image {image.label!r}: {disk} does not exist",
                hint=f"run `solstice image pull {image.label}`",
            )
        with _locked(image.state_dir):
            previous = read_state(image.state_dir)
            if previous is not None and previous.path == str(disk):
                expected, base = previous.sha256, previous
            elif cfg.sha256 and compression_of(cfg.source, cfg.compression) == "none":
                expected = cfg.sha256
                base = ImageState(
                    image.label, cfg.source, str(disk), cfg.format, 0, 0, "", f"sha256:{cfg.sha256}", "", ""
                )
            else:
                raise ImageError(
                    f"image {image.label!r}: nothing recorded to verify {disk} against",
                    hint=f"run `solstice image pull {image.label}` (it verifies what it downloads)",
                )
            st = disk.stat()
            got = file_digest(disk)
            ok = got == expected
            state = replace(
                base,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                sha256=expected,
                verified_at=utc_now(),
                ok=ok,
                problem="" if ok else f"sha256 of {disk} is {got}, expected {expected}",
            )
            write_state(image.state_dir, state)
            return state

    # --- rm -------------------------------------------------------------------------------------

    def remove(self, image: Image) -> list[Path]:
        """The pulled disk, its partial files and its state; not the self-test record's directory
        when it holds other files. Returns what was removed."""
        cfg = image.config
        if cfg is not None and cfg.source == LOCAL_BUILD:
            raise ImageError(
                f"image {image.label!r} is the test image built by build-test-image; remove "
                f"{image.pristine.parent} yourself if you mean it"
            )
        if cfg is None or not cfg.source:
            raise ImageError(
                f"image {image.label!r} was not pulled (no source); its file {image.pristine} is "
                "the operator's, and stays"
            )
        assert image.state_dir is not None
        removed: list[Path] = []
        with _locked(image.state_dir):
            disk = image.pristine
            for path in (
                image.state_dir / STATE_FILE,
                disk,
                part_of(disk),
                part_of(disk, ".download"),
                image.state_dir / RECORD_NAME,
            ):
                if path.exists():
                    path.unlink()
                    removed.append(path)
            # Prepared copies are made from this disk: without it they are stale.
            prepared = image.state_dir / PREPARED_DIR
            for path in sorted(prepared.glob("*.qcow2")) if prepared.is_dir() else []:
                path.unlink()
                removed.append(path)
        (image.state_dir / ".pull.lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            image.state_dir.rmdir()  # only when empty
        return removed


def _check_transport(url: str, *, pinned: bool, what: str) -> None:
    """Plain http only where the digest does not come over it too, or to a loopback address."""
    if not url.startswith("http://"):
        return
    host = urlsplit(url).hostname or ""
    if pinned or host in ("localhost", "::1") or host.startswith("127."):
        return
    raise DownloadError(
        f"{what} {url}: plain http without a pinned sha256 could be tampered with",
        hint="use https, or pin sha256 in the entry",
    )


def disk_usage(path: Path) -> int | None:
    """Bytes the file takes on disk (sparse files count what is allocated)."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return None
