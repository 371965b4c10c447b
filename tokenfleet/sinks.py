"""Sinks: places a promoted secret is also written to, for consumers that cannot use the client.

Declared per credential in the fleet file as ``[[credential.sink]]`` tables::

    [[credential.sink]]
    kind = "redis_key"          # a plain key, as the bookstore app reads chitai_gorod_token
    key = "chitai_gorod_token"
    ttl = 86400

    [[credential.sink]]
    kind = "sql_row"            # upsert api_keys(service_name='Webkassa', api_key, updated_at)
    dsn = "${APP_DATABASE_URL}"
    table = "api_keys"
    key_value = "Webkassa"

    [[credential.sink]]
    kind = "env_file"           # rewrite one variable, keep every other line and comment
    path = "/srv/app/.env"
    variable = "WEBKASSA_TOKEN"

    [[credential.sink]]
    kind = "file"               # mode 0600, replaced atomically
    path = "/run/secrets/webkassa_token"

Each sink runs after the promotion is committed; a failing sink never undoes it and never
stops the other sinks. Errors raised here are :class:`SinkFailed` with messages that name
the sink and the failure class, never the value (SQL driver errors quote parameters, so
their text is not passed on).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, field_validator
from sqlalchemy import Engine, text

from .db import make_engine
from .errors import SinkFailed
from .secret import Secret

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _SinkBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: A label for logs and the audit log; defaults to the kind and its target.
    name: str | None = None
    #: ``value`` writes the token alone; ``json`` writes value, expiry and bindings.
    format: Literal["value", "json"] = "value"

    def label(self) -> str:
        return self.name or self.describe()

    def describe(self) -> str:
        raise NotImplementedError


class RedisKeySink(_SinkBase):
    """A plain Redis key holding the token, with an optional TTL."""

    kind: Literal["redis_key"]
    key: str = Field(min_length=1)
    ttl: int | None = Field(None, gt=0)
    #: Another Redis; default: the fleet's own.
    url: SecretStr | None = None

    def describe(self) -> str:
        return f"redis_key {self.key}"


class SqlRowSink(_SinkBase):
    """One row of an existing table, upserted by a key column."""

    kind: Literal["sql_row"]
    dsn: SecretStr
    table: str
    key_column: str = "service_name"
    key_value: str
    value_column: str = "api_key"
    updated_column: str | None = "updated_at"

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError("must be a plain table name, optionally schema-qualified")
        return value

    @field_validator("key_column", "value_column", "updated_column")
    @classmethod
    def _column(cls, value: str | None) -> str | None:
        if value is not None and not _COLUMN.match(value):
            raise ValueError("must be a plain column name")
        return value

    def describe(self) -> str:
        return f"sql_row {self.table}({self.key_column}={self.key_value!r})"


class EnvFileSink(_SinkBase):
    """One ``NAME=value`` line of an env file, rewritten in place atomically."""

    kind: Literal["env_file"]
    path: Path
    variable: str

    @field_validator("variable")
    @classmethod
    def _variable(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError("must be an environment variable name")
        return value

    def describe(self) -> str:
        return f"env_file {self.path}:{self.variable}"


class FileSink(_SinkBase):
    """A whole file holding the token, mode 0600, replaced atomically."""

    kind: Literal["file"]
    path: Path

    def describe(self) -> str:
        return f"file {self.path}"


SinkSpec = Annotated[
    RedisKeySink | SqlRowSink | EnvFileSink | FileSink, Field(discriminator="kind")
]
SINK_KINDS = frozenset({"redis_key", "sql_row", "env_file", "file"})
_SPECS: TypeAdapter[list[SinkSpec]] = TypeAdapter(list[SinkSpec])


def parse_sinks(raw: Any) -> list[SinkSpec]:
    """Validate a list of sink tables (raises pydantic's ValidationError)."""
    return _SPECS.validate_python(raw)


def dump_sinks(specs: Sequence[SinkSpec]) -> list[dict[str, Any]]:
    """Plain data with secret fields in the clear, for encrypted storage only."""
    dumped = []
    for spec in specs:
        data = spec.model_dump(mode="json")
        for key, value in spec:
            if isinstance(value, SecretStr):
                data[key] = value.get_secret_value()
        dumped.append(data)
    return dumped


def render(secret: Secret, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(
            {
                "value": secret.reveal(),
                "expires_at": secret.expires_at.isoformat() if secret.expires_at else None,
                "bound": dict(secret.bound),
                "cookies": dict(secret.cookies),
            },
            sort_keys=True,
        )
    return secret.reveal()


def atomic_write(path: Path, content: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``content`` so no reader ever sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _env_quote(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./:@+=,-]*", value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def rewrite_env(content: str, variable: str, value: str) -> str:
    """Set ``variable`` in env-file text, keeping every other line, comment and order."""
    line_re = re.compile(rf"^(\s*(?:export\s+)?){re.escape(variable)}\s*=.*$")
    lines = content.splitlines(keepends=True)
    replaced = False
    for index, line in enumerate(lines):
        match = line_re.match(line.rstrip("\r\n"))
        if match and not replaced:
            ending = line[len(line.rstrip("\r\n")) :] or ""
            lines[index] = f"{match.group(1)}{variable}={_env_quote(value)}{ending}"
            replaced = True
    if not replaced:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(f"{variable}={_env_quote(value)}\n")
    return "".join(lines)


class SinkWriter:
    """Writes secrets to sinks; keeps connections to sink databases and Redises."""

    def __init__(self, fleet_redis: redis.Redis) -> None:
        self.fleet_redis = fleet_redis
        self._engines: dict[str, Engine] = {}
        self._redises: dict[str, redis.Redis] = {}

    def write(self, spec: SinkSpec, secret: Secret, now: datetime) -> None:
        """Write ``secret`` to one sink; raise :class:`SinkFailed` on any failure."""
        try:
            if isinstance(spec, RedisKeySink):
                self._redis_key(spec, secret)
            elif isinstance(spec, SqlRowSink):
                self._sql_row(spec, secret, now)
            elif isinstance(spec, EnvFileSink):
                self._env_file(spec, secret)
            else:
                atomic_write(spec.path, render(secret, spec.format))
        except SinkFailed:
            raise
        except OSError as exc:
            raise SinkFailed(
                f"{spec.label()}: {type(exc).__name__}: {exc.strerror or 'I/O error'}"
            ) from None
        except Exception as exc:
            # Never pass the foreign message on: SQL errors quote the bound value.
            orig = getattr(exc, "orig", None)
            kind = type(orig).__name__ if orig is not None else type(exc).__name__
            raise SinkFailed(f"{spec.label()}: {type(exc).__name__} ({kind})") from None

    def _redis_key(self, spec: RedisKeySink, secret: Secret) -> None:
        client = self.fleet_redis
        if spec.url is not None:
            url = spec.url.get_secret_value()
            client = self._redises.setdefault(url, redis.Redis.from_url(url, socket_timeout=5))
        client.set(spec.key, render(secret, spec.format), ex=spec.ttl)

    def _sql_row(self, spec: SqlRowSink, secret: Secret, now: datetime) -> None:
        dsn = spec.dsn.get_secret_value()
        engine = self._engines.get(dsn)
        if engine is None:
            engine = self._engines[dsn] = make_engine(dsn)
        quote = engine.dialect.identifier_preparer.quote
        table = ".".join(quote(part) for part in spec.table.split("."))
        key, value_col = quote(spec.key_column), quote(spec.value_column)
        sets = [f"{value_col} = :value"]
        cols, vals = [key, value_col], [":key", ":value"]
        params: dict[str, Any] = {"key": spec.key_value, "value": render(secret, spec.format)}
        if spec.updated_column:
            updated = quote(spec.updated_column)
            sets.append(f"{updated} = :now")
            cols.append(updated)
            vals.append(":now")
            params["now"] = now
        with engine.begin() as conn:
            done = conn.execute(
                text(f"UPDATE {table} SET {', '.join(sets)} WHERE {key} = :key"),  # noqa: S608
                params,
            )
            if done.rowcount == 0:
                conn.execute(
                    text(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(vals)})"),  # noqa: S608
                    params,
                )

    def _env_file(self, spec: EnvFileSink, secret: Secret) -> None:
        try:
            content = spec.path.read_text(encoding="utf-8")
            mode = spec.path.stat().st_mode & 0o777
        except FileNotFoundError:
            content, mode = "", 0o600
        atomic_write(
            spec.path, rewrite_env(content, spec.variable, render(secret, spec.format)), mode
        )

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        for client in self._redises.values():
            client.close()
