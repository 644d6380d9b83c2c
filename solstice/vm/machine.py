"""The life of one job's VM: prepare, boot, wait for SSH, and leave nothing behind.

``start_machine`` registers every cleanup on the caller's ExitStack as soon as the thing to clean
exists, so however the job ends (exception, SIGTERM turned into KeyboardInterrupt, timeout), the
unwind stops QEMU, frees the port and empties the work directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from solstice import proc
from solstice.errors import BootTimeout, GuestConnectionLost, PortForwardError, VMError
from solstice.model.core import Phase
from solstice.vm import ssh
from solstice.vm.argv import NETDEV, BootMode, QemuArgs, qemu_argv
from solstice.vm.console import read_tail
from solstice.vm.disk import create_overlay
from solstice.vm.keys import KeyPair, generate_keypair
from solstice.vm.ports import allocate_port, try_lease
from solstice.vm.profiles import GuestProfile
from solstice.vm.provision import FirstBoot, for_profile
from solstice.vm.qmp import QemuProcess, QMPUnavailable, qmp_command, stop_qemu

__all__ = [
    "BootMode",
    "Guest",
    "KVMUnavailable",
    "MachineSpec",
    "attach_machine",
    "read_tail",
    "start_machine",
]

log = logging.getLogger("solstice.vm.machine")

#: How often a new port is tried when QEMU cannot bind the SSH forward.
PORT_ATTEMPTS = 5
_HOSTFWD_FAILED = "Could not set up host forwarding rule"
#: The kernel's limit for a unix socket path (sun_path), less the terminating NUL.
_SUN_PATH_MAX = 107


class ShutdownPolicy:
    """How long QEMU's stop waits for an ACPI powerdown, decided when the stack unwinds. No wait
    (QMP ``quit`` at once) unless the spec asks for a ``powerdown``, and even then none while the
    guest is still booting (it would ignore the button) or once the job is cancelled."""

    def __init__(self) -> None:
        self.powerdown_timeout = 0.0
        #: Set once QEMU is stopped: the guest powered itself off on the ACPI powerdown.
        self.powered_off = False


@dataclass(frozen=True)
class MachineSpec:
    base_image: Path
    image_format: str  # "qcow2" or "raw"
    boot: BootMode
    kernel: Path | None
    initrd: Path | None
    cmdline: str
    profile: GuestProfile
    accel: str  # "kvm" or "tcg"
    cpus: int
    memory_mib: int
    disk_gib: int | None  # grow the overlay to this; None keeps the base image's size
    boot_timeout: float  # QEMU start to SSH login with our key
    shutdown_timeout: float  # ACPI powerdown grace before QMP quit, when ``powerdown`` is set
    qemu: str
    qemu_img: str
    ovmf_code: str
    ovmf_vars: str
    instance_id: str  # the job id: cloud-init's instance-id, so each job is a first boot
    hostname: str
    #: Power the guest down politely (ACPI, up to shutdown_timeout) before QMP ``quit``. Off for
    #: jobs: their overlay is thrown away, so a clean shutdown protects nothing and only delays the
    #: teardown; on where the guest's disk is kept (preparing an image).
    powerdown: bool = False


class KVMUnavailable(VMError):
    """accel = kvm but /dev/kvm is missing or this user cannot open it."""


KVM_DEVICE = Path("/dev/kvm")


def check_kvm(device: Path = KVM_DEVICE) -> None:
    """Fail loudly when KVM cannot be used: QEMU is never left to fall back to TCG, which would
    make every job tens of times slower without a word."""
    fix = (
        "load the module (modprobe kvm_intel or kvm_amd; enable virtualisation in the firmware), "
        "let the service's user open it (it must be in group kvm), or, knowing that jobs become "
        'far slower, set [vm] accel = "tcg"'
    )
    if not device.exists():
        raise KVMUnavailable(f"[vm] accel = kvm, but {device} does not exist", hint=fix)
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise KVMUnavailable(
            f"[vm] accel = kvm, but {device} cannot be opened: {exc.strerror}", hint=fix
        ) from None
    os.close(fd)


class Guest:
    """A booted guest reached over one SSH connection; made by ``start_machine``."""

    def __init__(
        self,
        transport: paramiko.Transport,
        port: int,
        console_path: Path,
        profile: GuestProfile,
        keypair: KeyPair,
        shutdown: ShutdownPolicy | None = None,
        qemu: QemuProcess | None = None,
        stop: Callable[[], None] = lambda: None,
        disk: Path | None = None,
        qmp_path: Path | None = None,
    ) -> None:
        self._shutdown = shutdown or ShutdownPolicy()
        self._qemu = qemu
        self._qmp_path = qmp_path
        self._transport = transport
        self._sftp = ssh.SFTP(transport)
        self._keypair = keypair
        self.port = port
        self.console_path = console_path
        self.profile = profile
        self.user = profile.user
        #: The VM's own disk (the overlay on the base image), while the VM exists.
        self.disk = disk
        self._stop = stop

    def exec(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        on_stdout: Callable[[bytes], None],
        on_stderr: Callable[[bytes], None],
        stop: threading.Event | None = None,
        stop_grace: float = 10.0,
    ) -> int | None:
        """Run ``command`` (no pty), streaming output chunks as they arrive; see ssh.run_command."""
        return ssh.run_command(
            self._transport,
            command,
            stdin=stdin,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            stop=stop,
            stop_grace=stop_grace,
        )

    def open_files(self) -> None:
        """Start the SFTP session that put/get/make_dirs use (see ssh.SFTP.open)."""
        self._sftp.open()

    def put(self, path: str, data: bytes, mode: int) -> None:
        self._sftp.put(path, data, mode)

    def get(self, path: str, limit: int | None = None) -> bytes:
        return self._sftp.get(path, limit)

    def make_dirs(self, relative: Sequence[str]) -> str:
        return self._sftp.make_dirs(relative)

    def console_tail(self, lines: int = 20) -> str:
        return read_tail(self.console_path, lines)

    def private_key_openssh(self) -> str:
        """The job's private key (OpenSSH PEM) for opt-in debug SSH; never log it."""
        return self._keypair.private_openssh()

    @property
    def process(self) -> QemuProcess | None:
        """QEMU's process (a warm pool keeper reaps it and reports its end to the VM's taker)."""
        return self._qemu

    @property
    def powered_off(self) -> bool:
        """Whether the guest powered itself off when QEMU was stopped (see ShutdownPolicy)."""
        return self._shutdown.powered_off

    def stop(self) -> None:
        """Stop the VM now, as the stack's unwind would (so its disk can be copied afterwards)."""
        self._transport.close()
        self._stop()

    def hurry(self) -> None:
        """Skip the graceful powerdown when this VM is stopped (cancellation)."""
        self._shutdown.powerdown_timeout = 0.0

    def probe(self) -> None:
        """Return once the guest's sshd has answered a no-op request (see ssh.ping)."""
        ssh.ping(self._transport)

    def disconnect(self) -> None:
        """Drop the SSH connection (from any thread): whatever waits on it raises GuestConnectionLost.
        For a guest that stopped answering; ``close`` would wait for a blocked SFTP call."""
        self._transport.close()

    def exited(self, wait: float = 0.0) -> str:
        if self._qemu is None:
            return ""
        try:
            code = self._qemu.wait(timeout=wait) if wait > 0 else self._qemu.poll()
        except subprocess.TimeoutExpired:
            return ""
        if code is None:
            return ""
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        stderr = self.console_path.with_name("qemu.stderr")
        return _early_exit_message(f"QEMU exited ({how})", stderr, self.console_path)

    def close(self) -> None:
        self._sftp.close()
        self._transport.close()

    def running(self) -> bool:
        """Whether QEMU still runs (a ``sudo poweroff`` in the guest ends it)."""
        return self._qemu is not None and self._qemu.poll() is None

    def wait_stopped(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for QEMU to exit; True once it has."""
        if self._qemu is None:
            return True
        try:
            self._qemu.wait(timeout=max(timeout, 0.0))
            return True
        except subprocess.TimeoutExpired:
            return False

    def expose_ssh(self, address: str, ports: range, ports_dir: Path, stack: contextlib.ExitStack) -> int:
        """A second SSH forward for this running VM on ``address``, at the first free port of
        ``ports`` (leased like the loopback ports, released when ``stack`` unwinds); added over
        QMP (HMP ``hostfwd_add``), so only a VM that needs it ever listens there. Raises
        PortForwardError when no port of the range is free."""
        if self._qmp_path is None:
            raise VMError("this guest has no QMP socket to add a port forward with")
        ports_dir.mkdir(parents=True, exist_ok=True)
        last = "every port is leased by another VM"
        for port in ports:
            lease = try_lease(ports_dir, port)
            if lease is None:
                continue
            rule = f"tcp:{address}:{port}-:22"
            try:
                said = qmp_command(
                    self._qmp_path,
                    "human-monitor-command",
                    arguments={"command-line": f"hostfwd_add {NETDEV} {rule}"},
                )
            except QMPUnavailable:
                lease.release()
                raise
            if str(said or "").strip():  # HMP answers nothing on success, the error otherwise
                last = str(said).strip()
                lease.release()
                continue
            stack.callback(lease.release)
            return port
        raise PortForwardError(
            f"no free port for debug SSH on {address} in {ports.start}-{ports.stop - 1} ({last})",
            hint="widen [debug] port_min/port_max, or free the ports other programs hold",
        )


#: What QEMU keeps of its caller's environment. Nothing else: the caller's environment can hold a
#: job's secrets (`solstice run --secret NAME` reads them from it), and QEMU would keep them in its
#: /proc/<pid>/environ for the job's whole life.
QEMU_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")


def qemu_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    kept = {k: env[k] for k in QEMU_ENV_KEEP if k in env}
    kept.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    return kept


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _early_exit_message(what: str, stderr_path: Path, console: Path) -> str:
    try:
        stderr = stderr_path.read_text(errors="replace").strip()
    except OSError:
        stderr = ""
    parts = [what]
    if stderr:
        parts.append("QEMU said:\n" + stderr)
    tail = read_tail(console)
    if tail:
        parts.append("last console lines:\n" + tail)
    return "\n".join(parts)


def _await_qemu(
    qemu: subprocess.Popen[bytes], qmp_path: Path, stderr_path: Path, console: Path, deadline: float
) -> None:
    """Return once QEMU answers QMP, i.e. has finished setting up, host forward included.

    The QMP socket file appears before the network is set up, so only an answer counts."""
    while True:
        if qemu.poll() is not None:
            msg = _early_exit_message(
                f"QEMU exited with status {qemu.returncode} at start", stderr_path, console
            )
            if _HOSTFWD_FAILED in msg:
                raise PortForwardError(msg)
            raise VMError(msg)
        if time.monotonic() > deadline:
            raise VMError(_early_exit_message("QEMU did not answer QMP at start", stderr_path, console))
        try:
            qmp_command(qmp_path, "query-status", timeout=5.0)
            return
        except QMPUnavailable:
            time.sleep(0.05)


def _stop(qemu: QemuProcess, qmp_path: Path, shutdown: ShutdownPolicy) -> None:
    # The policy is read now, at unwind time, not when the callback was registered.
    if qemu.poll() is None:
        shutdown.powered_off = stop_qemu(qemu, qmp_path, shutdown.powerdown_timeout)


def _launch(
    spec: MachineSpec,
    workdir: Path,
    ports_dir: Path,
    stack: contextlib.ExitStack,
    qemu_args: Callable[[int], QemuArgs],
    deadline: float,
    shutdown: ShutdownPolicy,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start QEMU with a leased port; retry with another port when the host forward fails."""
    qmp_path = workdir / "qmp.sock"
    stderr_path = workdir / "qemu.stderr"
    console = workdir / "console.log"
    for attempt in range(1, PORT_ATTEMPTS + 1):
        with contextlib.ExitStack() as attempt_stack:
            lease = attempt_stack.enter_context(allocate_port(ports_dir))
            attempt_stack.callback(_unlink, stderr_path)
            attempt_stack.callback(_unlink, qmp_path)
            argv = qemu_argv(qemu_args(lease.port))
            with stderr_path.open("wb") as err:
                qemu = proc.spawn(
                    argv, stderr=err.fileno(), new_session=True, env=qemu_environment(), die_with_parent=True
                )
            # Own process group: a Ctrl-C on the terminal reaches us, and we stop QEMU in order.
            # And it dies with us: a job process killed by SIGKILL leaves no QEMU running.
            attempt_stack.callback(_stop, qemu, qmp_path, shutdown)
            try:
                _await_qemu(qemu, qmp_path, stderr_path, console, deadline)
            except PortForwardError as exc:
                log.info("port %d: %s (attempt %d of %d)", lease.port, exc, attempt, PORT_ATTEMPTS)
                if attempt == PORT_ATTEMPTS:
                    raise
                continue
            stack.push(attempt_stack.pop_all())
            return qemu, lease.port
    raise AssertionError("unreachable")


def start_machine(
    spec: MachineSpec,
    workdir: Path,
    ports_dir: Path,
    stack: contextlib.ExitStack,
    on_phase: Callable[[Phase], None] | None = None,
) -> Guest:
    """Boot a fresh VM for one job and return it once SSH with our key works.

    Raises ImageError (overlay), VMError (QEMU failed or died), BootTimeout (no SSH in time).
    Everything made here is undone when ``stack`` unwinds: SSH closed, QEMU stopped (see
    qmp.stop_qemu), the port released, and every file in ``workdir`` removed; the console log
    goes last so the job can still read its tail while the stack unwinds.
    """

    def phase(p: Phase) -> None:
        if on_phase is not None:
            on_phase(p)

    phase(Phase.PREPARE)
    workdir.mkdir(parents=True, exist_ok=True)
    qmp_path = workdir / "qmp.sock"
    if len(str(qmp_path)) > _SUN_PATH_MAX:
        raise VMError(f"work directory path too long for a unix socket: {workdir}")
    console = workdir / "console.log"
    overlay = workdir / "overlay.qcow2"
    # Refuse a directory another VM may be using: our cleanup would delete its files.
    busy = [p.name for p in (console, overlay, qmp_path) if p.exists() or p.is_symlink()]
    if busy:
        raise VMError(f"work directory {workdir} is in use (has {', '.join(busy)})")
    stack.callback(_unlink, console)
    stack.callback(_unlink, overlay)
    create_overlay(spec.base_image, overlay, spec.image_format, spec.disk_gib, spec.qemu_img)

    if spec.accel == "kvm":
        check_kvm()
    keypair = generate_keypair()
    provisioner = for_profile(spec.profile)
    stack.callback(_unlink, workdir / provisioner.file_name)
    seed = provisioner.write(
        workdir, spec.profile, FirstBoot(keypair.public_line, spec.instance_id, spec.hostname)
    )
    readiness = provisioner.readiness(spec.profile)
    vars_copy: Path | None = None
    if spec.boot is BootMode.UEFI:
        vars_copy = workdir / "OVMF_VARS.fd"
        stack.callback(_unlink, vars_copy)
        shutil.copyfile(spec.ovmf_vars, vars_copy)

    def qemu_args(port: int) -> QemuArgs:
        return QemuArgs(
            qemu=spec.qemu,
            accel=spec.accel,
            cpus=spec.cpus,
            memory_mib=spec.memory_mib,
            disk=overlay,
            seed=seed.path,
            seed_bus=seed.bus,
            disk_bus=spec.profile.disk_bus,
            ssh_port=port,
            qmp_socket=qmp_path,
            console_log=console,
            boot=spec.boot,
            kernel=spec.kernel,
            initrd=spec.initrd,
            cmdline=spec.cmdline,
            ovmf_code=Path(spec.ovmf_code) if spec.boot is BootMode.UEFI else None,
            ovmf_vars=vars_copy,
            name=f"solstice-{spec.instance_id}",
            machine=spec.profile.machine,
            nic=spec.profile.nic,
            extra=(*provisioner.qemu_args(spec.profile), *spec.profile.qemu_args),
        )

    phase(Phase.BOOT)
    started = time.monotonic()
    deadline = started + spec.boot_timeout
    shutdown = ShutdownPolicy()
    qemu, port = _launch(spec, workdir, ports_dir, stack, qemu_args, deadline, shutdown)
    try:
        transport = ssh.wait_ready(
            port,
            spec.profile.user,
            keypair.pkey,
            timeout=max(deadline - time.monotonic(), 0.0),
            probes=readiness.probes,
            ready_command=readiness.command,
            alive=lambda: qemu.poll() is None,
        )
    except ssh.SSHNotReady as exc:
        raise BootTimeout(
            f"the guest did not answer SSH on 127.0.0.1:{port} as {spec.profile.user!r} within "
            f"{spec.boot_timeout:.0f} s (last error: {exc.last_error}).\n"
            f"Last console lines:\n{read_tail(console)}",
            hint=(
                "check on the console above that the guest booted (kernel, root device, cmdline), "
                f"that its agent found the seed (profile {spec.profile.name!r}: "
                f"{spec.profile.provisioning}, on {seed.bus}), and that sshd started; under TCG "
                "raise [vm] boot_timeout"
            ),
        ) from None
    except VMError:
        raise VMError(
            _early_exit_message(
                f"QEMU exited with status {qemu.returncode} while the guest was booting",
                workdir / "qemu.stderr",
                console,
            )
        ) from None
    if spec.powerdown:
        shutdown.powerdown_timeout = spec.shutdown_timeout  # up now: it can power down politely
    guest = _open_guest(
        transport, port, console, spec.profile, keypair, shutdown, qemu, qmp_path, overlay, stack
    )
    log.info("guest ready on 127.0.0.1:%d after %.1f s", port, time.monotonic() - started)
    phase(Phase.READY)
    return guest


def attach_machine(
    *,
    port: int,
    profile: GuestProfile,
    keypair: KeyPair,
    qemu: QemuProcess,
    qmp_path: Path,
    console: Path,
    disk: Path | None,
    stack: contextlib.ExitStack,
    timeout: float = 30.0,
) -> Guest:
    """A running VM that another process booted (a warm pool VM), as this process's Guest: a new
    SSH connection with the handed-over key, and QEMU stopped when ``stack`` unwinds, as
    start_machine's are. Raises BootTimeout or VMError when the guest does not answer."""
    shutdown = ShutdownPolicy()
    stack.callback(_stop, qemu, qmp_path, shutdown)
    try:
        transport = ssh.wait_ready(
            port, profile.user, keypair.pkey, timeout=timeout, alive=lambda: qemu.poll() is None
        )
    except ssh.SSHNotReady as exc:
        raise BootTimeout(
            f"the warm VM did not answer SSH on 127.0.0.1:{port} within {timeout:.0f} s "
            f"(last error: {exc.last_error})"
        ) from None
    return _open_guest(transport, port, console, profile, keypair, shutdown, qemu, qmp_path, disk, stack)


def _open_guest(
    transport: paramiko.Transport,
    port: int,
    console: Path,
    profile: GuestProfile,
    keypair: KeyPair,
    shutdown: ShutdownPolicy,
    qemu: QemuProcess,
    qmp_path: Path,
    disk: Path | None,
    stack: contextlib.ExitStack,
) -> Guest:
    """The Guest of a VM whose SSH answered (booted here or handed over), its SFTP session open;
    closed when ``stack`` unwinds."""
    guest = Guest(
        transport,
        port,
        console,
        profile,
        keypair,
        shutdown,
        qemu=qemu,
        stop=lambda: _stop(qemu, qmp_path, shutdown),
        disk=disk,
        qmp_path=qmp_path,
    )
    stack.callback(guest.close)
    try:
        guest.open_files()
    except GuestConnectionLost as exc:
        raise VMError(
            f"the guest answered SSH but its SFTP subsystem did not start ({exc})",
            hint="Solstice moves step scripts and files with SFTP: the image's sshd_config needs a "
            "'Subsystem sftp' line",
        ) from None
    return guest
