"""Exponential backoff with jitter, shared by every reconnect loop.

Jitter keeps fifty gateways from reconnecting to a restarted broker or PLC in lock step. The floor
and cap come from config only: no hidden minimums (a peer's hard-coded 30 s floor is a field complaint).
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, min_ns: int, max_ns: int, rng: random.Random | None = None):
        self.min_ns = min_ns
        self.max_ns = max_ns
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay_s(self) -> float:
        """Delay before the next attempt: min * 2^n capped at max, scaled by a jitter in [0.5, 1]."""
        base = min(self.max_ns, self.min_ns * (1 << min(self.attempt, 40)))
        self.attempt += 1
        return base * self._rng.uniform(0.5, 1.0) / 1e9

    def reset(self) -> None:
        self.attempt = 0
