"""A local fake FlareSolverr (v1 API) that "opens" pages and hands out bookstore tokens.

::

    registry = TokenRegistry()
    with FlareSolverrSandbox(registry) as solver, BookstoreSandbox(registry) as shop:
        config = ChitaiGorodConfig(flaresolverr_url=solver.url, api_url=shop.api_url)
        solver.fail_next("timeout")       # the next request.get answers a solve timeout
        ...

Served like FlareSolverr v3 (see :mod:`providers.flaresolverr` for the sources):

* ``POST /v1`` with ``cmd`` ``request.get`` / ``request.post`` / ``sessions.create`` /
  ``sessions.list`` / ``sessions.destroy``; answers ``{"status", "message", "solution" |
  "session" | "sessions", "startTimestamp", "endTimestamp", "version"}``, errors as HTTP 500
  with ``{"status": "error", "message": "Error: ..."}``. ``solution.status`` is always 200.
* ``GET /health`` → ``{"status": "ok"}``; ``GET /`` → ``{"msg": "FlareSolverr is ready!"}``.
* ``request.get`` with an unknown session id creates it, as v3 does.

By default a page "opened" gets the cookies of :func:`default_site_cookies`: a
``cf_clearance`` clearance cookie and the token cookie ``access-token`` =
``Bearer%20<JWT>`` whose ``exp`` claim and cookie ``expires`` agree, both issued through
the shared :class:`TokenRegistry` so :class:`~tokenfleet.sandbox.bookstore.BookstoreSandbox`
accepts exactly these tokens. Pass ``site_cookies`` to control what a page sets.

Assumed, not documented: the JWT's claims (``iss``, ``sub``, ``iat``, ``exp``, ``type``) imitate
tokens seen in public test code for the bookstore; the captcha message is FlareSolverr v2's.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit

from .server import SandboxServer

__all__ = [
    "DEFAULT_USER_AGENT",
    "FaultKind",
    "FlareSolverrSandbox",
    "SiteCookies",
    "TokenRegistry",
    "default_site_cookies",
    "make_jwt",
]

FaultKind = Literal["timeout", "blocked", "captcha", "unknown_session", "slow", "bad_gateway"]
FAULT_KINDS: Final[frozenset[str]] = frozenset(get_args(FaultKind))

DEFAULT_USER_AGENT: Final = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
VERSION: Final = "3.3.21"
TIMEOUT_MESSAGE: Final = "Error: Error solving the challenge. Timeout after 60.0 seconds."
BLOCKED_MESSAGE: Final = (
    "Error: Error solving the challenge. Cloudflare has blocked this request. "
    "Probably your IP is banned for this site, check in your web browser."
)
CAPTCHA_MESSAGE: Final = (
    "Error: Error solving the challenge. Captcha detected but no automatic solver is configured."
)
SESSION_MESSAGE: Final = "Error: This session does not exist."
_MAX_BODY = 1 << 20
_JSON: Final = "application/json"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(claims: dict[str, Any]) -> str:
    """An HS256-shaped JWT with ``claims`` (the signature is random: nobody verifies it)."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{header}.{payload}.{_b64url(secrets.token_bytes(32))}"


class TokenRegistry:
    """Tokens and clearance cookies issued by the fake FlareSolverr; the bookstore checks here.

    ``ttl`` seconds is each token's lifetime; ``now`` is the wall clock in unix seconds
    (inject one to control ``exp``). ``token_factory(exp)`` makes a token value; the default
    is a JWT with that ``exp``. Thread-safe.
    """

    def __init__(
        self,
        ttl: float = 3600.0,
        *,
        now: Callable[[], float] = time.time,
        token_factory: Callable[[int], str] | None = None,
    ) -> None:
        self.ttl = ttl
        self.now = now
        self.token_factory = token_factory
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[int, str]] = {}  # token -> (exp, user agent)
        self._clearances: set[str] = set()

    def issue(self, user_agent: str) -> tuple[str, int]:
        """A new token bound to ``user_agent``; returns ``(token, exp)``."""
        exp = int(self.now() + self.ttl)
        if self.token_factory is not None:
            token = self.token_factory(exp)
        else:
            token = make_jwt(
                {
                    "iss": "https://user-right",
                    "sub": secrets.randbelow(10**8),
                    "iat": exp - int(self.ttl),
                    "exp": exp,
                    "type": 10,
                }
            )
        with self._lock:
            self._tokens[token] = (exp, user_agent)
        return token, exp

    def clearance(self) -> str:
        """A new ``cf_clearance`` value the bookstore will accept."""
        value = f"{secrets.token_urlsafe(32)}-{int(self.now())}-1.2.1.1"
        with self._lock:
            self._clearances.add(value)
        return value

    def state(
        self, token: str, user_agent: str | None
    ) -> Literal["ok", "expired", "unknown", "wrong_user_agent"]:
        """How the bookstore judges ``token`` presented with ``user_agent``."""
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None:
            return "unknown"
        exp, bound = entry
        if self.now() >= exp:
            return "expired"
        if user_agent is not None and user_agent != bound:
            return "wrong_user_agent"
        return "ok"

    def clearance_ok(self, value: str | None) -> bool:
        with self._lock:
            return value is not None and value in self._clearances

    def revoke_all(self) -> None:
        """Forget every token and clearance: the bookstore answers 401/403 to all of them."""
        with self._lock:
            self._tokens.clear()
            self._clearances.clear()

    @property
    def issued(self) -> list[str]:
        with self._lock:
            return list(self._tokens)


#: ``(url, registry, user_agent) -> cookies`` in FlareSolverr's cookie-dict shape.
SiteCookies = Callable[[str, TokenRegistry, str], list[dict[str, Any]]]


def default_site_cookies(
    url: str, registry: TokenRegistry, user_agent: str
) -> list[dict[str, Any]]:
    """What the bookstore's front page sets: a clearance cookie and ``access-token``."""
    host = urlsplit(url).hostname or "localhost"
    domain = "." + host.removeprefix("www.")
    token, exp = registry.issue(user_agent)
    return [
        {
            "name": "cf_clearance",
            "value": registry.clearance(),
            "domain": domain,
            "path": "/",
            "expires": exp + 86400 * 365,
            "httpOnly": True,
            "secure": True,
            "sameSite": "None",
        },
        {
            "name": "access-token",
            "value": f"Bearer%20{token}",
            "domain": domain,
            "path": "/",
            "expires": exp,
            "httpOnly": False,
            "secure": False,
            "sameSite": "Lax",
        },
        {
            "name": "_ym_uid",
            "value": str(secrets.randbelow(10**12)),
            "domain": domain,
            "path": "/",
            "expires": exp + 86400 * 365,
            "httpOnly": False,
            "secure": False,
            "sameSite": "Lax",
        },
    ]


@dataclass
class _Fault:
    kind: str
    remaining: int
    delay: float


class FlareSolverrSandbox(SandboxServer):
    """A fake FlareSolverr on ``host:port`` (0 = any free port), served from a daemon thread.

    :attr:`url` goes into ``flaresolverr_url``; :attr:`calls` counts commands (``GET /health``
    counts as ``"health"``); :attr:`requests` keeps the request bodies (for assertions);
    :meth:`sessions` lists open session ids. Faults queued with :meth:`fail_next` hit the
    next ``request.*`` commands, oldest first. "FlareSolverr is down" is simply :meth:`stop`.
    """

    def __init__(
        self,
        registry: TokenRegistry | None = None,
        *,
        user_agent: str = DEFAULT_USER_AGENT,
        site_cookies: SiteCookies = default_site_cookies,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.registry = registry or TokenRegistry()
        self.user_agent = user_agent
        self.site_cookies = site_cookies
        super().__init__(host, port)
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self._requests: list[dict[str, Any]] = []
        self._faults: deque[_Fault] = deque()
        self._sessions: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def _bind(self) -> _Server:
        return _Server((self.host, self.port), _Handler, self)

    def _drop_connections(self, server: ThreadingHTTPServer) -> None:
        assert isinstance(server, JsonHandlerServer)
        server.drop_connections()

    # -- inspection and control ------------------------------------------------------------

    @property
    def calls(self) -> dict[str, int]:
        """Commands received (``request.get``, ``sessions.create``, ``health``, ...)."""
        with self._lock:
            return dict(self._calls)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of ``POST /v1`` received, oldest first."""
        with self._lock:
            return [dict(body) for body in self._requests]

    def sessions(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def fail_next(self, kind: FaultKind, times: int = 1, *, delay: float = 1.0) -> None:
        """Make the next ``times`` ``request.*`` commands fail as ``kind``.

        ``"timeout"``: HTTP 500, "Timeout after 60.0 seconds". ``"blocked"``: HTTP 500,
        Cloudflare blocked. ``"captcha"``: HTTP 500, captcha detected.
        ``"unknown_session"``: forget every session and answer "This session does not
        exist." ``"slow"``: wait ``delay`` seconds, then answer normally.
        ``"bad_gateway"``: HTTP 502 with an HTML page (a proxy in front, FlareSolverr gone).
        """
        if kind not in FAULT_KINDS:
            known = ", ".join(sorted(FAULT_KINDS))
            raise ValueError(f"unknown fault kind {kind!r} (known: {known})")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(_Fault(kind, times, delay))

    # -- used by the handler ---------------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._lock:
            self._calls[name] = self._calls.get(name, 0) + 1

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.popleft()
            return fault

    def _answer(self, body: dict[str, Any]) -> tuple[int, bytes, str]:
        """Run one ``/v1`` command: ``(HTTP status, body, content type)``."""
        started = int(time.time() * 1000)
        with self._lock:
            self._requests.append(body)
        cmd = body.get("cmd")
        self._count(str(cmd))
        status, answer = self._run(cmd, body)
        if answer is None:
            return status, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"
        answer["startTimestamp"] = started
        answer["endTimestamp"] = int(time.time() * 1000)
        answer["version"] = VERSION
        return status, json.dumps(answer).encode(), _JSON

    def _run(self, cmd: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        session = body.get("session")
        if cmd == "sessions.create":
            sid = session if isinstance(session, str) and session else str(uuid.uuid1())
            with self._lock:
                fresh = sid not in self._sessions
                self._sessions.setdefault(sid, time.time())
            message = "Session created successfully." if fresh else "Session already exists."
            return 200, {"status": "ok", "message": message, "session": sid}
        if cmd == "sessions.list":
            return 200, {"status": "ok", "message": "", "sessions": self.sessions()}
        if cmd == "sessions.destroy":
            with self._lock:
                existed = self._sessions.pop(str(session), None) is not None
            if not existed:
                return 500, _error("Error: The session doesn't exist.")
            return 200, {"status": "ok", "message": "The session has been removed."}
        if cmd not in ("request.get", "request.post"):
            return 500, _error(f"Error: Request parameter 'cmd' = '{cmd}' is invalid.")
        url = body.get("url")
        if not isinstance(url, str):
            return 500, _error(f"Error: Request parameter 'url' is mandatory in '{cmd}' command.")
        if cmd == "request.post" and body.get("postData") is None:
            return 500, _error(
                "Error: Request parameter 'postData' is mandatory in 'request.post' command."
            )
        fault = self._take_fault()
        if fault is not None:
            outcome = self._fault(fault)
            if outcome is not None:
                return outcome
        if isinstance(session, str) and session:
            with self._lock:
                self._sessions.setdefault(session, time.time())
        cookies = self.site_cookies(url, self.registry, self.user_agent)
        solution: dict[str, Any] = {
            "url": url,
            "status": 200,
            "cookies": cookies,
            "userAgent": self.user_agent,
        }
        if not body.get("returnOnlyCookies"):
            solution["headers"] = {}
            solution["response"] = (
                "<html><head><title>Читай-город</title></head><body></body></html>"
            )
        return 200, {"status": "ok", "message": "Challenge not detected!", "solution": solution}

    def _fault(self, fault: _Fault) -> tuple[int, dict[str, Any] | None] | None:
        kind = fault.kind
        if kind == "timeout":
            return 500, _error(TIMEOUT_MESSAGE)
        if kind == "blocked":
            return 500, _error(BLOCKED_MESSAGE)
        if kind == "captcha":
            return 500, _error(CAPTCHA_MESSAGE)
        if kind == "unknown_session":
            with self._lock:
                self._sessions.clear()
            return 500, _error(SESSION_MESSAGE)
        if kind == "bad_gateway":
            return 502, None
        # "slow": answer normally after the delay (or give up if the sandbox stops).
        self._stopping.wait(fault.delay)
        return None


def _error(message: str) -> dict[str, Any]:
    return {"status": "error", "message": message}


class JsonHandlerServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that carries its sandbox and skips the slow FQDN lookup."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], sandbox: Any
    ) -> None:
        self.sandbox = sandbox
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        with self._open_lock:
            self._open.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut open keep-alive connections, so a stopped sandbox really looks down."""
        with self._open_lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class BaseJsonHandler(BaseHTTPRequestHandler):
    """Quiet HTTP/1.1 handler with body reading and exact Content-Length answers."""

    protocol_version = "HTTP/1.1"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request logging."""

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > _MAX_BODY:
            self.close_connection = True
            return b""
        return self.rfile.read(length) if length else b""

    def send(
        self,
        status: int,
        body: bytes,
        content_type: str = _JSON,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True


class _Server(JsonHandlerServer):
    sandbox: FlareSolverrSandbox


class _Handler(BaseJsonHandler):
    server: _Server
    server_version = "waitress"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            self.server.sandbox._count("health")
            self.send(200, b'{"status": "ok"}')
        elif path == "/":
            ua = self.server.sandbox.user_agent
            index = {"msg": "FlareSolverr is ready!", "version": VERSION, "userAgent": ua}
            self.send(200, json.dumps(index).encode())
        else:
            self.send(
                404, b'{"error": "Not found: \'' + path.encode() + b'\'", "status_code": 404}'
            )

    def do_POST(self) -> None:
        raw = self.read_body()
        if urlsplit(self.path).path != "/v1":
            self.send(404, b'{"error": "Not found", "status_code": 404}')
            return
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self.send(
                500, json.dumps(_error("Error: Request parameter 'cmd' is mandatory.")).encode()
            )
            return
        status, answer, ctype = self.server.sandbox._answer(body)
        self.send(status, answer, ctype)
