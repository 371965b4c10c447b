"""The two queues, their time limits, and the numbers that must agree with them.

Kept in one place because they constrain each other: a rotation lock must outlive the
task's hard time limit (or a second worker could start while the first still runs), and
every retry countdown must stay below the Redis broker's visibility timeout (or the
broker redelivers the delayed message early and the task runs twice).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueLimits:
    """Soft and hard time limits (seconds) of tasks on one queue."""

    soft: float
    hard: float

    @property
    def lock_ttl(self) -> float:
        # Past the hard limit the pool kills the task; the margin covers clock skew and
        # the kill itself, so the lock can only expire once its owner is surely gone.
        return self.hard + 30.0


#: ``light``: plain HTTP logins, a few seconds each. ``browser``: a FlareSolverr or
#: Chromium solve, whose own timeout (``maxTimeout``, up to 180 s) must fit inside.
QUEUES: dict[str, QueueLimits] = {
    "light": QueueLimits(soft=60.0, hard=90.0),
    "browser": QueueLimits(soft=240.0, hard=300.0),
}

#: Redis broker visibility timeout: unacked (late-ack) messages come back after this.
VISIBILITY_TIMEOUT = 3600

#: The longest retry countdown; well under VISIBILITY_TIMEOUT.
MAX_COUNTDOWN = 600.0

assert all(limits.lock_ttl < VISIBILITY_TIMEOUT for limits in QUEUES.values())
assert MAX_COUNTDOWN < VISIBILITY_TIMEOUT
