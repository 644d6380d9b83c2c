"""The packages, built by scripts/build-packages, and the .deb installed on a clean Debian 12 with a
real systemd (docs/install.md):

- the builds: a wheel and an sdist of one version, a lintian-clean .deb, an RPM whose files and
  requirements are what the .deb has; the wheel alone, with no extras, runs every command;
- a fresh Debian 12 tree (``scripts/nspawn-testbed --bare``: systemd, dbus, apt's lists; booted
  ``--ephemeral``, so each run starts clean) where ``apt-get install ./solstice-ci_*.deb`` resolves
  the dependencies from Debian's archive; ``solstice doctor`` names what is missing, then passes
  once the host is configured as docs/install.md says; the dispatcher is enabled with systemctl;
  a job submitted with ``solstice submit`` runs in a real guest as ``solstice-job@<uuid>.service``,
  which systemctl status and journalctl show; an upgrade to a rebuilt package (a newer version)
  while the job runs restarts the dispatcher and leaves the job running to success; ``apt-get
  purge``, with a second job running, leaves no unit, process of user solstice or QEMU behind.

The container shares the host's network: the host's RabbitMQ and PostgreSQL serve it (with names of
this run's own, removed at the end), and the package is installed without its Recommends
(rabbitmq-server, postgresql), which would contend for the host's ports. The tree is cached by
its recipe's stamp, the .debs apt downloads in its .apt-cache: a second run downloads nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_pipeline import ADMIN_URL, AMQP_URL, answers, delete_broker_objects, retrying

from solstice import __version__
from solstice.cli.main import VERBS
from solstice.config import BrokerConfig
from tests.service.store_fixtures import Databases
from tests.systemd import conftest as testbeds
from tests.testimage import build_test_image
from tests.waiting import wait_until

pytestmark = pytest.mark.systemd

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "install-test"  # inside the checkout: the container sees it under /src
TESTBED_SCRIPT = ROOT / "scripts" / "nspawn-testbed"
TESTBED_DIR = Path(os.environ.get("SOLSTICE_INSTALL_TESTBED_DIR", "/var/lib/solstice/install-testbed"))
UPGRADE_SUFFIX = "+upgrade1"
DISPATCHER = "solstice-dispatcher.service"
UNITS = ("solstice-dispatcher.service", "solstice-forgejo-runner.service", "solstice-github-runner.service")
#: Installed by both packages (the units' directory differs: below).
COMMON_FILES = (
    "/usr/share/solstice/units/solstice-job@.service",
    "/usr/lib/sysusers.d/solstice.conf",
    "/usr/lib/tmpfiles.d/solstice.conf",
    "/etc/solstice/solstice.toml",
    "/usr/share/bash-completion/completions/solstice",
    "/usr/bin/solstice",
    "/usr/lib/solstice/vendor/qemu/qmp/__init__.py",
    "/usr/share/doc/solstice-ci/install.md",
)
BOOT_WAIT = 400.0  # a TCG boot: 40 s on an idle machine, much longer on a busy one

WORKFLOW = """
name: install
on: push
jobs:
  hello:
    runs-on: debian-12
    timeout-minutes: 15
    steps:
      - name: Long enough for an upgrade
        run: |
          echo "step started on $(uname -s)"
          sleep SLEEP
          echo "step ended"
"""


@dataclass(frozen=True)
class Packages:
    version: str
    deb: Path
    rpm: Path
    wheel: Path
    sdist: Path
    upgrade_deb: Path
    log: str


def build_packages(out: Path, *extra: str) -> str:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-packages"), "--output", str(out), *extra],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"scripts/build-packages failed:\n{proc.stdout}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, (pattern, sorted(p.name for p in directory.iterdir()))
    return found[0]


@pytest.fixture(scope="module")
def packages() -> Packages:
    log = build_packages(BUILD / "v1")
    build_packages(BUILD / "v2", "--version-suffix", UPGRADE_SUFFIX, "--no-lintian")
    v1 = BUILD / "v1"
    return Packages(
        version=__version__,
        deb=one(v1, "solstice-ci_*_all.deb"),
        rpm=one(v1, "solstice-ci-*.noarch.rpm"),
        wheel=one(v1, "solstice_ci-*.whl"),
        sdist=one(v1, "*.tar.gz"),
        upgrade_deb=one(BUILD / "v2", "solstice-ci_*_all.deb"),
        log=log,
    )


def out(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


# --- the builds -------------------------------------------------------------------------------------


def test_the_packages_have_one_version_and_the_deb_is_lintian_clean(packages: Packages) -> None:
    v = packages.version
    assert packages.deb.name == f"solstice-ci_{v}_all.deb"
    assert packages.rpm.name == f"solstice-ci-{v}-1.noarch.rpm"
    assert packages.wheel.name == f"solstice_ci-{v}-py3-none-any.whl"
    assert packages.sdist.name.endswith(f"-{v}.tar.gz")
    assert packages.upgrade_deb.name == f"solstice-ci_{v}{UPGRADE_SUFFIX}_all.deb"
    assert out("dpkg-deb", "-f", str(packages.deb), "Version").strip() == v
    # build-packages runs lintian --fail-on error,warning; nothing but the documented overrides.
    assert "build-packages: lintian" in packages.log
    assert not re.search(r"^[EW]: ", packages.log, re.M), packages.log


def test_the_deb_has_the_units_user_config_completion_and_man_page(packages: Packages) -> None:
    files = {
        line.split()[-1].removeprefix(".") for line in out("dpkg-deb", "-c", str(packages.deb)).splitlines()
    }
    for path in (
        *COMMON_FILES,
        *(f"/lib/systemd/system/{unit}" for unit in UNITS),
        "/usr/share/man/man1/solstice.1.gz",
        "/usr/lib/python3/dist-packages/solstice/cli/main.py",
        "/usr/share/doc/solstice-ci/systemd.md",  # the units' Documentation=, uncompressed
    ):
        assert path in files, path
    assert not [f for f in files if "/qemu/" in f and "dist-packages" in f]  # never system-wide
    assert "/lib/systemd/system/solstice-job@.service" not in files  # transient units only
    depends = out("dpkg-deb", "-f", str(packages.deb), "Depends")
    for dep in (
        "python3-pika",
        "python3-psycopg",
        "python3-paramiko",
        "qemu-system-x86",
        "qemu-utils",
        "ovmf",
        "git",
    ):
        assert dep in depends, depends
    assert "qmp" not in depends
    recommends = out("dpkg-deb", "-f", str(packages.deb), "Recommends")
    assert "rabbitmq-server" in recommends and "postgresql" in recommends, recommends

    control = Path(out("mktemp", "-d").strip())
    try:
        subprocess.run(["dpkg-deb", "-e", str(packages.deb), str(control)], check=True)
        assert (control / "conffiles").read_text().split() == ["/etc/solstice/solstice.toml"]
        postinst = (control / "postinst").read_text()
        assert "solstice doctor" in postinst
        assert "systemd-sysusers" in postinst and "solstice.conf" in postinst
        # The units are installed disabled; nothing of a job is restarted by an upgrade.
        # (debhelper's --no-enable: enabled again on an upgrade only if the admin had enabled it.)
        for unit in UNITS:
            assert f"if deb-systemd-helper debian-installed '{unit}'; then" in postinst, unit
        for script in ("postinst", "prerm", "postrm", "preinst"):
            text = (control / script).read_text() if (control / script).exists() else ""
            assert not re.search(r"(restart|try-restart)\S*\s+\S*solstice-job", text), script
        prerm = (control / "prerm").read_text()
        assert re.search(r'if \[ "\$1" = remove \].*\n\s+systemctl stop .solstice-job@\*\.service.', prerm)
    finally:
        shutil.rmtree(control)


def test_the_rpm_has_the_same_files_units_user_and_config(packages: Packages) -> None:
    files = set(out("rpm", "-qpl", str(packages.rpm)).split())
    for path in (
        *COMMON_FILES,
        *(f"/usr/lib/systemd/system/{unit}" for unit in UNITS),
        "/usr/share/man/man1/solstice.1",
        "/usr/lib/solstice/vendor/solstice/cli/main.py",
    ):
        assert path in files, path
    assert out("rpm", "-qpc", str(packages.rpm)).split() == ["/etc/solstice/solstice.toml"]
    requires = out("rpm", "-qpR", str(packages.rpm))
    for dep in (
        "python3-pika >= 1.2",
        "python3-psycopg3 >= 3.1.7",
        "qemu-system-x86",
        "qemu-img",
        "edk2-ovmf",
        "git",
        "systemd",
    ):
        assert re.search(rf"^{re.escape(dep)}$", requires, re.M), requires
    scripts = out("rpm", "-qp", "--scripts", str(packages.rpm))
    assert "systemd-sysusers solstice.conf" in scripts and "solstice doctor" in scripts, scripts
    assert "'solstice-job@*.service'" in scripts.split("preuninstall")[1].split("postuninstall")[0], scripts
    assert "solstice-job" not in scripts.split("postuninstall")[1], scripts  # an upgrade restarts no job
    assert out("rpm", "-qp", "--qf", "%{VERSION}", str(packages.rpm)) == packages.version


def test_the_wheel_alone_runs_every_command(packages: Packages, tmp_path: Path) -> None:
    """pip install of the wheel with no extras, in a venv that sees no system packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(packages.wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    solstice = str(venv / "bin" / "solstice")
    assert out(solstice, "--version").strip() == f"solstice {packages.version}"
    for verb in ("", *VERBS):
        proc = subprocess.run(
            [solstice, *([verb] if verb else []), "--help"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0 and "usage: solstice" in proc.stdout, (verb, proc.stderr)


# --- installed on a clean Debian 12 ------------------------------------------------------------------


@dataclass
class Machine:
    testbed: testbeds.Testbed
    packages: Packages
    token: str
    broker: BrokerConfig
    database_url: str
    submissions: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)

    def apt(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """apt-get in the container, non-interactive; retried after an update when the cached lists
        name .debs the mirror no longer has."""
        argv = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q", *args]
        proc = self.testbed.run(*argv, check=False, timeout=timeout)
        if proc.returncode != 0 and "Failed to fetch" in proc.stdout + proc.stderr:
            self.testbed.run("apt-get", "update", "-q", timeout=300)
            proc = self.testbed.run(*argv, check=False, timeout=timeout)
        assert proc.returncode == 0, (
            f"apt-get {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
        return proc

    def doctor(self) -> tuple[int, str]:
        proc = self.testbed.run("solstice", "doctor", check=False, timeout=120)
        return proc.returncode, proc.stdout + proc.stderr

    def submit(self, name: str, sleep: int) -> tuple[subprocess.Popen[bytes], Path]:
        """`solstice submit` inside the container (its /etc/solstice/solstice.toml), output to a file
        on the host."""
        path = f"/srv/install-test/{name}.yml"
        self.testbed.write(path, WORKFLOW.replace("SLEEP", str(sleep)))
        self.testbed.run("chmod", "755", "/srv/install-test")
        output = BUILD / f"{name}.out"
        with output.open("wb") as f:
            proc = subprocess.Popen(
                self.testbed.argv("solstice", "submit", path),
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        self.submissions.append(proc)
        return proc, output

    def job_unit(self, output: Path, proc: subprocess.Popen[bytes]) -> str:
        def probe() -> str | None:
            match = re.search(r"job ([0-9a-f-]{36})", output.read_text(errors="replace"))
            if match is None and proc.poll() is not None:
                raise AssertionError(f"solstice submit exited {proc.returncode}:\n{output.read_text()}")
            return f"solstice-job@{match.group(1)}.service" if match else None

        unit = wait_until("solstice submit to publish its job", probe, 60)
        wait_until(
            f"{unit} to be started",
            lambda: self.testbed.show(unit, "ActiveState")["ActiveState"] in ("activating", "active"),
            60,
        )
        return unit

    def processes(self, pattern: str) -> list[str]:
        return [p for p in self.testbed.processes(pattern) if "pgrep" not in p]


def config_text(token: str, broker: BrokerConfig, database_url: str) -> str:
    lines = [
        "# written by tests/systemd/test_install.py, as docs/install.md says",
        "[vm]",
        'accel = "tcg"',  # KVM hangs guests on the build machines (TESTBED.md)
        'memory = "1G"',
        "boot_timeout = 400",
        "[broker]",
        *(f'{key} = "{getattr(broker, key)}"' for key in broker.__dataclass_fields__),
        "[database]",
        f'url = "{database_url}"',
        "[dispatcher]",
        f'host = "{token}"',
        'labels = ["debian-12"]',
        "capacity = 2",
        'memory_overhead = "384M"',
        "runtime_margin = 60",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def machine(packages: Packages) -> Iterator[Machine]:
    if os.geteuid() != 0:
        pytest.fail("the install test needs root (systemd-nspawn): run the tests as root")
    if not answers(AMQP_URL, 5672):
        pytest.fail(f"no RabbitMQ answers at {AMQP_URL} (start it: scripts/services)")
    if not answers(ADMIN_URL, 5432):
        pytest.fail(f"no PostgreSQL answers at {ADMIN_URL} (start it: scripts/services)")
    build_test_image()
    testbed_argv = [str(TESTBED_SCRIPT), "--bare", "--ephemeral", "--dir", str(TESTBED_DIR)]
    token = f"solstice-install-{secrets.token_hex(4)}"
    with contextlib.ExitStack() as cleanup:
        proc = subprocess.run(
            [*testbed_argv, "start"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800
        )
        cleanup.callback(
            subprocess.run,
            [*testbed_argv, "stop"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"scripts/nspawn-testbed start failed:\n{proc.stdout}\n{proc.stderr}"
        testbed = testbeds.Testbed(int(proc.stdout.split()[-1]))

        databases = Databases()
        database_url = databases.create()
        cleanup.callback(retrying, databases.drop_all)
        broker = BrokerConfig.named(token, url=AMQP_URL, queue_type="quorum")
        cleanup.callback(retrying, lambda: delete_broker_objects(broker, token))
        machine = Machine(testbed, packages, token, broker, database_url)

        def kill_submissions() -> None:
            for proc in machine.submissions:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)

        cleanup.callback(kill_submissions)
        yield machine


def test_apt_installs_the_package_with_its_dependencies_from_debians_archive(machine: Machine) -> None:
    testbed = machine.testbed
    assert testbed.run("dpkg-query", "-W", "python3-pika", check=False).returncode != 0  # a clean tree
    deb = f"/src/{machine.packages.deb.relative_to(ROOT)}"
    proc = machine.apt("install", "--no-install-recommends", deb)
    assert "solstice-ci: check this host with 'solstice doctor'" in proc.stdout, proc.stdout[-3000:]
    for package in ("python3-pika", "python3-psycopg", "qemu-system-x86", "ovmf", "git"):
        status = testbed.run("dpkg-query", "-W", "-f=${Status}", package).stdout
        assert status == "install ok installed", (package, status)
    assert testbed.run("solstice", "--version").stdout.strip() == f"solstice {machine.packages.version}"
    # The user of the jobs, in group kvm; the configuration readable by its group only.
    assert "kvm" in testbed.run("id", "-nG", "solstice").stdout.split()
    assert testbed.run("stat", "-c", "%U:%G %a", "/etc/solstice/solstice.toml").stdout.split() == [
        "root:solstice",
        "640",
    ]
    assert testbed.run("stat", "-c", "%U:%G %a", "/run/solstice/ports").stdout.split() == [
        "solstice:solstice",
        "700",
    ]
    for unit in UNITS:
        shown = testbed.show(unit, "LoadState", "UnitFileState", "ActiveState")
        assert shown == {"LoadState": "loaded", "UnitFileState": "disabled", "ActiveState": "inactive"}, (
            unit,
            shown,
        )
    # qemu.qmp is the package's own: not importable by the system's Python.
    assert testbed.run("python3", "-c", "import qemu.qmp", check=False).returncode != 0
    completion = testbed.run(
        "bash", "-c", ". /usr/share/bash-completion/completions/solstice; complete -p solstice"
    ).stdout
    assert "_solstice" in completion


def test_doctor_names_what_is_missing_and_passes_once_configured(machine: Machine) -> None:
    testbed = machine.testbed
    code, text = machine.doctor()
    assert code == 1, text
    assert re.search(r"^secrets key\s+FAIL\s", text, re.M), text
    assert "fix: solstice secrets init" in text, text

    testbed.write(
        "/etc/solstice/solstice.toml",
        config_text(machine.token, machine.broker, machine.database_url),
        "0640",
    )
    testbed.run("chgrp", "solstice", "/etc/solstice/solstice.toml")
    testbed.run("solstice", "secrets", "init")
    code, text = machine.doctor()
    assert code == 1 and re.search(r"^database schema\s+FAIL\s.*pending", text, re.M), text
    assert "fix: solstice db migrate" in text
    testbed.run("solstice", "db", "migrate")
    code, text = machine.doctor()
    assert code == 0, text
    assert re.search(r"^accelerator\s+ok\s+tcg", text, re.M), text
    assert re.search(r"^image debian-12\s+ok\s", text, re.M), text
    assert "nothing blocks jobs" in text


def test_a_submitted_job_runs_as_its_unit_and_an_upgrade_leaves_it_running(machine: Machine) -> None:
    testbed = machine.testbed
    testbed.run("systemctl", "enable", "--now", DISPATCHER, timeout=120)
    assert testbed.show(DISPATCHER, "ActiveState")["ActiveState"] == "active"
    before = testbed.show(DISPATCHER, "InvocationID")["InvocationID"]

    proc, output = machine.submit("upgrade", sleep=50)
    unit = machine.job_unit(output, proc)
    wait_until(
        "the step to start",
        lambda: "step started on Linux" in testbed.journal(unit),
        BOOT_WAIT,
    )
    status = testbed.run("systemctl", "status", "--no-pager", "--full", "--lines=0", unit).stdout
    assert "Active: active (running)" in status and "/usr/bin/solstice job run" in status, status
    assert "qemu-system-x86_64" in status, status
    job_invocation = testbed.show(unit, "InvocationID")["InvocationID"]

    upgrade = f"/src/{machine.packages.upgrade_deb.relative_to(ROOT)}"
    machine.apt("install", "--no-install-recommends", upgrade)
    assert (
        testbed.run("solstice", "--version").stdout.strip()
        == f"solstice {machine.packages.version}{UPGRADE_SUFFIX}"
    )
    # The dispatcher was restarted onto the new code; the job, a unit of its own, was not touched.
    after = testbed.show(DISPATCHER, "ActiveState", "InvocationID")
    assert after["ActiveState"] == "active" and after["InvocationID"] != before, after
    shown = testbed.show(unit, "ActiveState", "InvocationID")
    assert shown == {"ActiveState": "active", "InvocationID": job_invocation}, shown
    assert "step ended" not in testbed.journal(unit)  # the upgrade happened mid-step

    assert proc.wait(timeout=BOOT_WAIT) == 0, output.read_text()
    text = output.read_text()
    assert "step started on Linux" in text and "step ended" in text and "■ success" in text, text

    def finished() -> str | None:
        journal = testbed.journal(unit)
        return journal if "■ success" in journal else None

    journal = wait_until("the job's end in its journal", finished, 30)
    assert "step ended" in journal, journal

    def status() -> str:
        return testbed.run(
            "solstice", "status", unit.removeprefix("solstice-job@").removesuffix(".service")
        ).stdout

    # The job reported its end itself (submit saw it); the dispatcher records it once it has seen
    # the unit end, on one of its next rounds.
    with contextlib.suppress(AssertionError):
        wait_until("the dispatcher to record the end", lambda: "succeeded" in status(), 30)
    shown_status = status()
    explain = (
        shown_status
        + testbed.run("ls", "-la", "/run/solstice/requests", check=False).stdout
        + "\n--- dispatcher:\n"
        + "\n".join(testbed.journal(DISPATCHER).splitlines()[-40:])
        + "\n--- job:\n"
        + "\n".join(journal.splitlines()[-15:])
    )
    assert re.search(r"^state:\s+succeeded$", shown_status, re.M), explain


def test_purge_leaves_no_unit_process_or_qemu_behind(machine: Machine) -> None:
    testbed = machine.testbed
    proc, output = machine.submit("purged", sleep=600)
    unit = machine.job_unit(output, proc)
    wait_until("QEMU to run", lambda: machine.processes("qemu-system-x86_64"), 60)
    testbed.run("mkdir", "-p", "/var/lib/solstice/forgejo-runner")  # a poller's state, for the purge

    machine.apt("purge", "solstice-ci", timeout=300)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=60)
    wait_until("no QEMU", lambda: not machine.processes("qemu-system"), 30)
    assert not testbed.run("pgrep", "-u", "solstice", "-a", check=False).stdout.strip()
    units = testbed.run("systemctl", "list-units", "--all", "--plain", "--no-legend", "solstice*").stdout
    assert units.strip() == "", units
    assert testbed.show(unit, "LoadState")["LoadState"] == "not-found"
    for unit_file in UNITS:
        assert testbed.show(unit_file, "LoadState")["LoadState"] == "not-found", unit_file
    for path in (
        "/etc/solstice",
        "/var/lib/solstice/forgejo-runner",
        "/usr/bin/solstice",
        "/usr/lib/solstice",
        "/run/solstice",
    ):
        assert testbed.run("test", "-e", path, check=False).returncode == 1, path
    # What a purge keeps on purpose: the images (the operator's) and the system user (Debian's rule).
    assert testbed.run("test", "-d", "/var/lib/solstice/images/debian-12").returncode == 0
    assert testbed.run("id", "solstice", check=False).returncode == 0
    status = testbed.run("dpkg-query", "-W", "-f=${Status}", "solstice-ci", check=False).stdout
    assert "ok installed" not in status, status
