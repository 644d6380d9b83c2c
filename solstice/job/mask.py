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

    def longest(self) -> int:
        """The longest masked value's length in UTF-8 bytes (0 without any)."""
        with self._lock:
            values = self._values
        return max((len(v.encode()) for v in values), default=0)

    def safe_cut(self, data: bytes, at: int) -> int:
        """``at``, or an earlier offset where ``data`` may be cut without splitting a masked value
        (the start of one that straddles ``at``; a value starting at 0 is left to the cut)."""
        with self._lock:
            values = [v.encode() for v in self._values]
        moved = True
        while moved:
            moved = False
            for value in values:
                i = data.find(value, max(0, at - len(value) + 1), at + len(value) - 1)
                if 0 < i < at:
                    at, moved = i, True
        return at

    def __len__(self) -> int:
        return len(self._values)
