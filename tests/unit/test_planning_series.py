"""The planner with series (issue 7): a series is one item, merged over its three series fields as well."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sync_core.config import DescriptionPolicy
from sync_core.domain.actions import (
    CreateInCrm,
    CreateInGraph,
    SaveLink,
    Skip,
    SkipReason,
    UpdateCrm,
    UpdateGraph,
    transaction_id,
)
from sync_core.domain.changes import CrmUpsert, GraphUpsert
from sync_core.domain.graph_payloads import PatternType, RangeType, parse_event
from sync_core.domain.hashing import Base
from sync_core.domain.mapping import graph_event_body
from sync_core.domain.model import (
    Activity,
    Field,
    OccurrenceOverride,
    Recurrence,
    RecurrencePattern,
    RecurrenceRange,
    Side,
    Timed,
)
from sync_core.domain.recurrence import expand_series
from sync_core.domain.series import INSTANCE_MARGIN, judged_window, occurrence_activity, sync_window, within
from sync_core.domain.series_from_graph import series_from_graph
from sync_core.domain.state import Link
from tests.unit.test_planning import NOW, USER, activity, graph_event, kinds, only, plan, rules

MASTER = "AAMk-series"
BERLIN = ZoneInfo("Europe/Berlin")
FIRST = datetime(2026, 3, 3, 10, tzinfo=UTC)  # a Tuesday, 11:00 in Berlin
WEEKLY = Recurrence(
    RecurrencePattern(PatternType.WEEKLY, 1, ("tuesday",)),
    RecurrenceRange(RangeType.NUMBERED, FIRST.date(), None, 6),
)


def weekly(**fields: Any) -> Activity:
    return activity("Weekly sync", FIRST, recurrence=WEEKLY, **fields)


def moved(series: Activity, week: int, hours: int = 2) -> OccurrenceOverride:
    original = FIRST + timedelta(weeks=week)
    return OccurrenceOverride(
        original, start=original + timedelta(hours=hours), end=original + timedelta(hours=hours + 1)
    )


def outlook_series(series: Activity, *, change_key: str = "ck-1") -> GraphUpsert:
    """What the reconciler hands in for ``series`` held by Outlook: the master and its instances."""
    master = graph_event(MASTER, series, change_key=change_key, type="seriesMaster")
    window = sync_window(NOW, 60, 365)
    instances = []
    for occurrence in expand_series(series, window=window, max_occurrences=500).occurrences:
        key = occurrence.original_start
        if key in series.cancelled_occurrences:
            continue
        one = occurrence_activity(series, key)
        changed = any(o.original_start == key for o in series.occurrence_overrides)
        body = graph_event_body(
            one,
            for_create=True,
            now=NOW,
            description_policy=DescriptionPolicy.ALWAYS,
            invite_crm_contacts=True,
        )
        assert isinstance(key, datetime)
        instances.append(
            {
                **graph_event(f"{MASTER}-{key:%m%d}", one).raw,
                **body,
                "type": "exception" if changed else "occurrence",
                "seriesMasterId": MASTER,
                "originalStart": key.isoformat(),
            }
        )
    read = series_from_graph(master, instances, window=window, max_occurrences=500, margin=INSTANCE_MARGIN)
    return GraphUpsert(master, series=read)


def linked_series(series: Activity) -> Link:
    seen = outlook_series(series).series
    assert seen is not None
    window = judged_window(NOW, 60, 365)
    base = Base.of_synced(within(series, window), seen.activity)
    return Link(
        user_id=USER,
        crm_id="act-s",
        graph_id=MASTER,
        ical_uid=f"uid-{MASTER}",
        change_key="ck-1",
        crm_version="1",
        base_hashes=base.stored_hashes(),
        base_attendees=base.stored_attendees(),
    )


def test_a_crm_series_is_created_in_outlook_as_one_master_with_its_recurrence() -> None:
    series = weekly(cancelled_occurrences=(FIRST + timedelta(weeks=2),))
    actions = plan(crm_changes=[CrmUpsert("act-s", "1", series)])
    assert kinds(actions) == ["CreateInGraph", "SaveLink"]
    body = only(actions, CreateInGraph)[0].body()
    assert body["recurrence"]["pattern"] == {"type": "weekly", "interval": 1, "daysOfWeek": ["tuesday"]}
    assert body["recurrence"]["range"]["numberOfOccurrences"] == 6
    hashes = only(actions, SaveLink)[0].base.stored_hashes()
    assert {"crm.recurrence", "m365.occurrence_overrides", "m365.cancelled_occurrences"} <= hashes.keys()


def test_an_outlook_series_becomes_one_crm_activity_with_its_overrides_and_cancellations() -> None:
    series = weekly(
        occurrence_overrides=(moved(weekly(), 1),), cancelled_occurrences=(FIRST + timedelta(weeks=3),)
    )
    change = outlook_series(series)
    assert change.series is not None
    occurrences = [
        GraphUpsert(graph_event(f"{MASTER}-{n}", activity(), type="occurrence", seriesMasterId=MASTER))
        for n in range(3)
    ]
    actions = plan(graph_changes=[change, *occurrences])
    assert kinds(actions) == ["CreateInCrm", "SaveLink"]  # the occurrences handed in alone plan nothing
    body = only(actions, CreateInCrm)[0].body()
    assert body["recurrence"]["range"]["numberOfOccurrences"] == 6
    assert [o["originalStart"][:19] for o in body["occurrenceOverrides"]] == ["2026-03-10T11:00:00"]
    assert [c[:19] for c in body["cancelledOccurrences"]] == ["2026-03-24T11:00:00"]


def test_a_master_without_its_instances_is_not_half_synced() -> None:
    master = graph_event(MASTER, weekly(), type="seriesMaster")
    actions = plan(graph_changes=[GraphUpsert(master)])
    assert [(s.reason, s.graph_id) for s in only(actions, Skip)] == [(SkipReason.INCOMPLETE_EVENT, MASTER)]


def test_one_occurrence_moved_in_outlook_changes_only_the_overrides_in_the_crm() -> None:
    series = weekly()
    link = linked_series(series)
    changed = outlook_series(
        dataclasses.replace(series, occurrence_overrides=(moved(series, 2),)), change_key="ck-2"
    )
    actions = plan(graph_changes=[changed], links=[link])
    assert kinds(actions) == ["UpdateCrm", "SaveLink"]
    update = only(actions, UpdateCrm)[0]
    assert update.fields == {Field.OCCURRENCE_OVERRIDES}
    assert list(update.body()) == ["occurrenceOverrides"]
    # The echo of what was saved plans nothing.
    saved = only(actions, SaveLink)[0].to_link()
    assert plan(graph_changes=[changed], links=[saved]) == ()


def test_one_occurrence_cancelled_in_the_crm_is_an_instance_operation_not_a_master_patch() -> None:
    series = weekly()
    link = linked_series(series)
    cancelled = dataclasses.replace(series, cancelled_occurrences=(FIRST + timedelta(weeks=1),))
    actions = plan(crm_changes=[CrmUpsert("act-s", "2", cancelled)], links=[link])
    assert kinds(actions) == ["UpdateGraph", "SaveLink"]
    update = only(actions, UpdateGraph)[0]
    assert update.fields == {Field.CANCELLED_OCCURRENCES}
    assert update.writes_instances
    assert update.body() == {}


def test_a_series_retimed_in_outlook_keeps_the_crms_exception_on_both_sides() -> None:
    series = weekly(occurrence_overrides=(OccurrenceOverride(FIRST + timedelta(weeks=1), subject="Demo"),))
    link = linked_series(series)
    later = FIRST + timedelta(hours=3)
    retimed = dataclasses.replace(weekly(), when=Timed(later, later + timedelta(hours=1), "Europe/Berlin"))
    actions = plan(
        graph_changes=[outlook_series(retimed, change_key="ck-2")], links=[link], crm_series={"act-s": series}
    )
    update_crm = only(actions, UpdateCrm)[0]
    assert {Field.START_END, Field.OCCURRENCE_OVERRIDES} <= update_crm.fields
    assert [(o["originalStart"][:19], o["subject"]) for o in update_crm.body()["occurrenceOverrides"]] == [
        ("2026-03-10T14:00:00", "Demo")  # the exception moved to the retimed occurrence on its date
    ]
    update_graph = only(actions, UpdateGraph)[0]
    assert update_graph.writes_instances
    assert [o.subject for o in update_graph.activity.occurrence_overrides] == ["Demo"]
    base = only(actions, SaveLink)[0].base
    assert base.hash_of(Side.M365, Field.OCCURRENCE_OVERRIDES) == base.hash_of(
        Side.CRM, Field.OCCURRENCE_OVERRIDES
    )


def test_a_series_that_began_long_ago_and_still_runs_is_in_the_window() -> None:
    long_ago = NOW - timedelta(days=400)
    running = Recurrence(
        RecurrencePattern(PatternType.WEEKLY, 1, (f"{long_ago:%A}".lower(),)),
        RecurrenceRange(RangeType.NO_END, long_ago.date()),
    )
    series = activity("Standup", long_ago, recurrence=running)
    actions = plan(crm_changes=[CrmUpsert("act-s", "1", series)], rules=rules(initial_backfill=True))
    assert kinds(actions) == ["CreateInGraph", "SaveLink"]


def test_the_crms_exceptions_outside_the_window_outlook_was_read_in_are_kept() -> None:
    began = FIRST - timedelta(weeks=20)  # 20 weeks ago: its first exceptions are outside the sync window
    recurrence = Recurrence(
        RecurrencePattern(PatternType.WEEKLY, 1, ("tuesday",)),
        RecurrenceRange(RangeType.NUMBERED, began.date(), None, 30),
    )
    old = OccurrenceOverride(began + timedelta(weeks=1), subject="Kick-off (long ago)")
    series = activity("Weekly sync", began, recurrence=recurrence, occurrence_overrides=(old,))
    link = linked_series(series)
    # Outlook (read over the window) never saw the old exception; it moves next week's occurrence.
    keys = expand_series(series, window=sync_window(NOW + timedelta(days=7), 0, 30), max_occurrences=1).keys
    original = keys[0]
    assert isinstance(original, datetime)
    moved_one = OccurrenceOverride(
        original, start=original + timedelta(hours=2), end=original + timedelta(hours=3)
    )
    outlook = dataclasses.replace(series, occurrence_overrides=(old, moved_one))
    actions = plan(
        graph_changes=[outlook_series(outlook, change_key="ck-2")], links=[link], crm_series={"act-s": series}
    )
    update = only(actions, UpdateCrm)[0]
    assert update.fields == {Field.OCCURRENCE_OVERRIDES, Field.CANCELLED_OCCURRENCES}
    assert sorted(o.get("subject") or o["start"][:16] for o in update.body()["occurrenceOverrides"]) == [
        f"{(original + timedelta(hours=2)).astimezone(BERLIN):%Y-%m-%dT%H:%M}",
        "Kick-off (long ago)",
    ]


def test_a_series_whose_create_crashed_before_its_exceptions_gets_them_on_the_retry() -> None:
    series = weekly(occurrence_overrides=(moved(weekly(), 1), moved(weekly(), 2)))
    # Outlook holds the master we created (our transactionId) and the first exception only: the run died
    # between the two instance writes, before the link was saved.
    created = outlook_series(weekly(occurrence_overrides=(moved(weekly(), 1),)))
    master = parse_event({**created.event.raw, "transactionId": transaction_id(USER, "act-s", None)})
    actions = plan(
        crm_changes=[CrmUpsert("act-s", "1", series)],
        graph_changes=[GraphUpsert(master, series=created.series)],
    )
    assert kinds(actions) == ["UpdateGraph", "SaveLink"]  # linked to it, no second series, no conflict
    update = only(actions, UpdateGraph)[0]
    assert update.fields == {Field.OCCURRENCE_OVERRIDES}
    assert update.writes_instances
