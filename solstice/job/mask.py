"""Secret masking: every occurrence of a secret (or an ``::add-mask::`` value) becomes ``***``."""

from __future__ import annotations

import threading

MASK = "***"


class Masker:
    def __init__(self, values: list[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._values: list[str] = []
        for v in values or []:
            self.add(v)

    def add(self, value: str) -> None:
        """Mask ``value``; a multi-line value is also masked line by line, since output is split
        into lines before masking (as GitHub's runner does)."""
        candidates = {value, value.strip()}
        candidates.update(line.strip() for line in value.splitlines())
        with self._lock:
            for v in candidates:
                if v and v not in self._values:
                    self._values.append(v)
            # Longest first, so a secret that contains another is masked whole.
            self._values.sort(key=len, reverse=True)

    def apply(self, text: str) -> str:
        with self._lock:
            values = list(self._values)
        for v in values:
            if v in text:
                text = text.replace(v, MASK)
        return text

    def __len__(self) -> int:
        return len(self._values)
