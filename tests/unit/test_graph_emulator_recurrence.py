"""Pure tests of the Graph emulator's recurrence expansion: six pattern types, three range types, DST."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devkit.graph_emulator import timezones
from devkit.graph_emulator.recurrence import Recurrence, RecurrenceError, occurrence_dates, occurrence_starts

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "graph-reference" / "fixtures"
D = dt.date


def rec(pattern: dict[str, Any], range_: dict[str, Any] | None = None) -> Recurrence:
    return Recurrence.parse(
        {"pattern": pattern, "range": range_ or {"type": "noEnd", "startDate": "2017-04-02"}}
    )


def first(recurrence: Recurrence, count: int) -> list[dt.date]:
    return list(itertools.islice(occurrence_dates(recurrence), count))


def test_daily_every_third_day() -> None:
    r = rec({"type": "daily", "interval": 3}, {"type": "noEnd", "startDate": "2017-05-15"})
    assert first(r, 4) == [D(2017, 5, 15), D(2017, 5, 18), D(2017, 5, 21), D(2017, 5, 24)]


def test_weekly_every_other_week_on_two_days_counts_weeks_from_the_start_week() -> None:
    # 2017-04-02 is a Sunday (the default first day of week): weeks 0, 2, 4 ... hold occurrences.
    r = rec({"type": "weekly", "interval": 2, "daysOfWeek": ["Monday", "Tuesday"]})
    assert first(r, 6) == [
        D(2017, 4, 3),
        D(2017, 4, 4),
        D(2017, 4, 17),
        D(2017, 4, 18),
        D(2017, 5, 1),
        D(2017, 5, 2),
    ]


def test_weekly_first_day_of_week_changes_which_weeks_count() -> None:
    # Start on Wednesday 2017-04-05, every other week on Sunday and Wednesday.
    base = {"type": "weekly", "interval": 2, "daysOfWeek": ["sunday", "wednesday"]}
    start = {"type": "noEnd", "startDate": "2017-04-05"}
    # Weeks from Sunday: Sunday 04-02 precedes the start; the next counted week begins Sunday 04-16.
    assert first(rec(base, start), 3) == [D(2017, 4, 5), D(2017, 4, 16), D(2017, 4, 19)]
    # Weeks from Monday: Sunday 04-09 closes the first week; the next counted week begins Monday 04-17.
    monday_weeks = first(rec({**base, "firstDayOfWeek": "monday"}, start), 3)
    assert monday_weeks == [D(2017, 4, 5), D(2017, 4, 9), D(2017, 4, 19)]


def test_absolute_monthly_every_three_months_and_clamps_to_month_end() -> None:
    r = rec({"type": "absoluteMonthly", "interval": 3, "dayOfMonth": 7})
    assert first(r, 3) == [D(2017, 4, 7), D(2017, 7, 7), D(2017, 10, 7)]
    end_of_month = rec(
        {"type": "absoluteMonthly", "interval": 1, "dayOfMonth": 31},
        {"type": "noEnd", "startDate": "2017-01-31"},
    )
    assert first(end_of_month, 4) == [D(2017, 1, 31), D(2017, 2, 28), D(2017, 3, 31), D(2017, 4, 30)]


def test_relative_monthly_second_wednesday_and_first_of_several_days() -> None:
    second_wednesday = rec(
        {"type": "relativeMonthly", "interval": 1, "daysOfWeek": ["Wednesday"], "index": "second"}
    )
    assert first(second_wednesday, 2) == [D(2017, 4, 12), D(2017, 5, 10)]
    thursday_or_friday = rec(
        {"type": "relativeMonthly", "interval": 1, "daysOfWeek": ["Thursday", "Friday"], "index": "first"}
    )
    # April 2017 starts on a Saturday: its first Thursday-or-Friday is Thursday 6th; June's is Thursday 1st.
    assert first(thursday_or_friday, 3) == [D(2017, 4, 6), D(2017, 5, 4), D(2017, 6, 1)]
    last_friday = rec({"type": "relativeMonthly", "interval": 2, "daysOfWeek": ["friday"], "index": "last"})
    assert first(last_friday, 2) == [D(2017, 4, 28), D(2017, 6, 30)]


def test_absolute_yearly_and_relative_yearly() -> None:
    april_15 = rec({"type": "absoluteYearly", "interval": 1, "dayOfMonth": 15, "month": 4})
    assert first(april_15, 2) == [D(2017, 4, 15), D(2018, 4, 15)]
    last_wednesday_of_november = rec(
        {"type": "relativeYearly", "interval": 1, "daysOfWeek": ["Wednesday"], "index": "last", "month": 11}
    )
    assert first(last_wednesday_of_november, 2) == [D(2017, 11, 29), D(2018, 11, 28)]
    leap_day = rec(
        {"type": "absoluteYearly", "interval": 1, "dayOfMonth": 29, "month": 2},
        {"type": "noEnd", "startDate": "2024-02-29"},
    )
    assert first(leap_day, 2) == [D(2024, 2, 29), D(2025, 2, 28)]


def test_range_numbered_end_date_and_no_end() -> None:
    daily = {"type": "daily", "interval": 1}
    numbered = rec(daily, {"type": "numbered", "startDate": "2017-04-02", "numberOfOccurrences": 10})
    assert len(list(occurrence_dates(numbered))) == 10
    end_date = rec(daily, {"type": "endDate", "startDate": "2017-07-01", "endDate": "2017-07-31"})
    dates = list(occurrence_dates(end_date))
    assert (dates[0], dates[-1], len(dates)) == (D(2017, 7, 1), D(2017, 7, 31), 31)
    no_end = rec(daily, {"type": "noEnd", "startDate": "2017-05-15"})
    assert list(occurrence_dates(no_end, until=D(2017, 5, 17))) == [
        D(2017, 5, 15),
        D(2017, 5, 16),
        D(2017, 5, 17),
    ]


def test_weekly_across_dst_keeps_the_local_time() -> None:
    r = Recurrence.parse(
        {
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["Monday"]},
            "range": {"type": "numbered", "startDate": "2017-10-23", "numberOfOccurrences": 3},
        }
    )
    zone = timezones.resolve("Pacific Standard Time")
    starts = list(occurrence_starts(r, start_time=dt.time(12, 0), zone=zone))
    # PDT (UTC-7) until 2017-11-05, PST (UTC-8) after: the UTC hour moves, the local hour does not.
    assert [s.hour for s in starts] == [19, 19, 20]
    assert {s.astimezone(ZoneInfo("America/Los_Angeles")).hour for s in starts} == {12}


def test_documented_examples_all_parse_and_expand() -> None:
    examples = json.loads((FIXTURES / "recurrence_examples.json").read_text())
    default_range = {"type": "noEnd", "startDate": "2017-04-02"}
    default_pattern = {"type": "daily", "interval": 1}
    for example in examples:
        data = example.get("recurrence") or {
            "pattern": example.get("pattern", default_pattern),
            "range": example.get("range", default_range),
        }
        dates = list(itertools.islice(occurrence_dates(Recurrence.parse(data)), 5))
        assert dates
        assert dates == sorted(dates)
        assert dates[0] >= dt.date.fromisoformat(data["range"]["startDate"])


def test_to_graph_is_the_normalized_series_master_form() -> None:
    r = Recurrence.parse(
        {
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["Monday"]},
            "range": {"type": "endDate", "startDate": "2017-09-04", "endDate": "2017-12-31"},
        }
    )
    master = json.loads((FIXTURES / "event_series_master.json").read_text())
    assert r.to_graph("Pacific Standard Time") == master["recurrence"]


@pytest.mark.parametrize(
    "data",
    [
        {"pattern": {"type": "weekly", "interval": 1}, "range": {"type": "noEnd", "startDate": "2017-01-01"}},
        {"pattern": {"type": "hourly", "interval": 1}, "range": {"type": "noEnd", "startDate": "2017-01-01"}},
        {"pattern": {"type": "daily", "interval": 0}, "range": {"type": "noEnd", "startDate": "2017-01-01"}},
        {
            "pattern": {"type": "absoluteYearly", "interval": 1, "dayOfMonth": 3},
            "range": {"type": "noEnd", "startDate": "2017-01-01"},
        },
        {
            "pattern": {"type": "daily", "interval": 1},
            "range": {"type": "numbered", "startDate": "2017-01-01", "numberOfOccurrences": 0},
        },
        {
            "pattern": {"type": "daily", "interval": 1},
            "range": {"type": "endDate", "startDate": "2017-01-05", "endDate": "2017-01-01"},
        },
        {
            "pattern": {"type": "daily", "interval": 1},
            "range": {"type": "sometimes", "startDate": "2017-01-01"},
        },
    ],
)
def test_invalid_recurrences_are_rejected(data: dict[str, Any]) -> None:
    with pytest.raises(RecurrenceError):
        Recurrence.parse(data)
