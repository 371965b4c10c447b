"""TokenClient against real Redis and SQL, with the engine standing in for a worker."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.conftest import REDIS_URL
from tests.stubs import StubControl
from tokenfleet.client import RotationFailed, TokenClient, env_name
from tokenfleet.errors import FleetTimeout, UnknownCredential
from tokenfleet.runtime import Runtime


class InlineWorker:
    """send_task stand-in: runs the real engine in a thread, as a worker process would."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.sent: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any]] = {}

    def send_task(self, name: str, kwargs: dict[str, Any], task_id: str) -> None:
        assert name == "tokenfleet.rotate"
        self.sent.append(kwargs)

        def run() -> None:
            self.results[task_id] = self.rt.engine.rotate(**kwargs).to_dict()

        threading.Thread(target=run).start()

    def result_of(self, task_id: str) -> Any:
        worker = self

        class Result:
            def ready(self) -> bool:
                return task_id in worker.results

            @property
            def result(self) -> dict[str, Any]:
                return worker.results[task_id]

        return Result()


def make_client(rt: Runtime, worker: InlineWorker | None = None, **kw: Any) -> TokenClient:
    return TokenClient(
        redis_client=redis.Redis.from_url(REDIS_URL),
        cipher=rt.cipher,
        key_prefix=rt.settings.key_prefix,
        store=rt.store,
        send_task=worker.send_task if worker else None,
        result_of=worker.result_of if worker else None,
        **kw,
    )


@pytest.fixture
def worker(rt: Runtime) -> InlineWorker:
    return InlineWorker(rt)


@pytest.fixture
def client(rt: Runtime, worker: InlineWorker) -> Iterator[TokenClient]:
    c = make_client(rt, worker, cooldown=0.5, recheck=0.2)
    yield c
    c.close()


def test_get_reads_redis_then_serves_memory_until_a_promotion(
    rt: Runtime, stub_credential: StubControl, client: TokenClient
) -> None:
    rt.engine.rotate("stub")
    first = client.get("stub")
    assert (first.version, first.source) == (1, "redis")
    assert first.user_agent == "stub-agent/1.0"
    assert first.value in stub_credential.issued() and first.value not in repr(first)
    assert client.get("stub").source == "memory"
    assert client.get("stub").value == first.value
    rt.engine.rotate("stub")
    deadline = time.monotonic() + 2
    while client.get("stub").version != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.get("stub").version == 2


def test_rotate_with_an_old_stale_version_returns_current_without_a_request(
    rt: Runtime, stub_credential: StubControl, client: TokenClient, worker: InlineWorker
) -> None:
    rt.engine.rotate("stub")
    rt.engine.rotate("stub")
    token = client.rotate("stub", stale_version=1, wait=5)
    assert token.version == 2 and worker.sent == []


def test_rotate_requests_once_and_returns_the_promoted_token(
    rt: Runtime, stub_credential: StubControl, client: TokenClient, worker: InlineWorker
) -> None:
    rt.engine.rotate("stub")
    token = client.rotate("stub", stale_version=1, wait=10)
    assert token.version == 2
    assert worker.sent == [
        {"provider": "stub", "tenant": "default", "stale_version": 1, "trigger": "on_demand"}
    ]


def test_many_threads_with_the_same_401_send_one_request_and_all_get_the_new_version(
    rt: Runtime, stub_credential: StubControl, client: TokenClient, worker: InlineWorker
) -> None:
    rt.engine.rotate("stub")
    stub_credential.script("sleep:0.3")
    got: list[int] = []
    barrier = threading.Barrier(50)

    def caller() -> None:
        barrier.wait()
        got.append(client.rotate("stub", stale_version=1, wait=10).version)

    threads = [threading.Thread(target=caller) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [2] * 50
    assert len(worker.sent) == 1
    assert stub_credential.count("acquire") == 2


def test_a_lost_promotion_message_does_not_strand_a_waiter(
    rt: Runtime, stub_credential: StubControl, client: TokenClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt.engine.rotate("stub")
    client.get("stub")  # listener up
    monkeypatch.setattr(client, "_on_promotion", lambda promotion: None)  # every message lost
    t0 = time.monotonic()
    token = client.rotate("stub", stale_version=1, wait=10)
    assert token.version == 2
    assert time.monotonic() - t0 < 3  # woken by the re-read, not by the deadline


def test_the_cooldown_allows_one_on_demand_rotation_per_interval(
    rt: Runtime, stub_credential: StubControl, worker: InlineWorker
) -> None:
    client = make_client(rt, worker, cooldown=1.5, recheck=0.1)
    try:
        rt.engine.rotate("stub")
        assert client.rotate("stub", stale_version=1, wait=5).version == 2
        t0 = time.monotonic()
        # The new token is "rejected" at once: a second 401 must wait out the cooldown.
        assert client.rotate("stub", stale_version=2, wait=5).version == 3
        assert time.monotonic() - t0 >= 1.0
        assert len(worker.sent) == 2
    finally:
        client.close()


def test_a_failed_rotation_is_a_specific_error_with_the_last_token(
    rt: Runtime, stub_credential: StubControl, client: TokenClient
) -> None:
    rt.engine.rotate("stub")
    stub_credential.script("reject")
    t0 = time.monotonic()
    with pytest.raises(RotationFailed) as info:
        client.rotate("stub", stale_version=1, wait=10)
    assert time.monotonic() - t0 < 5
    assert info.value.error_class == "CredentialsRejected"
    assert info.value.last_token is not None and info.value.last_token.version == 1


def test_a_failed_rotation_reaches_every_waiter_for_one_result_read_per_recheck(
    rt: Runtime, stub_credential: StubControl, client: TokenClient, worker: InlineWorker
) -> None:
    """50 threads and 50 asyncio tasks wait on one failing flight: all get RotationFailed
    with the last token, and the result backend is read once per recheck, not per waiter."""
    rt.engine.rotate("stub")
    stub_credential.script("reject")
    reads: list[str] = []
    result_of = worker.result_of

    def counting(task_id: str) -> Any:
        reads.append(task_id)
        return result_of(task_id)

    client._result_of = counting
    errors: list[BaseException] = []
    barrier = threading.Barrier(51)

    def caller() -> None:
        barrier.wait()
        try:
            client.rotate("stub", stale_version=1, wait=10)
        except RotationFailed as exc:
            errors.append(exc)

    async def tasks() -> list[BaseException]:
        calls = [client.arotate("stub", stale_version=1, wait=10) for _ in range(50)]
        return await asyncio.gather(*calls, return_exceptions=True)

    threads = [threading.Thread(target=caller) for _ in range(50)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.monotonic()
    errors += asyncio.run(tasks())
    for t in threads:
        t.join()
    assert time.monotonic() - t0 < 3
    assert len(errors) == 100 and all(isinstance(e, RotationFailed) for e in errors)
    assert {e.error_class for e in errors} == {"CredentialsRejected"}  # type: ignore[attr-defined]
    assert all(e.last_token.version == 1 for e in errors)  # type: ignore[attr-defined]
    assert len(worker.sent) == 1 and len(set(reads)) == 1
    assert len(reads) <= 10, f"{len(reads)} result-backend reads for one flight"


def test_an_event_loop_that_ended_does_not_break_wake_ups_for_the_next_one(
    rt: Runtime, stub_credential: StubControl, worker: InlineWorker
) -> None:
    """Two asyncio.run() in a row: the first loop's leftover event must not kill the
    listener, so the second waiter wakes on the message, not on the (5 s) recheck."""
    client = make_client(rt, worker, cooldown=0, recheck=5.0)
    try:
        rt.engine.rotate("stub")
        client.get("stub")
        assert asyncio.run(client.arotate("stub", stale_version=1, wait=10)).version == 2
        listener = client._listener
        t0 = time.monotonic()
        assert asyncio.run(client.arotate("stub", stale_version=2, wait=10)).version == 3
        assert time.monotonic() - t0 < 2.5
        assert client._listener is listener and listener is not None and listener.is_alive()
    finally:
        client.close()


def test_a_malformed_promotion_message_drops_copies_and_the_listener_lives_on(
    rt: Runtime, stub_credential: StubControl, client: TokenClient, redis_client: redis.Redis
) -> None:
    rt.engine.rotate("stub")
    client.get("stub")
    assert client.get("stub").source == "memory"
    listener = client._listener
    redis_client.publish(rt.hot.channel, b"not json")
    deadline = time.monotonic() + 2
    while client._memory and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.get("stub").source == "redis"
    rt.engine.rotate("stub")
    assert client.rotate("stub", stale_version=1, wait=5).version == 2
    assert client._listener is listener and listener is not None and listener.is_alive()


def test_no_worker_means_fleet_timeout_within_wait(
    rt: Runtime, stub_credential: StubControl
) -> None:
    rt.engine.rotate("stub")
    sent: list[Any] = []
    client = TokenClient(
        redis_client=redis.Redis.from_url(REDIS_URL),
        cipher=rt.cipher,
        key_prefix=rt.settings.key_prefix,
        store=rt.store,
        send_task=lambda name, kwargs, task_id: sent.append(kwargs),  # nobody consumes
        recheck=0.2,
    )
    try:
        t0 = time.monotonic()
        with pytest.raises(FleetTimeout) as info:
            client.rotate("stub", stale_version=1, wait=1.5)
        assert 1.4 <= time.monotonic() - t0 < 3
        assert info.value.last_token.version == 1  # type: ignore[attr-defined]
        assert len(sent) == 1
    finally:
        client.close()


def test_redis_down_reads_come_from_sql_logged_once_and_rotation_fails_clearly(
    rt: Runtime, stub_credential: StubControl, caplog: pytest.LogCaptureFixture
) -> None:
    rt.engine.rotate("stub")
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    client = TokenClient(
        redis_client=dead,
        cipher=rt.cipher,
        key_prefix=rt.settings.key_prefix,
        store=rt.store,
        send_task=lambda *a, **k: None,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="tokenfleet.client"):
            tokens = [client.get("stub") for _ in range(5)]
        assert {(t.version, t.source) for t in tokens} == {(1, "sql")}
        assert caplog.text.count("Redis unreachable") == 1
        with pytest.raises(FleetTimeout, match="Redis unavailable"):
            client.rotate("stub", stale_version=1, wait=1)
    finally:
        client.close()


def test_environment_variable_is_the_last_fallback(rt: Runtime) -> None:
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    name = env_name("chitai_gorod", "default")
    assert name == "TOKENFLEET_TOKEN_CHITAI_GOROD_DEFAULT"
    client = TokenClient(
        redis_client=dead,
        cipher=rt.cipher,
        env={"CHITAI_GOROD_TOKEN": "from-env"},
        env_names={("chitai_gorod", "default"): "CHITAI_GOROD_TOKEN"},
    )
    try:
        token = client.get("chitai_gorod")
        assert (token.value, token.version, token.source) == ("from-env", 0, "env")
        with pytest.raises(UnknownCredential, match="TOKENFLEET_TOKEN_OTHER_DEFAULT"):
            client.get("other")
    finally:
        client.close()


def test_many_asyncio_tasks_with_the_same_401_send_one_request(
    rt: Runtime, stub_credential: StubControl, client: TokenClient, worker: InlineWorker
) -> None:
    import asyncio

    rt.engine.rotate("stub")
    stub_credential.script("sleep:0.3")

    async def main() -> list[int]:
        calls = [client.arotate("stub", stale_version=1, wait=10) for _ in range(200)]
        return [token.version for token in await asyncio.gather(*calls)]

    assert asyncio.run(main()) == [2] * 200
    assert len(worker.sent) == 1


def test_async_waiters_survive_lost_messages_and_time_out_clearly(
    rt: Runtime, stub_credential: StubControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    rt.engine.rotate("stub")
    worker = InlineWorker(rt)
    client = make_client(rt, worker, recheck=0.2)
    silent = make_client(rt, None, recheck=0.2)
    silent._send_task = lambda *a, **k: None  # a queue nobody consumes
    try:
        client.get("stub")
        monkeypatch.setattr(client, "_on_promotion", lambda promotion: None)
        assert asyncio.run(client.arotate("stub", stale_version=1, wait=10)).version == 2
        with pytest.raises(FleetTimeout):
            asyncio.run(silent.arotate("stub", stale_version=2, wait=1))
    finally:
        client.close()
        silent.close()
