"""Seed media: the small disks that hand a guest its first-boot data (reference/guests.md §3, §8).

ISO9660 with Joliet and Rock Ridge (cloud-init's NoCloud, nuageinit), FAT (NoCloud, key disks; made
with mkfs.vfat and mcopy), and the odc cpio archive at LBA 0 of a raw disk that the illumos
metadata-agent's generic provider reads. Which one a guest gets is its provisioner's choice
(solstice.vm.provision).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import pycdlib

from solstice import proc
from solstice.errors import CommandError, ImageError

#: The metadata-agent's disk: the archive, then zeros up to this size (its anyvm recipe: 1 MiB).
CPIO_DISK_BYTES = 1024 * 1024
#: A FAT volume for a few small files; mkfs.vfat's FAT12 minimum is well below it.
FAT_KIB = 1024


def meta_data(instance_id: str, hostname: str) -> str:
    """meta-data as JSON, which is valid YAML and the only form some agents read (guests.md §8).
    A new instance-id per job makes cloud-init treat every boot as a first boot."""
    return json.dumps({"instance-id": instance_id, "local-hostname": hostname}) + "\n"


def write_iso(path: Path, files: Mapping[str, bytes], label: str = "cidata") -> None:
    """An ISO9660 volume labelled ``label`` with ``files`` at its root."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=label)
    try:
        for n, (name, data) in enumerate(files.items()):
            # ISO9660 names are 8.3 upper case; guests read the Joliet or Rock Ridge name.
            iso_name = f"/F{n}.;1"
            iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
        iso.write(str(path))
    finally:
        iso.close()


def write_fat(path: Path, files: Mapping[str, bytes], label: str) -> None:
    """A FAT volume labelled ``label`` with ``files`` at its root (mkfs.vfat, mcopy)."""
    staging = path.with_name(path.name + ".files")
    staging.mkdir()
    try:
        proc.run([_sbin("mkfs.vfat"), "-C", "-n", label, path, str(FAT_KIB)])
        for name, data in files.items():
            src = staging / name
            src.write_bytes(data)
            # -o: overwrite without asking; mtools must not read the caller's ~/.mtoolsrc.
            proc.run(
                ["mcopy", "-o", "-i", path, src, f"::{name}"],
                env={**os.environ, "MTOOLSRC": os.devnull, "MTOOLS_SKIP_CHECK": "1"},
            )
    except CommandError as exc:
        raise ImageError(
            f"cannot make the FAT seed {path}: {exc}",
            hint="install dosfstools and mtools (apt-get install dosfstools mtools)",
        ) from exc
    finally:
        for f in staging.iterdir():
            f.unlink()
        staging.rmdir()


def _sbin(tool: str) -> str:
    """``tool`` from PATH, else from /usr/sbin or /sbin (not on every user's PATH)."""
    for candidate in (shutil.which(tool), f"/usr/sbin/{tool}", f"/sbin/{tool}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return tool


def odc_archive(files: Mapping[str, bytes]) -> bytes:
    """A POSIX.1 "odc" cpio archive (magic 070707, octal headers): the format the metadata-agent
    accepts; it refuses newc (070701), which is why this is written here and not by cpio -H newc."""
    out = bytearray()

    def member(name: str, data: bytes, mode: int, ino: int) -> None:
        encoded = name.encode() + b"\0"
        header = (
            "070707"
            + f"{0:06o}"  # dev
            + f"{ino:06o}"
            + f"{mode:06o}"
            + f"{0:06o}{0:06o}"  # uid, gid: root
            + f"{1:06o}"  # nlink
            + f"{0:06o}"  # rdev
            + f"{0:011o}"  # mtime
            + f"{len(encoded):06o}"
            + f"{len(data):011o}"
        )
        out.extend(header.encode() + encoded + data)

    for ino, (name, data) in enumerate(files.items(), start=1):
        if "/" in name or not name or len(data) >= 8**11:
            raise ValueError(f"cpio member {name!r}: a plain file name and less than 8 GiB")
        member(name, data, 0o100644, ino)
    member("TRAILER!!!", b"", 0, 0)
    return bytes(out)


def write_cpio_disk(path: Path, files: Mapping[str, bytes]) -> None:
    """A raw disk whose first sector starts the odc archive of ``files`` (LBA 0)."""
    archive = odc_archive(files)
    if len(archive) > CPIO_DISK_BYTES:
        raise ImageError(f"the metadata archive is {len(archive)} bytes, over {CPIO_DISK_BYTES}")
    with path.open("wb") as fh:
        fh.write(archive)
        fh.truncate(CPIO_DISK_BYTES)
