"""Sinks after promotion: a real Postgres/SQLite table, a real Redis key, real files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from tests.stubs import StubControl
from tokenfleet.db import make_engine
from tokenfleet.runtime import Runtime


@pytest.fixture
def app_table(database_url: str) -> Iterator[str]:
    """The seed app's own table, api_keys(service_name, api_key, updated_at), in the same DB."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS api_keys"))
        conn.execute(
            text(
                "CREATE TABLE api_keys (service_name VARCHAR(50) PRIMARY KEY, "
                "api_key TEXT, updated_at TIMESTAMP WITH TIME ZONE)"
            )
        )
        conn.execute(text("INSERT INTO api_keys VALUES ('Other', 'untouched', NULL)"))
    yield database_url
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS api_keys"))
    engine.dispose()


def declare(rt: Runtime, stub: StubControl, sinks: list[dict[str, Any]]) -> None:
    rt.store.upsert(
        "stub", "default", stub.config(), None, enabled=True, now=rt.clock.now(), sinks=sinks
    )


def rows(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    with engine.connect() as conn:
        result = {r[0]: (r[1], r[2]) for r in conn.execute(text("SELECT * FROM api_keys"))}
    engine.dispose()
    return result


def test_every_sink_gets_the_promoted_token(
    rt: Runtime,
    stub: StubControl,
    app_table: str,
    tmp_path: Path,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("# app\nDEBUG=1\nWEBKASSA_TOKEN=old\n")
    declare(
        rt,
        stub,
        [
            {"kind": "redis_key", "key": f"{key_prefix}:chitai_gorod_token", "ttl": 86400},
            {"kind": "sql_row", "dsn": app_table, "table": "api_keys", "key_value": "Webkassa"},
            {"kind": "env_file", "path": str(env_file), "variable": "WEBKASSA_TOKEN"},
            {"kind": "file", "path": str(tmp_path / "secrets" / "token")},
        ],
    )
    outcome = rt.engine.rotate("stub")
    assert outcome.status == "rotated" and outcome.pending_sinks == ()
    (token,) = stub.issued()
    assert redis_client.get(f"{key_prefix}:chitai_gorod_token") == token.encode()
    assert 86000 < redis_client.ttl(f"{key_prefix}:chitai_gorod_token") <= 86400
    table = rows(app_table)
    assert table["Webkassa"][0] == token and table["Webkassa"][1] is not None
    assert table["Other"] == ("untouched", None)
    assert env_file.read_text() == f"# app\nDEBUG=1\nWEBKASSA_TOKEN={token}\n"
    assert (tmp_path / "secrets" / "token").read_text() == token
    # The next rotation updates the same row rather than adding one.
    rt.engine.rotate("stub")
    assert len(rows(app_table)) == 2
    audit = [r for r in rt.store.audit_log() if r.action == "sink"]
    assert len(audit) == 8 and all(r.outcome == "synced" for r in audit)
    assert all(token not in repr(vars(r)) for r in rt.store.audit_log())


def test_a_failing_sink_is_audited_never_undoes_the_promotion_nor_blocks_the_others(
    rt: Runtime, stub: StubControl, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    good = tmp_path / "token"
    declare(
        rt,
        stub,
        [
            {"kind": "file", "path": str(blocker / "token")},
            {"kind": "file", "path": str(good)},
            {
                "kind": "sql_row",
                "dsn": "postgresql://nobody@127.0.0.1:1/x",
                "table": "t",
                "key_value": "k",
            },
        ],
    )
    outcome = rt.engine.rotate("stub")
    assert outcome.status == "rotated" and outcome.version == 1
    assert outcome.pending_sinks == (0, 2)
    assert outcome.to_dict()["pending_sinks"] == [0, 2]
    assert rt.store.require("stub", "default").current_version == 1
    (token,) = stub.issued()
    assert good.read_text() == token
    failed = [r for r in rt.store.audit_log() if r.action == "sink" and r.outcome == "failed"]
    assert {r.error_class for r in failed} == {"SinkFailed"}
    assert {r.detail for r in failed} == {
        f"sink 0: file {blocker / 'token'}",
        "sink 2: sql_row t(service_name='k')",
    }
    for row in failed:
        assert token not in (row.error_message or "")
    # The fault is fixed; the retry writes the current version to the failed sinks only.
    blocker.unlink()
    good.write_text("changed by someone")
    retried = rt.engine.sync_sinks("stub", "default", only=[0])
    assert retried.status == "synced" and retried.version == 1
    assert (blocker / "token").read_text() == token
    assert good.read_text() == "changed by someone"


def test_loading_a_new_sink_fills_it_with_the_current_version(
    rt: Runtime, stub: StubControl, tmp_path: Path
) -> None:
    declare(rt, stub, [])
    rt.engine.rotate("stub")
    target = tmp_path / "token"
    config = stub.config()
    rt.settings.fleet_file.write_text(
        "[[credential]]\nprovider = 'stub'\n"
        f"[credential.config]\nredis_url = '{config['redis_url']}'\nprefix = '{config['prefix']}'\n"
        f"[[credential.sink]]\nkind = 'file'\npath = '{target}'\n"
    )
    counts = rt.load_fleet_file()
    assert counts["updated"] == 1
    (token,) = stub.issued()
    assert target.read_text() == token
