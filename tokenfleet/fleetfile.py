"""The fleet file (``fleet.toml``): credentials an operator declares, loaded into SQL.

::

    [[credential]]
    provider = "webkassa"
    tenant = "default"                  # optional
    schedule = "0 5 * * *"              # optional: cron, "every 3h", or a table
    enabled = true                      # optional
    [credential.config]
    base_url = "https://devkkm.webkassa.kz"
    login = "cashier@example.kz"
    password = "${WEBKASSA_PASSWORD}"   # taken from the environment at load time

Every problem is reported with its place (``credential[0] webkassa/default: config.login:
Field required``) and nothing is loaded unless the whole file is valid.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from providers.registry import Registry

from .errors import InvalidConfig, TokenfleetError
from .schedule import Schedule
from .sinks import SINK_KINDS, dump_sinks, parse_sinks
from .store import SqlStore

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOP_KEYS = {"provider", "tenant", "schedule", "enabled", "config", "sink"}


@dataclass(frozen=True)
class CredentialSpec:
    """One declared credential, validated against its provider's config model."""

    provider: str
    tenant: str
    config: dict[str, Any]
    schedule: Schedule | None
    enabled: bool
    sinks: list[dict[str, Any]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"CredentialSpec({self.provider}/{self.tenant})"


def _resolve(value: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise InvalidConfig(f"{where}: environment variable {name} is not set", field=where)
            return env[name]

        return _REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _resolve(v, env, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _fail(where: str, message: str) -> InvalidConfig:
    return InvalidConfig(f"{where}: {message}", field=where)


def parse_specs(
    data: Mapping[str, Any], registry: Registry, env: Mapping[str, str] | None = None
) -> list[CredentialSpec]:
    """Validate the parsed TOML; raise InvalidConfig naming the first bad field."""
    env = os.environ if env is None else env
    entries = data.get("credential", [])
    unknown = set(data) - {"credential"}
    if unknown:
        raise _fail(sorted(unknown)[0], "unknown top-level key (expected [[credential]] tables)")
    if not isinstance(entries, list):
        raise _fail("credential", "must be an array of tables ([[credential]])")
    specs: list[CredentialSpec] = []
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(entries):
        where = f"credential[{index}]"
        if not isinstance(entry, dict):
            raise _fail(where, "must be a table")
        extra = set(entry) - _TOP_KEYS
        if extra:
            raise _fail(f"{where}.{sorted(extra)[0]}", "unknown key")
        provider = entry.get("provider")
        if not isinstance(provider, str):
            raise _fail(f"{where}.provider", "required, a provider name")
        try:
            cls = registry.get(provider)
        except TokenfleetError as exc:
            raise _fail(f"{where}.provider", exc.message) from None
        tenant = entry.get("tenant", "default")
        if not isinstance(tenant, str) or not tenant:
            raise _fail(f"{where}.tenant", "must be a non-empty string")
        where = f"{where} {provider}/{tenant}"
        if (provider, tenant) in seen:
            raise _fail(where, "declared twice")
        seen.add((provider, tenant))
        enabled = entry.get("enabled", True)
        if not isinstance(enabled, bool):
            raise _fail(f"{where}: enabled", "must be true or false")
        schedule = None
        if "schedule" in entry:
            try:
                schedule = Schedule.parse(entry["schedule"])
            except ValidationError as exc:
                raise _fail(f"{where}: schedule", exc.errors()[0]["msg"]) from None
        raw = _resolve(entry.get("config", {}), env, f"{where}: config")
        model = cls.parse_config(raw, where)
        config = model.model_dump(mode="json", exclude_unset=False)
        # SecretStr dumps as '**********'; keep the real values for storage (encrypted).
        for name in cls.secret_fields:
            if name in raw:
                config[name] = raw[name]
        sinks = _parse_sinks(entry.get("sink", []), env, where)
        specs.append(CredentialSpec(provider, tenant, config, schedule, enabled, sinks))
    return specs


def _parse_sinks(raw: Any, env: Mapping[str, str], where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise _fail(f"{where}: sink", "must be an array of tables ([[credential.sink]])")
    resolved = _resolve(raw, env, f"{where}: sink")
    try:
        return dump_sinks(parse_sinks(resolved))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = list(first["loc"])
        # pydantic puts the union tag in the path (sink.0.sql_row.table); drop it.
        if len(loc) > 1 and isinstance(loc[1], str) and loc[1] in SINK_KINDS:
            loc.pop(1)
        if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("kind")
        path = f"sink[{loc[0]}]" + "".join(f".{part}" for part in loc[1:])
        raise InvalidConfig(f"{where}: {path}: {first['msg']}", field=f"{where}: {path}") from None


def load_file(
    path: Path, registry: Registry, env: Mapping[str, str] | None = None
) -> list[CredentialSpec]:
    """Read and validate a fleet file. A missing file declares nothing."""
    if not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfig(f"{path}: not valid TOML: {exc}", field=str(path)) from None
    try:
        return parse_specs(data, registry, env)
    except InvalidConfig as exc:
        raise InvalidConfig(f"{path}: {exc.message}", field=exc.field) from None


def apply(
    specs: list[CredentialSpec], store: SqlStore, now: datetime
) -> dict[tuple[str, str], str]:
    """Upsert every spec; return each credential's ``created``/``updated``/``unchanged``."""
    results = {}
    for spec in specs:
        results[(spec.provider, spec.tenant)] = store.upsert(
            spec.provider,
            spec.tenant,
            spec.config,
            spec.schedule,
            enabled=spec.enabled,
            now=now,
            sinks=spec.sinks,
        )
    return results
