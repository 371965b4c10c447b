"""The Celery app (``celery -A tasks …``) and each process's tokenfleet runtime.

The runtime is built lazily per process and thrown away after a fork, because database
and Redis connections must never be shared between a worker's parent and its children.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import (
    beat_init,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from tokenfleet.runtime import Runtime
from tokenfleet.settings import load_settings

log = logging.getLogger("tokenfleet.tasks")

app = Celery("tokenfleet")
app.config_from_object("celeryconfig")

_runtime: dict[str, Runtime] = {}


def runtime() -> Runtime:
    """This process's runtime, built on first use."""
    current = _runtime.get("current")
    if current is None:
        current = _runtime["current"] = Runtime(load_settings())
    return current


def reset_runtime() -> None:
    current = _runtime.pop("current", None)
    if current is not None:
        current.close()


@worker_init.connect
def _prepare_store(**_: Any) -> None:
    """Before forking children: migrate the schema and load the fleet file, once."""
    rt = runtime()
    try:
        rt.settings.state_dir.mkdir(parents=True, exist_ok=True)
        rt.migrate()
        rt.load_fleet_file()
    finally:
        reset_runtime()


@beat_init.connect
def _prepare_beat(**_: Any) -> None:
    load_settings().state_dir.mkdir(parents=True, exist_ok=True)


@worker_process_init.connect
def _fresh_runtime(**_: Any) -> None:
    # Drop anything inherited from the parent; the child builds its own connections.
    _runtime.clear()


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    # A prefork child that stops (warm shutdown, max-tasks-per-child) closes its providers:
    # that destroys its FlareSolverr session or Chromium instead of leaking a browser.
    reset_runtime()


@worker_shutdown.connect
def _close_runtime_solo(**_: Any) -> None:
    # The solo and threads pools run tasks in the main process, which gets no
    # worker_process_shutdown; closing an already closed runtime is a no-op.
    reset_runtime()
