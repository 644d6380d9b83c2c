"""The systemd spawner: each job is a transient ``solstice-job@<uuid>.service``.

The job template (``units/solstice-job@.service``, installed as
``/usr/share/solstice/units/solstice-job@.service``) is not a unit file systemd loads: systemd
refuses a transient unit whose name has one. Each ``Key=Value`` of its [Unit] and [Service]
sections (``%i`` -> the uuid, ``%%`` -> ``%``) becomes a ``systemd-run --property=``; then come
the job's own limits, the request credential and the exit record; ``ExecStart=`` (or
``[dispatcher] job_command``) becomes the command::

    systemd-run --quiet --no-block --unit=solstice-job@<uuid>.service \\
        --property=Description=Solstice CI job <uuid> ... (the template) \\
        --property=MemoryMax=2560M --property=CPUQuota=200% --property=TasksMax=512 \\
        --property=RuntimeMaxSec=22500 \\
        --property=LoadCredential=job-request:/run/solstice/requests/<uuid>.json \\
        "--property=ExecStopPost=/bin/sh -c 'umask 022 && env | grep -E
            \\"^(SERVICE_RESULT|EXIT_CODE|EXIT_STATUS)=\\" > /run/solstice/exits/<uuid>.exit'" \\
        --setenv=SOLSTICE_PATHS_STATE_DIR=/var/lib/solstice ... (job_environment) \\
        -- /usr/bin/solstice job run [--config FILE] <uuid>

The limits come from the job's machine plan (solstice.images.plan, computed by the dispatcher from
the request, the label's image and ``[vm]``; the job process plans its QEMU from the same inputs).

``ExecStopPost=`` records how the unit ended, because systemd unloads a transient unit that ended
cleanly (exit 0, or a "clean" signal such as SIGTERM) at once, and ``systemctl show`` then knows
nothing about it. It runs as the job's user inside the sandbox, writing to ``<runtime_dir>/exits``
(the template's ``ReadWritePaths=``): with a ``+`` prefix systemd 252 (bookworm) saves the
transient unit as ``ExecStopPostEx=``, which it cannot read back, so a ``daemon-reload`` during
the job (every package install does one) dropped the record. Failed units stay loaded
(``ActiveState=failed``) until the dispatcher has read them and runs ``systemctl reset-failed``.

Everything runs through an injectable ``run`` (solstice.proc.run by default), so the command lines
are tested without systemd; tests/systemd runs them for real.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from solstice import proc
from solstice.config import ENV_PREFIX, Config, DispatcherConfig, parse_size_mib
from solstice.dispatch.contract import (
    CREDENTIAL,
    UNIT_SUFFIX,
    canonical_job_id,
    child_environment,
    exit_record,
    job_argv,
    job_id_of_unit,
    unit_name,
)
from solstice.dispatch.spawner import ENDED, GONE, MAIN_CODES, RUNNING, UnitStatus, parse_exit_record
from solstice.errors import ConfigError
from solstice.images import Image, MachinePlan, boot_timeout
from solstice.images.poolstate import pool_dir
from solstice.model import JobRequest, debugssh

log = logging.getLogger("solstice.dispatcher")

Runner = Callable[..., Any]  # proc.run's signature

SHOW_PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "Result",
    "ExecMainCode",
    "ExecMainStatus",
    "Job",
)
_ACTIVE = {"active", "activating", "deactivating", "reloading", "refreshing"}
_SPECIFIER = re.compile(r"%(.|$)")
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./-]+")
_CREDENTIAL_URL = re.compile(r"://[^/@:]*:[^/@]*@")
_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"

#: Default job timeout when timeout-minutes is an expression the dispatcher does not evaluate.
DEFAULT_JOB_MINUTES = 360.0


class TemplateError(ConfigError):
    """The job template uses something a transient unit cannot take."""


def transient_properties(template: str, instance: str) -> tuple[list[str], list[str]]:
    """The template as (``Key=Value`` properties in file order, ExecStart argv) for ``instance``.

    Sections [Unit] and [Service] only; one setting per line (no continuation lines); ``%i`` ->
    instance, ``%%`` -> ``%``, no other specifier; ExecStart (without ``-@+!:`` prefixes) is the
    command, every other line a property."""
    properties: list[str] = []
    command: list[str] = []
    section = ""

    def expand(value: str, where: str) -> str:
        def one(match: re.Match[str]) -> str:
            if match.group(1) == "i":
                return instance
            if match.group(1) == "%":
                return "%"
            raise TemplateError(f"{where}: specifier %{match.group(1)} (only %i and %% are expanded)")

        return _SPECIFIER.sub(one, value)

    for number, raw in enumerate(template.splitlines(), 1):
        line = raw.strip()
        where = f"job template line {number}"
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            if section not in ("Unit", "Service"):
                raise TemplateError(f"{where}: section [{section}] cannot be given to a transient unit")
            continue
        if line.endswith("\\"):
            raise TemplateError(f"{where}: continuation lines are not supported")
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not section:
            raise TemplateError(f"{where}: not a Key=Value setting inside [Unit] or [Service]")
        value = expand(value, where)
        if key == "ExecStart":
            if value[:1] in tuple("-@+!:"):
                raise TemplateError(f"{where}: ExecStart prefixes are not supported")
            command = shlex.split(value)
            continue
        properties.append(f"{key}={value}")
    if not command:
        raise TemplateError("the job template has no ExecStart=")
    return properties, command


def job_minutes(request: JobRequest) -> float:
    value = request.job.timeout_minutes
    try:
        minutes = float(value)
    except (TypeError, ValueError):  # an expression: the job process evaluates it
        return DEFAULT_JOB_MINUTES
    return minutes if minutes > 0 else DEFAULT_JOB_MINUTES


def runtime_max(request: JobRequest, cfg: Config, image: Image) -> float:
    """RuntimeMaxSec: the job's timeout + the boot timeout + [dispatcher] runtime_margin, + [debug]
    ttl for a job that may keep its VM when it fails. The job ends itself at its timeout (and a
    kept VM at its TTL); this is the backstop for a job process that hangs. The boot timeout is the
    one the job process waits (the label's profile may need more than [vm] boot_timeout), or a
    slow-booting guest would be killed by systemd before its own timeout could report it."""
    debug = cfg.debug.ttl if debugssh.eligible(request, cfg.debug) else 0.0
    boot = boot_timeout(image, cfg.vm)
    return job_minutes(request) * 60 + boot + cfg.dispatcher.runtime_margin + debug


def job_limits(plan: MachinePlan, runtime_max: float, dcfg: DispatcherConfig) -> dict[str, str]:
    """The job's cgroup limits and deadline as unit properties: the VM's planned memory plus
    ``[dispatcher] memory_overhead`` (QEMU itself, the job process), a CPU per planned vCPU."""
    overhead = parse_size_mib(dcfg.memory_overhead)
    return {
        "MemoryMax": f"{plan.memory_mib + overhead}M",
        "CPUQuota": f"{plan.cpus * 100}%",
        "TasksMax": str(dcfg.tasks_max),
        "RuntimeMaxSec": str(int(runtime_max)),
    }


def job_environment(cfg: Config, environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The environment a job unit gets from the dispatcher, and the variables withheld from it.

    A transient unit inherits none of the dispatcher's environment, so every ``SOLSTICE_*``
    override the dispatcher runs with is passed on (``--setenv``), and the paths are always the
    dispatcher's own (they override the template's ``Environment=``): the job must find its request
    and work directory where the dispatcher put them. Withheld: ``SOLSTICE_CONFIG`` (the job gets
    ``--config`` instead) and any value with a password in it (``scheme://user:password@``), since a
    unit's environment is readable by every user (``systemctl show``); such a key belongs in the
    configuration file."""
    env: dict[str, str] = {}
    withheld: list[str] = []
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == "SOLSTICE_CONFIG":
            continue
        if _CREDENTIAL_URL.search(value):
            withheld.append(name)
        else:
            env[name] = value
    env["SOLSTICE_PATHS_STATE_DIR"] = cfg.paths.state_dir
    env["SOLSTICE_PATHS_RUNTIME_DIR"] = cfg.paths.runtime_dir
    return env, withheld


def default_template() -> Path:
    """The packaged template, else the one in a source checkout (development)."""
    packaged = Path("/usr/share/solstice/units/solstice-job@.service")
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "units" / "solstice-job@.service"


class SystemdSpawner:
    name = "systemd"

    def __init__(
        self,
        cfg: Config,
        *,
        template: str | None = None,
        command: Sequence[str] | None = None,
        run: Runner = proc.run,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.runtime_dir = Path(cfg.paths.runtime_dir)
        if not _SAFE_PATH.fullmatch(str(self.runtime_dir)):
            raise ConfigError(
                f"[paths] runtime_dir = {str(self.runtime_dir)!r}: the systemd spawner needs a path of "
                "letters, digits and _./- only (it goes into unit properties)"
            )
        if template is None:
            path = Path(cfg.dispatcher.job_template)
            if not path.is_file() and cfg.dispatcher.job_template == str(
                Path("/usr/share/solstice/units/solstice-job@.service")
            ):
                path = default_template()
            try:
                template = path.read_text()
            except OSError as exc:
                raise ConfigError(
                    f"[dispatcher] job_template: cannot read {path}: {exc.strerror}",
                    hint="the package installs it as /usr/share/solstice/units/solstice-job@.service",
                ) from None
        _, exec_start = transient_properties(template, _PLACEHOLDER)  # fail early
        if not command and exec_start[-1] != _PLACEHOLDER:
            raise TemplateError("the job template's ExecStart= must end with %i (the job uuid)")
        self.template = template
        self.command = list(command) if command else None
        self.environment, withheld = job_environment(cfg, os.environ if environ is None else environ)
        for name in withheld:
            log.warning(
                "%s is not passed to job units (it holds a password, and a unit's environment is "
                "readable by every user): set the key in the configuration file instead",
                name,
            )
        self._runner = run

    def _run(self, argv: list[str], **kwargs: Any) -> Any:
        """Every systemctl/systemd-run call: without the dispatcher's NOTIFY_SOCKET and the like."""
        return self._runner(argv, env=child_environment(), **kwargs)

    def unit_name(self, job_id: str) -> str:
        return unit_name(job_id)

    def argv(
        self, request: JobRequest, request_file: Path, limits: Mapping[str, str], warm_vm: str = ""
    ) -> list[str]:
        """The systemd-run command line that starts ``request``'s unit."""
        job_id = request.job_id
        properties, exec_start = transient_properties(self.template, job_id)
        record = exit_record(self.runtime_dir, job_id)
        if not _SAFE_PATH.fullmatch(str(request_file)):
            raise ConfigError(f"request file path {str(request_file)!r} cannot go into a unit property")
        # No "$" and no ";" (systemd 252 re-reads them escaped, wrongly, after a daemon-reload: "\;"
        # reached the shell); umask 022:
        # the dispatcher is root without CAP_DAC_OVERRIDE and reads it as "other".
        script = f'umask 022 && env | grep -E "^(SERVICE_RESULT|EXIT_CODE|EXIT_STATUS)=" > {record}'
        properties += [f"{key}={value}" for key, value in limits.items()]
        if warm_vm:
            # systemd moves a process into a unit (the warm VM's QEMU, attach()) only when the unit
            # is delegated; ProtectControlGroups= keeps cgroupfs read-only for the job all the same.
            properties.append("Delegate=yes")
        properties += [
            f"LoadCredential={CREDENTIAL}:{request_file}",
            f"ExecStopPost=/bin/sh -c '{script}'",
        ]
        command = job_argv(self.command or exec_start[:-1], job_id, self.cfg.path, warm_vm)
        return [
            "systemd-run",
            "--quiet",
            "--no-block",
            f"--unit={unit_name(job_id)}",
            *(f"--property={p}" for p in properties),
            *(f"--setenv={name}={value}" for name, value in self.environment.items()),
            "--",
            *command,
        ]

    def _exits_dir(self) -> None:
        """``<runtime_dir>/exits``, writable by the job's user (tmpfiles makes it on a packaged host)."""
        self._drop_box(
            exit_record(self.runtime_dir, "-").parent, "job units of that group cannot record how they end"
        )

    def _drop_box(self, path: Path, without_group: str) -> None:
        """Make ``path`` when missing as root:<job group> 0730: the units write their records there,
        the dispatcher (root without capabilities: plain owner permissions) reads and removes them."""
        if path.is_dir():
            return
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o730)
        group = dict(p.split("=", 1) for p in transient_properties(self.template, "-")[0]).get("Group")
        if group and os.geteuid() == 0:
            try:
                shutil.chown(path, group=group)
            except LookupError:
                log.warning("%s: no group %r; %s", path, group, without_group)

    def start(
        self,
        request: JobRequest,
        request_file: Path,
        runtime_max: float,
        plan: MachinePlan,
        warm_vm: str = "",
    ) -> None:
        self._exits_dir()
        limits = job_limits(plan, runtime_max, self.cfg.dispatcher)
        self._run(self.argv(request, request_file, limits, warm_vm), timeout=60)

    def status(self, job_ids: Sequence[str]) -> dict[str, UnitStatus]:
        if not job_ids:
            return {}
        units = [unit_name(j) for j in job_ids]
        out = self._run(
            ["systemctl", "show", "--no-pager", f"--property={','.join(SHOW_PROPERTIES)}", *units],
            timeout=30,
        ).stdout.decode(errors="replace")
        shown: dict[str, dict[str, str]] = {}
        for block in out.split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if props.get("Id"):
                shown[props["Id"]] = props
        statuses: dict[str, UnitStatus] = {}
        for job_id, unit in zip(job_ids, units, strict=True):
            statuses[job_id] = self._status(job_id, shown.get(unit, {}))
        return statuses

    def _status(self, job_id: str, props: Mapping[str, str]) -> UnitStatus:
        active = props.get("ActiveState", "")
        detail = f"{props.get('LoadState', '?')}/{active or '?'}/{props.get('SubState', '?')}"
        # A running unit is running whatever its LoadState says: after a daemon-reload, systemd
        # 252 may fail to re-read a transient unit's file and call it bad-setting while it runs.
        if active in _ACTIVE or props.get("Job", "") not in ("", "0"):
            return UnitStatus(job_id, RUNNING, detail=detail)
        if props.get("LoadState") == "loaded":
            status = props.get("ExecMainStatus", "")
            return UnitStatus(
                job_id,
                ENDED,
                result=props.get("Result", ""),
                main_code=MAIN_CODES.get(props.get("ExecMainCode", ""), ""),
                main_status=int(status) if status.lstrip("-").isdigit() else None,
                detail=detail,
            )
        # Not loaded: ended cleanly and unloaded (the exit record says how), or never there.
        try:
            text = exit_record(self.runtime_dir, job_id).read_text()
        except OSError:
            return UnitStatus(job_id, GONE, detail=detail)
        return parse_exit_record(job_id, text) or UnitStatus(job_id, GONE, detail=detail)

    def stop(self, job_id: str) -> None:
        self._run(["systemctl", "stop", "--no-block", unit_name(job_id)], timeout=30)

    def list_units(self) -> list[str]:
        out = self._run(
            [
                "systemctl",
                "list-units",
                "--all",
                "--plain",
                "--no-legend",
                "--no-pager",
                "--full",
                f"{unit_name('*')}",
            ],
            timeout=30,
        ).stdout.decode(errors="replace")
        ids = []
        for line in out.splitlines():
            words = line.split()
            job_id = job_id_of_unit(words[0]) if words else None
            if job_id is not None:
                ids.append(job_id)
        return ids

    def release(self, job_id: str) -> None:
        # Not loaded any more (ended cleanly) is fine: nothing to reset.
        self._run(["systemctl", "reset-failed", unit_name(job_id)], check=False, timeout=30)

    # --- warm pool keepers: solstice-pool@<vm-id>.service ------------------------------------

    def keeper_argv(self, vm_id: str, label: str, plan: MachinePlan) -> list[str]:
        """The systemd-run command line of a warm VM's keeper: the job template's sandbox and user,
        its own RuntimeDirectory, the label's plan as limits, and none of the job's credentials
        (no secrets key, no broker: nothing of any job reaches a VM before a job takes it). No
        RuntimeMaxSec=: the keeper gives an unused VM up at max_age itself, and a taken VM lives
        as long as its job's unit allows."""
        if canonical_job_id(vm_id) is None or not _SAFE_PATH.fullmatch(label) or ".." in label:
            raise ConfigError(f"warm VM {vm_id!r} of {label!r}: not a name that can go into a unit")
        properties, exec_start = transient_properties(self.template, vm_id)
        kept = []
        for prop in properties:
            key, _, _ = prop.partition("=")
            if key in ("LoadCredential", "Description", "RuntimeDirectory", "Documentation"):
                continue
            kept.append(prop)
        limits = job_limits(plan, 0, self.cfg.dispatcher)
        del limits["RuntimeMaxSec"]
        kept += [
            f"Description=Solstice CI warm VM {vm_id} ({label})",
            f"RuntimeDirectory={pool_runtime_directory(self.runtime_dir, vm_id)}",
            f"ReadWritePaths={pool_dir(self.runtime_dir)}",
            *(f"{key}={value}" for key, value in limits.items()),
        ]
        solstice = exec_start[0] if exec_start[1:3] == ["job", "run"] else "/usr/bin/solstice"
        config = ["--config", str(self.cfg.path)] if self.cfg.path is not None else []
        return [
            "systemd-run",
            "--quiet",
            "--no-block",
            f"--unit={keeper_unit(vm_id)}",
            *(f"--property={p}" for p in kept),
            *(f"--setenv={name}={value}" for name, value in self.environment.items()),
            "--",
            solstice,
            *config,
            "pool",
            "keep",
            "--label",
            label,
            vm_id,
        ]

    def start_keeper(self, vm_id: str, label: str, plan: MachinePlan) -> None:
        # Keepers write their records there (as exits/), the dispatcher reads them.
        self._drop_box(pool_dir(self.runtime_dir), "keepers of that group cannot record their VMs")
        self._run(self.keeper_argv(vm_id, label, plan), timeout=60)

    def keepers(self) -> list[str]:
        out = self._run(
            ["systemctl", "list-units", "--plain", "--no-legend", "--no-pager", "--full", keeper_unit("*")],
            timeout=30,
        ).stdout.decode(errors="replace")
        ids = []
        for line in out.splitlines():
            words = line.split()
            if len(words) >= 3 and words[0].startswith(KEEPER_PREFIX) and words[2] in _ACTIVE:
                ids.append(words[0][len(KEEPER_PREFIX) : -len(UNIT_SUFFIX)])
        return sorted(ids)

    def stop_keeper(self, vm_id: str) -> None:
        self._run(["systemctl", "stop", "--no-block", keeper_unit(vm_id)], timeout=30)

    def release_keeper(self, vm_id: str) -> None:
        # A keeper that failed (an unhealthy VM, a boot that timed out) stays loaded until reset.
        self._run(["systemctl", "reset-failed", keeper_unit(vm_id)], check=False, timeout=30)

    def attach(self, job_id: str, pids: Sequence[int]) -> None:
        """AttachProcessesToUnit (systemd 238+; root may move any process into a delegated unit:
        warm jobs' units are, see argv): the warm VM's QEMU joins the job's cgroup, so the job's
        limits hold it and stopping the job's unit kills it. Needs the system bus (dbus)."""
        if not pids:
            return
        self._run(
            [
                "busctl",  # on the system bus (D-Bus): systemd's private socket refuses this call
                "call",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "AttachProcessesToUnit",
                "ssau",
                unit_name(job_id),
                "",
                str(len(pids)),
                *(str(p) for p in pids),
            ],
            timeout=30,
        )


KEEPER_PREFIX = "solstice-pool@"


def keeper_unit(vm_id: str) -> str:
    return f"{KEEPER_PREFIX}{vm_id}{UNIT_SUFFIX}"


def pool_runtime_directory(runtime_dir: Path, vm_id: str) -> str:
    """RuntimeDirectory= (relative to /run) of a keeper: ``<runtime_dir>/pool/<vm-id>``."""
    rel = pool_dir(runtime_dir).relative_to("/run") if pool_dir(runtime_dir).is_relative_to("/run") else None
    if rel is None:
        raise ConfigError(
            f"[paths] runtime_dir = {str(runtime_dir)!r}: warm pool units need it under /run "
            "(their RuntimeDirectory=)"
        )
    return f"{rel}/{vm_id}"
