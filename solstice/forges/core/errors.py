"""The errors every forge backend raises, so the poller core handles them the same for each forge.

A backend maps its protocol's failures onto these: the core retries ``ForgeUnavailable`` with the
one backoff, stops on ``RegistrationGone``, counts other ``ForgeError``s as refusals, and gives a
task's report up on ``ReportBroken``.
"""

from __future__ import annotations

from solstice.errors import InfraError, SolsticeError


class ForgeError(SolsticeError):
    """The forge refused a call. ``code`` is the protocol's error code (``""`` if none),
    ``status`` the HTTP status (0 when no response came)."""

    def __init__(self, message: str, *, code: str = "", status: int = 0, procedure: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.procedure = procedure


class RegistrationGone(ForgeError):
    """The runner's registration was deleted or its token is wrong: register again."""


class ForgeUnavailable(ForgeError, InfraError):
    """The forge cannot be reached or failed transiently: retry with backoff."""


class ReportBroken(SolsticeError):
    """One task's report cannot go on (e.g. the forge lost rows it had acknowledged): give it up."""
