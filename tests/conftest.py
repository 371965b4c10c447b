"""Fixtures shared by every test: real Redis (DB 14), real Postgres and SQLite stores.

Tests use Redis database 14 (``TOKENFLEET_TEST_REDIS_URL`` overrides it) and a Postgres
database ``tokenfleet_test`` created afresh (``TOKENFLEET_TEST_POSTGRES_URL`` points at
the server). Each test gets its own Redis key prefix, and empty tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import text

from providers import BUILTIN
from tests.stubs import StubControl, StubProvider
from tokenfleet.clock import FrozenClock
from tokenfleet.crypto import generate_key
from tokenfleet.db import make_engine, migrate
from tokenfleet.runtime import Runtime
from tokenfleet.settings import Settings

REDIS_URL = os.environ.get("TOKENFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
PG_SERVER = os.environ.get("TOKENFLEET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
PG_DB = "tokenfleet_test"
REPO = Path(__file__).resolve().parent.parent

# The Celery client app in this process (tasks.app) reads its broker from the environment
# when first imported; point it at the test Redis and teach its router the stub providers.
os.environ["REDIS_URL"] = REDIS_URL
os.environ["TOKENFLEET_EXTRA_PROVIDERS"] = (
    "tests.stubs:StubProvider,tests.stubs:BrowserStubProvider"
)
for _name in ("BROKER_URL", "RESULT_BACKEND", "DATABASE_URL"):
    os.environ.pop(_name, None)
    os.environ.pop(f"TOKENFLEET_{_name}", None)


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (PG_DB,),
        )
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DB}")
        conn.execute(f"CREATE DATABASE {PG_DB}")
    url = f"{PG_SERVER}/{PG_DB}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    yield url


def _truncate(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("TRUNCATE audit_log, secret_versions, credentials RESTART IDENTITY CASCADE")
        )
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each backend in turn, empty and migrated."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/tokenfleet.db"
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield url
    else:
        url = request.getfixturevalue("postgres_url")
        _truncate(url)
        yield url


@pytest.fixture
def key_prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"tftest-{uuid.uuid4().hex[:10]}"
    yield prefix
    keys = list(redis_client.scan_iter(f"{prefix}:*"))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def settings(database_url: str, key_prefix: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=REDIS_URL,
        database_url=database_url,
        encryption_keys=[generate_key()],
        key_prefix=key_prefix,
        state_dir=tmp_path / "state",
        fleet_file=tmp_path / "fleet.toml",
        lock_wait=2.0,
        _env_file=None,
    )


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def rt(settings: Settings, clock: FrozenClock) -> Iterator[Runtime]:
    runtime = Runtime(settings, clock=clock)
    runtime.__dict__["registry"] = BUILTIN.with_extra(
        ["tests.stubs:StubProvider", "tests.stubs:BrowserStubProvider"]
    )
    yield runtime
    runtime.close()


@pytest.fixture
def stub(redis_client: redis.Redis, key_prefix: str) -> StubControl:
    return StubControl(redis_client, f"{key_prefix}:stub")


@pytest.fixture
def stub_credential(rt: Runtime, stub: StubControl, clock: FrozenClock) -> StubControl:
    """A ``stub/default`` credential in the store, due now."""
    rt.store.upsert(
        StubProvider.name, "default", stub.config(), None, enabled=True, now=clock.now()
    )
    return stub
