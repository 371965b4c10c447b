"""A browser backend that drives the local Chromium through Playwright's sync API.

:class:`ChromiumBackend` implements :class:`providers.browser.BrowserBackend`: ``open``
loads a page in a headless Chromium and returns once the page has set a named cookie,
with every cookie of the browser and the User-Agent it sent. What a caller must know:

* Playwright is optional (``pip install 'tokenfleet[browser]'``) and imported only when a
  browser is needed; without it ``open`` raises InvalidConfig (``field="backend"``) and
  ``health`` reports not ok. Importing this module never needs it.
* Threads: Playwright's sync API belongs to the thread that started it, and only one sync
  Playwright may run per thread. So every backend of one thread shares one Playwright
  driver (each keeps its own browser), and a backend must be used from the thread that
  opened its browser; another thread gets InvalidConfig. A Celery prefork child runs its
  tasks on its main thread, which is what this is built for (the ``threads`` pool is
  not). While a browser is open, Playwright marks that thread's asyncio loop as running,
  so ``asyncio.run`` cannot be used on the same thread until ``close``.
* Processes: nothing starts in ``__init__``; a browser inherited through ``fork`` is left
  to the parent and the child starts its own.
* The browser (the "session": browser, context and one tab) is kept open between ``open``
  calls, because a browser that passed a challenge tends to keep passing it. It is
  relaunched after ``session_ttl`` seconds (by the injected clock's ``monotonic``), after
  ``reset``, after any failure in ``open``, and when the proxy changes (Chromium takes
  its proxy at launch). The tab is reused and sent to ``about:blank`` after each ``open``
  instead of being closed: ``page.close()`` can wait forever (see ``_drop``).
* ``timeout`` covers the whole ``open``, launching included, and is measured with the
  real monotonic clock (Playwright's own timeouts are real time), never the injected one.
* The User-Agent is ``user_agent``, or Chromium's own with ``HeadlessChrome`` replaced by
  ``Chrome``: sites behind Cloudflare refuse the headless marker.
* Errors (see :mod:`tokenfleet.errors`): no page or no cookie in time → ProviderTimeout;
  a page still showing a block or challenge title (Cloudflare's ``Access denied``,
  ``Attention Required!``, ``Just a moment...``, DDoS-Guard) at the deadline → GiveUp;
  network errors (``net::ERR_*``) and a browser that will not start → ProviderUnavailable;
  a missing executable → InvalidConfig (``field="chromium_path"``). Messages name the
  target's host and path only, never its query, cookie values or proxy credentials;
  Playwright's own error text is never passed on, because it quotes the full URL.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from tokenfleet.clock import Clock, SystemClock
from tokenfleet.errors import (
    GiveUp,
    InvalidArguments,
    InvalidConfig,
    ProviderTimeout,
    ProviderUnavailable,
)

from .browser import Cookie, Health, Solution, target_where

if TYPE_CHECKING:
    from types import ModuleType

    from playwright.sync_api import Browser, BrowserContext, Page, Playwright, ProxySettings

__all__ = ["BASE_ARGS", "ChromiumBackend"]

#: Flags for a server without a screen, a GPU or a big /dev/shm (Docker's is 64 MB).
BASE_ARGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    # navigator.webdriver stays false: bot checks (Cloudflare's among them) read it first.
    "--disable-blink-features=AutomationControlled",
)

_INSTALL_HINT = "pip install 'tokenfleet[browser]'"
_POLL_SECONDS = 0.1
_VERSION_TIMEOUT = 10.0
#: Seconds a tab may take to leave a site for about:blank after an ``open``.
_PARK_TIMEOUT = 5.0
#: Milliseconds to read the UA or the title from a page that may be between documents.
_PEEK_MS = 1000
# Lower-cased title prefixes of pages that block us or hold us in a challenge; the value
# is what a message may show (the page's own title is not echoed).
_BLOCKED_TITLES = {
    "access denied": "Access denied",
    "attention required!": "Attention Required! | Cloudflare",
    "just a moment": "Just a moment...",
    "ddos-guard": "DDoS-Guard",
}
_NET_ERROR = re.compile(r"net::(ERR_[A-Z0-9_]+)")
_NET_TIMEOUTS = frozenset({"ERR_TIMED_OUT", "ERR_CONNECTION_TIMED_OUT"})
_PROXY_ERRORS = frozenset(
    {
        "ERR_PROXY_CONNECTION_FAILED",
        "ERR_TUNNEL_CONNECTION_FAILED",
        "ERR_PROXY_AUTH_UNSUPPORTED",
        "ERR_PROXY_AUTH_REQUESTED",
        "ERR_NO_SUPPORTED_PROXIES",
        "ERR_PROXY_CERTIFICATE_INVALID",
        "ERR_MANDATORY_PROXY_CONFIGURATION_FAILED",
    }
)


# -- the Playwright driver, one per thread ------------------------------------------------


@dataclass
class _Driver:
    playwright: Playwright
    thread: threading.Thread
    users: int = 0


# Only one sync Playwright can run per thread (a second start fails with "using Playwright
# Sync API inside the asyncio loop"), so backends on one thread share it, counted by
# open browsers. The lock guards the dict; each driver is touched by its own thread only.
_drivers: dict[tuple[int, int], _Driver] = {}
_drivers_lock = threading.Lock()


def _acquire_driver(api: ModuleType) -> Playwright:
    key = (os.getpid(), threading.get_ident())
    with _drivers_lock:
        for stale in [k for k in _drivers if k[0] != key[0]]:
            # Inherited through fork: the parent's driver, not ours to stop.
            del _drivers[stale]
        driver = _drivers.get(key)
        if driver is not None and driver.thread is not threading.current_thread():
            # A dead thread's ident was reused; its driver went with it.
            del _drivers[key]
            driver = None
    if driver is None:
        playwright: Playwright = api.sync_playwright().start()
        driver = _Driver(playwright, threading.current_thread())
        with _drivers_lock:
            _drivers[key] = driver
    driver.users += 1
    return driver.playwright


def _release_driver(playwright: Playwright) -> None:
    key = (os.getpid(), threading.get_ident())
    with _drivers_lock:
        driver = _drivers.get(key)
        if driver is None or driver.playwright is not playwright:
            return
        driver.users -= 1
        if driver.users > 0:
            return
        del _drivers[key]
    try:
        playwright.stop()
    except Exception:  # noqa: S110 - best effort: a dead driver is already stopped
        pass


# -- the backend ---------------------------------------------------------------------------


@dataclass
class _Session:
    """One launched browser, its context and tab; usable from ``thread`` of ``pid`` only."""

    playwright: Playwright
    browser: Browser
    context: BrowserContext
    page: Page
    user_agent: str
    proxy: str | None
    started: float
    pid: int
    thread: int


class ChromiumBackend:
    """Opens pages in the local Chromium (``executable_path``) through Playwright.

    ``user_agent`` replaces the browser's own User-Agent; ``session_ttl`` (seconds, None:
    forever) retires a browser by age; ``provider`` prefixes error messages;
    ``extra_args`` are appended to Chromium's command line. ``launches`` counts browsers
    started so far.
    """

    kind = "chromium"

    def __init__(
        self,
        *,
        executable_path: str = "/usr/bin/chromium",
        user_agent: str | None = None,
        session_ttl: float | None = 6 * 3600,
        clock: Clock | None = None,
        provider: str = "chromium",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.executable_path = executable_path
        self.user_agent = user_agent
        self.session_ttl = session_ttl
        self.clock: Clock = clock or SystemClock()
        self.provider = provider
        self.extra_args = tuple(extra_args)
        self._session: _Session | None = None
        self._default_user_agent: str | None = None
        self._launches = 0

    def __repr__(self) -> str:
        return f"<ChromiumBackend {self.executable_path}>"

    @property
    def launches(self) -> int:
        """How many browsers this backend has launched."""
        return self._launches

    # -- contract --------------------------------------------------------------------------

    def open(
        self, url: str, *, wait_for_cookie: str, timeout: float, proxy: str | None
    ) -> Solution:
        """Open ``url`` and return once the cookie ``wait_for_cookie`` is set.

        Any cookie of that name is deleted first, so the one returned was set by this
        visit. Raises ProviderTimeout, GiveUp, ProviderUnavailable or InvalidConfig as the
        module docstring says; after any failure the browser is closed.
        """
        deadline = time.monotonic() + timeout
        if not timeout > 0:
            raise InvalidArguments(f"{self.provider}: chromium: timeout must be positive")
        if not wait_for_cookie:
            raise InvalidArguments(f"{self.provider}: chromium: wait_for_cookie is empty")
        try:
            parts = urlsplit(url)
            usable = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            usable = False
        if not usable:
            # Not echoing the URL: its query may hold secrets.
            raise InvalidArguments(
                f"{self.provider}: chromium: the page to open is not an http(s) URL with a host"
            )
        proxy = proxy or None
        api = self._api()
        self._check_thread()
        try:
            if not _is_executable(self.executable_path):
                raise InvalidConfig(
                    f"{self.provider}: chromium: chromium_path {self.executable_path} is not "
                    "an executable file; install Chromium or set chromium_path",
                    field="chromium_path",
                )
            session = self._session_for(api, proxy, deadline)
            return self._visit(api, session, url, wait_for_cookie, timeout, deadline)
        except BaseException:
            # A browser that failed (or sits on a challenge) is not worth keeping.
            self._drop()
            raise

    def reset(self) -> None:
        """Close the browser so the next ``open`` launches a fresh one; never raises."""
        self._drop()

    def close(self) -> None:
        """Close the browser and, with the last browser of this thread, Playwright.

        Idempotent and never raises; ``open`` afterwards launches a new browser.
        """
        self._drop()

    def health(self) -> Health:
        """Run ``chromium --version`` (10 s at most) and check Playwright; never raises."""
        path = self.executable_path
        try:
            if not _is_executable(path):
                return Health(self.kind, path, False, "not found (or not executable)")
            done = subprocess.run(
                [path, "--version"],
                capture_output=True,
                text=True,
                timeout=_VERSION_TIMEOUT,
                check=False,
            )
            # Debian's /usr/bin/chromium is a shell wrapper that may print noise on stderr.
            lines = done.stdout.strip().splitlines()
            version = lines[0].strip() if lines else ""
            if done.returncode != 0 or not version:
                return Health(
                    self.kind, path, False, f"--version failed (exit code {done.returncode})"
                )
            if importlib.util.find_spec("playwright") is None:
                return Health(
                    self.kind,
                    path,
                    False,
                    f"{version}; the 'playwright' package is missing: {_INSTALL_HINT}",
                )
            return Health(self.kind, path, True, version)
        except subprocess.TimeoutExpired:
            return Health(
                self.kind, path, False, f"--version gave no answer within {_VERSION_TIMEOUT:g}s"
            )
        except Exception as exc:
            return Health(self.kind, path, False, f"could not run it ({type(exc).__name__})")

    # -- session ---------------------------------------------------------------------------

    def _api(self) -> ModuleType:
        try:
            import playwright.sync_api as api
        except ImportError:
            raise InvalidConfig(
                f"{self.provider}: chromium: the chromium backend needs the 'playwright' "
                f"package: {_INSTALL_HINT}",
                field="backend",
            ) from None
        return api

    def _check_thread(self) -> None:
        session = self._session
        if session is None or session.pid != os.getpid():
            return
        if session.thread != threading.get_ident():
            raise InvalidConfig(
                f"{self.provider}: chromium: the browser was opened on another thread and "
                "Playwright's sync API works on one thread only; run the worker with the "
                "prefork or solo pool",
                field="backend",
            )

    def _session_for(self, api: ModuleType, proxy: str | None, deadline: float) -> _Session:
        session = self._session
        if session is not None and session.pid != os.getpid():
            # Inherited through fork: the browser belongs to the parent; leave it be.
            self._session = session = None
        if session is not None:
            expired = (
                self.session_ttl is not None
                and self.clock.monotonic() - session.started >= self.session_ttl
            )
            broken = not session.browser.is_connected() or session.page.is_closed()
            if expired or broken or session.proxy != proxy:
                self._drop()
                session = None
        if session is None:
            session = self._session = self._launch(api, proxy, deadline)
        return session

    def _launch(self, api: ModuleType, proxy: str | None, deadline: float) -> _Session:
        proxy_settings = self._proxy_settings(proxy) if proxy else None
        path = self.executable_path
        try:
            playwright = _acquire_driver(api)
        except Exception as exc:
            raise ProviderUnavailable(
                f"{self.provider}: chromium: Playwright's driver did not start "
                f"({type(exc).__name__})"
            ) from None
        browser: Browser | None = None
        try:
            launch_ms = _remaining_ms(deadline)
            self._launches += 1
            browser = playwright.chromium.launch(
                executable_path=path,
                headless=True,
                args=[*BASE_ARGS, *self.extra_args],
                proxy=proxy_settings,
                timeout=launch_ms,
            )
            user_agent = self.user_agent or self._browser_user_agent(browser)
            context = browser.new_context(user_agent=user_agent)
            page = context.new_page()
        except BaseException as exc:
            _quietly(browser.close if browser is not None else None)
            _release_driver(playwright)
            if isinstance(exc, api.TimeoutError):
                raise ProviderUnavailable(
                    f"{self.provider}: chromium: {path} did not start within {launch_ms / 1000:g}s"
                ) from None
            if isinstance(exc, api.Error):
                # Playwright's text holds the whole command line: say only what failed.
                raise ProviderUnavailable(
                    f"{self.provider}: chromium: {path} could not be started "
                    f"({type(exc).__name__}); run it with --version to see why"
                ) from None
            raise
        return _Session(
            playwright=playwright,
            browser=browser,
            context=context,
            page=page,
            user_agent=user_agent,
            proxy=proxy,
            started=self.clock.monotonic(),
            pid=os.getpid(),
            thread=threading.get_ident(),
        )

    def _browser_user_agent(self, browser: Browser) -> str:
        if self._default_user_agent is None:
            page = browser.new_page()
            try:
                native = str(page.evaluate("navigator.userAgent"))
            finally:
                _quietly(page.context.close)
            self._default_user_agent = native.replace("HeadlessChrome", "Chrome")
        return self._default_user_agent

    def _proxy_settings(self, proxy: str) -> ProxySettings:
        text = proxy if "://" in proxy else f"http://{proxy}"
        try:
            parts = urlsplit(text)
            host = parts.hostname
            port = parts.port
        except ValueError:
            host = port = None
        if not host:
            # Not echoing the value: a proxy URL may carry a password.
            raise InvalidConfig(
                f"{self.provider}: chromium: the proxy is not a URL like "
                "http://user:pass@host:3128",
                field="proxy",
            )
        server = f"{parts.scheme}://{host}" + (f":{port}" if port else "")
        settings: ProxySettings = {"server": server}
        if parts.username is not None:
            settings["username"] = unquote(parts.username)
        if parts.password is not None:
            settings["password"] = unquote(parts.password)
        return settings

    def _drop(self) -> None:
        session = self._session
        if session is None:
            return
        if session.pid == os.getpid() and session.thread != threading.get_ident():
            # Playwright objects cannot be touched from this thread; the owner may still
            # close them, so keep the reference.
            return
        self._session = None
        if session.pid != os.getpid():
            return
        # Never page.close(): it waits until the tab is gone, and Chromium sometimes
        # acknowledges closing a tab whose navigation is committing but keeps it, so the
        # call never returns. Closing the context or the browser does not wait for tabs.
        _quietly(session.context.close)
        _quietly(session.browser.close)
        _release_driver(session.playwright)

    # -- one visit -------------------------------------------------------------------------

    def _visit(
        self,
        api: ModuleType,
        session: _Session,
        url: str,
        cookie_name: str,
        timeout: float,
        deadline: float,
    ) -> Solution:
        where = target_where(url)
        prefix = f"{self.provider}: chromium:"
        context, page = session.context, session.page
        try:
            context.clear_cookies(name=cookie_name)
            status = 0
            if _remaining_ms(deadline) <= 1:
                raise ProviderTimeout(f"{prefix} {where} did not load within {timeout:g}s")
            try:
                response = page.goto(
                    url, wait_until="domcontentloaded", timeout=_remaining_ms(deadline)
                )
                status = response.status if response is not None else 0
            except api.TimeoutError:
                raise ProviderTimeout(
                    f"{prefix} {where} did not load within {timeout:g}s"
                ) from None
            except api.Error as exc:
                # The page replacing itself (a challenge reloading) is not a failure.
                if "interrupted by another navigation" not in str(exc.message):
                    raise self._navigation_error(exc, where, session.proxy) from None
            cookies = context.cookies()
            while not any(item.get("name") == cookie_name for item in cookies):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._deadline_error(page, where, cookie_name, timeout, status)
                page.wait_for_timeout(min(_POLL_SECONDS, left) * 1000)
                cookies = context.cookies()
            final_url = page.url
            try:
                # Bounded, unlike page.evaluate, which waits for a navigation to commit.
                found = page.wait_for_function("() => navigator.userAgent", timeout=_PEEK_MS)
                user_agent = str(found.json_value())
            except api.Error:
                # The page is between documents; the context's UA is what it sent.
                user_agent = session.user_agent
            solution = Solution(
                url=final_url,
                status=status,
                user_agent=user_agent,
                cookies=tuple(_cookie(item) for item in cookies),
                response=None,
            )
        except api.Error as exc:
            raise ProviderUnavailable(
                f"{prefix} the browser failed while opening {where} ({type(exc).__name__})"
            ) from None
        self._park(api, page)
        return solution

    def _park(self, api: ModuleType, page: Page) -> None:
        """Leave the site for ``about:blank`` so its scripts stop until the next ``open``.

        The tab is reused rather than closed (see ``_drop``); a tab that will not leave
        costs the session, not this ``open``, whose cookies are already read.
        """
        try:
            page.goto("about:blank", timeout=_PARK_TIMEOUT * 1000)
        except api.Error:
            self._drop()

    def _navigation_error(
        self, exc: Any, where: str, proxy: str | None
    ) -> ProviderTimeout | ProviderUnavailable:
        prefix = f"{self.provider}: chromium:"
        found = _NET_ERROR.search(str(getattr(exc, "message", "")))
        code = found.group(1) if found else None
        via = f" through proxy {_proxy_where(proxy)}" if proxy else ""
        if code in _PROXY_ERRORS and proxy:
            return ProviderUnavailable(
                f"{prefix} proxy {_proxy_where(proxy)} failed ({code}) opening {where}"
            )
        if code in _NET_TIMEOUTS:
            return ProviderTimeout(f"{prefix} {where} did not answer ({code}){via}")
        if code is not None:
            return ProviderUnavailable(f"{prefix} {where} is unreachable ({code}){via}")
        return ProviderUnavailable(
            f"{prefix} navigation to {where} failed ({type(exc).__name__}){via}"
        )

    def _deadline_error(
        self, page: Page, where: str, cookie_name: str, timeout: float, status: int
    ) -> GiveUp | ProviderTimeout:
        prefix = f"{self.provider}: chromium:"
        try:
            # Bounded, unlike page.title(), which waits for a navigation to commit.
            raw = page.locator("title").first.text_content(timeout=_PEEK_MS)
            title = (raw or "").strip().lower()
        except Exception:
            title = ""
        for start, shown in _BLOCKED_TITLES.items():
            if title.startswith(start):
                return GiveUp(
                    f"{prefix} {where} blocked or challenged; the page still showed "
                    f"{shown!r} after {timeout:g}s and set no {cookie_name!r} cookie"
                )
        seen = f" (HTTP {status})" if status else ""
        return ProviderTimeout(
            f"{prefix} {where} set no {cookie_name!r} cookie within {timeout:g}s{seen}"
        )


# -- helpers -------------------------------------------------------------------------------


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _proxy_where(proxy: str) -> str:
    """``host:port`` of a proxy URL, without its credentials."""
    try:
        return target_where(proxy if "://" in proxy else f"http://{proxy}").rstrip("/")
    except ValueError:
        return "(unparsable)"


def _remaining_ms(deadline: float) -> float:
    return max(1.0, (deadline - time.monotonic()) * 1000)


def _quietly(step: Any) -> None:
    if step is None:
        return
    try:
        step()
    except Exception:  # noqa: S110 - cleanup is best effort; the browser may be gone
        pass


def _cookie(item: Any) -> Cookie:
    # Playwright reports a session cookie's expiry as -1.
    expires = item.get("expires")
    return Cookie(
        name=str(item.get("name", "")),
        value=str(item.get("value", "")),
        domain=str(item.get("domain") or ""),
        path=str(item.get("path") or "/"),
        expires=float(expires) if isinstance(expires, int | float) and expires > 0 else None,
        http_only=bool(item.get("httpOnly", False)),
        secure=bool(item.get("secure", False)),
    )
