"""Tasks through a real ``celery worker`` process, real Redis broker and a real database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from tasks.app import app
from tests.conftest import REDIS_URL
from tests.processes import purge_queues, worker
from tests.stubs import StubControl
from tokenfleet.runtime import Runtime

pytestmark = pytest.mark.worker


def call(name: str, timeout: float = 60, **kwargs: object) -> dict:
    result = app.send_task(name, kwargs=kwargs)
    value = result.get(timeout=timeout)
    assert isinstance(value, dict)
    return value


def test_rotate_sent_by_name_returns_small_json_without_the_secret(
    rt: Runtime, stub_credential: StubControl, light_worker: Path
) -> None:
    result = call("tokenfleet.rotate", provider="stub")
    assert result["status"] == "rotated"
    assert result["version"] == 1
    assert set(result) == {"status", "provider", "tenant", "version", "fingerprint"}
    (token,) = stub_credential.issued()
    assert token not in json.dumps(result)
    assert token not in light_worker.read_text()
    assert rt.store.require("stub", "default").current_version == 1
    hot = rt.hot.get("stub", "default")
    assert hot is not None and hot[1].reveal() == token


def test_transient_faults_are_retried_with_backoff_until_success(
    rt: Runtime, stub_credential: StubControl, light_worker: Path
) -> None:
    stub_credential.script("unavailable", "timeout")
    result = call("tokenfleet.rotate", provider="stub")
    assert result["status"] == "rotated"
    rows = list(reversed(rt.store.audit_log()))
    assert [(r.attempt, r.outcome, r.error_class) for r in rows] == [
        (1, "failed", "ProviderUnavailable"),
        (2, "failed", "ProviderTimeout"),
        (3, "rotated", None),
    ]
    assert len({r.task_id for r in rows}) == 1
    # Backoff with a 0.2 s base: the second retry waits at least half of 0.4 s.
    assert (rows[2].started_at - rows[1].started_at).total_seconds() >= 0.2


def test_retries_are_bounded(rt: Runtime, stub_credential: StubControl, light_worker: Path) -> None:
    stub_credential.script(*["unavailable"] * 10)
    result = call("tokenfleet.rotate", provider="stub")
    assert result["status"] == "failed"
    assert result["error_class"] == "ProviderUnavailable" and result["retryable"] is True
    assert stub_credential.count("acquire") == rt.settings.max_retries + 1
    assert rt.store.require("stub", "default").current_version == 0


def test_wrong_password_is_not_retried_and_keeps_current(
    rt: Runtime, stub_credential: StubControl, light_worker: Path
) -> None:
    assert call("tokenfleet.rotate", provider="stub")["version"] == 1
    stub_credential.script("reject")
    result = call("tokenfleet.rotate", provider="stub")
    assert result["status"] == "failed"
    assert result["error_class"] == "CredentialsRejected" and result["retryable"] is False
    assert stub_credential.count("acquire") == 2
    assert rt.store.require("stub", "default").current_version == 1


@pytest.mark.parametrize(
    ("kwargs", "kind"),
    [
        ({"provider": "nope"}, "UnknownProvider"),
        ({"provider": "stub", "tenant": "ghost"}, "UnknownCredential"),
        ({"provider": "stub", "colour": "red"}, "InvalidArguments"),
        ({}, "InvalidArguments"),
    ],
)
def test_bad_task_arguments_get_a_clear_result_and_no_retry(
    rt: Runtime, stub_credential: StubControl, light_worker: Path, kwargs: dict, kind: str
) -> None:
    result = call("tokenfleet.rotate", **kwargs)
    assert result["status"] == "rejected"
    assert result["error_class"] == kind
    assert result["retryable"] is False
    assert stub_credential.count("acquire") == 0
    (row,) = rt.store.audit_log()
    assert row.error_class == kind


def test_check_task_validates_the_current_version(
    rt: Runtime, stub_credential: StubControl, light_worker: Path
) -> None:
    call("tokenfleet.rotate", provider="stub")
    result = call("tokenfleet.check", provider="stub")
    assert result["status"] == "valid" and result["version"] == 1


def test_sweep_task_enqueues_rotations_of_due_credentials(
    rt: Runtime, stub: StubControl, light_worker: Path
) -> None:
    for tenant in ("a", "b", "c"):
        rt.store.upsert("stub", tenant, stub.config(), None, enabled=True, now=rt.clock.now())
    result = call("tokenfleet.sweep", provider="stub")
    assert result == {"status": "swept", "provider": "stub", "claimed": 3}
    again = call("tokenfleet.sweep", provider="stub")
    assert again["claimed"] == 0
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        versions = [s.current_version for s in rt.store.credentials("stub")]
        if versions == [1, 1, 1]:
            break
        time.sleep(0.1)
    assert [s.current_version for s in rt.store.credentials("stub")] == [1, 1, 1]
    assert {r.trigger for r in rt.store.audit_log()} == {"schedule"}


def test_browser_provider_is_routed_to_the_browser_queue_with_its_time_limits(
    redis_client: redis.Redis,
) -> None:
    """Sent by name with no options, the message lands on `browser` with browser limits."""
    purge_queues(REDIS_URL)
    app.send_task("tokenfleet.rotate", kwargs={"provider": "stub_browser"})
    app.send_task("tokenfleet.rotate", kwargs={"provider": "stub"})
    try:
        browser = [json.loads(m) for m in redis_client.lrange("browser", 0, -1)]
        light = [json.loads(m) for m in redis_client.lrange("light", 0, -1)]
        assert len(browser) == 1 and len(light) == 1
        assert browser[0]["headers"]["timelimit"] == [300.0, 240.0]
        assert light[0]["headers"]["timelimit"] == [90.0, 60.0]
    finally:
        purge_queues(REDIS_URL)


def test_browser_queue_worker_rotates_browser_providers(
    rt: Runtime, stub: StubControl, env: dict[str, str], tmp_path: Path
) -> None:
    rt.store.upsert(
        "stub_browser", "default", stub.config(), None, enabled=True, now=rt.clock.now()
    )
    purge_queues(REDIS_URL)
    with worker(env, tmp_path / "browser.log", queues="browser", concurrency=1, name="browser"):
        result = call("tokenfleet.rotate", provider="stub_browser")
    assert result["status"] == "rotated"


def test_hard_time_limit_kills_a_hung_rotation_and_audits_it(
    rt: Runtime, stub_credential: StubControl, light_worker: Path
) -> None:
    """A provider that hangs past the soft limit is interrupted, audited, and retried."""
    stub_credential.script("sleep:5")
    result = app.send_task(
        "tokenfleet.rotate", kwargs={"provider": "stub"}, soft_time_limit=1, time_limit=3
    )
    value = result.get(timeout=60)
    assert value["status"] == "rotated"
    rows = list(reversed(rt.store.audit_log()))
    assert rows[0].error_class == "SoftTimeLimitExceeded"
    assert rows[-1].outcome == "rotated"
    # The interrupted attempt released its lock, or the retry could not have rotated.


def test_a_failed_sink_is_retried_by_a_task_until_it_takes(
    rt: Runtime, stub: StubControl, light_worker: Path, tmp_path: Path
) -> None:
    """The rotation succeeds at once; the blocked sink gets the token once unblocked."""
    import time

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    target = blocker / "token"
    rt.store.upsert(
        "stub", "default", stub.config(), None, enabled=True, now=rt.clock.now(),
        sinks=[{"kind": "file", "path": str(target)}],
    )  # fmt: skip
    result = call("tokenfleet.rotate", provider="stub")
    assert result["status"] == "rotated" and result["pending_sinks"] == [0]
    blocker.unlink()  # the operator fixes the path while retries are pending
    (token,) = stub.issued()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not target.exists():
        time.sleep(0.2)
    assert target.read_text() == token
    sink_rows = [r for r in rt.store.audit_log() if r.action == "sink"]
    assert sink_rows[0].outcome == "synced" and sink_rows[-1].outcome == "failed"
