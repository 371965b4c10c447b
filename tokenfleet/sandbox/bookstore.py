"""A local fake of the bookstore API that accepts only tokens the fake FlareSolverr issued.

::

    registry = TokenRegistry()
    with FlareSolverrSandbox(registry) as solver, BookstoreSandbox(registry) as shop:
        ...  # shop.api_url is what ChitaiGorodConfig.api_url should point at

Served: ``GET /web/api/v2/search/product`` (the provider's default validation call; other
paths answer 404). With ``Authorization: Bearer <token>`` issued through the shared
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
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

from .flaresolverr import BaseJsonHandler, JsonHandlerServer, TokenRegistry

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


class BookstoreSandbox:
    """The fake bookstore API on ``host:port`` (0 = any), served from a daemon thread.

    :attr:`api_url` is the full validation URL; :attr:`calls` counts requests per
    outcome (``ok``, ``unauthorized``, ``no_clearance``, ``not_found``).
    """

    def __init__(
        self,
        registry: TokenRegistry,
        *,
        check_user_agent: bool = True,
        require_clearance: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.registry = registry
        self.check_user_agent = check_user_agent
        self.require_clearance = require_clearance
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = self.url if self._server is not None else "stopped"
        return f"<BookstoreSandbox {state}>"

    def start(self) -> BookstoreSandbox:
        """Bind and serve; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("the sandbox is already running")
        self._server = _Server((self.host, self.port), _Handler, self)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"bookstore-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; a no-op when stopped."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> BookstoreSandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        if self._server is None:
            raise RuntimeError("the sandbox is not running; call start() first")
        return f"http://{self.host}:{self.port}"

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
        if urlsplit(self.path).path != SEARCH_PATH:
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

    def _cookie(self, name: str) -> str | None:
        for part in self.headers.get("Cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None
