"""The exception tree of Solstice: every exception it raises on purpose, and where it lives.

    SolsticeError                 everything we raise on purpose; str() is a complete sentence
     +-- ConfigError              a configuration file or override is wrong (names key and file)
     |    +-- TemplateError       the job unit template cannot be used (dispatch.systemd)
     +-- UsageError               no usable job request or configuration (job.service; exit 2)
     +-- WorkflowError            a workflow cannot be translated (names file:line)
     |    +-- WorkflowProblems    several problems of one workflow file (workflow.translate)
     +-- LoadError                a YAML problem at a line, before translation (workflow.loader)
     +-- MatrixError              an invalid strategy.matrix (workflow.matrix)
     +-- ExpressionError          a ${{ }} expression cannot be parsed or evaluated
     +-- FileCommandError         a step wrote a malformed GITHUB_ENV/GITHUB_OUTPUT (job.filecmds)
     +-- CommandError             a subprocess failed (proc.run)
     +-- InvalidMessage           a queue message we do not understand (queue.errors)
     +-- CodecError               a forge message that does not decode (forges.*.messages; names the field)
     +-- RoutingError             runs-on names none or several of the runner's labels (model.labels)
     +-- DebugRefused             a failed job's VM cannot be kept for debug SSH (model.debugssh)
     +-- KeysUnavailable          the forge did not give a user's public SSH keys (forges.core.userkeys)
     +-- ReportBroken             one task's report cannot go on: give it up (forges.core)
     |    +-- ReportError         the forge lost log rows it had acknowledged (forges.forgejo.reporter)
     +-- StoreError               the job database refused an operation (store.errors)
     |    +-- InvalidTransition   a job state change the state machine does not allow
     |    +-- JobNotFound         no such job in the database
     |    +-- SchemaError         the database schema is older or newer than this Solstice
     +-- ForgeError               the forge refused a request (forges.core.errors)
     |    +-- RegistrationGone    the forge no longer knows this runner
     |    +-- ForgeUnavailable    the forge cannot be reached (also an InfraError)
     |    +-- LogArchived         the forge closed the task's log
     |    +-- Unimplemented       the forge does not implement the call
     |    +-- SessionConflict     another process holds this runner's broker session (forges.github)
     |    +-- SessionInvalid      the broker session is no more: create a new one (forges.github)
     |    +-- VersionTooOld       the broker refuses the reported runner version (forges.github)
     |    +-- JobGone             the job cannot be acquired (404/409/422): skip it (forges.github)
     |    +-- LeaseLost           the job's lease expired server-side (forges.github)
     +-- InfraError               the job could not run for a reason that is not the user's build
          +-- ImageError          image missing or unusable
          |    +-- DownloadError      an image could not be fetched, decompressed or checked (images)
          |    |    +-- ChecksumMismatch  the file is not the one the catalog names (images)
          |    +-- ProfileError   a guest profile contradicts itself or its provisioner (vm.profiles)
          +-- VMError             QEMU failed to start or died
          |    +-- KVMUnavailable     accel = kvm but /dev/kvm is missing or not usable (vm.machine)
          |    +-- PortForwardError   QEMU could not set up the SSH host forward (retry another port)
          |    +-- QMPUnavailable     QMP could not be reached or a command failed (vm.qmp)
          |    +-- WarmError          a warm pool VM could not be taken (images.warm; the job boots one)
          +-- BootTimeout         the guest did not answer SSH within the boot timeout
          |    +-- SSHNotReady    no SSH login within the timeout (vm.ssh; says the last error)
          +-- GuestConnectionLost the SSH connection to a running guest dropped
          +-- GuestUnresponsive   the guest stopped answering mid-job (job.liveness)
          +-- CheckoutError       the job's source could not be fetched or packed (job.checkout)
          +-- SecretsError        sealed secrets that this host's key cannot open (secrets)
          +-- StoreUnavailable    PostgreSQL cannot be reached (store.errors)
          +-- BrokerError         RabbitMQ failed us (queue.errors)
               +-- BrokerUnavailable  the broker could not be reached within the deadline
               +-- Unroutable         a mandatory publish had no queue to go to
               +-- PublishNacked      the broker refused a message
               +-- TopologyMismatch   an exchange or queue exists with other arguments
               +-- EventDeliveryError a job's events could not be delivered (queue.eventsink)

Inside a job, an InfraError, a CommandError or any other error of Solstice's own machinery ends
the job as ``error``; only the workflow's own faults (a step's exit status, WorkflowError,
ExpressionError, FileCommandError) end it as ``failure``. Only `solstice.cli` turns these into a
message and an exit status. tests/unit/test_error_tree.py checks this drawing against the code.
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


class DownloadError(ImageError):
    pass


class ChecksumMismatch(DownloadError):
    pass


class ProfileError(ImageError):
    pass


class VMError(InfraError):
    pass


class PortForwardError(VMError):
    pass


class BootTimeout(InfraError):
    pass


class GuestConnectionLost(InfraError):
    pass
