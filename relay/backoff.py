"""Capped exponential backoff with jitter, pure (the random source is passed in).

The n-th consecutive failure waits a uniformly drawn time in [d/2, d] with
d = min(cap, base * 2**n): doubling finds a broker that comes back late without
hammering it, the cap bounds the wait for one that comes back, and the jitter
spreads the relays (and their restarts) so that a broker restart is not met by all
of them in the same millisecond. Half of d is kept so a retry never comes at once.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base_ms: int, cap_ms: int, rng: random.Random | None = None) -> None:
        assert 0 < base_ms <= cap_ms
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay_s(self) -> float:
        """The wait before the next attempt; counts one more failure."""
        exponent = min(self.failures, 32)  # 2**32 x base is past any cap
        ceiling_ms = min(self.cap_ms, self.base_ms * (1 << exponent))
        self.failures += 1
        return self._rng.uniform(ceiling_ms / 2, ceiling_ms) / 1000

    def reset(self) -> None:
        """After a success: the next failure starts from the base again."""
        self.failures = 0
