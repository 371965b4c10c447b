"""Webkassa faults end to end: the real provider, the sandbox server, the engine, a worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.app import app
from tests.conftest import REDIS_URL
from tests.processes import fleet_env_for, purge_queues, worker
from tokenfleet.runtime import Runtime
from tokenfleet.sandbox.webkassa import WebkassaSandbox
from tokenfleet.settings import Settings

PASSWORD = "wk-faults-pw-9"


@pytest.fixture
def sandbox() -> Iterator[WebkassaSandbox]:
    with WebkassaSandbox(password=PASSWORD, api_key="wk-key-1") as box:
        yield box


@pytest.fixture
def webkassa(rt: Runtime, sandbox: WebkassaSandbox) -> WebkassaSandbox:
    config = {
        "base_url": sandbox.url,
        "login": "sandbox",
        "password": PASSWORD,
        "api_key": "wk-key-1",
        "timeout": 1.0,
    }
    rt.store.upsert("webkassa", "default", config, None, enabled=True, now=rt.clock.now())
    return sandbox


@pytest.mark.parametrize(
    ("fault", "status", "kind", "retryable"),
    [
        ("wrong_password", "failed", "CredentialsRejected", False),
        ("html", "failed", "MalformedResponse", False),
        ("500", "failed", "ProviderUnavailable", True),
        ("timeout", "failed", "ProviderTimeout", True),
        ("429", "failed", "RateLimited", True),
    ],
)
def test_each_webkassa_fault_is_classified_and_keeps_current(
    rt: Runtime, webkassa: WebkassaSandbox, fault: str, status: str, kind: str, retryable: bool
) -> None:
    first = rt.engine.rotate("webkassa")
    assert first.status == "rotated"
    webkassa.fail_next(fault, delay=3.0)  # type: ignore[arg-type]
    outcome = rt.engine.rotate("webkassa", trigger="schedule")
    assert (outcome.status, type(outcome.error).__name__, outcome.retryable) == (
        status,
        kind,
        retryable,
    )
    state = rt.store.require("webkassa", "default")
    assert state.current_version == 1
    assert (state.circuit_open_until is not None) is (not retryable)
    current = rt.store.current(state.id)
    assert current is not None and current[1].fingerprint == first.fingerprint
    assert PASSWORD not in outcome.error.message  # type: ignore[union-attr]


def test_a_token_the_api_rejects_is_never_promoted(rt: Runtime, webkassa: WebkassaSandbox) -> None:
    webkassa.fail_next("token_expired", endpoint="/api/v4/Cashboxes")
    outcome = rt.engine.rotate("webkassa")
    assert type(outcome.error).__name__ == "ValidationFailed"
    assert rt.store.require("webkassa", "default").current_version == 0


@pytest.mark.worker
def test_worker_retries_webkassa_5xx_then_rotates(
    rt: Runtime, settings: Settings, webkassa: WebkassaSandbox, tmp_path: Path
) -> None:
    env = fleet_env_for(settings)
    webkassa.fail_next("500", times=2, endpoint="/api/v4/Authorize")
    purge_queues(REDIS_URL)
    with worker(env, tmp_path / "worker.log", queues="light", concurrency=1):
        result = app.send_task("tokenfleet.rotate", kwargs={"provider": "webkassa"}).get(60)
    assert result["status"] == "rotated"
    outcomes = [(r.attempt, r.error_class) for r in reversed(rt.store.audit_log())]
    assert outcomes == [(1, "ProviderUnavailable"), (2, "ProviderUnavailable"), (3, None)]
    assert PASSWORD not in (tmp_path / "worker.log").read_text()
