"""Polling with a deadline, for every test folder (conftest modules cannot import each other)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(what: str, probe: Callable[[], T | None | bool], timeout: float, interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns something other than None or False; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
