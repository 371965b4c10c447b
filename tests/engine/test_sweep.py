"""Sweeps: claim due credentials once, catch up after downtime, never double-claim."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import timedelta

from tests.stubs import StubControl
from tokenfleet.clock import FrozenClock
from tokenfleet.runtime import Runtime
from tokenfleet.schedule import Schedule
from tokenfleet.store import Claim


def add(rt: Runtime, stub: StubControl, tenants: Iterable[str], **kw: object) -> None:
    for tenant in tenants:
        rt.store.upsert(
            "stub", tenant, stub.config(), kw.get("schedule"), enabled=True, now=rt.clock.now()
        )  # type: ignore[arg-type]


def test_new_credentials_are_due_at_once_and_a_doubled_sweep_claims_nothing(
    rt: Runtime, stub: StubControl
) -> None:
    add(rt, stub, ["a", "b"])
    sent: list[Claim] = []
    first = rt.engine.sweep("stub", enqueue=sent.extend)
    assert sorted(c.tenant for c in first) == ["a", "b"] and len(sent) == 2
    assert rt.engine.sweep("stub", enqueue=sent.extend) == []
    assert len(sent) == 2


def test_a_missed_run_happens_once_at_the_next_sweep_then_back_on_schedule(
    rt: Runtime, stub: StubControl, clock: FrozenClock
) -> None:
    """What systemd's Persistent=true gave: downtime over 05:00 means one catch-up run."""
    add(rt, stub, ["shop"], schedule=Schedule(cron="0 5 * * *", jitter="30m"))
    rt.engine.sweep("stub", enqueue=lambda c: None)
    clock.advance(3 * 86400)  # the fleet was down for three days
    claims = rt.engine.sweep("stub", enqueue=lambda c: None)
    assert [c.tenant for c in claims] == ["shop"]
    assert rt.engine.sweep("stub", enqueue=lambda c: None) == []
    due = rt.store.require("stub", "shop").next_due_at
    assert due is not None and clock.now() < due <= clock.now() + timedelta(hours=24, minutes=30)
    assert due.hour == 5 and due.minute < 30


def test_disabled_and_circuit_open_credentials_are_not_claimed(
    rt: Runtime, stub: StubControl, clock: FrozenClock
) -> None:
    add(rt, stub, ["on", "off", "broken"])
    rt.store.set_enabled("stub", "off", False, clock.now())
    stub.script("reject")
    rt.engine.rotate("stub", "broken", trigger="manual")
    claims = rt.engine.sweep("stub", enqueue=lambda c: None)
    assert [c.tenant for c in claims] == ["on"]
    clock.advance(rt.engine.config.circuit_cooldown + 1)
    later = [c.tenant for c in rt.engine.sweep("stub", enqueue=lambda c: None)]
    assert "broken" in later and "off" not in later


def test_a_failing_enqueue_claims_nothing(rt: Runtime, stub: StubControl) -> None:
    add(rt, stub, ["a"])

    def broken(claims: Iterable[Claim]) -> None:
        raise ConnectionError("broker down")

    try:
        rt.engine.sweep("stub", enqueue=broken)
    except ConnectionError:
        pass
    assert [c.tenant for c in rt.engine.sweep("stub", enqueue=lambda c: None)] == ["a"]


def test_expiring_credentials_are_claimed_with_the_expiry_trigger(
    rt: Runtime, stub: StubControl, clock: FrozenClock
) -> None:
    add(rt, stub, ["a"])
    stub.script("expires:1200")
    rt.engine.rotate("stub", "a")
    clock.advance(600)  # next_due_at = expiry - 15 min margin = now
    (claim,) = rt.engine.sweep("stub", enqueue=lambda c: None)
    assert claim.trigger == "expiry"


def test_concurrent_sweeps_split_the_work_without_duplicates(
    rt: Runtime, stub: StubControl, settings
) -> None:
    """Two sweeps at once (separate connections): every credential claimed exactly once."""
    add(rt, stub, [f"t{i}" for i in range(60)])
    runtimes = [Runtime(settings, clock=rt.clock) for _ in range(2)]
    for other in runtimes:
        other.__dict__["registry"] = rt.registry
        other.engine.config = rt.engine.config
    claimed: list[Claim] = []
    lock = threading.Lock()

    def slow_enqueue(claims: Iterable[Claim]) -> None:
        time.sleep(0.3)  # hold the row locks while the other sweep runs
        with lock:
            claimed.extend(claims)

    threads = [
        threading.Thread(target=r.engine.sweep, args=("stub",), kwargs={"enqueue": slow_enqueue})
        for r in runtimes
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for other in runtimes:
        other.close()
    tenants = [c.tenant for c in claimed]
    assert sorted(tenants) == sorted(f"t{i}" for i in range(60))
    assert len(tenants) == len(set(tenants))


def test_changing_a_credentials_config_closes_its_circuit_and_makes_it_due(
    rt: Runtime, stub: StubControl, clock: FrozenClock
) -> None:
    add(rt, stub, ["a"])
    stub.script("reject")
    rt.engine.rotate("stub", "a")
    assert rt.store.require("stub", "a").circuit_open_until is not None
    fixed = {**stub.config(), "timeout": 5.0}
    assert rt.store.upsert("stub", "a", fixed, None, enabled=True, now=clock.now()) == "updated"
    state = rt.store.require("stub", "a")
    assert state.circuit_open_until is None and state.next_due_at == clock.now()
    assert rt.store.upsert("stub", "a", fixed, None, enabled=True, now=clock.now()) == "unchanged"
