"""Schedules: cron in a time zone, intervals, random delay, and clear errors."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from tokenfleet.backoff import retry_delay
from tokenfleet.schedule import Schedule, parse_duration

ALMATY = ZoneInfo("Asia/Almaty")


def test_daily_cron_fires_at_local_time_with_a_bounded_random_delay() -> None:
    schedule = Schedule(cron="0 5 * * *", jitter="30m")
    after = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    rng = random.Random(1)
    for _ in range(200):
        due = schedule.next_due(after, "Asia/Almaty", rng).astimezone(ALMATY)
        assert due.date() == datetime(2026, 3, 2).date()
        assert due.hour == 5 and due.minute < 30


def test_a_schedule_time_zone_overrides_the_fleet_default() -> None:
    schedule = Schedule(cron="0 5 * * *", timezone="Europe/Moscow")
    due = schedule.next_due(datetime(2026, 3, 1, 0, 0, tzinfo=UTC), "Asia/Almaty")
    assert due == datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


def test_interval_schedule_adds_its_period() -> None:
    after = datetime(2026, 3, 1, tzinfo=UTC)
    assert Schedule.parse("every 3h").next_due(after) == after + timedelta(hours=3)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"cron": "61 * * * *"}, "not a valid cron"),
        ({}, "exactly one"),
        ({"cron": "0 5 * * *", "every": "1h"}, "exactly one"),
        ({"every": "soon"}, "not a duration"),
        ({"cron": "0 5 * * *", "timezone": "Mars/Base"}, "unknown time zone"),
        ({"cron": "0 5 * * *", "colour": "red"}, "Extra inputs"),
    ],
)
def test_bad_schedules_are_rejected_with_the_reason(value: dict, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        Schedule.model_validate(value)


def test_durations_parse_in_common_units() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("1d") == timedelta(days=1)
    assert parse_duration(5) == timedelta(seconds=5)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("3 weeks")


def test_retry_delay_grows_exponentially_with_jitter_and_stays_capped() -> None:
    rng = random.Random(7)
    for retries in range(12):
        step = min(600, 5 * 2**retries)
        delay = retry_delay(retries, base=5, cap=600, rng=rng)
        assert step / 2 <= delay <= step
    delays = {retry_delay(3, base=5, cap=600, rng=rng) for _ in range(50)}
    assert len(delays) > 40  # jitter: not all the same


def test_retry_after_is_a_floor_below_the_cap() -> None:
    assert retry_delay(0, base=1, cap=600, retry_after=120) == 120
    assert retry_delay(0, base=1, cap=60, retry_after=120) == 60


def test_a_schedule_survives_its_json_round_trip() -> None:
    schedule = Schedule(cron="0 5 * * *", jitter="30m", timezone="Asia/Almaty")
    assert Schedule.model_validate_json(schedule.model_dump_json()) == schedule
    interval = Schedule.parse("every 3h")
    assert Schedule.model_validate_json(interval.model_dump_json()) == interval


def test_describe_is_short_and_human() -> None:
    assert Schedule(cron="0 5 * * *", jitter="30m").describe() == "cron 0 5 * * * +rand(30m)"
    assert Schedule.parse("every 3h").describe() == "every 3h"
    assert Schedule(every=90).describe() == "every 90s"


@pytest.mark.parametrize(
    ("text", "seconds"), [("PT6H", 21600), ("P1D", 86400), ("PT1M30S", 90), ("pt5m", 300)]
)
def test_parse_duration_reads_iso_8601_as_pydantic_writes_it(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["P-nope", "-PT6H", "-5m"])
def test_parse_duration_still_refuses_garbage_naming_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=f"not a duration: '{text}'"):
        parse_duration(text)
