"""Tests of the systemd units (units/) inside a real systemd: the Debian 12 tree that
scripts/nspawn-testbed boots with systemd-nspawn (docs/systemd.md "The testbed").

Tests here are marked ``systemd``; they need root. The testbed's tree is cached by a stamp of its
recipe (about 70 s to build once); the container is booted for the session and powered off at the
end, whatever happens (set SOLSTICE_TESTBED_KEEP=1 to leave it running for a look around).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
TESTBED_SCRIPT = ROOT / "scripts" / "nspawn-testbed"


@dataclass(frozen=True)
class Testbed:
    """The running container; ``run`` executes a command inside it (as root, clean environment)."""

    #: Where the package installs the job template: outside systemd's unit search path, because
    #: systemd refuses a transient unit whose name has a unit file (a template counts for its
    #: instances).
    JOB_TEMPLATE: ClassVar[str] = "/usr/share/solstice/units/solstice-job@.service"
    #: The tests' stand-in programs (tmpfs: gone when the container powers off).
    STANDIN_DIR: ClassVar[str] = "/run/solstice-test"

    leader: int

    wait_until = staticmethod(wait_until)

    def argv(self, *cmd: str) -> list[str]:
        """``cmd`` run inside the container (for run, or a Popen of one's own)."""
        return [
            "nsenter", "-t", str(self.leader), "-a", "--wd", "env", "-i",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "TERM=dumb", *cmd,
        ]  # fmt: skip

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*cmd),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"in the testbed: {shlex.join(cmd)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, check=check, timeout=timeout)

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        self.run(
            "sh",
            "-ec",
            'mkdir -p "$(dirname "$1")"; cat >"$1"; chmod "$2" "$1"',
            "sh",
            path,
            mode,
            input=text,
        )

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.run("systemctl", "show", "-p", ",".join(properties), unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "-u", unit, "-o", "cat", "--no-pager").stdout

    def journal_line(self, unit: str, prefix: str, timeout: float = 20) -> str:
        """The first line of ``unit``'s journal that starts with ``prefix``, without the prefix."""

        def probe() -> str | None:
            for line in self.journal(unit).splitlines():
                if line.startswith(prefix):
                    return line[len(prefix) :]
            return None

        return wait_until(f"{prefix!r} in the journal of {unit}", probe, timeout)

    def processes(self, marker: str) -> list[str]:
        """Processes (anywhere in the container) whose command line contains ``marker``."""
        out = self.run("pgrep", "-a", "-f", marker, check=False).stdout
        return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    """The booted container (built or reused by scripts/nspawn-testbed), powered off at the end."""
    if os.geteuid() != 0:
        pytest.fail("the systemd testbed needs root (systemd-nspawn): run the tests as root")
    try:
        proc = subprocess.run(
            [str(TESTBED_SCRIPT), "start"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert proc.returncode == 0, f"scripts/nspawn-testbed start failed:\n{proc.stdout}\n{proc.stderr}"
        yield Testbed(int(proc.stdout.split()[-1]))
    finally:
        if not os.environ.get("SOLSTICE_TESTBED_KEEP"):
            subprocess.run(
                [str(TESTBED_SCRIPT), "stop"], stdin=subprocess.DEVNULL, capture_output=True, timeout=120
            )


@pytest.fixture(scope="session")
def installed(testbed: Testbed) -> Testbed:
    """The testbed with units/ installed the way the package will: sysusers and tmpfiles applied,
    the daemons' units in /etc/systemd/system, the job template beside (not in) the unit path, a
    secrets key, and the tests' stand-in programs."""
    testbed.sh(
        f"""
        install -D -m644 /src/units/solstice.sysusers /usr/lib/sysusers.d/solstice.conf
        install -D -m644 /src/units/solstice.tmpfiles /usr/lib/tmpfiles.d/solstice.conf
        systemd-sysusers solstice.conf
        systemd-tmpfiles --create solstice.conf
        for unit in /src/units/*.service; do
            case $unit in
            */solstice-job@.service) install -D -m644 $unit {Testbed.JOB_TEMPLATE} ;;
            *) install -m644 $unit /etc/systemd/system/ ;;
            esac
        done
        rm -f /etc/systemd/system/solstice-job@.service
        install -d -m755 /etc/solstice
        [ -s /etc/solstice/secrets.key ] || solstice secrets init --key-file /etc/solstice/secrets.key
        # A poller's registration, which no job may read.
        install -d -m700 -o solstice -g solstice /var/lib/solstice/forgejo-runner
        systemctl daemon-reload
        """
    )
    testbed.write(f"{Testbed.STANDIN_DIR}/job-standin.py", JOB_STANDIN)
    testbed.write(f"{Testbed.STANDIN_DIR}/dispatcher-standin.py", DISPATCHER_STANDIN)
    testbed.write(f"{Testbed.STANDIN_DIR}/libraries.py", LIBRARIES_CHECK)
    return testbed


#: The job unit's main process in the tests: like `solstice job run` it sends READY=1 and WATCHDOG=1
#: from the main process (sdnotify), has children (one started in a session of its own, as a
#: leftover would be) and handles SIGTERM itself (exit 3), leaving its children to systemd. It
#: prints what the sandbox looks like from inside as one "FACTS {json}" line.
JOB_STANDIN = r"""
import grp, hashlib, json, os, pwd, signal, socket, stat, subprocess, sys, time
import sdnotify

mode, job = sys.argv[1], sys.argv[2]
notifier = sdnotify.SystemdNotifier()
runtime = os.environ.get("RUNTIME_DIRECTORY", "")


def attempt(fn):
    try:
        return fn()
    except OSError as exc:
        return type(exc).__name__


def can_write(directory):
    def probe():
        path = os.path.join(directory, ".standin-probe")
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)
        return True
    return attempt(probe)


def facts():
    status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
    creds = os.environ.get("CREDENTIALS_DIRECTORY", "")
    st = os.stat(runtime)
    return {
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "groups": sorted(grp.getgrgid(g).gr_name for g in os.getgroups()),
        "runtime_directory": runtime,
        "runtime_owner": pwd.getpwuid(st.st_uid).pw_name,
        "runtime_mode": oct(stat.S_IMODE(st.st_mode)),
        "write_runtime": can_write(runtime),
        "write_ports": can_write("/run/solstice/ports"),
        "write_debug": can_write("/run/solstice/debug"),
        "write_images": can_write("/var/lib/solstice/images"),
        "write_state": can_write("/var/lib/solstice"),
        "write_etc": can_write("/etc"),
        "write_tmp": can_write("/tmp"),
        "tmp_entries": attempt(lambda: sorted(os.listdir("/tmp"))),
        "list_home": attempt(lambda: os.listdir("/home")),
        "list_root_home": attempt(lambda: os.listdir("/root")),
        "list_runner_state": attempt(lambda: os.listdir("/var/lib/solstice/forgejo-runner")),
        "list_images": attempt(lambda: sorted(os.listdir("/var/lib/solstice/images"))),
        "job_request": attempt(lambda: open(os.path.join(creds, "job-request")).read()),
        "list_requests": attempt(lambda: os.listdir("/run/solstice/requests")),
        "secrets_key_sha256": attempt(
            lambda: hashlib.sha256(open(os.path.join(creds, "secrets-key"), "rb").read()).hexdigest()
        ),
        "pid1_visible": os.path.exists("/proc/1/cmdline"),
        "cpuinfo_visible": os.path.exists("/proc/cpuinfo"),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "cap_bnd": status["CapBnd"].strip(),
        "cap_eff": status["CapEff"].strip(),
        "seccomp": status["Seccomp"].strip(),
        "watchdog_usec": os.environ.get("WATCHDOG_USEC"),
        "env_runtime_dir": os.environ.get("SOLSTICE_PATHS_RUNTIME_DIR"),
        "env_state_dir": os.environ.get("SOLSTICE_PATHS_STATE_DIR"),
    }


def start_qemu():
    image = "/var/lib/solstice/images/debian-12"
    disk = os.path.join(runtime, "overlay.qcow2")
    if os.path.exists(image + "/base.qcow2"):
        backing = ["-b", image + "/base.qcow2", "-F", "qcow2"]
        boot = ["-kernel", image + "/vmlinuz", "-initrd", image + "/initrd.img",
                "-append", "root=/dev/vda console=ttyS0"]
    else:
        backing, boot = [], []
    size = [] if backing else ["64M"]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *backing, disk, *size], check=True)
    qmp = os.path.join(runtime, "qmp.sock")
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-name", "guest-" + job, "-accel", "tcg,thread=multi",
         "-smp", "2", "-m", "512", "-nodefaults", "-display", "none", *boot,
         "-drive", f"file={disk},if=virtio,format=qcow2",
         "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:0-:22", "-device", "virtio-net-pci,netdev=n0",
         "-serial", "file:" + os.path.join(runtime, "console.log"),
         "-qmp", f"unix:{qmp},server=on,wait=off"])
    for _ in range(100):
        if os.path.exists(qmp):
            break
        time.sleep(0.1)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(qmp)
    f = sock.makefile("rw")
    f.readline()
    for command in ("qmp_capabilities", "query-status"):
        f.write(json.dumps({"execute": command}) + "\n")
        f.flush()
        reply = json.loads(f.readline())
    print("QMP " + json.dumps({"qmp": qmp, "status": reply["return"]["status"]}), flush=True)
    return qemu


def on_term(signum, frame):
    print("standin: SIGTERM, exiting with 3", flush=True)
    os._exit(3)


signal.signal(signal.SIGTERM, on_term)
child = "import signal, sys, time\n"
if mode == "stubborn":
    child += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
child += "print('ready', flush=True)\nsys.stdout.close()\ntime.sleep(3600)\n"
leftover = subprocess.Popen(
    [sys.executable, "-c", child, "child-" + job], start_new_session=True, stdout=subprocess.PIPE, text=True
)
assert leftover.stdout.readline() == "ready\n"  # its SIGTERM disposition is set
if mode == "qemu":
    start_qemu()
print("FACTS " + json.dumps(facts()), flush=True)
notifier.notify("READY=1\nSTATUS=stand-in running")
tick = 0
while True:
    notifier.notify("WATCHDOG=1")
    print(f"standin: tick {tick}", flush=True)
    tick += 1
    time.sleep(1)
"""

#: The dispatcher unit's main process in the tests: under the dispatcher's own sandbox it writes
#: the job's request file, starts the job given as a systemd-run argv (JSON file), checks it runs,
#: stops it, and reports.
DISPATCHER_STANDIN = r"""
import json, os, subprocess, sys
import sdnotify

sdnotify.SystemdNotifier().notify("READY=1")
argv, unit, request_file, request = json.load(open(sys.argv[1]))


def run(*cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


report = {"caps": [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")]}
# The hand-off of solstice.dispatch.contract: a root-only file, given to the job as a credential.
fd = os.open(request_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, request.encode())
os.close(fd)
code, _, err = run(*argv)
report["start"] = [code, err]
report["active"] = run("systemctl", "is-active", unit)[1]
code, _, err = run("systemctl", "stop", unit)
report["stop"] = [code, err]
report["after_stop"] = run("systemctl", "is-active", unit)[1]
run("systemctl", "reset-failed", unit)
print(f"DISPATCHER {unit} " + json.dumps(report), flush=True)
"""

#: Solstice's libraries under a unit's sandbox: ctypes callbacks (psycopg's libpq binding) under
#: MemoryDenyWriteExecute=, RSA and JWT (GitHub), SSH keys, the broker and the database when the
#: host runs them (the container shares its network). Prints one "LIBRARIES {json}" line.
LIBRARIES_CHECK = r"""
import ctypes, json, socket, sys

report = {}
report["ctypes_callback"] = ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)()
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
report["jwt"] = jwt.decode(jwt.encode({"a": 1}, key, algorithm="RS256"), key.public_key(), ["RS256"])["a"]
import paramiko
report["ssh_key"] = paramiko.Ed25519Key.from_private_key.__name__ == "from_private_key"
import pycdlib, qemu.qmp, sdnotify, yaml


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


if listening(5432):
    import psycopg
    notices = []
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", connect_timeout=5) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        conn.execute("DO $$BEGIN RAISE NOTICE 'hello'; END$$")
        report["postgres"] = [conn.execute("select 1").fetchone()[0], notices]
if listening(5672):
    import pika
    pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1")).close()
    report["rabbitmq"] = True
print(f"LIBRARIES {sys.argv[1]} " + json.dumps(report), flush=True)
"""
