"""The units in units/, run by a real systemd in the nspawn testbed (docs/systemd.md).

Resource limits are read back, not provoked: systemd-nspawn on these hosts mounts the cgroup v1
controllers read-only, so MemoryMax=/CPUQuota= are accepted but not enforced there (TESTBED.md).
Deadlines (RuntimeMaxSec=), kills and stops are real.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from solstice.dispatch.systemd import TemplateError, transient_properties

if TYPE_CHECKING:
    from conftest import Testbed

pytestmark = pytest.mark.systemd

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "units"
JOB_TEMPLATE = UNITS / "solstice-job@.service"
DAEMONS = (
    "solstice-dispatcher.service",
    "solstice-forgejo-runner.service",
    "solstice-github-runner.service",
)


#: Upper bounds for `systemd-analyze security` (systemd 252, Debian 12): today's figures, recorded in
#: security-baseline.json (also checked offline by tests/unit/test_unit_exposure.py; explained in
#: docs/security.md). A change that loosens a unit's sandbox must raise them on purpose.
_BASELINE = json.loads((Path(__file__).parent / "security-baseline.json").read_text())
MAX_EXPOSURE = {name: float(unit["overall"]) for name, unit in _BASELINE["units"].items()}

LIMITS = {"MemoryMax": "1536M", "CPUQuota": "150%", "TasksMax": "300", "RuntimeMaxSec": "600"}

_EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)")


def new_job_id() -> str:
    return str(uuid.uuid4())


def exposure(output: str) -> float:
    match = _EXPOSURE.search(output)
    assert match, f"no 'Overall exposure level' in:\n{output}"
    return float(match.group(2))


# --- The job unit as the dispatcher starts it (its own template code, solstice.dispatch.systemd) ----


def job_unit_name(job_id: str) -> str:
    return f"solstice-job@{job_id}.service"


def systemd_run_argv(
    template: str,
    job_id: str,
    limits: Mapping[str, str],
    command: Sequence[str] | None = None,
) -> list[str]:
    """The ``systemd-run`` call that starts job ``job_id``: the template's settings, then the job's
    limits (later assignments win), then the template's ExecStart (or ``command``, for stand-ins).

    Without ``--no-block`` it returns once the job process has sent READY=1, non-zero when the unit
    could not start (bad credential, unknown user, exec failure) or the name is already taken."""
    properties, exec_start = transient_properties(template, job_id)
    properties += [f"{key}={value}" for key, value in limits.items()]
    return [
        "systemd-run",
        "--quiet",
        f"--unit={job_unit_name(job_id)}",
        *(f"--property={p}" for p in properties),
        "--",
        *(command if command is not None else exec_start),
    ]


@dataclass
class Job:
    testbed: Testbed
    job_id: str

    @property
    def unit(self) -> str:
        return job_unit_name(self.job_id)

    def facts(self) -> dict[str, object]:
        facts: dict[str, object] = json.loads(self.testbed.journal_line(self.unit, "FACTS "))
        return facts

    def gone(self) -> bool:
        """The unit is no longer active and not one of its processes is left."""
        state = self.testbed.show(self.unit, "ActiveState")["ActiveState"]
        return state in ("inactive", "failed") and not self.testbed.processes(self.job_id)


def start_standin_job(
    testbed: Testbed, job_id: str, mode: str, limits: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Start ``job_id`` exactly as the dispatcher would, with the stand-in as its main process
    (``mode``: sleep, stubborn (a child ignores SIGTERM) or qemu (a real TCG guest))."""
    argv = systemd_run_argv(
        JOB_TEMPLATE.read_text(),
        job_id,
        limits,
        ["/usr/bin/python3", f"{testbed.STANDIN_DIR}/job-standin.py", mode, job_id],
    )
    return testbed.run(*argv, check=False, timeout=90)


@pytest.fixture
def job(installed: Testbed) -> Iterator[Job]:
    """A running stand-in job started like the dispatcher does; reset afterwards."""
    job = Job(installed, new_job_id())
    proc = start_standin_job(installed, job.job_id, "sleep", LIMITS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield job
    installed.run("systemctl", "stop", job.unit, check=False)
    installed.run("systemctl", "reset-failed", job.unit, check=False)


# --- The files ----------------------------------------------------------------------------------------


def test_units_directory_has_the_units_and_the_sandbox() -> None:
    names = sorted(p.name for p in UNITS.iterdir())
    assert names == sorted([*DAEMONS, "solstice-job@.service", "solstice.sysusers", "solstice.tmpfiles"])
    for name in [*DAEMONS, "solstice-job@.service"]:
        text = (UNITS / name).read_text()
        for setting in (
            "Type=notify",
            "NotifyAccess=main",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=\n",
        ):
            assert setting in text, f"{name} lacks {setting.strip()}"
        assert re.search(r"^WatchdogSec=\d+s$", text, re.M), f"{name} lacks WatchdogSec="
    job = JOB_TEMPLATE.read_text()
    for setting in (
        "ExecStart=/usr/bin/solstice job run %i",
        "KillMode=control-group",
        "TimeoutStopSec=15s",
        "RuntimeDirectory=solstice/jobs/%i",
        "User=solstice",
        "SupplementaryGroups=kvm",
        "DeviceAllow=/dev/kvm rw",
        "LoadCredential=secrets-key:/etc/solstice/secrets.key",
    ):
        assert f"\n{setting}\n" in job, f"the job template lacks {setting}"
    assert "[Install]" not in job  # never enabled, never installed into the unit path
    # The longest unix socket path a job makes must fit sockaddr_un (108 bytes with the NUL).
    assert len(f"/run/solstice/jobs/{new_job_id()}/qmp.sock") < 100


def test_the_template_renders_to_transient_properties() -> None:
    job_id = new_job_id()
    properties, command = transient_properties(JOB_TEMPLATE.read_text(), job_id)
    assert command == ["/usr/bin/solstice", "job", "run", job_id]
    assert f"RuntimeDirectory=solstice/jobs/{job_id}" in properties
    assert f"Description=Solstice CI job {job_id}" in properties
    assert not [p for p in properties if "%" in p]
    argv = systemd_run_argv(JOB_TEMPLATE.read_text(), job_id, {"RuntimeMaxSec": "3600"})
    assert argv[:3] == ["systemd-run", "--quiet", f"--unit=solstice-job@{job_id}.service"]
    assert argv[-6:] == ["--property=RuntimeMaxSec=3600", "--", "/usr/bin/solstice", "job", "run", job_id]
    for bad in ("[Service]\nExecStart=/bin/true %n\n", "[Install]\nWantedBy=x\n", "[Service]\nUser=a\n"):
        with pytest.raises(TemplateError):
            transient_properties(bad, job_id)


# --- systemd-analyze ----------------------------------------------------------------------------------


def test_sysusers_and_tmpfiles_apply(installed: Testbed) -> None:
    groups = installed.run("id", "-nG", "solstice").stdout.split()
    assert groups[0] == "solstice" and "kvm" in groups
    assert installed.run("stat", "-c", "%U %G %a", "/run/solstice/ports").stdout.split() == [
        "solstice",
        "solstice",
        "700",
    ]
    assert installed.run("stat", "-c", "%U %G %a", "/run/solstice/debug").stdout.split() == [
        "solstice",
        "solstice",
        "755",
    ]
    assert installed.run("stat", "-c", "%U %a", "/run/solstice/jobs").stdout.split() == ["root", "755"]
    assert installed.run("stat", "-c", "%U %a", "/run/solstice/requests").stdout.split() == ["root", "700"]


def test_solstice_runs_in_the_testbed(installed: Testbed) -> None:
    """/usr/bin/solstice there is this checkout (/src) on Debian's python3-* libraries."""
    out = installed.run("runuser", "-u", "solstice", "--", "solstice", "--version").stdout
    assert out.startswith("solstice "), out
    where = installed.run(
        "/opt/solstice/bin/python3", "-c", "import qemu.qmp, yaml; print(yaml.__file__)"
    ).stdout
    assert where.startswith("/usr/lib/python3/dist-packages/"), where


def test_systemd_analyze_verify_passes_on_every_unit(installed: Testbed) -> None:
    paths = [f"/etc/systemd/system/{name}" for name in DAEMONS] + [installed.JOB_TEMPLATE]
    for path in paths:
        proc = installed.run("systemd-analyze", "verify", path, check=False)
        assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), (
            f"systemd-analyze verify {path}:\n{proc.stdout}{proc.stderr}"
        )


def test_systemd_analyze_security_exposure(installed: Testbed, job: Job) -> None:
    measured: dict[str, float] = {}
    for name in DAEMONS:
        measured[name] = exposure(installed.run("systemd-analyze", "security", "--no-pager", name).stdout)
    # The job: the live transient unit the dispatcher makes, and the template file offline.
    live = exposure(installed.run("systemd-analyze", "security", "--no-pager", job.unit).stdout)
    offline = exposure(
        installed.run(
            "systemd-analyze", "security", "--no-pager", "--offline=yes", installed.JOB_TEMPLATE
        ).stdout
    )
    measured["solstice-job@.service"] = max(live, offline)
    print("exposure:", json.dumps({**measured, "job (live)": live, "job (offline)": offline}))
    for name, value in measured.items():
        assert value <= MAX_EXPOSURE[name], f"{name}: exposure {value} > {MAX_EXPOSURE[name]}"


# --- A job unit, started the way the dispatcher starts it ----------------------------------------------


def test_job_unit_status_properties_journal_and_sandbox(installed: Testbed, job: Job) -> None:
    status = installed.run("systemctl", "status", "--no-pager", "--lines=50", job.unit).stdout
    assert f"{job.unit} - Solstice CI job {job.job_id}" in status
    assert "Active: active (running)" in status
    assert "Transient: yes" in status
    assert "Until:" in status  # the RuntimeMaxSec deadline
    assert job.unit in installed.run("systemctl", "list-units", "--no-legend", "solstice-job@*").stdout

    assert installed.show(job.unit, "MemoryMax", "CPUQuotaPerSecUSec", "TasksMax", "RuntimeMaxUSec") == {
        "MemoryMax": str(1536 * 1024 * 1024),
        "CPUQuotaPerSecUSec": "1.500000s",
        "TasksMax": "300",
        "RuntimeMaxUSec": "10min",
    }
    sandbox = installed.show(
        job.unit,
        "Type", "NotifyAccess", "WatchdogUSec", "KillMode", "TimeoutStopUSec", "User", "Group",
        "SupplementaryGroups", "RuntimeDirectory", "RuntimeDirectoryMode", "ProtectSystem", "ProtectHome",
        "PrivateTmp", "NoNewPrivileges", "DevicePolicy", "DeviceAllow", "StatusText",
    )  # fmt: skip
    assert sandbox == {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogUSec": "1min",
        "KillMode": "control-group",
        "TimeoutStopUSec": "15s",
        "User": "solstice",
        "Group": "solstice",
        "SupplementaryGroups": "kvm",
        "RuntimeDirectory": f"solstice/jobs/{job.job_id}",
        "RuntimeDirectoryMode": "0700",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "DevicePolicy": "closed",
        "DeviceAllow": "/dev/kvm rw",
        "StatusText": "stand-in running",
    }

    # Its output is the unit's journal, as `solstice job run`'s will be.
    installed.journal_line(job.unit, "standin: tick 1")
    facts = job.facts()
    runtime = f"/run/solstice/jobs/{job.job_id}"
    assert facts == {
        **facts,
        "user": "solstice",
        "groups": ["kvm", "solstice"],
        "runtime_directory": runtime,
        "runtime_owner": "solstice",
        "runtime_mode": "0o700",
        "write_runtime": True,
        "write_ports": True,
        "write_debug": True,  # the registry of VMs kept for debug SSH
        "write_images": "OSError",  # EROFS
        "write_state": "OSError",
        "write_etc": "OSError",
        "write_tmp": True,
        "tmp_entries": [],  # PrivateTmp
        "list_home": "PermissionError",  # ProtectHome
        "list_root_home": "PermissionError",
        "list_runner_state": "PermissionError",  # InaccessiblePaths
        "pid1_visible": False,  # ProtectProc=invisible
        "cpuinfo_visible": False,  # ProcSubset=pid
        "no_new_privs": "1",
        "cap_bnd": "0000000000000000",
        "cap_eff": "0000000000000000",
        "seccomp": "2",
        "watchdog_usec": "60000000",
        "env_runtime_dir": "/run/solstice",
        "env_state_dir": "/var/lib/solstice",
    }, json.dumps(facts, indent=1)
    assert isinstance(facts["list_images"], list)  # readable
    # The credential is the key's content, though the file itself is root's alone.
    sha = installed.run("sha256sum", "/etc/solstice/secrets.key").stdout.split()[0]
    assert facts["secrets_key_sha256"] == sha

    # The same name cannot be started twice while it exists (the job uuid is the idempotency key).
    again = start_standin_job(installed, job.job_id, "sleep", LIMITS)
    assert again.returncode != 0 and "already" in again.stderr, again.stderr

    # Cancellation: stop ends the process group and the child in its own session, and systemd
    # removes the runtime directory.
    started = time.monotonic()
    installed.run("systemctl", "stop", job.unit)
    assert time.monotonic() - started < 5
    installed.wait_until("the job's processes to be gone", job.gone, 10)
    assert installed.run("test", "-e", runtime, check=False).returncode == 1
    result = installed.show(job.unit, "Result", "ExecMainStatus", "ActiveState")
    assert result == {"Result": "exit-code", "ExecMainStatus": "3", "ActiveState": "failed"}, result
    assert "standin: SIGTERM, exiting with 3" in installed.journal(job.unit)


def test_runtime_max_sec_ends_the_job_with_result_timeout(installed: Testbed) -> None:
    job = Job(installed, new_job_id())
    started = time.monotonic()
    proc = start_standin_job(installed, job.job_id, "sleep", {**LIMITS, "RuntimeMaxSec": "3"})
    assert proc.returncode == 0, proc.stderr
    try:
        installed.wait_until("the RuntimeMaxSec deadline to end the job", job.gone, 20)
        elapsed = time.monotonic() - started
        result = installed.show(job.unit, "Result", "ExecMainStatus", "ExecMainCode")
        # ExecMainCode 1 = exited: SIGTERM reached the main process and its handler ran.
        assert result == {"Result": "timeout", "ExecMainStatus": "3", "ExecMainCode": "1"}, result
        assert 2.5 < elapsed < 12, elapsed
        assert "standin: SIGTERM" in installed.journal(job.unit)
    finally:
        installed.run("systemctl", "stop", job.unit, check=False)
        installed.run("systemctl", "reset-failed", job.unit, check=False)


def test_systemctl_kill_ends_the_job_and_every_process(installed: Testbed) -> None:
    job = Job(installed, new_job_id())
    proc = start_standin_job(installed, job.job_id, "sleep", LIMITS)
    assert proc.returncode == 0, proc.stderr
    try:
        assert len(installed.processes(job.job_id)) == 2  # the main process and its child
        installed.run("systemctl", "kill", job.unit)
        installed.wait_until("systemctl kill to end the job", job.gone, 10)
        assert installed.show(job.unit, "Result")["Result"] == "exit-code"
    finally:
        installed.run("systemctl", "stop", job.unit, check=False)
        installed.run("systemctl", "reset-failed", job.unit, check=False)


def test_stop_kills_a_process_that_ignores_sigterm_after_timeout_stop_sec(installed: Testbed) -> None:
    job = Job(installed, new_job_id())
    proc = start_standin_job(installed, job.job_id, "stubborn", LIMITS)
    assert proc.returncode == 0, proc.stderr
    try:
        started = time.monotonic()
        installed.run("systemctl", "stop", job.unit, timeout=60)
        elapsed = time.monotonic() - started
        # The template's TimeoutStopSec=15s, then SIGKILL for everything in the cgroup.
        assert 13 < elapsed < 20, elapsed
        assert job.gone(), installed.processes(job.job_id)
    finally:
        installed.run("systemctl", "reset-failed", job.unit, check=False)


def test_qemu_runs_in_the_job_sandbox_and_stop_leaves_no_vm(installed: Testbed) -> None:
    """A real QEMU (TCG) under the job unit's sandbox: overlay on the read-only base image in the
    RuntimeDirectory, QMP socket there, SLIRP network; `systemctl stop` leaves no VM within 10 s."""
    job = Job(installed, new_job_id())
    proc = start_standin_job(installed, job.job_id, "qemu", {**LIMITS, "MemoryMax": "2G"})
    assert proc.returncode == 0, proc.stderr + installed.journal(job.unit)
    try:
        qmp = json.loads(installed.journal_line(job.unit, "QMP "))
        assert qmp == {"qmp": f"/run/solstice/jobs/{job.job_id}/qmp.sock", "status": "running"}
        assert any("qemu-system-x86_64" in p for p in installed.processes(f"guest-{job.job_id}"))
        time.sleep(2)  # let the guest run a little (TCG JIT, disk and console I/O)
        assert installed.run("test", "-s", f"/run/solstice/jobs/{job.job_id}/console.log", check=False)
        started = time.monotonic()
        installed.run("systemctl", "stop", job.unit)
        installed.wait_until("the VM to be gone", job.gone, 10)
        assert time.monotonic() - started < 10
    finally:
        installed.run("systemctl", "stop", job.unit, check=False)
        installed.run("systemctl", "reset-failed", job.unit, check=False)


def test_the_template_must_stay_out_of_the_unit_path(installed: Testbed) -> None:
    """Why the job template is not installed as a unit: systemd would refuse the transient units."""
    job_id = new_job_id()
    installed.run("cp", installed.JOB_TEMPLATE, "/run/systemd/system/solstice-job@.service")
    try:
        installed.run("systemctl", "daemon-reload")
        proc = start_standin_job(installed, job_id, "sleep", LIMITS)
        assert proc.returncode != 0
        assert "fragment file" in proc.stderr, proc.stderr
    finally:
        installed.run("rm", "-f", "/run/systemd/system/solstice-job@.service")
        installed.run("systemctl", "daemon-reload")
        installed.run("systemctl", "stop", job_unit_name(job_id), check=False)


def test_the_dispatcher_sandbox_can_start_and_stop_job_units(installed: Testbed) -> None:
    """The dispatcher runs as root with no capabilities; systemd must still take its job units, and
    the request hand-off of solstice.dispatch.contract must work through its sandbox."""
    job_id = new_job_id()
    request_file = f"/run/solstice/requests/{job_id}.json"
    request = json.dumps({"schema": "jobrequest.v1", "job_id": job_id})
    argv = systemd_run_argv(
        JOB_TEMPLATE.read_text(),
        job_id,
        {**LIMITS, "LoadCredential": f"job-request:{request_file}"},
        ["/usr/bin/python3", f"{installed.STANDIN_DIR}/job-standin.py", "sleep", job_id],
    )
    installed.write(
        f"{installed.STANDIN_DIR}/dispatch.json",
        json.dumps([argv, job_unit_name(job_id), request_file, request]),
    )
    standin = installed.STANDIN_DIR
    dropin = "/run/systemd/system/solstice-dispatcher.service.d/standin.conf"
    installed.write(
        dropin,
        "[Service]\nExecStart=\nRestart=no\n"
        f"ExecStart=/usr/bin/python3 {standin}/dispatcher-standin.py {standin}/dispatch.json\n",
    )
    try:
        installed.run("systemctl", "daemon-reload")
        installed.run("systemctl", "start", "solstice-dispatcher.service")
        report = json.loads(
            installed.journal_line(
                "solstice-dispatcher.service", f"DISPATCHER {job_unit_name(job_id)} ", timeout=60
            )
        )
        assert report == {
            "caps": ["0000000000000000"],
            "start": [0, ""],
            "active": "active",
            "stop": [0, ""],
            "after_stop": "failed",  # the stand-in exits 3 on SIGTERM
        }, report
        assert not installed.processes(job_id)
        # The job read the request as its credential; the requests directory itself is root's.
        facts = Job(installed, job_id).facts()
        assert facts["job_request"] == request
        assert facts["list_requests"] == "PermissionError"
        assert installed.run("stat", "-c", "%U %a", request_file).stdout.split() == ["root", "600"]
    finally:
        installed.run("rm", "-f", request_file)
        installed.run("systemctl", "stop", "solstice-dispatcher.service", check=False)
        installed.run("systemctl", "reset-failed", "solstice-dispatcher.service", check=False)
        installed.run("rm", "-rf", dropin.rsplit("/", 1)[0])
        installed.run("systemctl", "daemon-reload")
        installed.run("systemctl", "stop", job_unit_name(job_id), check=False)


@pytest.mark.parametrize("unit", [*DAEMONS, "solstice-job@.service"])
def test_solstices_libraries_work_in_each_sandbox(installed: Testbed, unit: str) -> None:
    """The unit's settings (as a transient unit, with the check as its program) must not break the
    libraries its program will use: e.g. MemoryDenyWriteExecute= and ctypes callbacks."""
    text = (UNITS / unit).read_text().split("[Install]")[0]
    name = f"solstice-libcheck-{new_job_id()}"
    properties, _ = transient_properties(text, name)
    proc = installed.run(
        "systemd-run", "--quiet", "--wait", f"--unit={name}.service",
        *(f"--property={p}" for p in [*properties, "Type=exec", "WatchdogSec=0"]),
        "--", "/opt/solstice/bin/python3", f"{installed.STANDIN_DIR}/libraries.py", name,
        check=False, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + installed.journal(f"{name}.service")
    report = json.loads(installed.journal_line(f"{name}.service", f"LIBRARIES {name} "))
    assert report["ctypes_callback"] == 7 and report["jwt"] == 1 and report["ssh_key"], report
    if "postgres" in report:
        assert report["postgres"] == [1, ["hello"]]
    print(unit, "reached:", sorted(k for k in report if k in ("postgres", "rabbitmq")))
