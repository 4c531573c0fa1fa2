"""The canonical values and hashes of a series' three fields, and that single items hash as before."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from sync_core.domain.graph_payloads import PatternType, RangeType
from sync_core.domain.hashing import HASHED_FIELDS, Base, canonical_value, field_hash
from sync_core.domain.model import (
    SERIES_FIELDS,
    Activity,
    AllDay,
    Attendee,
    Field,
    OccurrenceOverride,
    Recurrence,
    RecurrencePattern,
    RecurrenceRange,
    Side,
    Timed,
)
from sync_core.domain.state import Link

BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2026, 1, 5, 10, tzinfo=BERLIN)


def standup(
    pattern: RecurrencePattern | None = None, span: RecurrenceRange | None = None, **changes: object
) -> Activity:
    activity = Activity(
        subject="Standup",
        when=Timed(START, START + timedelta(hours=1), "Europe/Berlin"),
        location="Room 1",
        description="Notes",
        attendees=(Attendee("ada@contoso.com"),),
        recurrence=Recurrence(
            pattern or RecurrencePattern(PatternType.WEEKLY, 1, ("monday", "wednesday")),
            span or RecurrenceRange(RangeType.END_DATE, START.date(), date(2026, 3, 30)),
        ),
    )
    return replace(activity, **changes)  # type: ignore[arg-type]


def same(field_: Field, one: Activity, other: Activity) -> bool:
    return field_hash(field_, one) == field_hash(field_, other)


def test_the_merge_of_single_items_hashes_what_it_always_did() -> None:
    assert HASHED_FIELDS == (
        Field.SUBJECT,
        Field.DESCRIPTION,
        Field.START_END,
        Field.LOCATION,
        Field.PRIVACY,
        Field.ONLINE_MEETING,
        Field.JOIN_URL,
        Field.ORGANIZER,
    )
    single = replace(standup(), recurrence=None)
    assert {field_ for (_, field_) in Base.side_hashes(Side.M365, single)} == set(HASHED_FIELDS)
    assert [canonical_value(field_, single) for field_ in SERIES_FIELDS] == [None, [], []]


def test_series_hashes_are_stored_and_read_back_with_the_others() -> None:
    series = standup(cancelled_occurrences=(datetime(2026, 1, 7, 9, tzinfo=UTC),))
    base = Base(hashes={**Base.side_hashes(Side.CRM, series), **Base.series_hashes(Side.CRM, series)})
    link = Link(user_id="u", crm_id="c", graph_id="g", base_hashes=base.stored_hashes())
    assert "crm.cancelled_occurrences" in link.base_hashes
    assert Base.from_link(link).hashes == base.hashes


# --- the recurrence ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "zone_name", ["Europe/Berlin", "W. Europe Standard Time", "Europe/Vienna", "Europe/Amsterdam", None]
)
def test_the_series_zone_counts_by_its_offsets(zone_name: str | None) -> None:
    span = RecurrenceRange(
        RangeType.END_DATE, START.date(), date(2026, 3, 30), recurrence_time_zone=zone_name
    )
    assert same(Field.RECURRENCE, standup(span=span), standup())
    london = replace(span, recurrence_time_zone="Europe/London")
    assert not same(Field.RECURRENCE, standup(span=london), standup())


def test_properties_the_pattern_type_does_not_use_do_not_count() -> None:
    weekly = RecurrencePattern(PatternType.WEEKLY, 1, ("monday", "wednesday"))
    noisy = RecurrencePattern(
        PatternType.WEEKLY,
        1,
        ("wednesday", "monday"),
        first_day_of_week="monday",
        index="last",
        day_of_month=3,
    )
    assert same(Field.RECURRENCE, standup(noisy), standup(weekly))
    # Every other week, the first day of the week decides which weeks count.
    fortnightly = replace(weekly, interval=2)
    assert not same(
        Field.RECURRENCE, standup(fortnightly), standup(replace(fortnightly, first_day_of_week="monday"))
    )
    assert not same(Field.RECURRENCE, standup(fortnightly), standup(weekly))
    daily = RecurrencePattern(PatternType.DAILY, 1)
    assert same(Field.RECURRENCE, standup(daily), standup(replace(daily, days_of_week=("friday",), month=2)))
    counted = RecurrenceRange(
        RangeType.NO_END, START.date(), end_date=date(2026, 2, 1), number_of_occurrences=3
    )
    assert same(
        Field.RECURRENCE, standup(span=counted), standup(span=RecurrenceRange(RangeType.NO_END, START.date()))
    )


def test_a_different_range_is_a_different_recurrence() -> None:
    shorter = RecurrenceRange(RangeType.END_DATE, START.date(), date(2026, 2, 28))
    assert not same(Field.RECURRENCE, standup(span=shorter), standup())


# --- overrides and cancellations ---------------------------------------------------------------------------

MONDAY = datetime(2026, 1, 12, 10, tzinfo=BERLIN)


def test_an_override_counts_only_by_what_it_changes() -> None:
    plain = standup()
    no_op = standup(
        occurrence_overrides=(
            OccurrenceOverride(
                MONDAY,
                subject=" Standup ",
                location="Room 1",
                description="Notes\n\n",
                start=MONDAY,
                end=MONDAY + timedelta(hours=1),
                attendees=(Attendee("ada@contoso.com", name="Ada"),),
            ),
        )
    )
    assert same(Field.OCCURRENCE_OVERRIDES, no_op, plain)
    assert canonical_value(Field.OCCURRENCE_OVERRIDES, plain) == []
    moved = standup(
        occurrence_overrides=(OccurrenceOverride(MONDAY, start=MONDAY, end=MONDAY + timedelta(hours=2)),)
    )
    assert canonical_value(Field.OCCURRENCE_OVERRIDES, moved) == [
        ["2026-01-12T09:00:00Z", {"start": "2026-01-12T09:00:00Z", "end": "2026-01-12T11:00:00Z"}]
    ]
    cleared = standup(occurrence_overrides=(OccurrenceOverride(MONDAY, location=""),))
    assert canonical_value(Field.OCCURRENCE_OVERRIDES, cleared) == [
        ["2026-01-12T09:00:00Z", {"location": ""}]
    ]


def test_original_starts_are_instants_whatever_their_offset() -> None:
    retitled = OccurrenceOverride(MONDAY, subject="Planning")
    in_utc = replace(retitled, original_start=MONDAY.astimezone(UTC))
    assert same(
        Field.OCCURRENCE_OVERRIDES,
        standup(occurrence_overrides=(retitled,)),
        standup(occurrence_overrides=(in_utc,)),
    )
    wednesday = datetime(2026, 1, 14, 10, tzinfo=BERLIN)
    one = standup(cancelled_occurrences=(wednesday, MONDAY))
    other = standup(cancelled_occurrences=(MONDAY.astimezone(UTC), wednesday.astimezone(UTC), MONDAY))
    assert same(Field.CANCELLED_OCCURRENCES, one, other)
    assert canonical_value(Field.CANCELLED_OCCURRENCES, one) == [
        "2026-01-12T09:00:00Z",
        "2026-01-14T09:00:00Z",
    ]


def test_an_override_of_a_cancelled_occurrence_does_not_count() -> None:
    cancelled = standup(cancelled_occurrences=(MONDAY,))
    also_overridden = replace(cancelled, occurrence_overrides=(OccurrenceOverride(MONDAY, subject="Gone"),))
    assert same(Field.OCCURRENCE_OVERRIDES, also_overridden, cancelled)
    assert same(Field.CANCELLED_OCCURRENCES, also_overridden, cancelled)


def test_all_day_keys_are_dates() -> None:
    day = standup(when=AllDay(date(2026, 1, 5), date(2026, 1, 6), "Europe/Berlin"))
    moved = replace(
        day,
        occurrence_overrides=(
            OccurrenceOverride(date(2026, 1, 12), start=date(2026, 1, 13), end=date(2026, 1, 14)),
        ),
        cancelled_occurrences=(date(2026, 1, 14),),
    )
    assert canonical_value(Field.OCCURRENCE_OVERRIDES, moved) == [
        ["2026-01-12", {"start": "2026-01-13", "end": "2026-01-14"}]
    ]
    assert canonical_value(Field.CANCELLED_OCCURRENCES, moved) == ["2026-01-14"]
