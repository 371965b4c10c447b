"""Fleet settings, parsed once from the environment and ``.env`` into a frozen object.

Pass the :class:`Settings` instance down; nothing reads the environment anywhere else.
Well-known names (``REDIS_URL``, ``DATABASE_URL``) work without a prefix; everything else
uses ``TOKENFLEET_``, e.g. ``TOKENFLEET_TIMEZONE=Asia/Almaty``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import InvalidConfig


def _alias(name: str) -> AliasChoices:
    return AliasChoices(f"TOKENFLEET_{name}", name)


class Settings(BaseSettings):
    """Everything the fleet needs to know about its surroundings."""

    model_config = SettingsConfigDict(
        env_prefix="TOKENFLEET_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    #: ``dev`` enables sandbox endpoints; ``prod`` never does.
    env: Literal["dev", "prod"] = "dev"
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_alias("REDIS_URL"))
    #: Celery broker; defaults to ``redis_url``.
    broker_url: str | None = Field(None, validation_alias=_alias("BROKER_URL"))
    #: Celery result backend; defaults to ``redis_url``.
    result_backend: str | None = Field(None, validation_alias=_alias("RESULT_BACKEND"))
    database_url: str = Field(
        "sqlite:///var/tokenfleet.db", validation_alias=_alias("DATABASE_URL")
    )
    #: Fernet keys, comma-separated, newest (primary) first. Empty: use/create ``key_file``.
    encryption_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    #: Where local state lives: the generated key file, Beat's schedule, SQLite by default.
    state_dir: Path = Path("var")
    #: Fernet key file used when ``encryption_keys`` is empty; default ``state_dir/fernet.key``.
    key_file: Path | None = None
    #: Zone for cron schedules (Webkassa's 05:00 is local time).
    timezone: str = "UTC"
    #: Credentials declared by the operator; loaded into the database at start.
    fleet_file: Path = Path("fleet.toml")
    #: Prefix of every Redis key and channel; lets several fleets share one Redis.
    key_prefix: str = "tokenfleet"
    #: Lifetime of the hot copy in Redis; SQL stays the source of truth.
    redis_ttl: int = Field(7 * 86400, gt=0)
    #: How often Beat asks each provider's sweep for due credentials.
    sweep_interval: float = Field(30.0, gt=0)
    #: Most credentials one sweep claims; the rest wait for the next sweep.
    sweep_batch: int = Field(500, gt=0)
    #: Transient faults: attempts after the first, and the backoff's base and cap (seconds).
    max_retries: int = Field(5, ge=0)
    retry_base: float = Field(5.0, gt=0)
    retry_cap: float = Field(600.0, gt=0)
    #: How long a rotation waits for another worker's lock before it retries later.
    lock_wait: float = Field(10.0, ge=0)
    #: How long an open circuit stays open before one trial attempt is let through.
    circuit_cooldown: float = Field(3600.0, gt=0)
    #: Extra provider classes (``module:Class``) on top of the built-in registry.
    extra_providers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"

    @field_validator("encryption_keys", "extra_providers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @property
    def key_path(self) -> Path:
        return self.key_file or self.state_dir / "fernet.key"

    @property
    def celery_broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def celery_backend(self) -> str:
        return self.result_backend or self.redis_url


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment; a bad value raises :class:`InvalidConfig`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise InvalidConfig(f"invalid setting {field}: {first['msg']}", field=field) from None
