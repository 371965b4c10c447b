"""Retry delays for transient faults: exponential, capped, with jitter.

"Equal jitter": half the exponential step is fixed and half random, so retries of many
credentials spread out, yet none comes back immediately. A provider's ``Retry-After``
raises the delay; everything is capped at ``cap``, which must stay below the Redis
broker's visibility timeout (a longer countdown would be redelivered early).
"""

from __future__ import annotations

import random


def retry_delay(
    retries: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``retries + 1`` (``retries`` counts from 0)."""
    step = min(cap, base * (2 ** max(0, retries)))
    delay: float = step / 2 + (rng or random).uniform(0, step / 2)
    return min(max(delay, retry_after or 0.0), cap)
