"""The SQL store's connection handling against a real Postgres."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import PG_DB, PG_SERVER
from tests.stubs import StubControl
from tokenfleet.runtime import Runtime


def test_a_connection_killed_by_the_server_is_replaced_transparently(
    rt: Runtime, stub_credential: StubControl
) -> None:
    """No pre-ping: a dead pooled connection costs one retry, not an error."""
    if rt.db.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop the connection")
    rt.engine.rotate("stub")  # the pool now holds a connection
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (PG_DB,),
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    assert rt.store.require("stub", "default").current_version == 1
    assert rt.engine.rotate("stub").status == "rotated"
