"""The whole spine: Beat → sweep → worker → Webkassa (local sandbox) → SQL + Redis.

Real ``celery beat`` and ``celery worker`` processes, the real Webkassa provider talking
HTTP to a local server that answers in Webkassa's format, credentials declared in a fleet
file whose secrets come from the environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis
from sqlalchemy import select

from tasks.app import app
from tests.conftest import REDIS_URL
from tests.processes import REPO, beat, fleet_env_for, purge_queues, wait_for, worker
from tokenfleet.models import SecretVersion
from tokenfleet.runtime import Runtime
from tokenfleet.sandbox.webkassa import WebkassaSandbox
from tokenfleet.settings import Settings

pytestmark = pytest.mark.worker

PASSWORD = "cashier-pw-Zq81"
API_KEY = "integrator-key-77aa"
FLEET = """
[[credential]]
provider = "webkassa"
[credential.config]
base_url = "{url}"
login = "cashier@example.kz"
password = "${{WK_PASSWORD}}"
api_key = "${{WK_API_KEY}}"
"""


@pytest.fixture
def sandbox() -> Iterator[WebkassaSandbox]:
    with WebkassaSandbox(login="cashier@example.kz", password=PASSWORD, api_key=API_KEY) as box:
        yield box


def test_beat_schedules_a_webkassa_rotation_that_lands_in_sql_and_redis(
    settings: Settings,
    rt: Runtime,
    sandbox: WebkassaSandbox,
    tmp_path: Path,
    redis_client: redis.Redis,
) -> None:
    settings.fleet_file.write_text(FLEET.format(url=sandbox.url))
    env = fleet_env_for(
        settings,
        {
            "WK_PASSWORD": PASSWORD,
            "WK_API_KEY": API_KEY,
            "TOKENFLEET_SWEEP_INTERVAL": "1",
            "TOKENFLEET_TIMEZONE": "Asia/Almaty",
        },
    )
    purge_queues(REDIS_URL)
    worker_log, beat_log = tmp_path / "worker.log", tmp_path / "beat.log"
    with (
        worker(env, worker_log, queues="light", concurrency=2),
        beat(env, beat_log, tmp_path / "beat-schedule"),
    ):
        state = wait_for(
            lambda: (s := rt.store.get("webkassa", "default")) and s.current_version >= 1 and s,
            what="the scheduled rotation",
        )
        # Ops trigger one by hand, the way the README says: `celery -A tasks call`.
        called = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tasks", "call", "tokenfleet.rotate",
             "--kwargs", json.dumps({"provider": "webkassa"})],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        task_id = called.stdout.strip().splitlines()[-1]
        manual = app.AsyncResult(task_id).get(timeout=60)

    assert manual["status"] == "rotated" and manual["version"] == state.current_version + 1
    first = next(r for r in reversed(rt.store.audit_log()) if r.outcome == "rotated")
    assert (first.trigger, first.action, first.version_after) == ("schedule", "rotate", 1)
    assert any(r.trigger == "manual" and r.outcome == "rotated" for r in rt.store.audit_log())

    # Redis and SQL hold the newest version, encrypted; the app-side read sees the token.
    token = sandbox.issued[-1]
    state = rt.store.require("webkassa", "default")
    assert state.current_version == manual["version"]
    hot = rt.hot.get("webkassa", "default")
    assert hot is not None and hot[0] == state.current_version and hot[1].reveal() == token
    raw = rt.hot.raw("webkassa", "default")
    assert raw is not None and token.encode() not in raw
    with rt.store.session() as session:
        payloads = [row.payload_enc for row in session.scalars(select(SecretVersion))]
    assert payloads and all(token.encode() not in p for p in payloads)
    assert PASSWORD.encode() not in state.config_enc

    # The daily schedule: next due at 05:00-05:30 Almaty time, after the rotation.
    local = state.next_due_at.astimezone(ZoneInfo("Asia/Almaty"))  # type: ignore[union-attr]
    assert local.hour == 5 and local.minute < 30 + 1
    assert state.next_due_at > datetime.now(ZoneInfo("UTC"))

    # Nothing secret in any log, task result or audit row.
    logs = worker_log.read_text() + beat_log.read_text()
    for secret in (*sandbox.issued, PASSWORD, API_KEY):
        assert secret not in logs
        assert secret not in json.dumps(manual)
        for row in rt.store.audit_log():
            assert secret not in repr(vars(row))
    assert sandbox.calls["/api/v4/Authorize"] >= 2
