"""Occurrence expansion (sync_core.domain.recurrence): known calendars, DST, windows, caps, and the same
answers as the Graph emulator's expansion for random series."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devkit.graph_emulator import recurrence as emulator
from devkit.graph_emulator import timezones as emulator_zones
from sync_core.domain.graph_payloads import PatternType, RangeType
from sync_core.domain.mapping import graph_recurrence
from sync_core.domain.model import Activity, AllDay, Recurrence, RecurrencePattern, RecurrenceRange, Timed
from sync_core.domain.recurrence import (
    DAYS_OF_WEEK,
    WEEK_INDEXES,
    Window,
    expand_series,
    expand_timed,
    is_occurrence,
    occurrence_dates,
    occurrence_key,
    occurrence_times,
    series_has_ended,
)

BERLIN = ZoneInfo("Europe/Berlin")
D = date


def series(
    start: datetime,
    pattern: RecurrencePattern,
    span: RecurrenceRange | None = None,
    *,
    minutes: int = 60,
    zone: str = "Europe/Berlin",
) -> Activity:
    span = span or RecurrenceRange(RangeType.NO_END, start.date())
    return Activity(
        subject="Standup",
        when=Timed(start, start + timedelta(minutes=minutes), zone),
        recurrence=Recurrence(pattern, span),
    )


def window(first: date, last: date, tz: Any = UTC) -> Window:
    return Window(datetime.combine(first, time(), tz), datetime.combine(last, time(), tz))


def dates_of(recurrence: Recurrence, count: int) -> list[date]:
    return list(itertools.islice(occurrence_dates(recurrence), count))


# --- known calendars ----------------------------------------------------------------------------------------


def test_weekly_monday_wednesday_keeps_nine_local_across_the_last_sunday_of_march() -> None:
    # Berlin moves to summer time on Sunday 29 March 2026: 09:00 local is 08:00 UTC before, 07:00 after.
    standup = series(
        datetime(2026, 3, 16, 9, tzinfo=BERLIN),
        RecurrencePattern(PatternType.WEEKLY, 1, ("monday", "wednesday")),
    )
    found = expand_series(standup, window=window(D(2026, 3, 16), D(2026, 3, 31)), max_occurrences=50)
    assert [
        o.start.astimezone(BERLIN).time() for o in found.occurrences if isinstance(o.start, datetime)
    ] == [time(9)] * 5
    assert found.keys == (
        datetime(2026, 3, 16, 8, tzinfo=UTC),
        datetime(2026, 3, 18, 8, tzinfo=UTC),
        datetime(2026, 3, 23, 8, tzinfo=UTC),
        datetime(2026, 3, 25, 8, tzinfo=UTC),
        datetime(2026, 3, 30, 7, tzinfo=UTC),
    )
    assert [o.end for o in found.occurrences][-1] == datetime(2026, 3, 30, 10, tzinfo=BERLIN)
    assert not found.truncated


def test_relative_monthly_last_friday() -> None:
    last_friday = Recurrence(
        RecurrencePattern(PatternType.RELATIVE_MONTHLY, 1, ("friday",), index="last"),
        RecurrenceRange(RangeType.NO_END, D(2026, 1, 1)),
    )
    assert dates_of(last_friday, 5) == [
        D(2026, 1, 30),
        D(2026, 2, 27),
        D(2026, 3, 27),
        D(2026, 4, 24),
        D(2026, 5, 29),
    ]


def test_relative_monthly_first_of_several_days_is_the_first_of_any() -> None:
    first_thursday_or_friday = Recurrence(
        RecurrencePattern(PatternType.RELATIVE_MONTHLY, 1, ("thursday", "friday")),
        RecurrenceRange(RangeType.NO_END, D(2017, 4, 2)),
    )
    assert dates_of(first_thursday_or_friday, 3) == [D(2017, 4, 6), D(2017, 5, 4), D(2017, 6, 1)]


def test_absolute_yearly_29_february_falls_on_the_28th_in_other_years() -> None:
    leap_day = Recurrence(
        RecurrencePattern(PatternType.ABSOLUTE_YEARLY, 1, day_of_month=29, month=2),
        RecurrenceRange(RangeType.NO_END, D(2024, 2, 29)),
    )
    assert dates_of(leap_day, 5) == [
        D(2024, 2, 29),
        D(2025, 2, 28),
        D(2026, 2, 28),
        D(2027, 2, 28),
        D(2028, 2, 29),
    ]


def test_absolute_monthly_31st_clamps_to_the_month_end() -> None:
    month_end = Recurrence(
        RecurrencePattern(PatternType.ABSOLUTE_MONTHLY, 1, day_of_month=31),
        RecurrenceRange(RangeType.NO_END, D(2017, 1, 31)),
    )
    assert dates_of(month_end, 4) == [D(2017, 1, 31), D(2017, 2, 28), D(2017, 3, 31), D(2017, 4, 30)]


def test_relative_yearly_last_wednesday_of_november() -> None:
    thanksgiving_eve = Recurrence(
        RecurrencePattern(PatternType.RELATIVE_YEARLY, 1, ("wednesday",), index="last", month=11),
        RecurrenceRange(RangeType.NO_END, D(2017, 1, 1)),
    )
    assert dates_of(thanksgiving_eve, 2) == [D(2017, 11, 29), D(2018, 11, 28)]


def test_weekly_interval_counts_weeks_from_first_day_of_week() -> None:
    base = RecurrencePattern(PatternType.WEEKLY, 2, ("sunday", "wednesday"))
    span = RecurrenceRange(RangeType.NO_END, D(2017, 4, 5))
    assert dates_of(Recurrence(base, span), 3) == [D(2017, 4, 5), D(2017, 4, 16), D(2017, 4, 19)]
    monday_weeks = RecurrencePattern(
        PatternType.WEEKLY, 2, ("sunday", "wednesday"), first_day_of_week="monday"
    )
    assert dates_of(Recurrence(monday_weeks, span), 3) == [D(2017, 4, 5), D(2017, 4, 9), D(2017, 4, 19)]


def test_ranges_numbered_and_end_date_inclusive() -> None:
    daily = RecurrencePattern(PatternType.DAILY, 3)
    numbered = Recurrence(daily, RecurrenceRange(RangeType.NUMBERED, D(2017, 4, 2), number_of_occurrences=3))
    assert list(occurrence_dates(numbered)) == [D(2017, 4, 2), D(2017, 4, 5), D(2017, 4, 8)]
    until = Recurrence(daily, RecurrenceRange(RangeType.END_DATE, D(2017, 7, 1), end_date=D(2017, 7, 7)))
    assert list(occurrence_dates(until)) == [D(2017, 7, 1), D(2017, 7, 4), D(2017, 7, 7)]


def test_a_start_time_dst_skips_reads_with_the_offset_before_the_change() -> None:
    # 02:30 does not exist in Berlin on 29 March 2026; like the emulator (fold=0) it is 01:30 UTC.
    early = series(datetime(2026, 3, 28, 2, 30, tzinfo=BERLIN), RecurrencePattern(PatternType.DAILY, 1))
    keys = expand_series(early, window=window(D(2026, 3, 28), D(2026, 3, 31)), max_occurrences=5).keys
    assert keys == (
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
    )


def test_recurrence_time_zone_wins_over_the_activity_zone() -> None:
    # The event is shown in UTC but recurs in New York: 14:00 UTC is 10:00 EDT, and stays 10:00 local.
    start = datetime(2026, 10, 26, 14, tzinfo=UTC)
    meeting = series(
        start,
        RecurrencePattern(PatternType.WEEKLY, 1, ("monday",)),
        RecurrenceRange(RangeType.NO_END, start.date(), recurrence_time_zone="America/New_York"),
        zone="UTC",
    )
    keys = expand_series(meeting, window=window(D(2026, 10, 26), D(2026, 11, 10)), max_occurrences=5).keys
    assert keys == (
        datetime(2026, 10, 26, 14, tzinfo=UTC),
        datetime(2026, 11, 2, 15, tzinfo=UTC),
        datetime(2026, 11, 9, 15, tzinfo=UTC),
    )


# --- windows and caps ---------------------------------------------------------------------------------------


def test_an_occurrence_overlapping_the_window_start_is_in_it() -> None:
    long_one = series(
        datetime(2026, 1, 5, 22, tzinfo=UTC), RecurrencePattern(PatternType.DAILY, 1), minutes=240, zone="UTC"
    )
    found = expand_series(
        long_one,
        window=Window(datetime(2026, 1, 6, 1, tzinfo=UTC), datetime(2026, 1, 7, 0, tzinfo=UTC)),
        max_occurrences=9,
    )
    assert found.keys == (datetime(2026, 1, 5, 22, tzinfo=UTC), datetime(2026, 1, 6, 22, tzinfo=UTC))


def test_max_occurrences_caps_and_says_so() -> None:
    daily = series(datetime(2026, 1, 5, 9, tzinfo=BERLIN), RecurrencePattern(PatternType.DAILY, 1))
    capped = expand_series(daily, window=None, max_occurrences=10)
    assert len(capped.occurrences) == 10
    assert capped.truncated
    exact = expand_series(
        series(
            datetime(2026, 1, 5, 9, tzinfo=BERLIN),
            RecurrencePattern(PatternType.DAILY, 1),
            RecurrenceRange(RangeType.NUMBERED, D(2026, 1, 5), number_of_occurrences=10),
        ),
        window=None,
        max_occurrences=10,
    )
    assert len(exact.occurrences) == 10
    assert not exact.truncated


def test_all_day_series_keys_are_dates() -> None:
    holiday = Activity(
        subject="Off",
        when=AllDay(D(2026, 1, 2), D(2026, 1, 3), "Europe/Berlin"),
        recurrence=Recurrence(
            RecurrencePattern(PatternType.WEEKLY, 1, ("friday",)),
            RecurrenceRange(RangeType.NO_END, D(2026, 1, 2)),
        ),
    )
    found = expand_series(holiday, window=window(D(2026, 1, 1), D(2026, 1, 17), BERLIN), max_occurrences=9)
    assert found.keys == (D(2026, 1, 2), D(2026, 1, 9), D(2026, 1, 16))
    assert found.occurrences[0].end == D(2026, 1, 3)
    # Graph's originalStart of an all-day occurrence is an instant: its date in the series zone is the key.
    assert occurrence_key(holiday, datetime(2026, 1, 8, 23, tzinfo=UTC)) == D(2026, 1, 9)


def test_is_occurrence() -> None:
    standup = series(
        datetime(2026, 3, 16, 9, tzinfo=BERLIN),
        RecurrencePattern(PatternType.WEEKLY, 1, ("monday", "wednesday")),
    )
    assert is_occurrence(standup, datetime(2026, 3, 30, 9, tzinfo=BERLIN)) is True
    assert is_occurrence(standup, datetime(2026, 3, 30, 10, tzinfo=BERLIN)) is False  # wrong time
    assert is_occurrence(standup, datetime(2026, 3, 31, 9, tzinfo=BERLIN)) is False  # a Tuesday
    assert is_occurrence(standup, datetime(2026, 3, 9, 9, tzinfo=BERLIN)) is False  # before the start
    assert is_occurrence(standup, datetime(9000, 3, 6, 9, tzinfo=BERLIN)) is None  # too far to walk to


def test_series_has_ended() -> None:
    start = datetime(2026, 1, 5, 9, tzinfo=BERLIN)
    ten = series(
        start,
        RecurrencePattern(PatternType.DAILY, 1),
        RecurrenceRange(RangeType.NUMBERED, start.date(), number_of_occurrences=10),
    )
    assert not series_has_ended(ten, datetime(2026, 1, 14, 9, 30, tzinfo=BERLIN))  # the last one is running
    assert series_has_ended(ten, datetime(2026, 1, 14, 10, tzinfo=BERLIN))
    forever = series(start, RecurrencePattern(PatternType.DAILY, 1))
    assert not series_has_ended(forever, datetime(2100, 1, 1, tzinfo=UTC))
    assert not forever.has_ended(datetime(2026, 1, 5, 9, 30, tzinfo=BERLIN))


def test_a_pattern_missing_what_its_type_needs_has_no_occurrences() -> None:
    for pattern in (
        RecurrencePattern(PatternType.WEEKLY, 1),
        RecurrencePattern(PatternType.ABSOLUTE_MONTHLY, 1),
        RecurrencePattern(PatternType.RELATIVE_YEARLY, 1, ("monday",)),
    ):
        assert dates_of(Recurrence(pattern, RecurrenceRange(RangeType.NO_END, D(2026, 1, 1))), 3) == []


# --- the same answers as the Graph emulator -----------------------------------------------------------------

ZONES = (
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "UTC",
    "America/Los_Angeles",
)


@st.composite
def recurrences(draw: st.DrawFn) -> Recurrence:
    kind = draw(st.sampled_from(PatternType))
    days = tuple(draw(st.sets(st.sampled_from(DAYS_OF_WEEK), min_size=1, max_size=4)))
    pattern = RecurrencePattern(
        type=kind,
        interval=draw(st.integers(1, 4)),
        days_of_week=days
        if kind in (PatternType.WEEKLY, PatternType.RELATIVE_MONTHLY, PatternType.RELATIVE_YEARLY)
        else (),
        first_day_of_week=draw(st.sampled_from(DAYS_OF_WEEK)),
        index=draw(st.sampled_from(WEEK_INDEXES)),
        day_of_month=draw(st.integers(1, 31))
        if kind in (PatternType.ABSOLUTE_MONTHLY, PatternType.ABSOLUTE_YEARLY)
        else None,
        month=draw(st.integers(1, 12))
        if kind in (PatternType.ABSOLUTE_YEARLY, PatternType.RELATIVE_YEARLY)
        else None,
    )
    start = draw(st.dates(D(2020, 1, 1), D(2030, 12, 31)))
    range_type = draw(st.sampled_from(RangeType))
    span = RecurrenceRange(
        range_type,
        start,
        end_date=start + timedelta(days=draw(st.integers(0, 900)))
        if range_type is RangeType.END_DATE
        else None,
        number_of_occurrences=draw(st.integers(1, 60)) if range_type is RangeType.NUMBERED else None,
    )
    return Recurrence(pattern, span)


@settings(max_examples=300, deadline=None)
@given(
    recurrences(),
    st.sampled_from(ZONES),
    st.sampled_from([time(9), time(2, 30), time(1, 30), time(0, 0), time(23, 45)]),
)
def test_timed_expansion_matches_the_emulator(
    recurrence: Recurrence, zone_name: str, local_start: time
) -> None:
    theirs = emulator.Recurrence.parse(graph_recurrence(recurrence))
    until = datetime.combine(recurrence.range.start_date + timedelta(days=3 * 366), time(), UTC)
    expected = [
        instant
        for instant in emulator.occurrence_starts(
            theirs, start_time=local_start, zone=emulator_zones.resolve(zone_name), until=until
        )
        if instant < until
    ]
    ours = expand_timed(
        recurrence,
        local_start=local_start,
        duration=timedelta(minutes=30),
        zone_name=zone_name,
        window=Window(datetime(1990, 1, 1, tzinfo=UTC), until),
        max_occurrences=5000,
    )
    assert list(ours.keys) == expected
    assert not ours.truncated


@settings(max_examples=200, deadline=None)
@given(recurrences())
def test_dates_match_the_emulator(recurrence: Recurrence) -> None:
    theirs = emulator.Recurrence.parse(graph_recurrence(recurrence))
    assert dates_of(recurrence, 80) == list(itertools.islice(emulator.occurrence_dates(theirs), 80))


@pytest.mark.parametrize("zone_name", ["W. Europe Standard Time", "Europe/Berlin"])
def test_windows_and_iana_recurrence_zones_expand_alike(zone_name: str) -> None:
    start = datetime(2026, 3, 23, 9, tzinfo=BERLIN)
    meeting = series(
        start,
        RecurrencePattern(PatternType.WEEKLY, 1, ("monday",)),
        RecurrenceRange(RangeType.NO_END, start.date(), recurrence_time_zone=zone_name),
        zone="UTC",
    )
    assert expand_series(meeting, window=window(D(2026, 3, 23), D(2026, 4, 1)), max_occurrences=3).keys == (
        datetime(2026, 3, 23, 8, tzinfo=UTC),
        datetime(2026, 3, 30, 7, tzinfo=UTC),
    )


def test_occurrences_last_as_long_as_the_master_in_real_time() -> None:
    # 01:00-04:00 in Berlin on the night clocks go forward is two hours; every occurrence lasts two hours.
    night = series(
        datetime(2026, 3, 29, 1, tzinfo=BERLIN),
        RecurrencePattern(PatternType.DAILY, 1),
        minutes=0,
    )
    night = replace(
        night,
        when=Timed(
            datetime(2026, 3, 29, 1, tzinfo=BERLIN), datetime(2026, 3, 29, 4, tzinfo=BERLIN), "Europe/Berlin"
        ),
    )
    (first, second) = expand_series(
        night, window=window(D(2026, 3, 28), D(2026, 3, 31)), max_occurrences=2
    ).occurrences
    assert first.end == datetime(2026, 3, 29, 2, tzinfo=UTC)  # 04:00 summer time
    assert second.end == datetime(2026, 3, 30, 1, tzinfo=UTC)  # 01:00-03:00 summer time
    assert occurrence_times(night, first.original_start)[1] == datetime(2026, 3, 29, 4, tzinfo=BERLIN)
