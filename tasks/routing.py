"""Send each task to its provider's queue, however it was sent, with that queue's limits.

Routing lives in the router (not in ``apply_async`` wrappers), so ``send_task``,
``celery call`` and Beat all get it. Time limits are stamped into the message headers
at publish time for the same reason: the worker then enforces the queue's limits
without any per-worker command-line flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from celery.signals import before_task_publish

from providers.registry import Registry
from tokenfleet.queues import QUEUES

PROVIDER_TASKS = frozenset({"tokenfleet.rotate", "tokenfleet.check", "tokenfleet.restore"})
DEFAULT_QUEUE = "light"


class ProviderRouter:
    """A Celery router: provider tasks go to ``registry.get(provider).queue``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def queue_for(self, provider: Any) -> str:
        if isinstance(provider, str) and provider in self.registry:
            return self.registry.get(provider).queue
        # Unknown providers still need a consumer, which answers with a clear error.
        return DEFAULT_QUEUE

    def __call__(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
        task: Any = None,
        **kw: Any,
    ) -> dict[str, str] | None:
        if name in PROVIDER_TASKS:
            if kwargs and "provider" in kwargs:
                provider = kwargs["provider"]
            else:
                provider = args[0] if args else None
            return {"queue": self.queue_for(provider)}
        if name.startswith("tokenfleet."):
            return {"queue": DEFAULT_QUEUE}
        return None


@before_task_publish.connect
def stamp_queue_limits(
    sender: str | None = None,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    **_: Any,
) -> None:
    """Give provider tasks their queue's soft/hard time limits unless the sender set some."""
    if headers is None or sender not in PROVIDER_TASKS or routing_key not in QUEUES:
        return
    current = headers.get("timelimit")
    if current and any(value is not None for value in current):
        return
    limits = QUEUES[routing_key]
    headers["timelimit"] = (limits.hard, limits.soft)
