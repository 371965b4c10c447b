"""The value a provider hands back, and how it is fingerprinted and serialised.

A :class:`Secret` never shows its value in ``repr``/``str``; only :meth:`Secret.reveal`
returns it. Serialise with :meth:`to_payload` only to encrypt it straight away.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any


def fingerprint(value: str) -> str:
    """Return a short, stable, non-reversible identifier of a secret value.

    16 hex characters of SHA-256: enough to tell versions apart in logs and audit rows;
    the tokens we keep are high-entropy, so the prefix gives nothing useful away.
    """
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, repr=False, eq=False)
class Secret:
    """An acquired secret: the value plus what it is bound to.

    ``bound`` holds non-secret context the value only works with, such as a User-Agent;
    ``cookies`` holds cookies that must travel with it (they are treated as secret too).
    """

    value: str
    expires_at: datetime | None = None
    bound: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))
    cookies: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or not self.value:
            raise ValueError("a secret value must be a non-empty string")
        if not isinstance(self.bound, MappingProxyType):
            object.__setattr__(self, "bound", MappingProxyType(dict(self.bound)))
        if not isinstance(self.cookies, MappingProxyType):
            object.__setattr__(self, "cookies", MappingProxyType(dict(self.cookies)))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.value)

    def reveal(self) -> str:
        """Return the secret value itself; call only to hand it to its consumer."""
        return self.value

    def __repr__(self) -> str:
        expires = self.expires_at.isoformat() if self.expires_at else None
        return f"Secret(fingerprint={self.fingerprint!r}, expires_at={expires!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self.to_payload() == other.to_payload()

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def to_payload(self) -> bytes:
        """Serialise to JSON bytes, to be encrypted before it is stored anywhere."""
        data: dict[str, Any] = {
            "value": self.value,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "bound": dict(self.bound),
            "cookies": dict(self.cookies),
        }
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")

    @classmethod
    def from_payload(cls, payload: bytes) -> Secret:
        data = json.loads(payload)
        expires = data.get("expires_at")
        return cls(
            value=data["value"],
            expires_at=datetime.fromisoformat(expires) if expires else None,
            bound=MappingProxyType(data.get("bound") or {}),
            cookies=MappingProxyType(data.get("cookies") or {}),
        )
