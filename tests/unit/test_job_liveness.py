"""The liveness rule behind the job's watchdog, and the watchdog itself (a real sd_notify socket)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from solstice.job import liveness
from solstice.job.liveness import GuestMonitor, Liveness, Stage
from solstice.notify import Notifier
from tests.fakes.localguest import LocalGuest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_alive_while_booting_within_the_boot_timeout() -> None:
    clock = Clock()
    live = Liveness(boot_timeout=300, shutdown_timeout=10, clock=clock)
    assert live.stage is Stage.STARTING and live.alive()
    clock.now += 300 + liveness.PREPARE_ALLOWANCE - 1
    assert live.alive()
    clock.now += 2
    assert not live.alive()  # a boot that outlives its timeout is hung


def test_alive_while_the_guest_answers(tmp_path: Path) -> None:
    clock = Clock()
    guest = LocalGuest(tmp_path)
    live = Liveness(boot_timeout=300, shutdown_timeout=10, clock=clock)
    monitor = GuestMonitor(guest, unresponsive_after=60, clock=clock)
    live.running(monitor)
    clock.now += 3600  # a long step is fine as long as the guest answers
    monitor.last_answer = clock.now - 5
    assert live.alive()
    # Silent: the job itself gives the guest up at 60 s; the watchdog waits the grace on top.
    monitor.last_answer = clock.now - 60 - liveness.WATCHDOG_GRACE + 1
    assert live.alive()
    monitor.last_answer = clock.now - 60 - liveness.WATCHDOG_GRACE - 1
    assert not live.alive()
    live.teardown()
    assert live.stage is Stage.TEARDOWN and live.alive()
    clock.now += 10 + liveness.TEARDOWN_ALLOWANCE + 1
    assert not live.alive()


def test_monitor_trips_only_on_silence(tmp_path: Path) -> None:
    guest = LocalGuest(tmp_path)
    monitor = GuestMonitor(guest, unresponsive_after=1.0)
    monitor.start()
    try:
        time.sleep(2.5)
        assert not monitor.tripped.is_set() and monitor.silent_for() < 1.0
        guest.freeze()
        assert monitor.tripped.wait(5.0)
        assert guest.hurried
        assert "stopped responding" in str(monitor.error())
        assert "fake console" in str(monitor.error())
    finally:
        monitor.stop()
        guest.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "40000")  # a ping every 20 ms
    yield sock
    sock.close()


def received(sock: socket.socket, seconds: float) -> list[str]:
    got: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    return got


def test_watchdog_pings_only_while_alive(notify_socket: socket.socket) -> None:
    state = {"alive": True}
    notifier = Notifier()
    notifier.start_watchdog(lambda: state["alive"])
    try:
        assert "WATCHDOG=1" in received(notify_socket, 0.3)
        state["alive"] = False
        received(notify_socket, 0.2)  # a ping already on its way
        assert "WATCHDOG=1" not in received(notify_socket, 0.3)
        state["alive"] = True
        assert "WATCHDOG=1" in received(notify_socket, 0.3)
    finally:
        notifier.close()
