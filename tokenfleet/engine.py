"""The rotation engine: acquire → validate → promote, checks, and sweeps. No Celery here.

Tasks and tests drive :class:`Engine` directly. Every public method returns an
:class:`Outcome` (never raises for provider or input faults) and writes exactly one audit
row per attempt. The guarantees, in the order DESIGN.md lists them:

1. a secret is promoted only after ``provider.validate`` passed; any failure leaves
   ``current`` untouched;
2. one rotation per credential at a time (a Redis lock whose TTL outlives the task), and
   promotion fenced in SQL on the version seen before acquiring;
3. ``stale_version`` older than current returns the current version without a provider
   call, checked before and again after taking the lock (as botocore re-checks);
5. one audit row per attempt; 6. bad input is an error result that is not retryable.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import requests
from redis.exceptions import LockError, RedisError

from providers.base import AnyProvider, Health, Provider
from providers.registry import Registry

from .clock import Clock
from .errors import (
    CircuitOpen,
    FencedOut,
    GiveUp,
    InvalidArguments,
    InvalidConfig,
    RetryLater,
    RotationInProgress,
    SinkFailed,
    StoreUnavailable,
    TokenfleetError,
    UnknownProvider,
    error_kind,
)
from .hot import HotCache
from .queues import QUEUES
from .schedule import Schedule
from .secret import Secret
from .sinks import SinkWriter, parse_sinks
from .store import Attempt, Claim, CredentialState, SqlStore

log = logging.getLogger("tokenfleet.engine")

#: Tenant name of the dev sandbox's credentials (see tokenfleet.fleet).
SANDBOX_TENANT = "sandbox"

TRIGGERS = ("schedule", "expiry", "on_demand", "manual")


@dataclass(frozen=True)
class EngineConfig:
    """The engine's tunables (normally taken from :class:`~tokenfleet.settings.Settings`)."""

    timezone: str = "UTC"
    #: ``prod`` refuses sandbox credentials (tenant ``sandbox``) outright.
    env: str = "dev"
    lock_wait: float = 10.0
    circuit_cooldown: float = 3600.0
    retry_cap: float = 600.0
    #: Rotate this long before ``expires_at`` (at most half the secret's lifetime).
    expiry_margin: float = 900.0
    sweep_batch: int = 500
    lock_ttls: Mapping[str, float] = field(
        default_factory=lambda: {name: limits.lock_ttl for name, limits in QUEUES.items()}
    )


@dataclass(frozen=True)
class Outcome:
    """The result of one engine call; ``to_dict`` is the task result (never a secret)."""

    status: str
    provider: str
    tenant: str
    version: int | None = None
    fingerprint: str | None = None
    error: TokenfleetError | None = None
    #: Indexes of sinks that failed and should be retried (the promotion stands).
    pending_sinks: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def retryable(self) -> bool:
        return isinstance(self.error, RetryLater)

    @property
    def retry_after(self) -> float | None:
        return getattr(self.error, "retry_after", None)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "status": self.status,
            "provider": self.provider,
            "tenant": self.tenant,
            "version": self.version,
            "fingerprint": self.fingerprint,
        }
        if self.error is not None:
            result["error_class"] = error_kind(self.error)
            result["error"] = self.error.message
            result["retryable"] = self.retryable
        if self.pending_sinks:
            result["pending_sinks"] = list(self.pending_sinks)
        return result


class Engine:
    """Rotates and checks credentials; holds injected store, cache, registry and clock."""

    def __init__(
        self,
        *,
        store: SqlStore,
        hot: HotCache,
        registry: Registry,
        clock: Clock,
        config: EngineConfig | None = None,
        session: requests.Session | None = None,
        rng: random.Random | None = None,
        sinks: SinkWriter | None = None,
    ) -> None:
        self.store = store
        self.hot = hot
        self.registry = registry
        self.clock = clock
        self.config = config or EngineConfig()
        self.session = session or requests.Session()
        self.rng = rng or random.Random()
        self.sinks = sinks or SinkWriter(hot.redis)
        # One provider per credential, kept between rotations: a browser provider holds a
        # browser (or FlareSolverr session) that already passed the site's challenge.
        self._providers: dict[tuple[str, str], _Kept] = {}
        self._providers_lock = threading.Lock()

    def close(self) -> None:
        """Close every provider this engine kept (browser sessions), then the sinks."""
        with self._providers_lock:
            kept = [k.instance for k in self._providers.values()]
            self._providers.clear()
        for instance in kept:
            _close_quietly(instance)
        self.sinks.close()

    # -- public API ----------------------------------------------------------------

    def rotate(
        self,
        provider: Any,
        tenant: Any = "default",
        stale_version: Any = None,
        trigger: Any = "manual",
        *,
        attempt: int = 1,
        final: bool = True,
        task_id: str | None = None,
    ) -> Outcome:
        """Rotate one credential unless ``stale_version`` shows it is already fresh.

        ``final`` says whether a transient failure will be retried by the caller; only a
        final one reschedules the credential (so the sweep tries again later).
        """
        started = self.clock.now()
        t0 = self.clock.monotonic()
        base = Attempt(
            provider=str(provider)[:64],
            tenant=str(tenant)[:200],
            action="rotate",
            trigger=str(trigger)[:16],
            outcome="",
            started_at=started,
            duration_ms=0.0,
            attempt=attempt,
            task_id=task_id,
        )
        state: CredentialState | None = None
        try:
            _check_args(provider, tenant, stale_version, trigger)
            cls = self.registry.get(provider)
            self._refuse_sandbox_in_prod(tenant)
            lock = self.hot.lock(provider, tenant, self.config.lock_ttls[cls.queue])
            blocking = trigger not in ("schedule", "expiry")
            try:
                # Uncontended (the usual case): the read under the lock is the only one.
                got = lock.acquire(blocking=False)
                if not got and stale_version is not None:
                    # Someone is rotating: the 401 fast path returns without waiting when
                    # the version this caller saw has already been replaced.
                    state = self.store.require(provider, tenant)
                    base = replace(base, version_before=state.current_version)
                    fresh = self._fresh(state, stale_version)
                    if fresh is not None:
                        return self._finish_plain(base, t0, fresh, state)
                    self._check_circuit(state, trigger, started)
                if not got and blocking:
                    got = lock.acquire(blocking=True, blocking_timeout=self.config.lock_wait)
            except RedisError as exc:
                raise StoreUnavailable(f"redis unavailable ({type(exc).__name__})") from None
            if not got:
                state = state or self.store.require(provider, tenant)
                base = replace(base, version_before=state.current_version)
                if not blocking:
                    busy = Outcome("busy", provider, tenant, state.current_version)
                    return self._finish_plain(base, t0, busy, state)
                raise RotationInProgress(
                    f"{provider}/{tenant} is being rotated by another worker; "
                    f"waited {self.config.lock_wait:g}s"
                )
            try:
                # Read under the lock: a holder we waited for may have done our work.
                state = self.store.require(provider, tenant)
                base = replace(base, version_before=state.current_version)
                fresh = self._fresh(state, stale_version)
                if fresh is not None:
                    return self._finish_plain(base, t0, fresh, state)
                if not state.enabled and trigger in ("schedule", "expiry"):
                    outcome = Outcome("disabled", provider, tenant, state.current_version)
                    return self._finish_plain(base, t0, outcome, state)
                self._check_circuit(state, trigger, started)
                return self._rotate_locked(cls, state, base, t0, started)
            finally:
                try:
                    lock.release()
                except LockError:
                    log.warning("rotation lock of %s/%s expired before release", provider, tenant)
                except RedisError:
                    log.warning("could not release rotation lock of %s/%s", provider, tenant)
        except TokenfleetError as exc:
            return self._finish_failed(base, t0, exc, state, final=final)
        except BaseException as exc:
            self._audit_unexpected(base, t0, exc, state)
            raise

    def check(
        self, provider: Any, tenant: Any = "default", *, task_id: str | None = None
    ) -> Outcome:
        """Validate the current version without replacing it.

        A version the provider rejects makes the credential due at once, so the next
        sweep rotates it.
        """
        started = self.clock.now()
        t0 = self.clock.monotonic()
        base = Attempt(
            provider=str(provider)[:64],
            tenant=str(tenant)[:200],
            action="check",
            trigger="manual",
            outcome="",
            started_at=started,
            duration_ms=0.0,
            task_id=task_id,
        )
        state: CredentialState | None = None
        try:
            _check_args(provider, tenant, None, "manual")
            cls = self.registry.get(provider)
            state = self.store.require(provider, tenant)
            current = self.store.current(state.id)
            if current is None:
                return self._finish_plain(base, t0, Outcome("empty", provider, tenant), state)
            version, secret = current
            base = replace(base, version_before=version, fingerprint=secret.fingerprint)
            instance = self._provider(cls, state)
            try:
                instance.validate(secret)
            except GiveUp as exc:
                outcome = Outcome("invalid", provider, tenant, version, secret.fingerprint, exc)
                attempt = self._attempt(base, t0, outcome)
                self.store.record(attempt, credential_id=state.id, next_due_at=started)
                log.warning("%s/%s v%d failed its check: %s", provider, tenant, version, exc)
                return outcome
            outcome = Outcome("valid", provider, tenant, version, secret.fingerprint)
            return self._finish_plain(base, t0, outcome, state)
        except TokenfleetError as exc:
            return self._finish_failed(base, t0, exc, state, final=True, counts=False)
        except BaseException as exc:
            self._audit_unexpected(base, t0, exc, state)
            raise

    def sweep(
        self,
        provider: Any = None,
        *,
        enqueue: Callable[[Iterable[Claim]], None],
        max_batches: int = 20,
    ) -> list[Claim]:
        """Claim every due credential (of ``provider``, or all) and hand them to ``enqueue``.

        Safe to run twice at once or to skip: claimed rows get their next due time in
        the same transaction, and unclaimed ones stay due.
        """
        if provider is not None:
            self.registry.get(provider)
            names = [provider]
        else:
            names = self.registry.names()
        now = self.clock.now()
        claimed: list[Claim] = []
        for _ in range(max_batches):
            batch = self.store.claim_due(
                now,
                providers=names,
                limit=self.config.sweep_batch,
                reschedule=lambda state: self._reschedule_claim(state, now),
                enqueue=enqueue,
            )
            claimed.extend(batch)
            if len(batch) < self.config.sweep_batch:
                break
        if claimed:
            log.info("sweep claimed %d due credential(s)", len(claimed))
        return claimed

    def reject(
        self,
        action: str,
        args: Any,
        kwargs: Any,
        exc: TokenfleetError,
        *,
        task_id: str | None = None,
    ) -> Outcome:
        """Audit and answer a call whose arguments could not even be parsed."""
        provider = kwargs.get("provider") if isinstance(kwargs, dict) else None
        if provider is None and args:
            provider = args[0]
        tenant = kwargs.get("tenant", "default") if isinstance(kwargs, dict) else "default"
        base = Attempt(
            provider=str(provider)[:64],
            tenant=str(tenant)[:200],
            action=action,
            trigger="manual",
            outcome="",
            started_at=self.clock.now(),
            duration_ms=0.0,
            task_id=task_id,
        )
        return self._finish_failed(base, self.clock.monotonic(), exc, None, final=True)

    # -- the locked part of a rotation ---------------------------------------------

    def _rotate_locked(
        self,
        cls: type[AnyProvider],
        state: CredentialState,
        base: Attempt,
        t0: float,
        started: datetime,
    ) -> Outcome:
        instance = self._provider(cls, state)
        secret = instance.acquire()
        version = self.store.add_pending(state.id, secret, self.clock.now())
        base = replace(base, version_after=version, fingerprint=secret.fingerprint)
        try:
            instance.validate(secret)
        except TokenfleetError:
            self.store.discard(state.id, version)
            raise
        now = self.clock.now()
        outcome = Outcome("rotated", state.provider, state.tenant, version, secret.fingerprint)
        self.store.promote(
            state.id,
            version,
            seen_version=state.current_version,
            now=now,
            expires_at=secret.expires_at,
            next_due_at=self._next_due(cls, state, now, secret),
            attempt=self._attempt(base, t0, outcome),
        )
        log.info(
            "rotated %s/%s v%d -> v%d fp=%s trigger=%s",
            state.provider,
            state.tenant,
            state.current_version,
            version,
            secret.fingerprint,
            base.trigger,
        )
        self._publish(state, version, secret, now)
        pending = self._write_sinks(state, version, secret, base)
        return replace(outcome, pending_sinks=pending)

    def _publish(self, state: CredentialState, version: int, secret: Secret, now: datetime) -> None:
        try:
            self.hot.put(state.provider, state.tenant, version, secret, now)
        except StoreUnavailable as exc:
            # SQL already holds the promotion; readers fall back to it.
            log.warning(
                "promoted %s/%s v%d but could not update Redis: %s",
                state.provider,
                state.tenant,
                version,
                exc,
            )

    def sync_sinks(
        self,
        provider: Any,
        tenant: Any = "default",
        only: Iterable[int] | None = None,
        *,
        attempt: int = 1,
        task_id: str | None = None,
    ) -> Outcome:
        """Write the *current* version to the credential's sinks (all, or ``only`` these).

        Used to retry failed sinks and to fill newly declared ones. Always the current
        version: if a newer one was promoted since a sink failed, the newer one is written.
        """
        _check_args(provider, tenant, None, "manual")
        self.registry.get(provider)
        state = self.store.require(provider, tenant)
        current = self.store.current(state.id)
        if current is None:
            return Outcome("empty", provider, tenant)
        version, secret = current
        base = Attempt(
            provider=provider,
            tenant=tenant,
            action="sink",
            trigger="manual",
            outcome="",
            started_at=self.clock.now(),
            duration_ms=0.0,
            version_before=version,
            version_after=version,
            fingerprint=secret.fingerprint,
            attempt=attempt,
            task_id=task_id,
        )
        pending = self._write_sinks(state, version, secret, base, only)
        status = "synced" if not pending else "failed"
        return Outcome(
            status,
            provider,
            tenant,
            version,
            secret.fingerprint,
            SinkFailed(f"{len(pending)} sink(s) failed") if pending else None,
            pending,
        )

    def _write_sinks(
        self,
        state: CredentialState,
        version: int,
        secret: Secret,
        base: Attempt,
        only: Iterable[int] | None = None,
    ) -> tuple[int, ...]:
        """Write one version to all sinks (or ``only`` these); audit each; return failures."""
        raw = self.store.sinks(state)
        if not raw:
            return ()
        specs = parse_sinks(raw)
        indexes = range(len(specs)) if only is None else [i for i in only if 0 <= i < len(specs)]
        failed = []
        for index in indexes:
            spec = specs[index]
            t0 = self.clock.monotonic()
            error: TokenfleetError | None = None
            try:
                self.sinks.write(spec, secret, self.clock.now())
            except SinkFailed as exc:
                error = exc
                failed.append(index)
                log.warning("sink of %s/%s failed: %s", state.provider, state.tenant, exc)
            attempt = replace(
                base,
                action="sink",
                outcome="failed" if error else "synced",
                started_at=self.clock.now(),
                duration_ms=round((self.clock.monotonic() - t0) * 1000, 3),
                version_after=version,
                fingerprint=secret.fingerprint,
                error_class=error_kind(error) if error else None,
                error_message=error.message if error else None,
                detail=f"sink {index}: {spec.label()}",
            )
            try:
                self.store.record(attempt)
            except StoreUnavailable:
                log.error(
                    "could not audit sink %s of %s/%s", spec.label(), state.provider, state.tenant
                )
        return tuple(failed)

    # -- helpers -------------------------------------------------------------------

    def _provider(self, cls: type[AnyProvider], state: CredentialState) -> AnyProvider:
        """The kept provider of this credential, rebuilt (and the old one closed) when its
        class or config changed."""
        key = (state.provider, state.tenant)
        with self._providers_lock:
            kept = self._providers.get(key)
        if kept is not None and type(kept.instance) is cls and kept.config_enc == state.config_enc:
            # Same stored bytes: skip decrypting and validating the config again.
            return kept.instance
        where = f"{state.provider}/{state.tenant}"
        config = cls.parse_config(self.store.config(state), where)
        with self._providers_lock:
            kept = self._providers.get(key)
            if kept is not None and type(kept.instance) is cls and kept.config == config:
                # Re-encrypted (Fernet is randomised) but the same config: keep the provider.
                self._providers[key] = replace(kept, config_enc=state.config_enc)
                return kept.instance
            instance = cls(config, session=self.session, clock=self.clock)
            self._providers[key] = _Kept(state.config_enc, config, instance)
        if kept is not None:
            _close_quietly(kept.instance)
        return instance

    def health(self) -> dict[tuple[str, str], tuple[Health, ...]]:
        """Probe what each enabled credential's provider depends on (FlareSolverr, Chromium).

        One probe per distinct ``health_key``, however many credentials share it. Builds
        throwaway providers, so a worker's browser session is never disturbed. Credentials
        whose provider has nothing to probe are left out.
        """
        probed: dict[Hashable, tuple[Health, ...]] = {}
        out: dict[tuple[str, str], tuple[Health, ...]] = {}
        for state in self.store.credentials():
            if not state.enabled:
                continue
            try:
                cls = self.registry.get(state.provider)
                config = cls.parse_config(self.store.config(state), state.provider)
            except (InvalidConfig, UnknownProvider):
                continue
            if not _overrides(cls, "health"):
                continue
            instance = cls(config, session=self.session, clock=self.clock)
            try:
                key = instance.health_key()
                if key not in probed:
                    probed[key] = instance.health()
            finally:
                _close_quietly(instance)
            out[(state.provider, state.tenant)] = probed[key]
        return out

    def _refuse_sandbox_in_prod(self, tenant: str) -> None:
        if self.config.env == "prod" and tenant == SANDBOX_TENANT:
            raise InvalidConfig(
                f"tenant {SANDBOX_TENANT!r} is the dev sandbox and is never rotated in prod mode",
                field="env",
            )

    def _fresh(self, state: CredentialState, stale_version: int | None) -> Outcome | None:
        if stale_version is not None and state.current_version > stale_version:
            return Outcome("fresh", state.provider, state.tenant, state.current_version)
        return None

    def _check_circuit(self, state: CredentialState, trigger: str, now: datetime) -> None:
        until = state.circuit_open_until
        # Ops asking by hand get their attempt; automatic triggers respect the circuit.
        if until is not None and now < until and trigger != "manual":
            raise CircuitOpen(
                f"{state.provider}/{state.tenant}: circuit open until {until.isoformat()} "
                f"after {state.last_error or 'a permanent failure'}; fix the config or "
                "rotate manually"
            )

    def schedule_of(self, cls: type[AnyProvider], state: CredentialState) -> Schedule:
        return state.schedule or cls.default_schedule

    def _next_due(
        self, cls: type[AnyProvider], state: CredentialState, now: datetime, secret: Secret
    ) -> datetime:
        due = self.schedule_of(cls, state).next_due(now, self.config.timezone, self.rng)
        if secret.expires_at is not None:
            lifetime = (secret.expires_at - now).total_seconds()
            lead = min(self.config.expiry_margin, max(lifetime, 0) / 2)
            due = min(due, secret.expires_at - timedelta(seconds=lead))
        return due

    def _reschedule_claim(self, state: CredentialState, now: datetime) -> tuple[datetime, str]:
        cls = self.registry.get(state.provider)
        due = self.schedule_of(cls, state).next_due(now, self.config.timezone, self.rng)
        trigger = "schedule"
        if state.expires_at is not None:
            if state.expires_at - timedelta(seconds=self.config.expiry_margin) <= now:
                trigger = "expiry"
        return due, trigger

    def _attempt(self, base: Attempt, t0: float, outcome: Outcome) -> Attempt:
        error = outcome.error
        return replace(
            base,
            outcome=outcome.status,
            duration_ms=round((self.clock.monotonic() - t0) * 1000, 3),
            version_after=outcome.version if outcome.version is not None else base.version_after,
            fingerprint=outcome.fingerprint or base.fingerprint,
            error_class=error_kind(error) if error else None,
            error_message=error.message if error else None,
        )

    def _finish_plain(
        self, base: Attempt, t0: float, outcome: Outcome, state: CredentialState | None
    ) -> Outcome:
        attempt = self._attempt(base, t0, outcome)
        self.store.record(attempt, credential_id=state.id if state else None)
        return outcome

    def _audit_unexpected(
        self, base: Attempt, t0: float, exc: BaseException, state: CredentialState | None
    ) -> None:
        """Audit an attempt cut short by something outside the error tree, then let it rise.

        That is a provider bug or the task's time limit; the message stays generic because
        a foreign exception's text may quote anything, secrets included.
        """
        kind = type(exc).__name__
        version = state.current_version if state else None
        attempt = replace(
            base,
            outcome="failed",
            duration_ms=round((self.clock.monotonic() - t0) * 1000, 3),
            error_class=kind[:64],
            error_message=f"unexpected {kind} during {base.action}; see the worker log",
            version_after=version,
        )
        try:
            self.store.record(
                attempt, credential_id=state.id if state else None, failed=state is not None
            )
        except Exception:
            log.error(
                "could not audit interrupted %s of %s/%s", base.action, base.provider, base.tenant
            )
        log.error("%s %s/%s interrupted by %s", base.action, base.provider, base.tenant, kind)

    def _finish_failed(
        self,
        base: Attempt,
        t0: float,
        exc: TokenfleetError,
        state: CredentialState | None,
        *,
        final: bool,
        counts: bool = True,
    ) -> Outcome:
        provider, tenant = base.provider, base.tenant
        version = state.current_version if state else None
        status = "failed" if state is not None or isinstance(exc, RetryLater) else "rejected"
        outcome = Outcome(status, provider, tenant, version, None, exc)
        attempt = self._attempt(base, t0, outcome)
        attempt = replace(attempt, version_after=version)
        now = self.clock.now()
        kwargs: dict[str, Any] = {}
        if state is not None and counts:
            kwargs["credential_id"] = state.id
            kwargs["failed"] = not isinstance(exc, FencedOut | CircuitOpen)
            if isinstance(exc, GiveUp) and not isinstance(exc, FencedOut | CircuitOpen):
                until = now + timedelta(seconds=self.config.circuit_cooldown)
                kwargs["circuit_open_until"] = until
                kwargs["next_due_at"] = until
            elif isinstance(exc, RetryLater) and final:
                kwargs["next_due_at"] = now + timedelta(seconds=self.config.retry_cap)
        elif state is not None:
            kwargs["credential_id"] = state.id
        try:
            self.store.record(attempt, **kwargs)
        except StoreUnavailable:
            log.error("could not audit failed %s of %s/%s", base.action, provider, tenant)
        log_fn = log.warning if isinstance(exc, RetryLater) else log.error
        log_fn(
            "%s %s/%s failed: %s: %s", base.action, provider, tenant, error_kind(exc), exc.message
        )
        return outcome


def _check_args(provider: Any, tenant: Any, stale_version: Any, trigger: Any) -> None:
    if not isinstance(provider, str) or not provider or len(provider) > 64:
        raise InvalidArguments(f"provider must be a non-empty string, got {provider!r:.80}")
    if not isinstance(tenant, str) or not tenant or len(tenant) > 200:
        raise InvalidArguments(f"tenant must be a non-empty string, got {tenant!r:.80}")
    if stale_version is not None and (
        isinstance(stale_version, bool) or not isinstance(stale_version, int) or stale_version < 0
    ):
        raise InvalidArguments(
            f"stale_version must be a non-negative integer or null, got {stale_version!r:.80}"
        )
    if trigger not in TRIGGERS:
        raise InvalidArguments(f"trigger must be one of {', '.join(TRIGGERS)}, got {trigger!r:.80}")


def _close_quietly(instance: AnyProvider) -> None:
    try:
        instance.close()
    except Exception:  # closing is best effort; a worker must still stop
        log.warning("could not close provider %r", instance, exc_info=True)


def _overrides(cls: type[AnyProvider], method: str) -> bool:
    return getattr(cls, method) is not getattr(Provider, method)


@dataclass(frozen=True)
class _Kept:
    """A credential's provider kept between rotations, with the config it was built from."""

    config_enc: bytes
    config: Any
    instance: AnyProvider
