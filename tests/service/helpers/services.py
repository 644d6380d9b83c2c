"""Private RabbitMQ and PostgreSQL instances for tests that restart them (scripts/chaos,
test_chaos_subset.py): their own ports, data directories and node name, so the shared services
on 5672/5432 are never touched.

    with PrivateRabbit(base, port=5679) as rabbit, PrivatePostgres(base, port=5439) as pg:
        rabbit.url, pg.url("solstice"); rabbit.restart(); pg.restart()

RabbitMQ runs as root with HOME in its directory (its own Erlang cookie), PostgreSQL as the user
postgres (initdb + pg_ctl, trust authentication on 127.0.0.1 only). Both need root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _wait_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while _port_free(port):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} does not listen on 127.0.0.1:{port} after {timeout:.0f} s")
        time.sleep(0.2)


def free_port(low: int, high: int, *, also: int = 0) -> int:
    """A port in [low, high) free on 127.0.0.1 (and ``port + also`` too, when ``also``)."""
    for port in range(low, high):
        if _port_free(port) and (not also or _port_free(port + also)):
            return port
    raise AssertionError(f"no free port in {low}-{high}")


class PrivateRabbit:
    def __init__(self, base: Path, port: int = 5679, name: str = "chaos") -> None:
        self.dir = base / "rabbitmq"
        self.port = port
        self.node = f"{name}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"

    def _env(self) -> dict[str, str]:
        d = self.dir
        return {
            **os.environ,
            "HOME": str(d),
            "RABBITMQ_CONF_ENV_FILE": str(d / "env.conf"),  # not /etc/rabbitmq's NODENAME
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),  # no management port
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.port + 20000),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> PrivateRabbit:
        assert (RABBIT_BIN / "rabbitmq-server").exists(), "apt-get install rabbitmq-server"
        assert _port_free(self.port), f"127.0.0.1:{self.port} is taken: another private broker runs"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "env.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users.guest = true\n"
        )
        subprocess.run(
            [str(RABBIT_BIN / "rabbitmq-server"), "-detached"],
            env=self._env(),
            cwd=self.dir,
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.await_up()
        return self

    def await_up(self, timeout: float = 90) -> None:
        _wait_port(self.port, timeout, f"RabbitMQ {self.node}")
        proc = self.ctl("await_startup", "--timeout", str(int(timeout)))
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def restart(self, down_for: float = 1.0) -> None:
        """The broker application stopped and started again (connections drop, queues persist)."""
        proc = self.ctl("stop_app")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        time.sleep(down_for)
        proc = self.ctl("start_app")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self.await_up()

    def mnesia_dir(self) -> Path:
        return self.dir / "mnesia" / self.node

    def stop(self) -> None:
        self.ctl("stop", timeout=60)
        deadline = time.monotonic() + 30
        while not _port_free(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)

    def __enter__(self) -> PrivateRabbit:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PrivatePostgres:
    def __init__(self, base: Path, port: int = 5439, version: str | None = None) -> None:
        # Its own directory in /tmp: the user postgres must reach it, and test directories are 0700.
        del base
        self.dir = Path("/nonexistent")
        self.port = port
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        assert versions or version, "apt-get install postgresql"
        self.bin = Path(f"/usr/lib/postgresql/{version}/bin") if version else versions[-1].parent

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _as_postgres(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        pw = pwd.getpwnam("postgres")

        def demote() -> None:
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

        return subprocess.run(
            list(argv),
            preexec_fn=demote,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir), "LANG": "C.UTF-8"},
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _ctl(self, action: str, *extra: str) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        proc = self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "server.log"),
            "-o",
            opts,
            "-w",
            action,
            *extra,
        )
        assert proc.returncode == 0, f"pg_ctl {action}: {proc.stdout}{proc.stderr}"

    def start(self) -> PrivatePostgres:
        assert _port_free(self.port), f"127.0.0.1:{self.port} is taken: another private PostgreSQL runs"
        self.dir = Path(tempfile.mkdtemp(prefix="chaos-pg-", dir="/tmp"))
        shutil.chown(self.dir, "postgres", "postgres")
        proc = self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres"
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self._ctl("start")
        return self

    def createdb(self, name: str) -> str:
        proc = self._as_postgres(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), name)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return self.url(name)

    def restart(self) -> None:
        """A fast restart: every connection is dropped, committed data stays."""
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        if (self.dir / "data" / "postmaster.pid").exists():
            self._ctl("stop", "-m", "immediate")
        if self.dir.name.startswith("chaos-pg-"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
