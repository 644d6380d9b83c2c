"""One machine plan for a job's VM (solstice.images.plan), the unit limits built from it, the job
command line and environment the dispatcher gives job units, and the teardown's stop sequence."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from solstice.config import Config, DispatcherConfig, ImageConfig, PathsConfig, VMConfig, load
from solstice.dispatch.contract import job_argv
from solstice.dispatch.systemd import (
    SystemdSpawner,
    default_template,
    job_environment,
    job_limits,
    runtime_max,
)
from solstice.errors import ConfigError
from solstice.images import Catalog, MachinePlan, boot_timeout, plan_machine, requested_size
from solstice.job.runner import JobRun, JobSettings
from solstice.model import JobRequest, JobSpec, Size, from_dict, to_dict
from solstice.queue import decode_request, encode_request
from solstice.vm import qmp

BIG = ImageConfig(label="big", path="/images/big.qcow2", cpus=4, memory="6G")
PLAIN = ImageConfig(label="plain", path="/images/plain.qcow2")
VM = VMConfig(cpus=1, memory="1536M")
TEMPLATE = (
    "[Service]\nExecStart=/usr/bin/solstice job run %i\n"
    "Environment=SOLSTICE_PATHS_RUNTIME_DIR=/run/solstice\n"
)


def test_the_request_wins_then_the_image_then_vm() -> None:
    assert plan_machine(Size(), BIG, VM) == MachinePlan(cpus=4, memory_mib=6144, disk_gib=None)
    assert plan_machine(Size(), PLAIN, VM) == MachinePlan(cpus=1, memory_mib=1536, disk_gib=None)
    assert plan_machine(Size(cpus=8), BIG, VM) == MachinePlan(cpus=8, memory_mib=6144, disk_gib=None)
    assert plan_machine(Size(memory_mib=512), BIG, VM) == MachinePlan(4, 512, None)
    assert plan_machine(Size(2, 1024, 30), BIG, VM) == MachinePlan(2, 1024, 30)
    # Each key on its own: an image with only a memory size takes [vm]'s CPUs.
    half = ImageConfig(label="half", path="x", memory="3G", disk="1500M")
    assert plan_machine(Size(), half, VM) == MachinePlan(cpus=1, memory_mib=3072, disk_gib=2)


def test_the_catalogs_image_plans_as_its_config(tmp_path: Path) -> None:
    catalog = Catalog({"big": BIG}, tmp_path)
    image = catalog.get("big")
    assert plan_machine(Size(), image, VM) == plan_machine(Size(), BIG, VM) == MachinePlan(4, 6144, None)
    # The test image has no size of its own: [vm] decides, 2 CPUs and 2 GiB by default.
    assert plan_machine(Size(), catalog.get("debian-12"), VMConfig()) == MachinePlan(2, 2048, None)
    assert MachinePlan(4, 6144, None).describe() == "4 CPUs, 6144 MiB"


def test_image_size_keys_are_checked(tmp_path: Path) -> None:
    p = tmp_path / "solstice.toml"
    p.write_text('[images.big]\npath = "big.qcow2"\ncpus = 4\nmemory = "6G"\ndisk = "20G"\n')
    cfg = load(p, environ={})
    assert (cfg.images["big"].cpus, cfg.images["big"].memory, cfg.images["big"].disk) == (4, "6G", "20G")
    assert Catalog.from_config(cfg).get("big").disk_gib == 20
    for bad, message in (("cpus = 0", "cpus must be at least 1"), ('memory = "lots"', "memory: 'lots'")):
        p.write_text(f'[images.big]\npath = "big.qcow2"\n{bad}\n')
        with pytest.raises(ConfigError, match=message):
            load(p, environ={})


def test_an_unset_size_stays_unset_in_jobrequest_v1() -> None:
    spec = JobSpec("k", "n", ("big",), ())
    request = JobRequest(job_id="00000000-0000-0000-0000-000000000001", job=spec, label="big")
    body = json.loads(encode_request(request))
    assert body["size"] == {"cpus": None, "memory_mib": None, "disk_gib": None}
    assert decode_request(encode_request(request)).size == Size()
    # Absent fields (an older or other producer) are unset too; given ones are kept.
    del body["size"]
    assert from_dict(JobRequest, body).size == Size()
    body["size"] = {"cpus": 4}
    assert from_dict(JobRequest, body).size == Size(cpus=4)
    assert to_dict(Size(2, 1024, None)) == {"cpus": 2, "memory_mib": 1024, "disk_gib": None}


def test_solstice_run_sets_only_what_the_command_line_gives() -> None:
    assert requested_size(None, None) == Size()
    assert requested_size(3, None) == Size(cpus=3)
    assert requested_size(None, "6G") == Size(memory_mib=6144)
    with pytest.raises(ConfigError, match="--memory"):
        requested_size(None, "lots")
    with pytest.raises(ConfigError, match="--cpus"):
        requested_size(0, None)


def test_unit_limits_come_from_the_plan() -> None:
    limits = job_limits(MachinePlan(4, 6144, None), 2700.5, DispatcherConfig(memory_overhead="512M"))
    assert limits == {"MemoryMax": "6656M", "CPUQuota": "400%", "TasksMax": "512", "RuntimeMaxSec": "2700"}


def test_job_argv_carries_the_configuration_file() -> None:
    assert job_argv(["solstice", "job", "run"], "u", None) == ["solstice", "job", "run", "u"]
    assert job_argv(["solstice", "job", "run"], "u", Path("/etc/x.toml")) == [
        "solstice", "job", "run", "--config", "/etc/x.toml", "u",
    ]  # fmt: skip


def test_config_path_is_absolute_and_only_when_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "s.toml").write_text("[vm]\ncpus = 3\n")
    monkeypatch.chdir(tmp_path)
    assert load(Path("s.toml"), environ={}).path == tmp_path / "s.toml"
    assert load(environ={"SOLSTICE_CONFIG": "s.toml"}).path == tmp_path / "s.toml"
    assert load(environ={}).path is None


def test_job_units_get_the_overrides_and_the_paths_but_no_passwords() -> None:
    cfg = Config(paths=PathsConfig(state_dir="/srv/state", runtime_dir="/srv/run"))
    env, withheld = job_environment(
        cfg,
        {
            "SOLSTICE_VM_ACCEL": "tcg",
            "SOLSTICE_CONFIG": "/etc/other.toml",
            "SOLSTICE_BROKER_URL": "amqp://u:secret@host/%2F",
            "SOLSTICE_PATHS_RUNTIME_DIR": "/elsewhere",
            "PATH": "/usr/bin",
        },
    )
    assert env == {
        "SOLSTICE_VM_ACCEL": "tcg",
        "SOLSTICE_PATHS_STATE_DIR": "/srv/state",
        "SOLSTICE_PATHS_RUNTIME_DIR": "/srv/run",  # the dispatcher's effective paths, always
    }
    assert withheld == ["SOLSTICE_BROKER_URL"]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append([str(a) for a in argv])
        return subprocess.CompletedProcess(argv, 0, b"", b"")


def test_the_systemd_unit_runs_the_job_with_the_dispatchers_config(tmp_path: Path) -> None:
    config_file = tmp_path / "solstice.toml"
    config_file.write_text(f'[paths]\nruntime_dir = "{tmp_path}/run"\nstate_dir = "{tmp_path}/state"\n')
    cfg = load(config_file, environ={})
    run = Recorder()
    spawner = SystemdSpawner(cfg, template=TEMPLATE, run=run, environ={"SOLSTICE_VM_ACCEL": "tcg"})
    job = "00000000-0000-0000-0000-000000000002"
    request = JobRequest(job_id=job, job=JobSpec("k", "n", ("big",), ()), label="big")
    spawner.start(request, tmp_path / "run/requests/x.json", 100.0, MachinePlan(4, 6144, None))
    (argv,) = run.calls
    assert argv[argv.index("--") + 1 :] == [
        "/usr/bin/solstice",
        "job",
        "run",
        "--config",
        str(config_file),
        job,
    ]
    assert "--property=MemoryMax=6656M" in argv and "--property=CPUQuota=400%" in argv
    assert f"--setenv=SOLSTICE_PATHS_RUNTIME_DIR={tmp_path}/run" in argv
    assert "--setenv=SOLSTICE_VM_ACCEL=tcg" in argv
    # Without a file of its own the dispatcher passes none (the job reads the same default).
    spawner = SystemdSpawner(Config(), template=TEMPLATE, run=run, environ={})
    assert spawner.argv(request, Path("/run/solstice/requests/x.json"), {})[-4:] == [
        "/usr/bin/solstice", "job", "run", job,
    ]  # fmt: skip


def test_the_job_process_boots_what_the_plan_says(tmp_path: Path) -> None:
    image = Catalog({"big": BIG}, tmp_path).get("big")
    request = JobRequest(
        job_id="00000000-0000-0000-0000-000000000003", job=JobSpec("k", "n", ("big",), ()), label="big"
    )
    settings = JobSettings(vm=VMConfig(accel="tcg", shutdown_timeout=7.0), runtime_dir=tmp_path)
    run = JobRun(request, image, settings, Recorder())  # type: ignore[arg-type]
    spec = run._machine_spec(plan_machine(request.size, image, settings.vm))
    assert (spec.cpus, spec.memory_mib, spec.accel) == (4, 6144, "tcg")
    assert spec.powerdown is False  # a job's VM is quit at once; shutdown_timeout is not waited for


def test_runtime_max_counts_the_boot_timeout_the_job_process_waits(tmp_path: Path) -> None:
    """A profile that needs a longer boot than [vm] boot_timeout (FreeBSD: 600 s) gets it in the
    job process; the unit's RuntimeMaxSec must count the same, or systemd kills a slow first boot
    before the job's own boot timeout can report it."""
    slow = ImageConfig(label="slow", path="/images/slow.qcow2", profile="freebsd")
    catalog = Catalog({"slow": slow, "plain": PLAIN}, tmp_path)
    job = JobSpec("k", "n", ("slow",), (), timeout_minutes=10)
    request = JobRequest(job_id="00000000-0000-0000-0000-000000000004", job=job, label="slow")
    margin = DispatcherConfig().runtime_margin
    for vm_boot, label, want in ((300.0, "slow", 600.0), (900.0, "slow", 900.0), (300.0, "plain", 300.0)):
        cfg = Config(vm=VMConfig(boot_timeout=vm_boot))
        image = catalog.get(label)
        run = JobRun(request, image, JobSettings(vm=cfg.vm, runtime_dir=tmp_path), Recorder())  # type: ignore[arg-type]
        assert boot_timeout(image, cfg.vm) == run.boot_timeout == want, (vm_boot, label)
        assert runtime_max(request, cfg, image) == 600 + want + margin, (vm_boot, label)


def test_a_template_whose_command_does_not_end_with_the_uuid_is_refused() -> None:
    with pytest.raises(ConfigError, match="must end with %i"):
        SystemdSpawner(Config(), template="[Service]\nExecStart=/usr/bin/solstice job run %i --x\n")


class FakeQemu:
    """A process that ignores everything but SIGKILL, standing in for QEMU."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["sleep", "30"])


def test_a_job_vm_is_quit_at_once_and_a_powerdown_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    monkeypatch.setattr(qmp, "qmp_command", lambda sock, command, timeout=5.0: sent.append(command))
    qemu = FakeQemu().proc
    qmp.stop_qemu(qemu, tmp_path / "qmp.sock", 0.0, quit_timeout=0.2)
    assert sent == ["quit"] and qemu.returncode is not None  # then killed: it ignored the quit
    sent.clear()
    qemu = FakeQemu().proc
    qmp.stop_qemu(qemu, tmp_path / "qmp.sock", 0.2, quit_timeout=0.2)
    assert sent == ["system_powerdown", "quit"] and qemu.returncode is not None


def test_a_warm_job_and_a_keeper_as_transient_units(tmp_path: Path) -> None:
    """A job given a warm VM: --warm-vm and a delegated unit (systemd moves QEMU only into one). A
    keeper: the template's sandbox and user, its own RuntimeDirectory, the plan's limits without a
    deadline, and none of the job units' credentials."""
    run = Recorder()
    cfg = dataclasses.replace(Config(), path=Path("/etc/solstice/other.toml"))
    spawner = SystemdSpawner(cfg, template=default_template().read_text(), run=run, environ={})
    job = "00000000-0000-0000-0000-000000000004"
    request = JobRequest(job_id=job, job=JobSpec("k", "n", ("big",), ()), label="big")
    vm_id = "11111111-2222-3333-4444-555555555555"
    argv = spawner.argv(request, Path("/run/solstice/requests/x.json"), {}, warm_vm=vm_id)
    assert argv[argv.index("--") + 1 :][-3:] == ["--warm-vm", vm_id, job]
    assert "--property=Delegate=yes" in argv
    assert "--property=Delegate=yes" not in spawner.argv(request, Path("/run/solstice/requests/x.json"), {})
    keeper = spawner.keeper_argv(vm_id, "big", MachinePlan(4, 6144, None))
    assert f"--unit=solstice-pool@{vm_id}.service" in keeper
    assert keeper[keeper.index("--") + 1 :] == [
        "/usr/bin/solstice", "--config", "/etc/solstice/other.toml", "pool", "keep", "--label", "big", vm_id,
    ]  # fmt: skip
    props = [a.removeprefix("--property=") for a in keeper if a.startswith("--property=")]
    assert f"RuntimeDirectory=solstice/pool/{vm_id}" in props and "MemoryMax=6656M" in props
    assert not [p for p in props if p.startswith(("LoadCredential", "RuntimeMaxSec", "ExecStopPost"))], props
    assert "User=solstice" in props and "ProtectSystem=strict" in props
    with pytest.raises(ConfigError):
        spawner.keeper_argv("../etc", "big", MachinePlan(1, 512, None))
