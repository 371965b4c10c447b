"""A zero-latency, in-process provider for benchmarks: ``bench`` on the ``light`` queue.

Load it into workers with ``TOKENFLEET_EXTRA_PROVIDERS=bench.stub:BenchProvider``. It
does no I/O at all, so a benchmark against it measures tokenfleet's own cost per
rotation (Celery, Redis, SQL, encryption), not a provider's.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from providers.base import Provider, ProviderConfig, Schedule, Secret, ValidationFailed

PREFIX = "bench-"


class BenchConfig(ProviderConfig):
    """Nothing is required; ``seed`` only lets tenants carry distinct configs."""

    seed: str = ""


class BenchProvider(Provider[BenchConfig]):
    """Acquires a random ``bench-…`` token and accepts any token with that prefix."""

    name = "bench"
    queue = "light"
    default_schedule = Schedule(every=timedelta(days=1))
    config_model = BenchConfig

    def acquire(self) -> Secret:
        return Secret(PREFIX + secrets.token_hex(16))

    def validate(self, secret: Secret) -> None:
        if not secret.reveal().startswith(PREFIX):
            raise ValidationFailed("bench: token not issued by the bench provider")
