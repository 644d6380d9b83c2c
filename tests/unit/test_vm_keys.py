"""The ephemeral key pair: OpenSSH public line, usable by paramiko, never on disk."""

from __future__ import annotations

import base64
import builtins
import os
from pathlib import Path
from typing import Any

import paramiko
import pytest

from solstice.vm.keys import generate_keypair


def test_public_line_matches_the_private_key() -> None:
    kp = generate_keypair()
    kind, blob, comment = kp.public_line.split(" ")
    assert kind == "ssh-ed25519"
    assert comment == "solstice-ci"
    assert base64.b64decode(blob) == kp.pkey.asbytes()
    public = paramiko.Ed25519Key(data=base64.b64decode(blob))
    sig = kp.pkey.sign_ssh_data(b"challenge")
    assert public.verify_ssh_sig(b"challenge", paramiko.Message(sig.asbytes()))


def test_each_pair_is_new() -> None:
    assert generate_keypair().public_line != generate_keypair().public_line


def test_no_file_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    opened: list[Any] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        opened.append((file, mode))
        return real_open(file, mode, *a, **kw)

    def spy_os_open(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        opened.append((path, flags))
        return real_os_open(path, flags, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    kp = generate_keypair()
    monkeypatch.undo()
    writes = [
        o
        for o in opened
        if (isinstance(o[1], str) and any(c in o[1] for c in "wax+"))
        or (isinstance(o[1], int) and o[1] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    ]
    assert writes == []
    assert list(tmp_path.iterdir()) == []
    assert "PRIVATE" not in repr(kp)


def test_private_key_for_debug_sessions_round_trips() -> None:
    kp = generate_keypair()
    pem = kp.private_openssh()
    assert pem.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    import io

    again = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
    assert again.asbytes() == kp.pkey.asbytes()
