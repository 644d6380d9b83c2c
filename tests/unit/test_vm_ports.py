"""SSH forward ports: no two concurrent holders, across threads and processes."""

from __future__ import annotations

import multiprocessing
import random
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from solstice.vm import ports
from solstice.vm.ports import PortLease, allocate_port, try_lease

N = 32


def test_threads_get_distinct_ports(tmp_path: Path) -> None:
    barrier = threading.Barrier(N)

    def one(_: int) -> PortLease:
        barrier.wait()
        return allocate_port(tmp_path)

    with ThreadPoolExecutor(N) as pool:
        leases = list(pool.map(one, range(N)))
    try:
        assert len({lease.port for lease in leases}) == N
    finally:
        for lease in leases:
            lease.release()
    assert list(tmp_path.iterdir()) == []


def _few_ports() -> int:
    # The kernel hands out the same few numbers again and again: only the locks keep holders apart.
    return random.choice(range(45000, 45000 + N + 8))


def test_threads_never_share_a_port_even_when_the_kernel_repeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ports, "_free_port", _few_ports)
    barrier = threading.Barrier(N)

    def one(_: int) -> PortLease:
        barrier.wait()
        return allocate_port(tmp_path)

    with ThreadPoolExecutor(N) as pool:
        leases = list(pool.map(one, range(N)))
    try:
        assert len({lease.port for lease in leases}) == N
    finally:
        for lease in leases:
            lease.release()


def _child(ports_dir: str, fake: bool, out: multiprocessing.Queue[int], hold: threading.Event) -> None:
    if fake:
        ports._free_port = _few_ports
    random.seed()
    lease = allocate_port(Path(ports_dir))
    out.put(lease.port)
    hold.wait(60)  # keep the lease until every process has one
    lease.release()


@pytest.mark.parametrize("fake", [False, True], ids=["kernel", "repeating"])
def test_processes_get_distinct_ports(tmp_path: Path, fake: bool) -> None:
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[int] = ctx.Queue()
    hold = ctx.Event()
    procs = [ctx.Process(target=_child, args=(str(tmp_path), fake, out, hold)) for _ in range(N)]
    for p in procs:
        p.start()
    try:
        got = [out.get(timeout=60) for _ in range(N)]
    finally:
        hold.set()
        for p in procs:
            p.join(30)
    assert len(set(got)) == N
    assert all(p.exitcode == 0 for p in procs)


def _try_in_child(ports_dir: str, port: int, out: multiprocessing.Queue[bool]) -> None:
    lease = try_lease(Path(ports_dir), port)
    out.put(lease is not None)
    if lease is not None:
        lease.release()


def test_held_lock_blocks_reuse_and_release_frees(tmp_path: Path) -> None:
    lease = allocate_port(tmp_path)
    assert (tmp_path / f"{lease.port}.lock").exists()
    assert try_lease(tmp_path, lease.port) is None  # another thread of this process
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[bool] = ctx.Queue()
    p = ctx.Process(target=_try_in_child, args=(str(tmp_path), lease.port, out))
    p.start()
    assert out.get(timeout=30) is False  # another process
    p.join()

    lease.release()
    lease.release()  # idempotent
    assert not lease.held
    assert not (tmp_path / f"{lease.port}.lock").exists()
    again = try_lease(tmp_path, lease.port)
    assert again is not None
    again.release()


def test_port_is_bindable_on_loopback(tmp_path: Path) -> None:
    with allocate_port(tmp_path) as lease:
        with socket.socket() as s:
            s.bind(("127.0.0.1", lease.port))
    assert not lease.held
