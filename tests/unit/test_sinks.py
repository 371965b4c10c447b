"""Sink building blocks: env-file rewriting, atomic files, declarations and their errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from providers import BUILTIN
from tokenfleet.errors import InvalidConfig
from tokenfleet.fleetfile import parse_specs
from tokenfleet.sinks import atomic_write, dump_sinks, parse_sinks, rewrite_env


def test_rewrite_env_replaces_one_variable_and_keeps_everything_else() -> None:
    before = (
        "# bookstore settings\n"
        "DEBUG=1\n"
        "export CHITAI_TOKEN=old-token  \n"
        "\n"
        "CHITAI_TOKEN_EXTRA=keep\n"
        "# CHITAI_TOKEN=commented out stays\n"
    )
    after = rewrite_env(before, "CHITAI_TOKEN", "new-token")
    assert after == before.replace(
        "export CHITAI_TOKEN=old-token  ", "export CHITAI_TOKEN=new-token"
    )


def test_rewrite_env_appends_a_missing_variable_and_quotes_awkward_values() -> None:
    assert rewrite_env("A=1", "B", "x y$z") == 'A=1\nB="x y\\$z"\n'
    assert rewrite_env("", "B", "plain") == "B=plain\n"


def test_atomic_write_is_0600_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "token"
    atomic_write(target, "one")
    atomic_write(target, "two")
    assert target.read_text() == "two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["token"]


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "token"
    atomic_write(target, "old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["token"]


def test_sink_declarations_keep_secret_dsns_for_storage_only() -> None:
    (spec,) = parse_sinks(
        [
            {
                "kind": "sql_row",
                "dsn": "postgresql://u:pw-77@db/app",
                "table": "api_keys",
                "key_value": "W",
            }
        ]
    )
    assert "pw-77" not in repr(spec)
    assert dump_sinks([spec])[0]["dsn"] == "postgresql://u:pw-77@db/app"


@pytest.mark.parametrize(
    ("sink", "field", "words"),
    [
        ({"kind": "carrier_pigeon"}, "sink[0].kind", "tag"),
        (
            {"kind": "sql_row", "dsn": "x", "table": "t; DROP", "key_value": "W"},
            "sink[0].table",
            "plain table",
        ),
        (
            {"kind": "env_file", "path": "/x", "variable": "1BAD"},
            "sink[0].variable",
            "variable name",
        ),
        ({"kind": "redis_key"}, "sink[0].key", "Field required"),
        ({"kind": "file", "path": "/x", "mode": 7}, "sink[0].mode", "Extra inputs"),
    ],
)
def test_bad_sink_declarations_name_the_field(sink: dict, field: str, words: str) -> None:
    entry = {
        "provider": "webkassa",
        "config": {"base_url": "https://x.kz", "login": "l", "password": "p"},
        "sink": [sink],
    }
    with pytest.raises(InvalidConfig) as info:
        parse_specs({"credential": [entry]}, BUILTIN, {})
    assert info.value.field == f"credential[0] webkassa/default: {field}"
    assert words in info.value.message


def test_parse_sinks_rejects_unknown_kinds() -> None:
    with pytest.raises(ValidationError):
        parse_sinks([{"kind": "nope"}])
