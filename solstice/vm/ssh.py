"""SSH to the guest with paramiko: the readiness wait, commands, and SFTP.

Host keys are not checked. The port is on 127.0.0.1 and forwarded by SLIRP of the QEMU child we
just started with a disk nobody else has seen; the guest makes fresh host keys on each boot, so
there is nothing to pin, and no other party sits on that path to impersonate it.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import paramiko

from solstice.errors import BootTimeout, GuestConnectionLost, VMError
from solstice.vm.ports import HOST

log = logging.getLogger("solstice.vm.ssh")

# Failed probes during boot are expected and paramiko logs each at ERROR with a traceback; they
# go to this logger, which is quiet unless someone lowers its level to debug a boot.
_PROBE_LOG = "solstice.vm.ssh.probe"
logging.getLogger(_PROBE_LOG).setLevel(logging.CRITICAL)

#: Pause between probes; short because under KVM sshd can come up in a few seconds.
PROBE_INTERVAL = 0.25
_CONNECT_TIMEOUT = 2.0
#: Until the guest's network is up SLIRP accepts our connection but cannot reach sshd, so a
#: probe waits for the banner; a slow guest under TCG can take seconds to send it.
_BANNER_TIMEOUT = 5.0
_AUTH_TIMEOUT = 15.0
_KEEPALIVE = 15


class SSHNotReady(BootTimeout):
    """No SSH login within the timeout; ``last_error`` says what the last probe met."""

    def __init__(self, timeout: float, last_error: str) -> None:
        super().__init__(f"no SSH login within {timeout:.0f} s (last error: {last_error})")
        self.last_error = last_error


def connect(port: int, user: str, pkey: paramiko.PKey, timeout: float = 30.0) -> paramiko.Transport:
    """One authenticated SSH transport to 127.0.0.1:port, or an exception from socket/paramiko."""
    sock = socket.create_connection((HOST, port), timeout=min(_CONNECT_TIMEOUT, timeout))
    transport = paramiko.Transport(sock)
    try:
        transport.set_log_channel(_PROBE_LOG)
        transport.banner_timeout = min(_BANNER_TIMEOUT, timeout)
        transport.auth_timeout = min(_AUTH_TIMEOUT, timeout)
        transport.start_client(timeout=timeout)
        transport.auth_publickey(user, pkey)
        if not transport.is_authenticated():
            raise paramiko.AuthenticationException("public key not accepted")
    except BaseException:
        transport.close()
        raise
    transport.set_log_channel("solstice.vm.ssh.transport")
    transport.set_keepalive(_KEEPALIVE)
    return transport


def wait_ready(
    port: int,
    user: str,
    pkey: paramiko.PKey,
    *,
    timeout: float,
    probes: int = 1,
    ready_command: str = "",
    alive: Callable[[], bool] = lambda: True,
) -> paramiko.Transport:
    """Probe until ``probes`` consecutive logins with our key succeed (and, when given,
    ``ready_command`` exits 0 on the last one); return the last one.

    Raises SSHNotReady (a BootTimeout) when ``timeout`` passes first, VMError as soon as
    ``alive()`` is false.
    """
    deadline = time.monotonic() + timeout
    successes = 0
    last_error = "no answer yet"
    kept: paramiko.Transport | None = None
    try:
        while True:
            if not alive():
                raise VMError("QEMU exited while the guest was booting")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SSHNotReady(timeout, last_error)
            try:
                transport = connect(port, user, pkey, timeout=remaining)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                # Includes AuthenticationException: sshd may answer before cloud-init has
                # installed our key.
                successes = 0
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if error != last_error:
                    log.debug("SSH probe on port %d: %s", port, error)
                last_error = error
            else:
                log.debug("SSH probe on port %d: logged in", port)
                if ready_command and not _succeeds(transport, ready_command):
                    transport.close()
                    successes = 0
                    last_error = f"logged in, but {ready_command!r} did not succeed yet"
                    time.sleep(PROBE_INTERVAL)
                    continue
                successes += 1
                if kept is not None:
                    kept.close()
                kept = transport
                if successes >= probes:
                    result, kept = kept, None
                    return result
            time.sleep(PROBE_INTERVAL)
    finally:
        if kept is not None:
            kept.close()


def _succeeds(transport: paramiko.Transport, command: str) -> bool:
    """Whether ``command`` exits 0; a connection dropped meanwhile counts as not yet."""
    try:
        status = run_command(
            transport, command, stdin=None, on_stdout=lambda b: None, on_stderr=lambda b: None
        )
    except GuestConnectionLost:
        return False
    return status == 0


def _lost(what: str, exc: BaseException | None = None) -> GuestConnectionLost:
    detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    return GuestConnectionLost(f"the SSH connection to the guest dropped while {what}{detail}")


def run_command(
    transport: paramiko.Transport,
    command: str,
    *,
    stdin: bytes | None,
    on_stdout: Callable[[bytes], None],
    on_stderr: Callable[[bytes], None],
    stop: threading.Event | None = None,
    stop_grace: float = 10.0,
    poll: float = 0.1,
) -> int | None:
    """Run ``command`` on a new channel (no pty), passing output chunks on as they arrive.

    Returns the exit status; -1 when the command ended without one (killed by a signal). When
    ``stop`` is set, waits up to ``stop_grace`` seconds for the end, then closes the channel and
    returns None. Paramiko transports are thread-safe, so several calls may run at once.
    """
    try:
        chan = transport.open_session(timeout=30)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise _lost("opening a channel", exc) from exc
    stop_deadline: float | None = None
    try:
        try:
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            # EOF on stdin, so a command that reads it does not wait forever.
            chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise _lost("starting a command", exc) from exc

        def drain() -> bool:
            got = False
            while chan.recv_ready():
                data = chan.recv(65536)
                if data:
                    on_stdout(data)
                    got = True
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                if data:
                    on_stderr(data)
                    got = True
            return got

        while True:
            if drain():
                continue
            # sshd sends the exit status when the command exits, which can be before the output
            # still queued behind the channel's window (measured: the last 224 KiB of a 1 GiB
            # flood): read on until the guest's EOF, or until nothing came for a while (a
            # background process of the step may keep the output open).
            if chan.exit_status_ready():
                _drain_until_eof(chan, drain, transport, poll)
                status = chan.recv_exit_status()
                if status == -1 and not transport.is_active():
                    # paramiko marks every channel done when the transport closes: no status.
                    raise _lost("a command was running")
                return status
            if chan.closed or chan.eof_received:
                if not transport.is_active():
                    raise _lost("a command was running")
                if chan.closed:
                    drain()
                    return -1
            if stop is not None and stop.is_set():
                now = time.monotonic()
                if stop_deadline is None:
                    stop_deadline = now + stop_grace
                elif now >= stop_deadline:
                    return None
            elif not transport.is_active():
                raise _lost("a command was running")
            if chan.eof_received:
                # After EOF the channel's fd stays readable; a command that closed its output
                # but still runs must not turn this loop into a busy wait.
                chan.status_event.wait(poll)
            else:
                select.select([chan], [], [], poll)
    finally:
        chan.close()


#: After a command's exit status: how long the output may pause before it counts as finished.
EXIT_DRAIN_IDLE = 2.0


def _drain_until_eof(
    chan: paramiko.Channel, drain: Callable[[], bool], transport: paramiko.Transport, poll: float
) -> None:
    idle_until = time.monotonic() + EXIT_DRAIN_IDLE
    while True:
        if drain():
            idle_until = time.monotonic() + EXIT_DRAIN_IDLE
            continue
        if chan.eof_received or chan.closed or not transport.is_active():
            drain()
            return
        if time.monotonic() >= idle_until:
            return
        select.select([chan], [], [], poll)


def ping(transport: paramiko.Transport) -> None:
    """Return once sshd has answered a keepalive request (it answers with a refusal, which is the
    point: an answer at all). A guest whose vCPUs stopped never answers, and the TCP connection to
    SLIRP stays up, so paramiko's own keepalive (no reply wanted) cannot tell."""
    transport.global_request("keepalive@openssh.com", wait=True)
    if not transport.is_active():
        raise _lost("waiting for an answer to a keepalive")


class SFTP:
    """One SFTP session per guest, opened on first use and kept: every new session starts an
    sftp-server process in the guest, which costs a noticeable fraction of a second under emulation.
    Callers from several threads are serialised (paramiko's SFTPClient is not thread-safe)."""

    def __init__(self, transport: paramiko.Transport) -> None:
        self._transport = transport
        self._client: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()

    def _session(self) -> paramiko.SFTPClient:
        if self._client is None:
            client = paramiko.SFTPClient.from_transport(self._transport)
            if client is None:
                raise paramiko.SSHException("SFTP subsystem refused")
            self._client = client
        return self._client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[paramiko.SFTPClient]:
        """The session, under the lock; a broken connection becomes GuestConnectionLost, while
        an OSError of a live one (PermissionError, FileNotFoundError) is the caller's to judge."""
        with self._lock:
            try:
                yield self._session()
            except (EOFError, paramiko.SSHException) as exc:
                self._drop()
                raise _lost(what, exc) from exc
            except OSError as exc:
                if not self._transport.is_active():
                    self._drop()
                    raise _lost(what, exc) from exc
                raise

    def open(self) -> None:
        """Start the session now (the guest's sftp-server): part of the guest being ready, since
        every step needs it, and a guest without one is better refused at boot than mid-job."""
        with self._call("starting SFTP"):
            pass

    def put(self, path: str, data: bytes, mode: int) -> None:
        """Write ``data`` to ``path``, then chmod it: the mode of a new file depends on the
        server's umask, so it is set explicitly."""
        with self._call(f"uploading {path}") as sftp:
            with sftp.open(path, "wb") as fh:
                fh.set_pipelined(True)
                fh.write(data)
            sftp.chmod(path, mode)

    def get(self, path: str, limit: int | None = None) -> bytes:
        """The file, or its first ``limit`` + 1 bytes (a guest's file can be of any size)."""
        with self._call(f"downloading {path}") as sftp, sftp.open(path, "rb") as fh:
            if limit is None:
                fh.prefetch()
                return fh.read()
            fh.prefetch(min(fh.stat().st_size or 0, limit + 1))
            return fh.read(limit + 1)

    def make_dirs(self, relative: Sequence[str]) -> str:
        """Create ``relative`` directories (parents too) under the login's home; return the home.

        Through SFTP, not a shell command: a command costs a process start in the guest (most of
        a second under emulation), an SFTP request only a round trip to the running sftp-server."""
        with self._call("creating the workspace") as sftp:
            home = sftp.normalize(".")
            made: set[str] = set()
            for rel in relative:
                path = home
                for part in rel.strip("/").split("/"):
                    path = f"{path}/{part}"
                    if path in made:
                        continue
                    try:
                        sftp.mkdir(path)
                    except OSError:
                        if not stat.S_ISDIR(sftp.stat(path).st_mode or 0):
                            raise
                    made.add(path)
            return home

    def close(self) -> None:
        with self._lock:
            self._drop()
