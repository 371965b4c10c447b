"""The durable store: credentials, encrypted secret versions and the audit log in SQL.

SQL is the source of truth. Every write that changes which version is current goes
through :meth:`SqlStore.promote`, which is fenced on ``credentials.current_version`` so a
worker that lost its lock cannot overwrite a newer version (invariant 2). Secrets and
configs are encrypted with the injected :class:`~tokenfleet.crypto.Cipher` before they
reach the database; nothing here logs a value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    Table,
    Update,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .crypto import Cipher
from .errors import FencedOut, StoreUnavailable, UnknownCredential
from .models import AuditEntry, Credential, SecretVersion, UTCDateTime
from .schedule import Schedule
from .secret import Secret

CREDENTIALS: Table = cast(Table, Credential.__table__)
VERSIONS: Table = cast(Table, SecretVersion.__table__)
AUDIT: Table = cast(Table, AuditEntry.__table__)

# -- the rotation path's statements, prebuilt once (cache keys are computed once too) -----

_CREDENTIAL = select(CREDENTIALS).where(
    CREDENTIALS.c.provider == bindparam("p_provider"),
    CREDENTIALS.c.tenant == bindparam("p_tenant"),
)

#: The next version number is the highest so far plus one, in the same statement.
_ADD_PENDING = (
    insert(VERSIONS)
    .values(
        credential_id=bindparam("p_cid"),
        version=select(func.coalesce(func.max(VERSIONS.c.version), 0) + 1)
        .where(VERSIONS.c.credential_id == bindparam("p_cid"))
        .scalar_subquery(),
        stage="pending",
        payload_enc=bindparam("p_payload"),
        fingerprint=bindparam("p_fingerprint"),
        expires_at=bindparam("p_expires_at"),
        created_at=bindparam("p_now"),
    )
    .returning(VERSIONS.c.version)
)

#: The fenced version bump: matches no row unless ``current_version`` is still the one seen.
_FENCE = (
    update(CREDENTIALS)
    .where(
        CREDENTIALS.c.id == bindparam("p_cid"),
        CREDENTIALS.c.current_version == bindparam("p_seen"),
    )
    .values(
        current_version=bindparam("p_version"),
        expires_at=bindparam("p_expires_at"),
        next_due_at=bindparam("p_next_due_at"),
        circuit_open_until=None,
        consecutive_failures=0,
        last_outcome=bindparam("p_outcome"),
        last_error=None,
        last_attempt_at=bindparam("p_now"),
        updated_at=bindparam("p_now"),
    )
)


def _shuffle(which_credential: Any) -> Update:
    """new → current, current → previous, previous → retired, in one statement."""
    is_new = VERSIONS.c.version == bindparam("p_version")
    now = bindparam("p_now", type_=UTCDateTime())
    return (
        update(VERSIONS)
        .where(which_credential, or_(is_new, VERSIONS.c.stage.in_(("current", "previous"))))
        .values(
            stage=case(
                (is_new, "current"),
                (VERSIONS.c.stage == "current", "previous"),
                else_="retired",
            ),
            promoted_at=case((is_new, now), else_=VERSIONS.c.promoted_at),
        )
    )


_AUDIT_COLUMNS = [column for column in AUDIT.c if column.name != "id"]
_AUDIT_FROM_PARAMS = insert(AUDIT).values(
    {column.name: bindparam(f"a_{column.name}") for column in _AUDIT_COLUMNS}
)


def _pg_promote() -> Select[tuple[int]]:
    fenced = _FENCE.returning(CREDENTIALS.c.id).cte("fenced")
    shuffled = (
        _shuffle(VERSIONS.c.credential_id.in_(select(fenced.c.id)))
        .returning(VERSIONS.c.id)
        .cte("shuffled")
    )
    audit_row = select(
        *[sql_cast(bindparam(f"a_{c.name}", type_=c.type), c.type) for c in _AUDIT_COLUMNS]
    ).select_from(fenced)
    audited = (
        insert(AUDIT)
        .from_select([c.name for c in _AUDIT_COLUMNS], audit_row)
        .returning(AUDIT.c.id)
        .cte("audited")
    )
    # Data-modifying CTEs run to completion whether or not the main query reads them.
    return select(func.count()).select_from(fenced).add_cte(shuffled, audited)


_PG_PROMOTE = _pg_promote()


@dataclass(frozen=True)
class CredentialState:
    """A read-only snapshot of a credential row (config stays encrypted until asked)."""

    id: int
    provider: str
    tenant: str
    enabled: bool
    schedule: Schedule | None
    current_version: int
    next_due_at: datetime | None
    expires_at: datetime | None
    circuit_open_until: datetime | None
    consecutive_failures: int
    last_outcome: str | None
    last_error: str | None
    last_attempt_at: datetime | None
    config_enc: bytes
    sinks_enc: bytes | None = None

    def __repr__(self) -> str:
        return (
            f"CredentialState({self.provider}/{self.tenant} v{self.current_version} "
            f"due={self.next_due_at})"
        )


@dataclass(frozen=True)
class Attempt:
    """What the engine records about one attempt, in the same transaction as its effect."""

    provider: str
    tenant: str
    action: str
    trigger: str
    outcome: str
    started_at: datetime
    duration_ms: float
    version_before: int | None = None
    version_after: int | None = None
    fingerprint: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    detail: str | None = None
    attempt: int = 1
    task_id: str | None = None


@dataclass(frozen=True)
class Claim:
    """A due credential handed out by :meth:`SqlStore.claim_due`."""

    provider: str
    tenant: str
    trigger: str


_UNSET: Any = object()


def _state(row: Any) -> CredentialState:
    return CredentialState(
        id=row.id,
        provider=row.provider,
        tenant=row.tenant,
        enabled=row.enabled,
        schedule=Schedule.model_validate_json(row.schedule) if row.schedule else None,
        current_version=row.current_version,
        next_due_at=row.next_due_at,
        expires_at=row.expires_at,
        circuit_open_until=row.circuit_open_until,
        consecutive_failures=row.consecutive_failures,
        last_outcome=row.last_outcome,
        last_error=row.last_error,
        last_attempt_at=row.last_attempt_at,
        config_enc=row.config_enc,
        sinks_enc=row.sinks_enc,
    )


class SqlStore:
    """Credentials, versions and audit rows in SQL; encrypts everything secret."""

    def __init__(self, engine: Engine, cipher: Cipher) -> None:
        self.engine = engine
        self.cipher = cipher
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # Single statements on the rotation path need no transaction on Postgres: one
        # round trip, no BEGIN/COMMIT. SQLite keeps its (local, cheap) transactions.
        self._autocommit = engine.dialect.name == "postgresql"

    def session(self) -> Session:
        return self._sessions()

    def _run(self, fn: Callable[[Session], Any]) -> Any:
        """Run ``fn`` in an ORM session transaction (the paths that are not hot)."""
        return self._retry(lambda: self._in_session(fn))

    def _in_session(self, fn: Callable[[Session], Any]) -> Any:
        with self._sessions.begin() as session:
            return fn(session)

    def _write(self, fn: Callable[[Connection], Any]) -> Any:
        """Run ``fn`` on a Core connection inside one transaction (the rotation path)."""

        def attempt() -> Any:
            with self.engine.begin() as conn:
                return fn(conn)

        return self._retry(attempt)

    def _single(self, fn: Callable[[Connection], Any]) -> Any:
        """Run ``fn``, which issues ONE statement: autocommit on Postgres (a statement is
        atomic by itself, and BEGIN/COMMIT would cost two more round trips), a
        transaction on SQLite."""

        def attempt() -> Any:
            if not self._autocommit:
                with self.engine.begin() as conn:
                    return fn(conn)
            with self.engine.connect() as conn:
                return fn(conn.execution_options(isolation_level="AUTOCOMMIT"))

        return self._retry(attempt)

    @staticmethod
    def _retry(attempt: Callable[[], Any]) -> Any:
        # No pool pre-ping (a round trip per checkout); instead, a connection found dead
        # is invalidated by SQLAlchemy and the operation is tried once more on a new one.
        for tries_left in (1, 0):
            try:
                return attempt()
            except DBAPIError as exc:
                if exc.connection_invalidated and tries_left:
                    continue
                if isinstance(exc, OperationalError) or exc.connection_invalidated:
                    raise StoreUnavailable(
                        f"database unavailable ({type(exc.orig).__name__})"
                    ) from None
                raise
        raise AssertionError("unreachable")

    # -- credentials ---------------------------------------------------------------

    def get(self, provider: str, tenant: str) -> CredentialState | None:
        def read(conn: Connection) -> CredentialState | None:
            row = conn.execute(_CREDENTIAL, {"p_provider": provider, "p_tenant": tenant})
            found = row.one_or_none()
            return _state(found) if found else None

        result: CredentialState | None = self._single(read)
        return result

    def require(self, provider: str, tenant: str) -> CredentialState:
        state = self.get(provider, tenant)
        if state is None:
            raise UnknownCredential(
                f"no credential {provider}/{tenant} is configured "
                "(add it to the fleet file or with 'tokenfleet credentials add')"
            )
        return state

    def credentials(self, provider: str | None = None) -> list[CredentialState]:
        def read(session: Session) -> list[CredentialState]:
            query = select(Credential).order_by(Credential.provider, Credential.tenant)
            if provider is not None:
                query = query.where(Credential.provider == provider)
            return [_state(row) for row in session.scalars(query)]

        result: list[CredentialState] = self._run(read)
        return result

    def config(self, state: CredentialState) -> dict[str, Any]:
        """Decrypt a credential's provider config."""
        data: dict[str, Any] = json.loads(self.cipher.decrypt(state.config_enc))
        return data

    def sinks(self, state: CredentialState) -> list[dict[str, Any]]:
        """Decrypt a credential's sink declarations (plain data; see tokenfleet.sinks)."""
        if not state.sinks_enc:
            return []
        data: list[dict[str, Any]] = json.loads(self.cipher.decrypt(state.sinks_enc))
        return data

    def upsert(
        self,
        provider: str,
        tenant: str,
        config: dict[str, Any],
        schedule: Schedule | None,
        *,
        enabled: bool,
        now: datetime,
        sinks: list[dict[str, Any]] | None = None,
    ) -> str:
        """Create or update a credential; return ``created``, ``updated`` or ``unchanged``.

        A new credential is due at once (it has no version yet). A changed config closes
        the circuit and makes it due at once, since the fix may be what was missing.
        ``sinks`` of ``None`` keeps the stored sinks; ``[]`` removes them.
        """
        schedule_json = schedule.model_dump_json() if schedule else None

        def write(session: Session) -> str:
            row = session.scalars(
                select(Credential).where(
                    Credential.provider == provider, Credential.tenant == tenant
                )
            ).one_or_none()
            if row is None:
                session.add(
                    Credential(
                        provider=provider,
                        tenant=tenant,
                        enabled=enabled,
                        config_enc=self.cipher.encrypt(json.dumps(config).encode()),
                        sinks_enc=self.cipher.encrypt(json.dumps(sinks).encode())
                        if sinks
                        else None,
                        schedule=schedule_json,
                        current_version=0,
                        next_due_at=now,
                        consecutive_failures=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
                return "created"
            old_config = json.loads(self.cipher.decrypt(row.config_enc))
            changed = False
            if old_config != config:
                row.config_enc = self.cipher.encrypt(json.dumps(config).encode())
                row.circuit_open_until = None
                row.consecutive_failures = 0
                row.next_due_at = now
                changed = True
            if sinks is not None:
                old_sinks = json.loads(self.cipher.decrypt(row.sinks_enc)) if row.sinks_enc else []
                if old_sinks != sinks:
                    row.sinks_enc = (
                        self.cipher.encrypt(json.dumps(sinks).encode()) if sinks else None
                    )
                    changed = True
            if row.schedule != schedule_json:
                row.schedule = schedule_json
                changed = True
            if row.enabled != enabled:
                row.enabled = enabled
                changed = True
            if changed:
                row.updated_at = now
            return "updated" if changed else "unchanged"

        try:
            result: str = self._run(write)
        except IntegrityError:
            # Another process created it between our read and insert: update instead.
            result = self._run(write)
        return result

    def set_enabled(self, provider: str, tenant: str, enabled: bool, now: datetime) -> None:
        def write(session: Session) -> None:
            done = session.execute(
                update(Credential)
                .where(Credential.provider == provider, Credential.tenant == tenant)
                .values(enabled=enabled, updated_at=now)
            )
            if done.rowcount == 0:  # type: ignore[attr-defined]
                raise UnknownCredential(f"no credential {provider}/{tenant}")

        self._run(write)

    def remove(self, provider: str, tenant: str) -> None:
        def write(session: Session) -> None:
            done = session.execute(
                delete(Credential).where(
                    Credential.provider == provider, Credential.tenant == tenant
                )
            )
            if done.rowcount == 0:  # type: ignore[attr-defined]
                raise UnknownCredential(f"no credential {provider}/{tenant}")

        self._run(write)

    # -- versions ------------------------------------------------------------------

    def add_pending(self, credential_id: int, secret: Secret, now: datetime) -> int:
        """Store an acquired, not yet validated secret; return its new version number.

        One statement: the number is the highest so far plus one, so versions only go up;
        the unique (credential, version) constraint turns a race into FencedOut.
        """
        params = {
            "p_cid": credential_id,
            "p_payload": self.cipher.encrypt(secret.to_payload()),
            "p_fingerprint": secret.fingerprint,
            "p_expires_at": secret.expires_at,
            "p_now": now,
        }
        try:
            version: int = self._single(
                lambda conn: conn.execute(_ADD_PENDING, params).scalar_one()
            )
        except IntegrityError:
            raise FencedOut(
                "another worker stored a version at the same time; this attempt is dropped"
            ) from None
        return version

    def discard(self, credential_id: int, version: int) -> None:
        """Mark a pending version as failed; it will never be served."""
        self._write(
            lambda conn: conn.execute(
                update(VERSIONS)
                .where(
                    VERSIONS.c.credential_id == credential_id,
                    VERSIONS.c.version == version,
                    VERSIONS.c.stage == "pending",
                )
                .values(stage="failed")
            )
        )

    def promote(
        self,
        credential_id: int,
        version: int,
        *,
        seen_version: int,
        now: datetime,
        expires_at: datetime | None,
        next_due_at: datetime | None,
        attempt: Attempt,
    ) -> None:
        """Make ``version`` current if nobody promoted since ``seen_version``; audit it.

        One transaction: the fenced version bump, the stage shuffle (current → previous,
        previous → retired), the credential's bookkeeping and the audit row. Raises
        :class:`FencedOut` (and changes nothing) when the fence does not hold.
        """

        params: dict[str, Any] = {
            "p_cid": credential_id,
            "p_seen": seen_version,
            "p_version": version,
            "p_now": now,
            "p_expires_at": expires_at,
            "p_next_due_at": next_due_at,
            "p_outcome": attempt.outcome,
            **{f"a_{key}": value for key, value in _audit_values(attempt).items()},
        }
        if self._autocommit:
            # Postgres: fence, stage shuffle and audit row in one statement (data-modifying
            # CTEs): atomic without BEGIN/COMMIT, one round trip instead of five.
            promoted = self._single(lambda conn: conn.execute(_PG_PROMOTE, params).scalar_one())
            if promoted != 1:
                self.discard(credential_id, version)
                raise FencedOut(
                    f"version {seen_version} is no longer current; "
                    f"version {version} was not promoted"
                )
            return

        def write(conn: Connection) -> None:
            if conn.execute(_FENCE, params).rowcount != 1:
                raise FencedOut(
                    f"version {seen_version} is no longer current; "
                    f"version {version} was not promoted"
                )
            conn.execute(_shuffle(VERSIONS.c.credential_id == bindparam("p_cid")), params)
            conn.execute(_AUDIT_FROM_PARAMS, params)

        try:
            self._write(write)
        except FencedOut:
            self.discard(credential_id, version)
            raise

    def current(self, credential_id: int) -> tuple[int, Secret] | None:
        """The current version number and secret, decrypted, or None before the first."""

        def read(conn: Connection) -> tuple[int, bytes] | None:
            row = conn.execute(
                select(VERSIONS.c.version, VERSIONS.c.payload_enc)
                .join(CREDENTIALS, CREDENTIALS.c.id == VERSIONS.c.credential_id)
                .where(
                    VERSIONS.c.credential_id == credential_id,
                    VERSIONS.c.version == CREDENTIALS.c.current_version,
                )
            ).one_or_none()
            return (row[0], row[1]) if row else None

        found: tuple[int, bytes] | None = self._single(read)
        if found is None:
            return None
        return found[0], Secret.from_payload(self.cipher.decrypt(found[1]))

    def versions(self, credential_id: int) -> list[SecretVersion]:
        def read(session: Session) -> list[SecretVersion]:
            return list(
                session.scalars(
                    select(SecretVersion)
                    .where(SecretVersion.credential_id == credential_id)
                    .order_by(SecretVersion.version)
                )
            )

        result: list[SecretVersion] = self._run(read)
        return result

    def reencrypt(self) -> int:
        """Re-encrypt every stored secret and config under the primary key; return the count."""

        def write(session: Session) -> int:
            count = 0
            for row in session.scalars(select(SecretVersion)):
                row.payload_enc = self.cipher.rotate(row.payload_enc)
                count += 1
            for cred in session.scalars(select(Credential)):
                cred.config_enc = self.cipher.rotate(cred.config_enc)
                count += 1
                if cred.sinks_enc:
                    cred.sinks_enc = self.cipher.rotate(cred.sinks_enc)
                    count += 1
            return count

        result: int = self._run(write)
        return result

    # -- outcomes and audit --------------------------------------------------------

    def record(
        self,
        attempt: Attempt,
        *,
        credential_id: int | None = None,
        next_due_at: datetime | None = _UNSET,
        circuit_open_until: datetime | None = _UNSET,
        failed: bool = False,
    ) -> None:
        """Write the audit row of an attempt that promoted nothing, with its bookkeeping."""

        def write(conn: Connection) -> None:
            if credential_id is not None:
                values: dict[str, Any] = {
                    "last_outcome": attempt.outcome,
                    "last_error": attempt.error_class,
                    "last_attempt_at": attempt.started_at,
                }
                if failed:
                    values["consecutive_failures"] = CREDENTIALS.c.consecutive_failures + 1
                if next_due_at is not _UNSET:
                    values["next_due_at"] = next_due_at
                if circuit_open_until is not _UNSET:
                    values["circuit_open_until"] = circuit_open_until
                conn.execute(
                    update(CREDENTIALS).where(CREDENTIALS.c.id == credential_id).values(**values)
                )
            conn.execute(insert(AUDIT).values(**_audit_values(attempt)))

        self._write(write)

    def audit_log(
        self,
        *,
        provider: str | None = None,
        tenant: str | None = None,
        since: datetime | None = None,
        failed_only: bool = False,
        limit: int = 100,
    ) -> list[AuditEntry]:
        def read(session: Session) -> list[AuditEntry]:
            query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            if provider is not None:
                query = query.where(AuditEntry.provider == provider)
            if tenant is not None:
                query = query.where(AuditEntry.tenant == tenant)
            if since is not None:
                query = query.where(AuditEntry.started_at >= since)
            if failed_only:
                query = query.where(AuditEntry.error_class.is_not(None))
            return list(session.scalars(query))

        result: list[AuditEntry] = self._run(read)
        return result

    def last_audit_id(self) -> int:
        def read(session: Session) -> int:
            return int(session.scalar(select(func.coalesce(func.max(AuditEntry.id), 0))) or 0)

        result: int = self._run(read)
        return result

    def audit_after(self, audit_id: int, limit: int = 500) -> list[AuditEntry]:
        """Audit rows newer than ``audit_id``, oldest first (for following the log)."""

        def read(session: Session) -> list[AuditEntry]:
            query = (
                select(AuditEntry)
                .where(AuditEntry.id > audit_id)
                .order_by(AuditEntry.id)
                .limit(limit)
            )
            return list(session.scalars(query))

        result: list[AuditEntry] = self._run(read)
        return result

    # -- scheduling ----------------------------------------------------------------

    def claim_due(
        self,
        now: datetime,
        *,
        providers: Sequence[str],
        limit: int,
        reschedule: Callable[[CredentialState], tuple[datetime, str]],
        enqueue: Callable[[Iterable[Claim]], None],
    ) -> list[Claim]:
        """Claim due credentials, move their ``next_due_at``, hand them to ``enqueue``.

        Rows are locked with ``FOR UPDATE SKIP LOCKED`` (Postgres), so concurrent sweeps
        split the work instead of doubling it; SQLite serialises writers instead.
        ``reschedule`` returns each claimed row's next due time and the trigger to use.
        ``enqueue`` runs before the commit: if it fails, nothing is claimed and the next
        sweep tries again, so a rotation is never lost (at worst one runs twice, which
        the engine's lock and fence make harmless).
        """

        def write(session: Session) -> list[Claim]:
            query = (
                select(Credential)
                .where(
                    Credential.enabled.is_(True),
                    Credential.provider.in_(providers),
                    Credential.next_due_at <= now,
                )
                .order_by(Credential.next_due_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            claims = []
            for row in session.scalars(query):
                next_due, trigger = reschedule(_state(row))
                row.next_due_at = next_due
                claims.append(Claim(row.provider, row.tenant, trigger))
            if claims:
                enqueue(claims)
            return claims

        result: list[Claim] = self._run(write)
        return result


def _audit_values(attempt: Attempt) -> dict[str, Any]:
    message = attempt.error_message
    if message is not None and len(message) > 2000:
        message = message[:2000] + "…"
    return {
        "started_at": attempt.started_at,
        "provider": attempt.provider[:64],
        "tenant": attempt.tenant[:200],
        "action": attempt.action,
        "trigger": attempt.trigger,
        "outcome": attempt.outcome,
        "error_class": attempt.error_class,
        "error_message": message,
        "detail": attempt.detail[:200] if attempt.detail else None,
        "duration_ms": attempt.duration_ms,
        "version_before": attempt.version_before,
        "version_after": attempt.version_after,
        "fingerprint": attempt.fingerprint,
        "attempt": attempt.attempt,
        "task_id": attempt.task_id,
    }
