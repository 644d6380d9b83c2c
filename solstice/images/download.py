"""Fetching one file over HTTP(S) with ``requests``: streamed to a ``.part`` file in chunks, resumed
with a ``Range`` request after an interruption (retries with solstice.backoff), and checked for
length, since a dropped connection can look like a short but complete body. The ``.part`` file is
kept when retries run out, so the next pull resumes it. Local files (``file://`` or a path) are
copied the same way, so everything after the fetch is one code path."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests

from solstice.backoff import Backoff
from solstice.errors import DownloadError

log = logging.getLogger("solstice.images")

#: Bytes per read and write: what an interrupted read loses (it is fetched again on resume).
CHUNK = 64 << 10
#: A checksum file or manifest bigger than this is not one.
MAX_TEXT = 4 << 20

#: progress(done_bytes, total_bytes or None)
Progress = Callable[[int, int | None], None]


class _Interrupted(Exception):
    """A transfer that stopped early and is worth resuming."""


def local_path(source: str) -> Path | None:
    """The file a ``file://`` URL or absolute path names; None for remote sources."""
    if source.startswith("file://"):
        return Path(unquote(urlsplit(source).path))
    if source.startswith("/"):
        return Path(source)
    return None


class Downloader:
    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        attempts: int = 6,
        backoff: Backoff | None = None,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.session = session or requests.Session()
        self.attempts = attempts
        self.backoff = backoff or Backoff(initial=1.0, maximum=30.0)
        self.timeout = timeout
        self.sleep = sleep

    def text(self, url: str) -> str:
        """A small text file (a checksum file): at most MAX_TEXT bytes."""
        path = local_path(url)
        if path is not None:
            try:
                with path.open("rb") as f:
                    data = f.read(MAX_TEXT + 1)
            except OSError as exc:
                raise DownloadError(f"{path}: cannot read: {exc.strerror}") from None
        else:
            try:
                with self.session.get(url, stream=True, timeout=self.timeout) as reply:
                    if reply.status_code != 200:
                        raise DownloadError(f"{url}: {reply.status_code} {reply.reason}")
                    data = reply.raw.read(MAX_TEXT + 1, decode_content=True)
            except requests.RequestException as exc:
                raise DownloadError(f"{url}: {exc}") from None
        if len(data) > MAX_TEXT:
            raise DownloadError(f"{url}: more than {MAX_TEXT} bytes; not a checksum file")
        return data.decode(errors="replace")

    def fetch(
        self,
        source: str,
        part: Path,
        *,
        headers: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> int:
        """``source`` into ``part``, continuing what ``part`` already holds; returns its size."""
        path = local_path(source)
        if path is not None:
            return self._copy(path, part, progress)
        for attempt in range(1, self.attempts + 1):
            try:
                return self._get(source, part, dict(headers or {}), progress)
            except (requests.RequestException, _Interrupted) as exc:
                have = part.stat().st_size if part.exists() else 0
                if attempt == self.attempts:
                    raise DownloadError(
                        f"{source}: {exc}; gave up after {attempt} attempts",
                        hint=f"the {have} bytes received are kept in {part}: pull again to resume",
                    ) from None
                delay = self.backoff.delay(attempt)
                log.warning(
                    "%s: %s; resuming at byte %d in %.1f s (attempt %d of %d)",
                    source,
                    exc,
                    have,
                    delay,
                    attempt + 1,
                    self.attempts,
                )
                self.sleep(delay)
            except OSError as exc:  # writing the part (requests' errors are OSErrors too: above)
                raise DownloadError(f"{part}: cannot write: {exc.strerror}") from None
        raise AssertionError("unreachable")

    def _get(self, url: str, part: Path, headers: dict[str, str], progress: Progress | None) -> int:
        have = part.stat().st_size if part.exists() else 0
        # identity: a transparently gunzipped body would not match Content-Length or the digest
        headers["Accept-Encoding"] = "identity"
        if have:
            headers["Range"] = f"bytes={have}-"
        with self.session.get(url, headers=headers, stream=True, timeout=self.timeout) as reply:
            status = reply.status_code
            if status == 416 and have:
                part.unlink()  # what we hold is longer than the file now is: start again
                raise _Interrupted("the partial file does not fit the server's file")
            if status in (429, 500, 502, 503, 504):
                raise _Interrupted(f"{status} {reply.reason}")
            if status not in (200, 206):
                raise DownloadError(f"{url}: {status} {reply.reason}")
            length = reply.headers.get("Content-Length")
            if status == 206:
                start, total = _content_range(reply.headers.get("Content-Range", ""))
                if start != have:
                    part.unlink()
                    raise _Interrupted(f"the server resumed at byte {start}, not {have}")
            else:
                have, total = 0, int(length) if length and length.isdigit() else None
            mode = "ab" if status == 206 else "wb"
            with part.open(mode) as out:
                for chunk in reply.iter_content(CHUNK):
                    out.write(chunk)
                    have += len(chunk)
                    if progress is not None:
                        progress(have, total)
        if total is not None and have < total:
            raise _Interrupted(f"the connection closed at byte {have} of {total}")
        if total is not None and have > total:
            part.unlink()
            raise DownloadError(f"{url}: received {have} bytes, more than the announced {total}")
        return have

    def _copy(self, src: Path, part: Path, progress: Progress | None) -> int:
        try:
            total = src.stat().st_size
            done = 0
            with src.open("rb") as f, part.open("wb") as out:
                while chunk := f.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except FileNotFoundError:
            raise DownloadError(f"{src}: no such file") from None
        except OSError as exc:
            raise DownloadError(f"{src}: cannot read: {exc.strerror}") from None
        return done


def _content_range(value: str) -> tuple[int, int | None]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL or None for ``*``)."""
    try:
        unit, _, spec = value.partition(" ")
        span, _, total = spec.partition("/")
        start = int(span.split("-")[0])
        if unit != "bytes":
            raise ValueError(unit)
        return start, None if total == "*" else int(total)
    except ValueError:
        raise _Interrupted(f"unusable Content-Range {value!r}") from None
