"""Every error tokenfleet raises, arranged by what the caller should do about it.

::

    TokenfleetError                 base; never raised itself
    ├── RetryLater                  transient: try again after a backoff
    │   ├── ProviderTimeout         the provider did not answer in time
    │   ├── ProviderUnavailable     connection refused/reset, HTTP 5xx
    │   ├── RateLimited             HTTP 429; carries ``retry_after`` seconds
    │   ├── RotationInProgress      another worker holds the credential's lock
    │   ├── StoreUnavailable        Redis or the database is unreachable
    │   ├── SinkFailed              a sink could not be written; the promotion stands
    │   └── FleetTimeout            no worker answered within the caller's wait
    ├── GiveUp                      permanent for this secret: do not retry, open the circuit
    │   ├── CredentialsRejected     the provider refused the login (wrong password, …)
    │   ├── MalformedResponse       the answer is not what the provider documents (HTML 200, …)
    │   ├── ValidationFailed        an acquired secret did not pass the provider's check
    │   ├── CircuitOpen             earlier permanent failures: the credential is parked
    │   └── FencedOut               a newer version was promoted meanwhile; this one is dropped
    └── FixConfig                   bad input: a person must change something; never retried
        ├── UnknownProvider         no provider by that name in the registry
        ├── UnknownCredential       no such (provider, tenant) in the store
        ├── InvalidArguments        a task or call got malformed arguments
        └── InvalidConfig           configuration failed validation; ``field`` names the path

Messages never contain secret values; providers pass only the provider's own error text.
Every error pickles with its attributes, because errors cross Celery's process boundaries.
"""

from __future__ import annotations

from typing import Any


class TokenfleetError(Exception):
    """Base of every tokenfleet error; ``message`` is safe to log and show."""

    #: A short machine-readable kind, stable across versions (the class name).
    retryable: bool = False

    def __init__(self, message: str = "", **attrs: Any) -> None:
        super().__init__(message)
        self.message = message
        for key, value in attrs.items():
            setattr(self, key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default reduce passes only ``args`` and would drop keyword attributes.
        return (self.__class__, (self.message,), self.__dict__.copy())

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class RetryLater(TokenfleetError):
    """A transient fault: the same call may succeed later, after a backoff."""

    retryable = True
    retry_after: float | None = None


class ProviderTimeout(RetryLater):
    """The provider did not answer within the configured timeout."""


class ProviderUnavailable(RetryLater):
    """The provider could not be reached or answered with a server error (5xx)."""


class RateLimited(RetryLater):
    """The provider asked us to slow down (HTTP 429); honour ``retry_after`` seconds."""


class RotationInProgress(RetryLater):
    """Another worker is rotating this credential right now."""


class StoreUnavailable(RetryLater):
    """Redis or the database could not be reached."""


class SinkFailed(RetryLater):
    """A sink (Redis key, SQL row, env file, file) could not be written; retried later."""


class FleetTimeout(RetryLater):
    """No worker finished the request within the caller's wait (is a worker running?)."""


class GiveUp(TokenfleetError):
    """A permanent failure for this secret: retrying will not help; the circuit opens."""


class CredentialsRejected(GiveUp):
    """The provider refused the configured login; someone must fix the credentials."""


class MalformedResponse(GiveUp):
    """The provider answered in a shape it does not document (for example HTML with 200)."""


class ValidationFailed(GiveUp):
    """A freshly acquired secret did not pass the provider's validation call."""


class CircuitOpen(GiveUp):
    """The credential's circuit is open after permanent failures; no provider call was made."""


class FencedOut(GiveUp):
    """Another rotation promoted a newer version first; this attempt's secret was dropped."""


class FixConfig(TokenfleetError):
    """Bad input or configuration: a person must change something; never retried."""


class UnknownProvider(FixConfig):
    """No provider of that name is registered."""


class UnknownCredential(FixConfig):
    """No credential with that (provider, tenant) is configured."""


class InvalidArguments(FixConfig):
    """A task or API call got arguments of the wrong shape."""


class InvalidConfig(FixConfig):
    """Configuration failed validation; ``field`` is the dotted path of the offending field."""

    field: str | None = None


def error_kind(exc: BaseException) -> str:
    """Return the name recorded in audit rows and task results for ``exc``."""
    return type(exc).__name__
