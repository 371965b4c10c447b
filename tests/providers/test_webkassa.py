"""The Webkassa provider against recorded-shape answers (``responses``, no network)."""

from __future__ import annotations

import json
import pickle
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
import responses
from pydantic import ValidationError
from responses import matchers

from providers import BUILTIN
from providers.webkassa import WebkassaConfig, WebkassaProvider
from tokenfleet.clock import FrozenClock
from tokenfleet.errors import (
    CredentialsRejected,
    GiveUp,
    InvalidConfig,
    MalformedResponse,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    RetryLater,
    TokenfleetError,
    ValidationFailed,
)
from tokenfleet.secret import Secret

BASE = "https://devkkm.webkassa.kz"
AUTHORIZE = f"{BASE}/api/v4/Authorize"
CASHBOXES = f"{BASE}/api/v4/Cashboxes"
LOGIN = "cashier@example.kz"
PASSWORD = "Pa55-w0rd-7f3c1e"
API_KEY = "WKD-9BCE5F1E-AE33-4F39-BF8B-000000000042"
TOKEN = "b20a7c5e22844c50bf8389fe09c6b8c2"
SECRETS = (PASSWORD, API_KEY, TOKEN)
START = datetime(2026, 3, 1, 5, 12, tzinfo=UTC)

CASHBOX_LIST = {
    "Data": {
        "List": [
            {
                "UniqueNumber": "SWK00033717",
                "RegistrationNumber": "660377756642",
                "IdentificationNumber": "748",
                "Name": "Магазин на Абая",
                "Description": "",
                "IsOffline": False,
                "CurrentStatus": 1,
                "Shift": 4,
            }
        ]
    }
}


def wk_error(code: int, text: str) -> dict[str, Any]:
    return {"Errors": [{"Code": code, "Text": text}]}


def make_config(**overrides: Any) -> WebkassaConfig:
    data: dict[str, Any] = {
        "base_url": BASE,
        "login": LOGIN,
        "password": PASSWORD,
        "api_key": API_KEY,
        "timeout": 5,
    }
    data.update(overrides)
    return WebkassaConfig.model_validate(data)


def make_provider(clock: FrozenClock | None = None, **overrides: Any) -> WebkassaProvider:
    return WebkassaProvider(
        make_config(**overrides), session=requests.Session(), clock=clock or FrozenClock(START)
    )


def assert_no_secret_in(*objects: object, attrs: bool = True) -> None:
    """No secret in str/repr of each object, nor (unless ``attrs=False``) in its attributes."""
    for obj in objects:
        texts = [str(obj), repr(obj)]
        values = getattr(obj, "__dict__", None)
        if attrs and values:
            texts.append(repr(values))
        for text in texts:
            for secret in SECRETS:
                assert secret not in text, f"secret leaked into {type(obj).__name__}: {text}"


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


@pytest.fixture
def provider() -> WebkassaProvider:
    return make_provider()


# -- class contract ----------------------------------------------------------------------


def test_provider_declares_name_queue_schedule_config_and_secret_fields() -> None:
    assert WebkassaProvider.name == "webkassa"
    assert WebkassaProvider.queue == "light"
    assert WebkassaProvider.config_model is WebkassaConfig
    assert WebkassaProvider.secret_fields == ("password", "api_key")
    schedule = WebkassaProvider.default_schedule
    assert schedule.cron == "0 5 * * *"
    assert schedule.jitter == timedelta(minutes=30)
    assert schedule.timezone is None


def test_provider_is_registered_in_the_builtin_registry() -> None:
    assert BUILTIN.get("webkassa") is WebkassaProvider


def test_default_schedule_fires_between_five_and_half_past_five_in_the_fleet_zone() -> None:
    zone = ZoneInfo("Asia/Almaty")
    after = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # afternoon in Almaty
    for seed in range(20):
        due = WebkassaProvider.default_schedule.next_due(
            after, default_tz="Asia/Almaty", rng=random.Random(seed)
        ).astimezone(zone)
        assert due.date() == date(2026, 3, 2)
        assert time(5, 0) <= due.time() <= time(5, 30)


# -- acquire: success ----------------------------------------------------------------------


def test_acquire_posts_login_and_password_with_api_key_header_to_v4_authorize(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(
        AUTHORIZE,
        json={"Data": {"Token": TOKEN}},
        match=[
            matchers.json_params_matcher({"Login": LOGIN, "Password": PASSWORD}),
            matchers.header_matcher({"X-API-Key": API_KEY}),
        ],
    )
    secret = provider.acquire()
    assert isinstance(secret, Secret)
    assert secret.reveal() == TOKEN
    assert len(mocked.calls) == 1


def test_acquire_uses_legacy_authorize_path_and_sends_no_api_key_header_without_a_key(
    mocked: responses.RequestsMock,
) -> None:
    provider = make_provider(api_key=None, authorize_path="/api/Authorize")
    mocked.post(f"{BASE}/api/Authorize", json={"Data": {"Token": TOKEN}})
    assert provider.acquire().reveal() == TOKEN
    sent = mocked.calls[0].request
    assert "X-API-Key" not in sent.headers
    assert json.loads(sent.body or b"{}") == {"Login": LOGIN, "Password": PASSWORD}


def test_empty_api_key_string_counts_as_no_api_key(mocked: responses.RequestsMock) -> None:
    provider = make_provider(api_key="  ")
    mocked.post(AUTHORIZE, json={"Data": {"Token": TOKEN}})
    provider.acquire()
    assert "X-API-Key" not in mocked.calls[0].request.headers


def test_acquire_uses_custom_authorize_url_instead_of_base_url_and_path(
    mocked: responses.RequestsMock,
) -> None:
    custom = "https://proxy.internal.example/webkassa/login"
    provider = make_provider(authorize_url=custom)
    mocked.post(custom, json={"Data": {"Token": TOKEN}})
    assert provider.acquire().reveal() == TOKEN
    assert mocked.calls[0].request.url == custom


def test_acquire_strips_a_trailing_slash_from_base_url(mocked: responses.RequestsMock) -> None:
    provider = make_provider(base_url=f"{BASE}/")
    mocked.post(AUTHORIZE, json={"Data": {"Token": TOKEN}})
    assert provider.acquire().reveal() == TOKEN


def test_acquire_sets_expires_at_to_injected_clock_now_plus_token_ttl(
    mocked: responses.RequestsMock,
) -> None:
    clock = FrozenClock(START)
    provider = make_provider(clock=clock, token_ttl="12h")
    mocked.post(AUTHORIZE, json={"Data": {"Token": TOKEN}})
    clock.advance(90)
    secret = provider.acquire()
    assert secret.expires_at == START + timedelta(seconds=90) + timedelta(hours=12)


def test_default_token_ttl_is_unknown_so_the_schedule_alone_drives_rotation(
    mocked: responses.RequestsMock,
) -> None:
    clock = FrozenClock(START)
    mocked.post(AUTHORIZE, json={"Data": {"Token": TOKEN}})
    secret = make_provider(clock=clock).acquire()
    assert secret.expires_at is None


def test_null_token_ttl_leaves_expires_at_unset(mocked: responses.RequestsMock) -> None:
    mocked.post(AUTHORIZE, json={"Data": {"Token": TOKEN}})
    assert make_provider(token_ttl=None).acquire().expires_at is None


# -- acquire: Webkassa's own refusals ------------------------------------------------------


def test_wrong_password_error_raises_credentials_rejected_carrying_webkassa_code_and_text(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(AUTHORIZE, json=wk_error(1, "Неверный логин или пароль"))
    with pytest.raises(CredentialsRejected) as caught:
        provider.acquire()
    error = caught.value
    assert "Неверный логин или пароль" in str(error)
    assert "error 1" in str(error)
    assert error.provider_code == 1  # type: ignore[attr-defined]
    assert error.provider_text == "Неверный логин или пароль"  # type: ignore[attr-defined]
    assert error.retryable is False
    assert_no_secret_in(error)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (3, "Пользователь не авторизован"),
        (4, "Нет доступа к операции"),
        (9, "Ошибка валидации данных"),
        (1234, "Что-то новое"),
    ],
)
def test_other_login_refusals_and_unknown_codes_raise_credentials_rejected(
    mocked: responses.RequestsMock, provider: WebkassaProvider, code: int, text: str
) -> None:
    mocked.post(AUTHORIZE, json=wk_error(code, text))
    with pytest.raises(CredentialsRejected) as caught:
        provider.acquire()
    assert text in str(caught.value)
    assert caught.value.provider_code == code  # type: ignore[attr-defined]


@pytest.mark.parametrize("code", [-1, 505])
def test_webkassa_server_side_error_codes_are_retried_as_provider_unavailable(
    mocked: responses.RequestsMock, provider: WebkassaProvider, code: int
) -> None:
    mocked.post(AUTHORIZE, json=wk_error(code, "Неизвестная ошибка"))
    with pytest.raises(ProviderUnavailable) as caught:
        provider.acquire()
    assert caught.value.retryable is True
    assert "Неизвестная ошибка" in str(caught.value)


def test_errors_win_over_a_token_in_the_same_answer(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    body = {"Data": {"Token": TOKEN}, **wk_error(1, "Неверный логин или пароль")}
    mocked.post(AUTHORIZE, json=body)
    with pytest.raises(CredentialsRejected) as caught:
        provider.acquire()
    assert_no_secret_in(caught.value)


@pytest.mark.parametrize("status", [401, 403])
def test_http_401_or_403_on_authorize_raises_credentials_rejected(
    mocked: responses.RequestsMock, provider: WebkassaProvider, status: int
) -> None:
    mocked.post(AUTHORIZE, status=status, body="Unauthorized", content_type="text/plain")
    with pytest.raises(CredentialsRejected) as caught:
        provider.acquire()
    assert f"HTTP {status}" in str(caught.value)
    assert caught.value.http_status == status  # type: ignore[attr-defined]


def test_http_401_with_webkassa_errors_body_keeps_webkassa_text(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(AUTHORIZE, status=401, json=wk_error(3, "API-key отсутствует либо не найден"))
    with pytest.raises(CredentialsRejected, match="API-key отсутствует"):
        provider.acquire()


# -- acquire: answers that are not Webkassa's ---------------------------------------------


def test_html_page_with_http_200_raises_malformed_response(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    page = "<html><body><h1>Checking your browser…</h1></body></html>"
    mocked.post(AUTHORIZE, body=page, status=200, content_type="text/html")
    with pytest.raises(MalformedResponse, match="text/html"):
        provider.acquire()


@pytest.mark.parametrize(
    "body",
    [
        {"Data": {}},
        {"Data": {"Token": ""}},
        {"Data": {"Token": "   "}},
        {"Data": {"Token": 12345}},
        {"Data": None},
        {"Data": "token"},
        {},
        [],
        {"Errors": []},
        {"Data": {"Token": "two words"}},
    ],
)
def test_json_without_a_usable_data_token_raises_malformed_response(
    mocked: responses.RequestsMock, provider: WebkassaProvider, body: Any
) -> None:
    mocked.post(AUTHORIZE, json=body)
    with pytest.raises(MalformedResponse):
        provider.acquire()


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_raise_provider_unavailable(
    mocked: responses.RequestsMock, provider: WebkassaProvider, status: int
) -> None:
    mocked.post(AUTHORIZE, status=status, body="<html>bad gateway</html>")
    with pytest.raises(ProviderUnavailable, match=str(status)):
        provider.acquire()


@pytest.mark.parametrize(
    "exc", [requests.exceptions.ReadTimeout(), requests.exceptions.ConnectTimeout()]
)
def test_timeouts_raise_provider_timeout(
    mocked: responses.RequestsMock, provider: WebkassaProvider, exc: Exception
) -> None:
    mocked.post(AUTHORIZE, body=exc)
    with pytest.raises(ProviderTimeout):
        provider.acquire()


def test_connection_refused_raises_provider_unavailable(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(AUTHORIZE, body=requests.exceptions.ConnectionError("refused"))
    with pytest.raises(ProviderUnavailable):
        provider.acquire()


def test_http_429_raises_rate_limited_with_retry_after_seconds(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(AUTHORIZE, status=429, headers={"Retry-After": "7"}, body="slow down")
    with pytest.raises(RateLimited) as caught:
        provider.acquire()
    assert caught.value.retry_after == 7.0
    assert caught.value.retryable is True


def test_http_408_raises_provider_timeout(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(AUTHORIZE, status=408, body="")
    with pytest.raises(ProviderTimeout):
        provider.acquire()


def test_http_404_on_authorize_is_a_config_error_naming_authorize_path(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(AUTHORIZE, status=404, body="<html>404 Not Found</html>")
    with pytest.raises(InvalidConfig) as caught:
        provider.acquire()
    assert caught.value.field == "authorize_path"


def test_http_404_on_custom_authorize_url_names_authorize_url(
    mocked: responses.RequestsMock,
) -> None:
    custom = "https://proxy.internal.example/login"
    mocked.post(custom, status=404, body="nope")
    with pytest.raises(InvalidConfig) as caught:
        make_provider(authorize_url=custom).acquire()
    assert caught.value.field == "authorize_url"


def test_other_4xx_without_webkassa_errors_raises_malformed_response(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(AUTHORIZE, status=400, body="Bad Request")
    with pytest.raises(MalformedResponse, match="HTTP 400"):
        provider.acquire()


# -- validate ------------------------------------------------------------------------------


def test_validate_posts_token_in_json_body_to_v4_cashboxes_with_api_key(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(
        CASHBOXES,
        json=CASHBOX_LIST,
        match=[
            matchers.json_params_matcher({"Token": TOKEN}),
            matchers.header_matcher({"X-API-Key": API_KEY}),
        ],
    )
    provider.validate(Secret(TOKEN))  # returns None; raises on failure
    assert len(mocked.calls) == 1


def test_validate_uses_legacy_cashboxes_path_for_a_legacy_login_path(
    mocked: responses.RequestsMock,
) -> None:
    provider = make_provider(api_key=None, authorize_path="/api/Authorize")
    mocked.post(f"{BASE}/api/Cashboxes", json=CASHBOX_LIST)
    provider.validate(Secret(TOKEN))


def test_validate_uses_configured_path_method_and_extra_fields(
    mocked: responses.RequestsMock,
) -> None:
    provider = make_provider(
        validate_path="/api/v4/Check/History",
        validate_body={"CashboxUniqueNumber": "SWK00033717", "Skip": 0, "Take": 1},
    )
    mocked.post(
        f"{BASE}/api/v4/Check/History",
        json={"Data": {"Items": []}},
        match=[
            matchers.json_params_matcher(
                {"Token": TOKEN, "CashboxUniqueNumber": "SWK00033717", "Skip": 0, "Take": 1}
            )
        ],
    )
    provider.validate(Secret(TOKEN))


def test_validate_with_get_sends_token_as_query_parameter(
    mocked: responses.RequestsMock,
) -> None:
    provider = make_provider(validate_path="/api/v4/Ping", validate_method="GET")
    mocked.get(
        f"{BASE}/api/v4/Ping",
        json={"Data": True},
        match=[matchers.query_param_matcher({"Token": TOKEN})],
    )
    provider.validate(Secret(TOKEN))


@pytest.mark.parametrize(
    ("code", "text"),
    [(2, "Срок действия сессии истек"), (3, "Пользователь не авторизован")],
)
def test_validate_raises_validation_failed_when_webkassa_rejects_the_token(
    mocked: responses.RequestsMock, provider: WebkassaProvider, code: int, text: str
) -> None:
    mocked.post(CASHBOXES, json=wk_error(code, text))
    with pytest.raises(ValidationFailed) as caught:
        provider.validate(Secret(TOKEN))
    assert text in str(caught.value)
    assert "rejected the token" in str(caught.value)
    assert_no_secret_in(caught.value)


def test_validate_raises_validation_failed_on_other_webkassa_errors(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(CASHBOXES, json=wk_error(5, "Нет доступа к кассе"))
    with pytest.raises(ValidationFailed, match="Нет доступа к кассе"):
        provider.validate(Secret(TOKEN))


def test_validate_raises_validation_failed_on_http_401(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(CASHBOXES, status=401, body="")
    with pytest.raises(ValidationFailed, match="HTTP 401"):
        provider.validate(Secret(TOKEN))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"json": wk_error(-1, "Неизвестная ошибка")}, ProviderUnavailable),
        ({"status": 503, "body": "down"}, ProviderUnavailable),
        ({"body": requests.exceptions.ReadTimeout()}, ProviderTimeout),
        ({"status": 429, "headers": {"Retry-After": "3"}, "body": ""}, RateLimited),
    ],
)
def test_validate_keeps_transient_faults_retryable(
    mocked: responses.RequestsMock,
    provider: WebkassaProvider,
    kwargs: dict[str, Any],
    expected: type[RetryLater],
) -> None:
    mocked.post(CASHBOXES, **kwargs)
    with pytest.raises(expected) as caught:
        provider.validate(Secret(TOKEN))
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"body": "<html>portal</html>", "content_type": "text/html"},
        {"json": {"Result": "ok"}},
    ],
)
def test_validate_raises_malformed_response_on_answers_that_are_not_webkassa_json(
    mocked: responses.RequestsMock, provider: WebkassaProvider, kwargs: dict[str, Any]
) -> None:
    mocked.post(CASHBOXES, **kwargs)
    with pytest.raises(MalformedResponse):
        provider.validate(Secret(TOKEN))


def test_validate_404_is_a_config_error_naming_validate_path(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(CASHBOXES, status=404, body="not found")
    with pytest.raises(InvalidConfig) as caught:
        provider.validate(Secret(TOKEN))
    assert caught.value.field == "validate_path"


# -- secrets never leak ------------------------------------------------------------------------


FAILURES: list[tuple[str, dict[str, Any], type[TokenfleetError]]] = [
    ("acquire", {"json": wk_error(1, f"Неверный пароль {PASSWORD}")}, CredentialsRejected),
    ("acquire", {"json": wk_error(3, f"ключ {API_KEY} не найден")}, CredentialsRejected),
    ("acquire", {"json": wk_error(-1, f"сбой {PASSWORD}")}, ProviderUnavailable),
    ("acquire", {"status": 401, "json": wk_error(3, API_KEY)}, CredentialsRejected),
    ("acquire", {"body": "<html>x</html>", "content_type": "text/html"}, MalformedResponse),
    ("acquire", {"json": {"Data": {}}}, MalformedResponse),
    ("acquire", {"status": 500, "body": PASSWORD}, ProviderUnavailable),
    ("acquire", {"body": requests.exceptions.ReadTimeout(PASSWORD)}, ProviderTimeout),
    ("acquire", {"body": requests.exceptions.ConnectionError(API_KEY)}, ProviderUnavailable),
    ("acquire", {"status": 429, "body": PASSWORD}, RateLimited),
    ("acquire", {"status": 404, "body": PASSWORD}, InvalidConfig),
    ("validate", {"json": wk_error(2, f"токен {TOKEN} истек")}, ValidationFailed),
    ("validate", {"status": 403, "body": TOKEN}, ValidationFailed),
    ("validate", {"json": {"Token": TOKEN}}, MalformedResponse),
]


@pytest.mark.parametrize(("call", "kwargs", "expected"), FAILURES)
def test_no_raised_error_contains_password_api_key_or_token(
    mocked: responses.RequestsMock,
    provider: WebkassaProvider,
    call: str,
    kwargs: dict[str, Any],
    expected: type[TokenfleetError],
) -> None:
    url = AUTHORIZE if call == "acquire" else CASHBOXES
    mocked.post(url, **kwargs)
    with pytest.raises(expected) as caught:
        if call == "acquire":
            provider.acquire()
        else:
            provider.validate(Secret(TOKEN))
    assert_no_secret_in(caught.value, caught.value.__cause__)
    copy = pickle.loads(pickle.dumps(caught.value))  # noqa: S301 - our own bytes
    assert type(copy) is expected
    assert_no_secret_in(copy)


def test_webkassa_text_echoing_a_secret_is_masked_but_kept_otherwise(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(AUTHORIZE, json=wk_error(1, f"Пароль {PASSWORD} неверный"))
    with pytest.raises(CredentialsRejected) as caught:
        provider.acquire()
    assert "Пароль *** неверный" in str(caught.value)


def test_errors_pickle_with_webkassa_code_for_celery(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(AUTHORIZE, json=wk_error(1, "Неверный логин или пароль"))
    with pytest.raises(GiveUp) as caught:
        provider.acquire()
    copy = pickle.loads(pickle.dumps(caught.value))  # noqa: S301 - our own bytes
    assert copy.provider_code == 1
    assert copy.provider_text == "Неверный логин или пароль"
    assert str(copy) == str(caught.value)


def test_config_and_provider_reprs_hide_password_and_api_key() -> None:
    config = make_config()
    provider = WebkassaProvider(config)
    for text in (repr(config), str(config), config.model_dump_json(), repr(provider)):
        assert PASSWORD not in text
        assert API_KEY not in text
    assert LOGIN in repr(config)


def test_acquired_secret_repr_hides_the_token(
    mocked: responses.RequestsMock, provider: WebkassaProvider
) -> None:
    mocked.post(AUTHORIZE, json={"Data": {"Token": TOKEN}})
    secret = provider.acquire()
    assert_no_secret_in(secret, attrs=False)


# -- configuration ---------------------------------------------------------------------------


def _loc_of(error: ValidationError) -> list[tuple[Any, ...]]:
    return [tuple(item["loc"]) for item in error.errors()]


def test_missing_login_fails_validation_naming_the_field_without_echoing_the_password() -> None:
    with pytest.raises(ValidationError) as caught:
        WebkassaConfig.model_validate({"base_url": BASE, "password": PASSWORD, "api_key": API_KEY})
    assert ("login",) in _loc_of(caught.value)
    assert PASSWORD not in str(caught.value)
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"login": "   "}, "login"),
        ({"password": ""}, "password"),
        ({"base_url": "devkkm.webkassa.kz"}, "base_url"),
        ({"base_url": f"https://user:{PASSWORD}@devkkm.webkassa.kz"}, "base_url"),
        ({"authorize_url": "ftp://example.kz/login"}, "authorize_url"),
        ({"authorize_path": "api/v4/Authorize"}, "authorize_path"),
        ({"validate_path": "Cashboxes"}, "validate_path"),
        ({"validate_method": "DELETE"}, "validate_method"),
        ({"validate_body": {"Token": "x"}}, "validate_body"),
        ({"token_ttl": "0s"}, "token_ttl"),
        ({"token_ttl": "soon"}, "token_ttl"),
        ({"timeout": 0}, "timeout"),
        ({"pasword": "typo"}, "pasword"),
    ],
)
def test_invalid_config_values_fail_validation_naming_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        make_config(**overrides)
    assert (field,) in _loc_of(caught.value)
    assert PASSWORD not in str(caught.value)


def test_config_accepts_durations_in_the_fleet_format() -> None:
    assert make_config(token_ttl="90m").token_ttl == timedelta(minutes=90)
    assert make_config(token_ttl=3600).token_ttl == timedelta(hours=1)


def test_config_urls_resolve_login_and_validation_endpoints() -> None:
    assert make_config().login_url == AUTHORIZE
    assert make_config().validation_url == CASHBOXES
    legacy = make_config(authorize_path="/api/Authorize")
    assert legacy.validation_url == f"{BASE}/api/Cashboxes"
    custom = make_config(authorize_url="https://p.example/api/v4/Authorize")
    assert custom.login_url == "https://p.example/api/v4/Authorize"
    assert custom.validation_url == CASHBOXES
