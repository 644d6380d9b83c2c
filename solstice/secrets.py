"""Secrets at rest and in transit: sealed with the installation's key, opened only in the job process.

The key is a Fernet key (AES-128-CBC + HMAC-SHA256, from ``cryptography``) in a file readable by the
pollers and job processes only: ``[secrets] key_file``, or the systemd credential ``secrets-key``
(``LoadCredential=secrets-key:/etc/solstice/secrets.key``), found in ``$CREDENTIALS_DIRECTORY``.
``solstice secrets init`` writes a new key with mode 0600.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, TypeVar

from cryptography.fernet import Fernet, InvalidToken

from solstice.errors import ConfigError, InfraError

CREDENTIAL_NAME = "secrets-key"
DEFAULT_KEY_FILE = Path("/etc/solstice/secrets.key")


class SecretsError(InfraError):
    pass


class Sealable(Protocol):
    """What sealing needs of a request (solstice.model.JobRequest): the ground floor does not
    import the model, so it names the fields instead of the class."""

    @property
    def job_id(self) -> str: ...
    @property
    def secrets(self) -> Mapping[str, str]: ...
    @property
    def sealed_secrets(self) -> str: ...


R = TypeVar("R", bound=Sealable)


def key_path(configured: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The systemd credential when the unit has one, else the configured file, else the default."""
    env = os.environ if environ is None else environ
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / CREDENTIAL_NAME).is_file():
        return Path(creds) / CREDENTIAL_NAME
    return Path(configured) if configured else DEFAULT_KEY_FILE


def load_key(path: Path) -> bytes:
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"secrets key {path} does not exist", hint="create one with: solstice secrets init"
        ) from None
    except PermissionError:
        raise ConfigError(f"secrets key {path} is not readable by this user") from None
    try:
        Fernet(key)
    except ValueError:
        raise ConfigError(
            f"secrets key {path} is not a valid key (32 url-safe base64-encoded bytes)"
        ) from None
    return key


def write_new_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(Fernet.generate_key() + b"\n")


def seal(request: R, key: bytes) -> R:
    """The request with its secrets encrypted into ``sealed_secrets`` and ``secrets`` emptied."""
    if not request.secrets:
        return request
    token = Fernet(key).encrypt(json.dumps(dict(request.secrets), sort_keys=True).encode())
    return dataclasses.replace(request, secrets={}, sealed_secrets=token.decode())  # type: ignore[type-var]


def unseal(request: R, key: bytes) -> R:
    """The request with ``secrets`` decrypted from ``sealed_secrets``."""
    if not request.sealed_secrets:
        return request
    try:
        data = json.loads(Fernet(key).decrypt(request.sealed_secrets.encode()))
    except InvalidToken:
        raise SecretsError(
            f"job {request.job_id}: its secrets were sealed with another key than this host's",
            hint="every poller and job host must share the same secrets key",
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise SecretsError(f"job {request.job_id}: sealed secrets are not a name -> value map")
    return dataclasses.replace(request, secrets=data, sealed_secrets="")  # type: ignore[type-var]
