"""The warm pool's rules without VMs: the configuration, the dispatcher's pool (fill, capacity,
budget, take, make room, age, adoption) over a keeper spawner that only records, and the keeper's
hand-over protocol against a real unix socket. The real VMs: tests/service/test_warm_pool_vm.py."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from solstice import config as configmod
from solstice.config import Config
from solstice.dispatch.pool import Pool
from solstice.errors import ConfigError
from solstice.files import atomic_write
from solstice.images import Catalog, MachinePlan, poolstate, warm
from solstice.metrics import DispatcherMetrics
from solstice.vm.remote import RemoteQemu, read_line, send_json


def load(tmp_path: Path, text: str) -> Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "solstice.toml"
    path.write_text(f'[paths]\nruntime_dir = "{tmp_path / "run"}"\nstate_dir = "{tmp_path}"\n' + text)
    return configmod.load(path, environ={})


POOL = """
[pool]
memory = "5G"
[pool.debian-12]
size = 2
max_age = 60
"""


def test_pool_tables_parse_and_errors_name_the_key(tmp_path: Path) -> None:
    cfg = load(tmp_path, POOL)
    assert cfg.pool.memory == "5G" and cfg.pool.size("debian-12") == 2 and cfg.pool.size("other") == 0
    assert cfg.pool.labels["debian-12"].max_age == 60
    assert load(tmp_path, "").pool.labels == {}  # off by default
    for text, key in [
        ("[pool.debian-12]\nsize = -1\n", "[pool.debian-12] size"),
        ("[pool.debian-12]\nmax_age = 1\n", "[pool.debian-12] max_age"),
        ("[pool.debian-12]\nsizes = 1\n", "unknown key [pool.debian-12] sizes"),
        ('[pool]\nmemory = "lots"\n', "[pool] memory"),
        ("[pool]\nlabels = 1\n", "[pool] labels"),
    ]:
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            load(tmp_path, text)


class Keepers:
    """The spawner's keeper side, recording; a started keeper "boots" when the test says so."""

    name = "record"

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self.running: dict[str, str] = {}  # vm id -> label
        self.stopped: list[str] = []
        self.released: list[str] = []
        self.attached: list[tuple[str, list[int]]] = []

    def start_keeper(self, vm_id: str, label: str, plan: MachinePlan) -> None:
        self.running[vm_id] = label
        write(self.runtime_dir, vm_id, label, plan, poolstate.VMState.BOOTING)

    def keepers(self) -> list[str]:
        return sorted(self.running)

    def stop_keeper(self, vm_id: str) -> None:
        self.running.pop(vm_id, None)
        self.stopped.append(vm_id)

    def release_keeper(self, vm_id: str) -> None:
        self.released.append(vm_id)

    def attach(self, job_id: str, pids: Sequence[int]) -> None:
        self.attached.append((job_id, list(pids)))


def write(
    runtime_dir: Path,
    vm_id: str,
    label: str,
    plan: MachinePlan,
    state: poolstate.VMState,
    ready_at: float | None = None,
) -> None:
    poolstate.pool_dir(runtime_dir).mkdir(parents=True, exist_ok=True)
    record = poolstate.PoolVM(
        vm_id=vm_id,
        label=label,
        state=state,
        keeper_pid=1,
        cpus=plan.cpus,
        memory_mib=plan.memory_mib,
        disk_gib=plan.disk_gib,
        created=time.time(),
        ready_at=ready_at
        if ready_at is not None
        else (time.time() if state is poolstate.VMState.READY else None),
        qemu_pid=4242 if state is not poolstate.VMState.BOOTING else None,
    )
    atomic_write(poolstate.state_file(runtime_dir, vm_id), record.to_json(), mode=0o644)


def make_pool(tmp_path: Path, text: str = POOL) -> tuple[Pool, Keepers, Config]:
    cfg = load(tmp_path, text)
    keepers = Keepers(Path(cfg.paths.runtime_dir))
    pool = Pool(cfg, keepers, Catalog.from_config(cfg), ["debian-12"], DispatcherMetrics(["debian-12"], 4))  # type: ignore[arg-type]
    return pool, keepers, cfg


def ready_all(pool: Pool, keepers: Keepers) -> None:
    for vm_id, label in keepers.running.items():
        write(keepers.runtime_dir, vm_id, label, pool.plans[label], poolstate.VMState.READY)


def test_the_pool_fills_to_size_within_capacity_and_memory(tmp_path: Path) -> None:
    pool, keepers, _ = make_pool(tmp_path)
    plan = pool.plans["debian-12"]
    pool.round(free=1, labels=["debian-12"])
    assert len(keepers.running) == 1  # capacity allowed one
    pool.round(free=5, labels=["debian-12"])
    assert len(keepers.running) == 2  # size 2, not more
    pool.round(free=5, labels=["debian-12"])
    assert len(keepers.running) == 2
    # A label whose image is not ready gets no pool.
    other, k2, _ = make_pool(tmp_path / "b")
    other.round(free=5, labels=[])
    assert k2.running == {}
    assert pool.memory() == 2 * plan.memory_mib <= 5120
    # The memory budget: 5G holds one 3 GiB VM only.
    big, k3, _ = make_pool(tmp_path / "c", POOL + '[images.debian-12]\npath = "x.qcow2"\nmemory = "3G"\n')
    big.round(free=5, labels=["debian-12"])
    assert len(k3.running) == 1 and big.memory() == 3072


def test_a_job_takes_the_oldest_ready_vm_of_its_plan_only(tmp_path: Path) -> None:
    pool, keepers, _ = make_pool(tmp_path)
    plan = pool.plans["debian-12"]
    pool.round(free=2, labels=["debian-12"])
    assert pool.take("debian-12", plan) == ""  # booting ones are not taken
    first = sorted(pool.vms.values(), key=lambda v: v.started)[0].vm_id
    ready_all(pool, keepers)
    assert pool.take("debian-12", dataclasses.replace(plan, cpus=plan.cpus + 1)) == ""  # another size
    assert pool.take("debian-12", plan) == first
    assert first not in pool.vms and pool.count() == 1  # the job's now, not the pool's
    pool.round(free=2, labels=["debian-12"])
    assert pool.count() == 2  # a replacement boots


def test_make_room_destroys_booting_and_other_labels_first(tmp_path: Path) -> None:
    pool, keepers, _ = make_pool(tmp_path)
    pool.round(free=2, labels=["debian-12"])
    ids = sorted(pool.vms, key=lambda v: pool.vms[v].started)
    write(keepers.runtime_dir, ids[0], "debian-12", pool.plans["debian-12"], poolstate.VMState.READY)
    pool.make_room(1, "debian-12")
    assert keepers.stopped == [ids[1]]  # the booting one went, the ready one stays
    assert list(pool.vms) == [ids[0]]


def test_ended_keepers_are_replaced_and_old_ready_vms_recycled(tmp_path: Path) -> None:
    pool, keepers, _ = make_pool(tmp_path)
    pool.round(free=2, labels=["debian-12"])
    dead = next(iter(keepers.running))
    write(keepers.runtime_dir, dead, "debian-12", pool.plans["debian-12"], poolstate.VMState.READY)
    pool.round(free=0, labels=["debian-12"])  # seen ready
    keepers.running.pop(dead)  # then its keeper ended (unhealthy VM, killed)
    pool.vms[dead].started -= 60  # past the start grace
    pool.round(free=2, labels=["debian-12"])
    assert dead not in pool.vms and len(keepers.running) == 2
    assert keepers.released == [dead]  # a failed keeper unit does not stay loaded
    assert not poolstate.state_file(keepers.runtime_dir, dead).exists()
    old = next(iter(keepers.running))
    write(
        keepers.runtime_dir,
        old,
        "debian-12",
        pool.plans["debian-12"],
        poolstate.VMState.READY,
        time.time() - 61,
    )
    pool.round(free=2, labels=["debian-12"])
    assert old in keepers.stopped and old not in pool.vms and len(keepers.running) == 2
    text = pool.metrics.registry.get_sample_value("solstice_pool_recycled_total", {"label": "debian-12"})  # type: ignore[union-attr]
    assert text == 2.0


def test_a_restarted_dispatcher_adopts_what_it_still_wants(tmp_path: Path) -> None:
    pool, keepers, cfg = make_pool(tmp_path)
    plan = pool.plans["debian-12"]
    run = keepers.runtime_dir
    for vm_id, label, p, state in [
        ("a", "debian-12", plan, poolstate.VMState.READY),
        (
            "b",
            "debian-12",
            dataclasses.replace(plan, cpus=plan.cpus + 3),
            poolstate.VMState.READY,
        ),  # old size
        ("c", "debian-12", plan, poolstate.VMState.TAKEN),  # a job's
        ("d", "debian-12", plan, poolstate.VMState.BOOTING),
        ("e", "debian-12", plan, poolstate.VMState.READY),  # one more than size
    ]:
        keepers.running[vm_id] = label
        write(run, vm_id, label, p, state)
    keepers.running["f"] = "debian-12"  # no record at all
    pool.adopt()
    assert sorted(pool.vms) == ["a", "d"]
    assert sorted(keepers.stopped) == ["b", "e", "f"]
    assert "c" in keepers.running  # left to its job


def test_the_handover_protocol_and_remote_qemu(tmp_path: Path) -> None:
    # A keeper's socket that refuses another plan, then hands over; the taker's RemoteQemu sees the
    # exit status the keeper reports.
    run = tmp_path / "run"
    poolstate.vm_dir(run, "vm1").mkdir(parents=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(poolstate.vm_dir(run, "vm1") / warm.SOCKET))
    server.listen(2)
    plan = MachinePlan(2, 2048, None)
    seen: list[dict[str, object]] = []

    def keeper() -> None:
        for answer in (
            {"ok": False, "error": "this VM's plan is 1 CPUs"},
            {
                "ok": True,
                "vm_id": "vm1",
                "label": "debian-12",
                "port": 2222,
                "user": "solstice",
                "key": "K",
                "qemu_pid": 99999999,
                "qmp": "/q",
                "console": "/c",
                "disk": "",
                "ready_at": 1.0,
                "boot_seconds": 3.5,
            },
        ):
            conn, _ = server.accept()
            seen.append(json.loads(read_line(conn)))
            send_json(conn, answer)
            if answer["ok"]:
                send_json(conn, {"exited": 0})
                conn.close()
            else:
                conn.close()

    t = threading.Thread(target=keeper)
    t.start()
    with pytest.raises(warm.WarmError, match="this VM's plan"):
        warm.take(run, "vm1", "job-1", plan)
    handover, sock = warm.take(run, "vm1", "job-2", plan)
    t.join(5)
    assert seen == [{"take": "job-1", "plan": [2, 2048, None]}, {"take": "job-2", "plan": [2, 2048, None]}]
    assert handover.port == 2222 and handover.user == "solstice" and handover.boot_seconds == 3.5
    assert "K" not in repr(handover)  # the key stays out of logs
    qemu = RemoteQemu(sock, handover.qemu_pid)
    assert qemu.wait(5) == 0 and qemu.poll() == 0
    with pytest.raises(warm.WarmError, match="did not hand it over"):
        warm.take(run, "gone", "job-3", plan)


def test_a_broken_keeper_connection_counts_as_qemu_killed() -> None:
    a, b = socket.socketpair()
    qemu = RemoteQemu(a, 99999999)
    assert qemu.poll() is None
    b.close()  # the keeper died: QEMU died with it
    assert qemu.wait(5) == -9


def test_keepers_that_never_get_ready_back_off(tmp_path: Path) -> None:
    pool, keepers, _ = make_pool(tmp_path, POOL.replace("size = 2", "size = 1"))
    pool.round(free=2, labels=["debian-12"])
    (first,) = keepers.running
    keepers.running.clear()  # it ended while booting (a broken image, a boot timeout)
    pool.vms[first].started -= 60
    pool.round(free=2, labels=["debian-12"])
    assert keepers.running == {} and pool.failures == {"debian-12": 1}  # not again at once
    pool.retry_at["debian-12"] = 0.0  # the wait is over
    pool.round(free=2, labels=["debian-12"])
    (second,) = keepers.running
    write(keepers.runtime_dir, second, "debian-12", pool.plans["debian-12"], poolstate.VMState.READY)
    pool.round(free=2, labels=["debian-12"])
    assert pool.failures == {}  # a VM that got ready ends the streak


def test_a_dispatcher_without_a_pool_stops_the_keepers_a_previous_one_left(tmp_path: Path) -> None:
    pool, keepers, cfg = make_pool(tmp_path, "")
    assert not pool.enabled
    plan = MachinePlan(2, 2048, None)
    keepers.running["left"] = "debian-12"
    write(keepers.runtime_dir, "left", "debian-12", plan, poolstate.VMState.READY)
    pool.adopt()
    assert keepers.stopped == ["left"] and pool.vms == {}


def test_pool_list_shows_each_vm_with_its_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from solstice.cli.main import main

    cfg = load(tmp_path, "")
    run = Path(cfg.paths.runtime_dir)
    assert main(["--config", str(tmp_path / "solstice.toml"), "pool", "list"]) == 0
    assert "no warm VMs on this host" in capsys.readouterr().out
    write(
        run,
        "a" * 8 + "-0000-0000-0000-000000000000",
        "debian-12",
        MachinePlan(2, 2048, None),
        poolstate.VMState.READY,
    )
    assert main(["--config", str(tmp_path / "solstice.toml"), "pool", "list"]) == 0
    out = capsys.readouterr().out
    assert "aaaaaaaa-0000-0000-0000-000000000000  debian-12" in out and "ready" in out, out
    assert "2 CPUs, 2048 MiB" in out, out
    assert main(["--config", str(tmp_path / "solstice.toml"), "pool", "keep", "--label", "x", "../x"]) == 2
