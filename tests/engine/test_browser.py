"""Browser rotations through the engine: kept sessions, closing, health, and an outage.

The real Chitai-Gorod provider against the fake FlareSolverr and the fake bookstore, with
the engine on real Redis and each SQL backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from tokenfleet.clock import FrozenClock
from tokenfleet.errors import InvalidConfig
from tokenfleet.runtime import Runtime
from tokenfleet.sandbox.bookstore import BookstoreSandbox
from tokenfleet.sandbox.flaresolverr import FlareSolverrSandbox, TokenRegistry

SESSION = "tokenfleet-chitai-gorod"


@dataclass
class Browser:
    solver: FlareSolverrSandbox
    shop: BookstoreSandbox

    def config(self, **overrides: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "flaresolverr_url": self.solver.url,
            "api_url": self.shop.api_url,
            "max_timeout": 5,
            "timeout": 5,
        }
        config.update(overrides)
        return config


@pytest.fixture
def browser() -> Iterator[Browser]:
    registry = TokenRegistry(ttl=3600)
    with FlareSolverrSandbox(registry) as solver, BookstoreSandbox(registry) as shop:
        yield Browser(solver, shop)


def declare(rt: Runtime, clock: FrozenClock, config: dict[str, Any], tenant: str = "t1") -> None:
    rt.store.upsert("chitai_gorod", tenant, config, None, enabled=True, now=clock.now())


def test_rotations_of_one_credential_reuse_one_flaresolverr_session(
    rt: Runtime, clock: FrozenClock, browser: Browser
) -> None:
    declare(rt, clock, browser.config())
    assert rt.engine.rotate("chitai_gorod", "t1").status == "rotated"
    assert rt.engine.rotate("chitai_gorod", "t1").status == "rotated"
    assert browser.solver.calls.get("sessions.create") == 1
    assert browser.solver.calls.get("request.get") == 2
    assert browser.solver.sessions() == [SESSION]


def test_engine_close_destroys_the_kept_flaresolverr_session(
    rt: Runtime, clock: FrozenClock, browser: Browser
) -> None:
    declare(rt, clock, browser.config())
    assert rt.engine.rotate("chitai_gorod", "t1").status == "rotated"
    assert browser.solver.sessions() == [SESSION]
    rt.close()
    assert browser.solver.sessions() == []
    assert browser.solver.calls.get("sessions.destroy") == 1


def test_a_changed_config_closes_the_old_provider_and_builds_a_new_one(
    rt: Runtime, clock: FrozenClock, browser: Browser
) -> None:
    declare(rt, clock, browser.config())
    assert rt.engine.rotate("chitai_gorod", "t1").status == "rotated"
    declare(rt, clock, browser.config(session_id="second"))
    assert rt.engine.rotate("chitai_gorod", "t1").status == "rotated"
    assert browser.solver.sessions() == ["second"]
    assert browser.solver.calls.get("sessions.destroy") == 1


def test_a_re_encrypted_but_unchanged_config_keeps_the_provider_and_its_session(
    rt: Runtime, clock: FrozenClock, browser: Browser
) -> None:
    """``tokenfleet keys rotate`` re-encrypts configs (new bytes, same config): reloading
    the same fleet file or rotating keys must not cost a new browser session."""
    declare(rt, clock, browser.config())
    assert rt.engine.rotate("chitai_gorod", "t1").status == "rotated"
    before = rt.store.require("chitai_gorod", "t1").config_enc
    declare(rt, clock, browser.config())
    assert rt.store.reencrypt() > 0
    assert rt.store.require("chitai_gorod", "t1").config_enc != before
    assert rt.engine.rotate("chitai_gorod", "t1").status == "rotated"
    assert browser.solver.calls.get("sessions.create") == 1
    assert browser.solver.calls.get("sessions.destroy") is None


def test_flaresolverr_outage_keeps_the_current_token_and_recovers_when_it_returns(
    rt: Runtime, clock: FrozenClock, browser: Browser
) -> None:
    declare(rt, clock, browser.config())
    first = rt.engine.rotate("chitai_gorod", "t1")
    assert first.status == "rotated"
    state = rt.store.require("chitai_gorod", "t1")
    _, before = rt.store.current(state.id)  # type: ignore[misc]

    url = browser.solver.url
    browser.solver.stop()
    failed = rt.engine.rotate("chitai_gorod", "t1")
    assert failed.status == "failed" and failed.retryable
    assert "is unreachable" in str(failed.error) and url in str(failed.error)
    state = rt.store.require("chitai_gorod", "t1")
    assert state.current_version == first.version
    _, still = rt.store.current(state.id)  # type: ignore[misc]
    assert still.reveal() == before.reveal()
    hot = rt.hot.get("chitai_gorod", "t1")
    assert hot is not None and hot[0] == first.version
    assert state.last_outcome == "failed" and "ProviderUnavailable" in (state.last_error or "")
    (row,) = [r for r in rt.store.audit_log(limit=1) if r.outcome == "failed"]
    assert row.error_class == "ProviderUnavailable"
    health = rt.engine.health()[("chitai_gorod", "t1")]
    assert [h.ok for h in health] == [False]

    browser.solver.start()  # same port: FlareSolverr restarted, its sessions gone
    recovered = rt.engine.rotate("chitai_gorod", "t1")
    assert recovered.status == "rotated", recovered
    assert recovered.version == (first.version or 0) + 1
    assert [h.ok for h in rt.engine.health()[("chitai_gorod", "t1")]] == [True]


def test_a_token_expiring_before_the_three_hour_schedule_pulls_the_next_rotation_earlier(
    rt: Runtime, clock: FrozenClock
) -> None:
    """The cookie's expiry (1 h, clock-synced) beats the 3 h schedule: next due at exp - 15 min."""
    registry = TokenRegistry(ttl=3600, now=lambda: clock.now().timestamp())
    with FlareSolverrSandbox(registry) as solver, BookstoreSandbox(registry) as shop:
        declare(rt, clock, Browser(solver, shop).config())
        assert rt.engine.rotate("chitai_gorod", "t1").status == "rotated"
    state = rt.store.require("chitai_gorod", "t1")
    assert state.expires_at == clock.now() + timedelta(hours=1)
    assert state.next_due_at == clock.now() + timedelta(minutes=45)

    # A token that outlives the schedule leaves the schedule in charge.
    registry.ttl = 86400
    with FlareSolverrSandbox(registry) as solver, BookstoreSandbox(registry) as shop:
        declare(rt, clock, Browser(solver, shop).config())
        assert rt.engine.rotate("chitai_gorod", "t1").status == "rotated"
    state = rt.store.require("chitai_gorod", "t1")
    assert state.next_due_at is not None
    assert clock.now() + timedelta(hours=2) < state.next_due_at <= clock.now() + timedelta(hours=3)


def test_health_probes_each_flaresolverr_once_however_many_tenants_use_it(
    rt: Runtime, clock: FrozenClock, browser: Browser
) -> None:
    for tenant in ("a", "b", "c"):
        declare(rt, clock, browser.config(), tenant=tenant)
    rt.store.upsert("chitai_gorod", "off", browser.config(), None, enabled=False, now=clock.now())
    health = rt.engine.health()
    assert set(health) == {("chitai_gorod", t) for t in ("a", "b", "c")}
    (probe,) = health[("chitai_gorod", "a")]
    assert probe.ok and probe.component == "flaresolverr" and probe.target == browser.solver.url
    assert "version" in probe.detail
    assert browser.solver.calls.get("health") == 1


def test_health_skips_providers_with_nothing_to_probe(rt: Runtime, stub_credential: object) -> None:
    assert rt.engine.health() == {}


def test_max_timeout_that_does_not_fit_the_browser_queue_fails_as_a_config_error(
    rt: Runtime, clock: FrozenClock, browser: Browser
) -> None:
    declare(rt, clock, browser.config(max_timeout=250))
    outcome = rt.engine.rotate("chitai_gorod", "t1")
    assert outcome.status == "failed" and isinstance(outcome.error, InvalidConfig)
    assert "soft time limit (240s)" in str(outcome.error)
    assert browser.solver.calls == {}
