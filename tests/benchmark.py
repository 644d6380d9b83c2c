"""What the benchmark scripts share (scripts/bench, scripts/bench-vm, scripts/bench-pipeline):
percentiles, the end-to-end benchmark's phases from recorded timestamps, the QEMU name/port
collision check, the bare-QEMU baseline, and a private broker namespace and database.

Numbers only; nothing here asserts a target (docs/performance.md).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pika
import psycopg
from psycopg import sql

from solstice.config import BrokerConfig, DatabaseConfig
from solstice.queue import Names
from solstice.store import Store

#: The phases scripts/bench reports, in order (docs/performance.md "End to end").
PHASES = ("queue", "take_or_boot", "first_output", "log_latency", "teardown", "total", "host_overhead")


def pct(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``th percentile (0-100) of a non-empty sequence."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def p50_p95(values: Sequence[float]) -> tuple[float, float]:
    return statistics.median(values), pct(values, 95)


@dataclass(frozen=True)
class JobTimes:
    """One job's timestamps, all host ``time.time()`` seconds.

    ``handed_over``: the fake forge created the task (its FetchTask answer); ``accepted``: the
    dispatcher's ``accepted_at``; ``boot``..``done``: the job's phase events; ``step_seconds``:
    the sum over steps of step started -> finished (the guest's own work, as bench-vm counts it);
    ``first_output``: arrival at the forge of the first row of the first step; ``finished``:
    arrival at the forge of the final state; ``line_delays``: for each timed line, arrival at the
    forge less the time the job process read it from the guest (the row's time)."""

    handed_over: float
    accepted: float
    boot: float
    ready: float
    teardown: float
    done: float
    step_seconds: float
    first_output: float
    finished: float
    line_delays: tuple[float, ...] = ()


def phases(t: JobTimes) -> dict[str, float]:
    """Per-job phase durations in seconds (log latency is pooled per line: ``line_delays``)."""
    total = t.finished - t.handed_over
    boot = t.ready - t.boot
    return {
        "queue": t.accepted - t.handed_over,
        "take_or_boot": boot,
        "first_output": t.first_output - t.handed_over,
        "teardown": t.done - t.teardown,
        "total": total,
        # What Solstice adds on the host: everything but the guest's boot and the steps' own run.
        "host_overhead": total - boot - t.step_seconds,
    }


def summarize(jobs: Sequence[JobTimes]) -> dict[str, tuple[float, float]]:
    """p50 and p95 of every phase over ``jobs``; log latency over all their timed lines."""
    per_job = [phases(j) for j in jobs]
    out = {k: p50_p95([p[k] for p in per_job]) for k in per_job[0]}
    lines = [d for j in jobs for d in j.line_delays]
    if lines:
        out["log_latency"] = p50_p95(lines)
    return {k: out[k] for k in PHASES if k in out}


def clock_offset(pairs: Iterable[tuple[float, float]]) -> float:
    """The guest clock's offset from the host, estimated from (guest timestamp, host time the
    line was read) pairs: the smallest difference, i.e. the least-delayed line taken as instant.
    Positive: the guest is behind. An upper bound on the true offset by that line's transit."""
    return min(host - guest for guest, host in pairs)


@dataclass(frozen=True)
class QemuSample:
    """One QEMU process seen at one moment: its -name and its SSH forward's host port."""

    moment: int
    pid: int
    name: str
    port: int


_HOSTFWD = re.compile(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22")


def parse_qemu(cmdline: Sequence[str]) -> tuple[str, int] | None:
    """(-name, forwarded SSH port) of a QEMU command line, or None if it is not a job VM's."""
    if "-name" not in cmdline:
        return None
    name = cmdline[cmdline.index("-name") + 1]
    port = next((int(m.group(1)) for a in cmdline if (m := _HOSTFWD.search(a))), None)
    return (name, port) if port is not None else None


def qemu_processes(marker: str) -> list[tuple[int, str, int]]:
    """(pid, name, port) of the running QEMU processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu" not in raw or marker.encode() not in raw:
            continue
        parsed = parse_qemu([a.decode(errors="replace") for a in raw.split(b"\0")])
        if parsed is not None:
            found.append((int(entry.name), *parsed))
    return found


def collisions(samples: Iterable[QemuSample]) -> list[str]:
    """What collided: two live QEMU processes with one SSH port at one moment, or one -name used
    by two processes at any time (names carry the job's uuid). Empty when there was none."""
    problems = []
    by_moment: dict[int, list[QemuSample]] = {}
    pids_of_name: dict[str, set[int]] = {}
    for s in samples:
        by_moment.setdefault(s.moment, []).append(s)
        pids_of_name.setdefault(s.name, set()).add(s.pid)
    for moment, live in sorted(by_moment.items()):
        ports: dict[int, int] = {}
        for s in live:
            if s.port in ports and ports[s.port] != s.pid:
                problems.append(f"port {s.port}: pids {ports[s.port]} and {s.pid} (sample {moment})")
            ports[s.port] = s.pid
    for name, pids in sorted(pids_of_name.items()):
        if len(pids) > 1:
            problems.append(f"name {name}: pids {sorted(pids)}")
    return problems


def growth(overheads: Mapping[int, float]) -> dict[int, float]:
    """Each concurrency level's p50 host overhead as a multiple of the lowest level's."""
    base = overheads[min(overheads)]
    return {c: (v / base if base > 0 else float("nan")) for c, v in sorted(overheads.items())}


# --- the bare-QEMU baseline ---------------------------------------------------------------------


def bare_boot(image_name: str, images: Path, accel: str, work: Path, cpus: int, memory: int) -> float:
    """Seconds from starting plain QEMU on ``image_name`` to an ``ssh true`` that succeeds, tried
    every 0.1 s: the floor any runner on this image pays."""
    from solstice.images import Catalog
    from solstice.vm.argv import QemuArgs, qemu_argv
    from solstice.vm.disk import create_overlay
    from solstice.vm.keys import generate_keypair
    from solstice.vm.ports import allocate_port
    from solstice.vm.provision import FirstBoot, for_profile

    image = Catalog({}, images).get(image_name)
    keys = generate_keypair()
    keyfile = work / "id"
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(keys.private_openssh())
    overlay = work / "bare.qcow2"
    create_overlay(image.base_image, overlay, image.image_format)
    # The seed a job's VM gets, from the image's own provisioner.
    provisioner = for_profile(image.profile)
    written = provisioner.write(work, image.profile, FirstBoot(keys.public_line, str(uuid.uuid4()), "bare"))
    seed = written.path
    with allocate_port(work / "ports") as lease:
        argv = qemu_argv(
            QemuArgs(
                qemu="qemu-system-x86_64",
                accel=accel,
                cpus=cpus,
                memory_mib=memory,
                disk=overlay,
                seed=seed,
                seed_bus=written.bus,
                disk_bus=image.profile.disk_bus,
                machine=image.profile.machine,
                nic=image.profile.nic,
                extra=(*provisioner.qemu_args(image.profile), *image.profile.qemu_args),
                ssh_port=lease.port,
                qmp_socket=work / "bare-qmp.sock",
                console_log=work / "bare-console.log",
                boot=image.boot,
                kernel=image.kernel,
                initrd=image.initrd,
                cmdline=image.cmdline,
            )
        )
        ssh = [
            "ssh", "-q", "-i", str(keyfile), "-p", str(lease.port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=2",
            f"{image.profile.user}@127.0.0.1", "true",
        ]  # fmt: skip
        start = time.monotonic()
        qemu = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while subprocess.run(ssh, stdin=subprocess.DEVNULL, capture_output=True).returncode != 0:
                if time.monotonic() - start > 600:
                    raise SystemExit("bare baseline: no SSH after 600 s")
                time.sleep(0.1)
            return time.monotonic() - start
        finally:
            qemu.kill()
            qemu.wait()
            for p in (overlay, seed, work / "bare-qmp.sock", work / "bare-console.log", keyfile):
                p.unlink(missing_ok=True)


# --- private services ---------------------------------------------------------------------------

ADMIN_URL = os.environ.get("SOLSTICE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("SOLSTICE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


@contextmanager
def private_services(
    labels: Sequence[str], addresses: Sequence[str], hosts: Sequence[str]
) -> Iterator[tuple[BrokerConfig, str]]:
    """(BrokerConfig with names of its own, URL of a fresh migrated database) on the shared
    RabbitMQ and PostgreSQL; the queues of ``labels``/``addresses``/``hosts``, the exchanges and
    the database are removed afterwards."""
    token = f"solstice-bench.{uuid.uuid4().hex[:8]}"
    broker = BrokerConfig(
        url=AMQP_URL,
        jobs_exchange=f"{token}.jobs",
        events_exchange=f"{token}.events",
        control_exchange=f"{token}.control",
        dead_letter_exchange=f"{token}.dlx",
        dead_letter_queue=f"{token}.dead-letter",
        queue_prefix=f"{token}.jobs.",
    )
    dbname = f"solstice_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    db_url = psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=dbname)
    try:
        with Store.connect(DatabaseConfig(url=db_url)) as store:
            store.migrate()
        yield broker, db_url
    finally:
        names = Names(broker)
        conn2 = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = conn2.channel()
        for queue in (
            broker.dead_letter_queue,
            *(names.job_queue(x) for x in labels),
            *(names.events_queue(x) for x in addresses),
            *(names.control_queue(x) for x in hosts),
        ):
            channel.queue_delete(queue=queue)
        for exchange in (
            broker.jobs_exchange,
            broker.events_exchange,
            broker.control_exchange,
            broker.dead_letter_exchange,
        ):
            channel.exchange_delete(exchange=exchange)
        conn2.close()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
