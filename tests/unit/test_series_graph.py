"""Series ⇄ Graph (series_from_graph, series_to_graph) on payloads shaped like the reference fixtures."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sync_core.config import DescriptionPolicy
from sync_core.domain.graph_payloads import PatternType, RangeType
from sync_core.domain.mapping import activity_from_graph, graph_event_body
from sync_core.domain.model import (
    Activity,
    Attendee,
    AttendeeKind,
    Field,
    OccurrenceOverride,
    Recurrence,
    RecurrencePattern,
    RecurrenceRange,
    Timed,
)
from sync_core.domain.recurrence import Window
from sync_core.domain.series_from_graph import series_from_graph
from sync_core.domain.series_to_graph import (
    DeleteInstance,
    PatchInstance,
    graph_series_body,
    plan_instance_operations,
)
from sync_core.errors import InvalidRequestError

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "graph-reference" / "fixtures"
LA = ZoneInfo("America/Los_Angeles")
APRIL = Window(datetime(2019, 4, 8, tzinfo=UTC), datetime(2019, 5, 1, tzinfo=UTC))
NOW = datetime(2019, 4, 1, tzinfo=UTC)
MASTER_ID = "AAMkAGUzYRgWAAA="
EXCEPTION_ID = "AAMkAGUzYAgI1sE1TatAAEYAAAAAlNFb2CNPe0ucP9you"
OCCURRENCE_IDS = {
    8: "AAMkAGUzYAgI1ru1JMcAAEYAAAAAlNFb2CNPe0ucP9you",
    22: "AAMkAGUzYAgI1sa1do_AAEYAAAAAlNFb2CNPe0ucP9you",
    29: "AAMkAGUzYAgI1sw1n3PAAEYAAAAAlNFb2CNPe0ucP9you",
}


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def utc(day: int, hour: int = 20, minute: int = 30) -> datetime:
    return datetime(2019, 4, day, hour, minute, tzinfo=UTC)


def review_master(**changes: Any) -> dict[str, Any]:
    """The master of the series ``event_instances_occurrences_and_exception.json`` lists (Graph documents
    only its instances), shaped as ``event_series_master.json``: weekly on Monday, 20:30-21:00 UTC."""
    master: dict[str, Any] = load("event_series_master.json")
    master.update(
        id=MASTER_ID,
        subject="Review strategy for Q3",
        originalStartTimeZone="UTC",
        originalEndTimeZone="UTC",
        start={"dateTime": "2019-04-08T20:30:00.0000000", "timeZone": "UTC"},
        end={"dateTime": "2019-04-08T21:00:00.0000000", "timeZone": "UTC"},
    )
    master["recurrence"]["range"].update(
        startDate="2019-04-08", endDate="2019-04-29", recurrenceTimeZone="UTC"
    )
    master.update(changes)
    return master


def review_instances(*, with_original_start: bool = False) -> list[dict[str, Any]]:
    instances: list[dict[str, Any]] = load("event_instances_occurrences_and_exception.json")["value"]
    if with_original_start:  # what $select=originalStart adds
        for instance in instances:
            instance["originalStart"] = (
                "2019-04-15T20:30:00Z"
                if instance["type"] == "exception"
                else instance["start"]["dateTime"][:19] + "Z"
            )
    return instances


def without(instances: list[dict[str, Any]], instance_id: str) -> list[dict[str, Any]]:
    return [instance for instance in instances if instance["id"] != instance_id]


# --- Outlook → Activity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_original_start", [False, True])
def test_the_documented_exception_becomes_an_override_of_the_occurrence_it_moved(
    with_original_start: bool,
) -> None:
    read = series_from_graph(
        review_master(),
        review_instances(with_original_start=with_original_start),
        window=APRIL,
        max_occurrences=50,
    )
    activity = read.activity
    assert activity.subject == "Review strategy for Q3"
    assert activity.recurrence is not None
    assert activity.recurrence.pattern.days_of_week == ("monday",)
    # "Changing meeting from 4/15 to 4/16": only the times changed (the payload carries no body or location).
    assert activity.occurrence_overrides == (OccurrenceOverride(utc(15), start=utc(16), end=utc(16, 21, 0)),)
    assert activity.cancelled_occurrences == ()
    assert read.instance_ids == {
        utc(8): OCCURRENCE_IDS[8],
        utc(15): EXCEPTION_ID,
        utc(22): OCCURRENCE_IDS[22],
        utc(29): OCCURRENCE_IDS[29],
    }
    assert read.unmatched == ()
    assert not read.truncated


def test_an_occurrence_missing_from_the_listing_is_cancelled() -> None:
    read = series_from_graph(
        review_master(), without(review_instances(), OCCURRENCE_IDS[22]), window=APRIL, max_occurrences=50
    )
    assert read.activity.cancelled_occurrences == (utc(22),)
    assert len(read.activity.occurrence_overrides) == 1


def test_the_margin_keeps_absences_near_the_window_edges_unjudged() -> None:
    listing = without(
        without(review_instances(with_original_start=True), OCCURRENCE_IDS[8]), OCCURRENCE_IDS[22]
    )
    read = series_from_graph(
        review_master(), listing, window=APRIL, max_occurrences=50, margin=timedelta(days=3)
    )
    # Judged: 11 to 28 April; 8 April is too near the edge to tell a cancellation from a move out of it.
    assert read.activity.cancelled_occurrences == (utc(22),)
    assert read.activity.occurrence_overrides == (
        OccurrenceOverride(utc(15), start=utc(16), end=utc(16, 21, 0)),
    )


def test_an_incomplete_listing_cancels_nothing() -> None:
    listing = without(review_instances(), OCCURRENCE_IDS[22])
    read = series_from_graph(review_master(), listing, window=APRIL, max_occurrences=50, complete=False)
    assert read.activity.cancelled_occurrences == ()


def test_the_masters_cancelled_occurrences_name_cancellations_by_date() -> None:
    master = review_master(cancelledOccurrences=[f"OID.{MASTER_ID}.2019-04-22"])
    read = series_from_graph(master, review_instances(), window=APRIL, max_occurrences=50, complete=False)
    assert read.activity.cancelled_occurrences == (utc(22),)


def test_an_occurrence_the_organizer_cancelled_is_cancelled_in_an_attendees_copy() -> None:
    instances = review_instances()
    moved = next(item for item in instances if item["id"] == EXCEPTION_ID)
    moved.update(isCancelled=True, subject="Canceled: Review strategy for Q3")
    read = series_from_graph(review_master(isOrganizer=False), instances, window=APRIL, max_occurrences=50)
    assert read.activity.cancelled_occurrences == (utc(15),)
    assert read.activity.occurrence_overrides == ()  # a cancelled occurrence has no override


def test_an_exception_keeps_only_what_differs_from_the_series() -> None:
    instances = review_instances(with_original_start=True)
    exception = next(item for item in instances if item["type"] == "exception")
    exception.update(
        subject="Review strategy for Q3 (moved)",
        location={"displayName": ""},
        body={"contentType": "text", "content": "Does late morning work for you?"},  # the master's text
        attendees=[{"type": "required", "emailAddress": {"address": "adelev@contoso.onmicrosoft.com"}}],
    )
    master = review_master()
    read = series_from_graph(master, instances, window=APRIL, max_occurrences=50)
    (override,) = read.activity.occurrence_overrides
    assert override == OccurrenceOverride(
        utc(15), subject="Review strategy for Q3 (moved)", location="", start=utc(16), end=utc(16, 21, 0)
    )


def test_instances_no_occurrence_accounts_for_are_listed_apart() -> None:
    instances = review_instances(with_original_start=True)
    stray = copy.deepcopy(instances[1])
    stray.update(id="AAMkStray", type="singleInstance")
    twice = copy.deepcopy(instances[1])
    twice["id"] = "AAMkTwice"
    read = series_from_graph(review_master(), [*instances, stray, twice], window=APRIL, max_occurrences=50)
    assert set(read.unmatched) == {"AAMkStray", "AAMkTwice"}
    assert read.activity.cancelled_occurrences == ()


def test_a_single_event_is_not_a_series_master() -> None:
    with pytest.raises(InvalidRequestError):
        series_from_graph(load("event_with_online_meeting.json"), [], window=APRIL, max_occurrences=50)


def test_the_series_master_fixture_reads_in_its_own_zone_across_dst() -> None:
    # Weekly on Monday at noon Pacific from 4 September to 31 December 2017; DST ends on 5 November.
    master = load("event_series_master.json")
    autumn = Window(datetime(2017, 10, 28, tzinfo=UTC), datetime(2017, 11, 15, tzinfo=UTC))
    instances = [
        {
            "id": f"AAMkOcc{day}",
            "type": "occurrence",
            "seriesMasterId": "AAMkADQwMD",
            "subject": "Let's go for lunch",
            "originalStart": f"2017-{month:02}-{day:02}T{hour}:00:00Z",
            "start": {"dateTime": f"2017-{month:02}-{day:02}T{hour}:00:00.0000000", "timeZone": "UTC"},
            "end": {"dateTime": f"2017-{month:02}-{day:02}T{hour + 2}:00:00.0000000", "timeZone": "UTC"},
        }
        for month, day, hour in ((10, 30, 19), (11, 13, 20))  # 6 November is missing: cancelled
    ]
    read = series_from_graph(master, instances, window=autumn, max_occurrences=50)
    assert read.activity.cancelled_occurrences == (datetime(2017, 11, 6, 12, tzinfo=LA),)
    assert read.activity.occurrence_overrides == ()


# --- Activity → Graph: the master ---------------------------------------------------------------------------


def review_series() -> Activity:
    return series_from_graph(review_master(), review_instances(), window=APRIL, max_occurrences=50).activity


def body_options(**changes: Any) -> dict[str, Any]:
    return {
        "now": NOW,
        "description_policy": DescriptionPolicy.ALWAYS,
        "invite_crm_contacts": False,
        **changes,
    }


def test_a_series_create_body_is_the_documented_recurring_create() -> None:
    expected = load("event_recurring_create_request.json")
    lunch = Activity(
        subject="Let's go for lunch",
        when=Timed(
            datetime(2017, 9, 4, 12, tzinfo=LA), datetime(2017, 9, 4, 14, tzinfo=LA), "America/Los_Angeles"
        ),
        location="Harry's Bar",
        attendees=(Attendee("adelev@contoso.onmicrosoft.com", "Adele Vance", AttendeeKind.USER),),
        recurrence=Recurrence(
            RecurrencePattern(PatternType.WEEKLY, 1, ("monday",)),
            RecurrenceRange(RangeType.END_DATE, date(2017, 9, 4), date(2017, 12, 31)),
        ),
        # Overrides and cancellations never go into the master's body.
        cancelled_occurrences=(datetime(2017, 9, 11, 19, tzinfo=UTC),),
    )
    body = graph_series_body(lunch, for_create=True, **body_options(now=datetime(2017, 1, 1, tzinfo=UTC)))
    assert json.loads(json.dumps(body["recurrence"]).lower()) == json.loads(
        json.dumps(expected["recurrence"]).lower()
    )
    for key in ("subject", "start", "end", "location"):
        assert body[key] == expected[key], key
    assert set(body) <= set(expected) | {"isAllDay", "body"}


def test_a_master_patch_carries_the_recurrence_with_its_times() -> None:
    series = review_series()
    assert set(graph_series_body(series, for_create=False, fields={Field.SUBJECT}, **body_options())) == {
        "subject"
    }
    assert set(graph_series_body(series, for_create=False, fields={Field.RECURRENCE}, **body_options())) == {
        "recurrence"
    }
    retimed = graph_series_body(series, for_create=False, fields={Field.START_END}, **body_options())
    assert set(retimed) == {"start", "end", "isAllDay", "recurrence"}
    assert retimed["recurrence"]["range"] == {
        "type": "endDate",
        "startDate": "2019-04-08",
        "endDate": "2019-04-29",
        "recurrenceTimeZone": "UTC",
    }


def test_a_running_series_begun_long_ago_still_gets_its_attendees() -> None:
    ada = Attendee("ada@contoso.com", kind=AttendeeKind.USER)
    start = datetime(2024, 1, 1, 9, tzinfo=UTC)
    weekly = Activity(
        subject="Weekly",
        when=Timed(start, start + timedelta(hours=1), "UTC"),
        attendees=(ada,),
        recurrence=Recurrence(
            RecurrencePattern(PatternType.WEEKLY, 1, ("monday",)),
            RecurrenceRange(RangeType.NO_END, start.date()),
        ),
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)
    single_rule = graph_event_body(
        weekly, for_create=False, fields={Field.ATTENDEES}, **body_options(now=now)
    )
    assert single_rule == {}  # the master's first occurrence has ended: a single event would get nobody
    series_rule = graph_series_body(
        weekly, for_create=False, fields={Field.ATTENDEES}, **body_options(now=now)
    )
    assert series_rule == {
        "attendees": [{"emailAddress": {"address": "ada@contoso.com"}, "type": "required"}]
    }
    with pytest.raises(ValueError, match="series"):
        graph_series_body(replace(weekly, recurrence=None), for_create=True, **body_options(now=now))


# --- Activity → Graph: the instances ------------------------------------------------------------------------


def plan(series: Activity, instances: list[dict[str, Any]], **changes: Any) -> Any:
    return plan_instance_operations(
        series, instances, window=APRIL, max_occurrences=50, **body_options(**changes)
    )


def test_instances_that_already_match_need_nothing() -> None:
    assert plan(review_series(), review_instances()).operations == ()
    assert plan(review_series(), review_instances(with_original_start=True)).operations == ()


def test_a_cancellation_deletes_the_instance_and_an_override_patches_only_what_differs() -> None:
    series = review_series()
    wanted = replace(
        series,
        cancelled_occurrences=(utc(22),),
        occurrence_overrides=(
            *series.occurrence_overrides,
            OccurrenceOverride(utc(29), subject="Q3 wrap-up"),
        ),
    )
    operations = plan(wanted, review_instances()).operations
    assert operations == (
        DeleteInstance(OCCURRENCE_IDS[22], utc(22)),
        PatchInstance(OCCURRENCE_IDS[29], utc(29), {"subject": "Q3 wrap-up"}),
    )


def test_an_outlook_exception_the_activity_does_not_have_is_undone() -> None:
    series = replace(review_series(), occurrence_overrides=())
    (operation,) = plan(series, review_instances()).operations
    assert operation == PatchInstance(
        EXCEPTION_ID,
        utc(15),
        {
            "start": {"dateTime": "2019-04-15T20:30:00", "timeZone": "UTC"},
            "end": {"dateTime": "2019-04-15T21:00:00", "timeZone": "UTC"},
            "isAllDay": False,
        },
    )


def test_an_override_for_an_occurrence_outlook_does_not_list_is_missing() -> None:
    series = replace(review_series(), occurrence_overrides=(OccurrenceOverride(utc(22), subject="Moved"),))
    result = plan(series, without(review_instances(), OCCURRENCE_IDS[22]))
    assert result.missing == (utc(22),)
    assert [type(operation) for operation in result.operations] == [PatchInstance]  # 15 April back in place


def test_an_occurrence_that_has_ended_gets_no_new_attendees() -> None:
    ada = Attendee("ada@contoso.com", kind=AttendeeKind.USER)
    series = replace(
        review_series(),
        occurrence_overrides=(
            OccurrenceOverride(utc(15), start=utc(16), end=utc(16, 21, 0)),
            OccurrenceOverride(utc(8), attendees=(ada,)),
            OccurrenceOverride(utc(29), attendees=(ada,)),
        ),
    )
    instances = review_instances()
    for instance in instances:
        instance["attendees"] = []
    operations = plan(series, instances, now=datetime(2019, 4, 20, tzinfo=UTC)).operations
    assert operations == (
        PatchInstance(
            OCCURRENCE_IDS[29],
            utc(29),
            {"attendees": [{"emailAddress": {"address": "ada@contoso.com"}, "type": "required"}]},
        ),
    )


def test_description_overrides_follow_the_description_policy() -> None:
    series = replace(
        review_series(), occurrence_overrides=(OccurrenceOverride(utc(29), description="Bring numbers"),)
    )
    on_create = {"description_policy": DescriptionPolicy.ON_CREATE}
    later = plan(series, review_instances(with_original_start=True), **on_create).operations
    assert [operation.original_start for operation in later] == [utc(15)]  # only the exception undone
    created = plan_instance_operations(
        series,
        review_instances(),
        window=APRIL,
        max_occurrences=50,
        series_created=True,
        **body_options(**on_create),
    )
    assert (
        PatchInstance(
            OCCURRENCE_IDS[29], utc(29), {"body": {"contentType": "text", "content": "Bring numbers"}}
        )
        in created.operations
    )


def test_activity_from_graph_reads_a_master_zone_from_original_start_time_zone() -> None:
    # Read with Prefer: outlook.timezone="UTC" and without recurrenceTimeZone, the series still recurs in
    # the event's own zone (originalStartTimeZone), not in the zone Graph answered in.
    master = load("event_series_master.json")
    master["start"] = {"dateTime": "2017-09-04T19:00:00.0000000", "timeZone": "UTC"}
    master["end"] = {"dateTime": "2017-09-04T21:00:00.0000000", "timeZone": "UTC"}
    del master["recurrence"]["range"]["recurrenceTimeZone"]
    recurrence = activity_from_graph(master).recurrence
    assert recurrence is not None
    assert recurrence.range.recurrence_time_zone == "America/Los_Angeles"
