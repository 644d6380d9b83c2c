"""`solstice doctor` against the real RabbitMQ and PostgreSQL: a host that can run jobs passes
(exit 0); bad broker or database credentials, an unmigrated database, a missing secrets key, a
missing image, a forge that does not answer each fail with their fix (exit 1)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo
from store_fixtures import ADMIN_URL, Databases
from store_fixtures import pg_databases as pg_databases  # noqa: F401  (fixture)

from solstice.forges.forgejo import registration
from tests.fakes.forgejo import FakeForgejo

ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get("SOLSTICE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def doctor(config: Path, *extra: str) -> tuple[int, dict[str, tuple[str, str, str]], str]:
    """Exit status, {check: (status, detail, fix)} and the whole output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLSTICE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "solstice", "--config", str(config), "doctor", *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    rows: dict[str, tuple[str, str, str]] = {}
    last = ""
    for line in proc.stdout.splitlines()[1:]:
        fix = re.match(r"^\s+fix: (.*)$", line)
        if fix and last:
            status, detail, _ = rows[last]
            rows[last] = (status, detail, fix.group(1))
            continue
        row = re.match(r"^(\S.*?)\s{2,}(ok|warn|FAIL|unknown)\s{2,}(.*)$", line)
        if row:
            last = row.group(1)
            rows[last] = (row.group(2), row.group(3), "")
    return proc.returncode, rows, proc.stdout + proc.stderr


class Host:
    """A configuration of its own: state and runtime directories, key, image files, database."""

    def __init__(self, tmp: Path, database_url: str) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.key = tmp / "secrets.key"
        self.config = tmp / "solstice.toml"
        self.database_url = database_url
        image = self.state / "images" / "debian-12"
        image.mkdir(parents=True)
        for name in ("base.qcow2", "vmlinuz", "initrd.img"):
            (image / name).write_bytes(b"stand-in")
        # build-test-image writes its stamp last: a built test image counts as verified
        (image / "stamp").write_text("stand-in build\n")
        subprocess.run(
            [sys.executable, "-m", "solstice", "secrets", "init", "--key-file", str(self.key)],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )

    def write(
        self, *, broker: str = AMQP_URL, database: str = "", accel: str = "tcg", extra: str = ""
    ) -> Path:
        self.config.write_text(
            f"""
[vm]
accel = "{accel}"
memory = "256M"
[paths]
state_dir = "{self.state}"
runtime_dir = "{self.tmp / "run"}"
[broker]
url = "{broker}"
[database]
url = "{database or self.database_url}"
[secrets]
key_file = "{self.key}"
[dispatcher]
capacity = 1
memory_overhead = "128M"
"""
            + extra
        )
        return self.config


@pytest.fixture
def host(tmp_path: Path, pg_databases: Databases) -> Iterator[Host]:  # noqa: F811
    yield Host(tmp_path, pg_databases.create_migrated())


def test_a_host_that_can_run_jobs_passes(host: Host) -> None:
    code, rows, out = doctor(host.write())
    assert code == 0, out
    for name in ("accelerator", "qemu", "qemu-img", "rabbitmq", "postgresql", "database schema"):
        assert rows[name][0] == "ok", (name, out)
    assert rows["secrets key"] == ("ok", str(host.key), ""), out
    assert rows["image debian-12"] == ("ok", "built on this host by build-test-image", ""), out
    assert rows["database schema"][1].endswith("up to date"), out
    assert "login accepted" in rows["rabbitmq"][1], out
    assert rows["forges"][0] == "warn" and "register" in rows["forges"][2], out
    assert "nothing blocks jobs" in out


def test_bad_broker_credentials_fail_with_the_fix(host: Host) -> None:
    code, rows, out = doctor(host.write(broker="amqp://guest:not-the-password@127.0.0.1:5672/%2F"))
    assert code == 1, out
    status, detail, fix = rows["rabbitmq"]
    assert status == "FAIL" and "refused the login" in detail, out
    assert "[broker] url" in fix, out
    assert "not-the-password" not in out  # never the password
    assert re.search(r"1 problem\(s\) block jobs: rabbitmq$", out, re.M), out


def test_an_unreachable_broker_fails(host: Host) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, rows, out = doctor(host.write(broker=f"amqp://guest:guest@127.0.0.1:{port}/%2F"))
    assert code == 1, out
    assert rows["rabbitmq"][0] == "FAIL" and "not reachable" in rows["rabbitmq"][1], out


def test_bad_database_credentials_and_an_unmigrated_database_fail(
    host: Host,
    pg_databases: Databases,  # noqa: F811
) -> None:
    wrong_role = make_conninfo(ADMIN_URL, user="solstice_no_such_role", dbname="postgres")
    code, rows, out = doctor(host.write(database=wrong_role))
    assert code == 1, out
    assert rows["postgresql"][0] == "FAIL" and "solstice_no_such_role" in rows["postgresql"][1], out
    assert "[database] url" in rows["postgresql"][2], out
    assert rows["database schema"][0] == "unknown", out

    code, rows, out = doctor(host.write(database=pg_databases.create()))
    assert code == 1, out
    assert rows["postgresql"][0] == "ok", out
    assert rows["database schema"][0] == "FAIL" and "pending" in rows["database schema"][1], out
    assert rows["database schema"][2] == "solstice db migrate", out


def test_a_missing_key_and_a_missing_image_fail(host: Host) -> None:
    host.key.unlink()
    ghost = """
[images.ghost]
path = "ghost.qcow2"
"""
    code, rows, out = doctor(host.write(extra=ghost))
    assert code == 1, out
    status, detail, fix = rows["secrets key"]
    assert status == "FAIL" and "does not exist" in detail and "solstice secrets init" in fix, out
    status, detail, fix = rows["image ghost"]
    assert status == "FAIL" and str(host.state / "images" / "ghost.qcow2") in detail, out
    assert fix, out
    assert rows["image debian-12"][0] == "ok", out
    assert re.search(r"2 problem\(s\) block jobs: secrets key, image ghost$", out, re.M), out


def test_kvm_is_checked_for_the_job_user(host: Host) -> None:
    code, rows, out = doctor(host.write(accel="kvm"), "--user", "solstice_no_such_user")
    assert code == 1, out
    status, detail, fix = rows["accelerator"]
    assert status == "FAIL" and "no user 'solstice_no_such_user'" in detail and "sysusers" in fix, out

    code, rows, out = doctor(host.write(accel="kvm"), "--user", "root")
    if Path("/dev/kvm").exists():
        assert rows["accelerator"] == ("ok", "kvm: /dev/kvm usable by user root", ""), out
    else:
        assert rows["accelerator"][0] == "FAIL" and "/dev/kvm does not exist" in rows["accelerator"][1]
        assert 'accel = "tcg"' in rows["accelerator"][2], out


def test_forge_registrations_are_checked_for_an_answer(host: Host) -> None:
    path = registration.default_path(host.state)
    with FakeForgejo() as forge:
        registration.save(
            path, registration.Registration(1, "u-1", "runner-a", "t", forge.url, ("debian-12",))
        )
        code, rows, out = doctor(host.write())
        assert code == 0, out
        assert rows["forgejo runner"][0] == "ok" and "runner-a" in rows["forgejo runner"][1], out
        assert "forges" not in rows, out
    code, rows, out = doctor(host.write())  # the forge is gone
    assert code == 1, out
    assert rows["forgejo runner"][0] == "FAIL" and "does not answer" in rows["forgejo runner"][1], out


def test_the_warm_pool_is_checked_against_capacity_and_its_memory(host: Host) -> None:
    code, rows, out = doctor(host.write())
    assert "pool" not in rows, out  # no pool configured: no row
    pool = '[pool]\nmemory = "1G"\n[pool.debian-12]\nsize = 1\n[pool.nowhere]\nsize = 2\n'
    code, rows, out = doctor(host.write(extra=pool.replace("capacity = 1", "")))
    assert rows["pool nowhere"][0] == "warn" and "not a label this host serves" in rows["pool nowhere"][1], (
        out
    )
    # capacity 1 and a pool of 1: it takes the only place while no job runs
    assert rows["pool"][0] == "warn" and "capacity 1" in rows["pool"][1], out
    code, rows, out = doctor(host.write(extra=pool.replace('memory = "1G"', 'memory = "100M"')))
    assert rows["pool"][0] == "warn" and "cannot fill" in rows["pool"][1], out
    # The systemd spawner's keeper units need runtime_dir under /run (their RuntimeDirectory=).
    assert rows["pool units"][0] == "FAIL" and "under /run" in rows["pool units"][1], out
    assert code == 1, out
