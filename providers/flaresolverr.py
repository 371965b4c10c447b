"""A small client for FlareSolverr's v1 API, with answers classified into tokenfleet errors.

FlareSolverr is a proxy that opens pages in a real browser to pass Cloudflare/DDoS-Guard
challenges and hands back the browser's cookies and User-Agent. Providers that need a
browser-issued token (``providers.chitai_gorod``) use this client; it never touches storage.

What comes from FlareSolverr's documentation and source
--------------------------------------------------------

From the README and ``src/flaresolverr.py``, ``src/dtos.py``, ``src/flaresolverr_service.py``
of github.com/FlareSolverr/FlareSolverr (v3):

* Every command is ``POST /v1`` with a JSON body ``{"cmd": ..., ...}``. Request fields used
  here: ``cmd`` (``request.get``, ``request.post``, ``sessions.create``, ``sessions.list``,
  ``sessions.destroy``), ``url``, ``maxTimeout`` (milliseconds, default 60000), ``session``,
  ``proxy`` (``{"url", "username", "password"}``), ``postData`` (a urlencoded string) and
  ``returnOnlyCookies``.
* Answers are ``{"status": "ok"|"error", "message", "startTimestamp", "endTimestamp",
  "version"}`` plus ``solution`` (request commands: ``url``, ``status``, ``headers``,
  ``response``, ``cookies``, ``userAgent``), ``session`` (``sessions.create``) or
  ``sessions`` (``sessions.list``). Failures are HTTP 500 with ``status: "error"`` and a
  ``message`` starting with ``"Error: "``.
* ``solution.status`` is hard-coded to 200 ("selenium not provides this info"), so it says
  nothing about the page: callers must judge by cookies and content.
* Messages: ``"Error solving the challenge. Timeout after 60.0 seconds."``; ``"Cloudflare
  has blocked this request. Probably your IP is banned for this site, check in your web
  browser."`` (page titles ``Access denied``, ``Attention Required! | Cloudflare``);
  ``"The session doesn't exist."`` (``sessions.destroy``); ``sessions.create`` with an
  existing id answers ``"Session already exists."``.
* ``GET /health`` answers ``{"status": "ok"}``.

Assumptions (each handled conservatively):

* ``"This session does not exist."`` and ``"Captcha detected but no automatic solver is
  configured."`` come from FlareSolverr v1/v2 (TypeScript); v3 re-creates an unknown session
  on ``request.get`` instead. Both wordings are recognised.
* Cookie expiry arrives as ``expires`` (Puppeteer, v2) or ``expiry`` (Selenium, v3), in unix
  seconds; ``-1``/``0``/missing mean a session cookie. Both keys are read.
* Any other ``status: "error"`` message (a crashed browser, a DNS failure) is transient.

Errors: a solve timeout or no answer in time → ProviderTimeout; connection refused, 5xx
without FlareSolverr's JSON, or an unknown error → ProviderUnavailable ("FlareSolverr at
<url> is unreachable"); a lost session → ProviderUnavailable with ``session_lost=True``;
a Cloudflare block or captcha → GiveUp (retrying from the same IP will not help). Messages
name the FlareSolverr URL and the target's host and path only, never cookies, tokens,
query strings or proxy credentials.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests

from tokenfleet.clock import Clock
from tokenfleet.errors import (
    GiveUp,
    InvalidConfig,
    MalformedResponse,
    ProviderTimeout,
    ProviderUnavailable,
)

from .browser import Cookie, Health, Solution, target_where

__all__ = [
    "DEFAULT_MAX_TIMEOUT_MS",
    "Cookie",
    "FlareSolverr",
    "FlareSolverrBackend",
    "Solution",
    "target_where",
]

#: FlareSolverr's own default ``maxTimeout``.
DEFAULT_MAX_TIMEOUT_MS = 60_000
_TEXT_LIMIT = 200

# Lower-cased fragments of FlareSolverr error messages, by what the caller should do.
_TIMEOUT_MARKS = ("timeout after",)
_SESSION_LOST_MARKS = ("session does not exist", "session doesn't exist")
_BLOCKED_MARKS = (
    "has blocked this request",
    "access denied",
    "captcha detected",
    "attention required",
)


def _base(url: str) -> str:
    """``scheme://host[:port]/path`` without userinfo, query or a trailing slash."""
    return f"{urlsplit(url).scheme}://{target_where(url).rstrip('/')}"


class FlareSolverr:
    """Talks to one FlareSolverr instance at ``base_url`` (``http://127.0.0.1:8191``).

    Each request command waits ``max_timeout_ms / 1000 + timeout_margin`` seconds for the
    HTTP answer, so FlareSolverr's own timeout fires first and is reported as such.
    Session commands wait ``session_timeout`` seconds (creating one starts a browser).
    """

    def __init__(
        self,
        base_url: str,
        session: requests.Session,
        *,
        timeout_margin: float = 10.0,
        session_timeout: float = 60.0,
        provider: str = "flaresolverr",
    ) -> None:
        self.base_url = _base(base_url)
        self.session = session
        self.timeout_margin = timeout_margin
        self.session_timeout = session_timeout
        self.provider = provider

    def __repr__(self) -> str:
        return f"<FlareSolverr {self.base_url}>"

    # -- request commands ------------------------------------------------------------------

    def get(
        self,
        url: str,
        *,
        max_timeout_ms: int = DEFAULT_MAX_TIMEOUT_MS,
        session_id: str | None = None,
        proxy: str | None = None,
        return_only_cookies: bool = False,
    ) -> Solution:
        """Open ``url`` in FlareSolverr's browser (``request.get``) and return the solution."""
        payload = self._request_payload(
            "request.get", url, max_timeout_ms, session_id, proxy, return_only_cookies
        )
        body = self._command(payload, max_timeout_ms / 1000, url)
        return self._solution(body, url)

    def post(
        self,
        url: str,
        post_data: str,
        *,
        max_timeout_ms: int = DEFAULT_MAX_TIMEOUT_MS,
        session_id: str | None = None,
        proxy: str | None = None,
        return_only_cookies: bool = False,
    ) -> Solution:
        """Submit ``post_data`` (``a=1&b=2``, urlencoded) to ``url`` (``request.post``)."""
        payload = self._request_payload(
            "request.post", url, max_timeout_ms, session_id, proxy, return_only_cookies
        )
        payload["postData"] = post_data
        body = self._command(payload, max_timeout_ms / 1000, url)
        return self._solution(body, url)

    # -- sessions --------------------------------------------------------------------------

    def create_session(self, session_id: str | None = None, *, proxy: str | None = None) -> str:
        """Create a browser session (``sessions.create``); an existing id is reused.

        Returns the session id FlareSolverr reports (a random UUID when none was given).
        """
        payload: dict[str, Any] = {"cmd": "sessions.create"}
        if session_id is not None:
            payload["session"] = session_id
        if proxy:
            payload["proxy"] = _proxy(proxy)
        body = self._command(payload, self.session_timeout, None)
        created = body.get("session")
        if not isinstance(created, str) or not created:
            raise MalformedResponse(
                f"{self.provider}: FlareSolverr at {self.base_url} created a session "
                "but answered no session id"
            )
        return created

    def list_sessions(self) -> list[str]:
        """Ids of FlareSolverr's open browser sessions (``sessions.list``)."""
        body = self._command({"cmd": "sessions.list"}, self.session_timeout, None)
        sessions = body.get("sessions")
        if not isinstance(sessions, list) or not all(isinstance(s, str) for s in sessions):
            raise MalformedResponse(
                f"{self.provider}: FlareSolverr at {self.base_url} answered sessions.list "
                "without a list of session ids"
            )
        return list(sessions)

    def destroy_session(self, session_id: str) -> None:
        """Close a browser session; an unknown id raises ProviderUnavailable(session_lost)."""
        self._command(
            {"cmd": "sessions.destroy", "session": session_id}, self.session_timeout, None
        )

    def probe(self, timeout: float = 5.0) -> Health:
        """``GET /health``, told in words: up (with FlareSolverr's version), broken or down."""
        url = f"{self.base_url}/health"
        try:
            response = self.session.get(url, timeout=timeout)
        except requests.Timeout:
            return Health("flaresolverr", self.base_url, False, f"no answer within {timeout:g}s")
        except requests.RequestException as exc:
            return Health("flaresolverr", self.base_url, False, f"down ({type(exc).__name__})")
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 200 and isinstance(body, dict) and body.get("status") == "ok":
            version = self._version()
            return Health("flaresolverr", self.base_url, True, f"ok{version}")
        return Health(
            "flaresolverr",
            self.base_url,
            False,
            f"unhealthy: GET /health answered HTTP {response.status_code}",
        )

    def _version(self) -> str:
        # GET / answers {"msg": "FlareSolverr is ready!", "version": ..., "userAgent": ...}.
        try:
            body = self.session.get(f"{self.base_url}/", timeout=2.0).json()
        except (requests.RequestException, ValueError):
            return ""
        version = body.get("version") if isinstance(body, dict) else None
        return f", version {version}" if isinstance(version, str) and version else ""

    # -- internals -------------------------------------------------------------------------

    def _request_payload(
        self,
        cmd: str,
        url: str,
        max_timeout_ms: int,
        session_id: str | None,
        proxy: str | None,
        return_only_cookies: bool,
    ) -> dict[str, Any]:
        if max_timeout_ms < 1:
            raise ValueError("max_timeout_ms must be positive")
        payload: dict[str, Any] = {"cmd": cmd, "url": url, "maxTimeout": int(max_timeout_ms)}
        if session_id is not None:
            payload["session"] = session_id
        if proxy:
            payload["proxy"] = _proxy(proxy)
        if return_only_cookies:
            payload["returnOnlyCookies"] = True
        return payload

    def _command(
        self, payload: dict[str, Any], solve_seconds: float, target: str | None
    ) -> dict[str, Any]:
        """POST one command; return the ``status: ok`` body or raise a classified error."""
        where = f"FlareSolverr at {self.base_url}"
        doing = f"{payload['cmd']} {target_where(target)}" if target else str(payload["cmd"])
        timeout = solve_seconds + self.timeout_margin
        try:
            response = self.session.post(f"{self.base_url}/v1", json=payload, timeout=timeout)
        except requests.Timeout:
            raise ProviderTimeout(
                f"{self.provider}: {where} gave no answer within {timeout:g}s ({doing})"
            ) from None
        except requests.ConnectionError as exc:
            raise ProviderUnavailable(
                f"{self.provider}: {where} is unreachable ({type(exc).__name__}); "
                "is the flaresolverr service running?"
            ) from None
        except requests.RequestException as exc:
            raise ProviderUnavailable(
                f"{self.provider}: {where} is unreachable ({type(exc).__name__})"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        status = response.status_code
        if not isinstance(body, dict) or body.get("status") not in ("ok", "error"):
            if status >= 500:
                raise ProviderUnavailable(
                    f"{self.provider}: {where} is unreachable or broken: HTTP {status} "
                    f"without FlareSolverr's JSON ({doing})",
                    http_status=status,
                )
            if status in (404, 405):
                raise InvalidConfig(
                    f"{self.provider}: {where} answered HTTP {status} for POST /v1; "
                    "check flaresolverr_url",
                    field="flaresolverr_url",
                    http_status=status,
                )
            raise MalformedResponse(
                f"{self.provider}: {where} answered HTTP {status} without FlareSolverr's "
                f"JSON ({doing})",
                http_status=status,
            )
        if body["status"] == "ok":
            return body
        raise self._error(body.get("message"), where, doing, target, status)

    def _error(
        self, raw: Any, where: str, doing: str, target: str | None, status: int
    ) -> Exception:
        text = _clean(raw, target)
        lowered = text.lower()
        said = f"{self.provider}: {where} failed {doing}: {text}"
        if any(mark in lowered for mark in _TIMEOUT_MARKS):
            return ProviderTimeout(said, http_status=status)
        if any(mark in lowered for mark in _SESSION_LOST_MARKS):
            return ProviderUnavailable(said, session_lost=True, http_status=status)
        if any(mark in lowered for mark in _BLOCKED_MARKS):
            return GiveUp(
                f"{said} (blocked or captcha; retrying from this IP will not help)",
                http_status=status,
            )
        return ProviderUnavailable(said, http_status=status)

    def _solution(self, body: Mapping[str, Any], url: str) -> Solution:
        raw = body.get("solution")
        where = f"FlareSolverr at {self.base_url}"
        if not isinstance(raw, Mapping):
            raise MalformedResponse(
                f"{self.provider}: {where} answered without a solution for {target_where(url)}"
            )
        user_agent = raw.get("userAgent")
        cookies_raw = raw.get("cookies")
        if not isinstance(user_agent, str) or not user_agent or not isinstance(cookies_raw, list):
            raise MalformedResponse(
                f"{self.provider}: {where} answered a solution without cookies or userAgent "
                f"for {target_where(url)}"
            )
        cookies = tuple(_cookie(item) for item in cookies_raw if _is_cookie(item))
        status = raw.get("status")
        response = raw.get("response")
        headers = raw.get("headers")
        message = body.get("message")
        return Solution(
            url=str(raw.get("url") or url),
            status=status if isinstance(status, int) else 0,
            user_agent=user_agent,
            cookies=cookies,
            response=response if isinstance(response, str) else None,
            headers=dict(headers) if isinstance(headers, Mapping) else {},
            message=message if isinstance(message, str) else "",
        )


class FlareSolverrBackend:
    """The FlareSolverr browser backend: one reusable FlareSolverr session per instance.

    The session (a browser FlareSolverr keeps open, id ``session_id``) is created on first
    use, reused across ``open`` calls, recreated after ``session_ttl`` seconds, after a solve
    timeout or block (a browser stuck on a challenge is not worth keeping), and once,
    transparently, when FlareSolverr reports it lost (restarted, or v1/v2's "This session
    does not exist"). ``session_id=None`` asks for a fresh browser per solve.
    """

    kind = "flaresolverr"

    def __init__(
        self,
        solver: FlareSolverr,
        *,
        session_id: str | None,
        session_ttl: float | None,
        clock: Clock,
    ) -> None:
        self.solver = solver
        self.session_id = session_id
        self.session_ttl = session_ttl
        self.clock = clock
        self._ready = False
        self._born = 0.0
        # A digest, not the proxy URL: it may hold a password and attributes get dumped.
        self._proxy_key: str | None = None

    def __repr__(self) -> str:
        return f"<FlareSolverrBackend {self.solver.base_url} session={self.session_id!r}>"

    def open(
        self, url: str, *, wait_for_cookie: str, timeout: float, proxy: str | None
    ) -> Solution:
        try:
            return self._solve(url, timeout, proxy)
        except ProviderUnavailable as exc:
            if not getattr(exc, "session_lost", False):
                raise
            self._ready = False
            return self._solve(url, timeout, proxy)

    def reset(self) -> None:
        """Best-effort ``sessions.destroy``; the next solve creates the session afresh."""
        was_ready, self._ready = self._ready, False
        if self.session_id is None or not was_ready:
            return
        try:
            self.solver.destroy_session(self.session_id)
        except (ProviderUnavailable, ProviderTimeout, MalformedResponse, InvalidConfig):
            pass

    def close(self) -> None:
        self.reset()

    def health(self) -> Health:
        return self.solver.probe()

    def _solve(self, url: str, timeout: float, proxy: str | None) -> Solution:
        session_id = self._session(proxy)
        try:
            return self.solver.get(
                url,
                max_timeout_ms=max(1, int(timeout * 1000)),
                session_id=session_id,
                proxy=proxy,
                return_only_cookies=True,
            )
        except (ProviderTimeout, GiveUp):
            self.reset()
            raise

    def _session(self, proxy: str | None) -> str | None:
        if self.session_id is None:
            return None
        now = self.clock.monotonic()
        expired = (
            self.session_ttl is not None and self._ready and now - self._born >= self.session_ttl
        )
        proxy_key = _digest(proxy)
        if expired or (self._ready and proxy_key != self._proxy_key):
            self.reset()
        if not self._ready:
            self.solver.create_session(self.session_id, proxy=proxy)
            self._ready = True
            self._born = now
            self._proxy_key = proxy_key
        return self.session_id


def _digest(value: str | None) -> str | None:
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()


def _proxy(proxy: str) -> dict[str, str]:
    """``http://user:pass@host:port`` → FlareSolverr's ``{"url", "username", "password"}``."""
    parts = urlsplit(proxy)
    if parts.username is None and parts.password is None:
        return {"url": proxy}
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    out = {"url": f"{parts.scheme}://{host}"}
    if parts.username is not None:
        out["username"] = parts.username
    if parts.password is not None:
        out["password"] = parts.password
    return out


def _is_cookie(item: Any) -> bool:
    return (
        isinstance(item, Mapping)
        and isinstance(item.get("name"), str)
        and isinstance(item.get("value"), str)
    )


def _cookie(item: Mapping[str, Any]) -> Cookie:
    expires: float | None = None
    for key in ("expires", "expiry"):
        value = item.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            expires = float(value)
            break
    return Cookie(
        name=item["name"],
        value=item["value"],
        domain=str(item.get("domain") or ""),
        path=str(item.get("path") or "/"),
        expires=expires,
        http_only=bool(item.get("httpOnly", False)),
        secure=bool(item.get("secure", False)),
    )


def _clean(raw: Any, target: str | None) -> str:
    """FlareSolverr's message, without the full target URL (its query may hold secrets)."""
    text = raw if isinstance(raw, str) else json.dumps(raw)[:_TEXT_LIMIT]
    text = text.removeprefix("Error: ").strip() or "no message"
    if target:
        text = text.replace(target, target_where(target))
    if len(text) > _TEXT_LIMIT:
        text = text[: _TEXT_LIMIT - 1] + "…"
    return text
