"""The real Webkassa provider against the real sandbox server, over real HTTP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from providers.webkassa import WebkassaConfig, WebkassaProvider
from tokenfleet.clock import FrozenClock
from tokenfleet.errors import (
    CredentialsRejected,
    InvalidConfig,
    MalformedResponse,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    TokenfleetError,
    ValidationFailed,
)
from tokenfleet.sandbox.webkassa import WebkassaSandbox
from tokenfleet.secret import Secret

REPO = Path(__file__).resolve().parents[2]
API_KEY = "WKD-SANDBOX-0000-1111"
PASSWORD = "sandbox-password"


@pytest.fixture
def sandbox() -> Iterator[WebkassaSandbox]:
    with WebkassaSandbox(api_key=API_KEY) as running:
        yield running


def provider_for(sandbox: WebkassaSandbox, **overrides: Any) -> WebkassaProvider:
    data: dict[str, Any] = {
        "base_url": sandbox.url,
        "login": "sandbox",
        "password": PASSWORD,
        "api_key": API_KEY,
        "timeout": 2.0,
    }
    data.update(overrides)
    return WebkassaProvider(
        WebkassaConfig.model_validate(data), session=requests.Session(), clock=FrozenClock()
    )


@pytest.fixture
def provider(sandbox: WebkassaSandbox) -> WebkassaProvider:
    return provider_for(sandbox)


# -- round trips ---------------------------------------------------------------------------


def test_acquire_then_validate_round_trip_against_the_sandbox(
    sandbox: WebkassaSandbox, provider: WebkassaProvider
) -> None:
    secret = provider.acquire()
    assert sandbox.issued == [secret.reveal()]
    assert re.fullmatch(r"[0-9a-f]{32}", secret.reveal())
    provider.validate(secret)
    assert sandbox.calls == {"/api/v4/Authorize": 1, "/api/v4/Cashboxes": 1}


def test_each_login_issues_a_new_token_and_all_recent_ones_validate(
    sandbox: WebkassaSandbox, provider: WebkassaProvider
) -> None:
    first, second = provider.acquire(), provider.acquire()
    assert first.reveal() != second.reveal()
    provider.validate(first)
    provider.validate(second)


def test_legacy_authorize_path_round_trip_without_api_key(sandbox: WebkassaSandbox) -> None:
    provider = provider_for(sandbox, api_key=None, authorize_path="/api/Authorize")
    secret = provider.acquire()
    provider.validate(secret)
    assert sandbox.calls == {"/api/Authorize": 1, "/api/Cashboxes": 1}


# -- refusals --------------------------------------------------------------------------------


def test_wrong_password_is_rejected_in_webkassa_format(sandbox: WebkassaSandbox) -> None:
    provider = provider_for(sandbox, password="not-the-password")
    with pytest.raises(CredentialsRejected) as caught:
        provider.acquire()
    assert caught.value.provider_code == 1  # type: ignore[attr-defined]
    assert "Неверный логин или пароль" in str(caught.value)
    assert sandbox.issued == []


def test_wrong_login_is_rejected(sandbox: WebkassaSandbox) -> None:
    with pytest.raises(CredentialsRejected):
        provider_for(sandbox, login="someone-else").acquire()


@pytest.mark.parametrize("api_key", [None, "WKD-WRONG"])
def test_v4_login_without_the_right_api_key_is_rejected(
    sandbox: WebkassaSandbox, api_key: str | None
) -> None:
    with pytest.raises(CredentialsRejected, match="HTTP 401"):
        provider_for(sandbox, api_key=api_key).acquire()
    assert sandbox.issued == []


def test_validation_rejects_a_token_the_sandbox_never_issued(
    sandbox: WebkassaSandbox, provider: WebkassaProvider
) -> None:
    provider.acquire()
    with pytest.raises(ValidationFailed) as caught:
        provider.validate(Secret("0123456789abcdef0123456789abcdef"))
    assert caught.value.provider_code == 3  # type: ignore[attr-defined]


def test_validation_rejects_expired_tokens_with_session_expired_code(
    sandbox: WebkassaSandbox, provider: WebkassaProvider
) -> None:
    old = provider.acquire()
    sandbox.expire_tokens()
    with pytest.raises(ValidationFailed) as caught:
        provider.validate(old)
    assert caught.value.provider_code == 2  # type: ignore[attr-defined]
    provider.validate(provider.acquire())


def test_tokens_expire_after_the_sandbox_token_ttl() -> None:
    with WebkassaSandbox(token_ttl=0.2) as sandbox:
        provider = provider_for(sandbox, api_key=None)
        secret = provider.acquire()
        provider.validate(secret)
        time.sleep(0.3)
        with pytest.raises(ValidationFailed, match="error 2"):
            provider.validate(secret)


def test_only_the_most_recent_max_tokens_stay_valid() -> None:
    with WebkassaSandbox(max_tokens=3) as sandbox:
        provider = provider_for(sandbox, api_key=None)
        tokens = [provider.acquire() for _ in range(4)]
        assert sandbox.issued == [t.reveal() for t in tokens[1:]]
        with pytest.raises(ValidationFailed):
            provider.validate(tokens[0])
        for token in tokens[1:]:
            provider.validate(token)


def test_unknown_validation_path_is_reported_as_config_error(sandbox: WebkassaSandbox) -> None:
    provider = provider_for(sandbox, validate_path="/api/v4/NoSuchThing")
    with pytest.raises(InvalidConfig) as caught:
        provider.validate(provider.acquire())
    assert caught.value.field == "validate_path"


# -- fault injection -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("500", ProviderUnavailable),
        ("html", MalformedResponse),
        ("429", RateLimited),
        ("wrong_password", CredentialsRejected),
        ("disconnect", ProviderUnavailable),
    ],
)
def test_fault_is_classified_and_the_next_login_succeeds(
    sandbox: WebkassaSandbox,
    provider: WebkassaProvider,
    kind: Any,
    expected: type[TokenfleetError],
) -> None:
    sandbox.fail_next(kind)
    with pytest.raises(expected):
        provider.acquire()
    assert sandbox.issued == []
    provider.validate(provider.acquire())


def test_timeout_fault_is_classified_as_provider_timeout(sandbox: WebkassaSandbox) -> None:
    provider = provider_for(sandbox, timeout=0.2)
    sandbox.fail_next("timeout", delay=1.0)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        provider.acquire()
    assert time.monotonic() - started < 1.0
    provider.validate(provider.acquire())


def test_429_fault_carries_retry_after_of_one_second(
    sandbox: WebkassaSandbox, provider: WebkassaProvider
) -> None:
    sandbox.fail_next("429")
    with pytest.raises(RateLimited) as caught:
        provider.acquire()
    assert caught.value.retry_after == 1.0


def test_wrong_password_fault_carries_webkassa_text(
    sandbox: WebkassaSandbox, provider: WebkassaProvider
) -> None:
    sandbox.fail_next("wrong_password")
    with pytest.raises(CredentialsRejected, match="Неверный логин или пароль"):
        provider.acquire()


def test_token_expired_fault_fails_validation_of_a_good_token(
    sandbox: WebkassaSandbox, provider: WebkassaProvider
) -> None:
    secret = provider.acquire()
    sandbox.fail_next("token_expired")
    with pytest.raises(ValidationFailed, match="error 2"):
        provider.validate(secret)
    provider.validate(secret)


def test_fault_repeats_for_the_given_number_of_times(
    sandbox: WebkassaSandbox, provider: WebkassaProvider
) -> None:
    sandbox.fail_next("500", times=3)
    for _ in range(3):
        with pytest.raises(ProviderUnavailable):
            provider.acquire()
    provider.acquire()
    assert sandbox.calls["/api/v4/Authorize"] == 4


def test_fault_aimed_at_one_endpoint_leaves_the_others_alone(
    sandbox: WebkassaSandbox, provider: WebkassaProvider
) -> None:
    sandbox.fail_next("500", endpoint="/api/v4/Cashboxes")
    secret = provider.acquire()
    with pytest.raises(ProviderUnavailable):
        provider.validate(secret)
    provider.validate(secret)


def test_faults_are_consumed_in_the_order_they_were_queued(
    sandbox: WebkassaSandbox, provider: WebkassaProvider
) -> None:
    sandbox.fail_next("html")
    sandbox.fail_next("wrong_password")
    with pytest.raises(MalformedResponse):
        provider.acquire()
    with pytest.raises(CredentialsRejected):
        provider.acquire()
    provider.acquire()


def test_fail_next_rejects_unknown_kinds_and_bad_counts(sandbox: WebkassaSandbox) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        sandbox.fail_next("teapot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        sandbox.fail_next("500", times=0)


def test_reset_forgets_counters_faults_and_tokens(
    sandbox: WebkassaSandbox, provider: WebkassaProvider
) -> None:
    secret = provider.acquire()
    sandbox.fail_next("500")
    sandbox.reset()
    assert sandbox.calls == {} and sandbox.issued == []
    with pytest.raises(ValidationFailed):
        provider.validate(secret)


# -- server behaviour ----------------------------------------------------------------------------


def test_one_session_reuses_one_keep_alive_connection(
    sandbox: WebkassaSandbox, provider: WebkassaProvider
) -> None:
    for _ in range(25):
        provider.validate(provider.acquire())
    assert sandbox.connections == 1


def test_calls_counter_is_exact_under_concurrent_clients(sandbox: WebkassaSandbox) -> None:
    def work() -> None:
        client = provider_for(sandbox)
        for _ in range(20):
            client.validate(client.acquire())

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sandbox.calls == {"/api/v4/Authorize": 120, "/api/v4/Cashboxes": 120}
    assert len(set(sandbox.issued)) == 120


def test_answers_are_json_with_exact_content_length(sandbox: WebkassaSandbox) -> None:
    response = requests.post(
        f"{sandbox.url}/api/v4/Authorize",
        json={"Login": "sandbox", "Password": PASSWORD},
        headers={"X-API-Key": API_KEY},
        timeout=2,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert set(response.json()) == {"Data"}


def test_malformed_login_body_gets_webkassa_validation_error(sandbox: WebkassaSandbox) -> None:
    response = requests.post(f"{sandbox.url}/api/Authorize", data=b"{not json", timeout=2)
    assert response.json() == {"Errors": [{"Code": 9, "Text": "Ошибка валидации данных"}]}


def test_stop_returns_promptly_while_an_answer_is_delayed_and_a_connection_is_open(
    sandbox: WebkassaSandbox, provider: WebkassaProvider
) -> None:
    provider.acquire()  # leaves a keep-alive connection open
    sandbox.fail_next("timeout", delay=30)
    slow = provider_for(sandbox, timeout=10)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            slow.acquire()
        except TokenfleetError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    sandbox.stop()
    assert time.monotonic() - started < 2
    thread.join(timeout=5)
    assert outcome and isinstance(outcome[0], ProviderUnavailable)
    with pytest.raises(RuntimeError):
        _ = sandbox.url


def test_url_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        _ = WebkassaSandbox().url


def test_cli_prints_its_url_and_serves_until_terminated() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenfleet.sandbox.webkassa", "--port", "0", "--api-key", "K"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert match, line
        config = WebkassaConfig.model_validate(
            {"base_url": match.group(0), "login": "sandbox", "password": PASSWORD, "api_key": "K"}
        )
        provider = WebkassaProvider(config)
        provider.validate(provider.acquire())
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert stderr == ""
