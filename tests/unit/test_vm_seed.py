"""The NoCloud seed ISO, read back with pycdlib."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pycdlib

from solstice.vm.seed import meta_data, write_seed

USER_DATA = "#cloud-config\nusers:\n  - name: solstice\n"


def read(iso: pycdlib.PyCdlib, **path: str) -> str:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **path)
    return out.getvalue().decode()


def test_seed_iso(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    md = meta_data("job-123", "solstice-job")
    write_seed(seed, USER_DATA, md)

    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    try:
        # Lowercase: FreeBSD's nuageinit looks only for "cidata".
        assert iso.pvd.volume_identifier.rstrip(b" \x00") == b"cidata"
        assert iso.has_joliet() and iso.has_rock_ridge()
        for name, text in (("user-data", USER_DATA), ("meta-data", md)):
            assert read(iso, joliet_path=f"/{name}") == text
            assert read(iso, rr_path=f"/{name}") == text
    finally:
        iso.close()


def test_meta_data_is_json_with_instance_id_and_hostname() -> None:
    assert json.loads(meta_data("job-123", "host-1")) == {
        "instance-id": "job-123",
        "local-hostname": "host-1",
    }
