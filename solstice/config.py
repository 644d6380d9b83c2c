"""Configuration: TOML (``/etc/solstice/solstice.toml`` or ``--config``) plus ``SOLSTICE_*`` overrides,
loaded into frozen dataclasses. Every error names the key and where it came from.

An override is ``SOLSTICE_<SECTION>_<KEY>``, e.g. ``SOLSTICE_VM_ACCEL=tcg`` sets ``[vm] accel``.
Images are tables under ``[images.<label>]`` (see docs/configuration.md).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from solstice.errors import ConfigError

DEFAULT_PATH = Path("/etc/solstice/solstice.toml")
ENV_PREFIX = "SOLSTICE_"


def _default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/solstice")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(base) / "solstice"


def _default_runtime_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/solstice")
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/solstice-{os.geteuid()}"
    return Path(base) / "solstice"


def parse_size_mib(text: str | int) -> int:
    """'2G', '512M', '2048' (MiB) -> MiB."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    mult: float = 1
    if s and s[-1] in "KMGT":
        mult = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[s[-1]]
        s = s[:-1]
    try:
        value = float(s)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (use e.g. 2048, 512M or 2G)") from None
    mib = int(value * mult)
    if mib <= 0:
        raise ValueError(f"{text!r} is not a positive size")
    return mib


def parse_address(text: str, key: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) -> (host, port). ``key`` names the setting in errors."""
    host, sep, port_text = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            f"{key} = {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9310 or [::1]:9310",
            hint='the port is 1 to 65535; an empty value ("") turns the endpoint off',
        )
    return host, int(port_text)


def parse_size_gib(text: str | int) -> int:
    """A size as whole GiB, rounded up ('20G' -> 20, '1500M' -> 2); a bare number is MiB."""
    return -(-parse_size_mib(text) // 1024)


@dataclass(frozen=True)
class VMConfig:
    #: "kvm" on real hosts; "tcg" where nested virtualisation hangs (see docs/configuration.md).
    accel: str = "kvm"
    cpus: int = 2
    memory: str = "2G"
    boot_timeout: float = 300.0
    shutdown_timeout: float = 10.0
    #: A running guest that answers no probe for this long is given up: the job ends as error.
    unresponsive_after: float = 60.0
    qemu: str = "qemu-system-x86_64"
    qemu_img: str = "qemu-img"
    ovmf_code: str = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    ovmf_vars: str = "/usr/share/OVMF/OVMF_VARS_4M.fd"

    def validate(self, where: str) -> None:
        if self.accel not in ("kvm", "tcg"):
            raise ConfigError(f'{where}: [vm] accel = {self.accel!r}: must be "kvm" or "tcg"')
        if self.cpus < 1:
            raise ConfigError(f"{where}: [vm] cpus must be at least 1")
        try:
            parse_size_mib(self.memory)
        except ValueError as exc:
            raise ConfigError(f"{where}: [vm] memory: {exc}") from None
        if self.boot_timeout <= 0 or self.shutdown_timeout <= 0 or self.unresponsive_after <= 0:
            raise ConfigError(f"{where}: [vm] timeouts must be positive")


@dataclass(frozen=True)
class PathsConfig:
    #: Images, caches and registrations live here.
    state_dir: str = field(default_factory=lambda: str(_default_state_dir()))
    #: Per-job directories (overlay, seed, sockets, port locks).
    runtime_dir: str = field(default_factory=lambda: str(_default_runtime_dir()))
    #: The operator's image catalog files (``*.toml``, docs/images.md); a missing directory is empty.
    images_d: str = "/etc/solstice/images.d"

    @property
    def images_dir(self) -> Path:
        return Path(self.state_dir) / "images"


@dataclass(frozen=True)
class BrokerConfig:
    """RabbitMQ. Names are configurable so several installations can share one broker."""

    url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    #: A file holding the URL (its password out of the configuration file); the systemd credential
    #: ``broker-url`` takes precedence over both (see ``credential_urls``).
    url_file: str = ""
    jobs_exchange: str = "solstice.jobs"
    events_exchange: str = "solstice.events"
    control_exchange: str = "solstice.control"
    dead_letter_exchange: str = "solstice.dlx"
    dead_letter_queue: str = "solstice.dead-letter"
    queue_prefix: str = "solstice.jobs."  # + label
    #: "quorum" where the broker supports it (RabbitMQ >= 3.8), else "classic".
    queue_type: str = "quorum"

    @classmethod
    def named(cls, prefix: str, url: str = url, queue_type: str = queue_type) -> BrokerConfig:
        """Every exchange and queue name derived from one prefix, as the defaults are from "solstice"
        (a second installation, or a test, on the same broker)."""
        return cls(
            url=url,
            jobs_exchange=f"{prefix}.jobs",
            events_exchange=f"{prefix}.events",
            control_exchange=f"{prefix}.control",
            dead_letter_exchange=f"{prefix}.dlx",
            dead_letter_queue=f"{prefix}.dead-letter",
            queue_prefix=f"{prefix}.jobs.",
            queue_type=queue_type,
        )


@dataclass(frozen=True)
class DatabaseConfig:
    """PostgreSQL, as a libpq connection string or URL."""

    url: str = "postgresql://postgres@127.0.0.1:5432/solstice"
    #: A file holding the URL or connection string; the credential ``database-url`` wins over it.
    url_file: str = ""


@dataclass(frozen=True)
class SecretsConfig:
    #: The Fernet key that seals JobRequest secrets (solstice.secrets); a systemd credential
    #: ``secrets-key`` takes precedence.
    key_file: str = "/etc/solstice/secrets.key"


def _default_host() -> str:
    """The short host name: a dispatcher's identity in the database and its control queue."""
    name = socket.gethostname().split(".")[0]
    return name or "localhost"


@dataclass(frozen=True)
class DispatcherConfig:
    """The per-host dispatcher (docs/dispatcher.md)."""

    #: This host's name in the database (jobs.host) and in its control queue; unique per host.
    host: str = field(default_factory=_default_host)
    #: At most this many jobs run at once on this host.
    capacity: int = 2
    #: The labels whose job queues this host consumes; empty: the image catalog's labels of the
    #: images configured or pulled on this host (Catalog.served_labels).
    labels: tuple[str, ...] = ()
    #: "systemd": one transient solstice-job@<uuid>.service per job; "process": child processes.
    spawner: str = "systemd"
    #: The job's main process, the job uuid appended. Empty: the template's ExecStart under
    #: systemd (/usr/bin/solstice job run %i), `solstice job run` from PATH with the process spawner.
    job_command: str = ""
    #: The job unit template turned into transient unit properties (systemd spawner).
    job_template: str = "/usr/share/solstice/units/solstice-job@.service"
    #: MemoryMax = the VM's memory + this (QEMU itself, the job process), MiB.
    memory_overhead: str = "512M"
    #: TasksMax of a job's unit.
    tasks_max: int = 512
    #: RuntimeMaxSec = the job's timeout-minutes + the boot timeout ([vm] boot_timeout or the
    #: profile's, when larger) + this margin (seconds).
    runtime_margin: float = 600.0
    #: Seconds between two looks at the running jobs (and the longest wait for broker events).
    poll_interval: float = 1.0
    #: Take jobs only for labels whose image is present and verified (docs/images.md); false takes
    #: every label's jobs and a job whose image is missing ends as error (stand-in jobs in tests).
    check_images: bool = True

    def validate(self, where: str) -> None:
        if self.capacity < 0:
            raise ConfigError(f"{where}: [dispatcher] capacity must be 0 or more")
        if self.spawner not in ("systemd", "process"):
            raise ConfigError(
                f'{where}: [dispatcher] spawner = {self.spawner!r}: must be "systemd" or "process"'
            )
        if self.tasks_max < 16:
            raise ConfigError(f"{where}: [dispatcher] tasks_max must be at least 16")
        if self.runtime_margin < 0 or not 0 < self.poll_interval <= 30:
            raise ConfigError(
                f"{where}: [dispatcher] runtime_margin must be >= 0 and poll_interval in (0, 30]"
            )
        try:
            parse_size_mib(self.memory_overhead)
        except ValueError as exc:
            raise ConfigError(f"{where}: [dispatcher] memory_overhead: {exc}") from None


@dataclass(frozen=True)
class ForgejoConfig:
    """The Forgejo/Gitea runner, ``solstice forgejo-runner`` (docs/forgejo.md)."""

    #: The registration (runner uuid and token); relative paths are under [paths] state_dir.
    #: Empty: <state_dir>/forgejo-runner/runner.json.
    registration_file: str = ""
    #: At most this many of the forge's tasks in the pipeline at once (queued or running).
    capacity: int = 2
    #: Seconds between two FetchTask calls while there is capacity (the server is contacted at
    #: least this often; at most 30 s so the forge never shows the runner offline).
    fetch_interval: float = 2.0
    #: Seconds between two reports (UpdateLog, UpdateTask) of a running task.
    report_interval: float = 1.0
    #: HTTP timeout of one call to the forge, in seconds (below the unit's WatchdogSec=60s,
    #: since the runner's one thread waits for the answer).
    request_timeout: float = 30.0
    #: The longest wait between two attempts while the forge cannot be reached, in seconds.
    max_backoff: float = 30.0
    #: The RabbitMQ address (reply_to) the jobs' events come back to. Empty: forgejo-<runner uuid>.
    address: str = ""
    #: Stop the job when the forge marks its task failed (the zombie reaper), as Forgejo's runner
    #: does; Gitea's act_runner stops only on a cancel.
    cancel_on_failure: bool = True

    def validate(self, where: str) -> None:
        if self.capacity < 1:
            raise ConfigError(f"{where}: [forgejo] capacity must be 1 or more")
        if not 0.5 <= self.fetch_interval <= 30:
            raise ConfigError(
                f"{where}: [forgejo] fetch_interval = {self.fetch_interval:g}: must be 0.5 to 30 seconds",
                hint="the forge shows a runner offline after a minute without contact",
            )
        if not 0.2 <= self.report_interval <= 30:
            raise ConfigError(f"{where}: [forgejo] report_interval must be 0.2 to 30 seconds")
        if not 0 < self.request_timeout <= 50 or not 1 <= self.max_backoff <= 300:
            raise ConfigError(
                f"{where}: [forgejo] request_timeout must be 0 to 50 seconds (below the unit's "
                "watchdog) and max_backoff 1 to 300 seconds"
            )


@dataclass(frozen=True)
class GithubConfig:
    """The GitHub runner, ``solstice github-runner`` (docs/github.md)."""

    #: The official runner release this runner reports to the broker, which refuses versions
    #: about 30 days after a newer release (protocol §5.2, §12): raise it when the log says
    #: "RunnerVersionTooOld". Empty: the release this Solstice version was tested with.
    runner_version: str = ""
    #: At most this many GitHub jobs in the pipeline at once (queued or running).
    capacity: int = 2
    #: Seconds between two looks at the messages the broker long-poll brought in.
    fetch_interval: float = 1.0
    #: Seconds between two report rounds (step status, finished steps' logs) of a running job.
    report_interval: float = 2.0
    #: HTTP timeout of one short call (renew, results service), in seconds; the long-poll has its own.
    request_timeout: float = 30.0
    #: The longest wait between two attempts while GitHub cannot be reached, in seconds.
    max_backoff: float = 60.0
    #: The RabbitMQ address (reply_to) the jobs' events come back to. Empty: github-<runner id>.
    address: str = ""
    #: Seconds between two renewals of a running job's lease (the official runner: 60, §6.3).
    lease_renewal: float = 60.0

    def validate(self, where: str) -> None:
        if self.runner_version and not re.fullmatch(r"\d+\.\d+\.\d+", self.runner_version):
            raise ConfigError(
                f"{where}: [github] runner_version = {self.runner_version!r}: must look like 2.336.0"
            )
        if self.capacity < 1:
            raise ConfigError(f"{where}: [github] capacity must be 1 or more")
        if not 1 <= self.lease_renewal <= 120:
            raise ConfigError(f"{where}: [github] lease_renewal must be 1 to 120 seconds")
        if not 0.2 <= self.fetch_interval <= 10 or not 0.2 <= self.report_interval <= 30:
            raise ConfigError(
                f"{where}: [github] fetch_interval must be 0.2 to 10 seconds, report_interval 0.2 to 30"
            )
        if not 0 < self.request_timeout <= 50 or not 1 <= self.max_backoff <= 300:
            raise ConfigError(
                f"{where}: [github] request_timeout must be 0 to 50 seconds (below the unit's "
                "watchdog) and max_backoff 1 to 300 seconds"
            )


def _check_size(key: str, cpus: int | None, memory: str | None, disk: str | None) -> None:
    if cpus is not None and cpus < 1:
        raise ConfigError(f"{key} cpus must be at least 1")
    for name, value in (("memory", memory), ("disk", disk)):
        if value is not None:
            try:
                parse_size_mib(value)
            except ValueError as exc:
                raise ConfigError(f"{key} {name}: {exc}") from None


IMAGE_FORMATS = ("qcow2", "raw", "vmdk")
COMPRESSIONS = ("zst", "xz", "gz", "none")
ARCHES = ("x86_64", "aarch64")
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class DebugConfig:
    """Opt-in debug SSH into failed jobs (docs/debug-ssh.md): off unless enabled here."""

    #: Keep the VM of a failed job that asks for it (SOLSTICE_DEBUG_SSH: on-failure).
    enabled: bool = False
    #: Seconds a failed job's VM is kept; counted from the failure, never renewed.
    ttl: float = 1800.0
    #: The host address the kept VM's SSH port listens on (only kept VMs get one).
    address: str = "127.0.0.1"
    #: The host name shown in the log's ssh command. Empty: ``address``.
    host: str = ""
    #: The ports kept VMs listen on: port_min to port_max (open these in the firewall).
    port_min: int = 2200
    port_max: int = 2299
    #: At most this many kept VMs on this host at once (they do not count against capacity).
    max_vms: int = 1
    #: Repositories that may keep VMs, as ``owner/name`` or ``owner/*``. Empty: every repository.
    allow: tuple[str, ...] = ()
    #: "at-once": the job's failure reaches the forge when the step fails; "held": when the
    #: kept VM is gone (the forge shows the job running meanwhile).
    report: str = "at-once"

    def validate(self, where: str) -> None:
        if not 10 <= self.ttl <= 24 * 3600:
            raise ConfigError(f"{where}: [debug] ttl must be 10 seconds to 24 hours")
        if not 1 <= self.port_min <= self.port_max <= 65535:
            raise ConfigError(f"{where}: [debug] port_min..port_max must be a range within 1-65535")
        if self.max_vms < 1:
            raise ConfigError(
                f"{where}: [debug] max_vms must be 1 or more (turn it off with enabled = false)"
            )
        if self.report not in ("at-once", "held"):
            raise ConfigError(f'{where}: [debug] report = {self.report!r}: must be "at-once" or "held"')
        for pattern in self.allow:
            if pattern.count("/") != 1 or not all(pattern.split("/")):
                raise ConfigError(f"{where}: [debug] allow: {pattern!r} is not owner/name or owner/*")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus endpoints (docs/metrics.md): ``HOST:PORT`` per service; empty: off."""

    dispatcher: str = ""
    forgejo_runner: str = ""
    github_runner: str = ""

    def validate(self, where: str) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value.strip():
                try:
                    parse_address(value, f"[metrics] {f.name}")
                except ConfigError as exc:
                    raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None

    def address(self, service: str) -> tuple[str, str]:
        """(address, its key for messages) of ``service``: dispatcher, forgejo or github."""
        name = service if service == "dispatcher" else f"{service}_runner"
        return str(getattr(self, name)), f"[metrics] {name}"


@dataclass(frozen=True)
class PoolLabel:
    """``[pool.<label>]``: the warm pool of one image label (docs/warm-pool.md)."""

    label: str
    #: Booted, never-used VMs to keep ready for this label; 0: no pool.
    size: int = 0
    #: Seconds a ready VM may wait unused; then it is destroyed and a fresh one boots.
    max_age: float = 3600.0

    def validate(self, where: str) -> None:
        if not 0 <= self.size <= 64:
            raise ConfigError(f"{where}: [pool.{self.label}] size must be 0 to 64")
        if not 30 <= self.max_age <= 7 * 24 * 3600:
            raise ConfigError(f"{where}: [pool.{self.label}] max_age must be 30 seconds to 7 days")


@dataclass(frozen=True)
class PoolConfig:
    """The dispatcher's warm pool (docs/warm-pool.md): ``[pool]`` keys, ``[pool.<label>]`` tables."""

    #: The most memory all pool VMs of this host may plan together (their VMs' memory), e.g. "8G".
    memory: str = "8G"
    #: Seconds between a ready VM's own health checks (an SSH no-op); a VM that fails one is
    #: destroyed and replaced.
    health_interval: float = 30.0
    #: ``[pool.<label>]``: size and max_age per image label.
    labels: Mapping[str, PoolLabel] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        try:
            parse_size_mib(self.memory)
        except ValueError as exc:
            raise ConfigError(f"{where}: [pool] memory: {exc}") from None
        if not 1 <= self.health_interval <= 3600:
            raise ConfigError(f"{where}: [pool] health_interval must be 1 to 3600 seconds")

    def size(self, label: str) -> int:
        entry = self.labels.get(label)
        return entry.size if entry is not None else 0


@dataclass(frozen=True)
class ImageConfig:
    """One ``runs-on`` label: which disk to boot, how, and which guest profile it has; for a
    published image also where it comes from and how it is checked (docs/images.md)."""

    label: str
    #: The base disk (qcow2, raw or vmdk); relative paths are under <state_dir>/images. Empty with a
    #: ``source``: ``<label>/disk.<format>`` (where ``solstice image pull`` puts it).
    path: str = ""
    profile: str = "debian"
    boot: str = "bios"  # bios | uefi | kernel
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    format: str = "qcow2"
    #: The image's default size (unset: [vm] cpus/memory); a job's explicit size wins over it.
    cpus: int | None = None
    memory: str | None = None
    #: Grow each job's overlay to this size (e.g. "20G", whole GiB, rounded up); unset: the base's.
    disk: str | None = None
    aliases: tuple[str, ...] = ()
    #: A size preset ([sizes.<name>]) for cpus, memory and disk; the keys above win over it.
    size: str = ""
    #: Where ``solstice image pull`` gets it: an https URL, a file path, or ``oci://registry/repo:tag``.
    source: str = ""
    #: The sha256 of the file at ``source`` (as published, before decompression).
    sha256: str = ""
    #: A checksum file (SHA256SUMS, SHA512SUMS, BSD ``SHA256 (file) = ...``, a bare digest) that
    #: lists the file at ``source``; used when ``sha256`` is not given. ``{source}`` in it stands
    #: for the source's URL (after a ``*`` in its file name picked the newest match).
    checksums: str = ""
    #: How the file at ``source`` is compressed: zst, xz, gz or none; empty: from its name.
    compression: str = ""
    arch: str = "x86_64"
    #: What ``solstice image list`` shows as the OS, e.g. "OmniOS r151058".
    os: str = ""
    #: Whether and where this entry was booted: "booted on <host> <date>" or "not verified: ...".
    verified: str = ""
    #: Commands run as root by ``solstice image prepare``; jobs then boot the prepared image.
    setup: tuple[str, ...] = ()

    def validate(self, where: str) -> None:
        key = f"[images.{self.label}]"
        if self.boot not in ("bios", "uefi", "kernel"):
            raise ConfigError(f"{where}: {key} boot = {self.boot!r}: must be bios, uefi or kernel")
        if self.boot == "kernel" and not self.kernel:
            raise ConfigError(f'{where}: {key} boot = "kernel" needs kernel = "<path>"')
        if self.format not in IMAGE_FORMATS:
            raise ConfigError(f"{where}: {key} format = {self.format!r}: must be qcow2, raw or vmdk")
        if not self.path and not self.source:
            raise ConfigError(
                f"{where}: {key} needs path (a disk on this host) or source (where to pull it from)"
            )
        _check_size(f"{where}: {key}", self.cpus, self.memory, self.disk)
        if any(not isinstance(c, str) or not c.strip() for c in self.setup):
            raise ConfigError(f"{where}: {key} setup must be a list of non-empty command strings")
        if self.compression and self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"{where}: {key} compression = {self.compression!r}: must be zst, xz, gz or none"
            )
        if self.arch not in ARCHES:
            raise ConfigError(f"{where}: {key} arch = {self.arch!r}: must be one of {', '.join(ARCHES)}")
        if self.sha256 and not (len(self.sha256) == 64 and _HEX.fullmatch(self.sha256)):
            raise ConfigError(f"{where}: {key} sha256 = {self.sha256!r}: must be 64 lowercase hex digits")
        if self.checksums and not self.source:
            raise ConfigError(f"{where}: {key} checksums needs a source (the file it lists)")
        if self.source and not self.source.startswith("oci://") and not (self.sha256 or self.checksums):
            raise ConfigError(
                f"{where}: {key} source needs sha256 or checksums: a pulled image is verified before use",
                hint="an oci:// source is verified by its blob digest and needs neither",
            )
        if self.source and not self.source.startswith(("https://", "http://", "oci://", "file://", "/")):
            raise ConfigError(
                f"{where}: {key} source = {self.source!r}: must be an https:// URL, an absolute "
                "file path (or file:// URL) or oci://registry/repository:tag"
            )
        if "*" in self.source and not (self.source.startswith(("https://", "http://")) and self.checksums):
            raise ConfigError(
                f"{where}: {key} source = {self.source!r}: a * pattern needs an http(s) source and "
                'checksums (e.g. "{source}.sha256"): a moving file cannot have a pinned sha256'
            )
        if "*" in self.source.rsplit("/", 1)[0]:
            raise ConfigError(f"{where}: {key} source: a * may only be in the file name")
        if self.checksums and not self.checksums.startswith(
            ("https://", "http://", "file://", "/", "{source}")
        ):
            raise ConfigError(f"{where}: {key} checksums = {self.checksums!r}: must be a URL or a file path")


@dataclass(frozen=True)
class SizePreset:
    """``[sizes.<name>]``: a named default size an image can take with ``size = "<name>"``."""

    name: str
    cpus: int | None = None
    memory: str | None = None
    disk: str | None = None

    def validate(self, where: str) -> None:
        _check_size(f"{where}: [sizes.{self.name}]", self.cpus, self.memory, self.disk)


@dataclass(frozen=True)
class Config:
    vm: VMConfig = field(default_factory=VMConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    forgejo: ForgejoConfig = field(default_factory=ForgejoConfig)
    github: GithubConfig = field(default_factory=GithubConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    images: Mapping[str, ImageConfig] = field(default_factory=dict)
    #: ``[sizes.<name>]``: size presets for images (more are built in and in [paths] images_d).
    sizes: Mapping[str, SizePreset] = field(default_factory=dict)
    #: ``[labels]``: more runs-on labels -> an image label (``ubuntu-latest = "debian-12"``), so
    #: workflows written for GitHub-hosted runners run unchanged; resolved like an image's aliases.
    labels: Mapping[str, str] = field(default_factory=dict)
    source: str = "built-in defaults"  # where it was loaded from, for messages
    #: The file given with --config or SOLSTICE_CONFIG (absolute); None: the default place. The
    #: processes a command starts (job processes) are given it, so they read the same file.
    path: Path | None = None


_SECTIONS: dict[str, type[Any]] = {
    "vm": VMConfig,
    "paths": PathsConfig,
    "broker": BrokerConfig,
    "database": DatabaseConfig,
    "secrets": SecretsConfig,
    "dispatcher": DispatcherConfig,
    "forgejo": ForgejoConfig,
    "github": GithubConfig,
    "debug": DebugConfig,
    "metrics": MetricsConfig,
    "pool": PoolConfig,
}


def _coerce(tp: Any, value: Any, key: str, where: str) -> Any:
    """Check (and for env overrides, convert from text) a value against a field type."""
    from_env = isinstance(value, str) and where.startswith("environment")
    tp_args = typing.get_args(tp)
    if type(None) in tp_args:
        if value is None:
            return None
        tp = next(a for a in tp_args if a is not type(None))
    try:
        if tp is bool:
            if from_env:
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
            if isinstance(value, bool):
                return value
            raise ValueError("expected true or false")
        if tp is int:
            if from_env:
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise ValueError("expected an integer")
        if tp is float:
            if from_env:
                return float(value)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            raise ValueError("expected a number")
        if tp is str:
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)  # sizes like memory = 2048
            if isinstance(value, str):
                return value
            raise ValueError("expected a string")
        if typing.get_origin(tp) is tuple:
            if from_env:
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError("expected a list of strings")
    except ValueError as exc:
        raise ConfigError(f"{where}: {key} = {value!r}: {exc}") from None
    raise ConfigError(f"{where}: {key}: unsupported type")


def _fields_of(obj: Any) -> dict[str, Any]:
    """A section's keys as set (not [pool]'s label tables, which are no key of it)."""
    skip = "labels" if isinstance(obj, PoolConfig) else ""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != skip}


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str, where: str, **extra: Any) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - set(extra)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {prefix}{unknown[0]}",
            hint=f"known keys in this table: {', '.join(sorted(names))}",
        )
    kwargs = {k: _coerce(hints[k], v, f"{prefix}{k}", where) for k, v in data.items()}
    try:
        return cls(**kwargs, **extra)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{where}: {prefix.rstrip('.')}: {exc}") from None


#: The systemd credentials (``LoadCredential=ID:FILE``) that hold a section's URL, by section.
URL_CREDENTIALS = {"broker": "broker-url", "database": "database-url"}


def _url_from_files(obj: Any, section: str, environ: Mapping[str, str], where: str) -> Any:
    """``obj`` with ``url`` read from its credential (``$CREDENTIALS_DIRECTORY/<id>``) or from
    ``url_file``, in that order, so a password never has to be on a command line or in the
    configuration file itself."""
    creds = environ.get("CREDENTIALS_DIRECTORY")
    credential = Path(creds) / URL_CREDENTIALS[section] if creds else None
    if credential is not None and credential.is_file():
        source, what = credential, f"the systemd credential {URL_CREDENTIALS[section]}"
    elif obj.url_file:
        source, what = Path(obj.url_file), f"[{section}] url_file = {obj.url_file!r}"
    else:
        return obj
    try:
        url = source.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{where}: {what}: cannot read {source}: {exc.strerror}",
            hint="the file must be readable by the service's user (or be a LoadCredential= source)",
        ) from None
    if not url or "\n" in url:
        raise ConfigError(f"{where}: {what}: {source} must hold one URL on one line")
    return dataclasses.replace(obj, url=url)


def _labels(raw: Any, where: str) -> dict[str, str]:
    """``[labels]``: each key a runs-on label, each value the image label it runs on."""
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: [labels] must be a table of label = "image label"')
    out: dict[str, str] = {}
    for label, target in raw.items():
        key = f"[labels] {label}"
        if not isinstance(target, str) or not target.strip():
            raise ConfigError(
                f'{where}: {key} = {target!r}: expected the label of an image, such as "debian-12"'
            )
        if target in raw:
            raise ConfigError(
                f"{where}: {key} = {target!r}: {target!r} is itself a [labels] key; name an image label"
            )
        out[label] = target.strip()
    return out


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the configuration file (``path``, else the default if it exists) and the environment."""
    environ = os.environ if environ is None else environ
    explicit = path is not None or "SOLSTICE_CONFIG" in environ
    if path is None:
        path = Path(environ.get("SOLSTICE_CONFIG", DEFAULT_PATH))
    raw: dict[str, Any] = {}
    where = str(path)
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    elif explicit:
        raise ConfigError(f"{path}: no such configuration file")
    else:
        where = "built-in defaults"

    unknown = sorted(set(raw) - set(_SECTIONS) - {"images", "labels", "sizes"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown table [{unknown[0]}]",
            hint=f"known tables: {', '.join(sorted([*_SECTIONS, 'images', 'labels', 'sizes']))}",
        )
    sections: dict[str, dict[str, Any]] = {}
    for name in _SECTIONS:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{name}] must be a table")
        sections[name] = dict(value)
    # [pool.<label>] tables sit beside [pool]'s own keys.
    pool_tables = {k: v for k, v in sections["pool"].items() if isinstance(v, dict)}
    sections["pool"] = {k: v for k, v in sections["pool"].items() if k not in pool_tables}
    if "labels" in sections["pool"]:
        raise ConfigError(f"{where}: [pool] labels: give each label a table, [pool.<label>] size = N")

    # Environment overrides: SOLSTICE_<SECTION>_<KEY>, one per scalar key.
    overridden: dict[str, str] = {}
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX) or var == "SOLSTICE_CONFIG":
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section in _SECTIONS and key:
            sections[section][key] = text
            overridden[f"{section}.{key}"] = var

    built: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        data = sections[name]
        env_keys = {k for k in data if f"{name}.{k}" in overridden}
        file_part = {k: v for k, v in data.items() if k not in env_keys}
        obj = _build(cls, file_part, f"[{name}] ", where)
        for k in env_keys:
            obj = _build(
                cls,
                {**_fields_of(obj), k: data[k]},
                f"[{name}] ",
                f"environment variable {overridden[f'{name}.{k}']}",
            )
        built[name] = _url_from_files(obj, name, environ, where) if name in URL_CREDENTIALS else obj
    built["vm"].validate(where)
    built["dispatcher"].validate(where)
    built["forgejo"].validate(where)
    built["github"].validate(where)
    built["debug"].validate(where)
    built["metrics"].validate(where)
    built["pool"] = dataclasses.replace(built["pool"], labels=pool_label_tables(pool_tables, where))
    built["pool"].validate(where)

    images = image_tables(raw.get("images", {}), where)
    sizes = size_tables(raw.get("sizes", {}), where)
    return Config(
        labels=_labels(raw.get("labels", {}), where),
        vm=built["vm"],
        paths=built["paths"],
        broker=built["broker"],
        database=built["database"],
        secrets=built["secrets"],
        dispatcher=built["dispatcher"],
        forgejo=built["forgejo"],
        github=built["github"],
        debug=built["debug"],
        metrics=built["metrics"],
        pool=built["pool"],
        images=images,
        sizes=sizes,
        source=where,
        path=path.absolute() if explicit else None,
    )


def _tables(raw: Any, name: str, where: str) -> dict[str, dict[str, Any]]:
    example = {"images": "[images.debian-12]", "sizes": "[sizes.large]", "pool": "[pool.debian-12]"}[name]
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [{name}] must hold tables like {example}")
    out: dict[str, dict[str, Any]] = {}
    for label, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [{name}.{label}] must be a table")
        nested = [k for k, v in table.items() if isinstance(v, dict)]
        if nested:
            # TOML splits [images.ubuntu-24.04] at the dot; the label must be quoted.
            raise ConfigError(
                f"{where}: [{name}.{label}.{nested[0]}] is not an image table"
                if name == "images"
                else f"{where}: [{name}.{label}.{nested[0]}] is not a {name} table",
                hint=f'quote names that contain dots: [{name}."{label}.{nested[0]}"]',
            )
        out[label] = table
    return out


def _named_tables(cls: type[Any], field_name: str, raw: Any, name: str, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, table in _tables(raw, name, where).items():
        obj = _build(cls, table, f"[{name}.{key}] ", where, **{field_name: key})
        obj.validate(where)
        out[key] = obj
    return out


def image_tables(raw: Any, where: str) -> dict[str, ImageConfig]:
    """``[images.<label>]`` tables (of solstice.toml, an images.d file or the built-in catalog)."""
    return _named_tables(ImageConfig, "label", raw, "images", where)


def size_tables(raw: Any, where: str) -> dict[str, SizePreset]:
    """``[sizes.<name>]`` tables: cpus, memory, disk."""
    return _named_tables(SizePreset, "name", raw, "sizes", where)


def pool_label_tables(raw: Any, where: str) -> dict[str, PoolLabel]:
    """``[pool.<label>]`` tables: size, max_age."""
    return _named_tables(PoolLabel, "label", raw, "pool", where)
