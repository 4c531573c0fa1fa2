"""A series' overrides and cancellations merged occurrence by occurrence (issue 7): each side's change to
one occurrence survives, a conflict is decided per occurrence, a cancellation loses to a move, and a link
written before the per-occurrence base was kept merges the two fields whole."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

from sync_core.config import ConflictPolicy
from sync_core.domain.actions import RecordConflict, SaveLink, UpdateCrm, UpdateGraph
from sync_core.domain.changes import CrmUpsert
from sync_core.domain.hashing import Base
from sync_core.domain.model import Activity, Field, OccurrenceOverride, Side
from sync_core.domain.series import judged_window, within
from sync_core.domain.state import Link
from tests.unit.test_planning import NOW, activity, kinds, only, plan, rules
from tests.unit.test_planning_series import FIRST, linked_series, moved, outlook_series, weekly


def with_occurrence_base(link: Link, series: Activity) -> Link:
    """``link`` as written since the per-occurrence base is kept (``linked_series`` writes it without)."""
    seen = outlook_series(series).series
    assert seen is not None
    base = Base.of_synced(within(series, judged_window(NOW, 60, 365)), seen.activity)
    assert base.occurrences is not None
    return dataclasses.replace(link, base_occurrences=base.stored_occurrences())


def linked(series: Activity) -> Link:
    return with_occurrence_base(linked_series(series), series)


def week(number: int) -> datetime:
    """The original start of occurrence ``number`` (weeks 0-3: before Berlin's clocks change)."""
    return FIRST + timedelta(weeks=number)


def moves(activity: Activity) -> dict[datetime, datetime]:
    """Original start → moved start, in UTC, of each override that moves its occurrence."""
    found: dict[datetime, datetime] = {}
    for override in activity.occurrence_overrides:
        assert isinstance(override.original_start, datetime)
        assert isinstance(override.start, datetime)
        found[override.original_start.astimezone(UTC)] = override.start.astimezone(UTC)
    return found


def cancellations(activity: Activity) -> set[datetime | date]:
    return {m.astimezone(UTC) if isinstance(m, datetime) else m for m in activity.cancelled_occurrences}


def crm_edit(series: Activity, **fields: object) -> CrmUpsert:
    return CrmUpsert("act-s", "2", dataclasses.replace(series, **fields))  # type: ignore[arg-type]


def test_one_occurrence_moved_on_each_side_both_moves_survive_on_both_sides() -> None:
    series = weekly()
    link = linked(series)
    outlook = outlook_series(
        dataclasses.replace(series, occurrence_overrides=(moved(series, 2),)), change_key="ck-2"
    )
    crm = crm_edit(series, occurrence_overrides=(moved(series, 3, hours=5),))
    actions = plan(crm_changes=[crm], graph_changes=[outlook], links=[link])
    assert kinds(actions) == ["UpdateGraph", "UpdateCrm", "SaveLink"]  # no conflict recorded
    expected = {week(2): week(2) + timedelta(hours=2), week(3): week(3) + timedelta(hours=5)}
    to_outlook, to_crm = only(actions, UpdateGraph)[0], only(actions, UpdateCrm)[0]
    assert to_outlook.fields == {Field.OCCURRENCE_OVERRIDES}
    assert to_outlook.writes_instances
    assert moves(to_outlook.activity) == expected
    assert to_crm.fields == {Field.OCCURRENCE_OVERRIDES}
    assert moves(to_crm.activity) == expected
    assert len(to_crm.body()["occurrenceOverrides"]) == 2  # the CRM gets the full list
    # Once both sides hold the merge, their echoes plan nothing.
    saved = only(actions, SaveLink)[0].to_link()
    assert saved.base_occurrences is not None
    echo_outlook = outlook_series(dataclasses.replace(series, occurrence_overrides=(moved(series, 2),
                                  moved(series, 3, hours=5))), change_key="ck-3")  # fmt: skip
    echo_crm = CrmUpsert("act-s", "3", to_crm.activity)
    assert [a for a in plan(crm_changes=[echo_crm], graph_changes=[echo_outlook], links=[saved])
            if not isinstance(a, SaveLink)] == []  # fmt: skip


def test_a_cancellation_on_one_side_and_a_move_of_another_occurrence_both_survive() -> None:
    series = weekly()
    link = linked(series)
    outlook = outlook_series(dataclasses.replace(series, cancelled_occurrences=(week(3),)), change_key="ck-2")
    crm = crm_edit(series, occurrence_overrides=(moved(series, 1),))
    actions = plan(crm_changes=[crm], graph_changes=[outlook], links=[link])
    assert not only(actions, RecordConflict)
    to_outlook, to_crm = only(actions, UpdateGraph)[0], only(actions, UpdateCrm)[0]
    assert to_outlook.fields == {Field.OCCURRENCE_OVERRIDES}
    assert to_crm.fields == {Field.CANCELLED_OCCURRENCES}
    for target in (to_outlook.activity, to_crm.activity):
        assert moves(target) == {week(1): week(1) + timedelta(hours=2)}
        assert cancellations(target) == {week(3)}


def test_one_occurrence_moved_differently_on_both_sides_is_a_conflict_on_that_occurrence_only() -> None:
    series = weekly()
    link = linked(series)
    outlook = outlook_series(
        dataclasses.replace(series, occurrence_overrides=(moved(series, 1), moved(series, 2))),
        change_key="ck-2",
    )
    crm = crm_edit(series, occurrence_overrides=(moved(series, 2, hours=5), moved(series, 3)))
    decisions = ((ConflictPolicy.CRM_WINS, Side.CRM, 5), (ConflictPolicy.M365_WINS, Side.M365, 2))
    for policy, winner, hours in decisions:
        actions = plan(
            crm_changes=[crm], graph_changes=[outlook], links=[link], rules=rules(conflict_policy=policy)
        )
        conflict = only(actions, RecordConflict)
        assert [(c.fields, c.winner) for c in conflict] == [((Field.OCCURRENCE_OVERRIDES,), winner)]
        expected = {
            week(2): week(2) + timedelta(hours=hours),  # the policy's side, for this occurrence
            week(3): week(3) + timedelta(hours=2),  # the CRM's alone
            week(1): week(1) + timedelta(hours=2),  # Outlook's alone
        }
        assert moves(only(actions, UpdateGraph)[0].activity) == expected
        assert moves(only(actions, UpdateCrm)[0].activity) == expected


def test_an_occurrence_cancelled_on_one_side_and_moved_on_the_other_stays_moved() -> None:
    series = weekly()
    link = linked(series)
    cancelled_in_outlook = outlook_series(
        dataclasses.replace(series, cancelled_occurrences=(week(2),)), change_key="ck-2"
    )
    moved_in_crm = crm_edit(series, occurrence_overrides=(moved(series, 2),))
    moved_in_outlook = outlook_series(
        dataclasses.replace(series, occurrence_overrides=(moved(series, 2),)), change_key="ck-2"
    )
    cancelled_in_crm = crm_edit(series, cancelled_occurrences=(week(2),))
    for crm, outlook in ((moved_in_crm, cancelled_in_outlook), (cancelled_in_crm, moved_in_outlook)):
        actions = plan(
            crm_changes=[crm],
            graph_changes=[outlook],
            links=[link],
            rules=rules(conflict_policy=ConflictPolicy.CRM_WINS),
        )
        assert not only(actions, RecordConflict)  # the modification beats the deletion, whatever the policy
        targets = [a.activity for a in actions if isinstance(a, UpdateGraph | UpdateCrm)]
        assert len(targets) == 1  # only the side that cancelled is written
        assert moves(targets[0]) == {week(2): week(2) + timedelta(hours=2)}
        assert cancellations(targets[0]) == set()


def test_a_link_without_a_per_occurrence_base_merges_the_fields_whole_then_keeps_one() -> None:
    series = weekly()
    legacy = linked_series(series)
    assert legacy.base_occurrences is None
    outlook = outlook_series(
        dataclasses.replace(series, occurrence_overrides=(moved(series, 2),)), change_key="ck-2"
    )
    crm = crm_edit(series, occurrence_overrides=(moved(series, 3, hours=5),))
    actions = plan(
        crm_changes=[crm],
        graph_changes=[outlook],
        links=[legacy],
        rules=rules(conflict_policy=ConflictPolicy.CRM_WINS),
    )
    # case: no per-occurrence base: today's whole-field conflict, the policy's side wins, nothing is lost
    # that the winner holds, and nothing is written that either side did not hold.
    conflict = only(actions, RecordConflict)
    assert [(c.fields, c.winner) for c in conflict] == [((Field.OCCURRENCE_OVERRIDES,), Side.CRM)]
    assert moves(only(actions, UpdateGraph)[0].activity) == {week(3): week(3) + timedelta(hours=5)}
    saved = only(actions, SaveLink)[0].to_link()
    base = Base.from_link(saved)
    assert base.occurrences is not None  # re-baselined: the next change merges occurrence by occurrence
    assert base.occurrences.crm == base.occurrences.m365
    assert len(base.occurrences.m365) == 1


def test_the_per_occurrence_base_is_stored_and_read_back_and_an_unreadable_one_reads_as_unknown() -> None:
    series = weekly(
        occurrence_overrides=(OccurrenceOverride(week(1), subject="Moved review"),),
        cancelled_occurrences=(week(3),),
    )
    base = Base.of_synced(series, series)
    assert base.occurrences is not None
    assert len(base.occurrences.crm) == 2
    link = dataclasses.replace(linked_series(series), base_occurrences=base.stored_occurrences())
    assert Base.from_link(link).occurrences == base.occurrences
    for unreadable in ("{", '{"crm": []}', '{"crm": {}, "m365": 3}', "[]"):
        garbled = dataclasses.replace(link, base_occurrences=unreadable)
        assert Base.from_link(garbled).occurrences is None
    single = Base.of_synced(activity(), activity())
    assert single.occurrences is None
    assert single.stored_occurrences() is None
