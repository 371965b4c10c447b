"""Webkassa (cloud fiscal register, Kazakhstan): keep the API session token fresh.

A credential logs in with ``POST {base_url}/api/v4/Authorize`` and validates the new token
with one cheap authenticated call (by default the list of the user's cash registers).

What comes from documentation and what is assumed
-------------------------------------------------

From Webkassa's integrator Postman collection "Интеграторы_v4-2.0.3" (devkkm.webkassa.kz):

* ``POST /api/v4/Authorize`` with JSON ``{"Login": ..., "Password": ...}`` and the integrator
  key in an ``x-api-key`` header; the answer is ``{"Data": {"Token": "<32 hex>"}}``.
* Every v4 request carries the API key header; authenticated calls put the token in the JSON
  *body* as ``"Token"`` (there is no Authorization header).
* ``POST /api/v4/Cashboxes`` with just ``{"Token": ...}`` lists the cash registers available
  to the user: ``{"Data": {"List": [{"UniqueNumber": ..., ...}]}}``. It needs no other
  argument, changes nothing and is not fiscal, so it is the default validation call.
* Errors come as ``{"Errors": [{"Code": <int>, "Text": <str>}]}``.

From Webkassa's ``ApiErrorCode`` enum as reproduced in open-source drivers (the OposWebkassa
driver, an HSC fiscal-registrar emulator, several integration clients), which agree:
``-1`` unknown error, ``1`` wrong login or password, ``2`` session (token) expired, ``3`` user
not authorised, ``4`` no access to the operation, ``9`` data validation error; codes 5-20
and 1000+ concern cash registers, shifts and receipts, not logging in.

From older integrations: accounts without an API key use ``/api/Authorize`` and
``/api/Cashboxes`` (same bodies, no key); hosts are ``kkm.webkassa.kz`` (production) and
``devkkm.webkassa.kz`` (test).

Assumptions (no primary source found; each is configurable or conservative):

* Token lifetime: integrators report sessions "up to 24 hours" and refresh after 22 h. It is
  not documented, so ``token_ttl`` defaults to unknown (``None``) and the daily 05:00 schedule
  alone drives rotation, as the operators' systemd timer did for years. Setting
  ``token_ttl = "24h"`` makes the engine also rotate ahead of that expiry; with a 24 h
  lifetime that pulls each day's rotation about 15 minutes earlier than the last.
* Webkassa answers refusals with HTTP 200 and an ``Errors`` body; an HTTP 401/403 (what a
  gateway in front of it, or a missing API key, may produce) is treated as a refusal too.
* Code ``505`` (service unavailable) is transient: one third-party client lists it; it is
  handled like ``-1``.
* Whether a new login revokes the previous token is not documented.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal, NoReturn, Protocol
from urllib.parse import urlsplit

import requests
from pydantic import ConfigDict, Field, SecretStr, StringConstraints, field_validator

from tokenfleet.errors import InvalidConfig
from tokenfleet.schedule import parse_duration

from .base import (
    CredentialsRejected,
    MalformedResponse,
    Provider,
    ProviderConfig,
    ProviderTimeout,
    ProviderUnavailable,
    Queue,
    Schedule,
    Secret,
    TokenPlacement,
    ValidationFailed,
)
from .http import check_http_url, describe_request, json_body, send

__all__ = ["WebkassaConfig", "WebkassaProvider"]

# Webkassa's ApiErrorCode values this module acts on (see the module docstring for sources).
UNKNOWN_ERROR = -1
WRONG_CREDENTIALS = 1
TOKEN_EXPIRED = 2
NOT_AUTHORIZED = 3
OPERATION_ACCESS_DENIED = 4
DATA_VALIDATION_ERROR = 9
SERVICE_UNAVAILABLE = 505

#: Codes that mean "the server had a problem", not "you did something wrong": retry later.
TRANSIENT_CODES = frozenset({UNKNOWN_ERROR, SERVICE_UNAVAILABLE})
#: Codes on Authorize that mean the configured login itself was refused.
LOGIN_REFUSED_CODES = frozenset(
    {WRONG_CREDENTIALS, NOT_AUTHORIZED, OPERATION_ACCESS_DENIED, DATA_VALIDATION_ERROR}
)
#: Codes on an authenticated call that mean the token is not (or no longer) accepted.
TOKEN_REJECTED_CODES = frozenset({TOKEN_EXPIRED, NOT_AUTHORIZED})

_TEXT_LIMIT = 200
_TOKEN_LIMIT = 4096

NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class WebkassaConfig(ProviderConfig):
    """Configuration of one Webkassa credential.

    ``base_url`` is the host root (``https://kkm.webkassa.kz`` in production,
    ``https://devkkm.webkassa.kz`` for tests). ``api_key`` is the integrator key that API v4
    requires; leave it out for legacy accounts and set ``authorize_path="/api/Authorize"``.
    ``authorize_url`` replaces ``base_url + authorize_path`` entirely, for a proxy or a
    custom login endpoint.

    The validation call defaults to ``POST /api/v4/Cashboxes`` (``/api/Cashboxes`` when the
    login path is not a v4 one). ``validate_body`` adds fields next to ``"Token"``; with
    ``validate_method="GET"`` they and the token go into the query string instead, which
    puts the token in URLs that proxies may log, so prefer POST.

    ``token_ttl`` (seconds or ``"24h"``) sets ``expires_at`` on acquired tokens; ``None``
    means the expiry is unknown.
    """

    # Pydantic puts the raw input in validation errors by default, and that input holds the
    # password; hide it so a config error can be shown and logged.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    base_url: str
    login: NonEmptyStr
    password: SecretStr
    api_key: SecretStr | None = None
    authorize_path: str = "/api/v4/Authorize"
    authorize_url: str | None = None
    validate_path: str | None = None
    validate_method: Literal["GET", "POST"] = "POST"
    validate_body: dict[str, Any] = Field(default_factory=dict)
    token_ttl: timedelta | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_http_url(value, "base_url")

    @field_validator("authorize_url")
    @classmethod
    def _authorize_url(cls, value: str | None) -> str | None:
        return (
            None if value is None or not value.strip() else check_http_url(value, "authorize_url")
        )

    @field_validator("authorize_path", "validate_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value.startswith("/"):
            raise ValueError("a path must start with '/', e.g. '/api/v4/Authorize'")
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("the password must not be empty")
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _api_key(cls, value: Any) -> Any:
        # An unset environment variable often arrives as "": treat it as "no key".
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return value

    @field_validator("validate_body")
    @classmethod
    def _validate_body(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "Token" in value:
            raise ValueError("'Token' is filled in by the provider; leave it out")
        return value

    @field_validator("token_ttl", mode="before")
    @classmethod
    def _token_ttl(cls, value: Any) -> Any:
        if value is None:
            return None
        ttl = parse_duration(value)
        if ttl <= timedelta(0):
            raise ValueError("token_ttl must be positive (or null when unknown)")
        return ttl

    @property
    def login_url(self) -> str:
        """The full URL the provider logs in at."""
        return self.authorize_url or f"{self.base_url}{self.authorize_path}"

    @property
    def validation_url(self) -> str:
        """The full URL of the authenticated validation call."""
        if self.validate_path is not None:
            return f"{self.base_url}{self.validate_path}"
        login_path = urlsplit(self.login_url).path.lower()
        legacy = "/v4/" not in login_path
        return f"{self.base_url}{'/api/Cashboxes' if legacy else '/api/v4/Cashboxes'}"


class WebkassaProvider(Provider[WebkassaConfig]):
    """Logs in to Webkassa for a fresh session token and checks it with one cheap call.

    ``acquire`` raises CredentialsRejected when Webkassa refuses the login (its own Code and
    Text are in the message and in ``provider_code``/``provider_text``), MalformedResponse
    when the answer is not Webkassa's JSON (an HTML page, no ``Data.Token``), and the
    RetryLater family for timeouts, 5xx, 429 and Webkassa's own "try again" codes.
    ``validate`` raises ValidationFailed when the token is not accepted.
    """

    name: ClassVar[str] = "webkassa"
    queue: ClassVar[Queue] = "light"
    default_schedule: ClassVar[Schedule] = Schedule(cron="0 5 * * *", jitter=timedelta(minutes=30))
    #: Webkassa takes the token in the JSON body ("Token"), not in a header.
    placement: ClassVar[TokenPlacement] = TokenPlacement(header=None)
    config_model: ClassVar[type[ProviderConfig]] = WebkassaConfig
    secret_fields: ClassVar[tuple[str, ...]] = ("password", "api_key")

    def acquire(self) -> Secret:
        config = self.config
        url = config.login_url
        body = {"Login": config.login, "Password": config.password.get_secret_value()}
        response = send(
            self.session,
            "POST",
            url,
            provider=self.name,
            timeout=config.timeout,
            json=body,
            headers=self._headers(),
        )
        where = describe_request("POST", url)
        field = "authorize_url" if config.authorize_url else "authorize_path"
        data = self._judge(response, where, field, refused=self._refused_login)
        token = data.get("Token") if isinstance(data, Mapping) else None
        if not isinstance(token, str) or not token.strip():
            raise MalformedResponse(f"{self.name}: {where} answered without Data.Token")
        token = token.strip()
        if len(token) > _TOKEN_LIMIT or any(ch.isspace() for ch in token):
            raise MalformedResponse(f"{self.name}: {where} answered a token of an odd shape")
        expires_at = self.clock.now() + config.token_ttl if config.token_ttl else None
        return Secret(value=token, expires_at=expires_at)

    def validate(self, secret: Secret) -> None:
        config = self.config
        url = config.validation_url
        payload: dict[str, Any] = {**config.validate_body, "Token": secret.reveal()}
        extra: dict[str, Any] = (
            {"params": payload} if config.validate_method == "GET" else {"json": payload}
        )
        response = send(
            self.session,
            config.validate_method,
            url,
            provider=self.name,
            timeout=config.timeout,
            headers=self._headers(),
            **extra,
        )
        where = describe_request(config.validate_method, url)
        self._judge(
            response,
            where,
            "validate_path",
            refused=self._refused_token,
            secrets=(secret.reveal(),),
        )

    # -- internals ---------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.config.api_key is not None:
            headers["X-API-Key"] = self.config.api_key.get_secret_value()
        return headers

    def _secrets(self, extra: Iterable[str] = ()) -> list[str]:
        values = [self.config.password.get_secret_value(), *extra]
        if self.config.api_key is not None:
            values.append(self.config.api_key.get_secret_value())
        return [value for value in values if value]

    def _judge(
        self,
        response: requests.Response,
        where: str,
        field: str,
        *,
        refused: _Refusal,
        secrets: Iterable[str] = (),
    ) -> Any:
        """Return ``Data`` of a successful answer; raise the classified error otherwise.

        ``send`` has already turned timeouts, 5xx and 429 into RetryLater errors.
        """
        status = response.status_code
        hidden = self._secrets(secrets)
        parsed: Any = None
        if 200 <= status < 300:
            parsed = json_body(response, provider=self.name)
        else:
            try:
                parsed = response.json()
            except ValueError:
                parsed = None
        errors = _errors(parsed, hidden)
        if status in (401, 403):
            refused(where, errors, status, forced=True)
        if errors:
            codes = {code for code, _ in errors}
            if codes & TRANSIENT_CODES and not codes - TRANSIENT_CODES:
                raise ProviderUnavailable(
                    f"{self.name}: {where} reported a server-side error: {_describe(errors)}",
                    **_attrs(errors, status),
                )
            refused(where, errors, status, forced=False)
        if status == 408:
            raise ProviderTimeout(f"{self.name}: {where} answered HTTP 408")
        if status in (404, 405, 410):
            # The URL is wrong, not the password: a person must fix the configuration.
            raise InvalidConfig(
                f"{self.name}: {where} answered HTTP {status}; check base_url and {field}",
                field=field,
                http_status=status,
            )
        if not 200 <= status < 300:
            raise MalformedResponse(
                f"{self.name}: {where} answered HTTP {status} without Webkassa errors",
                http_status=status,
            )
        if not isinstance(parsed, Mapping) or parsed.get("Data") is None:
            raise MalformedResponse(
                f"{self.name}: {where} answered JSON without Data or Errors", http_status=status
            )
        return parsed["Data"]

    def _refused_login(
        self, where: str, errors: list[tuple[int | None, str]], status: int, *, forced: bool
    ) -> NoReturn:
        # Every refusal of a login, known code or not, is permanent for these credentials:
        # the answer is Webkassa's documented error shape, so it is not "malformed", and a
        # retry with the same login and password would be refused the same way. Codes
        # outside LOGIN_REFUSED_CODES are about registers and shifts and should never come
        # from Authorize; they still need a person, so they open the circuit with the text.
        kind = (
            "refused the login"
            if forced or _any_in(errors, LOGIN_REFUSED_CODES)
            else "refused the login with an unexpected error"
        )
        raise CredentialsRejected(
            f"{self.name}: {where} {kind}{_status_note(status)}{_tail(errors)}",
            **_attrs(errors, status),
        )

    def _refused_token(
        self, where: str, errors: list[tuple[int | None, str]], status: int, *, forced: bool
    ) -> NoReturn:
        # Only a success proves the token works (invariant: promote only validated secrets),
        # so any refusal that is not a server fault fails validation.
        kind = (
            "rejected the token"
            if forced or _any_in(errors, TOKEN_REJECTED_CODES)
            else "did not accept the validation call"
        )
        raise ValidationFailed(
            f"{self.name}: {where} {kind}{_status_note(status)}{_tail(errors)}",
            **_attrs(errors, status),
        )


class _Refusal(Protocol):
    """Type of the ``refused`` callbacks of :meth:`WebkassaProvider._judge`."""

    def __call__(
        self, where: str, errors: list[tuple[int | None, str]], status: int, *, forced: bool
    ) -> NoReturn: ...


def _errors(parsed: Any, secrets: list[str]) -> list[tuple[int | None, str]]:
    """Webkassa's ``Errors`` list as ``(code, text)`` pairs, texts scrubbed of secrets."""
    if not isinstance(parsed, Mapping):
        return []
    raw = parsed.get("Errors")
    if not isinstance(raw, list):
        return []
    result: list[tuple[int | None, str]] = []
    for item in raw:
        if not isinstance(item, Mapping):
            continue
        code: int | None
        try:
            code = int(item.get("Code"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            code = None
        result.append((code, _clean_text(item.get("Text"), secrets)))
    return result


def _clean_text(value: Any, secrets: list[str]) -> str:
    text = " ".join(str(value).split()) if value is not None else ""
    for secret in secrets:
        # Webkassa's texts never echo inputs that we know of; this is belt and braces.
        text = text.replace(secret, "***")
    if len(text) > _TEXT_LIMIT:
        text = text[: _TEXT_LIMIT - 1] + "…"
    return text


def _describe(errors: list[tuple[int | None, str]]) -> str:
    shown = [f"Webkassa error {code}: {text}" for code, text in errors[:3]]
    if len(errors) > 3:
        shown.append(f"and {len(errors) - 3} more")
    return "; ".join(shown)


def _tail(errors: list[tuple[int | None, str]]) -> str:
    return f": {_describe(errors)}" if errors else ""


def _status_note(status: int) -> str:
    return "" if status == 200 else f" (HTTP {status})"


def _any_in(errors: list[tuple[int | None, str]], codes: frozenset[int]) -> bool:
    return any(code in codes for code, _ in errors)


def _attrs(errors: list[tuple[int | None, str]], status: int) -> dict[str, Any]:
    code, text = errors[0] if errors else (None, None)
    return {"provider_code": code, "provider_text": text, "http_status": status}
