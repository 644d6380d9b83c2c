"""Check this host for running jobs: KVM, QEMU, OVMF, RabbitMQ, PostgreSQL, key, images, room, forges.

Prints one row per check (ok, warn or FAIL) and, under each one that is not ok, how to fix it. Exit
status 1 when something blocks jobs (a FAIL), 0 otherwise (warnings do not block). Nothing is
changed: the broker gets a login and nothing else, the database a read of its schema version.
See docs/install.md "Checking the host".
"""

from __future__ import annotations

import argparse
import enum
import grp
import pwd
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from solstice import config as configmod
from solstice import proc
from solstice import secrets as secretsmod
from solstice.cli.db import add_config_argument
from solstice.config import Config, parse_size_mib
from solstice.errors import SolsticeError
from solstice.images import plan_machine
from solstice.images.catalog import Catalog
from solstice.images.catalog_files import BUILTIN
from solstice.images.state import readiness
from solstice.model import Size

#: The floors the packages are tested with (Debian bookworm's versions).
QEMU_FLOOR = (7, 2)
#: A job's overlay and seed live in its runtime directory; room for this much per job.
RUNTIME_PER_JOB_MIB = 1024
USER = "solstice"


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"  # blocks jobs
    UNKNOWN = "unknown"  # not checked (yet); does not block


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "--user",
        default=USER,
        help=f"the user whose KVM access is checked, the one the job units run as (default {USER})",
    )


# --- the checks ---------------------------------------------------------------------------------


def check_accel(cfg: Config, user: str) -> Check:
    if cfg.vm.accel == "tcg":
        return Check(
            "accelerator", Status.OK, "tcg, chosen in [vm] accel (software emulation: slow, no KVM)"
        )
    kvm = Path("/dev/kvm")
    to_tcg = 'or, where KVM cannot work (nested virtualisation), set [vm] accel = "tcg"'
    if not kvm.exists():
        return Check(
            "accelerator",
            Status.FAIL,
            "kvm in [vm] accel, but /dev/kvm does not exist",
            f"enable virtualisation in the firmware and load kvm_intel or kvm_amd, {to_tcg}",
        )
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return Check(
            "accelerator",
            Status.FAIL,
            f"no user {user!r}, whom the job units run as",
            "systemd-sysusers solstice.conf (the packages do it), or pass --user",
        )
    st = kvm.stat()
    groups = {g.gr_gid for g in grp.getgrall() if user in g.gr_mem} | {account.pw_gid}
    usable = (
        account.pw_uid == 0
        or (st.st_uid == account.pw_uid and st.st_mode & 0o600 == 0o600)
        or (st.st_gid in groups and st.st_mode & 0o060 == 0o060)
        or st.st_mode & 0o006 == 0o006
    )
    if not usable:
        group = grp.getgrgid(st.st_gid).gr_name
        return Check(
            "accelerator",
            Status.FAIL,
            f"kvm in [vm] accel, but user {user} cannot open /dev/kvm (group {group}, "
            f"mode {oct(st.st_mode & 0o777)})",
            f"usermod -aG {group} {user}, {to_tcg}",
        )
    return Check("accelerator", Status.OK, f"kvm: /dev/kvm usable by user {user}")


def _version(argv: list[str]) -> str | None:
    try:
        out = proc.run(argv, timeout=30).stdout.decode(errors="replace")
    except SolsticeError:
        return None
    match = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    return match.group(1) if match else out.strip().splitlines()[0] if out.strip() else "?"


def check_qemu(cfg: Config) -> Iterator[Check]:
    for name, binary, package in (
        ("qemu", cfg.vm.qemu, "qemu-system-x86"),
        ("qemu-img", cfg.vm.qemu_img, "qemu-utils"),
    ):
        version = _version([binary, "--version"])
        if version is None:
            yield Check(
                name,
                Status.FAIL,
                f"{binary} does not run",
                f"apt install {package} (or set [vm] {name.replace('-', '_')})",
            )
            continue
        numbers = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
        if numbers and numbers < QEMU_FLOOR:
            floor = ".".join(map(str, QEMU_FLOOR))
            yield Check(
                name,
                Status.WARN,
                f"{binary} {version}, older than {floor}",
                f"upgrade {package} to {floor} or later",
            )
        else:
            yield Check(name, Status.OK, f"{binary} {version}")


def _package_version(package: str) -> str | None:
    if shutil.which("dpkg-query") is None:
        return None
    try:
        out = proc.run(["dpkg-query", "-W", "-f=${Version}", package], timeout=30).stdout.decode()
    except SolsticeError:
        return None
    return out.strip() or None


def check_ovmf(cfg: Config, catalog: Catalog) -> Check:
    missing = [p for p in (cfg.vm.ovmf_code, cfg.vm.ovmf_vars) if not Path(p).is_file()]
    uefi = sorted(label for label in _served_labels(cfg, catalog)[0] if _boot(catalog, label) == "uefi")
    if missing:
        status = Status.FAIL if uefi else Status.WARN
        used = f"needed by {', '.join(uefi)}" if uefi else "no configured image boots with UEFI"
        return Check(
            "ovmf",
            status,
            f"{', '.join(missing)} missing ({used})",
            "apt install ovmf (or set [vm] ovmf_code and ovmf_vars)",
        )
    version = _package_version("ovmf")
    return Check("ovmf", Status.OK, f"{cfg.vm.ovmf_code}" + (f" (ovmf {version})" if version else ""))


def check_broker(cfg: Config) -> Check:
    import pika  # type: ignore[import-untyped,unused-ignore]

    from solstice.queue.connection import describe_url

    where = describe_url(cfg.broker.url)
    try:
        params = pika.URLParameters(cfg.broker.url)
    except Exception as exc:  # pika raises assorted errors for bad URLs
        return Check(
            "rabbitmq",
            Status.FAIL,
            f"[broker] url is not an AMQP URL ({type(exc).__name__})",
            "e.g. amqp://solstice:PASSWORD@127.0.0.1:5672/%2F",
        )
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 5
    try:
        conn = pika.BlockingConnection(params)
    except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.ProbableAccessDeniedError) as exc:
        return Check(
            "rabbitmq",
            Status.FAIL,
            f"RabbitMQ at {where} refused the login ({type(exc).__name__})",
            "check the user, password and vhost in [broker] url (rabbitmqctl add_user / set_permissions)",
        )
    except pika.exceptions.AMQPError as exc:
        return Check(
            "rabbitmq",
            Status.FAIL,
            f"RabbitMQ at {where} is not reachable ({type(exc).__name__})",
            "systemctl start rabbitmq-server, or correct the host and port in [broker] url",
        )
    try:
        version = conn._impl.server_properties.get("version", b"?")
    except AttributeError:
        version = b"?"
    finally:
        conn.close()
    version = version.decode() if isinstance(version, bytes) else str(version)
    return Check("rabbitmq", Status.OK, f"{where}, RabbitMQ {version}, login accepted")


def check_database(cfg: Config) -> Iterator[Check]:
    from solstice.store import Store, describe

    where = describe(cfg.database.url)
    try:
        with Store.connect(cfg.database, application_name="solstice-doctor") as store:
            status = store.schema_status()
    except SolsticeError as exc:
        yield Check(
            "postgresql",
            Status.FAIL,
            str(exc),
            "start postgresql, create the role and database (docs/install.md), and check [database] url",
        )
        yield Check("database schema", Status.UNKNOWN, "not checked: no database")
        return
    yield Check("postgresql", Status.OK, f"{where} answers")
    if status.newer_than_code:
        yield Check(
            "database schema",
            Status.FAIL,
            f"version {status.version} is newer than this Solstice ({status.latest})",
            "upgrade solstice-ci on this host",
        )
    elif not status.up_to_date:
        yield Check(
            "database schema",
            Status.FAIL,
            f"version {status.version}, {len(status.pending)} migration(s) pending",
            "solstice db migrate",
        )
    else:
        yield Check("database schema", Status.OK, f"version {status.version}, up to date")


def check_key(cfg: Config) -> Check:
    path = secretsmod.key_path(cfg.secrets.key_file)
    try:
        secretsmod.load_key(path)
    except SolsticeError as exc:
        init = "solstice secrets init" + (
            "" if path == secretsmod.DEFAULT_KEY_FILE else f" --key-file {path}"
        )
        return Check(
            "secrets key",
            Status.FAIL,
            str(exc),
            f"{init} on the first host; copy the same key to the others (root:root 0600)",
        )
    return Check("secrets key", Status.OK, f"{path}")


def _served_labels(cfg: Config, catalog: Catalog) -> tuple[list[str], bool]:
    """The images this host's dispatcher may take jobs for, and whether the operator named them
    ([dispatcher] labels: each must be usable) or they are the whole catalog (absent ones are
    skipped by the dispatcher, so they only warn)."""
    labels = cfg.dispatcher.labels or catalog.served_labels()
    return sorted({catalog.canonical(label) or label for label in labels}), bool(cfg.dispatcher.labels)


def _boot(catalog: Catalog, label: str) -> str | None:
    try:
        return catalog.get(label).boot.value
    except SolsticeError:
        return None


def image_status(catalog: Catalog, label: str, required: bool = True) -> Check:
    """One label's image: present and verified, by the rule the dispatcher applies
    (solstice.images.state.readiness; docs/images.md "How the dispatcher decides")."""
    name = f"image {label}"
    try:
        image = catalog.get(label)
    except SolsticeError as exc:
        return Check(name, Status.FAIL, str(exc), exc.hint or "check [images] in the configuration")
    ready = readiness(image)
    if ready.ready:
        return Check(name, Status.OK, ready.reason)
    fix = (
        f"solstice image pull {label}"
        if not ready.present and image.config is not None and image.config.source
        else f"solstice image verify {label}"
        if ready.present
        else "see docs/images.md"
    )
    return Check(name, Status.FAIL if required else Status.WARN, ready.reason, fix)


def _built_in(catalog: Catalog, label: str) -> bool:
    """An entry of the built-in catalog the operator may never pull (theirs must be usable)."""
    try:
        return catalog.get(label).origin in (BUILTIN, "the built-in test image")
    except SolsticeError:
        return False


def check_images(cfg: Config, catalog: Catalog) -> list[Check]:
    labels, named = _served_labels(cfg, catalog)
    if named:
        return [image_status(catalog, label) for label in labels]
    # The whole catalog: the dispatcher skips what is not usable, so built-in entries only warn
    # (the operator's own must be usable), and those nobody pulled are one line, not one each.
    checks = [image_status(catalog, label, required=not _built_in(catalog, label)) for label in labels]
    absent = [c for c in checks if c.status is Status.WARN and "does not exist" in c.detail]
    shown = [c for c in checks if c not in absent]
    if absent:
        names = ", ".join(c.name.removeprefix("image ") for c in absent)
        shown.append(
            Check("images absent", Status.WARN, f"not on this host: {names}", "solstice image pull LABEL")
        )
    if not any(c.status is Status.OK for c in checks):
        shown.append(
            Check(
                "images",
                Status.FAIL,
                "no image of the catalog is present and verified: the dispatcher takes no jobs",
                "solstice image pull LABEL (`solstice image list` shows the catalog)",
            )
        )
    return shown


def check_room(cfg: Config, catalog: Catalog) -> Iterator[Check]:
    capacity = cfg.dispatcher.capacity
    sizes = [parse_size_mib(cfg.vm.memory)]
    for label in _served_labels(cfg, catalog)[0]:
        try:
            image = catalog.get(label)
        except SolsticeError:
            continue
        if image.memory_mib:
            sizes.append(image.memory_mib)
    per_job = max(sizes) + parse_size_mib(cfg.dispatcher.memory_overhead)
    need = capacity * per_job
    total, available = _meminfo()
    what = f"{capacity} job(s) x {per_job} MiB (the largest VM + [dispatcher] memory_overhead) = {need} MiB"
    lower = "lower [dispatcher] capacity or the VMs' memory ([vm] memory, [images.<label>] memory)"
    if need > total:
        yield Check("memory", Status.FAIL, f"{what}; the host has {total} MiB", lower)
    elif need > available:
        yield Check("memory", Status.WARN, f"{what}; {available} MiB available now", lower)
    else:
        yield Check("memory", Status.OK, f"{what}; {available} MiB available")

    runtime = _existing(Path(cfg.paths.runtime_dir))
    free = shutil.disk_usage(runtime).free // 2**20
    need_disk = capacity * RUNTIME_PER_JOB_MIB
    if free < need_disk:
        yield Check(
            "disk (runtime)",
            Status.FAIL,
            f"{free} MiB free in {runtime}; {capacity} job(s) need {need_disk} MiB for overlays and seeds",
            "free space there, or lower [dispatcher] capacity",
        )
    else:
        yield Check(
            "disk (runtime)",
            Status.OK,
            f"{free} MiB free in {runtime} ({need_disk} MiB for {capacity} job(s))",
        )
    images = _existing(cfg.paths.images_dir)
    yield Check(
        "disk (images)", Status.OK, f"{shutil.disk_usage(images).free // 2**20} MiB free in {images}"
    )


def check_pool(cfg: Config, catalog: Catalog) -> Iterator[Check]:
    """The warm pool ([pool.<label>]): served labels, and whether capacity and [pool] memory let it
    fill. Nothing when no label has a pool."""
    pooled = {label: e.size for label, e in cfg.pool.labels.items() if e.size > 0}
    if not pooled:
        return
    served = set(_served_labels(cfg, catalog)[0])
    budget = parse_size_mib(cfg.pool.memory)
    memory = 0
    for label, size in sorted(pooled.items()):
        if label not in served:
            yield Check(
                f"pool {label}",
                Status.WARN,
                "not a label this host serves: no warm VMs for it",
                "add the label to [dispatcher] labels, or pull its image",
            )
            continue
        try:
            memory += size * plan_machine(Size(), catalog.get(label), cfg.vm).memory_mib
        except SolsticeError as exc:
            yield Check(f"pool {label}", Status.FAIL, str(exc), exc.hint or "")
    total = sum(pooled.values())
    what = f"{total} warm VM(s), {memory} MiB planned; [pool] memory {budget} MiB"
    if cfg.dispatcher.spawner == "systemd" and not Path(cfg.paths.runtime_dir).is_relative_to("/run"):
        yield Check(
            "pool units",
            Status.FAIL,
            f"[paths] runtime_dir = {cfg.paths.runtime_dir!r}: keeper units need it under /run",
            "use the default /run/solstice",
        )
    if memory > budget:
        yield Check(
            "pool", Status.WARN, f"{what}: the pool cannot fill", "raise [pool] memory or lower the sizes"
        )
    elif total >= cfg.dispatcher.capacity:
        yield Check(
            "pool",
            Status.WARN,
            f"{what}; capacity {cfg.dispatcher.capacity}: the pool takes every place while no job runs "
            "(each job then destroys a pool VM it does not take)",
            "keep the pool smaller than [dispatcher] capacity",
        )
    else:
        yield Check("pool", Status.OK, f"{what}; capacity {cfg.dispatcher.capacity}")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _meminfo() -> tuple[int, int]:
    """MemTotal and MemAvailable, MiB."""
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) // 1024
    return values["MemTotal"], values.get("MemAvailable", values["MemTotal"])


def _answers(url: str) -> str | None:
    """None when an HTTP server answers at ``url`` (any status), else why not."""
    import requests

    try:
        requests.get(url, timeout=10, allow_redirects=False).close()
    except requests.RequestException as exc:
        return type(exc).__name__
    return None


def check_forges(cfg: Config) -> Iterator[Check]:
    from solstice.forges.forgejo import registration as forgejo
    from solstice.forges.github import registration as github

    found = False
    forgejo_path = forgejo.default_path(cfg.paths.state_dir, cfg.forgejo.registration_file)
    github_path = github.default_path(cfg.paths.state_dir)

    def forgejo_reg(path: Path) -> tuple[str, str]:
        reg = forgejo.load(path)
        return reg.name, reg.address

    def github_reg(path: Path) -> tuple[str, str]:
        settings = github.load(path).settings
        return settings.agent_name, settings.server_url_v2 or settings.github_url

    loaders: list[tuple[str, Path, Callable[[Path], tuple[str, str]], str]] = [
        ("forgejo", forgejo_path, forgejo_reg, "solstice-forgejo-runner"),
        ("github", github_path, github_reg, "solstice-github-runner"),
    ]
    for forge, path, load, unit in loaders:
        if not path.exists():
            continue
        found = True
        try:
            name, url = load(path)
        except SolsticeError as exc:
            yield Check(
                f"{forge} runner",
                Status.FAIL,
                str(exc),
                exc.hint or f"solstice {forge}-runner register --force ...",
            )
            continue
        why = _answers(url)
        if why:
            yield Check(
                f"{forge} runner",
                Status.FAIL,
                f"runner {name!r}: {url} does not answer ({why})",
                f"check the network and the forge; `journalctl -u {unit}`",
            )
        else:
            yield Check(f"{forge} runner", Status.OK, f"runner {name!r} registered; {url} answers")
    if not found:
        yield Check(
            "forges",
            Status.WARN,
            "no forge registration: only `solstice submit` brings jobs",
            "solstice forgejo-runner register ... or solstice github-runner register ... (docs/install.md)",
        )


def run_checks(cfg: Config, user: str) -> list[Check]:
    catalog = Catalog.from_config(cfg)
    checks = [check_accel(cfg, user), *check_qemu(cfg), check_ovmf(cfg, catalog), check_broker(cfg)]
    checks += [*check_database(cfg), check_key(cfg)]
    checks += check_images(cfg, catalog)
    checks += [*check_room(cfg, catalog), *check_pool(cfg, catalog), *check_forges(cfg)]
    return checks


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  {'status':<7}  detail"]
    for c in checks:
        lines.append(f"{c.name:<{width}}  {c.status.value:<7}  {c.detail}")
        if c.fix and c.status is not Status.OK:
            lines.append(f"{'':<{width}}  {'':<7}  fix: {c.fix}")
    failed = [c.name for c in checks if c.status is Status.FAIL]
    if failed:
        lines.append(f"\n{len(failed)} problem(s) block jobs: {', '.join(failed)}")
    else:
        lines.append("\nnothing blocks jobs on this host")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    path = getattr(args, "config", None)
    cfg = configmod.load(Path(path) if path else None)
    checks = run_checks(cfg, args.user)
    print(render(checks))
    sys.stdout.flush()
    return 1 if any(c.status is Status.FAIL for c in checks) else 0
