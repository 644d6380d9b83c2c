"""How one step becomes a command in the guest: the shell template, the script file, the env file.

Secrets travel inside the env file, uploaded over SFTP with mode 0600 into the guest; the command
line that sshd runs holds only paths, so no secret appears in any argv or in any file on the host.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from solstice.errors import WorkflowError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ShellCommand:
    template: str  # contains {0}, the script path
    extension: str


def resolve_shell(shell: str | None, bash: str, sh: str = "sh") -> ShellCommand:
    """GitHub's shells: unspecified -> ``bash -e {0}`` (``sh -e {0}`` without bash), ``bash`` ->
    ``bash --noprofile --norc -eo pipefail {0}``, ``sh`` -> ``sh -e {0}``, ``python`` -> ``python {0}``,
    anything else must be a template containing ``{0}``. ``bash`` and ``sh`` are the guest
    profile's paths."""
    if shell is None or not shell.strip():
        return ShellCommand(f"{bash} -e {{0}}" if bash else f"{sh} -e {{0}}", ".sh")
    name = shell.strip()
    if name == "bash":
        if not bash:
            raise WorkflowError("shell: bash is not installed in this guest image (use shell: sh)")
        return ShellCommand(f"{bash} --noprofile --norc -eo pipefail {{0}}", ".sh")
    if name == "sh":
        return ShellCommand(f"{sh} -e {{0}}", ".sh")
    if name == "python":
        return ShellCommand("python3 {0}", ".py")
    if "{0}" in name:
        return ShellCommand(name, "")
    raise WorkflowError(f"shell: {name!r} is not supported (use bash, sh, python or a template with {{0}})")


def sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def env_file(env: Mapping[str, str], path_prepend: list[str]) -> tuple[str, list[str]]:
    """A POSIX sh file exporting ``env``; returns it and the names skipped as invalid."""
    lines = []
    skipped = []
    for name, value in env.items():
        if not _NAME.match(name):
            skipped.append(name)
            continue
        lines.append(f"export {name}={sh_quote(value)}")
    if path_prepend:
        lines.append("export PATH=" + sh_quote(":".join(path_prepend)) + '":$PATH"')
    return "\n".join(lines) + "\n", skipped


def step_command(
    *,
    shell: ShellCommand,
    script: str,
    envfile: str,
    pidfile: str,
    workdir: str,
) -> str:
    """The command sshd runs. sshd makes it a session leader, so its pid (recorded in ``pidfile``
    and kept by ``exec``) names the process group that a timeout or cancellation kills."""
    argv = shell.template.replace("{0}", shlex.quote(script))
    wd = shlex.quote(workdir)
    return (
        f'cd {wd} 2>/dev/null || {{ echo "working-directory {workdir} does not exist" >&2; exit 2; }}; '
        f". {shlex.quote(envfile)} && rm -f {shlex.quote(envfile)} && "
        f"echo $$ > {shlex.quote(pidfile)} && exec {argv}"
    )


def kill_command(pidfile: str, signal: str) -> str:
    pf = shlex.quote(pidfile)
    return f'[ -f {pf} ] && kill -{signal} -- -"$(cat {pf})" 2>/dev/null; true'
