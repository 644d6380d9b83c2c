"""Errors every forge backend raises, so the poller core can react without knowing the forge."""

from __future__ import annotations

from solstice.errors import InfraError, SolsticeError


class ForgeError(SolsticeError):
    """The forge refused a call. ``status`` is the HTTP status (0 when no response came), ``code``
    the forge's own error code (``""`` if none), ``procedure`` the call that failed."""

    def __init__(self, message: str, *, status: int = 0, code: str = "", procedure: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.procedure = procedure


class RegistrationGone(ForgeError):
    """The forge no longer knows this runner (deleted, or its credential is wrong): register again."""


class ForgeUnavailable(ForgeError, InfraError):
    """The forge cannot be reached or failed transiently: retry with backoff."""
