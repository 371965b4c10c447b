"""A scriptable provider for tests, steered through Redis so worker processes obey it too.

Each credential's config names a Redis URL and a key prefix. ``acquire`` pops the next
step of ``{prefix}:script`` (default ``ok``) and counts its calls; ``validate`` accepts
only tokens it issued, unless told otherwise.

Steps: ``ok``, ``timeout``, ``unavailable``, ``ratelimited``, ``reject``, ``malformed``,
``invalid`` (acquire works, validation fails), ``sleep:SECONDS`` (then ok),
``expires:SECONDS`` (ok, with an expiry).
"""

from __future__ import annotations

import secrets
import time
from datetime import timedelta

import redis

from providers.base import (
    CredentialsRejected,
    MalformedResponse,
    Provider,
    ProviderConfig,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    Schedule,
    Secret,
    ValidationFailed,
)


class StubConfig(ProviderConfig):
    redis_url: str
    prefix: str


class StubControl:
    """The test side of the stub: script steps, read counters."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    def config(self) -> dict[str, str]:
        kw = self.redis.connection_pool.connection_kwargs
        url = f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
        return {"redis_url": url, "prefix": self.prefix}

    def script(self, *steps: str) -> None:
        if steps:
            self.redis.rpush(f"{self.prefix}:script", *steps)

    def count(self, what: str) -> int:
        return int(self.redis.get(f"{self.prefix}:{what}") or 0)

    def issued(self) -> set[str]:
        return {v.decode() for v in self.redis.smembers(f"{self.prefix}:issued")}


_clients: dict[str, redis.Redis] = {}


def _client(url: str) -> redis.Redis:
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url)
    return _clients[url]


class StubProvider(Provider[StubConfig]):
    name = "stub"
    queue = "light"
    default_schedule = Schedule(every=timedelta(hours=1))
    config_model = StubConfig

    @property
    def _redis(self) -> redis.Redis:
        return _client(self.config.redis_url)

    def _key(self, what: str) -> str:
        return f"{self.config.prefix}:{what}"

    def acquire(self) -> Secret:
        r = self._redis
        r.incr(self._key("acquire"))
        raw = r.lpop(self._key("script"))
        step = raw.decode() if raw else "ok"
        expires = None
        if step.startswith("sleep:"):
            time.sleep(float(step.split(":", 1)[1]))
        elif step.startswith("expires:"):
            expires = self.clock.now() + timedelta(seconds=float(step.split(":", 1)[1]))
        elif step == "timeout":
            raise ProviderTimeout("stub: no answer within 1s")
        elif step == "unavailable":
            raise ProviderUnavailable("stub: HTTP 503")
        elif step == "ratelimited":
            raise RateLimited("stub: HTTP 429", retry_after=0.2)
        elif step == "reject":
            raise CredentialsRejected("stub: wrong password")
        elif step == "malformed":
            raise MalformedResponse("stub: HTML instead of JSON")
        token = "stub-" + secrets.token_hex(16)
        if step == "invalid":
            r.set(self._key("poison"), token)
        else:
            r.sadd(self._key("issued"), token)
        return Secret(token, expires_at=expires, bound={"user_agent": "stub-agent/1.0"})

    def validate(self, secret: Secret) -> None:
        r = self._redis
        r.incr(self._key("validate"))
        if not r.sismember(self._key("issued"), secret.reveal()):
            raise ValidationFailed("stub: token not accepted")


class BrowserStubProvider(StubProvider):
    """The same stub, living on the ``browser`` queue."""

    name = "stub_browser"
    queue = "browser"
