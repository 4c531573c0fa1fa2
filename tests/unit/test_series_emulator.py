"""Series through the Graph emulator's calendar, in process: what ``series_to_graph`` writes, Outlook holds,
and ``series_from_graph`` reads back is the Activity we started from; edits made in Outlook arrive as
overrides and cancellations. (The emulator's calendar is used directly: no sockets, no clock but its own.)"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devkit.graph_emulator.calendar import Calendar, Owner, RenderContext
from devkit.graph_emulator.events import EventRecord, RenderOptions, clean_payload
from devkit.graph_emulator.settings import Clock, EmulatorSettings
from devkit.graph_emulator.util import ChangeKeys
from sync_core.config import DescriptionPolicy
from sync_core.domain.graph_payloads import PatternType, RangeType
from sync_core.domain.hashing import HASHED_FIELDS, canonical_value
from sync_core.domain.model import (
    SERIES_FIELDS,
    Activity,
    AllDay,
    OccurrenceOverride,
    Recurrence,
    RecurrencePattern,
    RecurrenceRange,
    Timed,
)
from sync_core.domain.recurrence import Window
from sync_core.domain.series import within
from sync_core.domain.series_from_graph import GraphSeries, series_from_graph
from sync_core.domain.series_to_graph import (
    DeleteInstance,
    InstancePlan,
    PatchInstance,
    graph_series_body,
    plan_instance_operations,
)

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 3, 1, tzinfo=UTC)
SPRING = Window(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC))
CONTEXT = RenderContext(RenderOptions("UTC", "text"), immutable=True)
OPTIONS: dict[str, Any] = {
    "now": NOW,
    "description_policy": DescriptionPolicy.ALWAYS,
    "invite_crm_contacts": False,
}


def berlin(month: int, day: int, hour: int = 9) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=BERLIN)


def new_calendar() -> Calendar:
    return Calendar(
        Owner("user-1", "Ada", "ada@contoso.com", "tenant-1"), Clock(), ChangeKeys(), EmulatorSettings()
    )


def create(calendar: Calendar, series: Activity) -> EventRecord:
    body = graph_series_body(series, for_create=True, **OPTIONS)
    record, _ = calendar.create(clean_payload(body, creating=True))
    return record


def listing(calendar: Calendar, record: EventRecord) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """GET the master and its /instances in SPRING, as Graph renders them (UTC, text bodies)."""
    master = calendar.render_record(record, CONTEXT)
    instances = [
        calendar.render(inst, CONTEXT)
        for inst in calendar.series_instances(record, (SPRING.start, SPRING.end))
    ]
    return master, instances


def apply(calendar: Calendar, plan: InstancePlan) -> None:
    for operation in plan.operations:
        ref = calendar.ref_for(operation.instance_id)
        if isinstance(operation, DeleteInstance):
            calendar.delete(ref)
        else:
            calendar.update(ref, clean_payload(operation.body_json(), creating=False))


def read(calendar: Calendar, record: EventRecord) -> GraphSeries:
    master, instances = listing(calendar, record)
    return series_from_graph(master, instances, window=SPRING, max_occurrences=500)


def plan_for(calendar: Calendar, record: EventRecord, series: Activity, **changes: Any) -> InstancePlan:
    _, instances = listing(calendar, record)
    return plan_instance_operations(
        series, instances, window=SPRING, max_occurrences=500, **{**OPTIONS, **changes}
    )


def assert_same_series(read_back: Activity, wanted: Activity) -> None:
    for field_ in (*HASHED_FIELDS, *SERIES_FIELDS):
        assert canonical_value(field_, read_back) == canonical_value(field_, within(wanted, SPRING)), field_


def standup() -> Activity:
    return Activity(
        subject="Standup",
        when=Timed(berlin(3, 16), berlin(3, 16) + timedelta(minutes=15), "Europe/Berlin"),
        location="Room 1",
        description="Daily notes",
        recurrence=Recurrence(
            RecurrencePattern(PatternType.WEEKLY, 1, ("monday", "wednesday"), first_day_of_week="monday"),
            RecurrenceRange(RangeType.NUMBERED, date(2026, 3, 16), number_of_occurrences=12),
        ),
    )


def test_a_series_with_a_moved_a_retitled_and_a_cancelled_occurrence_arrives_as_it_was_sent() -> None:
    wanted = replace(
        standup(),
        occurrence_overrides=(
            OccurrenceOverride(
                berlin(3, 23), start=berlin(3, 23, 11), end=berlin(3, 23, 11) + timedelta(minutes=15)
            ),
            # 30 March: the first Monday of summer time, still 09:00 in Berlin.
            OccurrenceOverride(berlin(3, 30), subject="Standup (planning)", location=""),
        ),
        cancelled_occurrences=(berlin(4, 1),),
    )
    calendar = new_calendar()
    record = create(calendar, wanted)
    first = plan_for(calendar, record, wanted, series_created=True)
    assert sorted(type(op).__name__ for op in first.operations) == [
        "DeleteInstance",
        "PatchInstance",
        "PatchInstance",
    ]
    apply(calendar, first)

    read_back = read(calendar, record)
    assert_same_series(read_back.activity, wanted)
    assert read_back.activity.cancelled_occurrences == (berlin(4, 1).astimezone(UTC),)
    assert plan_for(calendar, record, read_back.activity).operations == ()  # nothing left to do
    assert plan_for(calendar, record, wanted).operations == ()


def test_edits_made_in_outlook_arrive_as_overrides_and_cancellations() -> None:
    calendar = new_calendar()
    record = create(calendar, standup())
    _, instances = listing(calendar, record)
    by_start = {instance["originalStart"]: instance["id"] for instance in instances}
    # In Outlook: 18 March moved an hour later and retitled; 25 March deleted (cancelled).
    moved = calendar.ref_for(by_start["2026-03-18T08:00:00Z"])
    calendar.update(
        moved,
        clean_payload(
            {
                "subject": "Standup (late)",
                "start": {"dateTime": "2026-03-18T10:00:00", "timeZone": "W. Europe Standard Time"},
                "end": {"dateTime": "2026-03-18T10:15:00", "timeZone": "W. Europe Standard Time"},
            },
            creating=False,
        ),
    )
    calendar.delete(calendar.ref_for(by_start["2026-03-25T08:00:00Z"]))

    series = read(calendar, record).activity
    assert series.occurrence_overrides == (
        OccurrenceOverride(
            berlin(3, 18).astimezone(UTC),
            subject="Standup (late)",
            start=berlin(3, 18, 10),
            end=berlin(3, 18, 10) + timedelta(minutes=15),
        ),
    )
    assert series.cancelled_occurrences == (berlin(3, 25).astimezone(UTC),)
    # Writing the same back to a fresh copy of the series reproduces Outlook's state.
    copy = new_calendar()
    copy_record = create(copy, series)
    apply(copy, plan_for(copy, copy_record, series, series_created=True))
    assert_same_series(read(copy, copy_record).activity, series)


def test_undoing_an_outlook_exception_puts_the_occurrence_back() -> None:
    calendar = new_calendar()
    record = create(calendar, standup())
    _, instances = listing(calendar, record)
    first = instances[0]
    calendar.update(
        calendar.ref_for(first["id"]), clean_payload({"subject": "Changed in Outlook"}, creating=False)
    )
    undo = plan_for(calendar, record, standup())
    assert undo.operations == (
        PatchInstance(first["id"], berlin(3, 16).astimezone(UTC), {"subject": "Standup"}),
    )
    apply(calendar, undo)
    assert read(calendar, record).activity.occurrence_overrides == ()


@pytest.mark.parametrize(
    "pattern",
    [
        RecurrencePattern(PatternType.DAILY, 2),
        RecurrencePattern(PatternType.WEEKLY, 2, ("tuesday", "friday"), first_day_of_week="monday"),
        RecurrencePattern(PatternType.ABSOLUTE_MONTHLY, 1, day_of_month=31),
        RecurrencePattern(PatternType.RELATIVE_MONTHLY, 1, ("friday",), index="last"),
        RecurrencePattern(PatternType.ABSOLUTE_YEARLY, 1, day_of_month=31, month=3),
        RecurrencePattern(PatternType.RELATIVE_YEARLY, 1, ("monday",), index="first", month=4),
    ],
    ids=lambda pattern: pattern.type.value,
)
@pytest.mark.parametrize("range_type", list(RangeType), ids=lambda range_type: range_type.value)
def test_every_pattern_and_range_round_trips_with_one_cancellation(
    pattern: RecurrencePattern, range_type: RangeType
) -> None:
    start = berlin(3, 31, 14)
    span = RecurrenceRange(
        range_type,
        start.date(),
        end_date=date(2027, 6, 1) if range_type is RangeType.END_DATE else None,
        number_of_occurrences=40 if range_type is RangeType.NUMBERED else None,
    )
    series = Activity(
        subject="Review",
        when=Timed(start, start + timedelta(hours=1), "Europe/Berlin"),
        recurrence=Recurrence(pattern, span),
    )
    calendar = new_calendar()
    record = create(calendar, series)
    read_back = read(calendar, record).activity
    assert_same_series(read_back, series)
    _, instances = listing(calendar, record)
    if not instances:
        return  # nothing of this series falls in the window
    last = datetime.fromisoformat(instances[-1]["originalStart"])
    cancelled = replace(read_back, cancelled_occurrences=(last,))
    cancel = plan_for(calendar, record, cancelled)
    assert cancel.operations == (DeleteInstance(instances[-1]["id"], last),)
    apply(calendar, cancel)
    after = read(calendar, record).activity
    assert after.cancelled_occurrences == (last,)
    assert_same_series(after, cancelled)


def test_an_all_day_series_with_a_moved_day_and_a_cancelled_one() -> None:
    wanted = Activity(
        subject="Focus day",
        when=AllDay(date(2026, 3, 6), date(2026, 3, 7), "Europe/Berlin"),
        recurrence=Recurrence(
            RecurrencePattern(PatternType.WEEKLY, 1, ("friday",)),
            RecurrenceRange(RangeType.NO_END, date(2026, 3, 6)),
        ),
        occurrence_overrides=(
            OccurrenceOverride(date(2026, 3, 13), start=date(2026, 3, 12), end=date(2026, 3, 13)),
        ),
        cancelled_occurrences=(date(2026, 3, 20),),
    )
    calendar = new_calendar()
    record = create(calendar, wanted)
    apply(calendar, plan_for(calendar, record, wanted, series_created=True))
    read_back = read(calendar, record).activity
    assert read_back.occurrence_overrides == wanted.occurrence_overrides
    assert read_back.cancelled_occurrences == (date(2026, 3, 20),)
    assert_same_series(read_back, wanted)
