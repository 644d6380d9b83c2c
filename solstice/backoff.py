"""The one retry delay rule: exponential backoff with jitter, used by every reconnecting part
(RabbitMQ connections, the forge pollers, the dispatcher's database retries)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """``initial`` * ``factor``**n, capped at ``maximum``, ±``jitter`` (a fraction).

    Stateful use: :meth:`next_delay` after each failure, :meth:`reset` after a success.
    Stateless use: :meth:`delay` for attempt ``n`` (1-based)."""

    initial: float = 0.5
    maximum: float = 15.0
    factor: float = 2.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)
    attempts: int = field(default=0, compare=False)

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        return max(0.0, base * (1 + self.rng.uniform(-self.jitter, self.jitter)))

    def next_delay(self) -> float:
        self.attempts += 1
        return self.delay(self.attempts)

    def reset(self) -> None:
        self.attempts = 0
