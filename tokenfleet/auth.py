"""Auth adapters for ``requests`` and ``httpx``: attach the token, and on 401 rotate once.

::

    session.auth = TokenAuth(client, "chitai_gorod")            # requests
    httpx.Client(auth=HttpxTokenAuth(client, "chitai_gorod"))   # httpx, sync or async

The token goes where its provider says (``Provider.placement``: a header such as
``Authorization: Bearer …``), together with what it is bound to: the User-Agent it was
issued for and its cookies. A 401 asks the fleet for a version newer than the one sent,
then replays the request exactly once; a second 401 is returned to the caller as is.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, MutableMapping
from typing import Any

import requests
from requests.auth import AuthBase

from providers.base import TokenPlacement
from providers.registry import Registry

from .client import Token, TokenClient

_REPLAYED = "_tokenfleet_replayed"


def placement_for(provider: str, registry: Registry | None) -> TokenPlacement:
    if registry is not None and provider in registry:
        return registry.get(provider).placement
    return TokenPlacement()


def apply_token(headers: MutableMapping[str, str], token: Token, placement: TokenPlacement) -> None:
    """Set the token's header, User-Agent and cookies on ``headers`` (in place)."""
    if placement.header:
        value = f"{placement.scheme} {token.value}" if placement.scheme else token.value
        headers[placement.header] = value
    if token.user_agent:
        headers["User-Agent"] = token.user_agent
    if token.cookies:
        ours = "; ".join(f"{name}={value}" for name, value in token.cookies.items())
        theirs = [
            part.strip()
            for part in headers.get("Cookie", "").split(";")
            if part.strip() and part.split("=", 1)[0].strip() not in token.cookies
        ]
        headers["Cookie"] = "; ".join([*theirs, ours]) if theirs else ours


class _Adapter:
    """What both adapters hold: the client, the credential, and where the token goes."""

    def __init__(
        self,
        client: TokenClient,
        provider: str,
        tenant: str = "default",
        *,
        wait: float = 60.0,
        placement: TokenPlacement | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.client = client
        self.provider = provider
        self.tenant = tenant
        self.wait = wait
        self.placement = placement or placement_for(provider, registry or _builtin())


class TokenAuth(_Adapter, AuthBase):
    """``requests`` auth: token (and its User-Agent/cookies) on every request; one replay."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.client.get(self.provider, self.tenant)
        apply_token(request.headers, token, self.placement)
        request.register_hook("response", self._on_response)  # type: ignore[no-untyped-call]
        request._tokenfleet_version = token.version  # type: ignore[attr-defined]
        return request

    def _on_response(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        if response.status_code != 401 or getattr(request, _REPLAYED, False):
            return response
        sent = getattr(request, "_tokenfleet_version", None)
        token = self.client.rotate(self.provider, self.tenant, stale_version=sent, wait=self.wait)
        response.content  # noqa: B018 - drain, so the connection can be reused
        response.close()
        replay = request.copy()
        apply_token(replay.headers, token, self.placement)
        setattr(replay, _REPLAYED, True)
        replay._tokenfleet_version = token.version  # type: ignore[attr-defined]
        second: requests.Response = response.connection.send(replay, **kwargs)
        second.history.append(response)
        second.request = replay
        return second


try:
    import httpx
except ImportError:  # pragma: no cover - httpx is optional
    httpx = None  # type: ignore[assignment]


if httpx is not None:

    class HttpxTokenAuth(_Adapter, httpx.Auth):
        """``httpx`` auth, sync and async alike: token on every request; one replay."""

        def sync_auth_flow(
            self, request: httpx.Request
        ) -> Generator[httpx.Request, httpx.Response, None]:
            token = self.client.get(self.provider, self.tenant)
            apply_token(request.headers, token, self.placement)
            response = yield request
            if response.status_code == 401:
                response.read()
                newer = self.client.rotate(
                    self.provider, self.tenant, stale_version=token.version, wait=self.wait
                )
                apply_token(request.headers, newer, self.placement)
                yield request

        async def async_auth_flow(
            self, request: httpx.Request
        ) -> AsyncGenerator[httpx.Request, httpx.Response]:
            # Reads are served from memory almost always; the rare Redis read is short.
            token = self.client.get(self.provider, self.tenant)
            apply_token(request.headers, token, self.placement)
            response = yield request
            if response.status_code == 401:
                await response.aread()
                newer = await self.client.arotate(
                    self.provider, self.tenant, stale_version=token.version, wait=self.wait
                )
                apply_token(request.headers, newer, self.placement)
                yield request


def _builtin() -> Registry:
    from providers import BUILTIN

    return BUILTIN
