"""The client against real worker processes, several client processes, and a Redis that stops."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import REDIS_URL
from tests.processes import REPO, purge_queues
from tests.stubs import StubControl
from tokenfleet.client import TokenClient
from tokenfleet.errors import FleetTimeout
from tokenfleet.fleet import embedded_redis_binary, free_port
from tokenfleet.runtime import Runtime
from tokenfleet.settings import Settings

pytestmark = pytest.mark.worker


def test_401s_from_several_processes_cause_one_provider_call(
    rt: Runtime, stub_credential: StubControl, env: dict[str, str], light_worker: Path
) -> None:
    rt.engine.rotate("stub")
    stub_credential.script("sleep:0.5")
    before = stub_credential.count("acquire")
    probes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.client_probe", "stub", "1", "25", "30"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    versions = [v for p in probes for v in json.loads(p.communicate(timeout=90)[0])]
    assert versions == [2] * 100
    assert stub_credential.count("acquire") - before == 1
    on_demand = [r for r in rt.store.audit_log() if r.trigger == "on_demand"]
    assert [r.outcome for r in on_demand] == ["rotated"]


def test_without_a_worker_the_caller_gets_a_clear_error_within_wait(
    rt: Runtime, stub_credential: StubControl, settings: Settings
) -> None:
    rt.engine.rotate("stub")
    purge_queues(REDIS_URL)
    client = TokenClient.from_settings(settings)
    try:
        t0 = time.monotonic()
        with pytest.raises(FleetTimeout, match="is a worker running"):
            client.rotate("stub", stale_version=1, wait=2)
        assert time.monotonic() - t0 < 3.5
    finally:
        client.close()
        purge_queues(REDIS_URL)


def test_when_redis_stops_reads_come_from_sql_and_rotation_requests_fail_clearly(
    rt: Runtime, stub: StubControl, settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    server = subprocess.Popen(
        [embedded_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(50):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        private = Runtime(settings.model_copy(update={"redis_url": url}), clock=rt.clock)
        private.store.upsert(
            "stub", "default", stub.config(), None, enabled=True, now=rt.clock.now()
        )
        assert private.engine.rotate("stub").status == "rotated"
        client = TokenClient.from_settings(private.settings)
        assert client.get("stub").source in ("redis", "memory")
        server.terminate()
        server.wait(timeout=10)
        time.sleep(0.5)
        token = client.get("stub")
        assert (token.version, token.source) == (1, "sql")
        with pytest.raises(FleetTimeout, match="Redis unavailable"):
            client.rotate("stub", stale_version=1, wait=2)
        client.close()
        private.close()
    finally:
        if server.poll() is None:
            server.kill()
