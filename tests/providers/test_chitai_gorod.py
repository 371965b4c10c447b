"""The Chitai-Gorod provider against the fake FlareSolverr and the fake bookstore, over HTTP."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest
import requests

from providers.chitai_gorod import ChitaiGorodConfig, ChitaiGorodProvider, jwt_expiry
from providers.flaresolverr import FlareSolverrBackend
from tokenfleet.clock import FrozenClock
from tokenfleet.errors import (
    GiveUp,
    InvalidConfig,
    MalformedResponse,
    ProviderTimeout,
    ProviderUnavailable,
    TokenfleetError,
    ValidationFailed,
)
from tokenfleet.sandbox.bookstore import BookstoreSandbox
from tokenfleet.sandbox.flaresolverr import (
    DEFAULT_USER_AGENT,
    FlareSolverrSandbox,
    TokenRegistry,
    default_site_cookies,
    make_jwt,
)
from tokenfleet.secret import Secret

START = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
NOW = 1_772_344_800.0  # START as unix seconds


@dataclass
class Fleet:
    registry: TokenRegistry
    solver: FlareSolverrSandbox
    shop: BookstoreSandbox
    clock: FrozenClock

    def provider(self, **overrides: Any) -> ChitaiGorodProvider:
        data: dict[str, Any] = {
            "flaresolverr_url": self.solver.url,
            "site_url": "https://www.chitai-gorod.ru/",
            "api_url": self.shop.api_url,
            "max_timeout": 2,
            "timeout": 2,
        }
        data.update(overrides)
        config = ChitaiGorodConfig.model_validate(data)
        return ChitaiGorodProvider(config, session=requests.Session(), clock=self.clock)


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    registry = TokenRegistry(ttl=3600, now=lambda: NOW)
    with FlareSolverrSandbox(registry) as solver, BookstoreSandbox(registry) as shop:
        yield Fleet(registry, solver, shop, FrozenClock(START))


@pytest.fixture
def provider(fleet: Fleet) -> ChitaiGorodProvider:
    return fleet.provider()


def secrets_of(secret: Secret) -> list[str]:
    return [secret.reveal(), *secret.cookies.values()]


def assert_hidden(values: list[str], *objects: object, attrs: bool = True) -> None:
    """No value in str/repr of each object, nor (unless ``attrs=False``) in its attributes."""
    for obj in objects:
        texts = [str(obj), repr(obj)]
        if attrs:
            texts.append(repr(getattr(obj, "__dict__", "")))
        for text in texts:
            for value in values:
                assert value not in text, f"secret leaked into {type(obj).__name__}"


# -- class contract ------------------------------------------------------------------------


def test_provider_declares_name_browser_queue_three_hour_schedule_and_bearer_placement() -> None:
    assert ChitaiGorodProvider.name == "chitai_gorod"
    assert ChitaiGorodProvider.queue == "browser"
    assert ChitaiGorodProvider.default_schedule.every == timedelta(hours=3)
    assert ChitaiGorodProvider.placement.header == "Authorization"
    assert ChitaiGorodProvider.placement.scheme == "Bearer"
    assert ChitaiGorodProvider.config_model is ChitaiGorodConfig


def test_config_defaults_point_at_local_flaresolverr_and_the_real_site() -> None:
    config = ChitaiGorodConfig()
    assert config.flaresolverr_url == "http://127.0.0.1:8191"
    assert config.site_url == "https://www.chitai-gorod.ru"
    assert config.token_cookie == "access-token"
    assert config.api_url == "https://web-agr.chitai-gorod.ru/web/api/v2/search/product"
    assert config.max_timeout == 60


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("flaresolverr_url", "ftp://x"),
        ("api_url", "https://user:pw@web-agr.chitai-gorod.ru/x"),
        ("max_timeout", 0),
        ("token_cookie", "a b"),
        ("session_ttl", "-5m"),
    ],
)
def test_bad_config_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidConfig) as caught:
        ChitaiGorodProvider.parse_config({field: value}, "chitai_gorod/default")
    assert caught.value.field == f"chitai_gorod/default: config.{field}"


def test_proxy_password_never_appears_in_a_config_error() -> None:
    with pytest.raises(InvalidConfig) as caught:
        ChitaiGorodProvider.parse_config({"proxy": "http://bob:hunter2@"}, "")
    assert "hunter2" not in str(caught.value)


# -- rotation round trip ------------------------------------------------------------------


def test_acquire_then_validate_round_trip_through_flaresolverr_and_bookstore(
    fleet: Fleet, provider: ChitaiGorodProvider
) -> None:
    secret = provider.acquire()
    assert fleet.registry.issued == [secret.reveal()]
    provider.validate(secret)
    assert fleet.shop.calls == {"ok": 1}


def test_token_cookie_bearer_prefix_is_url_decoded_and_stripped(
    provider: ChitaiGorodProvider,
) -> None:
    secret = provider.acquire()
    assert not secret.reveal().startswith("Bearer")
    assert "%20" not in secret.reveal()
    assert secret.reveal().count(".") == 2  # a bare JWT


def test_token_cookie_with_a_plain_bearer_space_prefix_is_stripped_too(fleet: Fleet) -> None:
    def cookies(url: str, registry: TokenRegistry, ua: str) -> list[dict[str, Any]]:
        token, exp = registry.issue(ua)
        return [
            {"name": "cf_clearance", "value": registry.clearance(), "expires": exp},
            {"name": "access-token", "value": f"Bearer {token}", "expires": exp},
        ]

    fleet.solver.site_cookies = cookies
    provider = fleet.provider()
    secret = provider.acquire()
    assert secret.reveal() == fleet.registry.issued[-1]
    provider.validate(secret)


def test_secret_is_bound_to_the_browser_user_agent_and_carries_clearance_cookies(
    provider: ChitaiGorodProvider,
) -> None:
    secret = provider.acquire()
    assert secret.bound["user_agent"] == DEFAULT_USER_AGENT
    assert set(secret.cookies) == {"cf_clearance", "access-token"}  # not the _ym_uid tracker


def test_acquire_reuses_one_flaresolverr_session(
    fleet: Fleet, provider: ChitaiGorodProvider
) -> None:
    provider.acquire()
    provider.acquire()
    assert fleet.solver.calls == {"sessions.create": 1, "request.get": 2}
    gets = [r for r in fleet.solver.requests if r["cmd"] == "request.get"]
    assert {r["session"] for r in gets} == {"tokenfleet-chitai-gorod"}
    assert all(r["returnOnlyCookies"] is True and r["maxTimeout"] == 2000 for r in gets)


def test_session_is_recreated_after_session_ttl(
    fleet: Fleet, provider: ChitaiGorodProvider
) -> None:
    provider.acquire()
    fleet.clock.advance(timedelta(hours=7).total_seconds())
    provider.acquire()
    assert fleet.solver.calls["sessions.destroy"] == 1
    assert fleet.solver.calls["sessions.create"] == 2


def test_without_session_id_each_solve_uses_a_fresh_browser(fleet: Fleet) -> None:
    provider = fleet.provider(session_id=None)
    provider.acquire()
    assert fleet.solver.calls == {"request.get": 1}
    assert "session" not in fleet.solver.requests[0]


# -- expiry ----------------------------------------------------------------------------------


def test_expiry_comes_from_the_cookie_expires_when_present(fleet: Fleet) -> None:
    def cookies(url: str, registry: TokenRegistry, ua: str) -> list[dict[str, Any]]:
        token, _ = registry.issue(ua)  # JWT exp = NOW + 3600
        return [{"name": "access-token", "value": f"Bearer%20{token}", "expires": NOW + 600}]

    fleet.solver.site_cookies = cookies
    secret = fleet.provider().acquire()
    assert secret.expires_at == datetime.fromtimestamp(NOW + 600, UTC)


def test_expiry_falls_back_to_the_jwt_exp_claim_without_cookie_expires(fleet: Fleet) -> None:
    def cookies(url: str, registry: TokenRegistry, ua: str) -> list[dict[str, Any]]:
        token, _ = registry.issue(ua)
        return [{"name": "access-token", "value": f"Bearer%20{token}", "expires": -1}]

    fleet.solver.site_cookies = cookies
    secret = fleet.provider().acquire()
    assert secret.expires_at == datetime.fromtimestamp(NOW + 3600, UTC)


def test_selenium_expiry_key_is_read_as_cookie_expiry(fleet: Fleet) -> None:
    def cookies(url: str, registry: TokenRegistry, ua: str) -> list[dict[str, Any]]:
        token, _ = registry.issue(ua)
        return [{"name": "access-token", "value": token, "expiry": int(NOW) + 120}]

    fleet.solver.site_cookies = cookies
    assert fleet.provider().acquire().expires_at == datetime.fromtimestamp(NOW + 120, UTC)


def test_opaque_token_without_cookie_expiry_has_unknown_expiry(fleet: Fleet) -> None:
    fleet.registry.token_factory = lambda exp: "opaque-token-0123456789abcdef"

    def cookies(url: str, registry: TokenRegistry, ua: str) -> list[dict[str, Any]]:
        token, _ = registry.issue(ua)
        return [{"name": "access-token", "value": token}]

    fleet.solver.site_cookies = cookies
    secret = fleet.provider().acquire()
    assert secret.reveal() == "opaque-token-0123456789abcdef"
    assert secret.expires_at is None


def test_jwt_expiry_reads_exp_and_ignores_non_jwts() -> None:
    assert jwt_expiry(make_jwt({"exp": 1_800_000_000})) == datetime.fromtimestamp(
        1_800_000_000, UTC
    )
    assert jwt_expiry(make_jwt({"sub": 1})) is None
    assert jwt_expiry("not.a.jwt!") is None
    assert jwt_expiry("opaque") is None


# -- acquire failures ----------------------------------------------------------------------


def test_missing_token_cookie_is_malformed_response_even_though_status_is_200(
    fleet: Fleet,
) -> None:
    fleet.solver.site_cookies = lambda url, registry, ua: [
        {"name": "cf_clearance", "value": registry.clearance()}
    ]
    with pytest.raises(MalformedResponse) as caught:
        fleet.provider().acquire()
    assert "'access-token'" in str(caught.value)
    assert "cf_clearance" in str(caught.value)  # names only
    assert caught.value.retryable is False


def test_empty_bearer_cookie_is_malformed_response(fleet: Fleet) -> None:
    fleet.solver.site_cookies = lambda url, registry, ua: [
        {"name": "access-token", "value": "Bearer%20"}
    ]
    with pytest.raises(MalformedResponse, match="no usable token"):
        fleet.provider().acquire()


def test_solve_timeout_is_provider_timeout_and_the_session_is_retired(
    fleet: Fleet, provider: ChitaiGorodProvider
) -> None:
    provider.acquire()
    fleet.solver.fail_next("timeout")
    with pytest.raises(ProviderTimeout) as caught:
        provider.acquire()
    assert caught.value.retryable is True
    assert fleet.solver.sessions() == []
    provider.validate(provider.acquire())
    assert fleet.solver.calls["sessions.create"] == 2


@pytest.mark.parametrize("kind", ["blocked", "captcha"])
def test_cloudflare_block_or_captcha_is_give_up_not_retried(
    fleet: Fleet, provider: ChitaiGorodProvider, kind: Any
) -> None:
    fleet.solver.fail_next(kind)
    with pytest.raises(GiveUp) as caught:
        provider.acquire()
    assert caught.value.retryable is False
    assert fleet.solver.calls["request.get"] == 1


def test_lost_session_is_recreated_and_the_solve_retried_once_transparently(
    fleet: Fleet, provider: ChitaiGorodProvider
) -> None:
    provider.acquire()
    fleet.solver.fail_next("unknown_session")
    secret = provider.acquire()
    provider.validate(secret)
    assert fleet.solver.calls == {"sessions.create": 2, "request.get": 3}
    assert fleet.solver.sessions() == ["tokenfleet-chitai-gorod"]


def test_session_lost_twice_in_a_row_surfaces_as_provider_unavailable(
    fleet: Fleet, provider: ChitaiGorodProvider
) -> None:
    fleet.solver.fail_next("unknown_session", times=2)
    with pytest.raises(ProviderUnavailable) as caught:
        provider.acquire()
    assert caught.value.session_lost is True  # type: ignore[attr-defined]
    assert fleet.solver.calls["request.get"] == 2
    provider.acquire()  # and the next rotation recovers


def test_flaresolverr_down_is_provider_unavailable_naming_its_url(fleet: Fleet) -> None:
    provider = fleet.provider()
    url = fleet.solver.url
    fleet.solver.stop()
    with pytest.raises(ProviderUnavailable) as caught:
        provider.acquire()
    assert f"FlareSolverr at {url} is unreachable" in str(caught.value)
    assert caught.value.retryable is True


def test_flaresolverr_answering_html_502_is_provider_unavailable(
    fleet: Fleet, provider: ChitaiGorodProvider
) -> None:
    fleet.solver.fail_next("bad_gateway")
    with pytest.raises(ProviderUnavailable, match="without FlareSolverr's JSON"):
        provider.acquire()


def test_solve_slower_than_max_timeout_plus_margin_is_provider_timeout(fleet: Fleet) -> None:
    provider = fleet.provider(max_timeout=0.1)
    assert isinstance(provider.backend, FlareSolverrBackend)
    provider.backend.solver.timeout_margin = 0.2
    fleet.solver.fail_next("slow", delay=1.5)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        provider.acquire()
    assert time.monotonic() - started < 1.2


# -- validate -------------------------------------------------------------------------------


def test_validate_sends_bearer_token_user_agent_cookies_and_search_params(
    fleet: Fleet, provider: ChitaiGorodProvider
) -> None:
    secret = provider.acquire()
    sent: list[requests.PreparedRequest] = []
    provider.session.hooks["response"].append(lambda r, *a, **k: sent.append(r.request))
    provider.validate(secret)
    request = sent[0]
    assert request.headers["Authorization"] == f"Bearer {secret.reveal()}"
    assert request.headers["User-Agent"] == DEFAULT_USER_AGENT
    assert "cf_clearance=" in request.headers["Cookie"]
    assert "phrase=python" in (request.url or "")
    assert "products%5Bper-page%5D=1" in (request.url or "")


def test_validation_401_for_a_token_the_store_never_issued_is_validation_failed(
    fleet: Fleet, provider: ChitaiGorodProvider
) -> None:
    real = provider.acquire()
    forged = Secret(value=make_jwt({"exp": int(NOW) + 60}), bound=real.bound, cookies=real.cookies)
    with pytest.raises(ValidationFailed) as caught:
        provider.validate(forged)
    assert caught.value.http_status == 401  # type: ignore[attr-defined]
    assert caught.value.retryable is False


def test_validation_fails_when_the_user_agent_does_not_match(
    provider: ChitaiGorodProvider,
) -> None:
    secret = provider.acquire()
    other = Secret(
        value=secret.reveal(),
        bound=MappingProxyType({"user_agent": "curl/8.0"}),
        cookies=secret.cookies,
    )
    with pytest.raises(ValidationFailed):
        provider.validate(other)


def test_validation_fails_with_403_without_clearance_cookies(
    provider: ChitaiGorodProvider,
) -> None:
    secret = provider.acquire()
    bare = Secret(value=secret.reveal(), bound=secret.bound)
    with pytest.raises(ValidationFailed, match="HTTP 403"):
        provider.validate(bare)


def test_expired_token_fails_validation(fleet: Fleet, provider: ChitaiGorodProvider) -> None:
    secret = provider.acquire()
    fleet.registry.now = lambda: NOW + 3601
    with pytest.raises(ValidationFailed):
        provider.validate(secret)


def test_wrong_api_path_is_a_config_error(fleet: Fleet) -> None:
    provider = fleet.provider(api_url=f"{fleet.shop.url}/web/api/v9/nothing")
    with pytest.raises(InvalidConfig) as caught:
        provider.validate(provider.acquire())
    assert caught.value.field == "api_url"


def test_bookstore_down_is_provider_unavailable(
    fleet: Fleet, provider: ChitaiGorodProvider
) -> None:
    secret = provider.acquire()
    fleet.shop.stop()
    with pytest.raises(ProviderUnavailable):
        provider.validate(secret)


# -- secrecy -------------------------------------------------------------------------------


def test_token_and_cookies_never_appear_in_errors_or_reprs(fleet: Fleet) -> None:
    provider = fleet.provider(proxy="http://bob:hunter2@127.0.0.1:9")
    secret = provider.acquire()
    hidden = [*secrets_of(secret), "hunter2"]
    errors: list[TokenfleetError] = []
    forged = Secret(
        value=secret.reveal(), bound=MappingProxyType({"user_agent": "x"}), cookies=secret.cookies
    )
    with pytest.raises(ValidationFailed) as refused:
        provider.validate(forged)
    errors.append(refused.value)
    for kind, times in (("timeout", 1), ("blocked", 1), ("unknown_session", 2)):
        fleet.solver.fail_next(kind, times=times)  # type: ignore[arg-type]
        with pytest.raises(TokenfleetError) as caught:
            provider.acquire()
        errors.append(caught.value)
    fleet.solver.site_cookies = lambda url, registry, ua: [
        {"name": "other", "value": secret.reveal()}
    ]
    with pytest.raises(MalformedResponse) as missing:
        provider.acquire()
    errors.append(missing.value)
    fleet.solver.stop()
    with pytest.raises(ProviderUnavailable) as down:
        provider.acquire()
    errors.append(down.value)
    # A Secret holds its value in its attributes by design; its str/repr must not show it.
    assert_hidden(hidden, secret, attrs=False)
    assert_hidden(hidden, provider, provider.backend, provider.config, *errors)
    for error in errors:
        assert_hidden(hidden, pickle.loads(pickle.dumps(error)))  # noqa: S301 - our own bytes


def test_default_site_cookies_issue_a_token_the_bookstore_accepts(fleet: Fleet) -> None:
    cookies = default_site_cookies("https://www.chitai-gorod.ru/", fleet.registry, "UA")
    token = next(c["value"] for c in cookies if c["name"] == "access-token")
    assert token.startswith("Bearer%20")
    assert fleet.registry.state(token.removeprefix("Bearer%20"), "UA") == "ok"
    assert fleet.registry.state(token.removeprefix("Bearer%20"), "other") == "wrong_user_agent"


def test_a_solve_budget_beyond_the_browser_queue_soft_limit_is_refused_naming_both() -> None:
    with pytest.raises(InvalidConfig) as caught:
        ChitaiGorodProvider.parse_config({"max_timeout": 200, "timeout": 30}, "chitai_gorod/t1")
    message = str(caught.value)
    assert "max_timeout (200s) + timeout (30s)" in message
    assert "soft time limit (240s)" in message
    assert caught.value.field == "chitai_gorod/t1: config"
    ChitaiGorodProvider.parse_config({"max_timeout": 180, "timeout": 20}, "chitai_gorod/t1")


@pytest.mark.parametrize(
    ("field", "value"),
    [("backend", "selenium"), ("chromium_path", "chromium"), ("user_agent", "a\nb")],
)
def test_bad_browser_backend_config_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidConfig) as caught:
        ChitaiGorodProvider.parse_config({field: value}, "")
    assert caught.value.field == f"config.{field}"


def test_playwright_backend_is_chosen_by_config_and_its_health_names_the_executable(
    tmp_path: Any,
) -> None:
    missing = str(tmp_path / "no-chromium")
    config = ChitaiGorodConfig.model_validate({"backend": "playwright", "chromium_path": missing})
    provider = ChitaiGorodProvider(config)
    assert provider.backend.kind == "chromium"
    (health,) = provider.health()
    assert not health.ok and health.target == missing
    assert provider.health_key() == ("chromium", missing)
    with pytest.raises(InvalidConfig) as caught:
        provider.acquire()
    assert caught.value.field == "chromium_path" and missing in str(caught.value)
    provider.close()
