"""The saved GitHub runner registration: settings, OAuth credentials and the private key.

One JSON file, ``<state_dir>/github-runner/runner.json``, mode 0600 in a 0700 directory, written
by an atomic, durable rename (a crash never leaves half a key). It holds what the official
runner keeps in ``.runner``, ``.credentials`` and ``.credentials_rsaparams`` (protocol §3.5), in
those files' own shapes, with the key as PEM. A JIT config (§3.6) decodes to the same thing.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from solstice.errors import ConfigError
from solstice.files import atomic_write
from solstice.forges.github import auth
from solstice.forges.github import messages as m

WARNING = "Written by `solstice github-runner register`; it holds the runner's private key: do not share it."
DIR_NAME = "github-runner"
FILE_NAME = "runner.json"
FORMAT = 1


@dataclass(frozen=True)
class Registration:
    settings: m.RunnerSettings
    credentials: m.OAuthCredentials
    private_key_pem: str
    labels: tuple[str, ...] = ()
    jit: bool = False  # from a JIT config: one job, then the server removes the runner

    def __repr__(self) -> str:  # never the key, not even in a traceback
        return f"Registration({self.public_view()!r})"

    @property
    def key(self) -> rsa.RSAPrivateKey:
        return auth.load_private_key(self.private_key_pem)

    @property
    def ephemeral(self) -> bool:
        return self.jit or self.settings.ephemeral

    def public_view(self) -> dict[str, Any]:
        """What may be shown or logged: no key; the client id and URLs are not secrets."""
        return {
            "agent_id": self.settings.agent_id,
            "name": self.settings.agent_name,
            "github_url": self.settings.github_url,
            "pool": self.settings.pool_name,
            "broker": self.settings.server_url_v2,
            "runner_admin_flow": self.settings.use_runner_admin_flow,
            "ephemeral": self.ephemeral,
            "jit": self.jit,
            "labels": list(self.labels),
            "client_id": self.credentials.client_id,
            "authorization_url": self.credentials.audience,
            "signing": auth.signing_algorithm(self.credentials),
        }


def default_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / DIR_NAME / FILE_NAME


def save(path: Path, reg: Registration) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)  # mkdir's mode is masked by the umask, and exist_ok keeps old modes
    data = {
        "WARNING": WARNING,
        "format": FORMAT,
        ".runner": reg.settings.to_dict(),
        ".credentials": reg.credentials.to_dict(),
        "private_key": reg.private_key_pem,
        "labels": list(reg.labels),
        "jit": reg.jit,
    }
    atomic_write(path, json.dumps(data, indent=2) + "\n", mode=0o600, durable=True)


def load(path: Path) -> Registration:
    hint = "register first: solstice github-runner register --url URL --token TOKEN --name NAME"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"this runner is not registered: {path} does not exist", hint=hint) from None
    except OSError as exc:  # e.g. another user's 0600 file: it holds the runner's private key
        raise ConfigError(f"{path} cannot be read: {exc.strerror}") from None
    try:
        data = m.decode_json(raw, str(path))
        if not isinstance(data, dict):
            raise m.CodecError(str(path), "expected a JSON object")
        labels = data.get("labels", [])
        reg = Registration(
            settings=m.RunnerSettings.from_dict(data.get(".runner"), "registration..runner"),
            credentials=m.OAuthCredentials.from_dict(data.get(".credentials"), "registration..credentials"),
            private_key_pem=str(data["private_key"]),
            labels=tuple(str(x) for x in labels) if isinstance(labels, list) else (),
            jit=bool(data.get("jit", False)),
        )
        reg.key  # noqa: B018 - a key that does not load is a broken file, now rather than at first use
        return reg
    except (m.CodecError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path} is not a GitHub runner registration ({exc})", hint=hint) from None


def from_jit_config(encoded: str, labels: tuple[str, ...] = ()) -> Registration:
    """``--jitconfig BASE64`` (§3.6): base64 of JSON mapping each file name to base64 of its
    contents. The files are GitHub's (PascalCase, string values, §13.4); parsed leniently."""
    try:
        files = json.loads(base64.b64decode(encoded.strip(), validate=False))
    except (ValueError, binascii.Error) as exc:
        raise m.CodecError("jitconfig", f"not base64 of a JSON object ({exc})") from None
    f = m.Fields(files, "jitconfig")

    def file(name: str) -> Any:
        raw = f.text(name)
        try:
            return json.loads(base64.b64decode(raw).decode("utf-8-sig"))
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise m.CodecError(f"jitconfig.{name}", f"not base64 of a JSON file ({exc})") from None

    settings = m.RunnerSettings.from_dict(file(".runner"), "jitconfig..runner")
    credentials = m.OAuthCredentials.from_dict(file(".credentials"), "jitconfig..credentials")
    key = auth.key_from_rsa_params(file(".credentials_rsaparams"))
    return Registration(settings, credentials, auth.private_key_pem(key), labels=labels, jit=True)
