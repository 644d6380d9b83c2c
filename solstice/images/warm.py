"""Warm pool VMs: booted ahead of any job, each taken by exactly one job, then destroyed.

One *keeper* process per warm VM (``solstice pool keep <vm-id> --label L``; under systemd the main
process of ``solstice-pool@<vm-id>.service``) boots a fresh VM of its label's plan in
``<runtime_dir>/pool/<vm-id>/``, exactly as a job would but with nothing of a job in it: the
instance id and host name come from the VM's own id, its SSH key is made in the keeper's memory,
and it gets no secrets, no checkout and no job id. It then waits, checking the guest's health
every ``[pool] health_interval`` and giving the VM up after ``[pool.<label>] max_age``.

The keeper records its state (booting, ready, taken) in ``<runtime_dir>/pool/<vm-id>.json``, which
the dispatcher reads (it may not enter the keeper's 0700 directory). A job that the dispatcher
gave this VM connects to ``<vm-id>/handover.sock`` and sends ``{"take": <job id>, "plan": ...}``;
the keeper checks the guest once more (QEMU alive, an SSH no-op answered), answers with what the
job needs to use the VM (port, login, the private key, QMP socket, console), and from then on only
waits: for QEMU's exit, which it reports on the connection and then cleans up after, or for the
connection to close while QEMU runs (the job process died), when it kills QEMU. A VM is taken
once: a second ``take`` is refused. QEMU dies with its keeper too (PR_SET_PDEATHSIG).

This module is the pool's VM side; the dispatcher's side (how many, when, which) is
solstice.dispatch.pool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import select
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from solstice.config import Config
from solstice.errors import SolsticeError, VMError
from solstice.files import atomic_write
from solstice.images.catalog import Catalog
from solstice.images.plan import MachinePlan, machine_spec, plan_machine
from solstice.images.poolstate import (
    PoolVM,
    VMState,
    pool_dir,
    state_file,
    vm_dir,
)
from solstice.model import Size
from solstice.notify import Notifier
from solstice.vm import leftovers
from solstice.vm.keys import load_keypair
from solstice.vm.machine import Guest, attach_machine, start_machine
from solstice.vm.remote import RemoteQemu, read_line, send_json

log = logging.getLogger("solstice.pool")

SOCKET = "handover.sock"
#: Seconds a taker has to send its request once connected.
REQUEST_TIMEOUT = 5.0
#: Exit status of a keeper that gave its VM up unused (too old, stopped): a normal end, as when its
#: VM served a job (a transient unit that exits 0 is unloaded at once).
EXIT_RECYCLED = 0
#: Exit status of a keeper whose VM failed a health check or did not boot.
EXIT_UNHEALTHY = 11


class WarmError(VMError):
    """A warm VM could not be taken (gone, unhealthy, taken already, another plan)."""


def plan_of(cfg: Config, label: str) -> MachinePlan:
    """The plan a warm VM of ``label`` is booted with: the label's default size (a job that asks
    for another size boots its own VM)."""
    return plan_machine(Size(), Catalog.from_config(cfg).get(label), cfg.vm)


# --- the keeper -----------------------------------------------------------------------------


class Keeper:
    """One warm VM's life; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        vm_id: str,
        label: str,
        *,
        max_age: float | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.vm_id = vm_id
        self.label = label
        entry = cfg.pool.labels.get(label)
        self.max_age = max_age if max_age is not None else (entry.max_age if entry else 3600.0)
        self.runtime_dir = Path(cfg.paths.runtime_dir)
        self.workdir = vm_dir(self.runtime_dir, vm_id)
        self.notifier = notifier or Notifier()
        self.stopping = threading.Event()
        self.record: PoolVM | None = None

    def _write(self, **changes: Any) -> None:
        assert self.record is not None
        self.record = dataclasses.replace(self.record, **changes)
        # 0644 in a directory the dispatcher (root without capabilities) owns and reads.
        atomic_write(state_file(self.runtime_dir, self.vm_id), self.record.to_json(), mode=0o644)

    def run(self) -> int:
        """Boot, wait to be taken, serve the taker; the exit status says how it ended (0: a job
        took and ended it, or it was given up unused; EXIT_UNHEALTHY: it never got ready or
        failed a health check)."""
        image = Catalog.from_config(self.cfg).get(self.label)
        image.check()
        plan = plan_machine(Size(), image, self.cfg.vm)
        # The VM's own id, never a job's: nothing of a job is in the guest before it takes it.
        spec = machine_spec(image, plan, self.cfg.vm, self.vm_id)
        pool_dir(self.runtime_dir).mkdir(parents=True, exist_ok=True)
        self.notifier.ready(f"warm VM {self.vm_id} ({self.label}): booting")
        self.notifier.start_watchdog()
        with contextlib.ExitStack() as stack:
            # Made by the unit's RuntimeDirectory= under systemd (empty, 0700).
            self.workdir.mkdir(mode=0o700, exist_ok=True)
            stack.callback(leftovers.claim_workdir(self.workdir).release)
            stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
            stack.callback(state_file(self.runtime_dir, self.vm_id).unlink, missing_ok=True)
            self.record = PoolVM(
                vm_id=self.vm_id,
                label=self.label,
                state=VMState.BOOTING,
                keeper_pid=os.getpid(),
                cpus=plan.cpus,
                memory_mib=plan.memory_mib,
                disk_gib=plan.disk_gib,
                created=time.time(),
            )
            self._write()
            started = time.monotonic()
            guest = start_machine(spec, self.workdir, self.runtime_dir / "ports", stack)
            qemu = guest.process
            assert qemu is not None
            boot = time.monotonic() - started
            self._write(
                state=VMState.READY,
                ready_at=time.time(),
                boot_seconds=round(boot, 2),
                qemu_pid=qemu.pid,
                port=guest.port,
            )
            log.info("warm VM %s (%s): ready after %.1f s", self.vm_id, self.label, boot)
            self.notifier.status(f"warm VM {self.vm_id} ({self.label}): ready")
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stack.callback(server.close)
            old = os.umask(0o077)
            try:
                server.bind(str(self.workdir / SOCKET))
            finally:
                os.umask(old)
            server.listen(4)
            return self._wait_for_taker(server, guest, private=guest.private_key_openssh())

    def _healthy(self, guest: Guest) -> str:
        """ "" when the guest is fine, else what is wrong with it."""
        ended = guest.exited()
        if ended:
            return ended.partition("\n")[0]
        result: list[str] = []

        def probe() -> None:
            try:
                guest.probe()
            except Exception as exc:  # any failure of the no-op is an unhealthy guest
                result.append(f"the guest did not answer an SSH no-op: {exc}")

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t.join(10.0)
        if t.is_alive():
            guest.disconnect()
            return "the guest did not answer an SSH no-op within 10 s"
        return result[0] if result else ""

    def _wait_for_taker(self, server: socket.socket, guest: Guest, private: str) -> int:
        assert self.record is not None and self.record.ready_at is not None
        ready = time.monotonic()
        next_check = ready + self.cfg.pool.health_interval
        while True:
            if self.stopping.is_set():
                log.info("warm VM %s: stopped before a job took it", self.vm_id)
                return EXIT_RECYCLED
            now = time.monotonic()
            if now - ready >= self.max_age:
                log.info("warm VM %s: unused for %.0f s (max_age): recycled", self.vm_id, now - ready)
                return EXIT_RECYCLED
            if now >= next_check:
                wrong = self._healthy(guest)
                if wrong:
                    log.warning("warm VM %s: unhealthy, destroyed: %s", self.vm_id, wrong)
                    return EXIT_UNHEALTHY
                next_check = now + self.cfg.pool.health_interval
            readable, _, _ = select.select([server], [], [], 1.0)
            if not readable:
                continue
            conn, _ = server.accept()
            with conn:
                taker = self._handover(conn, guest, private)
                if taker is None:
                    continue
                return self._serve_taken(conn, guest)

    def _handover(self, conn: socket.socket, guest: Guest, private: str) -> str | None:
        """Answer one take request; the taker's job id when the VM is now theirs."""
        conn.settimeout(REQUEST_TIMEOUT)
        try:
            request = json.loads(read_line(conn) or b"{}")
            job_id = str(request.get("take", ""))
            plan = request.get("plan")
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("warm VM %s: a bad take request: %s", self.vm_id, exc)
            return None
        assert self.record is not None and self.record.port is not None and self.record.qemu_pid
        if not job_id:
            with contextlib.suppress(OSError):
                send_json(conn, {"ok": False, "error": "no job id in the request"})
            return None
        if plan != [self.record.cpus, self.record.memory_mib, self.record.disk_gib]:
            with contextlib.suppress(OSError):
                send_json(conn, {"ok": False, "error": f"this VM's plan is {self.record.plan.describe()}"})
            return None
        wrong = self._healthy(guest)
        if wrong:
            with contextlib.suppress(OSError):
                send_json(conn, {"ok": False, "error": f"unhealthy: {wrong}"})
            self.stopping.set()  # the loop ends it; the dispatcher boots a replacement
            return None
        self._write(state=VMState.TAKEN, job_id=job_id)
        guest.close()  # the taker opens its own connection with the key
        try:
            send_json(
                conn,
                {
                    "ok": True,
                    "vm_id": self.vm_id,
                    "label": self.label,
                    "port": self.record.port,
                    "user": guest.user,
                    "key": private,
                    "qemu_pid": self.record.qemu_pid,
                    "qmp": str(self.workdir / "qmp.sock"),
                    "console": str(guest.console_path),
                    "disk": str(guest.disk) if guest.disk else "",
                    "ready_at": self.record.ready_at,
                    "boot_seconds": self.record.boot_seconds,
                },
            )
        except OSError as exc:
            log.warning("warm VM %s: the taker went away during the hand-over: %s", self.vm_id, exc)
            guest.stop()
            self.stopping.set()
            return None
        log.info("warm VM %s: taken by job %s", self.vm_id, job_id)
        self.notifier.status(f"warm VM {self.vm_id}: taken by job {job_id}")
        return job_id

    def _serve_taken(self, conn: socket.socket, guest: Guest) -> int:
        """Until QEMU exits (reported to the taker) or the taker is gone (QEMU killed)."""
        qemu = guest.process
        assert qemu is not None
        conn.settimeout(None)
        while True:
            try:
                code = qemu.wait(timeout=1.0)
            except Exception:  # subprocess.TimeoutExpired: still running
                code = None
            if code is not None:
                with contextlib.suppress(OSError):
                    send_json(conn, {"exited": code})
                log.info("warm VM %s: QEMU exited (%s)", self.vm_id, code)
                return 0
            readable, _, _ = select.select([conn], [], [], 0)
            if readable:
                try:
                    data = conn.recv(1)
                except OSError:
                    data = b""
                if not data:
                    log.warning("warm VM %s: its job's process is gone; killing QEMU", self.vm_id)
                    qemu.kill()
                    qemu.wait()
                    return 0


def run_keeper(cfg: Config, vm_id: str, label: str) -> int:
    """``solstice pool keep``: the keeper's process. SIGTERM ends it (and its VM) at any point."""
    keeper = Keeper(cfg, vm_id, label)

    def on_term(*_: Any) -> None:
        if keeper.record is None or keeper.record.state is VMState.BOOTING:
            raise KeyboardInterrupt  # abandons the boot; the stack stops QEMU
        if keeper.record.state is VMState.TAKEN:
            raise KeyboardInterrupt  # its job's VM: stopped with it (the unit is going away)
        keeper.stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    try:
        return keeper.run()
    except KeyboardInterrupt:
        return EXIT_RECYCLED
    except SolsticeError as exc:
        log.error("warm VM %s (%s): %s", vm_id, label, exc)
        return EXIT_UNHEALTHY
    finally:
        keeper.notifier.close()


# --- the taker ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handover:
    """What a job gets with a warm VM."""

    vm_id: str
    label: str
    port: int
    user: str
    private_key: str = field(repr=False)
    qemu_pid: int = 0
    qmp: Path = Path()
    console: Path = Path()
    disk: Path | None = None
    ready_at: float = 0.0
    boot_seconds: float | None = None


def take(
    runtime_dir: str | Path, vm_id: str, job_id: str, plan: MachinePlan, timeout: float = 15.0
) -> tuple[Handover, socket.socket]:
    """Ask warm VM ``vm_id``'s keeper for its VM. Returns the hand-over and the connection that
    must stay open while the VM is used (closing it kills the VM). Raises WarmError."""
    path = vm_dir(runtime_dir, vm_id) / SOCKET
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        send_json(sock, {"take": job_id, "plan": [plan.cpus, plan.memory_mib, plan.disk_gib]})
        line = read_line(sock)
        answer = json.loads(line) if line else {"error": "the keeper closed the connection"}
        if not isinstance(answer, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        sock.close()
        raise WarmError(f"warm VM {vm_id}: its keeper did not hand it over ({exc})") from None
    if not answer.get("ok"):
        sock.close()
        raise WarmError(f"warm VM {vm_id}: {answer.get('error', 'refused')}")
    try:
        handover = Handover(
            vm_id=str(answer["vm_id"]),
            label=str(answer["label"]),
            port=int(answer["port"]),
            user=str(answer["user"]),
            private_key=str(answer["key"]),
            qemu_pid=int(answer["qemu_pid"]),
            qmp=Path(answer["qmp"]),
            console=Path(answer["console"]),
            disk=Path(answer["disk"]) if answer.get("disk") else None,
            ready_at=float(answer.get("ready_at") or 0.0),
            boot_seconds=answer.get("boot_seconds"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        sock.close()
        raise WarmError(f"warm VM {vm_id}: a malformed hand-over ({exc})") from None
    return handover, sock


def take_guest(
    runtime_dir: str | Path,
    vm_id: str,
    job_id: str,
    plan: MachinePlan,
    profile: Any,
    stack: contextlib.ExitStack,
    on_taken: Callable[[Handover], None] = lambda h: None,
) -> Guest:
    """A warm VM as the job's Guest: taken, connected with its key, stopped by ``stack``."""
    handover, sock = take(runtime_dir, vm_id, job_id, plan)
    qemu = RemoteQemu(sock, handover.qemu_pid)
    stack.callback(qemu.close)  # last: the keeper kills QEMU if it still runs then
    on_taken(handover)
    try:
        keypair = load_keypair(handover.private_key)
    except ValueError as exc:
        raise VMError(f"warm VM {vm_id}: the handed-over key is unusable ({exc})") from None
    return attach_machine(
        port=handover.port,
        profile=profile,
        keypair=keypair,
        qemu=qemu,
        qmp_path=handover.qmp,
        console=handover.console,
        disk=handover.disk,
        stack=stack,
    )
