"""The hot copy in Redis: encrypted current secrets, promotion messages and rotation locks.

Keys (``prefix`` defaults to ``tokenfleet``)::

    {prefix}:secret:{provider}:{tenant}   encrypted JSON {version, payload}, with a TTL
    {prefix}:lock:{provider}:{tenant}     rotation lock; value is the owner's random token
    {prefix}:promoted                     pub/sub channel; messages carry no secret

Redis is a cache: SQL stays the source of truth, so a failed write here is logged by
the caller and never undoes a promotion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import redis
from redis.lock import Lock

from .crypto import Cipher
from .errors import StoreUnavailable
from .secret import Secret


@dataclass(frozen=True)
class Promotion:
    """What subscribers are told when a version becomes current."""

    provider: str
    tenant: str
    version: int
    fingerprint: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "provider": self.provider,
                "tenant": self.tenant,
                "version": self.version,
                "fingerprint": self.fingerprint,
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Promotion:
        data = json.loads(raw)
        return cls(data["provider"], data["tenant"], int(data["version"]), data["fingerprint"])


class HotCache:
    """Encrypted current secrets in Redis, the promotion channel, and per-credential locks."""

    def __init__(self, client: redis.Redis, cipher: Cipher, *, prefix: str, ttl: int) -> None:
        self.redis = client
        self.cipher = cipher
        self.prefix = prefix
        self.ttl = ttl
        self.channel = f"{prefix}:promoted"

    def _key(self, kind: str, provider: str, tenant: str) -> str:
        return f"{self.prefix}:{kind}:{provider}:{tenant}"

    def lock(self, provider: str, tenant: str, ttl: float) -> Lock:
        """A fleet-wide lock for one credential, owned by a random token, expiring after ``ttl``."""
        lock: Lock = self.redis.lock(self._key("lock", provider, tenant), timeout=ttl, sleep=0.05)
        return lock

    def put(self, provider: str, tenant: str, version: int, secret: Secret, now: datetime) -> None:
        """Store ``secret`` as the hot copy and announce the promotion, atomically."""
        ttl = self.ttl
        if secret.expires_at is not None:
            left = int((secret.expires_at - now).total_seconds())
            ttl = max(1, min(ttl, left))
        blob = self.cipher.encrypt(
            json.dumps({"version": version, "payload": secret.to_payload().decode()}).encode()
        )
        message = Promotion(provider, tenant, version, secret.fingerprint).to_json()
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(self._key("secret", provider, tenant), blob, ex=ttl)
            pipe.publish(self.channel, message)
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis unavailable ({type(exc).__name__})") from None

    def get(self, provider: str, tenant: str) -> tuple[int, Secret] | None:
        """The hot copy's version and secret, or None when absent or expired."""
        try:
            blob = cast(bytes | None, self.redis.get(self._key("secret", provider, tenant)))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis unavailable ({type(exc).__name__})") from None
        if blob is None:
            return None
        data: dict[str, Any] = json.loads(self.cipher.decrypt(blob))
        return int(data["version"]), Secret.from_payload(data["payload"].encode())

    def raw(self, provider: str, tenant: str) -> bytes | None:
        """The stored bytes as they are, for tests and audits that check encryption."""
        value = cast(bytes | None, self.redis.get(self._key("secret", provider, tenant)))
        return value
