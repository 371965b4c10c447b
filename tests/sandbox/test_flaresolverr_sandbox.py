"""The FlareSolverr client against the local fake FlareSolverr, over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from providers.flaresolverr import FlareSolverr, Solution
from tokenfleet.errors import (
    GiveUp,
    InvalidConfig,
    MalformedResponse,
    ProviderTimeout,
    ProviderUnavailable,
)
from tokenfleet.sandbox.flaresolverr import (
    DEFAULT_USER_AGENT,
    FlareSolverrSandbox,
    TokenRegistry,
)

SITE = "https://www.chitai-gorod.ru/"


@pytest.fixture
def sandbox() -> Iterator[FlareSolverrSandbox]:
    with FlareSolverrSandbox(TokenRegistry()) as running:
        yield running


@pytest.fixture
def client(sandbox: FlareSolverrSandbox) -> FlareSolverr:
    return FlareSolverr(sandbox.url, requests.Session(), timeout_margin=2.0)


def test_request_get_posts_v1_command_and_returns_cookies_and_user_agent(
    sandbox: FlareSolverrSandbox, client: FlareSolverr
) -> None:
    solution = client.get(SITE, max_timeout_ms=5000)
    assert isinstance(solution, Solution)
    assert solution.user_agent == DEFAULT_USER_AGENT
    assert solution.status == 200
    assert {c.name for c in solution.cookies} >= {"cf_clearance", "access-token"}
    token_cookie = solution.cookie("access-token")
    assert token_cookie is not None and token_cookie.value.startswith("Bearer%20")
    assert token_cookie.domain == ".chitai-gorod.ru"
    assert token_cookie.expires is not None
    assert sandbox.requests == [{"cmd": "request.get", "url": SITE, "maxTimeout": 5000}]


def test_request_get_sends_session_proxy_and_return_only_cookies_fields(
    sandbox: FlareSolverrSandbox, client: FlareSolverr
) -> None:
    solution = client.get(
        SITE,
        max_timeout_ms=1234,
        session_id="s1",
        proxy="http://bob:hunter2@proxy.local:3128",
        return_only_cookies=True,
    )
    assert solution.response is None
    assert sandbox.requests[-1] == {
        "cmd": "request.get",
        "url": SITE,
        "maxTimeout": 1234,
        "session": "s1",
        "proxy": {"url": "http://proxy.local:3128", "username": "bob", "password": "hunter2"},
        "returnOnlyCookies": True,
    }


def test_request_post_sends_post_data(sandbox: FlareSolverrSandbox, client: FlareSolverr) -> None:
    client.post(SITE, "a=1&b=2", max_timeout_ms=2000)
    assert sandbox.requests[-1]["cmd"] == "request.post"
    assert sandbox.requests[-1]["postData"] == "a=1&b=2"


def test_raw_answer_has_flaresolverr_v1_envelope(sandbox: FlareSolverrSandbox) -> None:
    response = requests.post(
        f"{sandbox.url}/v1", json={"cmd": "request.get", "url": SITE}, timeout=5
    )
    body = response.json()
    assert response.status_code == 200
    assert set(body) == {
        "status",
        "message",
        "solution",
        "startTimestamp",
        "endTimestamp",
        "version",
    }
    assert body["status"] == "ok"
    assert set(body["solution"]) == {"url", "status", "headers", "response", "cookies", "userAgent"}


def test_sessions_create_list_destroy_round_trip(
    sandbox: FlareSolverrSandbox, client: FlareSolverr
) -> None:
    assert client.create_session("mine") == "mine"
    assert client.create_session("mine") == "mine"  # "Session already exists."
    generated = client.create_session()
    assert generated and generated != "mine"
    assert sorted(client.list_sessions()) == sorted(["mine", generated])
    client.destroy_session("mine")
    assert client.list_sessions() == [generated]


def test_destroying_an_unknown_session_raises_session_lost(client: FlareSolverr) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        client.destroy_session("nope")
    assert caught.value.session_lost is True  # type: ignore[attr-defined]
    assert "doesn't exist" in str(caught.value)


def test_solve_timeout_raises_provider_timeout_naming_target_host_and_path(
    sandbox: FlareSolverrSandbox, client: FlareSolverr
) -> None:
    sandbox.fail_next("timeout")
    with pytest.raises(ProviderTimeout) as caught:
        client.get(f"{SITE}?secret=zzz", max_timeout_ms=1000)
    message = str(caught.value)
    assert "Timeout after 60.0 seconds" in message
    assert "www.chitai-gorod.ru/" in message
    assert "zzz" not in message
    assert caught.value.retryable is True


@pytest.mark.parametrize("kind", ["blocked", "captcha"])
def test_cloudflare_block_or_captcha_raises_give_up_which_is_not_retryable(
    sandbox: FlareSolverrSandbox, client: FlareSolverr, kind: Any
) -> None:
    sandbox.fail_next(kind)
    with pytest.raises(GiveUp) as caught:
        client.get(SITE, max_timeout_ms=1000)
    assert caught.value.retryable is False
    assert type(caught.value) is GiveUp


def test_unknown_session_error_raises_provider_unavailable_with_session_lost(
    sandbox: FlareSolverrSandbox, client: FlareSolverr
) -> None:
    client.create_session("s")
    sandbox.fail_next("unknown_session")
    with pytest.raises(ProviderUnavailable) as caught:
        client.get(SITE, session_id="s")
    assert caught.value.session_lost is True  # type: ignore[attr-defined]
    assert client.list_sessions() == []


def test_5xx_without_flaresolverr_json_is_provider_unavailable_naming_the_url(
    sandbox: FlareSolverrSandbox, client: FlareSolverr
) -> None:
    sandbox.fail_next("bad_gateway")
    with pytest.raises(ProviderUnavailable) as caught:
        client.get(SITE)
    assert f"FlareSolverr at {sandbox.url} is unreachable" in str(caught.value)
    assert getattr(caught.value, "session_lost", False) is False


def test_flaresolverr_down_is_provider_unavailable_naming_its_url(
    sandbox: FlareSolverrSandbox, client: FlareSolverr
) -> None:
    url = sandbox.url
    sandbox.stop()
    with pytest.raises(ProviderUnavailable) as caught:
        client.get(SITE)
    assert f"FlareSolverr at {url} is unreachable" in str(caught.value)


def test_http_timeout_is_max_timeout_plus_margin(sandbox: FlareSolverrSandbox) -> None:
    client = FlareSolverr(sandbox.url, requests.Session(), timeout_margin=0.2)
    sandbox.fail_next("slow", delay=1.5)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match=r"within 0\.3s"):
        client.get(SITE, max_timeout_ms=100)
    assert time.monotonic() - started < 1.2


def test_slow_solve_within_the_budget_succeeds(sandbox: FlareSolverrSandbox) -> None:
    client = FlareSolverr(sandbox.url, requests.Session(), timeout_margin=1.0)
    sandbox.fail_next("slow", delay=0.3)
    assert client.get(SITE, max_timeout_ms=1000).cookie("access-token") is not None


def test_health_is_true_when_up_and_false_when_down(
    sandbox: FlareSolverrSandbox, client: FlareSolverr
) -> None:
    assert client.probe().ok is True
    assert sandbox.calls["health"] == 1
    sandbox.stop()
    assert client.probe().ok is False


def test_wrong_base_url_path_is_a_config_error(sandbox: FlareSolverrSandbox) -> None:
    client = FlareSolverr(f"{sandbox.url}/nope", requests.Session())
    with pytest.raises(InvalidConfig) as caught:
        client.get(SITE)
    assert caught.value.field == "flaresolverr_url"


def test_solution_without_user_agent_is_malformed(client: FlareSolverr) -> None:
    with pytest.raises(MalformedResponse):
        client._solution({"status": "ok", "solution": {"cookies": []}}, SITE)


def test_solution_and_cookie_reprs_show_no_cookie_values(client: FlareSolverr) -> None:
    solution = client.get(SITE)
    text = repr(solution) + repr(solution.cookies)
    for cookie in solution.cookies:
        assert cookie.value not in text
    assert "access-token" in text


def test_fail_next_rejects_unknown_kinds(sandbox: FlareSolverrSandbox) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        sandbox.fail_next("teapot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        sandbox.fail_next("timeout", times=0)


def test_fault_repeats_then_clears(sandbox: FlareSolverrSandbox, client: FlareSolverr) -> None:
    sandbox.fail_next("timeout", times=2)
    for _ in range(2):
        with pytest.raises(ProviderTimeout):
            client.get(SITE)
    client.get(SITE)
    assert sandbox.calls["request.get"] == 3


def test_errors_are_http_500_with_error_status_json(sandbox: FlareSolverrSandbox) -> None:
    sandbox.fail_next("timeout")
    response = requests.post(
        f"{sandbox.url}/v1", data=json.dumps({"cmd": "request.get", "url": SITE}), timeout=5
    )
    assert response.status_code == 500
    body = response.json()
    assert body["status"] == "error"
    assert body["message"] == "Error: Error solving the challenge. Timeout after 60.0 seconds."
