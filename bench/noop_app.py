"""The baseline: a plain Celery app with tokenfleet's Celery settings and a no-op task.

``celery -A bench.noop_app worker -c 2 -Q bench-noop``. It shares the broker, result
backend, serializers and every reliability/events setting with :mod:`celeryconfig`
(copied by name below), so the only difference from a rotation is the task body.
Queues, routes and Beat entries are deliberately not copied: the no-op task consumes its
own queue, ``bench-noop``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]

import celeryconfig

QUEUE = "bench-noop"
TASK = "bench.noop"

#: Settings taken from celeryconfig as they are: everything that shapes per-task cost.
SHARED = (
    "broker_url",
    "result_backend",
    "broker_connection_retry_on_startup",
    "task_serializer",
    "result_serializer",
    "accept_content",
    "result_expires",
    "timezone",
    "enable_utc",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "worker_prefetch_multiplier",
    "broker_transport_options",
    "result_backend_transport_options",
    "worker_cancel_long_running_tasks_on_connection_loss",
    "task_soft_time_limit",
    "task_time_limit",
    "task_track_started",
    "worker_send_task_events",
    "task_send_sent_event",
    "worker_max_tasks_per_child",
)


def shared_settings() -> dict[str, Any]:
    """celeryconfig's values for :data:`SHARED` (a missing one is simply not copied)."""
    return {name: getattr(celeryconfig, name) for name in SHARED if hasattr(celeryconfig, name)}


app = Celery("bench.noop_app")
app.conf.update(
    shared_settings(),
    task_queues=(
        Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE),  # type: ignore[no-untyped-call]
    ),
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
)


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def noop() -> dict[str, Any]:
    """Do nothing; return a small dict like a rotation's result."""
    return {"status": "ok"}
