"""Thin tasks: parse arguments, call the engine, retry transient faults, return small JSON.

Results carry status, provider, tenant, version, fingerprint and, on failure, the error
class and message; never a secret. Bad input is answered with ``status: rejected`` and
is not retried.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from tokenfleet.backoff import retry_delay
from tokenfleet.errors import InvalidArguments, TokenfleetError
from tokenfleet.queues import MAX_COUNTDOWN
from tokenfleet.runtime import Runtime
from tokenfleet.store import Claim

from .app import app, runtime


def _bind(
    signature_of: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    try:
        bound = inspect.signature(signature_of).bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidArguments(f"malformed arguments: {exc}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _rotate_signature(
    provider: str,
    tenant: str = "default",
    stale_version: int | None = None,
    trigger: str = "manual",
) -> None: ...


def _check_signature(provider: str, tenant: str = "default") -> None: ...


def _sweep_signature(provider: str | None = None) -> None: ...


def _sync_signature(
    provider: str, tenant: str = "default", only: list[int] | None = None
) -> None: ...


@app.task(name="tokenfleet.rotate", bind=True, max_retries=None)
def rotate(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Rotate a credential.

    ``rotate(provider, tenant="default", stale_version=None, trigger="manual")``
    """
    rt = runtime()
    retries = self.request.retries or 0
    try:
        params = _bind(_rotate_signature, args, kwargs)
    except InvalidArguments as exc:
        return rt.engine.reject("rotate", args, kwargs, exc, task_id=self.request.id).to_dict()
    final = retries >= rt.settings.max_retries
    try:
        outcome = rt.engine.rotate(
            params["provider"],
            params["tenant"],
            params["stale_version"],
            params["trigger"],
            attempt=retries + 1,
            final=final,
            task_id=self.request.id,
        )
    except SoftTimeLimitExceeded:
        # Audited by the engine; a slow provider is a transient fault like a timeout.
        if final:
            raise
        raise self.retry(countdown=_countdown(rt, retries, None), max_retries=None) from None
    if outcome.retryable and not final:
        countdown = _countdown(rt, retries, outcome.retry_after)
        raise self.retry(countdown=countdown, max_retries=None)
    if outcome.pending_sinks:
        sync_sinks.apply_async(
            kwargs={
                "provider": outcome.provider,
                "tenant": outcome.tenant,
                "only": list(outcome.pending_sinks),
            },
            countdown=_countdown(rt, 0, None),
        )
    return outcome.to_dict()


def _countdown(rt: Runtime, retries: int, retry_after: float | None) -> float:
    return retry_delay(
        retries,
        base=rt.settings.retry_base,
        cap=min(rt.settings.retry_cap, MAX_COUNTDOWN),
        retry_after=retry_after,
    )


@app.task(name="tokenfleet.check", bind=True)
def check(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Validate a credential's current version: ``check(provider, tenant="default")``."""
    rt = runtime()
    try:
        params = _bind(_check_signature, args, kwargs)
    except InvalidArguments as exc:
        return rt.engine.reject("check", args, kwargs, exc, task_id=self.request.id).to_dict()
    return rt.engine.check(params["provider"], params["tenant"], task_id=self.request.id).to_dict()


@app.task(name="tokenfleet.sweep", bind=True)
def sweep(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Enqueue a rotation for every due credential: ``sweep(provider=None)``."""
    rt = runtime()
    try:
        params = _bind(_sweep_signature, args, kwargs)
    except InvalidArguments as exc:
        return {"status": "rejected", "error_class": "InvalidArguments", "error": exc.message}

    def enqueue(claims: Iterable[Claim]) -> None:
        with app.producer_or_acquire() as producer:
            for claim in claims:
                app.send_task(
                    "tokenfleet.rotate",
                    kwargs={
                        "provider": claim.provider,
                        "tenant": claim.tenant,
                        "trigger": claim.trigger,
                    },
                    producer=producer,
                )

    try:
        claimed = rt.engine.sweep(params["provider"], enqueue=enqueue)
    except TokenfleetError as exc:
        return {
            "status": "rejected" if not exc.retryable else "failed",
            "provider": params["provider"],
            "error_class": type(exc).__name__,
            "error": exc.message,
        }
    return {"status": "swept", "provider": params["provider"], "claimed": len(claimed)}


@app.task(name="tokenfleet.sync_sinks", bind=True, max_retries=None)
def sync_sinks(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Write the current version to sinks: ``sync_sinks(provider, tenant, only=None)``.

    Enqueued by ``rotate`` when a sink failed; retried with backoff until the sinks take
    the value or the retries run out (each attempt is audited).
    """
    rt = runtime()
    retries = self.request.retries or 0
    try:
        params = _bind(_sync_signature, args, kwargs)
        outcome = rt.engine.sync_sinks(
            params["provider"],
            params["tenant"],
            params["only"],
            attempt=retries + 1,
            task_id=self.request.id,
        )
    except TokenfleetError as exc:
        return {"status": "rejected", "error_class": type(exc).__name__, "error": exc.message}
    if outcome.pending_sinks and retries < rt.settings.max_retries:
        raise self.retry(
            kwargs={**params, "only": list(outcome.pending_sinks)},
            countdown=_countdown(rt, retries, None),
            max_retries=None,
        )
    return outcome.to_dict()
