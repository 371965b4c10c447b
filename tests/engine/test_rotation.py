"""The rotation engine against real Redis and each SQL backend, driven without Celery.

Each DESIGN.md invariant has a test here that fails if the invariant breaks.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.stubs import StubControl
from tokenfleet.clock import FrozenClock
from tokenfleet.errors import FencedOut
from tokenfleet.models import AuditEntry, SecretVersion
from tokenfleet.runtime import Runtime
from tokenfleet.store import Attempt


def audit_rows(rt: Runtime) -> list[AuditEntry]:
    return list(reversed(rt.store.audit_log(limit=1000)))


def test_rotation_promotes_a_validated_secret_and_publishes_it(
    rt: Runtime, stub_credential: StubControl
) -> None:
    outcome = rt.engine.rotate("stub")
    assert outcome.status == "rotated", outcome
    assert outcome.version == 1
    state = rt.store.require("stub", "default")
    assert state.current_version == 1
    version, secret = rt.store.current(state.id)  # type: ignore[misc]
    assert version == 1 and secret.fingerprint == outcome.fingerprint
    assert secret.reveal() in stub_credential.issued()
    hot = rt.hot.get("stub", "default")
    assert hot is not None and hot[0] == 1 and hot[1].reveal() == secret.reveal()
    assert stub_credential.count("validate") == 1


def test_second_rotation_keeps_the_first_as_previous(
    rt: Runtime, stub_credential: StubControl
) -> None:
    for _ in range(3):
        assert rt.engine.rotate("stub").status == "rotated"
    state = rt.store.require("stub", "default")
    stages = {v.version: v.stage for v in rt.store.versions(state.id)}
    assert stages == {1: "retired", 2: "previous", 3: "current"}


# -- invariant 1: promoted only after validation; failures leave current alone ---------


@pytest.mark.parametrize("step", ["invalid", "reject", "malformed", "timeout", "unavailable"])
def test_failed_rotation_leaves_current_untouched(
    rt: Runtime, stub_credential: StubControl, step: str
) -> None:
    first = rt.engine.rotate("stub")
    stub_credential.script(step)
    outcome = rt.engine.rotate("stub", trigger="manual")
    assert outcome.status == "failed" and outcome.error is not None
    state = rt.store.require("stub", "default")
    assert state.current_version == 1
    current = rt.store.current(state.id)
    assert current is not None and current[1].fingerprint == first.fingerprint
    hot = rt.hot.get("stub", "default")
    assert hot is not None and hot[0] == 1
    stages = [v.stage for v in rt.store.versions(state.id)]
    assert "pending" not in stages
    assert stages.count("current") == 1


def test_secret_that_fails_validation_is_never_current(
    rt: Runtime, stub_credential: StubControl
) -> None:
    stub_credential.script("invalid")
    outcome = rt.engine.rotate("stub")
    assert outcome.error is not None and type(outcome.error).__name__ == "ValidationFailed"
    state = rt.store.require("stub", "default")
    assert state.current_version == 0
    assert rt.store.current(state.id) is None
    assert [v.stage for v in rt.store.versions(state.id)] == ["failed"]
    assert rt.hot.get("stub", "default") is None


# -- invariant 2: one rotation at a time, promotion fenced ------------------------------


def test_promotion_is_fenced_on_the_version_seen(rt: Runtime, stub_credential: StubControl) -> None:
    """A stale worker (seen v0) cannot overwrite v1 promoted meanwhile."""
    rt.engine.rotate("stub")
    state = rt.store.require("stub", "default")
    from tokenfleet.secret import Secret

    stale_secret = Secret("stale-token-value")
    version = rt.store.add_pending(state.id, stale_secret, rt.clock.now())
    attempt = Attempt("stub", "default", "rotate", "manual", "rotated", rt.clock.now(), 1.0)
    with pytest.raises(FencedOut):
        rt.store.promote(
            state.id,
            version,
            seen_version=0,
            now=rt.clock.now(),
            expires_at=None,
            next_due_at=None,
            attempt=attempt,
        )
    after = rt.store.require("stub", "default")
    assert after.current_version == 1
    current = rt.store.current(state.id)
    assert current is not None and current[1].reveal() != "stale-token-value"
    stages = {v.version: v.stage for v in rt.store.versions(state.id)}
    assert stages[version] == "failed"


def test_rotation_waits_for_the_lock_and_fails_retryably_when_held(
    rt: Runtime, stub_credential: StubControl
) -> None:
    lock = rt.hot.lock("stub", "default", ttl=30)
    assert lock.acquire(blocking=False)
    try:
        outcome = rt.engine.rotate("stub", trigger="manual")
        assert outcome.status == "failed"
        assert type(outcome.error).__name__ == "RotationInProgress"
        assert outcome.retryable
        assert stub_credential.count("acquire") == 0
        scheduled = rt.engine.rotate("stub", trigger="schedule")
        assert scheduled.status == "busy" and scheduled.ok
        assert stub_credential.count("acquire") == 0
    finally:
        lock.release()
    assert rt.engine.rotate("stub").status == "rotated"


def test_concurrent_rotations_call_the_provider_one_at_a_time(
    rt: Runtime, stub_credential: StubControl
) -> None:
    """Threads racing on one credential: the lock serialises them; versions stay 1..n."""
    stub_credential.script(*["sleep:0.2"] * 4)
    results = []

    def run() -> None:
        results.append(rt.engine.rotate("stub", trigger="manual"))

    # Separate runtimes = separate connections, as separate workers would have.
    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rotated = [r for r in results if r.status == "rotated"]
    assert sorted(r.version for r in rotated) == list(range(1, len(rotated) + 1))
    assert len(rotated) + sum(1 for r in results if r.retryable) == 4
    state = rt.store.require("stub", "default")
    assert state.current_version == len(rotated)


# -- invariant 3: compare-and-rotate ----------------------------------------------------


def test_stale_version_older_than_current_returns_current_without_provider_call(
    rt: Runtime, stub_credential: StubControl
) -> None:
    first = rt.engine.rotate("stub")
    calls = stub_credential.count("acquire")
    outcome = rt.engine.rotate("stub", stale_version=0, trigger="on_demand")
    assert outcome.status == "fresh"
    assert outcome.version == first.version
    assert stub_credential.count("acquire") == calls


def test_stale_version_equal_to_current_rotates(rt: Runtime, stub_credential: StubControl) -> None:
    rt.engine.rotate("stub")
    outcome = rt.engine.rotate("stub", stale_version=1, trigger="on_demand")
    assert outcome.status == "rotated" and outcome.version == 2


def test_concurrent_401s_for_one_version_cause_one_provider_call(
    rt: Runtime, stub_credential: StubControl
) -> None:
    rt.engine.rotate("stub")
    before = stub_credential.count("acquire")
    stub_credential.script("sleep:0.3")
    results = []
    barrier = threading.Barrier(8)

    def run() -> None:
        barrier.wait()
        results.append(rt.engine.rotate("stub", stale_version=1, trigger="on_demand"))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stub_credential.count("acquire") - before == 1
    assert {r.version for r in results} == {2}
    assert sorted(r.status for r in results).count("rotated") == 1


# -- invariant 4: secrets encrypted at rest, absent from results and audit -----------


def test_secret_is_encrypted_in_sql_and_redis_and_absent_from_results(
    rt: Runtime, stub_credential: StubControl
) -> None:
    outcome = rt.engine.rotate("stub")
    (token,) = stub_credential.issued()
    assert token not in repr(outcome.to_dict())
    raw = rt.hot.raw("stub", "default")
    assert raw is not None and token.encode() not in raw
    with rt.store.session() as session:
        for row in session.scalars(select(SecretVersion)):
            assert token.encode() not in row.payload_enc
    for row in audit_rows(rt):
        assert token not in repr(vars(row))
    assert token not in repr(rt.store.require("stub", "default"))


# -- invariant 5: every attempt audited -------------------------------------------------


def test_every_attempt_writes_one_audit_row(rt: Runtime, stub_credential: StubControl) -> None:
    rt.engine.rotate("stub")
    stub_credential.script("reject")
    rt.engine.rotate("stub", trigger="manual")
    rt.engine.rotate("stub", stale_version=0, trigger="on_demand")
    rt.engine.rotate("nope")
    rows = audit_rows(rt)
    assert [(r.outcome, r.error_class) for r in rows] == [
        ("rotated", None),
        ("failed", "CredentialsRejected"),
        ("fresh", None),
        ("rejected", "UnknownProvider"),
    ]
    first = rows[0]
    assert first.provider == "stub" and first.tenant == "default"
    assert first.trigger == "manual" and first.action == "rotate"
    assert first.version_before == 0 and first.version_after == 1
    assert first.fingerprint is not None and first.duration_ms >= 0
    assert rows[1].version_before == 1 and rows[1].version_after == 1
    assert rows[2].trigger == "on_demand"


# -- invariant 6: bad input is clear and not retried; permanent faults open the circuit -


@pytest.mark.parametrize(
    ("kwargs", "kind", "words"),
    [
        ({"provider": "nope"}, "UnknownProvider", "unknown provider 'nope'"),
        ({"provider": "stub", "tenant": "ghost"}, "UnknownCredential", "stub/ghost"),
        ({"provider": 42}, "InvalidArguments", "provider must be"),
        ({"provider": "stub", "stale_version": "x"}, "InvalidArguments", "stale_version"),
        ({"provider": "stub", "trigger": "often"}, "InvalidArguments", "trigger must be"),
    ],
)
def test_bad_input_is_a_clear_non_retryable_error(
    rt: Runtime, stub_credential: StubControl, kwargs: dict, kind: str, words: str
) -> None:
    outcome = rt.engine.rotate(**kwargs)
    assert outcome.status == "rejected"
    assert type(outcome.error).__name__ == kind
    assert words in outcome.error.message  # type: ignore[union-attr]
    assert not outcome.retryable
    assert outcome.to_dict()["error_class"] == kind
    assert stub_credential.count("acquire") == 0


def test_transient_faults_are_retryable_and_reschedule_only_when_final(
    rt: Runtime, stub_credential: StubControl, clock: FrozenClock
) -> None:
    rt.engine.rotate("stub")
    due_before = rt.store.require("stub", "default").next_due_at
    stub_credential.script("timeout", "unavailable")
    outcome = rt.engine.rotate("stub", final=False)
    assert outcome.retryable and type(outcome.error).__name__ == "ProviderTimeout"
    assert rt.store.require("stub", "default").next_due_at == due_before
    outcome = rt.engine.rotate("stub", final=True)
    assert outcome.retryable
    state = rt.store.require("stub", "default")
    assert state.next_due_at == clock.now() + timedelta(seconds=rt.engine.config.retry_cap)
    assert state.circuit_open_until is None
    assert state.consecutive_failures == 2


def test_rejected_credentials_open_the_circuit_and_block_automatic_rotations(
    rt: Runtime, stub_credential: StubControl, clock: FrozenClock
) -> None:
    rt.engine.rotate("stub")
    stub_credential.script("reject")
    outcome = rt.engine.rotate("stub", trigger="schedule")
    assert not outcome.retryable
    state = rt.store.require("stub", "default")
    assert state.circuit_open_until is not None and state.circuit_open_until > clock.now()
    assert state.next_due_at == state.circuit_open_until
    calls = stub_credential.count("acquire")
    blocked = rt.engine.rotate("stub", stale_version=1, trigger="on_demand")
    assert type(blocked.error).__name__ == "CircuitOpen"
    assert stub_credential.count("acquire") == calls
    # Ops may still try by hand; success closes the circuit.
    assert rt.engine.rotate("stub", trigger="manual").status == "rotated"
    assert rt.store.require("stub", "default").circuit_open_until is None
    # After the cooldown, automatic triggers are let through again.
    stub_credential.script("reject")
    rt.engine.rotate("stub", trigger="manual")
    clock.advance(rt.engine.config.circuit_cooldown + 1)
    assert rt.engine.rotate("stub", trigger="schedule").status == "rotated"


def test_expiry_moves_next_due_earlier(
    rt: Runtime, stub_credential: StubControl, clock: FrozenClock
) -> None:
    stub_credential.script("expires:600")
    rt.engine.rotate("stub")
    state = rt.store.require("stub", "default")
    # Schedule says 1 h; the secret dies in 10 min, so rotate at half its life.
    assert state.next_due_at == clock.now() + timedelta(seconds=300)
    assert state.expires_at == clock.now() + timedelta(seconds=600)


def test_check_validates_current_and_makes_a_rejected_one_due(
    rt: Runtime, stub_credential: StubControl, clock: FrozenClock, redis_client
) -> None:
    assert rt.engine.check("stub").status == "empty"
    rt.engine.rotate("stub")
    outcome = rt.engine.check("stub")
    assert outcome.status == "valid" and outcome.version == 1
    redis_client.delete(f"{stub_credential.prefix}:issued")
    outcome = rt.engine.check("stub")
    assert outcome.status == "invalid"
    state = rt.store.require("stub", "default")
    assert state.current_version == 1
    assert state.next_due_at == clock.now()
    assert [r.action for r in audit_rows(rt)] == ["check", "rotate", "check", "check"]


def test_promotion_is_published_without_the_secret(
    rt: Runtime, stub_credential: StubControl, redis_client
) -> None:
    from tokenfleet.hot import Promotion

    pubsub = redis_client.pubsub()
    pubsub.subscribe(rt.hot.channel)
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    outcome = rt.engine.rotate("stub")
    message = pubsub.get_message(timeout=2)
    pubsub.close()
    assert message is not None and message["type"] == "message"
    (token,) = stub_credential.issued()
    assert token.encode() not in message["data"]
    assert Promotion.from_json(message["data"]) == Promotion(
        "stub",
        "default",
        1,
        outcome.fingerprint,  # type: ignore[arg-type]
    )
    ttl = redis_client.ttl(f"{rt.settings.key_prefix}:secret:stub:default")
    assert 0 < ttl <= rt.settings.redis_ttl


def test_a_worker_whose_lock_expired_cannot_overwrite_a_newer_version(
    rt: Runtime, stub_credential: StubControl
) -> None:
    """Worker A hangs in acquire past its lock TTL; B rotates meanwhile; A is fenced out."""
    from dataclasses import replace

    rt.engine.config = replace(rt.engine.config, lock_ttls={"light": 0.3, "browser": 0.3})
    stub_credential.script("sleep:1.0")  # A's acquire hangs; B's is instant
    results = {}

    def a() -> None:
        results["a"] = rt.engine.rotate("stub", trigger="manual")

    thread = threading.Thread(target=a)
    thread.start()
    import time

    time.sleep(0.5)  # A's lock has expired by now
    results["b"] = rt.engine.rotate("stub", trigger="manual")
    thread.join()
    assert results["b"].status == "rotated" and results["b"].version == 1
    assert type(results["a"].error).__name__ == "FencedOut"
    state = rt.store.require("stub", "default")
    assert state.current_version == 1
    current = rt.store.current(state.id)
    assert current is not None and current[1].fingerprint == results["b"].fingerprint
    hot = rt.hot.get("stub", "default")
    assert hot is not None and hot[1].fingerprint == results["b"].fingerprint
    # A fenced-out attempt is not the credential's fault: no circuit, no failure count.
    assert state.circuit_open_until is None


def test_prod_mode_never_rotates_a_sandbox_credential(rt: Runtime, stub: StubControl) -> None:
    from dataclasses import replace

    rt.store.upsert("stub", "sandbox", stub.config(), None, enabled=True, now=rt.clock.now())
    rt.engine.config = replace(rt.engine.config, env="prod")
    outcome = rt.engine.rotate("stub", "sandbox")
    assert outcome.status == "rejected" and type(outcome.error).__name__ == "InvalidConfig"
    assert "sandbox" in outcome.error.message  # type: ignore[union-attr]
    assert stub.count("acquire") == 0
    rt.engine.config = replace(rt.engine.config, env="dev")
    assert rt.engine.rotate("stub", "sandbox").status == "rotated"
