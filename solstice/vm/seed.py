"""The NoCloud seed ISO that hands the guest its cloud-config (reference/guests.md §8).

Volume id lowercase ``cidata`` (FreeBSD's nuageinit checks only that spelling), with Joliet and
Rock Ridge so every guest sees the names ``user-data`` and ``meta-data``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pycdlib


def meta_data(instance_id: str, hostname: str) -> str:
    """meta-data as JSON, which is valid YAML and the only form some agents read (guests.md §8).
    A new instance-id per job makes cloud-init treat every boot as a first boot."""
    return json.dumps({"instance-id": instance_id, "local-hostname": hostname}) + "\n"


def write_seed(path: Path, user_data: str, meta_data: str) -> None:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    try:
        # ISO9660 names are 8.3 upper case; guests read the Joliet or Rock Ridge name.
        for iso_name, name, text in (
            ("/USERDATA.;1", "user-data", user_data),
            ("/METADATA.;1", "meta-data", meta_data),
        ):
            data = text.encode()
            iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
        iso.write(str(path))
    finally:
        iso.close()
