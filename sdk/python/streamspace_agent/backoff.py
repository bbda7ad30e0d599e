"""Reconnect delays: exponential backoff with full jitter and a cap. Full jitter
(a uniform delay in [0, ceiling]) spreads a reconnect storm of many agents evenly."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        """`base` and `cap` in seconds."""
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The ceiling of the next delay: base * 2^attempt, at most cap."""
        return min(self.base * (2 ** min(self.attempt, 30)), self.cap)

    def next_delay(self) -> float:
        """A uniformly random delay in [0, ceiling]; then the ceiling doubles."""
        ceiling = self.ceiling()
        self.attempt += 1
        return self._rng.uniform(0, ceiling) if ceiling > 0 else 0.0

    def long_delay(self) -> float:
        """The delay after an error that retrying soon cannot fix (the control plane
        refused this agent): between half the cap and the cap, never a tight loop."""
        self.attempt += 1
        return self.cap / 2 + self._rng.uniform(0, self.cap / 2)

    def reset(self) -> None:
        self.attempt = 0
