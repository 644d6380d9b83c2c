"""Debug SSH in the job process (docs/debug-ssh.md): a failed job that asks for it keeps its VM
for ``[debug] ttl`` seconds, entered with the public keys of the forge user who triggered it.

The hook (``keeper``) runs after the last step, while the job's SSH session is still open: it
reserves the repository and a host slot (solstice.model.debugssh), adds a port forward on the
operator's address, replaces the guest's authorized_keys with the user's keys (the job's own
ephemeral key is removed: nobody needs it any more, and it never left this process), closes the
job's session, writes the log lines (the ssh command and the expiry, nothing secret), reports the
job's result, and waits until the TTL ends, the guest powers off or the job is stopped. Then the
job's ExitStack stops QEMU as after any job. The TTL is never renewed.

If this process dies, its unit (or the process spawner's supervisor) kills QEMU with it: a kept
VM never outlives its job process, and the job unit's RuntimeMaxSec= (which includes the TTL for
such jobs) bounds a job process that hangs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from solstice.config import DebugConfig
from solstice.errors import SolsticeError
from solstice.job.runner import FailedVM
from solstice.model import debugssh as policy

log = logging.getLogger("solstice.job")

PREFIX = "Debug SSH: "
#: At most this many of the user's keys go into the guest (a forge lists them all).
MAX_KEYS = 50


def keeper(cfg: DebugConfig, runtime_dir: str | Path) -> Callable[[FailedVM], None]:
    """The service's keep_on_failure hook for this host's ``[debug]`` table."""
    return lambda failed: keep(failed, cfg, Path(runtime_dir))


def authorized_keys(keys: tuple[str, ...]) -> bytes:
    return "".join(f"{k.strip()}\n" for k in keys[:MAX_KEYS] if k.strip()).encode()


#: Replaces the login user's authorized_keys with stdin (the user's keys, never the job's key).
INSTALL_KEYS = (
    "umask 077 && mkdir -p ~/.ssh && cat > ~/.ssh/authorized_keys.solstice && "
    "mv -f ~/.ssh/authorized_keys.solstice ~/.ssh/authorized_keys"
)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def keep(
    failed: FailedVM, cfg: DebugConfig, runtime_dir: Path, clock: Callable[[], float] = time.time
) -> None:
    request = failed.request
    if not policy.requested(request.job):
        value = policy.switch_value(request.job)
        if value:
            failed.log(
                f"{PREFIX}{policy.SWITCH}={value!r} is not understood (the switch is "
                f"{policy.SWITCH}: {policy.ON_FAILURE}); the VM is not kept"
            )
        return
    why = policy.refusal(request, cfg)
    if why:
        failed.log(f"{PREFIX}{why}; the VM is not kept")
        return
    access = request.debug_access
    assert access is not None
    guest = failed.guest
    with contextlib.ExitStack() as holding:
        try:
            holding.enter_context(policy.reserve(runtime_dir, request.repository, cfg.max_vms))
        except policy.DebugRefused as exc:
            failed.log(f"{PREFIX}not kept: {exc}")
            return
        except OSError as exc:  # e.g. a unit without ReadWritePaths= for it
            where = policy.debug_dir(runtime_dir)
            failed.log(f"{PREFIX}not kept: this host's registry {where} cannot be used ({exc.strerror})")
            return
        try:
            port = guest.expose_ssh(
                cfg.address, range(cfg.port_min, cfg.port_max + 1), runtime_dir / "ports", failed.stack
            )
            errors: list[bytes] = []
            status = guest.exec(
                INSTALL_KEYS,
                stdin=authorized_keys(access.public_keys),
                on_stdout=lambda b: None,
                on_stderr=errors.append,
            )
            if status != 0:
                detail = b"".join(errors).decode(errors="replace").strip()[:500]
                raise SolsticeError(f"installing the keys in the guest failed ({status}): {detail}")
        except SolsticeError as exc:
            failed.log(f"{PREFIX}the VM could not be kept: {exc}")
            return
        expires = clock() + cfg.ttl
        host = cfg.host or cfg.address
        hold = policy.Hold(
            job_id=request.job_id,
            repository=request.repository,
            user=access.user,
            login=guest.user,
            address=cfg.address,
            host=host,
            port=port,
            expires=expires,
            pid=os.getpid(),
        )
        try:
            holding.enter_context(policy.registered(runtime_dir, hold))
        except (policy.DebugRefused, OSError) as exc:
            failed.log(f"{PREFIX}not kept: {exc}")
            return
        failed.hold(cfg.ttl)
        guest.close()  # the job's session ends here; from now on only the user's keys log in
        n = min(len(access.public_keys), MAX_KEYS)
        failed.log(
            f"{PREFIX}the failed VM is kept until {policy.utc(expires)} ({_minutes(cfg.ttl)}, not "
            f"renewable) for the {n} public SSH key(s) of {access.user} on the forge"
        )
        failed.log(f"{PREFIX}connect with: {hold.command()}")
        failed.log(f"{PREFIX}the job's workspace is under ~/work; end the session early with: sudo poweroff")
        reported = cfg.report == "at-once"
        if reported:
            failed.report()
        ended = _wait(failed, expires, clock)
        line = f"{PREFIX}the kept VM of job {request.job_id} is gone: {ended}"
        if reported:
            log.warning("%s", line)  # the forge's log is closed: the journal says it
        else:
            failed.log(line)


def _wait(failed: FailedVM, expires: float, clock: Callable[[], float]) -> str:
    """Until the TTL ends, the guest powers off or the job is stopped; returns which."""
    while True:
        remaining = expires - clock()
        if remaining <= 0:
            return "its time is up"
        if failed.cancel.is_set():
            return "the job was stopped (solstice debug kill, or its unit)"
        if failed.guest.wait_stopped(min(remaining, 0.5)):
            return "the guest powered off"
