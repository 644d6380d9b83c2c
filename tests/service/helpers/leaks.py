"""Looking for a canary secret (and SSH private keys) everywhere on the host a job could leave them:
files under given roots, /proc/*/cmdline and /proc/*/environ, a PostgreSQL database's tables,
RabbitMQ's message store on disk, the journal when journald runs.

A canary is made at run time (``new_canary``) and reaches the job only through a secret, so a hit
can only come from Solstice writing it somewhere.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

#: Files larger than this are not read (other users' VM disks in /tmp); a job's own small files are.
MAX_FILE = 64 * 1024 * 1024
#: Private key headers (PEM and OpenSSH).
KEY_HEADERS = (b"PRIVATE KEY-----", b"openssh-key-v1")


def new_canary() -> str:
    return "sol-canary-" + secrets.token_hex(16)


def needles(secret: str) -> dict[str, bytes]:
    """The secret's bytes, their hex, and their base64 at each of the three alignments (standard
    and URL-safe alphabets), trimmed to the characters that do not depend on neighbouring bytes."""
    raw = secret.encode()
    out = {"plain": raw, "hex": raw.hex().encode()}
    for shift in range(3):
        for name, enc in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
            text = enc(b"\0" * shift + raw)
            core = text[4 if shift else 0 : -4]
            out[f"{name}+{shift}"] = core
    return out


@dataclass
class Hit:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.what} in {self.where}"


@dataclass
class Scanner:
    """Finds ``secret`` (all its encodings) and, with ``keys``, private key headers."""

    secret: str
    keys: bool = True
    patterns: dict[str, bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.patterns = needles(self.secret)

    def search(self, data: bytes, where: str) -> list[Hit]:
        hits = [Hit(where, f"canary ({name})") for name, n in self.patterns.items() if n in data]
        if self.keys:
            hits += [Hit(where, f"key material ({h.decode()})") for h in KEY_HEADERS if h in data]
        return hits

    def files(
        self,
        roots: Iterable[Path],
        *,
        exclude: Sequence[Path] = (),
        newer_than: float | None = None,
    ) -> list[Hit]:
        hits: list[Hit] = []
        for path in walk(roots, exclude):
            try:
                st = path.stat()
                if st.st_size > MAX_FILE or (newer_than is not None and st.st_mtime < newer_than):
                    continue
                data = path.read_bytes()
            except OSError:
                continue  # gone meanwhile, or a socket
            hits += self.search(data, str(path))
        return hits

    def processes(self, skip: Iterable[int] = ()) -> list[Hit]:
        """Every process's command line and environment (the canary only: keys are not passed so)."""
        skipped = set(skip)
        hits = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in skipped:
                continue
            for part in ("cmdline", "environ"):
                try:
                    data = (entry / part).read_bytes()
                except OSError:
                    continue
                for name, n in self.patterns.items():
                    if n in data:
                        hits.append(
                            Hit(f"/proc/{entry.name}/{part} ({describe(entry)})", f"canary ({name})")
                        )
        return hits

    def database(self, url: str) -> list[Hit]:
        """Every table of the database, dumped with COPY (what pg_dump would write)."""
        hits = []
        with psycopg.connect(url, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT schemaname, tablename FROM pg_tables "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            ).fetchall()
            assert tables, f"no tables in {url}: is this the pipeline's database?"
            for schema, table in tables:
                query = sql.SQL("COPY {}.{} TO STDOUT").format(sql.Identifier(schema), sql.Identifier(table))
                data = bytearray()
                with conn.cursor().copy(query) as copy:
                    for chunk in copy:
                        data += chunk
                hits += self.search(bytes(data), f"table {schema}.{table}")
        return hits

    def journal(self, since: str) -> tuple[bool, list[Hit]]:
        """(journald runs, hits in its entries since ``since``)."""
        if not Path("/run/systemd/journal/socket").exists():
            return False, []
        proc = subprocess.run(
            ["journalctl", "--no-pager", "-o", "export", "--since", since],
            capture_output=True,
            timeout=120,
            check=False,
        )
        return True, self.search(proc.stdout, "the journal")


def rabbitmq_dir() -> Path:
    """The local broker's mnesia directory (message store, quorum logs)."""
    proc = subprocess.run(
        ["rabbitmqctl", "eval", "rabbit_mnesia:dir()."], capture_output=True, text=True, timeout=60
    )
    match = re.search(r'"([^"]+)"', proc.stdout)
    assert proc.returncode == 0 and match, f"rabbitmqctl eval failed: {proc.stdout}{proc.stderr}"
    path = Path(match.group(1))
    assert path.is_dir(), path
    return path


def walk(roots: Iterable[Path], exclude: Sequence[Path] = ()) -> Iterator[Path]:
    skip = [p.resolve() for p in exclude]
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
            here = Path(dirpath).resolve()
            dirnames[:] = [d for d in dirnames if not _excluded(here / d, skip)]
            for name in filenames:
                path = here / name
                if not _excluded(path, skip) and path.is_file() and not path.is_symlink():
                    yield path


def _excluded(path: Path, skip: Sequence[Path]) -> bool:
    return any(path == s or s in path.parents for s in skip)


def describe(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def temp_roots() -> list[Path]:
    """Where temporary files go: /tmp, /var/tmp, /dev/shm and $TMPDIR."""
    roots = {Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")}
    if os.environ.get("TMPDIR"):
        roots.add(Path(os.environ["TMPDIR"]))
    return sorted(r for r in roots if r.is_dir())
