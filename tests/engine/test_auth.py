"""Auth adapters against a local API that accepts only tokens it has not revoked."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests

from providers.base import TokenPlacement
from tests.engine.test_client import InlineWorker, make_client
from tests.stubs import StubControl
from tokenfleet.auth import HttpxTokenAuth, TokenAuth, apply_token
from tokenfleet.client import Token, TokenClient
from tokenfleet.runtime import Runtime


class Api:
    """A bookstore-like API: 200 for a good bearer token, 401 otherwise."""

    def __init__(self, stub: StubControl) -> None:
        self.stub = stub
        self.revoked: set[str] = set()
        self.always_401 = False
        self.seen: list[dict[str, str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items()}
                api.seen.append(headers)
                token = headers.get("Authorization", "").removeprefix("Bearer ")
                ok = token in api.stub.issued() and token not in api.revoked
                status = 200 if ok and not api.always_401 else 401
                body = b'{"ok": true}' if status == 200 else b'{"error": "unauthorized"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/books"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api(stub: StubControl) -> Iterator[Api]:
    server = Api(stub)
    yield server
    server.close()


@pytest.fixture
def setup(rt: Runtime, stub_credential: StubControl) -> Iterator[tuple[TokenClient, InlineWorker]]:
    worker = InlineWorker(rt)
    client = make_client(rt, worker, cooldown=0.2, recheck=0.1)
    rt.engine.rotate("stub")
    yield client, worker
    client.close()


def _revoke_current(api: Api, client: TokenClient) -> str:
    old = client.get("stub").value
    api.revoked.add(old)
    return old


def check_replayed_once(api: Api, worker: InlineWorker, old: str, status: int) -> None:
    assert status == 200
    assert len(api.seen) == 2
    assert api.seen[0]["Authorization"] == f"Bearer {old}"
    assert api.seen[1]["Authorization"] != f"Bearer {old}"
    assert api.seen[1]["User-Agent"] == "stub-agent/1.0"
    assert len(worker.sent) == 1


def check_never_loops(api: Api, worker: InlineWorker, status: int) -> None:
    assert status == 401
    assert len(api.seen) == 2  # the request and exactly one replay
    assert len(worker.sent) == 1


def test_requests_adapter_rotates_on_401_and_replays_once(
    api: Api, setup: tuple[TokenClient, InlineWorker]
) -> None:
    client, worker = setup
    old = _revoke_current(api, client)
    response = requests.get(api.url, auth=TokenAuth(client, "stub"), timeout=10)
    check_replayed_once(api, worker, old, response.status_code)
    assert len(response.history) == 1 and response.history[0].status_code == 401


def test_requests_adapter_returns_a_second_401_instead_of_looping(
    api: Api, setup: tuple[TokenClient, InlineWorker]
) -> None:
    client, worker = setup
    api.always_401 = True
    response = requests.get(api.url, auth=TokenAuth(client, "stub"), timeout=10)
    check_never_loops(api, worker, response.status_code)


def test_httpx_sync_adapter_rotates_on_401_and_replays_once(
    api: Api, setup: tuple[TokenClient, InlineWorker]
) -> None:
    client, worker = setup
    old = _revoke_current(api, client)
    with httpx.Client(auth=HttpxTokenAuth(client, "stub"), timeout=10) as http:
        response = http.get(api.url)
    check_replayed_once(api, worker, old, response.status_code)


def test_httpx_async_adapter_behaves_the_same(
    api: Api, setup: tuple[TokenClient, InlineWorker]
) -> None:
    client, worker = setup
    old = _revoke_current(api, client)

    async def go() -> int:
        async with httpx.AsyncClient(auth=HttpxTokenAuth(client, "stub"), timeout=10) as http:
            return (await http.get(api.url)).status_code

    check_replayed_once(api, worker, old, asyncio.run(go()))


def test_httpx_async_adapter_never_loops(api: Api, setup: tuple[TokenClient, InlineWorker]) -> None:
    client, worker = setup
    api.always_401 = True

    async def go() -> int:
        async with httpx.AsyncClient(auth=HttpxTokenAuth(client, "stub"), timeout=10) as http:
            return (await http.get(api.url)).status_code

    check_never_loops(api, worker, asyncio.run(go()))


def test_apply_token_sets_header_user_agent_and_merges_cookies() -> None:
    token = Token("p", "t", "tok", 3, bound={"user_agent": "UA/1"}, cookies={"cf_clearance": "c1"})
    headers = {"Cookie": "session=abc; cf_clearance=old"}
    apply_token(headers, token, TokenPlacement())
    assert headers == {
        "Authorization": "Bearer tok",
        "User-Agent": "UA/1",
        "Cookie": "session=abc; cf_clearance=c1",
    }
    body_only: dict[str, str] = {}
    apply_token(body_only, token, TokenPlacement(header=None))
    assert "Authorization" not in body_only and body_only["User-Agent"] == "UA/1"
