"""The fleet file: env references, validation errors that name the field, nothing half-loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from providers import BUILTIN
from tokenfleet.errors import InvalidConfig
from tokenfleet.fleetfile import load_file, parse_specs

GOOD = {
    "provider": "webkassa",
    "config": {"base_url": "https://devkkm.webkassa.kz", "login": "me", "password": "${PW}"},
}


def test_secret_fields_come_from_the_environment() -> None:
    (spec,) = parse_specs({"credential": [GOOD]}, BUILTIN, {"PW": "s3cret-pw"})
    assert spec.provider == "webkassa" and spec.tenant == "default"
    assert spec.config["password"] == "s3cret-pw"
    assert "s3cret-pw" not in repr(spec)


@pytest.mark.parametrize(
    ("entry", "env", "field", "words"),
    [
        (GOOD, {}, "credential[0] webkassa/default: config.password", "PW is not set"),
        ({**GOOD, "provider": "nope"}, {"PW": "x"}, "credential[0].provider", "unknown provider"),
        ({"config": {}}, {}, "credential[0].provider", "required"),
        ({**GOOD, "colour": 1}, {"PW": "x"}, "credential[0].colour", "unknown key"),
        (
            {**GOOD, "config": {**GOOD["config"], "login": None}},
            {"PW": "x"},
            "credential[0] webkassa/default: config.login",
            "valid string",
        ),
        (
            {**GOOD, "config": {"base_url": "https://x.kz", "password": "${PW}"}},
            {"PW": "hunter2-pw"},
            "credential[0] webkassa/default: config.login",
            "Field required",
        ),
        (
            {**GOOD, "schedule": "61 * * * *"},
            {"PW": "x"},
            "credential[0] webkassa/default: schedule",
            "cron",
        ),
    ],
)
def test_invalid_entries_name_the_field(entry: dict, env: dict, field: str, words: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        parse_specs({"credential": [entry]}, BUILTIN, env)
    assert info.value.field == field
    assert words in info.value.message
    assert "hunter2-pw" not in info.value.message


def test_a_credential_declared_twice_is_an_error() -> None:
    with pytest.raises(InvalidConfig, match="declared twice"):
        parse_specs({"credential": [GOOD, GOOD]}, BUILTIN, {"PW": "x"})


def test_a_missing_file_declares_nothing_and_bad_toml_names_the_file(tmp_path: Path) -> None:
    assert load_file(tmp_path / "absent.toml", BUILTIN) == []
    bad = tmp_path / "fleet.toml"
    bad.write_text("[[credential]\n")
    with pytest.raises(InvalidConfig, match="not valid TOML") as info:
        load_file(bad, BUILTIN)
    assert str(bad) in info.value.message


def test_the_shipped_example_fleet_file_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "fleet.example.toml"
    specs = load_file(example, BUILTIN, {"WEBKASSA_PASSWORD": "x"})
    assert [(s.provider, s.tenant) for s in specs] == [("webkassa", "default")]


@pytest.mark.parametrize(
    "entry",
    [
        {**GOOD, "config": {**GOOD["config"], "token_ttl": "12h"}},
        {"provider": "chitai_gorod", "config": {"session_ttl": "2h", "proxy": "${PW}"}},
        {"provider": "chitai_gorod", "config": {"backend": "playwright"}},
    ],
)
def test_a_config_stored_as_the_fleet_file_stores_it_parses_back_unchanged(entry: dict) -> None:
    """Durations are stored as pydantic writes them (``PT12H``) and must read back."""
    env = {"PW": "http://u:p@127.0.0.1:3128"}
    (spec,) = parse_specs({"credential": [entry]}, BUILTIN, env)
    cls = BUILTIN.get(spec.provider)
    direct = cls.parse_config(
        {k: (env["PW"] if v == "${PW}" else v) for k, v in entry["config"].items()}, "x"
    )
    assert cls.parse_config(spec.config, "x") == direct
