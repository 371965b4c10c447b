"""ChromiumBackend against the real Chromium (Debian's /usr/bin/chromium) and a local site.

A small HTTP server on 127.0.0.1 plays the target site (a login page that sets its token
cookie late from JavaScript, a page that never does, Cloudflare-like block pages) and a
forward proxy that asks for credentials. Nothing here mocks the browser.

Skipped when Chromium or Playwright is missing, except under CI (``CI`` set), where that
is a failure: CI must install both. ``TOKENFLEET_TEST_CHROMIUM`` points at another binary.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import pickle
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from providers.browser import BrowserBackend, Solution
from providers.chromium import ChromiumBackend
from tokenfleet.clock import FrozenClock
from tokenfleet.errors import (
    GiveUp,
    InvalidConfig,
    ProviderTimeout,
    ProviderUnavailable,
    TokenfleetError,
)

CHROMIUM = os.environ.get("TOKENFLEET_TEST_CHROMIUM", "/usr/bin/chromium")

_missing = []
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    _missing.append(f"no Chromium at {CHROMIUM}")
if importlib.util.find_spec("playwright") is None:
    _missing.append("the 'playwright' package is not installed")
if _missing:
    _why = "; ".join(_missing) + " (apt-get install chromium; pip install 'tokenfleet[browser]')"
    if os.environ.get("CI"):
        pytest.fail(f"chromium backend tests cannot run under CI: {_why}", pytrace=False)
    pytest.skip(_why, allow_module_level=True)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JWT = ".".join(
    [
        _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()),
        _b64(json.dumps({"sub": "anonymous", "exp": 4102444800}).encode()),
        _b64(b"not-a-real-signature"),
    ]
)
TOKEN_COOKIE = "access-token"
CLEARANCE = "abc"
HIDDEN = "hidden-cookie-value"
PROXY_USER, PROXY_PASSWORD = "fleet", "pr0xy-p@ss"
OK_TIMEOUT = 15.0


# -- the site ------------------------------------------------------------------------------


@dataclass
class Site:
    """The local target site; ``seen`` holds (path, headers) of every request it got."""

    base: str
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def headers_for(self, path: str) -> list[dict[str, str]]:
        return [headers for seen_path, headers in list(self.seen) if seen_path == path]


def _page(title: str, script: str = "") -> bytes:
    return (
        f"<!doctype html><html><head><title>{title}</title></head>"
        f"<body><p>{title}</p><script>{script}</script></body></html>"
    ).encode()


def _site_handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            site.seen.append((parts.path, dict(self.headers.items())))
            if parts.path == "/start":
                self._send(302, b"", [("Location", "/login")])
            elif parts.path == "/login":
                # The token arrives late, from JavaScript, as on the real site; the
                # clearance cookie comes with the response, as Cloudflare sets it.
                token = query.get("token", f"Bearer%20{JWT}")
                delay = int(query.get("delay", "400"))
                script = (
                    "setTimeout(function () { document.cookie = "
                    f'"{TOKEN_COOKIE}={token}; path=/"; }}, {delay});'
                )
                cookie = f"cf_clearance={CLEARANCE}; Path=/; Max-Age=3600; HttpOnly"
                self._send(200, _page("Login", script), [("Set-Cookie", cookie)])
            elif parts.path == "/never":
                self._send(200, _page("Welcome"), [("Set-Cookie", f"__cf_bm={HIDDEN}; Path=/")])
            elif parts.path == "/blocked":
                title = query.get("title", "Attention Required! | Cloudflare")
                self._send(200, _page(title), [("Set-Cookie", f"__cf_bm={HIDDEN}; Path=/")])
            elif parts.path == "/ua":
                cookie = f"{TOKEN_COOKIE}=ua-token; Path=/"
                self._send(200, _page("UA"), [("Set-Cookie", cookie)])
            elif parts.path == "/busy":
                # A site that keeps working after setting its token.
                script = (
                    'setInterval(function () { fetch("/ping"); }, 50); setTimeout(function () '
                    f'{{ document.cookie = "{TOKEN_COOKIE}=busy; path=/"; }}, 300);'
                )
                self._send(200, _page("Busy", script))
            elif parts.path == "/webdriver":
                # What a bot check reads first: is this browser automated?
                script = f'document.cookie = "{TOKEN_COOKIE}=" + navigator.webdriver + "; path=/";'
                self._send(200, _page("Webdriver", script))
            elif parts.path == "/ping":
                self._send(204, b"")
            elif parts.path == "/slow":
                time.sleep(3)
                self._send(200, _page("Slow"))
            else:
                self._send(404, b"not found")

        def _send(
            self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers or []:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    site = Site(base="")
    server, site.base = _serve(_site_handler(site))
    yield site
    server.shutdown()
    server.server_close()


@dataclass
class Proxy:
    """A forward proxy that wants Basic credentials; ``seen`` holds proxied URLs."""

    url: str
    seen: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def proxy() -> Iterator[Proxy]:
    expected = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    found = Proxy(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.headers.get("Proxy-Authorization") != expected:
                self.send_response(407)
                self.send_header("Proxy-Authenticate", 'Basic realm="tokenfleet-test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            found.seen.append(self.path)
            # Only Chromium talks to this proxy, with absolute http:// URLs of the test site.
            headers = {"User-Agent": "proxy"}
            request = urllib.request.Request(self.path, headers=headers)  # noqa: S310
            try:
                with direct.open(request, timeout=5) as upstream:
                    status, answer, body = upstream.status, upstream.headers, upstream.read()
            except urllib.error.HTTPError as exc:
                status, answer, body = exc.code, exc.headers, exc.read()
            self.send_response(status)
            for name, value in answer.items():
                if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server, base = _serve(Handler)
    port = base.rsplit(":", 1)[1]
    found.url = f"http://{PROXY_USER}:{PROXY_PASSWORD.replace('@', '%40')}@127.0.0.1:{port}"
    yield found
    server.shutdown()
    server.server_close()


# -- backends ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[ChromiumBackend]:
    """One backend shared by tests that do not count launches; failures reset it anyway."""
    backend = ChromiumBackend(executable_path=CHROMIUM, provider="test")
    yield backend
    backend.close()


@pytest.fixture
def make_backend() -> Iterator[Callable[..., ChromiumBackend]]:
    made: list[ChromiumBackend] = []

    def make(**kwargs: Any) -> ChromiumBackend:
        kwargs.setdefault("executable_path", CHROMIUM)
        kwargs.setdefault("provider", "test")
        backend = ChromiumBackend(**kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _warm(backend: ChromiumBackend, site: Site) -> None:
    """Open a page so the browser is running: a short timeout then covers the page only."""
    backend.open(f"{site.base}/ua", wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=None)


def _roundtrip(exc: TokenfleetError) -> Any:
    """Pickle ``exc`` as Celery would between processes; the copy must match."""
    copy = pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes
    assert type(copy) is type(exc)
    assert str(copy) == str(exc) == exc.message
    assert copy.__dict__ == exc.__dict__
    return copy


def _cmdlines() -> dict[int, bytes]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
    return found


def _our_drivers() -> set[int]:
    """Playwright driver processes started by this test process."""
    drivers = set()
    for pid, cmdline in _cmdlines().items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"playwright" in cmdline:
            drivers.add(pid)
    return drivers


def _wait_until(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


# -- tests ---------------------------------------------------------------------------------


def test_backend_satisfies_the_browser_backend_protocol() -> None:
    backend: BrowserBackend = ChromiumBackend(executable_path=CHROMIUM)
    assert backend.kind == "chromium"


def test_open_waits_for_the_late_cookie_and_reports_it_with_clearance_url_and_ua(
    chromium: ChromiumBackend, site: Site
) -> None:
    started = time.monotonic()
    solution = chromium.open(
        f"{site.base}/start", wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=None
    )

    assert time.monotonic() - started >= 0.35  # it waited for the script's setTimeout
    token = solution.cookie(TOKEN_COOKIE)
    assert token is not None
    assert token.value == f"Bearer%20{JWT}"
    assert token.expires is None  # a session cookie
    assert token.domain == "127.0.0.1"
    clearance = solution.cookie("cf_clearance")
    assert clearance is not None
    assert clearance.value == CLEARANCE
    assert clearance.http_only
    assert clearance.expires is not None
    assert abs(clearance.expires - (time.time() + 3600)) < 120
    assert solution.url == f"{site.base}/login"  # after the redirect
    assert solution.status == 200
    assert solution.response is None

    assert "Chrome/" in solution.user_agent
    assert "Headless" not in solution.user_agent
    sent = site.headers_for("/login")[-1]
    assert sent["User-Agent"] == solution.user_agent
    assert not [value for value in sent.values() if "Headless" in value]


def test_the_tab_leaves_the_site_after_open_so_its_scripts_stop(
    chromium: ChromiumBackend, site: Site
) -> None:
    solution = chromium.open(
        f"{site.base}/busy", wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=None
    )
    assert solution.url == f"{site.base}/busy"
    pings = len(site.headers_for("/ping"))
    assert pings > 0
    time.sleep(0.5)
    assert len(site.headers_for("/ping")) == pings


def test_the_browser_does_not_announce_automation_to_page_scripts(
    chromium: ChromiumBackend, site: Site
) -> None:
    """navigator.webdriver is false, as in a browser a person drives (sites check it)."""
    solution = chromium.open(
        f"{site.base}/webdriver", wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=None
    )
    cookie = solution.cookie(TOKEN_COOKIE)
    assert cookie is not None and cookie.value == "false"


def test_an_explicit_user_agent_is_sent_and_reported(
    make_backend: Callable[..., ChromiumBackend], site: Site
) -> None:
    agent = "Mozilla/5.0 (X11; Linux x86_64) TokenfleetTest/1.0"
    backend = make_backend(user_agent=agent)

    solution = backend.open(
        f"{site.base}/ua", wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=None
    )

    assert solution.user_agent == agent
    assert site.headers_for("/ua")[-1]["User-Agent"] == agent


def test_second_open_reuses_the_browser_and_never_reports_the_stale_token(
    chromium: ChromiumBackend, site: Site
) -> None:
    first = chromium.open(
        f"{site.base}/login?token=first&delay=0",
        wait_for_cookie=TOKEN_COOKIE,
        timeout=OK_TIMEOUT,
        proxy=None,
    )
    launches = chromium.launches
    # The second page sets its token late: without clearing, "first" would be found at once.
    second = chromium.open(
        f"{site.base}/login?token=second&delay=600",
        wait_for_cookie=TOKEN_COOKIE,
        timeout=OK_TIMEOUT,
        proxy=None,
    )

    assert chromium.launches == launches
    old, new = first.cookie(TOKEN_COOKIE), second.cookie(TOKEN_COOKIE)
    assert old is not None and old.value == "first"
    assert new is not None and new.value == "second"
    assert [c.name for c in second.cookies].count(TOKEN_COOKIE) == 1


def test_an_expired_session_relaunches_the_browser(
    make_backend: Callable[..., ChromiumBackend], site: Site
) -> None:
    clock = FrozenClock()
    backend = make_backend(session_ttl=60, clock=clock)
    url = f"{site.base}/ua"

    backend.open(url, wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=None)
    clock.advance(59)
    backend.open(url, wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=None)
    assert backend.launches == 1
    clock.advance(1)
    backend.open(url, wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=None)
    assert backend.launches == 2


def test_a_page_that_never_sets_the_cookie_times_out_and_the_next_open_relaunches(
    chromium: ChromiumBackend, site: Site
) -> None:
    _warm(chromium, site)
    launches = chromium.launches

    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as caught:
        chromium.open(f"{site.base}/never", wait_for_cookie=TOKEN_COOKIE, timeout=1.5, proxy=None)
    elapsed = time.monotonic() - started

    assert 1.5 <= elapsed < 1.5 + 2
    message = str(caught.value)
    assert message == (
        f"test: chromium: 127.0.0.1:{urlsplit(site.base).port}/never set no "
        f"'{TOKEN_COOKIE}' cookie within 1.5s (HTTP 200)"
    )
    assert HIDDEN not in message
    _roundtrip(caught.value)

    chromium.open(f"{site.base}/ua", wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=None)
    assert chromium.launches == launches + 1


def test_a_page_that_does_not_load_in_time_times_out(chromium: ChromiumBackend, site: Site) -> None:
    _warm(chromium, site)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as caught:
        chromium.open(f"{site.base}/slow", wait_for_cookie=TOKEN_COOKIE, timeout=1, proxy=None)

    assert time.monotonic() - started < 1 + 2
    assert "/slow did not load within 1s" in str(caught.value)


@pytest.mark.parametrize(
    "title", ["Attention Required! | Cloudflare", "Access denied", "Just a moment..."]
)
def test_a_block_or_challenge_page_at_the_deadline_gives_up(
    chromium: ChromiumBackend, site: Site, title: str
) -> None:
    url = f"{site.base}/blocked?title={title}"
    _warm(chromium, site)
    started = time.monotonic()
    with pytest.raises(GiveUp) as caught:
        chromium.open(url, wait_for_cookie=TOKEN_COOKIE, timeout=1, proxy=None)

    assert time.monotonic() - started < 1 + 2
    message = str(caught.value)
    assert "127.0.0.1" in message and "/blocked blocked or challenged;" in message
    assert title in message
    assert HIDDEN not in message and "title=" not in message
    _roundtrip(caught.value)


def test_connection_refused_is_unavailable_naming_host_and_path_only(
    chromium: ChromiumBackend,
) -> None:
    port = _closed_port()
    with pytest.raises(ProviderUnavailable) as caught:
        chromium.open(
            f"http://127.0.0.1:{port}/token?secret=xyz",
            wait_for_cookie=TOKEN_COOKIE,
            timeout=OK_TIMEOUT,
            proxy=None,
        )

    message = str(caught.value)
    assert f"127.0.0.1:{port}/token" in message
    assert "ERR_CONNECTION_REFUSED" in message
    assert "xyz" not in message and "secret" not in message
    assert "xyz" not in repr(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    copy = _roundtrip(caught.value)
    assert "xyz" not in repr(copy) and copy.retryable


def test_proxy_credentials_reach_the_proxy_and_a_changed_proxy_relaunches(
    make_backend: Callable[..., ChromiumBackend], site: Site, proxy: Proxy
) -> None:
    backend = make_backend()
    url = f"{site.base}/ua"

    first = backend.open(url, wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=proxy.url)
    backend.open(url, wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=proxy.url)
    assert backend.launches == 1
    assert proxy.seen.count(url) == 2
    backend.open(url, wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=None)
    assert backend.launches == 2
    assert proxy.seen.count(url) == 2  # the direct visit did not go through it

    assert first.cookie(TOKEN_COOKIE) is not None
    assert PROXY_PASSWORD not in repr(backend) and "pr0xy" not in repr(backend)


def test_an_unreachable_proxy_is_unavailable_without_its_credentials(
    chromium: ChromiumBackend, site: Site
) -> None:
    port = _closed_port()
    with pytest.raises(ProviderUnavailable) as caught:
        chromium.open(
            f"{site.base}/ua?secret=xyz",
            wait_for_cookie=TOKEN_COOKIE,
            timeout=OK_TIMEOUT,
            proxy=f"http://{PROXY_USER}:hunter2@127.0.0.1:{port}",
        )

    message = str(caught.value)
    assert f"proxy 127.0.0.1:{port} failed" in message
    assert "hunter2" not in message and PROXY_USER not in message and "xyz" not in message


def test_a_missing_executable_is_invalid_config_naming_chromium_path(
    make_backend: Callable[..., ChromiumBackend], site: Site
) -> None:
    backend = make_backend(executable_path="/nonexistent/chromium")

    with pytest.raises(InvalidConfig) as caught:
        backend.open(f"{site.base}/ua", wait_for_cookie=TOKEN_COOKIE, timeout=5, proxy=None)

    assert _roundtrip(caught.value).field == "chromium_path"
    assert "/nonexistent/chromium" in str(caught.value)
    assert backend.launches == 0


def test_a_browser_that_will_not_start_is_unavailable_naming_the_executable(
    make_backend: Callable[..., ChromiumBackend], site: Site
) -> None:
    backend = make_backend(executable_path="/bin/false")

    with pytest.raises(ProviderUnavailable) as caught:
        backend.open(
            f"{site.base}/ua",
            wait_for_cookie=TOKEN_COOKIE,
            timeout=5,
            proxy=f"http://{PROXY_USER}:hunter2@127.0.0.1:3128",
        )

    message = str(caught.value)
    assert "/bin/false could not be started" in message
    assert "hunter2" not in message and "--proxy-server" not in message
    assert "--no-sandbox" not in message  # Playwright's text quotes the command line


def test_health_reports_the_version_or_a_missing_binary() -> None:
    good = ChromiumBackend(executable_path=CHROMIUM).health()
    assert (good.component, good.target, good.ok) == ("chromium", CHROMIUM, True)
    assert "Chromium" in good.detail and any(ch.isdigit() for ch in good.detail)
    assert "\n" not in good.detail

    missing = ChromiumBackend(executable_path="/nonexistent/chromium").health()
    assert (missing.ok, missing.target) == (False, "/nonexistent/chromium")
    assert "not found" in missing.detail

    directory = ChromiumBackend(executable_path="/tmp").health()
    assert not directory.ok
    failing = ChromiumBackend(executable_path="/bin/false").health()
    assert not failing.ok and "exit code 1" in failing.detail


def test_close_is_idempotent_leaves_no_process_and_open_after_close_relaunches(
    chromium: ChromiumBackend, make_backend: Callable[..., ChromiumBackend], site: Site
) -> None:
    chromium.close()  # the shared browser would keep the shared Playwright driver alive
    drivers_before = _our_drivers()
    marker = f"--tokenfleet-test-marker={uuid.uuid4()}"
    backend = make_backend(extra_args=(marker,))
    url = f"{site.base}/ua"

    def browsers() -> list[int]:
        return [pid for pid, line in _cmdlines().items() if marker.encode() in line]

    backend.open(url, wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=None)
    running = browsers()
    assert running, "the marker should be on the browser's command line"
    args = _cmdlines()[running[0]].split(b"\0")
    profile = next(a for a in args if a.startswith(b"--user-data-dir=")).split(b"=", 1)[1]
    assert os.path.isdir(profile)
    assert _our_drivers() - drivers_before

    backend.close()
    backend.close()
    assert _wait_until(lambda: not browsers())
    assert _wait_until(lambda: not os.path.exists(profile))
    assert _wait_until(lambda: not _our_drivers() - drivers_before)

    backend.reset()
    backend.open(url, wait_for_cookie=TOKEN_COOKIE, timeout=OK_TIMEOUT, proxy=None)
    assert backend.launches == 2
    assert browsers()
    backend.close()
    assert _wait_until(lambda: not browsers())


def test_errors_pickle_and_reprs_show_no_cookie_values(
    chromium: ChromiumBackend, site: Site
) -> None:
    solution = chromium.open(
        f"{site.base}/login?delay=0&secret=xyz",
        wait_for_cookie=TOKEN_COOKIE,
        timeout=OK_TIMEOUT,
        proxy=None,
    )
    assert isinstance(solution, Solution)
    shown = repr(solution) + repr(solution.cookies) + str(solution.cookies)
    assert JWT not in shown and CLEARANCE not in shown and "xyz" not in shown
    assert TOKEN_COOKIE in shown and "cf_clearance" in shown
    assert repr(chromium) == f"<ChromiumBackend {CHROMIUM}>"


# -- through the provider ------------------------------------------------------------------


def test_chitai_gorod_on_playwright_takes_the_late_token_and_the_bookstore_accepts_it() -> None:
    """backend="playwright": acquire via real Chromium from the sandbox bookstore's front page
    (token cookie set by script after a delay, clearance by header), then validate against
    its API with the token, the browser's User-Agent and the clearance cookie."""
    from providers.chitai_gorod import ChitaiGorodConfig, ChitaiGorodProvider
    from tokenfleet.sandbox.bookstore import BookstoreSandbox
    from tokenfleet.sandbox.flaresolverr import TokenRegistry

    registry = TokenRegistry(ttl=3600)
    with BookstoreSandbox(registry, token_delay=0.5) as shop:
        config = ChitaiGorodConfig.model_validate(
            {
                "backend": "playwright",
                "chromium_path": CHROMIUM,
                "site_url": shop.site_url,
                "api_url": shop.api_url,
                "max_timeout": OK_TIMEOUT,
                "timeout": 5,
            }
        )
        provider = ChitaiGorodProvider(config)
        try:
            secret = provider.acquire()
            provider.validate(secret)
        finally:
            provider.close()

        (issued,) = registry.issued
        assert secret.value == issued  # URL-decoded, "Bearer " prefix stripped
        agent = secret.bound["user_agent"]
        assert "Chrome" in agent
        assert registry.state(issued, agent) == "ok"
        assert registry.clearance_ok(secret.cookies["cf_clearance"])
        calls = shop.calls  # Chromium also asks for /favicon.ico (not_found)
        assert calls["front_page"] == 1 and calls["ok"] == 1 and "unauthorized" not in calls
        assert secret.expires_at is not None  # the cookie's expiry (or the JWT exp)
