"""`tokenfleet up` decisions that need no processes: which Redis, and never a prod sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfleet.errors import StoreUnavailable
from tokenfleet.fleet import Fleet, free_port
from tokenfleet.settings import Settings


def test_prod_mode_never_starts_an_embedded_redis(tmp_path: Path) -> None:
    settings = Settings(env="prod", redis_url="redis://127.0.0.1:1/0", _env_file=None)
    fleet = Fleet(settings, say=lambda line: None)
    with pytest.raises(StoreUnavailable, match="prod mode starts none"):
        fleet._redis(tmp_path)
    assert fleet.children == []


def test_a_reachable_redis_is_used_as_it_is(tmp_path: Path) -> None:
    lines: list[str] = []
    settings = Settings(redis_url="redis://127.0.0.1:6379/14", _env_file=None)
    fleet = Fleet(settings, say=lines.append)
    assert fleet._redis(tmp_path) == "redis://127.0.0.1:6379/14"
    assert fleet.children == [] and "embedded" not in lines[0]


def test_free_port_prefers_the_given_port_when_free() -> None:
    port = free_port()
    assert free_port(port) == port
