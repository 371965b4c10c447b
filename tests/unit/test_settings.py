"""Settings: well-known env names, prefixed ones, frozen, and clear errors."""

from __future__ import annotations

import pytest

from tokenfleet.errors import InvalidConfig
from tokenfleet.settings import load_settings


def test_reads_well_known_and_prefixed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/3")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/x")
    monkeypatch.setenv("TOKENFLEET_TIMEZONE", "Asia/Almaty")
    monkeypatch.setenv("TOKENFLEET_ENCRYPTION_KEYS", "a, b")
    settings = load_settings(_env_file=None)
    assert settings.redis_url == "redis://example:6379/3"
    assert settings.celery_broker == "redis://example:6379/3"
    assert settings.database_url == "postgresql://db/x"
    assert settings.timezone == "Asia/Almaty"
    assert [k.get_secret_value() for k in settings.encryption_keys] == ["a", "b"]
    assert "a" not in repr(settings.encryption_keys)
    with pytest.raises(Exception, match="frozen"):
        settings.timezone = "UTC"  # type: ignore[misc]


def test_invalid_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENFLEET_TIMEZONE", "Mars/Base")
    with pytest.raises(InvalidConfig) as info:
        load_settings(_env_file=None)
    assert info.value.field == "timezone" and "Mars/Base" in info.value.message
    monkeypatch.delenv("TOKENFLEET_TIMEZONE")
    monkeypatch.setenv("TOKENFLEET_SWEEP_INTERVAL", "-1")
    with pytest.raises(InvalidConfig, match="sweep_interval"):
        load_settings(_env_file=None)
