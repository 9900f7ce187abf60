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
        """Delay before the next attempt: drawn from [max(min, b/2), b] with b = min * 2^n capped at max.

        So a delay is never below reconnect_min nor above reconnect_max, and still spreads out at the cap,
        where a whole fleet reconnecting after a long outage needs it most.
        """
        base = min(self.max_ns, self.min_ns * (1 << min(self.attempt, 40)))
        self.attempt += 1
        return self._rng.uniform(max(self.min_ns, base / 2), base) / 1e9

    def reset(self) -> None:
        self.attempt = 0
