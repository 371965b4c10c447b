"""A local fake Webkassa that answers in Webkassa's real format, with fault injection.

::

    with WebkassaSandbox(api_key="WKD-SANDBOX") as sandbox:
        config = WebkassaConfig(base_url=sandbox.url, login="sandbox",
                                password="sandbox-password", api_key="WKD-SANDBOX")
        sandbox.fail_next("500")          # the next request answers HTTP 500
        ...

or from a shell: ``python -m tokenfleet.sandbox.webkassa --port 8081`` (Ctrl-C stops it).

Served, all ``POST`` with JSON bodies like the real service:

* ``/api/v4/Authorize`` (checks ``X-API-Key`` when the sandbox has an ``api_key``) and the
  legacy ``/api/Authorize`` (no key): ``{"Login", "Password"}`` → ``{"Data": {"Token"}}``
  with a random 32-hex token, the shape Webkassa issues; a wrong login or password gets
  ``{"Errors": [{"Code": 1, "Text": "Неверный логин или пароль"}]}`` with HTTP 200.
* ``/api/v4/Cashboxes`` and ``/api/Cashboxes`` (the provider's default validation call):
  ``{"Token"}`` → ``{"Data": {"List": [...]}}`` for a token this sandbox issued (the most
  recent ``max_tokens``); Code 2 "session expired" for one it issued that has expired
  (``token_ttl`` or :meth:`WebkassaSandbox.expire_tokens`); Code 3 "not authorised" for any
  other token.

Formats follow Webkassa's integrator Postman collection (v4, 2.0.3) and its ApiErrorCode
list; see :mod:`providers.webkassa` for sources. Assumed, not documented: a missing or
wrong API key answers HTTP 401 with Code 3, and a body that is not the expected JSON
answers Code 9 "data validation error".

Built for throughput benchmarks (~1000 requests/s): HTTP/1.1 keep-alive with exact
``Content-Length``, TCP_NODELAY, no per-request logging.
"""

from __future__ import annotations

import argparse
import hmac
import json
import secrets
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Final, Literal, cast, get_args
from urllib.parse import urlsplit

from .server import SandboxServer

__all__ = ["FaultKind", "WebkassaSandbox", "main"]

FaultKind = Literal[
    "500", "timeout", "html", "429", "wrong_password", "token_expired", "disconnect"
]
FAULT_KINDS: Final[frozenset[str]] = frozenset(get_args(FaultKind))

AUTHORIZE_V4: Final = "/api/v4/Authorize"
AUTHORIZE_LEGACY: Final = "/api/Authorize"
CASHBOXES_V4: Final = "/api/v4/Cashboxes"
CASHBOXES_LEGACY: Final = "/api/Cashboxes"
V4_PATHS: Final = frozenset({AUTHORIZE_V4, CASHBOXES_V4})

_MAX_BODY = 1 << 20
_JSON: Final = "application/json; charset=utf-8"
_HTML: Final = "text/html; charset=utf-8"


def _json(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _errors(code: int, text: str) -> bytes:
    return _json({"Errors": [{"Code": code, "Text": text}]})


# Answers that never change are encoded once: the benchmark path should do no extra work.
_WRONG_CREDENTIALS = _errors(1, "Неверный логин или пароль")
_TOKEN_EXPIRED = _errors(2, "Срок действия сессии истек")
_NOT_AUTHORIZED = _errors(3, "Пользователь не авторизован")
_BAD_API_KEY = _errors(3, "API-key отсутствует либо не найден")
_VALIDATION_ERROR = _errors(9, "Ошибка валидации данных")
_CASHBOXES = _json(
    {
        "Data": {
            "List": [
                {
                    "UniqueNumber": "SWK00000001",
                    "RegistrationNumber": "000000000001",
                    "IdentificationNumber": "1",
                    "Name": "Sandbox cashbox",
                    "Description": "tokenfleet sandbox",
                    "IsOffline": False,
                    "CurrentStatus": 1,
                    "Shift": 1,
                }
            ]
        }
    }
)
_HTML_500 = (
    b"<html><head><title>500 Internal Server Error</title></head><body>"
    b"<center><h1>500 Internal Server Error</h1></center><hr><center>nginx</center>"
    b"</body></html>"
)
_HTML_429 = (
    b"<html><head><title>429 Too Many Requests</title></head><body>"
    b"<center><h1>429 Too Many Requests</h1></center><hr><center>nginx</center>"
    b"</body></html>"
)
_HTML_404 = (
    b"<html><head><title>404 Not Found</title></head><body>"
    b"<center><h1>404 Not Found</h1></center><hr><center>nginx</center></body></html>"
)
# What a captive portal or a bot-check page in front of the API looks like: HTTP 200, HTML.
_HTML_PORTAL = (
    b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>"
    b"<h1>Checking your browser before accessing kkm.webkassa.kz</h1>"
    b"<p>Please enable JavaScript and cookies to continue.</p></body></html>"
)


@dataclass
class _Fault:
    kind: str
    remaining: int
    delay: float
    endpoint: str | None


class WebkassaSandbox(SandboxServer):
    """A fake Webkassa on ``host:port`` (port 0 picks a free one), served from a daemon thread.

    Use it as a context manager or call :meth:`start` / :meth:`stop`. :attr:`url` is the base
    URL to put in ``WebkassaConfig.base_url``; :attr:`calls` counts requests per path;
    :attr:`issued` lists the tokens issued (the most recent ``max_tokens``). Faults queued
    with :meth:`fail_next` hit the next matching requests, oldest first. All methods are
    safe to call from any thread.
    """

    def __init__(
        self,
        login: str = "sandbox",
        password: str = "sandbox-password",  # noqa: S107 - a sandbox's well-known default
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_tokens: int = 10_000,
        token_ttl: float | None = None,
    ) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if token_ttl is not None and token_ttl <= 0:
            raise ValueError("token_ttl must be positive seconds (or None for no expiry)")
        super().__init__(host, port)
        self.login = login
        self._password = password.encode("utf-8")
        self._api_key = api_key.encode("utf-8") if api_key else None
        self.max_tokens = max_tokens
        self.token_ttl = token_ttl
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self._connections = 0
        self._faults: deque[_Fault] = deque()
        # token -> (issue sequence number, monotonic issue time); insertion-ordered for eviction
        self._tokens: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._seq = 0
        self._expired_upto = 0
        self._open: set[socket.socket] = set()

    def __repr__(self) -> str:
        state = self.url if self._server is not None else "stopped"
        return f"<WebkassaSandbox {state} login={self.login!r}>"

    # -- lifecycle ---------------------------------------------------------------------

    def _bind(self) -> _Server:
        return _Server((self.host, self.port), self)

    def _drop_connections(self, server: ThreadingHTTPServer) -> None:
        with self._lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- inspection and control ----------------------------------------------------------

    @property
    def calls(self) -> dict[str, int]:
        """Requests received per URL path (a snapshot), faults included."""
        with self._lock:
            return dict(self._calls)

    @property
    def issued(self) -> list[str]:
        """Tokens issued, oldest first (only the most recent ``max_tokens`` are kept)."""
        with self._lock:
            return list(self._tokens)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (keep-alive reuse keeps this low)."""
        with self._lock:
            return self._connections

    def fail_next(
        self,
        kind: FaultKind,
        times: int = 1,
        *,
        delay: float = 5.0,
        endpoint: str | None = None,
    ) -> None:
        """Make the next ``times`` requests (to ``endpoint`` only, if given) fail as ``kind``.

        ``"500"``: HTTP 500 with an nginx HTML page. ``"timeout"``: wait ``delay`` seconds,
        then answer normally (set the client's timeout below ``delay``). ``"html"``: HTTP 200
        with an HTML page, like a captive portal. ``"429"``: HTTP 429 with
        ``Retry-After: 1``. ``"wrong_password"``: Webkassa's Code 1 error.
        ``"token_expired"``: Webkassa's Code 2 error. ``"disconnect"``: close the connection
        without answering.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {kind!r} (known: {', '.join(sorted(FAULT_KINDS))})"
            )
        if times < 1:
            raise ValueError("times must be at least 1")
        if delay < 0:
            raise ValueError("delay must not be negative")
        with self._lock:
            self._faults.append(_Fault(kind, times, delay, endpoint))

    def expire_tokens(self) -> None:
        """Expire every token issued so far: validation answers Code 2 for them."""
        with self._lock:
            self._expired_upto = self._seq

    def reset(self) -> None:
        """Forget counters, queued faults and tokens."""
        with self._lock:
            self._calls.clear()
            self._faults.clear()
            self._tokens.clear()
            self._connections = 0

    # -- used by the request handler -----------------------------------------------------

    def _count(self, path: str) -> None:
        with self._lock:
            self._calls[path] = self._calls.get(path, 0) + 1

    def _opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._open.add(sock)

    def _closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.endpoint is None or fault.endpoint == path:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _issue(self) -> str:
        token = secrets.token_hex(16)
        with self._lock:
            self._seq += 1
            self._tokens[token] = (self._seq, time.monotonic())
            while len(self._tokens) > self.max_tokens:
                self._tokens.popitem(last=False)
        return token

    def _token_state(self, token: object) -> Literal["ok", "expired", "unknown"]:
        if not isinstance(token, str):
            return "unknown"
        with self._lock:
            entry = self._tokens.get(token)
            expired_upto = self._expired_upto
        if entry is None:
            return "unknown"
        seq, issued_at = entry
        if seq <= expired_upto:
            return "expired"
        if self.token_ttl is not None and time.monotonic() - issued_at >= self.token_ttl:
            return "expired"
        return "ok"

    def _check_login(self, login: str, password: str) -> bool:
        login_ok = hmac.compare_digest(login.encode("utf-8"), self.login.encode("utf-8"))
        password_ok = hmac.compare_digest(password.encode("utf-8"), self._password)
        return login_ok and password_ok

    def _api_key_ok(self, presented: str | None) -> bool:
        if self._api_key is None:
            return True
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8"), self._api_key
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sandbox: WebkassaSandbox) -> None:
        self.sandbox = sandbox
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on a machine with
        # slow reverse DNS; the name is only used in CGI environments.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (after a "timeout" fault, say) is not worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nginx"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging: it would dominate a benchmark."""

    def setup(self) -> None:
        super().setup()
        self.server.sandbox._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sandbox._closed(self.connection)

    def do_POST(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # -- dispatch ------------------------------------------------------------------------

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        raw = self._read_body()
        if raw is None:
            return
        path = urlsplit(self.path).path
        sandbox._count(path)
        fault = sandbox._take_fault(path)
        if fault is not None and self._fault(fault):
            return
        if path in (AUTHORIZE_V4, AUTHORIZE_LEGACY, CASHBOXES_V4, CASHBOXES_LEGACY):
            if self.command != "POST":
                self._send(405, b"", _HTML, (("Allow", "POST"),))
                return
            if path in V4_PATHS and not sandbox._api_key_ok(self.headers.get("X-API-Key")):
                self._send(401, _BAD_API_KEY)
                return
            body = _parse(raw)
            if path in (AUTHORIZE_V4, AUTHORIZE_LEGACY):
                self._authorize(body)
            else:
                self._cashboxes(body)
            return
        self._send(404, _HTML_404, _HTML)

    def _authorize(self, body: dict[str, Any] | None) -> None:
        sandbox = self.server.sandbox
        login = body.get("Login") if body else None
        password = body.get("Password") if body else None
        if not isinstance(login, str) or not isinstance(password, str):
            self._send(200, _VALIDATION_ERROR)
        elif not sandbox._check_login(login, password):
            self._send(200, _WRONG_CREDENTIALS)
        else:
            self._send(200, _json({"Data": {"Token": sandbox._issue()}}))

    def _cashboxes(self, body: dict[str, Any] | None) -> None:
        state = self.server.sandbox._token_state(body.get("Token") if body else None)
        if state == "ok":
            self._send(200, _CASHBOXES)
        elif state == "expired":
            self._send(200, _TOKEN_EXPIRED)
        else:
            self._send(200, _NOT_AUTHORIZED)

    def _fault(self, fault: _Fault) -> bool:
        """Answer as ``fault`` says; False means "now answer normally" (after a delay)."""
        kind = fault.kind
        if kind == "500":
            self._send(500, _HTML_500, _HTML)
        elif kind == "html":
            self._send(200, _HTML_PORTAL, _HTML)
        elif kind == "429":
            self._send(429, _HTML_429, _HTML, (("Retry-After", "1"),))
        elif kind == "wrong_password":
            self._send(200, _WRONG_CREDENTIALS)
        elif kind == "token_expired":
            self._send(200, _TOKEN_EXPIRED)
        elif kind == "disconnect":
            self.close_connection = True
        elif kind == "timeout":
            if self.server.sandbox._stopping.wait(fault.delay):
                self.close_connection = True
                return True
            return False
        return True

    # -- plumbing ------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """Read the request body so the connection stays usable; None if already answered."""
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self._send(411, b"", _HTML)
                self.close_connection = True
                return None
            return b""
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0 or length > _MAX_BODY:
            self._send(413 if length > _MAX_BODY else 400, b"", _HTML)
            self.close_connection = True
            return None
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = _JSON,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        return None
    return cast(dict[str, Any], value) if isinstance(value, dict) else None


class _Terminate(Exception):
    """Raised from the SIGTERM handler to leave the CLI's wait loop cleanly."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminate


def main(argv: Sequence[str] | None = None) -> int:
    """Run a sandbox in the foreground until Ctrl-C (or SIGTERM); print its URL first."""
    parser = argparse.ArgumentParser(
        prog="python -m tokenfleet.sandbox.webkassa",
        description="A local fake Webkassa API (login and token validation) for development.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port to bind, 0 = any (8081)")
    parser.add_argument("--login", default="sandbox", help="accepted login (sandbox)")
    parser.add_argument(
        "--password", default="sandbox-password", help="accepted password (sandbox-password)"
    )
    parser.add_argument("--api-key", default=None, help="require this X-API-Key on v4 paths")
    parser.add_argument(
        "--token-ttl", type=float, default=None, help="seconds a token stays valid (forever)"
    )
    args = parser.parse_args(argv)
    sandbox = WebkassaSandbox(
        login=args.login,
        password=args.password,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        token_ttl=args.token_ttl,
    )
    sandbox.start()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    key_note = "X-API-Key required on /api/v4" if args.api_key else "no API key required"
    print(
        f"Webkassa sandbox listening on {sandbox.url} (login {args.login!r}, {key_note}); "
        "Ctrl-C stops it",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, _Terminate):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sandbox.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
