"""Secret masking: every occurrence of a secret (or an ``::add-mask::`` value) becomes ``***``."""

from __future__ import annotations

import threading

from solstice.model.masking import MASK, mask_text, mask_values

__all__ = ["MASK", "Masker"]


class Masker:
    def __init__(self, values: list[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._values: list[str] = mask_values(values or [])

    def add(self, value: str) -> None:
        """Mask ``value`` from now on (and each of its lines: output is masked line by line)."""
        with self._lock:
            self._values = mask_values([*self._values, value])

    def apply(self, text: str) -> str:
        with self._lock:
            values = self._values
        return mask_text(text, values)

    def __len__(self) -> int:
        return len(self._values)
