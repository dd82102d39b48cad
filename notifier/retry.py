"""What becomes of a failed delivery: pure functions (the random source is passed in)."""

from __future__ import annotations

import random

from storage.deliveries import DEAD, FAILED


def retry_delay_ms(attempts: int, base_ms: int, cap_ms: int, rng: random.Random) -> int:
    """The wait after the ``attempts``-th failed attempt (1-based): uniform in [d/2, d],
    d = min(cap, base * 2**(attempts-1)). Half of d is kept so a retry never comes at once."""
    assert attempts >= 1 and 0 < base_ms <= cap_ms
    exponent = min(attempts - 1, 40)  # 2**40 x base is past any cap
    ceiling_ms = min(cap_ms, base_ms << exponent)
    return int(rng.uniform(ceiling_ms / 2, ceiling_ms))


def after_failure(
    *, attempts: int, permanent: bool, now_ms: int, attempts_max: int, base_ms: int, cap_ms: int, rng: random.Random
) -> tuple[str, int]:
    """(status, next_attempt_at_ms) after a failed attempt: dead for a permanent refusal or
    once ``attempts_max`` attempts were made, else failed and due after the backoff."""
    if permanent or attempts >= attempts_max:
        return DEAD, now_ms
    return FAILED, now_ms + retry_delay_ms(attempts, base_ms, cap_ms, rng)
