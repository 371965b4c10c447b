"""SQL tables: credentials, their secret versions, and the audit log.

Secret values only ever live encrypted in ``payload_enc``/``config_enc``. Timestamps are
stored as UTC and come back timezone-aware on every backend (SQLite included).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY, not BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")

STAGES = ("pending", "current", "previous", "retired", "failed")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, also on SQLite (which stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Credential(Base):
    """One thing to keep fresh, named by (provider, tenant)."""

    __tablename__ = "credentials"
    __table_args__ = (
        UniqueConstraint("provider", "tenant"),
        Index("ix_credentials_due", "enabled", "next_due_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: The provider config as encrypted JSON (it holds passwords).
    config_enc: Mapped[bytes] = mapped_column(LargeBinary)
    #: Sink declarations as encrypted JSON (DSNs hold passwords); NULL means none.
    sinks_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: The schedule as JSON; NULL means the provider's default.
    schedule: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The promoted version; 0 before the first. Promotion is fenced on this column.
    current_version: Mapped[int] = mapped_column(Integer, default=0)
    next_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    circuit_open_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SecretVersion(Base):
    """An immutable, numbered value of a credential, with its stage."""

    __tablename__ = "secret_versions"
    __table_args__ = (UniqueConstraint("credential_id", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    credential_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("credentials.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16))
    payload_enc: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditEntry(Base):
    """One attempt to rotate or check a credential, whatever its outcome. Never a secret."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    provider: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    error_class: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: What else identifies the attempt, e.g. which sink (never a secret).
    detail: Mapped[str | None] = mapped_column(String(200), nullable=True)
    duration_ms: Mapped[float] = mapped_column(Float)
    version_before: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version_after: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fingerprint: Mapped[str | None] = mapped_column(String(32), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


Index("ix_audit_log_credential", AuditEntry.provider, AuditEntry.tenant, AuditEntry.started_at)
