"""Celery settings for tokenfleet: broker, queues, routing, reliability and Beat.

Read by ``tasks.app`` via ``config_from_object``. Values come from the environment
through :mod:`tokenfleet.settings`; each reliability choice is explained where it is set.
"""

from __future__ import annotations

from datetime import timedelta

from kombu import Exchange, Queue

from tasks.routing import DEFAULT_QUEUE, ProviderRouter
from tokenfleet.queues import QUEUES, VISIBILITY_TIMEOUT
from tokenfleet.runtime import build_registry
from tokenfleet.settings import load_settings

_settings = load_settings()
_registry = build_registry(_settings)

broker_url = _settings.celery_broker
result_backend = _settings.celery_backend
broker_connection_retry_on_startup = True

# JSON only: arguments and results are small, inspectable and never carry secrets.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_expires = 86400
timezone = _settings.timezone
enable_utc = True

# -- queues and routing ---------------------------------------------------------------
# `light`: plain HTTP logins, sweeps. `browser`: FlareSolverr/Chromium solves, run one
# at a time per worker (`celery -A tasks worker -Q browser -c 1`).
_exchange = Exchange("tokenfleet", type="direct")
task_queues = (
    Queue("light", _exchange, routing_key="light"),
    Queue("browser", _exchange, routing_key="browser"),
)
task_default_queue = DEFAULT_QUEUE
task_default_exchange = "tokenfleet"
task_default_routing_key = DEFAULT_QUEUE
# A router, not per-call options, so `send_task` and `celery call` route the same way.
task_routes = (ProviderRouter(_registry),)

# -- reliability ------------------------------------------------------------------------
# Ack after the task finished: a worker killed mid-rotation leaves the message in the
# queue, and the rotation lock plus the SQL fence make running it again harmless.
task_acks_late = True
# ...and a child killed by the OOM killer or a hard time limit also requeues the message.
task_reject_on_worker_lost = True
# One message in flight per process: a long browser solve must not sit on messages
# another worker could take, and late acks make prefetched messages invisible to others.
worker_prefetch_multiplier = 1
# Unacked messages come back after this; every lock TTL and retry countdown is shorter
# (tokenfleet/queues.py asserts it), so a delayed retry is not redelivered early.
broker_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT}
result_backend_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT}
# Losing the broker connection means acks can no longer be delivered; cancel rather
# than finish work whose message will be redelivered anyway.
worker_cancel_long_running_tasks_on_connection_loss = True
# Per-queue soft/hard time limits are stamped into each message (tasks/routing.py);
# these are the fallback for anything else.
task_soft_time_limit = QUEUES[DEFAULT_QUEUE].soft
task_time_limit = QUEUES[DEFAULT_QUEUE].hard
task_track_started = True
# Events for Flower; they carry provider/tenant/version only.
worker_send_task_events = True
task_send_sent_event = True
# Recycle children now and then, so a leak in a provider library cannot grow forever.
worker_max_tasks_per_child = 1000

# -- beat -------------------------------------------------------------------------------
# One entry per provider, not per tenant: each sweep claims due credentials from SQL.
# `expires` drops sweeps that piled up while no worker was running; the next one will do.
beat_schedule = {
    f"sweep-{provider.name}": {
        "task": "tokenfleet.sweep",
        "schedule": timedelta(seconds=_settings.sweep_interval),
        "kwargs": {"provider": provider.name},
        "options": {"queue": "light", "expires": _settings.sweep_interval},
    }
    for provider in _registry
}
beat_schedule_filename = str(_settings.state_dir / "celerybeat-schedule")
