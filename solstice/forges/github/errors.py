"""GitHub-specific errors (the forge-neutral ones are in solstice.forges.core.errors)."""

from __future__ import annotations

from solstice.forges.core.errors import ForgeError


class SessionConflict(ForgeError):
    """The broker already has a session for this runner (HTTP 409, protocol §5.1): another
    process runs with this registration. The official runner retries every 30 s for 4 min."""


class SessionInvalid(ForgeError):
    """``errorKind: RunnerSessionInvalid`` (§5.2, §12): create a new session and poll again."""


class VersionTooOld(ForgeError):
    """``errorKind: RunnerVersionTooOld`` (§5.2, §12): the broker refuses the reported runner
    version; fatal until the configured version is raised."""


class JobGone(ForgeError):
    """acquirejob answered 404/409/422, or acknowledge ``AcknowledgeJobNotFound`` (§6.1, §12): the
    job is someone else's or no more. Skip it; an ephemeral runner exits instead of looping."""


class LeaseLost(ForgeError):
    """renewjob/completejob answered 404 (§6.3, §9): the job's lease expired server-side; stop
    renewing and cancel the job."""
