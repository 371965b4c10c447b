"""The provider contract: what every service module in ``providers/`` implements.

A provider knows one external service. It is constructed per credential with its parsed
config, an HTTP session and a clock, and it never touches storage: ``acquire`` returns a
new :class:`~tokenfleet.secret.Secret` or raises a classified error from
:mod:`tokenfleet.errors`; ``validate`` returns ``None`` or raises; ``revoke`` is optional.
The engine does everything else (locking, versioning, storing, auditing).

Errors are re-exported here so a provider module needs a single import.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import requests
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from tokenfleet.clock import Clock, SystemClock
from tokenfleet.errors import (
    CredentialsRejected,
    GiveUp,
    InvalidConfig,
    MalformedResponse,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    RetryLater,
    ValidationFailed,
)
from tokenfleet.schedule import Schedule
from tokenfleet.secret import Secret

from .browser import Health

__all__ = [
    "AnyProvider",
    "Clock",
    "CredentialsRejected",
    "GiveUp",
    "Health",
    "InvalidConfig",
    "MalformedResponse",
    "Provider",
    "ProviderConfig",
    "ProviderTimeout",
    "ProviderUnavailable",
    "Queue",
    "RateLimited",
    "RetryLater",
    "Schedule",
    "Secret",
    "TokenPlacement",
    "ValidationFailed",
]

Queue = Literal["light", "browser"]


class ProviderConfig(BaseModel):
    """Base for provider config models: frozen, unknown keys rejected.

    Mark secret fields with ``pydantic.SecretStr`` so they never show in reprs or errors.
    """

    # hide_input_in_errors: a validation error must never echo a password back.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: Seconds to wait for the provider on each HTTP call.
    timeout: float = 20.0

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        return value


ConfigT = TypeVar("ConfigT", bound=ProviderConfig)


@dataclass(frozen=True)
class TokenPlacement:
    """Where applications put this provider's token: ``header: scheme value``.

    ``header=None`` means the token does not travel in a header (Webkassa puts it in the
    JSON body), so auth adapters attach only the User-Agent and cookies it is bound to.
    """

    header: str | None = "Authorization"
    scheme: str | None = "Bearer"


class Provider(ABC, Generic[ConfigT]):
    """One external service: how to acquire, validate and optionally revoke its secrets."""

    #: Registry key, also the ``provider`` argument of every task.
    name: ClassVar[str]
    #: ``light`` for plain HTTP, ``browser`` for anything that drives a browser.
    queue: ClassVar[Queue] = "light"
    #: Used when a credential does not set its own schedule.
    default_schedule: ClassVar[Schedule]
    #: The pydantic model of this provider's per-credential configuration.
    config_model: ClassVar[type[ProviderConfig]]
    #: Config fields that hold secrets (for display and validation messages).
    secret_fields: ClassVar[tuple[str, ...]] = ()
    #: How applications attach the token (used by the requests/httpx auth adapters).
    placement: ClassVar[TokenPlacement] = TokenPlacement()

    def __init__(
        self,
        config: ConfigT,
        *,
        session: requests.Session | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.session = session or requests.Session()
        self.clock = clock or SystemClock()

    @classmethod
    def parse_config(cls, raw: Any, where: str) -> ProviderConfig:
        """Validate ``raw`` against ``config_model``; errors name ``where``.config.field."""
        try:
            return cls.config_model.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(part) for part in first["loc"])
            field = ".".join(part for part in ("config", path) if part)
            field = f"{where}: {field}" if where else field
            raise InvalidConfig(f"{field}: {first['msg']}", field=field) from None

    @abstractmethod
    def acquire(self) -> Secret:
        """Obtain a new secret from the service. Raise a classified error on failure."""

    @abstractmethod
    def validate(self, secret: Secret) -> None:
        """Check that ``secret`` works; raise :class:`ValidationFailed` (or a RetryLater)."""

    def revoke(self, secret: Secret) -> None:
        """Invalidate ``secret`` at the service, if the service supports it."""

    def health(self) -> tuple[Health, ...]:
        """Probe what this provider depends on (a browser, FlareSolverr); never raises.

        ``tokenfleet status`` shows the results. Plain HTTP providers have nothing to probe.
        """
        return ()

    def health_key(self) -> Hashable:
        """Credentials whose providers share this key share one ``health`` probe.

        Override when many configs depend on one thing (one FlareSolverr for all tenants).
        """
        return (type(self), self.config)

    def close(self) -> None:
        """Release what the provider holds open between rotations (a browser session).

        The engine keeps one provider per credential and calls this when the worker
        process stops or the credential's config changes; it must not raise.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


#: Any provider class, whatever its config model (for registries and the engine).
AnyProvider = Provider[Any]
