"""The job's ephemeral SSH key pair: ed25519, made in memory, never written anywhere.

The public line goes into the guest's cloud-config; the private half exists only as a paramiko key
object in this process and dies with it (DESIGN.md "Keys and secrets").
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    #: "ssh-ed25519 AAAA... comment", for authorized_keys.
    public_line: str
    #: The private key for paramiko; kept out of repr so it cannot reach a log by accident.
    pkey: paramiko.PKey = field(repr=False, compare=False)
    _private: Ed25519PrivateKey = field(repr=False, compare=False)

    def private_openssh(self) -> str:
        """The private key as an OpenSSH PEM, for an opt-in debug session only (the caller
        writes it 0600 under the job's runtime directory and it dies with the job)."""
        return _openssh_pem(self._private)


def _openssh_pem(private: Ed25519PrivateKey) -> str:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


def generate_keypair(comment: str = "solstice-ci") -> KeyPair:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    # paramiko (2.12 too) builds an Ed25519Key from an OpenSSH PEM; it is read from a string
    # buffer, so the private key never touches the disk.
    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(_openssh_pem(private)))
    return KeyPair(public_line=f"{public.decode()} {comment}", pkey=pkey, _private=private)


def load_keypair(private_openssh: str, comment: str = "solstice-ci") -> KeyPair:
    """The key pair of a private key handed over in memory (a warm VM's, solstice.images.warm)."""
    private = serialization.load_ssh_private_key(private_openssh.encode(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError("not an ed25519 private key")
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(private_openssh))
    return KeyPair(public_line=f"{public.decode()} {comment}", pkey=pkey, _private=private)
