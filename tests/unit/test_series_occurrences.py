"""One occurrence of a series, a series cut to a window, and overrides carried over a retime (series.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sync_core.domain.graph_payloads import PatternType, RangeType
from sync_core.domain.model import (
    Activity,
    AllDay,
    Attendee,
    OccurrenceOverride,
    Recurrence,
    RecurrencePattern,
    RecurrenceRange,
    Timed,
)
from sync_core.domain.recurrence import Window
from sync_core.domain.series import is_cancelled, occurrence_activity, override_of, rekeyed, within

BERLIN = ZoneInfo("Europe/Berlin")


def berlin(day: int, hour: int = 10, month: int = 1) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=BERLIN)


def standup(start: datetime | None = None, days: tuple[str, ...] = ("monday", "wednesday")) -> Activity:
    start = start or berlin(5)
    return Activity(
        subject="Standup",
        when=Timed(start, start + timedelta(minutes=30), "Europe/Berlin"),
        location="Room 1",
        attendees=(Attendee("ada@contoso.com"),),
        recurrence=Recurrence(
            RecurrencePattern(PatternType.WEEKLY, 1, days),
            RecurrenceRange(RangeType.NO_END, start.date()),
        ),
        occurrence_overrides=(
            OccurrenceOverride(berlin(12), subject="Planning", start=berlin(13, 14), end=berlin(13, 15)),
            OccurrenceOverride(berlin(19), location=""),
        ),
        cancelled_occurrences=(berlin(14),),
    )


def test_an_occurrence_is_the_series_with_its_override_applied() -> None:
    series = standup()
    moved = occurrence_activity(series, berlin(12).astimezone(UTC))
    assert moved.when == Timed(berlin(13, 14), berlin(13, 15), "Europe/Berlin")
    assert (moved.subject, moved.location, moved.attendees) == ("Planning", "Room 1", series.attendees)
    assert not moved.is_recurring
    assert moved.occurrence_overrides == ()
    cleared = occurrence_activity(series, berlin(19))
    assert (cleared.subject, cleared.location) == ("Standup", "")
    plain = occurrence_activity(series, berlin(21))
    assert plain.when == Timed(berlin(21), berlin(21, 10) + timedelta(minutes=30), "Europe/Berlin")
    assert override_of(series, berlin(21)) is None
    assert is_cancelled(series, datetime(2026, 1, 14, 9, tzinfo=UTC))
    assert not is_cancelled(series, berlin(12))


def test_within_keeps_what_a_read_of_the_window_can_know() -> None:
    series = standup()
    first_half = within(series, Window(berlin(1), berlin(15)))
    assert [o.original_start for o in first_half.occurrence_overrides] == [berlin(12)]
    assert first_half.cancelled_occurrences == (berlin(14),)
    # An occurrence moved out of the window still belongs to it: where the pattern put it is what counts.
    assert (
        within(series, Window(berlin(12), berlin(12, 11))).occurrence_overrides
        == series.occurrence_overrides[:1]
    )
    assert within(replace(series, recurrence=None), Window(berlin(1), berlin(2))) == replace(
        series, recurrence=None
    )


def test_a_retimed_series_keeps_its_exceptions_on_the_same_days() -> None:
    before = standup()
    later = replace(standup(start=berlin(5, 11)), occurrence_overrides=(), cancelled_occurrences=())
    carried = rekeyed(later, before)
    assert [o.original_start for o in carried.occurrence_overrides] == [berlin(12, 11), berlin(19, 11)]
    assert carried.occurrence_overrides[0].start == berlin(13, 14)  # a moved occurrence stays where it went
    assert carried.cancelled_occurrences == (berlin(14, 11),)


def test_a_new_pattern_drops_exceptions_whose_day_has_no_occurrence() -> None:
    mondays_only = replace(standup(days=("monday",)), occurrence_overrides=(), cancelled_occurrences=())
    carried = rekeyed(mondays_only, standup())
    assert [o.original_start for o in carried.occurrence_overrides] == [berlin(12), berlin(19)]
    assert carried.cancelled_occurrences == ()  # Wednesday 14th is no occurrence any more
    assert rekeyed(replace(mondays_only, recurrence=None), standup()).occurrence_overrides == ()


def test_an_all_day_series_is_keyed_by_dates() -> None:
    series = Activity(
        subject="Off",
        when=AllDay(date(2026, 1, 2), date(2026, 1, 3), "Europe/Berlin"),
        recurrence=Recurrence(
            RecurrencePattern(PatternType.WEEKLY, 1, ("friday",)),
            RecurrenceRange(RangeType.NO_END, date(2026, 1, 2)),
        ),
        occurrence_overrides=(
            OccurrenceOverride(date(2026, 1, 9), start=date(2026, 1, 8), end=date(2026, 1, 9)),
        ),
    )
    assert occurrence_activity(series, date(2026, 1, 9)).when == AllDay(
        date(2026, 1, 8), date(2026, 1, 9), "Europe/Berlin"
    )
    assert occurrence_activity(series, date(2026, 1, 16)).when == AllDay(
        date(2026, 1, 16), date(2026, 1, 17), "Europe/Berlin"
    )
    # Graph's originalStart of an all-day occurrence is an instant: read as its date in the series' zone.
    assert override_of(series, datetime(2026, 1, 8, 23, tzinfo=UTC)) is not None
