"""plan_sync, one behaviour per test (design §5)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from sync_core.config import ConflictPolicy, DescriptionPolicy, SyncDirection, SyncPolicy
from sync_core.domain.actions import (
    Action,
    CreateInCrm,
    CreateInGraph,
    CrmWriteResult,
    DeleteInCrm,
    DeleteInGraph,
    DropLink,
    GraphWriteResult,
    RecordConflict,
    SaveLink,
    Skip,
    SkipReason,
    UpdateCrm,
    UpdateGraph,
    crm_id_of_transaction,
)
from sync_core.domain.graph_payloads import GraphEvent, parse_event
from sync_core.domain.hashing import Base
from sync_core.domain.mapping import activity_from_graph, graph_event_body
from sync_core.domain.model import (
    Activity,
    ActivityType,
    Attendee,
    AttendeeKind,
    AttendeeResponse,
    Field,
    PeopleDirectory,
    Person,
    Side,
    Timed,
)
from sync_core.domain.planning import (
    CrmDeletion,
    CrmUpsert,
    GraphChange,
    GraphDeletion,
    GraphUpsert,
    SharedMeeting,
    SyncRequest,
    SyncRules,
    crm_change_from_outbox,
    emails_to_look_up,
    plan_sync,
)
from sync_core.domain.state import Connection, ConnectionState, Link, OutboxEntry, OutboxOperation
from sync_core.errors import MassDeletionError

A = TypeVar("A")
USER = "usr-1"
NOW = datetime(2026, 3, 2, 9, tzinfo=UTC)
CONNECTED = datetime(2026, 1, 1, tzinfo=UTC)
TOMORROW = datetime(2026, 3, 3, 10, tzinfo=UTC)
COLLEAGUE = Attendee("jo@vendor.example", "Jo", AttendeeKind.USER, crm_id="usr-2")
CONTACT = Attendee("ada@contoso.com", "Ada", AttendeeKind.CONTACT, crm_id="con-1")
PEOPLE = PeopleDirectory(
    (
        Person("jo@vendor.example", AttendeeKind.USER, "usr-2", "Jo"),
        Person("ada@contoso.com", AttendeeKind.CONTACT, "con-1", "Ada", account_id="acc-1"),
    )
)


def rules(**changes: Any) -> SyncRules:
    default = SyncRules(
        direction=SyncDirection.BOTH,
        conflict_policy=ConflictPolicy.LATEST_WINS,
        description_policy=DescriptionPolicy.ALWAYS,
        window_past_days=60,
        window_future_days=365,
        initial_backfill=False,
        invite_crm_contacts=True,
        mass_delete_max_share=0.5,
        mass_delete_min_items=10,
    )
    return dataclasses.replace(default, **changes)


def activity(subject: str = "Kick-off", start: datetime = TOMORROW, **fields: Any) -> Activity:
    values: dict[str, Any] = {
        "when": Timed(start, start + timedelta(hours=1), "Europe/Berlin"),
        "description": "Agenda",
        "location": "Room 4",
        "attendees": (COLLEAGUE,),
        "activity_type": ActivityType.MEETING,
        "owner_crm_user_id": USER,
        "created_at": NOW - timedelta(hours=2),
        "modified_at": NOW - timedelta(hours=1),
    }
    values.update(fields)
    return Activity(subject=subject, **values)


def graph_event(graph_id: str, act: Activity, *, change_key: str = "ck-1", **raw: Any) -> GraphEvent:
    """An Outlook event holding ``act``, as delta returns it."""
    body = graph_event_body(
        act, for_create=True, now=NOW, description_policy=DescriptionPolicy.ALWAYS, invite_crm_contacts=True
    )
    event: dict[str, Any] = {
        "id": graph_id,
        "type": "singleInstance",
        "changeKey": change_key,
        "iCalUId": f"uid-{graph_id}",
        "isOrganizer": True,
        "createdDateTime": (act.created_at or NOW).isoformat(),
        "lastModifiedDateTime": (act.modified_at or NOW).isoformat(),
        "sensitivity": "normal",
        "isOnlineMeeting": False,
        "location": {"displayName": ""},
        "body": {"contentType": "text", "content": ""},
        **body,
        "attendees": [{**attendee, "status": {"response": "none"}} for attendee in body.get("attendees", [])],
    }
    event.update(raw)
    return parse_event(event)


def linked(
    crm_id: str, graph_id: str, act: Activity, *, version: str = "1", change_key: str = "ck-1"
) -> Link:
    """The link after ``act`` was synced both ways."""
    base = Base.of_synced(act, activity_from_graph(graph_event(graph_id, act)))
    return Link(
        user_id=USER,
        crm_id=crm_id,
        graph_id=graph_id,
        ical_uid=f"uid-{graph_id}",
        change_key=change_key,
        crm_version=version,
        base_hashes=base.stored_hashes(),
        base_attendees=base.stored_attendees(),
    )


def plan(**fields: Any) -> tuple[Action, ...]:
    values: dict[str, Any] = {"user_id": USER, "now": NOW, "rules": rules(), "connected_at": CONNECTED}
    values.update(fields)
    links = values.get("links", ())
    values.setdefault("linked_count", len(links))
    values.setdefault("people", PEOPLE)
    return plan_sync(SyncRequest(**values))


def only(actions: tuple[Action, ...], kind: type[A]) -> list[A]:
    return [action for action in actions if isinstance(action, kind)]


def kinds(actions: tuple[Action, ...]) -> list[str]:
    return [type(action).__name__ for action in actions]


# --- creations ----------------------------------------------------------------------------------------------


def test_created_in_crm_is_created_in_outlook_with_a_transaction_id() -> None:
    actions = plan(crm_changes=[CrmUpsert("act-1", "1", activity())])
    assert kinds(actions) == ["CreateInGraph", "SaveLink"]
    create = only(actions, CreateInGraph)[0]
    assert crm_id_of_transaction(create.transaction_id) == "act-1"
    assert create.body()["transactionId"] == create.transaction_id
    assert plan(crm_changes=[CrmUpsert("act-1", "2", activity())])[0] == create  # a retry: the same create
    link = only(actions, SaveLink)[0].to_link(graph=GraphWriteResult("AAMk-1", "ck-9", "uid-1"))
    assert (link.crm_id, link.graph_id, link.change_key, link.crm_version) == ("act-1", "AAMk-1", "ck-9", "1")


def test_created_in_outlook_with_a_customer_becomes_a_crm_meeting() -> None:
    event = graph_event("AAMk-1", activity(attendees=(CONTACT,)))
    actions = plan(graph_changes=[GraphUpsert(event)])
    assert kinds(actions) == ["CreateInCrm", "SaveLink"]
    body = only(actions, CreateInCrm)[0].body()
    assert (body["type"], body["ownerCrmUserId"]) == ("meeting", USER)
    assert body["attendees"][0] | {"name": None} == {
        "email": "ada@contoso.com",
        "name": None,
        "kind": "contact",
        "type": "required",
        "response": "none",
        "crmId": "con-1",
    }
    assert body["links"]["accountId"] == "acc-1"
    link = only(actions, SaveLink)[0].to_link(crm=CrmWriteResult("act-9", "1"))
    assert (link.crm_id, link.graph_id, link.ical_uid) == ("act-9", "AAMk-1", "uid-AAMk-1")


def test_created_in_outlook_without_a_customer_becomes_a_personal_appointment() -> None:
    actions = plan(graph_changes=[GraphUpsert(graph_event("AAMk-1", activity()))])
    assert only(actions, CreateInCrm)[0].body()["type"] == "personal_appointment"


def test_crm_create_idempotency_key_follows_the_request() -> None:
    first = only(plan(graph_changes=[GraphUpsert(graph_event("AAMk-1", activity()))]), CreateInCrm)[0]
    again = only(plan(graph_changes=[GraphUpsert(graph_event("AAMk-1", activity()))]), CreateInCrm)[0]
    edited = only(plan(graph_changes=[GraphUpsert(graph_event("AAMk-1", activity("Other")))]), CreateInCrm)[0]
    assert first.idempotency_key == again.idempotency_key != edited.idempotency_key


# --- the per-field merge ------------------------------------------------------------------------------------


def test_field_changed_in_crm_is_copied_to_outlook() -> None:
    link = linked("act-1", "AAMk-1", activity())
    actions = plan(crm_changes=[CrmUpsert("act-1", "2", activity("New subject"))], links=[link])
    assert kinds(actions) == ["UpdateGraph", "SaveLink"]
    update = only(actions, UpdateGraph)[0]
    assert update.fields == {Field.SUBJECT}
    assert update.body() == {"subject": "New subject"}


def test_field_changed_in_outlook_is_copied_to_the_crm() -> None:
    link = linked("act-1", "AAMk-1", activity())
    event = graph_event("AAMk-1", activity(location="Room 9"), change_key="ck-2")
    actions = plan(graph_changes=[GraphUpsert(event)], links=[link])
    assert kinds(actions) == ["UpdateCrm", "SaveLink"]
    update = only(actions, UpdateCrm)[0]
    assert (update.body(), update.if_match) == ({"location": "Room 9"}, "1")


def test_fields_changed_on_different_sides_both_survive() -> None:
    link = linked("act-1", "AAMk-1", activity())
    actions = plan(
        crm_changes=[CrmUpsert("act-1", "2", activity("CRM subject"))],
        graph_changes=[
            GraphUpsert(graph_event("AAMk-1", activity(location="Outlook room"), change_key="ck-2"))
        ],
        links=[link],
    )
    assert only(actions, UpdateGraph)[0].body() == {"subject": "CRM subject"}
    assert only(actions, UpdateCrm)[0].body() == {"location": "Outlook room"}
    assert only(actions, RecordConflict) == []


@pytest.mark.parametrize(
    ("policy", "crm_later", "winner"),
    [
        (ConflictPolicy.CRM_WINS, False, Side.CRM),
        (ConflictPolicy.M365_WINS, True, Side.M365),
        (ConflictPolicy.LATEST_WINS, True, Side.CRM),
        (ConflictPolicy.LATEST_WINS, False, Side.M365),
    ],
)
def test_field_changed_on_both_sides_is_a_recorded_conflict_settled_by_policy(
    policy: ConflictPolicy, crm_later: bool, winner: Side
) -> None:
    link = linked("act-1", "AAMk-1", activity())
    crm_time, outlook_time = (
        (NOW, NOW - timedelta(minutes=5)) if crm_later else (NOW - timedelta(minutes=5), NOW)
    )
    actions = plan(
        crm_changes=[
            CrmUpsert("act-1", "2", activity("From CRM", location="CRM room", modified_at=crm_time))
        ],
        graph_changes=[
            GraphUpsert(graph_event("AAMk-1", activity("From Outlook", modified_at=outlook_time)))
        ],
        links=[link],
        rules=rules(conflict_policy=policy),
    )
    conflict = only(actions, RecordConflict)[0]
    assert (conflict.fields, conflict.policy, conflict.winner) == ((Field.SUBJECT,), policy, winner)
    assert only(actions, UpdateGraph)[0].body()["location"] == {
        "displayName": "CRM room"
    }  # no conflict: kept
    if winner is Side.CRM:
        assert only(actions, UpdateGraph)[0].body()["subject"] == "From CRM"
        assert only(actions, UpdateCrm) == []
    else:
        assert only(actions, UpdateCrm)[0].body() == {"subject": "From Outlook"}
        assert "subject" not in only(actions, UpdateGraph)[0].body()


def test_changed_on_both_sides_to_the_same_value_is_no_conflict() -> None:
    link = linked("act-1", "AAMk-1", activity())
    actions = plan(
        crm_changes=[CrmUpsert("act-1", "2", activity("Same"))],
        graph_changes=[GraphUpsert(graph_event("AAMk-1", activity("Same"), change_key="ck-2"))],
        links=[link],
    )
    assert kinds(actions) == ["SaveLink"]


# --- echoes and version-only changes ------------------------------------------------------------------------


def test_our_own_write_does_not_echo_back() -> None:
    link = linked("act-1", "AAMk-1", activity())
    actions = plan(crm_changes=[CrmUpsert("act-1", "2", activity("New subject"))], links=[link])
    saved = only(actions, SaveLink)[0].to_link(graph=GraphWriteResult("AAMk-1", "ck-after-write"))
    echo = graph_event("AAMk-1", activity("New subject"), change_key="ck-after-write")
    assert plan(graph_changes=[GraphUpsert(echo)], links=[saved]) == ()
    crm_echo = CrmUpsert("act-1", "2", activity("New subject"))  # the CRM pushing our write back
    assert plan(crm_changes=[crm_echo], links=[saved]) == ()


def test_change_key_only_change_is_no_change_but_is_saved() -> None:
    link = linked("act-1", "AAMk-1", activity())
    actions = plan(
        graph_changes=[GraphUpsert(graph_event("AAMk-1", activity(), change_key="ck-2"))], links=[link]
    )
    assert kinds(actions) == ["SaveLink"]
    assert only(actions, SaveLink)[0].to_link() == dataclasses.replace(link, change_key="ck-2")


def test_html_body_and_teams_block_are_no_description_change() -> None:
    link = linked("act-1", "AAMk-1", activity(description="Agenda\nscope"))
    teams = (
        "_" * 80
        + "<br>Microsoft Teams meeting<br><a href='https://teams.microsoft.com/x'>Join</a><br>"
        + "_" * 80
    )
    html = {"contentType": "html", "content": f"<html><body><p>Agenda</p><p>scope</p>{teams}</body></html>"}
    event = graph_event("AAMk-1", activity(description="Agenda\nscope"), change_key="ck-2", body=html)
    assert kinds(plan(graph_changes=[GraphUpsert(event)], links=[link])) == ["SaveLink"]


def test_crm_version_only_change_is_saved() -> None:
    link = linked("act-1", "AAMk-1", activity())
    actions = plan(crm_changes=[CrmUpsert("act-1", "7", activity())], links=[link])
    assert [action.to_link().crm_version for action in only(actions, SaveLink)] == ["7"]
    assert kinds(actions) == ["SaveLink"]


def test_partial_delta_item_does_not_clear_what_it_leaves_out() -> None:
    link = linked("act-1", "AAMk-1", activity())
    full = graph_event("AAMk-1", activity("Renamed"), change_key="ck-2")
    partial = {key: value for key, value in full.raw.items() if key not in ("location", "body", "attendees")}
    actions = plan(graph_changes=[GraphUpsert(parse_event(partial))], links=[link])
    assert only(actions, UpdateCrm)[0].body() == {"subject": "Renamed"}


# --- deletions ----------------------------------------------------------------------------------------------


def test_deleted_in_outlook_edited_in_crm_the_edit_wins() -> None:
    link = linked("act-1", "AAMk-1", activity())
    actions = plan(
        crm_changes=[CrmUpsert("act-1", "2", activity("Edited"))],
        graph_changes=[GraphDeletion("AAMk-1")],
        links=[link],
    )
    assert kinds(actions) == ["CreateInGraph", "SaveLink"]
    create = only(actions, CreateInGraph)[0]
    assert create.activity.subject == "Edited"
    fresh = plan(crm_changes=[CrmUpsert("act-1", "1", activity())])
    assert create.transaction_id != only(fresh, CreateInGraph)[0].transaction_id  # a new create, not a retry
    assert only(actions, SaveLink)[0].to_link(graph=GraphWriteResult("AAMk-2", "ck")).graph_id == "AAMk-2"


def test_deleted_in_crm_edited_in_outlook_the_edit_wins() -> None:
    link = linked("act-1", "AAMk-1", activity())
    event = graph_event("AAMk-1", activity(location="Moved"), change_key="ck-2")
    actions = plan(crm_changes=[CrmDeletion("act-1", "2")], graph_changes=[GraphUpsert(event)], links=[link])
    assert kinds(actions) == ["CreateInCrm", "DropLink", "SaveLink"]
    assert only(actions, CreateInCrm)[0].activity.location == "Moved"
    assert only(actions, SaveLink)[0].to_link(crm=CrmWriteResult("act-2", "1")).crm_id == "act-2"


def test_deleted_in_outlook_unchanged_in_crm_deletes_the_activity() -> None:
    link = linked("act-1", "AAMk-1", activity(), version="4")
    actions = plan(graph_changes=[GraphDeletion("AAMk-1")], links=[link])
    assert actions == (DeleteInCrm("crm:act-1", "act-1", "AAMk-1", "4"), DropLink("crm:act-1", link))


def test_deleted_in_crm_deletes_the_event() -> None:
    link = linked("act-1", "AAMk-1", activity())
    actions = plan(crm_changes=[CrmDeletion("act-1", "2")], links=[link])
    assert actions == (DeleteInGraph("crm:act-1", USER, "AAMk-1", "act-1"), DropLink("crm:act-1", link))


def test_a_version_only_crm_push_does_not_save_an_outlook_deletion() -> None:
    link = linked("act-1", "AAMk-1", activity())
    actions = plan(
        crm_changes=[CrmUpsert("act-1", "9", activity())],
        graph_changes=[GraphDeletion("AAMk-1")],
        links=[link],
    )
    assert kinds(actions) == ["DeleteInCrm", "DropLink"]
    assert only(actions, DeleteInCrm)[0].if_match == "9"


def test_deleted_on_both_sides_drops_the_link() -> None:
    link = linked("act-1", "AAMk-1", activity())
    actions = plan(
        crm_changes=[CrmDeletion("act-1", "2")], graph_changes=[GraphDeletion("AAMk-1")], links=[link]
    )
    assert actions == (DropLink("crm:act-1", link),)


def test_cancelled_meeting_counts_as_deleted_in_outlook() -> None:
    link = linked("act-1", "AAMk-1", activity())
    event = graph_event("AAMk-1", activity(), change_key="ck-2", isCancelled=True)
    assert kinds(plan(graph_changes=[GraphUpsert(event)], links=[link])) == ["DeleteInCrm", "DropLink"]


def test_removal_of_an_event_never_synced_is_ignored() -> None:
    assert (
        plan(graph_changes=[GraphDeletion("AAMk-unknown")], crm_changes=[CrmDeletion("act-unknown", "1")])
        == ()
    )


# --- direction ----------------------------------------------------------------------------------------------


def test_crm_to_m365_ignores_outlook_changes() -> None:
    link = linked("act-1", "AAMk-1", activity())
    one_way = rules(direction=SyncDirection.CRM_TO_M365)
    edited = GraphUpsert(graph_event("AAMk-1", activity("Outlook edit"), change_key="ck-2"))
    assert kinds(plan(graph_changes=[edited], links=[link], rules=one_way)) == ["SaveLink"]
    new = GraphUpsert(graph_event("AAMk-2", activity()))
    assert plan(graph_changes=[new], rules=one_way) == ()
    assert kinds(plan(graph_changes=[GraphDeletion("AAMk-1")], links=[link], rules=one_way)) == ["DropLink"]
    both_edit = plan(
        graph_changes=[edited],
        crm_changes=[CrmUpsert("act-1", "2", activity("CRM edit"))],
        links=[link],
        rules=one_way,
    )
    assert only(both_edit, UpdateGraph)[0].body() == {"subject": "CRM edit"}
    assert only(both_edit, RecordConflict) == []


def test_m365_to_crm_ignores_crm_changes() -> None:
    link = linked("act-1", "AAMk-1", activity())
    one_way = rules(direction=SyncDirection.M365_TO_CRM)
    assert kinds(
        plan(crm_changes=[CrmUpsert("act-1", "2", activity("CRM edit"))], links=[link], rules=one_way)
    ) == ["SaveLink"]
    assert plan(crm_changes=[CrmUpsert("act-2", "1", activity())], rules=one_way) == ()
    assert kinds(plan(crm_changes=[CrmDeletion("act-1", "2")], links=[link], rules=one_way)) == ["DropLink"]
    edited = GraphUpsert(graph_event("AAMk-1", activity("Outlook edit"), change_key="ck-2"))
    assert kinds(plan(graph_changes=[edited], links=[link], rules=one_way)) == ["UpdateCrm", "SaveLink"]


def test_user_override_of_direction_and_policy() -> None:
    policy = SyncPolicy(
        SyncDirection.BOTH,
        ConflictPolicy.LATEST_WINS,
        DescriptionPolicy.ALWAYS,
        60,
        365,
        False,
        False,
        0.5,
        10,
        500,
    )
    connection = Connection(
        USER,
        ConnectionState.CONNECTED,
        direction_override=SyncDirection.CRM_TO_M365,
        conflict_policy_override=ConflictPolicy.CRM_WINS,
    )
    user_rules = SyncRules.for_user(policy, connection)
    assert (user_rules.direction, user_rules.conflict_policy) == (
        SyncDirection.CRM_TO_M365,
        ConflictPolicy.CRM_WINS,
    )
    assert SyncRules.for_user(policy).direction is SyncDirection.BOTH


# --- window and backfill ------------------------------------------------------------------------------------


def test_items_outside_the_window_are_ignored_not_deleted() -> None:
    far = activity(start=NOW + timedelta(days=400))
    old = activity(start=NOW - timedelta(days=90))
    actions = plan(
        crm_changes=[CrmUpsert("act-far", "1", far)],
        graph_changes=[GraphUpsert(graph_event("AAMk-old", old))],
    )
    assert [(s.reason, s.reason.logged) for s in only(actions, Skip)] == [
        (SkipReason.OUTSIDE_WINDOW, False)
    ] * 2
    assert kinds(actions) == ["Skip", "Skip"]
    # An item synced earlier and moved out of the window is not deleted: the move itself is synced.
    link = linked("act-1", "AAMk-1", activity())
    moved = plan(
        crm_changes=[CrmUpsert("act-1", "2", activity(start=NOW + timedelta(days=400)))], links=[link]
    )
    assert kinds(moved) == ["UpdateGraph", "SaveLink"]


def test_items_from_before_connecting_sync_only_once_edited() -> None:
    old = activity(created_at=CONNECTED - timedelta(days=3), modified_at=CONNECTED - timedelta(days=2))
    edited = dataclasses.replace(old, modified_at=CONNECTED + timedelta(days=1))
    changes = {
        "crm_changes": [CrmUpsert("act-old", "1", old), CrmUpsert("act-edited", "1", edited)],
        "graph_changes": [
            GraphUpsert(graph_event("AAMk-old", old)),
            GraphUpsert(graph_event("AAMk-edited", edited)),
        ],
    }
    actions = plan(**changes)
    assert sorted(s.crm_id or s.graph_id or "" for s in only(actions, Skip)) == ["AAMk-old", "act-old"]
    assert {s.reason for s in only(actions, Skip)} == {SkipReason.PRE_EXISTING}
    assert len(only(actions, CreateInGraph)) == len(only(actions, CreateInCrm)) == 1
    backfill = plan(**changes, rules=rules(initial_backfill=True))
    assert len(only(backfill, CreateInGraph)) == len(only(backfill, CreateInCrm)) == 2


# --- identity: iCalUId, transaction ids, owners -------------------------------------------------------------


def test_same_meeting_in_another_users_calendar_links_to_the_existing_activity() -> None:
    event = graph_event("AAMk-b", activity(attendees=(CONTACT,)))
    shared = {"uid-AAMk-b": SharedMeeting("act-1", "usr-9")}
    actions = plan(graph_changes=[GraphUpsert(event)], shared_meetings=shared)
    assert kinds(actions) == ["SaveLink"]
    link = only(actions, SaveLink)[0].to_link()
    assert (link.crm_id, link.graph_id, link.crm_owner_id) == ("act-1", "AAMk-b", "usr-9")
    # The copy is observed, never written from: an edit in it is the owner's link's business …
    edited = graph_event("AAMk-b", activity("Renamed", attendees=(CONTACT,)), change_key="ck-2")
    assert kinds(plan(graph_changes=[GraphUpsert(edited)], links=[link])) == ["SaveLink"]
    # … and removing it from this calendar never deletes the owner's activity.
    assert kinds(plan(graph_changes=[GraphDeletion("AAMk-b")], links=[link])) == ["DropLink"]


def test_own_event_whose_link_was_lost_is_recognised_by_its_transaction_id() -> None:
    create = only(plan(crm_changes=[CrmUpsert("act-1", "1", activity())]), CreateInGraph)[0]
    event = graph_event("AAMk-1", activity(), transactionId=create.transaction_id)
    retried = plan(crm_changes=[CrmUpsert("act-1", "1", activity())], graph_changes=[GraphUpsert(event)])
    assert kinds(retried) == ["SaveLink"]  # linked, not created again on either side
    assert only(retried, SaveLink)[0].to_link().graph_id == "AAMk-1"
    lone = plan(graph_changes=[GraphUpsert(event)])
    assert kinds(lone) == ["SaveLink"]
    other = linked("act-1", "AAMk-0", activity())
    duplicate = plan(graph_changes=[GraphUpsert(event)], links=[other])
    assert [(s.reason, s.reason.logged) for s in only(duplicate, Skip)] == [(SkipReason.DUPLICATE, True)]
    assert len(duplicate) == 1  # neither linked nor copied to the CRM as a second activity
    twice = GraphUpsert(graph_event("AAMk-2", activity(), transactionId=create.transaction_id))
    both = plan(graph_changes=[GraphUpsert(event), twice])
    assert kinds(both) == ["Skip", "SaveLink"]


def test_owner_reassignment_moves_the_event_between_calendars() -> None:
    previous = dataclasses.replace(linked("act-1", "AAMk-old", activity()), user_id="usr-old")
    actions = plan(crm_changes=[CrmUpsert("act-1", "3", activity())], other_users_links=[previous])
    assert kinds(actions) == ["DeleteInGraph", "DropLink", "CreateInGraph", "SaveLink"]
    delete = only(actions, DeleteInGraph)[0]
    assert (delete.user_id, delete.graph_id, delete.reassigned) == ("usr-old", "AAMk-old", True)
    assert only(actions, CreateInGraph)[0].user_id == USER
    # Seen from the previous owner's run (a push naming the new owner): the event leaves that calendar.
    mine = linked("act-1", "AAMk-1", activity())
    away = plan(crm_changes=[CrmUpsert("act-1", "3", activity(owner_crm_user_id="usr-new"))], links=[mine])
    assert kinds(away) == ["DeleteInGraph", "DropLink"]
    assert only(away, DeleteInGraph)[0].reassigned


# --- what is not synced -------------------------------------------------------------------------------------


def test_calls_and_tasks_are_not_synced() -> None:
    actions = plan(crm_changes=[CrmUpsert("act-1", "1", activity(activity_type=ActivityType.CALL))])
    assert [s.reason for s in only(actions, Skip)] == [SkipReason.TYPE_NOT_SYNCED]


# --- attendees ----------------------------------------------------------------------------------------------


def test_contact_added_in_crm_is_withheld_from_outlook_when_contacts_are_not_invited() -> None:
    no_invites = rules(invite_crm_contacts=False)
    link = linked("act-1", "AAMk-1", activity())
    with_contact = activity(attendees=(COLLEAGUE, CONTACT))
    actions = plan(crm_changes=[CrmUpsert("act-1", "2", with_contact)], links=[link], rules=no_invites)
    assert kinds(actions) == ["SaveLink"]  # nothing to send: Outlook's list stays as it is
    saved = only(actions, SaveLink)[0].to_link()
    # Later Outlook changes a response: the CRM keeps the withheld contact and gets the response.
    answered = dataclasses.replace(COLLEAGUE, response=AttendeeResponse.ACCEPTED)
    event = graph_event("AAMk-1", activity(attendees=(answered,)), change_key="ck-2")
    event.raw["attendees"][0]["status"]["response"] = "accepted"
    update = only(plan(graph_changes=[GraphUpsert(event)], links=[saved], rules=no_invites), UpdateCrm)[0]
    assert [(a["email"], a["response"]) for a in update.body()["attendees"]] == [
        ("ada@contoso.com", "none"),
        ("jo@vendor.example", "accepted"),
    ]


def test_contact_added_in_crm_is_invited_when_enabled() -> None:
    link = linked("act-1", "AAMk-1", activity())
    actions = plan(
        crm_changes=[CrmUpsert("act-1", "2", activity(attendees=(COLLEAGUE, CONTACT)))], links=[link]
    )
    body = only(actions, UpdateGraph)[0].body()
    assert [a["emailAddress"]["address"] for a in body["attendees"]] == [
        "ada@contoso.com",
        "jo@vendor.example",
    ]


def test_no_attendees_are_added_to_an_event_that_has_ended() -> None:
    yesterday = NOW - timedelta(days=1)
    link = linked("act-1", "AAMk-1", activity(start=yesterday))
    logged = activity(start=yesterday, attendees=(COLLEAGUE, CONTACT))  # who came, logged after the meeting
    actions = plan(crm_changes=[CrmUpsert("act-1", "2", logged)], links=[link])
    assert only(actions, UpdateGraph) == []
    created = only(plan(crm_changes=[CrmUpsert("act-2", "1", logged)]), CreateInGraph)[0]
    assert "attendees" not in created.body()


def test_attendee_added_in_outlook_reaches_the_crm_with_its_kind() -> None:
    link = linked("act-1", "AAMk-1", activity())
    event = graph_event("AAMk-1", activity(attendees=(COLLEAGUE, CONTACT)), change_key="ck-2")
    update = only(plan(graph_changes=[GraphUpsert(event)], links=[link]), UpdateCrm)[0]
    assert [(a["email"], a["kind"], a["crmId"]) for a in update.body()["attendees"]] == [
        ("ada@contoso.com", "contact", "con-1"),
        ("jo@vendor.example", "user", "usr-2"),
    ]


def test_attendees_added_on_both_sides_are_merged_without_conflict() -> None:
    link = linked("act-1", "AAMk-1", activity())
    other = Attendee("max@vendor.example", "Max", AttendeeKind.USER, crm_id="usr-3")
    actions = plan(
        crm_changes=[CrmUpsert("act-1", "2", activity(attendees=(COLLEAGUE, other)))],
        graph_changes=[
            GraphUpsert(graph_event("AAMk-1", activity(attendees=(COLLEAGUE, CONTACT)), change_key="ck-2"))
        ],
        links=[link],
    )
    assert only(actions, RecordConflict) == []
    to_outlook = [a["emailAddress"]["address"] for a in only(actions, UpdateGraph)[0].body()["attendees"]]
    to_crm = [a["email"] for a in only(actions, UpdateCrm)[0].body()["attendees"]]
    assert to_outlook == to_crm == ["ada@contoso.com", "jo@vendor.example", "max@vendor.example"]


def test_join_url_travels_back_to_the_crm() -> None:
    online = activity(is_online_meeting=True)
    create = plan(crm_changes=[CrmUpsert("act-1", "1", online)])
    assert only(create, CreateInGraph)[0].body()["onlineMeetingProvider"] == "teamsForBusiness"
    link = only(create, SaveLink)[0].to_link(graph=GraphWriteResult("AAMk-1", "ck-1"))
    url = "https://teams.microsoft.com/l/meetup-join/abc"
    event = graph_event("AAMk-1", online, change_key="ck-2", onlineMeeting={"joinUrl": url})
    update = only(plan(graph_changes=[GraphUpsert(event)], links=[link]), UpdateCrm)[0]
    assert update.body() == {"onlineMeeting": {"joinUrl": url}}


def test_description_on_create_policy_does_not_sync_later_edits() -> None:
    link = linked("act-1", "AAMk-1", activity())
    on_create = rules(description_policy=DescriptionPolicy.ON_CREATE)
    edited = CrmUpsert("act-1", "2", activity(description="New notes"))
    assert kinds(plan(crm_changes=[edited], links=[link], rules=on_create)) == ["SaveLink"]
    assert (
        "body"
        in only(plan(crm_changes=[CrmUpsert("act-2", "1", activity())], rules=on_create), CreateInGraph)[
            0
        ].body()
    )


# --- the mass-deletion guard --------------------------------------------------------------------------------


def test_mass_deletion_is_refused_unless_forced() -> None:
    links = [linked(f"act-{n}", f"AAMk-{n}", activity()) for n in range(20)]
    gone = [GraphDeletion(f"AAMk-{n}") for n in range(11)]
    with pytest.raises(MassDeletionError) as raised:
        plan(graph_changes=gone, links=links, linked_count=20)
    assert (raised.value.would_delete, raised.value.linked) == (11, 20)
    forced = plan(graph_changes=gone, links=links, linked_count=20, force_deletions=True)
    assert len(only(forced, DeleteInCrm)) == 11
    assert len(only(plan(graph_changes=gone[:10], links=links, linked_count=20), DeleteInCrm)) == 10


def test_mass_deletion_guard_needs_a_minimum_of_links() -> None:
    links = [linked(f"act-{n}", f"AAMk-{n}", activity()) for n in range(5)]
    gone = [CrmDeletion(f"act-{n}", "2") for n in range(5)]
    assert len(only(plan(crm_changes=gone, links=links), DeleteInGraph)) == 5


def test_reassignments_do_not_count_as_mass_deletion() -> None:
    previous = [
        dataclasses.replace(linked(f"act-{n}", f"AAMk-{n}", activity()), user_id="usr-old") for n in range(12)
    ]
    moved = [CrmUpsert(f"act-{n}", "2", activity()) for n in range(12)]
    actions = plan(crm_changes=moved, other_users_links=previous, linked_count=12)
    assert len(only(actions, DeleteInGraph)) == 12


# --- gather helpers -----------------------------------------------------------------------------------------


def test_outbox_entries_become_crm_changes() -> None:
    payload = (
        '{"crmId":"act-1","version":"3","modifiedAt":"2026-03-01T10:00:00Z","ownerCrmUserId":"usr-1",'
        '"type":"meeting","subject":"S","start":"2026-03-03T10:00:00Z","end":"2026-03-03T11:00:00Z","timeZone":"UTC"}'
    )
    upsert = crm_change_from_outbox(OutboxEntry(USER, "act-1", OutboxOperation.UPSERT, payload, "3", NOW))
    assert isinstance(upsert, CrmUpsert)
    assert (upsert.version, upsert.activity.subject) == ("3", "S")
    deletion = crm_change_from_outbox(OutboxEntry(USER, "act-1", OutboxOperation.DELETE, None, "4", NOW))
    assert deletion == CrmDeletion("act-1", "4")


def test_emails_to_look_up_lists_each_attendee_once() -> None:
    events: list[GraphChange] = [
        GraphUpsert(graph_event("AAMk-1", activity(attendees=(COLLEAGUE, CONTACT)))),
        GraphUpsert(graph_event("AAMk-2", activity(attendees=(CONTACT,)))),
        GraphDeletion("AAMk-3"),
    ]
    assert emails_to_look_up(events) == ("jo@vendor.example", "ada@contoso.com")
