"""The job process's systemd notifications: ``solstice.notify`` (ground floor, so a poller that
never loads the job package sends the same ones)."""

from solstice.notify import Notifier

__all__ = ["Notifier"]
