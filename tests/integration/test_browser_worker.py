"""The browser queue end to end: a real ``browser`` worker, the fake FlareSolverr and bookstore.

Done means (issue 5): a rotation through a running browser worker stores a token with its
User-Agent and cookies; an application using the auth adapter sends all three; a
FlareSolverr outage leaves the current token in place, shows in ``tokenfleet status`` and
the audit log, and heals by itself when FlareSolverr returns; stopping the worker closes
its FlareSolverr session.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tasks.app import app
from tests.conftest import REDIS_URL
from tests.processes import REPO, purge_queues, wait_for, worker
from tokenfleet.auth import TokenAuth
from tokenfleet.client import TokenClient
from tokenfleet.runtime import Runtime
from tokenfleet.sandbox.bookstore import BookstoreSandbox
from tokenfleet.sandbox.flaresolverr import FlareSolverrSandbox, TokenRegistry
from tokenfleet.settings import Settings

pytestmark = pytest.mark.worker

SESSION = "tokenfleet-chitai-gorod"
TOKENFLEET = shutil.which("tokenfleet", path=str(Path(sys.executable).parent))


@dataclass
class Shop:
    solver: FlareSolverrSandbox
    shop: BookstoreSandbox
    registry: TokenRegistry


@pytest.fixture
def shop(rt: Runtime) -> Iterator[Shop]:
    registry = TokenRegistry(ttl=3600)
    with FlareSolverrSandbox(registry) as solver, BookstoreSandbox(registry) as books:
        config = {
            "flaresolverr_url": solver.url,
            "site_url": f"{books.url}/",
            "api_url": books.api_url,
            "max_timeout": 5,
            "timeout": 5,
        }
        rt.store.upsert("chitai_gorod", "shop", config, None, enabled=True, now=rt.clock.now())
        yield Shop(solver, books, registry)


@pytest.fixture
def browser_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    purge_queues(REDIS_URL)
    log = tmp_path / "browser.log"
    # Retries keep coming for the whole outage test instead of giving up after 5.
    with worker(
        {**env, "TOKENFLEET_MAX_RETRIES": "100"}, log, queues="browser", concurrency=1,
        name="browser",
    ):  # fmt: skip
        yield log
    purge_queues(REDIS_URL)


def status(env: dict[str, str]) -> dict[str, Any]:
    assert TOKENFLEET
    done = subprocess.run(
        [TOKENFLEET, "status", "--json"], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [r for r in json.loads(done.stdout) if r["tenant"] == "shop"]
    assert len(rows) == 1
    return rows[0]


def test_a_browser_worker_rotation_stores_token_user_agent_and_cookies_and_the_adapter_sends_all(
    rt: Runtime, shop: Shop, browser_worker: Path, settings: Settings
) -> None:
    result = app.send_task(
        "tokenfleet.rotate", kwargs={"provider": "chitai_gorod", "tenant": "shop"}
    )
    value = result.get(timeout=60)
    assert value["status"] == "rotated" and value["version"] == 1, value

    state = rt.store.require("chitai_gorod", "shop")
    _, secret = rt.store.current(state.id)  # type: ignore[misc]
    assert secret.reveal() in shop.registry.issued
    assert secret.bound["user_agent"] == shop.solver.user_agent
    assert {"access-token", "cf_clearance"} <= set(secret.cookies)
    assert state.expires_at is not None  # from the JWT's exp: drives the next rotation

    client = TokenClient.from_settings(settings)
    try:
        token = client.get("chitai_gorod", "shop")
        assert token.user_agent == shop.solver.user_agent and token.cookies
        http = requests.Session()
        http.auth = TokenAuth(client, "chitai_gorod", "shop", wait=30)
        answer = http.get(shop.shop.api_url, params={"phrase": "python"}, timeout=10)
        # The bookstore answers 200 only to the issued token, from the browser's User-Agent,
        # with the clearance cookie: the adapter sent all three.
        assert answer.status_code == 200, answer.text
        assert shop.shop.calls.get("ok", 0) >= 2  # the worker's validation + this request
        bare = requests.get(
            shop.shop.api_url, headers={"Authorization": f"Bearer {token.value}"}, timeout=10
        )
        assert bare.status_code == 403  # the control: without the cookies it is refused
    finally:
        client.close()


def test_flaresolverr_outage_keeps_the_token_shows_in_status_and_heals_by_itself(
    rt: Runtime, shop: Shop, browser_worker: Path, env: dict[str, str]
) -> None:
    first = app.send_task(
        "tokenfleet.rotate", kwargs={"provider": "chitai_gorod", "tenant": "shop"}
    ).get(timeout=60)
    assert first["status"] == "rotated"
    state = rt.store.require("chitai_gorod", "shop")
    _, before = rt.store.current(state.id)  # type: ignore[misc]

    shop.solver.stop()
    pending = app.send_task(
        "tokenfleet.rotate", kwargs={"provider": "chitai_gorod", "tenant": "shop"}
    )
    failed = wait_for(
        lambda: [r for r in rt.store.audit_log() if r.outcome == "failed"], 30, "a failed attempt"
    )
    assert failed[0].error_class == "ProviderUnavailable"
    assert "FlareSolverr at http://127.0.0.1" in (failed[0].error_message or "")

    row = status(env)
    assert row["version"] == 1 and row["last_outcome"] == "failed"
    assert "ProviderUnavailable" in row["last_error"]
    (dependency,) = row["dependencies"]
    assert dependency["component"] == "flaresolverr" and dependency["ok"] is False
    state = rt.store.require("chitai_gorod", "shop")
    _, during = rt.store.current(state.id)  # type: ignore[misc]
    assert during.reveal() == before.reveal()
    hot = rt.hot.get("chitai_gorod", "shop")
    assert hot is not None and hot[0] == 1 and hot[1].reveal() == before.reveal()

    shop.solver.start()  # same port; no operator action after this
    healed = pending.get(timeout=60)
    assert healed["status"] == "rotated" and healed["version"] == 2, healed
    row = status(env)
    assert row["last_outcome"] == "rotated" and row["dependencies"][0]["ok"] is True


def test_slow_flaresolverr_hits_the_soft_time_limit_and_the_worker_carries_on(
    rt: Runtime, shop: Shop, browser_worker: Path
) -> None:
    shop.solver.fail_next("slow", delay=20)
    result = app.send_task(
        "tokenfleet.rotate",
        kwargs={"provider": "chitai_gorod", "tenant": "shop"},
        soft_time_limit=2,
        time_limit=5,
    )
    value = result.get(timeout=60)
    assert value["status"] == "rotated", value
    rows = list(reversed(rt.store.audit_log()))
    assert rows[0].error_class == "SoftTimeLimitExceeded"
    assert rows[-1].outcome == "rotated"


def test_stopping_the_browser_worker_destroys_its_flaresolverr_session(
    rt: Runtime, shop: Shop, env: dict[str, str], tmp_path: Path
) -> None:
    purge_queues(REDIS_URL)
    with worker(env, tmp_path / "browser.log", queues="browser", concurrency=1, name="browser"):
        for _ in range(2):
            value = app.send_task(
                "tokenfleet.rotate", kwargs={"provider": "chitai_gorod", "tenant": "shop"}
            ).get(timeout=60)
            assert value["status"] == "rotated"
        assert shop.solver.sessions() == [SESSION]
        assert shop.solver.calls.get("sessions.create") == 1  # reused across rotations
    assert shop.solver.sessions() == []
    assert shop.solver.calls.get("sessions.destroy") == 1
