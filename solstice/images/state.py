"""What this host knows about an image: present, verified, self-tested; the rule the dispatcher
and ``solstice image list``/``verify`` share (docs/images.md, "How the dispatcher decides").

Files in ``<images_dir>/<label>/``:

- ``state.json`` (written by ``solstice image pull``/``verify``)::

      {"version": 1, "label": "omnios-r151058", "source": "https://...", "path": "/var/lib/...",
       "format": "qcow2", "size": 1234, "mtime_ns": 1700000000000000000, "sha256": "<disk>",
       "download": "sha256:<hex of the file as fetched>", "pulled_at": "2026-12-01T19:00:00Z",
       "verified_at": "2026-12-01T19:00:00Z", "ok": true, "problem": ""}

- ``selftest.json`` (written by ``solstice image selftest``, solstice.images.selftest)

An image counts as present and verified when:

- it is the test image (``source = "build-test-image"``): its files exist and build-test-image's
  ``stamp`` (written last) is not older than ``base.qcow2``: it was built here, so it is trusted;
- it has a ``source`` or a ``sha256``: ``state.json`` says ``ok`` for this very file (same path,
  size and modification time as when it was checked);
- neither (the operator's own file): its files exist; there is nothing to check it against.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from solstice.files import atomic_write
from solstice.images.catalog import BUILD_HINT, LOCAL_BUILD, Image

STATE_FILE = "state.json"
STATE_VERSION = 1


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class ImageState:
    label: str
    source: str
    path: str
    format: str
    size: int
    mtime_ns: int
    sha256: str
    download: str
    pulled_at: str
    verified_at: str
    ok: bool = True
    problem: str = ""
    version: int = STATE_VERSION

    def matches(self, path: Path) -> bool:
        """Still describes the file at ``path`` (nobody replaced or rewrote it since)."""
        try:
            st = path.stat()
        except OSError:
            return False
        return self.path == str(path) and self.size == st.st_size and self.mtime_ns == st.st_mtime_ns


@dataclass(frozen=True)
class Readiness:
    present: bool
    verified: bool
    reason: str  # why not, or how it was verified

    @property
    def ready(self) -> bool:
        return self.present and self.verified


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_state(state_dir: Path) -> ImageState | None:
    data = _read_json(state_dir / STATE_FILE)
    if data is None or data.get("version") != STATE_VERSION:
        return None
    try:
        return ImageState(**data)
    except TypeError:
        return None


def write_state(state_dir: Path, state: ImageState) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(state_dir / STATE_FILE, json.dumps(asdict(state), indent=2) + "\n", mode=0o644)


def needs_verification(image: Image) -> bool:
    cfg = image.config
    return cfg is not None and cfg.source != LOCAL_BUILD and bool(cfg.source or cfg.sha256)


def readiness(image: Image) -> Readiness:
    cfg = image.config
    missing = [p for p in (image.pristine, image.kernel, image.initrd) if p is not None and not p.is_file()]
    if cfg is not None and cfg.source == LOCAL_BUILD:
        if missing:
            return Readiness(False, False, f"{missing[0]} does not exist ({BUILD_HINT})")
        stamp = image.pristine.parent / "stamp"
        try:
            built = stamp.stat().st_mtime_ns >= image.pristine.stat().st_mtime_ns
        except OSError:
            built = False
        if not built:
            return Readiness(
                True, False, f"no build stamp newer than the disk in {stamp.parent} ({BUILD_HINT})"
            )
        return Readiness(True, True, "built on this host by build-test-image")
    if missing:
        hint = (
            f"run `solstice image pull {image.label}`"
            if cfg is not None and cfg.source
            else ("put the file there, or give the entry a source to pull it from")
        )
        return Readiness(False, False, f"{missing[0]} does not exist ({hint})")
    if not needs_verification(image):
        return Readiness(True, True, "the operator's own file (no source or sha256 to check it against)")
    state = read_state(image.state_dir) if image.state_dir is not None else None
    if state is None:
        return Readiness(True, False, f"not verified yet (run `solstice image verify {image.label}`)")
    if not state.ok:
        return Readiness(True, False, f"failed verification: {state.problem}")
    if not state.matches(image.pristine):
        return Readiness(
            True,
            False,
            f"{image.pristine} changed since it was verified (run `solstice image verify {image.label}`)",
        )
    return Readiness(True, True, f"sha256 verified {state.verified_at}")
