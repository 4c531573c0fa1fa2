"""The bugs the sync state machine found (``test_sync_machine.KNOWN_BUGS``), each replayed as one scenario
over the real reconciler in-process (``sync_machine_kit``: Azurite, the Graph, Entra ID and CRM emulators,
users connected through the real sign-in trip, crashes injected into the real table storage).

- ``test_a_recreated_event_whose_link_was_not_saved_is_linked_without_a_false_duplicate_skip``
- ``test_an_activity_reassigned_away_and_back_before_the_new_owners_run_stays_where_it_is``
- ``test_an_activity_reassigned_away_and_back_then_deleted_is_deleted_by_its_owners_run``
- ``test_an_activity_reassigned_and_deleted_before_the_new_owners_run_leaves_the_previous_calendar``
- ``test_a_push_waiting_for_the_previous_owner_of_an_activity_deleted_in_transit_creates_nothing``
- ``test_after_the_delta_token_expired_events_deleted_before_are_deleted_in_the_crm``
- ``test_a_read_throttled_inside_the_batch_is_sent_again_alone``
- ``test_deletions_found_after_the_delta_token_expired_meet_the_mass_deletion_guard``
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import date

import pytest

from devkit.azurite import AzuriteEndpoints
from sync_core.config import ConflictPolicy
from sync_core.domain.state import ConnectionState, SyncLogKind
from sync_core.services.reconcile import RunReport
from tests.integration.sync_machine_kit import (
    CrashPlan,
    InjectedCrashError,
    Json,
    MachineContainer,
    MachineWorld,
    Person,
    Slot,
    Values,
    machine_world,
)

POLICY = ConflictPolicy.CRM_WINS


@pytest.fixture(scope="module")
def world(azurite: AzuriteEndpoints) -> Iterator[MachineWorld]:
    with machine_world(azurite.connection_string) as built:
        yield built


@pytest.fixture
def container(world: MachineWorld) -> Iterator[MachineContainer]:
    world.graph.clear_faults()
    world.switch.disarm()
    yield world.containers[POLICY]
    world.graph.clear_faults()
    world.switch.disarm()


def meeting(subject: str, day: int = 3) -> Values:
    return Values(subject, "Agenda", "Room 1", Slot(day, 9, 60, "UTC"), False)


def run(world: MachineWorld, person: Person) -> RunReport:
    report = world.containers[POLICY].reconciler.run(person.user_id)
    assert report.ran, report
    return report


def crm_create(world: MachineWorld, person: Person, values: Values, today: date) -> Json:
    created: Json = world.crm.create_as_user(values.crm_create(person.user_id, today))
    world.containers[POLICY].activity_pushes.upsert(person.user_id, created["crmId"], created)
    return created


def crm_edit(world: MachineWorld, crm_id: str, changes: Json) -> Json:
    edited: Json = world.crm.edit_as_user(crm_id, changes)
    world.containers[POLICY].activity_pushes.upsert(edited["ownerCrmUserId"], crm_id, edited)
    return edited


def linked_event(world: MachineWorld, person: Person, crm_id: str) -> str | None:
    link = world.storage().links.get_by_crm_id(person.user_id, crm_id)
    return None if link is None else link.value.graph_id


def log_entries_other_than_conflicts(world: MachineWorld, person: Person) -> list[object]:
    entries = world.storage().sync_log.recent(person.user_id, 100)
    return [entry for entry in entries if entry.kind is not SyncLogKind.CONFLICT]


def test_a_recreated_event_whose_link_was_not_saved_is_linked_without_a_false_duplicate_skip(
    world: MachineWorld, container: MachineContainer
) -> None:
    ann = world.connect(POLICY)
    run(world, ann)
    activity = crm_create(world, ann, meeting("Kick-off"), world.today)
    run(world, ann)
    first = linked_event(world, ann, activity["crmId"])
    assert first is not None
    # Deleted in Outlook, edited in the CRM: the edit wins and the event is created again; the worker dies
    # before the new link is saved.
    world.outlook_delete(ann, first)
    crm_edit(world, activity["crmId"], {"subject": "Kick-off, moved"})
    world.switch.arm(CrashPlan("links.write", 1, after=False, hard=False))
    with pytest.raises(InjectedCrashError):
        container.reconciler.run(ann.user_id)
    world.switch.disarm()

    retried = run(world, ann)

    events = world.outlook_events(ann)
    assert [event["subject"] for event in events] == ["Kick-off, moved"]
    assert linked_event(world, ann, activity["crmId"]) == events[0]["id"]
    assert retried.skipped == 0
    assert log_entries_other_than_conflicts(world, ann) == []
    assert run(world, ann).writes_to_graph == 0


def reassign(world: MachineWorld, crm_id: str, to: Person) -> Json:
    return crm_edit(world, crm_id, {"ownerCrmUserId": to.user_id})


def test_an_activity_reassigned_away_and_back_before_the_new_owners_run_stays_where_it_is(
    world: MachineWorld, container: MachineContainer
) -> None:
    ann, bob = world.connect(POLICY), world.connect(POLICY)
    run(world, ann)
    run(world, bob)
    activity = crm_create(world, ann, meeting("Review"), world.today)
    run(world, ann)
    event_id = linked_event(world, ann, activity["crmId"])
    assert event_id is not None
    # A → B → A: Bob's outbox holds the push that named him the owner, Ann's the one that named her again.
    reassign(world, activity["crmId"], bob)
    reassign(world, activity["crmId"], ann)

    run(world, ann)
    moved = run(world, bob)

    assert moved.writes_to_graph == 0
    assert [event["id"] for event in world.outlook_events(ann)] == [event_id]
    assert world.outlook_events(bob) == []
    assert linked_event(world, ann, activity["crmId"]) == event_id
    assert linked_event(world, bob, activity["crmId"]) is None
    assert run(world, ann).writes_to_graph == 0
    assert log_entries_other_than_conflicts(world, bob) == []


def test_an_activity_reassigned_and_deleted_before_the_new_owners_run_leaves_the_previous_calendar(
    world: MachineWorld, container: MachineContainer
) -> None:
    ann, bob = world.connect(POLICY), world.connect(POLICY)
    run(world, ann)
    run(world, bob)
    activity = crm_create(world, ann, meeting("Budget"), world.today)
    run(world, ann)
    assert linked_event(world, ann, activity["crmId"]) is not None
    # Reassigned to Bob, then deleted: the CRM pushes the deletion to Bob, whose outbox then holds only it.
    current = reassign(world, activity["crmId"], bob)
    world.crm.delete_as_user(activity["crmId"])
    container.activity_pushes.delete(bob.user_id, activity["crmId"], current["version"])

    deleted = run(world, bob)

    assert deleted.writes_to_graph == 1
    assert world.outlook_events(ann) == []
    assert world.outlook_events(bob) == []
    assert list(world.storage().links.list_for_user(ann.user_id)) == []
    assert list(world.storage().links.list_for_user(bob.user_id)) == []
    assert run(world, ann).writes_to_graph == 0
    assert log_entries_other_than_conflicts(world, ann) == []
    assert log_entries_other_than_conflicts(world, bob) == []


def test_after_the_delta_token_expired_events_deleted_before_are_deleted_in_the_crm(
    world: MachineWorld, container: MachineContainer
) -> None:
    ann = world.connect(POLICY)
    run(world, ann)
    gone = crm_create(world, ann, meeting("Gone", day=2), world.today)
    edited = crm_create(world, ann, meeting("Edited in the CRM", day=3), world.today)
    moved = crm_create(world, ann, meeting("Moved out of the window", day=4), world.today)
    kept = crm_create(world, ann, meeting("Kept", day=5), world.today)
    run(world, ann)
    events = {
        crm_id: linked_event(world, ann, crm_id)
        for crm_id in (a["crmId"] for a in (gone, edited, moved, kept))
    }
    # While the delta token is lost: two events deleted in Outlook (one of their activities edited in the CRM
    # meanwhile: the edit wins), one moved past the window's end (its move still syncs; it is not deleted).
    world.outlook_delete(ann, str(events[gone["crmId"]]))
    world.outlook_delete(ann, str(events[edited["crmId"]]))
    crm_edit(world, edited["crmId"], {"subject": "Edited in the CRM, again"})
    world.outlook_update(ann, str(events[moved["crmId"]]), Slot(400, 9, 60, "UTC").graph_json(world.today))
    world.graph.expire_delta_tokens(ann.oid)
    world.graph.reset_request_log()

    resynced = run(world, ann)

    assert resynced.full_resyncs == 1
    assert world.crm.activity(gone["crmId"]) is None
    activities = {a["crmId"]: a for a in world.crm.activities(ann.user_id)}
    assert sorted(activities) == sorted((edited["crmId"], moved["crmId"], kept["crmId"]))
    assert activities[moved["crmId"]]["start"].startswith(
        Slot(400, 9, 60, "UTC").crm_json(world.today)["start"][:10]
    )
    outlook = sorted(event["subject"] for event in world.outlook_events(ann))
    assert outlook == ["Edited in the CRM, again", "Kept", "Moved out of the window"]
    links = {
        link.value.crm_id: link.value.graph_id for link in world.storage().links.list_for_user(ann.user_id)
    }
    assert sorted(links) == sorted(activities)
    assert links[kept["crmId"]] == events[kept["crmId"]]
    assert links[edited["crmId"]] != events[edited["crmId"]]
    # The unlisted linked events (deleted, or outside the window) were read in one $batch request.
    mailbox = world.graph.request_log(ann.oid)
    reads = [(r["method"], r["batch"]) for r in mailbox if "/events/" in r["path"]]
    batches = [r for r in world.graph.request_log() if r["path"].endswith("/$batch")]
    assert reads.count(("GET", True)) == 3, reads
    assert ("GET", False) not in reads, reads
    assert len(batches) == 1, batches
    assert log_entries_other_than_conflicts(world, ann) == []
    assert run(world, ann).writes_to_graph == 0


def test_a_read_throttled_inside_the_batch_is_sent_again_alone(
    world: MachineWorld, container: MachineContainer
) -> None:
    ann = world.connect(POLICY)
    run(world, ann)
    activities = [crm_create(world, ann, meeting(f"Call {n}", day=2 + n), world.today) for n in range(2)]
    run(world, ann)
    for activity in activities:
        world.outlook_delete(ann, str(linked_event(world, ann, activity["crmId"])))
    world.graph.expire_delta_tokens(ann.oid)
    world.graph.inject_fault(429, count=1, retry_after=0, user=ann.oid, method="GET", in_batch=True)
    world.graph.reset_request_log()

    run(world, ann)

    assert [world.crm.activity(activity["crmId"]) for activity in activities] == [None, None]
    reads = [
        (r["batch"], r["status"])
        for r in world.graph.request_log(ann.oid)
        if r["method"] == "GET" and "/events/" in r["path"]
    ]
    assert sorted(reads) == [(False, 404), (True, 404), (True, 429)], reads


def test_deletions_found_after_the_delta_token_expired_meet_the_mass_deletion_guard(
    world: MachineWorld, container: MachineContainer
) -> None:
    settings = container.settings
    guarded = MachineContainer(
        replace(settings, sync=replace(settings.sync, mass_delete_min_items=3)), world.clock, world.switch
    )
    try:
        ann = world.connect(POLICY)
        run(world, ann)
        activities = [crm_create(world, ann, meeting(f"Visit {n}", day=2 + n), world.today) for n in range(4)]
        run(world, ann)
        for activity in activities[:3]:
            world.outlook_delete(ann, str(linked_event(world, ann, activity["crmId"])))
        world.graph.expire_delta_tokens(ann.oid)

        guarded.reconciler.run(ann.user_id)

        assert sorted(a["crmId"] for a in world.crm.activities(ann.user_id)) == sorted(
            a["crmId"] for a in activities
        )
        connection = world.storage().connections.get(ann.user_id)
        assert connection is not None
        assert connection.value.state is ConnectionState.ERROR
        assert connection.value.last_error is not None
        assert connection.value.last_error.code == "mass_deletion"
    finally:
        guarded.close()


def test_a_push_waiting_for_the_previous_owner_of_an_activity_deleted_in_transit_creates_nothing(
    world: MachineWorld, container: MachineContainer
) -> None:
    ann, bob = world.connect(POLICY), world.connect(POLICY)
    run(world, ann)
    run(world, bob)
    activity = crm_create(world, ann, meeting("Offsite"), world.today)
    run(world, ann)
    # Ann's outbox holds a push of it again (a retried push, or the CRM's echo of a write of ours) when it is
    # reassigned to Bob and deleted.
    container.activity_pushes.upsert(ann.user_id, activity["crmId"], world.crm.activity(activity["crmId"]))
    current = reassign(world, activity["crmId"], bob)
    world.crm.delete_as_user(activity["crmId"])
    container.activity_pushes.delete(bob.user_id, activity["crmId"], current["version"])

    run(world, bob)
    later = run(world, ann)

    assert later.writes_to_graph == 0
    assert world.outlook_events(ann) == []
    assert list(world.storage().links.list_for_user(ann.user_id)) == []
    assert world.storage().outbox.list_for_user(ann.user_id) == []


def test_an_activity_reassigned_away_and_back_then_deleted_is_deleted_by_its_owners_run(
    world: MachineWorld, container: MachineContainer
) -> None:
    ann, bob = world.connect(POLICY), world.connect(POLICY)
    run(world, ann)
    run(world, bob)
    activity = crm_create(world, ann, meeting("Retro"), world.today)
    run(world, ann)
    event_id = linked_event(world, ann, activity["crmId"])
    reassign(world, activity["crmId"], bob)
    current = reassign(world, activity["crmId"], ann)
    world.crm.delete_as_user(activity["crmId"])
    container.activity_pushes.delete(ann.user_id, activity["crmId"], current["version"])

    # Bob's run holds only the stale push naming him the owner: it moves and deletes nothing.
    assert run(world, bob).writes_to_graph == 0
    assert [event["id"] for event in world.outlook_events(ann)] == [event_id]
    # Ann's run holds the deletion.
    assert run(world, ann).writes_to_graph == 1
    assert world.outlook_events(ann) == []
    assert world.outlook_events(bob) == []
    assert list(world.storage().links.list_for_user(ann.user_id)) == []
    assert log_entries_other_than_conflicts(world, bob) == []
