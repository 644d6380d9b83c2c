"""Per-job copy-on-write disks: a qcow2 overlay on the (read-only, shared) base image."""

from __future__ import annotations

import json
from pathlib import Path

from solstice import proc
from solstice.errors import CommandError, ImageError


def create_overlay(
    base: Path,
    overlay: Path,
    base_format: str,
    size_gib: int | None = None,
    qemu_img: str = "qemu-img",
) -> None:
    """Create ``overlay`` backed by ``base``; grow it to ``size_gib`` when that is larger.

    The base is referenced by absolute path: qemu-img resolves a relative one against the
    overlay's directory, which is the job's, not the caller's.
    """
    base = base.resolve()
    if not base.is_file():
        raise ImageError(f"base image {base} does not exist", hint="build or download the image first")
    try:
        proc.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", base, "-F", base_format, overlay])
        if size_gib is not None:
            info = proc.run([qemu_img, "info", "--output=json", overlay])
            current = int(json.loads(info.stdout)["virtual-size"])
            wanted = size_gib * 1024**3
            # Only grow: shrinking below the base would cut off its file system.
            if wanted > current:
                proc.run([qemu_img, "resize", "-q", overlay, str(wanted)])
    except CommandError as exc:
        raise ImageError(f"cannot create an overlay on base image {base}: {exc}") from exc
    except (ValueError, KeyError) as exc:
        raise ImageError(f"cannot read the size of the overlay on base image {base}: {exc}") from exc
