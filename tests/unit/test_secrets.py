"""Sealing a JobRequest's secrets: round trip, no plaintext in the sealed form, wrong key, key sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from solstice import secrets
from solstice.errors import ConfigError
from solstice.model import JobRequest, JobSpec, to_dict


def request() -> JobRequest:
    job = JobSpec(key="j", name="j", runs_on=("debian-12",), steps=())
    return JobRequest(job_id="u1", job=job, label="debian-12", secrets={"TOKEN": "canary-9f8e7d", "B": "x"})


def test_seal_and_unseal(tmp_path: Path) -> None:
    keyfile = tmp_path / "k"
    secrets.write_new_key(keyfile)
    assert keyfile.stat().st_mode & 0o777 == 0o600
    key = secrets.load_key(keyfile)
    sealed = secrets.seal(request(), key)
    assert sealed.secrets == {} and sealed.sealed_secrets
    assert "canary-9f8e7d" not in json.dumps(to_dict(sealed))
    assert secrets.unseal(sealed, key) == request()


def test_wrong_key_is_a_clear_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    secrets.write_new_key(a)
    secrets.write_new_key(b)
    sealed = secrets.seal(request(), secrets.load_key(a))
    with pytest.raises(secrets.SecretsError, match="another key"):
        secrets.unseal(sealed, secrets.load_key(b))


def test_key_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        secrets.load_key(tmp_path / "missing")
    (tmp_path / "bad").write_text("not a key")
    with pytest.raises(ConfigError, match="not a valid key"):
        secrets.load_key(tmp_path / "bad")


def test_credential_directory_wins(tmp_path: Path) -> None:
    (tmp_path / "secrets-key").write_text("x")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert secrets.key_path("/etc/other.key", env) == tmp_path / "secrets-key"
    assert secrets.key_path("/etc/other.key", {}) == Path("/etc/other.key")
    assert secrets.key_path(None, {}) == secrets.DEFAULT_KEY_FILE
