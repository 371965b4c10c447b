"""What a browser saw (cookies, User-Agent) and the contract of a browser backend.

Browser providers (``providers.chitai_gorod``) get their token by opening a page in a real
browser. Two backends do that: :class:`providers.flaresolverr.FlareSolverrBackend`, which
asks a FlareSolverr service, and :class:`providers.chromium.ChromiumBackend`, which drives
the local Chromium through Playwright. Both return a :class:`Solution`; the provider reads
the token from its cookies and never knows which backend ran.

A backend keeps a browser (or a FlareSolverr session) open between rotations, because a
browser that already passed the challenge usually keeps passing it; ``reset`` drops it
after a failure and ``close`` releases it when the worker stops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = ["BrowserBackend", "Cookie", "Health", "Solution", "target_where"]


def target_where(url: str) -> str:
    """``host[:port]/path`` of ``url``: what messages may say about a target page."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{host}{parts.path or '/'}"


@dataclass(frozen=True, repr=False)
class Cookie:
    """One browser cookie; its value never shows in ``repr``.

    ``expires`` is unix seconds, or None for a session cookie.
    """

    name: str
    value: str
    domain: str = ""
    path: str = "/"
    expires: float | None = None
    http_only: bool = False
    secure: bool = False

    def __repr__(self) -> str:
        return f"Cookie(name={self.name!r}, domain={self.domain!r}, expires={self.expires!r})"


@dataclass(frozen=True, repr=False)
class Solution:
    """What the browser saw after opening a page: final URL, cookies, the browser's UA.

    ``status`` is FlareSolverr's constant 200 (or the Chromium navigation's status); never
    judge success by it. ``response`` is the page HTML when asked for. ``repr`` shows
    cookie names only.
    """

    url: str
    status: int
    user_agent: str
    cookies: tuple[Cookie, ...] = ()
    response: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""

    def cookie(self, name: str) -> Cookie | None:
        """The last cookie called ``name`` (browsers may hold one per domain), or None."""
        found = None
        for cookie in self.cookies:
            if cookie.name == name:
                found = cookie
        return found

    def __repr__(self) -> str:
        names = [cookie.name for cookie in self.cookies]
        return f"Solution(url={target_where(self.url)!r}, cookies={names!r})"


@dataclass(frozen=True)
class Health:
    """The result of one health probe of something a provider depends on.

    ``component`` says what was probed (``flaresolverr``, ``chromium``), ``target`` where
    (a URL without credentials, or a path), ``detail`` what was seen, in words.
    """

    component: str
    target: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "target": self.target,
            "ok": self.ok,
            "detail": self.detail,
        }


class BrowserBackend(Protocol):
    """Opens pages in a real browser; raises classified errors from :mod:`tokenfleet.errors`.

    ``open`` must return within ``timeout`` seconds plus a small margin: ProviderTimeout
    when the page or the cookie did not come in time, ProviderUnavailable when the browser
    (or FlareSolverr) cannot be reached or started, GiveUp when the site blocks us
    (captcha, IP ban), InvalidConfig when the backend is configured wrongly.
    """

    #: ``flaresolverr`` or ``chromium``: shown in messages and health results.
    kind: str

    def open(
        self, url: str, *, wait_for_cookie: str, timeout: float, proxy: str | None
    ) -> Solution:
        """Open ``url`` and return once the cookie ``wait_for_cookie`` is set (or timeout).

        FlareSolverr cannot wait for a cookie; it returns when the challenge is solved and
        the provider reports a missing cookie as MalformedResponse.
        """
        ...

    def reset(self) -> None:
        """Forget the open browser or session after a failure; best effort, never raises."""
        ...

    def close(self) -> None:
        """Release the browser or session for good (worker shutdown); idempotent."""
        ...

    def health(self) -> Health:
        """Probe the backend quickly (a few seconds at most); never raises."""
        ...
