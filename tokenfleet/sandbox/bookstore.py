"""A local fake of the bookstore API that accepts only tokens the fake FlareSolverr issued.

::

    registry = TokenRegistry()
    with FlareSolverrSandbox(registry) as solver, BookstoreSandbox(registry) as shop:
        ...  # shop.api_url is what ChitaiGorodConfig.api_url should point at

Served: ``GET /`` is the site's front page for a real browser (the Playwright backend): it
sets a ``cf_clearance`` cookie in its response headers and, ``token_delay`` seconds after
load, a script sets ``access-token=Bearer%20<token>`` with a token issued to the browser's
User-Agent, as the real site's script does after Cloudflare lets the browser through.
``GET /web/api/v2/search/product`` is the provider's default validation call; other paths
answer 404. With ``Authorization: Bearer <token>`` issued through the shared
:class:`~tokenfleet.sandbox.flaresolverr.TokenRegistry`, not expired, and (with
``check_user_agent``) sent with the User-Agent it was issued to, it answers 200 with a small
JSON:API-style page ``{"data": [...], "included": [], "meta": {...}}``; otherwise 401
``{"errors": [{"status": "401", "title": "Unauthorized", "detail": ...}]}``. With
``require_clearance`` a request without a ``cf_clearance`` cookie the registry issued gets
Cloudflare's 403 HTML page, as the real API behind Cloudflare may.

Assumed, not documented: the bookstore's exact body shapes (the JSON:API style follows
public test code against ``web-agr.chitai-gorod.ru``), and that it answers 401 to a bad
token rather than 403.
"""

from __future__ import annotations

import json
import threading
from email.utils import formatdate
from http.server import ThreadingHTTPServer
from typing import Final
from urllib.parse import urlsplit

from .flaresolverr import BaseJsonHandler, JsonHandlerServer, TokenRegistry
from .server import SandboxServer

__all__ = ["SEARCH_PATH", "BookstoreSandbox"]

SEARCH_PATH: Final = "/web/api/v2/search/product"

_OK: Final = json.dumps(
    {
        "data": [
            {
                "id": "2945883",
                "type": "product",
                "attributes": {"title": "Изучаем Python", "url": "product/izuchaem-python"},
            }
        ],
        "included": [],
        "meta": {"pagination": {"page": 1, "perPage": 1, "total": 1}},
    },
    ensure_ascii=False,
).encode("utf-8")
_CF_403: Final = (
    b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    b"<body>Enable JavaScript and cookies to continue</body></html>"
)


def _unauthorized(detail: str) -> bytes:
    return json.dumps(
        {"errors": [{"status": "401", "title": "Unauthorized", "detail": detail}]}
    ).encode()


class BookstoreSandbox(SandboxServer):
    """The fake bookstore API on ``host:port`` (0 = any), served from a daemon thread.

    :attr:`api_url` is the full validation URL; :attr:`calls` counts requests per
    outcome (``ok``, ``unauthorized``, ``no_clearance``, ``not_found``, ``front_page``).
    """

    def __init__(
        self,
        registry: TokenRegistry,
        *,
        check_user_agent: bool = True,
        require_clearance: bool = True,
        token_delay: float = 0.3,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.registry = registry
        self.check_user_agent = check_user_agent
        self.require_clearance = require_clearance
        self.token_delay = token_delay
        super().__init__(host, port)
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}

    def _bind(self) -> _Server:
        return _Server((self.host, self.port), _Handler, self)

    def _drop_connections(self, server: ThreadingHTTPServer) -> None:
        assert isinstance(server, JsonHandlerServer)
        server.drop_connections()

    @property
    def site_url(self) -> str:
        """The front page a real browser opens (``<url>/``)."""
        return f"{self.url}/"

    @property
    def api_url(self) -> str:
        """The validation URL (``<url>/web/api/v2/search/product``)."""
        return f"{self.url}{SEARCH_PATH}"

    @property
    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self._calls[outcome] = self._calls.get(outcome, 0) + 1


class _Server(JsonHandlerServer):
    sandbox: BookstoreSandbox


class _Handler(BaseJsonHandler):
    server: _Server
    server_version = "cloudflare"

    def do_GET(self) -> None:
        sandbox = self.server.sandbox
        self.read_body()
        path = urlsplit(self.path).path
        if path == "/":
            sandbox._count("front_page")
            self._front_page()
            return
        if path != SEARCH_PATH:
            sandbox._count("not_found")
            self.send(404, b'{"errors": [{"status": "404", "title": "Not Found"}]}')
            return
        if sandbox.require_clearance and not sandbox.registry.clearance_ok(
            self._cookie("cf_clearance")
        ):
            sandbox._count("no_clearance")
            self.send(403, _CF_403, "text/html; charset=UTF-8")
            return
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            sandbox._count("unauthorized")
            self.send(401, _unauthorized("Authorization header is missing"))
            return
        agent = self.headers.get("User-Agent") if sandbox.check_user_agent else None
        state = sandbox.registry.state(token.strip(), agent)
        if state != "ok":
            sandbox._count("unauthorized")
            self.send(401, _unauthorized(f"token rejected: {state}"))
            return
        sandbox._count("ok")
        self.send(200, _OK, "application/json; charset=utf-8")

    def _front_page(self) -> None:
        sandbox = self.server.sandbox
        token, exp = sandbox.registry.issue(self.headers.get("User-Agent", ""))
        expires = formatdate(exp, usegmt=True)
        # json.dumps makes each value a safe JS string literal.
        cookie = json.dumps(f"access-token=Bearer%20{token}; path=/; expires={expires}")
        delay = json.dumps(int(sandbox.token_delay * 1000))
        page = (
            "<!DOCTYPE html><html><head><title>Читай-город</title></head><body>"
            "<p>Книжный магазин</p><script>"
            f"setTimeout(function () {{ document.cookie = {cookie}; }}, {delay});"
            "</script></body></html>"
        ).encode()
        clearance = f"cf_clearance={sandbox.registry.clearance()}; Path=/; HttpOnly"
        self.send(200, page, "text/html; charset=UTF-8", [("Set-Cookie", clearance)])

    def _cookie(self, name: str) -> str | None:
        for part in self.headers.get("Cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None
