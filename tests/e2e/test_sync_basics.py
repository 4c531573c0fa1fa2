"""Two-way calendar sync through the whole service: a change on one side → webhook or push → queue →
reconcile → the other side.

Each test changes one side as a person would and waits for the other side to show it; nothing in the service
is called directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devkit.azurite import AzuriteEndpoints
from devkit.host_process import HostLauncher
from tests.e2e.kit import wait_until
from tests.e2e.sync_stack import SyncStack, crm_activity, running_sync_stack, timed_event

USERS = ("alice", "bob", "carol", "dave")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, local_hosts: HostLauncher, azurite: AzuriteEndpoints
) -> Iterator[SyncStack]:
    work = tmp_path_factory.mktemp("sync-basics")
    launcher = HostLauncher(work_root=work, base_settings=local_hosts.base_settings, env=local_hosts.env)
    with running_sync_stack(work, launcher, azurite.connection_string, USERS) as built:
        yield built


def slot(days: int, hour: int = 9, minutes: int = 60) -> tuple[str, str]:
    """A wall-clock slot ``days`` from today (UTC), as Graph's ``dateTime`` strings."""
    start = (datetime.now(UTC) + timedelta(days=days)).replace(hour=hour, minute=0, second=0, microsecond=0)
    end = start + timedelta(minutes=minutes)
    return start.strftime("%Y-%m-%dT%H:%M:%S"), end.strftime("%Y-%m-%dT%H:%M:%S")


def only_activity(stack: SyncStack, user_id: str, subject: str) -> dict[str, Any] | None:
    found = [a for a in stack.crm_activities(user_id) if a["subject"] == subject]
    assert len(found) <= 1, f"duplicated activity {subject!r}: {found}"
    return found[0] if found else None


def only_event(stack: SyncStack, user_id: str, subject: str) -> dict[str, Any] | None:
    found = [e for e in stack.outlook_events(user_id) if e["subject"] == subject]
    assert len(found) <= 1, f"duplicated event {subject!r}"
    return found[0] if found else None


def test_an_outlook_create_update_and_delete_reach_the_crm(stack: SyncStack) -> None:
    user = stack.connect("alice")
    start, end = slot(3)
    event = stack.outlook_create(
        user, timed_event("Quarterly review", start, end, location={"displayName": "R1"})
    )

    activity = wait_until(lambda: only_activity(stack, user, "Quarterly review"), what="the activity")
    assert activity["location"] == "R1"
    assert activity["type"] == "personal_appointment"

    stack.outlook_update(user, event["id"], {"subject": "Quarterly review (moved)"})
    wait_until(lambda: only_activity(stack, user, "Quarterly review (moved)"), what="the renamed activity")
    assert only_activity(stack, user, "Quarterly review") is None

    stack.outlook_delete(user, event["id"])
    wait_until(lambda: stack.world.crm.activity(activity["crmId"]) is None, what="the deletion")
    stack.settle()
    assert stack.status(user)["lastError"] is None


def test_a_crm_create_update_and_delete_reach_outlook(stack: SyncStack) -> None:
    user = stack.connect("bob")
    start, end = slot(4, 14)
    created = stack.crm_create(user, crm_activity("Site visit", f"{start}Z", f"{end}Z", location="Plant 2"))

    event = wait_until(lambda: only_event(stack, user, "Site visit"), what="the Outlook event")
    assert event["location"]["displayName"] == "Plant 2"

    stack.crm_edit(created["crmId"], {"subject": "Site visit (confirmed)"})
    wait_until(lambda: only_event(stack, user, "Site visit (confirmed)"), what="the renamed event")

    stack.crm_delete(created["crmId"])
    wait_until(lambda: stack.outlook_event(user, event["id"]) is None, what="the event to go")
    stack.settle()
    # Our own writes never come back as changes: nothing new in the CRM.
    assert stack.crm_activities(user) == []


def test_edits_on_both_sides_merge_field_by_field(stack: SyncStack) -> None:
    user = stack.connect("carol")
    start, end = slot(5, 10)
    event = stack.outlook_create(user, timed_event("Budget", start, end))
    activity = wait_until(lambda: only_activity(stack, user, "Budget"), what="the activity")
    stack.settle()

    # The subject changes in Outlook and the location in the CRM: both edits survive on both sides.
    stack.outlook_update(user, event["id"], {"subject": "Budget 2027"})
    stack.crm_edit(activity["crmId"], {"location": "Board room"})

    def merged() -> bool:
        crm = stack.world.crm.activity(activity["crmId"])
        outlook = stack.outlook_event(user, event["id"])
        return (
            crm is not None
            and outlook is not None
            and crm["subject"] == "Budget 2027"
            and crm["location"] == "Board room"
            and outlook["subject"] == "Budget 2027"
            and outlook["location"]["displayName"] == "Board room"
        )

    wait_until(merged, timeout=30, what="both edits on both sides")


def test_reassigning_an_activity_moves_it_from_the_old_owners_calendar_to_the_new_ones(
    stack: SyncStack,
) -> None:
    old_owner, new_owner = stack.connect("dave"), stack.connected_user("alice")
    start, end = slot(6, 15)
    created = stack.crm_create(old_owner, crm_activity("Handover", f"{start}Z", f"{end}Z"))
    event = wait_until(lambda: only_event(stack, old_owner, "Handover"), what="the event at the old owner")

    # Reassigned in the CRM: the CRM pushes the activity under its new owner.
    stack.crm_edit(created["crmId"], {"ownerCrmUserId": new_owner})

    wait_until(lambda: only_event(stack, new_owner, "Handover"), what="the event at the new owner")
    wait_until(lambda: stack.outlook_event(old_owner, event["id"]) is None, what="the old owner's copy to go")
    stack.settle()
    assert stack.storage.links.get_by_crm_id(old_owner, created["crmId"]) is None
    assert stack.storage.links.get_by_crm_id(new_owner, created["crmId"]) is not None
    # The activity itself stays one activity.
    assert [a["crmId"] for a in stack.crm_activities(new_owner) if a["subject"] == "Handover"] == [
        created["crmId"]
    ]


def test_one_meeting_in_two_connected_calendars_is_one_crm_activity(stack: SyncStack) -> None:
    organizer, attendee = stack.connected_user("alice"), stack.connected_user("carol")
    start, end = slot(7, 11)
    carol = stack.world.users["carol"]
    meeting = stack.outlook_create(
        organizer,
        timed_event(
            "Joint planning",
            start,
            end,
            attendees=[{"emailAddress": {"address": carol.upn, "name": "Carol"}, "type": "required"}],
        ),
    )
    # Exchange puts the meeting in Carol's calendar too (same iCalUId); both users' runs see it.
    copy = wait_until(lambda: only_event(stack, attendee, "Joint planning"), what="the attendee's copy")
    assert copy["iCalUId"] == meeting["iCalUId"]

    activity = wait_until(
        lambda: only_activity(stack, organizer, "Joint planning"), timeout=30, what="the activity"
    )
    stack.settle()
    everyone = [a for user in (organizer, attendee) for a in stack.crm_activities(user)]
    assert [a["crmId"] for a in everyone if a["subject"] == "Joint planning"] == [activity["crmId"]]
    # Both calendars are linked to that one activity; the attendee's link only observes it.
    own = stack.storage.links.get_by_crm_id(organizer, activity["crmId"])
    observed = stack.storage.links.get_by_crm_id(attendee, activity["crmId"])
    assert own is not None
    assert own.value.crm_owner_id is None
    assert observed is not None
    assert observed.value.crm_owner_id == organizer

    # The organizer's edit reaches the CRM once; the attendee's copy changing with it writes nothing more.
    stack.outlook_update(organizer, meeting["id"], {"subject": "Joint planning (v2)"})
    wait_until(lambda: only_activity(stack, organizer, "Joint planning (v2)"), what="the renamed activity")
    stack.settle()
    assert len([a for a in stack.world.crm.activities() if a["subject"].startswith("Joint planning")]) == 1
