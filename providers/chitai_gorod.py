"""Chitai-Gorod (bookstore behind Cloudflare): keep the site's bearer token fresh.

``acquire`` asks FlareSolverr to open the site in a real browser, reads the token cookie the
site sets (``access-token``) and returns it bound to the browser's User-Agent, with the
Cloudflare clearance cookies the API needs next to it. ``validate`` makes one cheap search
request to the bookstore API with that token, User-Agent and cookies.

What comes from where
---------------------

* FlareSolverr's v1 API: see :mod:`providers.flaresolverr` (README and source).
* From the operators' existing Celery task (the system this provider replaces) and public
  test code against the bookstore: the site is ``https://www.chitai-gorod.ru``; it sets a
  cookie ``access-token`` whose value is ``Bearer%20<JWT>`` (URL-encoded, with the scheme);
  the API is ``https://web-agr.chitai-gorod.ru/web/api/...`` and takes
  ``Authorization: Bearer <JWT>``; ``GET /web/api/v2/search/product`` with ``phrase``,
  ``customerCityId`` and ``products[page]``/``products[per-page]`` is a read-only search, so
  it is the default validation call (one result, nothing changes, no account data needed).
  The tokens are JWTs with an ``exp`` claim (anonymous ones issued by
  ``/api/v1/auth/anonymous``).

Assumptions (configurable or conservative):

* 401 and 403 from the API mean "this token (or its clearance) is not accepted"; a 200 must
  carry JSON (a Cloudflare HTML page with 200 is a MalformedResponse).
* Expiry comes from the cookie's ``expires`` when it has one, else from the JWT's ``exp``
  (decoded without verifying the signature), else it is unknown.
* The API needs the clearance cookies of the browser that solved the challenge
  (``cf_clearance``, ``__cf_bm``, ``__ddg*``); they travel in ``Secret.cookies`` with the
  token cookie itself, so applications send exactly what the browser had.
* One FlareSolverr session (a browser kept open, id ``session_id``) is reused across
  rotations and recreated after ``session_ttl``, after a solve failure, and once
  transparently when FlareSolverr reports it lost (restarted, or v1/v2's "This session
  does not exist").
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Hashable
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

import requests
from pydantic import SecretStr, ValidationInfo, field_validator, model_validator

from tokenfleet.queues import QUEUES
from tokenfleet.schedule import parse_duration

from .base import (
    Clock,
    InvalidConfig,
    MalformedResponse,
    Provider,
    ProviderConfig,
    ProviderTimeout,
    Queue,
    Schedule,
    Secret,
    ValidationFailed,
)
from .browser import BrowserBackend, Cookie, Health, Solution, target_where
from .chromium import ChromiumBackend
from .flaresolverr import FlareSolverr, FlareSolverrBackend
from .http import check_http_url, describe_request, json_body, send

__all__ = ["ChitaiGorodConfig", "ChitaiGorodProvider", "jwt_expiry"]

_TOKEN_LIMIT = 8192
#: Seconds the HTTP call to FlareSolverr may take beyond its own ``maxTimeout``.
_SOLVE_MARGIN = 10.0
#: Cookie-name prefixes of anti-bot clearance cookies that must travel with the token.
CLEARANCE_PREFIXES = ("cf_", "__cf", "__ddg")


class ChitaiGorodConfig(ProviderConfig):
    """Configuration of the Chitai-Gorod bearer token.

    ``flaresolverr_url`` is the FlareSolverr root; ``site_url`` the page FlareSolverr opens;
    ``token_cookie`` the cookie holding the token. ``api_url`` + ``api_params`` is the
    validation GET (``timeout`` seconds). ``max_timeout`` (seconds) is FlareSolverr's
    ``maxTimeout`` for one solve. ``session_id`` names the FlareSolverr browser session that
    is reused (``None``: a fresh browser per solve); ``session_ttl`` retires it.
    ``proxy`` (``http://[user:pass@]host:port``) is handed to the browser.

    ``backend`` chooses the browser: ``flaresolverr`` (the FlareSolverr service at
    ``flaresolverr_url``) or ``playwright`` (the local Chromium at ``chromium_path``, driven
    by Playwright, for sites where FlareSolverr is not wanted; ``user_agent`` overrides its
    User-Agent, which otherwise is Chromium's own without the ``Headless`` marker).

    One solve plus one validation must fit inside the browser queue's soft time limit, so a
    slow site is reported as a timeout and never kills the worker.
    """

    flaresolverr_url: str = "http://127.0.0.1:8191"
    site_url: str = "https://www.chitai-gorod.ru"
    token_cookie: str = "access-token"  # noqa: S105 - a cookie name, not a secret
    api_url: str = "https://web-agr.chitai-gorod.ru/web/api/v2/search/product"
    api_params: dict[str, str] = {
        "phrase": "python",
        "customerCityId": "213",
        "products[page]": "1",
        "products[per-page]": "1",
    }
    max_timeout: float = 60.0
    session_id: str | None = "tokenfleet-chitai-gorod"
    session_ttl: timedelta | None = timedelta(hours=6)
    proxy: SecretStr | None = None
    backend: Literal["flaresolverr", "playwright"] = "flaresolverr"
    chromium_path: str = "/usr/bin/chromium"
    user_agent: str | None = None

    @field_validator("flaresolverr_url", "api_url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        return check_http_url(value, str(info.field_name))

    @field_validator("site_url")
    @classmethod
    def _site(cls, value: str) -> str:
        return check_http_url(value, "site_url", strip_slash=False)

    @field_validator("proxy", mode="before")
    @classmethod
    def _proxy(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str) or not urlsplit(value.strip()).hostname:
            # Not echoing the value: a proxy URL may carry a password.
            raise ValueError("proxy must be a URL like http://user:pass@host:3128")
        return value.strip()

    @field_validator("token_cookie")
    @classmethod
    def _cookie(cls, value: str) -> str:
        value = value.strip()
        if not value or any(ch.isspace() or ch in ";=," for ch in value):
            raise ValueError("token_cookie must be a cookie name such as 'access-token'")
        return value

    @field_validator("max_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError("must be a positive number of seconds")
        return value

    @field_validator("chromium_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("chromium_path must be an absolute path such as /usr/bin/chromium")
        return value

    @field_validator("user_agent")
    @classmethod
    def _user_agent(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(ch in value for ch in "\r\n")):
            raise ValueError("user_agent must be one non-empty line")
        return value

    @model_validator(mode="after")
    def _fits_the_queue(self) -> ChitaiGorodConfig:
        budget = QUEUES["browser"].soft
        needed = self.max_timeout + _SOLVE_MARGIN + self.timeout
        if needed >= budget:
            raise ValueError(
                f"max_timeout ({self.max_timeout:g}s) + timeout ({self.timeout:g}s) + "
                f"{_SOLVE_MARGIN:g}s must stay under the browser queue's soft time limit "
                f"({budget:g}s)"
            )
        return self

    @field_validator("session_ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> Any:
        if value is None:
            return None
        ttl = parse_duration(value)
        if ttl <= timedelta(0):
            raise ValueError("session_ttl must be positive (or null to keep the session)")
        return ttl


class ChitaiGorodProvider(Provider[ChitaiGorodConfig]):
    """Gets the bookstore's bearer token through a real browser and checks it with one search.

    ``acquire`` raises ProviderTimeout when the solve times out, ProviderUnavailable when
    FlareSolverr (or Chromium) is down (the message names its URL or path), GiveUp when
    Cloudflare blocks the IP or shows a captcha, and MalformedResponse when the page set no
    token cookie. ``validate`` raises ValidationFailed on 401/403. The browser (or
    FlareSolverr session) lives on this instance between rotations; ``close`` releases it.
    """

    name: ClassVar[str] = "chitai_gorod"
    queue: ClassVar[Queue] = "browser"
    default_schedule: ClassVar[Schedule] = Schedule(every=timedelta(hours=3))
    config_model: ClassVar[type[ProviderConfig]] = ChitaiGorodConfig
    secret_fields: ClassVar[tuple[str, ...]] = ("proxy",)

    def __init__(
        self,
        config: ChitaiGorodConfig,
        *,
        session: requests.Session | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(config, session=session, clock=clock)
        self.backend = _backend(config, self.session, self.clock, self.name)

    # -- contract --------------------------------------------------------------------------

    def acquire(self) -> Secret:
        config = self.config
        proxy = config.proxy.get_secret_value() if config.proxy is not None else None
        solution = self.backend.open(
            config.site_url,
            wait_for_cookie=config.token_cookie,
            timeout=config.max_timeout,
            proxy=proxy,
        )
        return self._secret(solution)

    def validate(self, secret: Secret) -> None:
        config = self.config
        headers = {"Accept": "application/json", "Authorization": f"Bearer {secret.reveal()}"}
        user_agent = secret.bound.get("user_agent")
        if user_agent:
            headers["User-Agent"] = user_agent
        response = send(
            self.session,
            "GET",
            config.api_url,
            provider=self.name,
            timeout=config.timeout,
            params=config.api_params,
            headers=headers,
            cookies=dict(secret.cookies),
        )
        where = describe_request("GET", config.api_url)
        status = response.status_code
        if status in (401, 403):
            raise ValidationFailed(
                f"{self.name}: {where} refused the token (HTTP {status})", http_status=status
            )
        if status in (404, 405, 410):
            raise InvalidConfig(
                f"{self.name}: {where} answered HTTP {status}; check api_url",
                field="api_url",
                http_status=status,
            )
        if status == 408:
            raise ProviderTimeout(f"{self.name}: {where} answered HTTP 408")
        if status != 200:
            raise MalformedResponse(
                f"{self.name}: {where} answered HTTP {status}", http_status=status
            )
        json_body(response, provider=self.name)

    def health(self) -> tuple[Health, ...]:
        return (self.backend.health(),)

    def health_key(self) -> Hashable:
        config = self.config
        if config.backend == "playwright":
            return ("chromium", config.chromium_path)
        return ("flaresolverr", config.flaresolverr_url)

    def close(self) -> None:
        self.backend.close()

    # -- internals -------------------------------------------------------------------------

    def _secret(self, solution: Solution) -> Secret:
        config = self.config
        page = target_where(config.site_url)
        cookie = solution.cookie(config.token_cookie)
        if cookie is None:
            names = sorted({c.name for c in solution.cookies})
            raise MalformedResponse(
                f"{self.name}: {page} set no {config.token_cookie!r} cookie "
                f"(cookies set: {', '.join(names) or 'none'})"
            )
        token = _token_value(cookie.value)
        if not token or len(token) > _TOKEN_LIMIT or any(ch.isspace() for ch in token):
            raise MalformedResponse(
                f"{self.name}: the {config.token_cookie!r} cookie of {page} holds no usable token"
            )
        expires_at = _cookie_expiry(cookie) or jwt_expiry(token)
        cookies = {
            c.name: c.value
            for c in solution.cookies
            if c.name == config.token_cookie or c.name.startswith(CLEARANCE_PREFIXES)
        }
        return Secret(
            value=token,
            expires_at=expires_at,
            bound=MappingProxyType({"user_agent": solution.user_agent}),
            cookies=MappingProxyType(cookies),
        )


def _backend(
    config: ChitaiGorodConfig, session: requests.Session, clock: Clock, name: str
) -> BrowserBackend:
    ttl = config.session_ttl.total_seconds() if config.session_ttl is not None else None
    if config.backend == "playwright":
        return ChromiumBackend(
            executable_path=config.chromium_path,
            user_agent=config.user_agent,
            session_ttl=ttl,
            clock=clock,
            provider=name,
        )
    solver = FlareSolverr(
        config.flaresolverr_url, session, timeout_margin=_SOLVE_MARGIN, provider=name
    )
    return FlareSolverrBackend(solver, session_id=config.session_id, session_ttl=ttl, clock=clock)


def _token_value(raw: str) -> str:
    """``Bearer%20abc`` / ``Bearer abc`` / ``abc`` → ``abc``."""
    value = unquote(raw).strip().strip('"').strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        value = rest.strip()
    return value


def _cookie_expiry(cookie: Cookie) -> datetime | None:
    if cookie.expires is None:
        return None
    try:
        return datetime.fromtimestamp(cookie.expires, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def jwt_expiry(token: str) -> datetime | None:
    """The ``exp`` claim of a JWT as an aware datetime, unverified; None if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= 0:
        return None
    try:
        return datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        return None
