"""HTTP helpers every HTTP provider shares: one call, classified into the error tree.

``send`` turns transport faults and HTTP status codes into :mod:`tokenfleet.errors`:
timeouts → ProviderTimeout; connection errors and 5xx → ProviderUnavailable; 429 →
RateLimited with ``retry_after`` from the ``Retry-After`` header. Other statuses are
returned for the provider to judge, since services disagree on what 4xx bodies mean.
Messages name the provider, method and URL path, never request bodies or headers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from tokenfleet.errors import MalformedResponse, ProviderTimeout, ProviderUnavailable, RateLimited


def describe_request(method: str, url: str) -> str:
    parts = urlsplit(url)
    # hostname/port, not netloc: netloc would carry any user:password@ of the URL.
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{method} {parts.scheme}://{host}{parts.path}"


def check_http_url(value: str, field: str, *, strip_slash: bool = True) -> str:
    """Validate a configured http(s) URL (for pydantic validators); return it trimmed.

    URLs with ``user:password@`` are refused: error messages name URLs, and credentials
    belong in their own secret fields.
    """
    value = value.strip()
    if strip_slash:
        value = value.rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field} must be an http(s) URL such as https://example.com")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{field} must not carry credentials; put them in their own fields")
    return value


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    provider: str,
    timeout: float,
    **kwargs: Any,
) -> requests.Response:
    """Send one request; raise a RetryLater subclass for transient faults."""
    where = describe_request(method, url)
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.Timeout:
        raise ProviderTimeout(f"{provider}: no answer within {timeout:g}s from {where}") from None
    except requests.ConnectionError as exc:
        reason = type(exc).__name__
        raise ProviderUnavailable(f"{provider}: cannot connect to {where} ({reason})") from None
    except requests.RequestException as exc:
        raise ProviderUnavailable(f"{provider}: request to {where} failed ({exc!r})") from None
    if response.status_code == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise RateLimited(
            f"{provider}: rate limited by {where} (retry after {retry_after}s)",
            retry_after=retry_after,
        )
    if response.status_code >= 500:
        raise ProviderUnavailable(f"{provider}: {where} answered HTTP {response.status_code}")
    return response


def json_body(response: requests.Response, *, provider: str) -> Any:
    """Decode a JSON body; anything else (an HTML page, say) is a MalformedResponse."""
    where = describe_request(response.request.method or "?", response.url)
    ctype = response.headers.get("Content-Type", "")
    try:
        return response.json()
    except ValueError:
        kind = ctype.split(";")[0] or "no content type"
        raise MalformedResponse(
            f"{provider}: {where} answered HTTP {response.status_code} with {kind}, not JSON"
        ) from None
