"""The exception tree of Solstice.

    SolsticeError                 everything we raise on purpose; str() is a complete sentence
     +-- ConfigError              a configuration file or override is wrong (names key and file)
     +-- WorkflowError            a workflow cannot be translated (names file:line)
     +-- ExpressionError          a ${{ }} expression cannot be parsed or evaluated
     +-- CommandError             a subprocess failed (proc.run)
     +-- InfraError               the job could not run for a reason that is not the user's build
          +-- ImageError          image missing or unusable
          +-- VMError             QEMU failed to start or died
          |    +-- PortForwardError   QEMU could not set up the SSH host forward (retry another port)
          +-- BootTimeout         the guest did not answer SSH within the boot timeout
          +-- GuestConnectionLost the SSH connection to a running guest dropped

Only `solstice.cli` turns these into a message and an exit status.
"""

from __future__ import annotations


class SolsticeError(Exception):
    """Base of every error Solstice raises on purpose.

    ``hint`` is an optional remedy shown in parentheses by the CLI.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(SolsticeError):
    pass


class WorkflowError(SolsticeError):
    """One or more problems in a workflow file; ``problems`` holds each as 'file:line: text'."""

    def __init__(self, problems: list[str] | str, *, hint: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems), hint=hint)


class ExpressionError(SolsticeError):
    pass


class CommandError(SolsticeError):
    """A subprocess exited non-zero (or could not be started)."""

    def __init__(self, argv: list[str], returncode: int | None, stderr: str = "") -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        what = "could not be started" if returncode is None else f"exited with status {returncode}"
        tail = stderr.strip().splitlines()[-5:]
        detail = (": " + " | ".join(tail)) if tail else ""
        super().__init__(f"{argv[0]} {what}{detail}")


class InfraError(SolsticeError):
    """The job could not run: not a build failure. Reported as result ``error``."""


class ImageError(InfraError):
    pass


class VMError(InfraError):
    pass


class PortForwardError(VMError):
    pass


class BootTimeout(InfraError):
    pass


class GuestConnectionLost(InfraError):
    pass
