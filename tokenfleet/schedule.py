"""When a credential is due: a cron expression or a fixed interval, plus a random delay.

``Schedule.next_due`` is computed once per cycle and stored as ``next_due_at``; a run
missed while the fleet was down is therefore simply overdue and the next sweep picks it
up (what systemd's ``Persistent=true`` gives). The random delay spreads many tenants
and mirrors ``RandomizedDelaySec``.
"""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    TypeAdapter,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> timedelta:
    """Parse ``90``, ``"90s"``, ``"30m"``, ``"3h"``, ``"1d"``, ISO 8601 or a timedelta.

    ISO 8601 (``"PT6H"``) is what pydantic writes for a timedelta in JSON, so a config
    stored as JSON must read back through here.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
        if value.strip().upper().startswith("P"):
            try:
                return _ISO_DURATION.validate_python(value.strip().upper())
            except ValidationError:
                pass
    raise ValueError(f"not a duration: {value!r} (use seconds or e.g. '90s', '30m', '3h', '1d')")


_ISO_DURATION = TypeAdapter(timedelta)


def format_duration(value: timedelta) -> str:
    """The inverse of :func:`parse_duration` for whole units: ``90s``, ``30m``, ``3h``, ``1d``."""
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class Schedule(BaseModel):
    """A credential's rotation schedule.

    Exactly one of ``cron`` (five-field cron, evaluated in ``timezone``) or ``every``.
    ``jitter`` adds a uniform random delay in ``[0, jitter]`` to each computed time.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cron: str | None = None
    every: timedelta | None = None
    jitter: timedelta = timedelta(0)
    timezone: str | None = None

    @field_validator("every", "jitter", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_serializer("every", "jitter")
    def _seconds(self, value: timedelta | None) -> float | None:
        # Plain seconds round-trip through parse_duration; ISO 8601 ("PT30M") would not.
        return None if value is None else value.total_seconds()

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"not a valid cron expression: {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone: {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.cron is None) == (self.every is None):
            raise ValueError("a schedule needs exactly one of 'cron' or 'every'")
        if self.every is not None and self.every <= timedelta(0):
            raise ValueError("'every' must be positive")
        if self.jitter < timedelta(0):
            raise ValueError("'jitter' must not be negative")
        return self

    @classmethod
    def parse(cls, value: Any) -> Schedule:
        """Accept a Schedule, a mapping, ``"every 3h"`` or a cron string like ``"0 5 * * *"``."""
        if isinstance(value, Schedule):
            return value
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("every "):
                return cls(every=parse_duration(text[len("every ") :]))
            return cls(cron=text)
        return cls.model_validate(value)

    def describe(self) -> str:
        """A short human form: ``cron 0 5 * * * +rand(30m)``, ``every 3h``."""
        if self.cron:
            base = f"cron {self.cron}" + (f" ({self.timezone})" if self.timezone else "")
        else:
            assert self.every is not None
            base = f"every {format_duration(self.every)}"
        if self.jitter:
            base += f" +rand({format_duration(self.jitter)})"
        return base

    def next_due(
        self, after: datetime, default_tz: str = "UTC", rng: random.Random | None = None
    ) -> datetime:
        """Return the first due time strictly after ``after`` (aware), random delay included."""
        if after.tzinfo is None:
            raise ValueError("next_due needs a timezone-aware datetime")
        if self.cron is not None:
            tz = ZoneInfo(self.timezone or default_tz)
            local = after.astimezone(tz)
            base: datetime = croniter(self.cron, local).get_next(datetime)
            base = base.astimezone(after.tzinfo)
        else:
            assert self.every is not None
            base = after + self.every
        if self.jitter:
            base += timedelta(seconds=(rng or random).uniform(0, self.jitter.total_seconds()))
        return base
