"""Fixtures for tests that run real worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL
from tests.processes import fleet_env_for, purge_queues, worker
from tokenfleet.settings import Settings


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """The environment of fleet processes that share this test's settings."""
    return fleet_env_for(settings)


@pytest.fixture
def light_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """A running ``light`` worker (2 processes) on empty queues; yields its log path."""
    purge_queues(REDIS_URL)
    log = tmp_path / "worker.log"
    with worker(env, log, queues="light", concurrency=2):
        yield log
    purge_queues(REDIS_URL)
