"""The sync rules of design §5 through the whole service, with the tenant's default policy (both directions,
``latest_wins``, description ``always``, no invitations of CRM contacts, no initial backfill):

- the window: ``test_an_item_outside_the_window_is_not_synced_either_way``,
  ``test_an_item_moved_out_of_the_window_is_kept_on_both_sides``
- initial backfill off: ``test_without_backfill_an_item_from_before_connecting_syncs_only_once_edited``
- classification: ``test_an_outlook_event_with_a_contact_of_an_account_becomes_a_meeting_for_good``
- attendees and description: ``test_crm_users_are_invited_but_contacts_are_not_when_inviting_is_off``,
  ``test_the_description_follows_edits_both_ways_by_default``
- a modification beats a deletion: ``test_an_outlook_deletion_loses_to_a_concurrent_crm_edit``,
  ``test_a_crm_deletion_loses_to_a_concurrent_outlook_edit``,
  ``test_a_crm_deletion_pushed_late_still_loses_to_the_outlook_edit``
- the mass-deletion guard: ``test_a_mass_deletion_in_outlook_deletes_nothing_and_flags_the_user``

Directions (tenant and per user) are in ``test_sync_directions``; conflicts in ``test_sync_conflicts``;
recurring series in ``test_sync_series``.
Changes are made as people make them; the sync runs by itself (webhook or push → queue → reconcile).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devkit.azurite import AzuriteEndpoints
from devkit.host_process import HostLauncher
from tests.e2e.kit import wait_until
from tests.e2e.sync_stack import (
    SyncStack,
    crm_activity,
    instant,
    running_sync_stack,
    slot,
    timed_event,
)

USERS = ("alice", "bob", "carol", "dave", "erin", "gus", "mia")
TEXT_BODY = 'outlook.body-content-type="text"'


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, local_hosts: HostLauncher, azurite: AzuriteEndpoints
) -> Iterator[SyncStack]:
    work = tmp_path_factory.mktemp("sync-rules")
    launcher = HostLauncher(work_root=work, base_settings=local_hosts.base_settings, env=local_hosts.env)
    with running_sync_stack(work, launcher, azurite.connection_string, USERS) as built:
        yield built


def attendee(email: str, name: str | None = None) -> dict[str, Any]:
    return {"emailAddress": {"address": email, "name": name or email}, "type": "required"}


def emails(event: dict[str, Any]) -> set[str]:
    return {a["emailAddress"]["address"].lower() for a in event.get("attendees") or []}


# --- the window -------------------------------------------------------------------------------------------


def test_an_item_outside_the_window_is_not_synced_either_way(stack: SyncStack) -> None:
    user = stack.connect("alice")
    long_ago, far_ahead = slot(-90), slot(400)
    stack.outlook_create(user, timed_event("Old retro", *long_ago))
    stack.outlook_create(user, timed_event("Next year's offsite", *far_ahead))
    stack.crm_create(user, crm_activity("Far budget round", f"{far_ahead[0]}Z", f"{far_ahead[1]}Z"))
    # Items inside the window, made after those, show the runs went by.
    stack.outlook_create(user, timed_event("Window marker", *slot(2)))
    stack.crm_create(user, crm_activity("CRM window marker", f"{slot(2, 11)[0]}Z", f"{slot(2, 11)[1]}Z"))
    wait_until(lambda: stack.one_activity(user, "Window marker"), what="the in-window event in the CRM")
    wait_until(lambda: stack.one_event(user, "CRM window marker"), what="the in-window activity in Outlook")
    stack.settle()

    assert stack.one_activity(user, "Old retro") is None
    assert stack.one_activity(user, "Next year's offsite") is None
    assert stack.one_event(user, "Far budget round") is None
    assert sorted(a["subject"] for a in stack.crm_activities(user)) == [
        "CRM window marker",
        "Far budget round",
        "Window marker",
    ]
    assert sorted(e["subject"] for e in stack.outlook_events(user)) == [
        "CRM window marker",
        "Next year's offsite",
        "Old retro",
        "Window marker",
    ]


def test_an_item_moved_out_of_the_window_is_kept_on_both_sides(stack: SyncStack) -> None:
    user = stack.connect("alice") if "usr-alice" not in stack.connected else "usr-alice"
    event = stack.outlook_create(user, timed_event("Leaves from Outlook", *slot(3)))
    created = stack.crm_create(user, crm_activity("Leaves from the CRM", f"{slot(4)[0]}Z", f"{slot(4)[1]}Z"))
    activity = wait_until(lambda: stack.one_activity(user, "Leaves from Outlook"), what="the activity")
    outlook_copy = wait_until(lambda: stack.one_event(user, "Leaves from the CRM"), what="the event")
    stack.settle()

    # Outlook moves its event past the window's end (delta reports it as removed from the view); the CRM
    # moves its activity there too. Neither is a deletion: both sides keep the item, moved.
    far_start, far_end = slot(400)
    stack.outlook_update(
        user,
        event["id"],
        {
            "start": {"dateTime": far_start, "timeZone": "UTC"},
            "end": {"dateTime": far_end, "timeZone": "UTC"},
        },
    )
    crm_far = slot(401)
    stack.crm_edit(created["crmId"], {"start": f"{crm_far[0]}Z", "end": f"{crm_far[1]}Z"})

    def moved_in_crm() -> bool:
        current = stack.world.crm.activity(activity["crmId"])
        return current is not None and instant(current["start"]) == instant(far_start)

    def moved_in_outlook() -> bool:
        current = stack.outlook_event(user, outlook_copy["id"])
        return current is not None and instant(current["start"]["dateTime"]) == instant(crm_far[0])

    wait_until(moved_in_crm, what="the CRM activity to follow the move")
    wait_until(moved_in_outlook, what="the Outlook event to follow the move")
    stack.settle()
    assert stack.outlook_event(user, event["id"]) is not None
    assert stack.world.crm.activity(created["crmId"]) is not None
    assert stack.one_activity(user, "Leaves from Outlook") is not None
    assert stack.one_event(user, "Leaves from the CRM") is not None


# --- initial backfill off ---------------------------------------------------------------------------------


def test_without_backfill_an_item_from_before_connecting_syncs_only_once_edited(stack: SyncStack) -> None:
    mailbox = stack.open_mailbox("bob")
    graph = stack.world.graph
    untouched = graph.user_create_event(mailbox, timed_event("Untouched old event", *slot(5)))
    edited = graph.user_create_event(mailbox, timed_event("Old event", *slot(6)))
    stack.world.crm.add_user("usr-bob", stack.world.users["bob"].upn, "Bob")
    old_activity = stack.world.crm.create_as_user(
        {**crm_activity("Old activity", f"{slot(7)[0]}Z", f"{slot(7)[1]}Z"), "ownerCrmUserId": "usr-bob"}
    )

    user = stack.connect("bob")
    stack.push(user, old_activity)  # the CRM pushing what it already had: not a change since connecting
    stack.settle()
    assert stack.crm_activities(user) == [old_activity]
    assert {e["subject"] for e in stack.outlook_events(user)} == {"Untouched old event", "Old event"}

    # Edited after connecting: now they sync.
    stack.outlook_update(user, edited["id"], {"subject": "Old event (edited)"})
    stack.crm_edit(old_activity["crmId"], {"subject": "Old activity (edited)"})
    wait_until(lambda: stack.one_activity(user, "Old event (edited)"), what="the edited old event in the CRM")
    wait_until(lambda: stack.one_event(user, "Old activity (edited)"), what="the edited activity in Outlook")
    stack.settle()
    assert stack.one_activity(user, "Untouched old event") is None
    assert stack.outlook_event(user, untouched["id"]) is not None
    assert len(stack.crm_activities(user)) == 2
    assert len(stack.outlook_events(user)) == 3


# --- classification ---------------------------------------------------------------------------------------


def test_an_outlook_event_with_a_contact_of_an_account_becomes_a_meeting_for_good(stack: SyncStack) -> None:
    crm = stack.world.crm
    account = crm.add_account("Northwind")
    dana = crm.add_contact("dana@northwind.example", "Dana", account["crmId"])
    solo = crm.add_contact("sol@freelance.example", "Sol")  # a contact without an account
    lead = crm.add_lead("lee@prospect.example", "Lee", "Prospect Ltd")
    user = stack.connect("carol")

    pitch = stack.outlook_create(
        user,
        timed_event(
            "Pitch",
            *slot(3),
            attendees=[attendee("dana@northwind.example"), attendee("lee@prospect.example")],
        ),
    )
    chat = stack.outlook_create(
        user,
        timed_event(
            "Catch-up",
            *slot(4),
            attendees=[attendee("sol@freelance.example"), attendee("lee@prospect.example")],
        ),
    )
    meeting = wait_until(lambda: stack.one_activity(user, "Pitch"), what="the meeting")
    appointment = wait_until(lambda: stack.one_activity(user, "Catch-up"), what="the appointment")
    assert meeting["type"] == "meeting"
    assert meeting["links"] == {
        "accountId": account["crmId"],
        "contactIds": [dana["crmId"]],
        "leadIds": [lead["crmId"]],
    }
    assert {(a["email"], a["kind"], a["crmId"]) for a in meeting["attendees"]} == {
        ("dana@northwind.example", "contact", dana["crmId"]),
        ("lee@prospect.example", "lead", lead["crmId"]),
    }
    assert appointment["type"] == "personal_appointment"
    assert {(a["email"], a["kind"]) for a in appointment["attendees"]} == {
        ("sol@freelance.example", "contact"),
        ("lee@prospect.example", "lead"),
    }
    assert solo["account"] is None

    # Later updates change the attendees, never the type.
    stack.outlook_update(user, pitch["id"], {"attendees": [attendee("lee@prospect.example")]})
    stack.outlook_update(
        user,
        chat["id"],
        {"attendees": [*chat["attendees"], attendee("dana@northwind.example")]},
    )

    def updated() -> bool:
        pitch_now = stack.world.crm.activity(meeting["crmId"])
        chat_now = stack.world.crm.activity(appointment["crmId"])
        return (
            pitch_now is not None
            and chat_now is not None
            and {a["email"] for a in pitch_now["attendees"]} == {"lee@prospect.example"}
            and "dana@northwind.example" in {a["email"] for a in chat_now["attendees"]}
        )

    wait_until(updated, what="the attendee changes in the CRM")
    stack.settle()
    assert stack.world.crm.activity(meeting["crmId"])["type"] == "meeting"  # type: ignore[index]
    assert stack.world.crm.activity(appointment["crmId"])["type"] == "personal_appointment"  # type: ignore[index]
    assert len(stack.crm_activities(user)) == 2
    assert len(stack.outlook_events(user)) == 2


# --- attendees and description ----------------------------------------------------------------------------


def test_crm_users_are_invited_but_contacts_are_not_when_inviting_is_off(stack: SyncStack) -> None:
    crm = stack.world.crm
    account = crm.add_account("Fabrikam")
    contact = crm.add_contact("ola@fabrikam.example", "Ola", account["crmId"])
    colleague = crm.add_user("usr-colleague", "colleague@contoso.example", "Colleague")
    user = stack.connect("dave")

    people = [
        {"email": colleague["email"], "name": "Colleague", "kind": "user", "crmId": colleague["crmUserId"]},
        {"email": contact["email"], "name": "Ola", "kind": "contact", "crmId": contact["crmId"]},
    ]
    created = stack.crm_create(
        user,
        {
            **crm_activity("Account review", f"{slot(3)[0]}Z", f"{slot(3)[1]}Z"),
            "type": "meeting",
            "attendees": people,
            "links": {"accountId": account["crmId"], "contactIds": [contact["crmId"]], "leadIds": []},
        },
    )
    event = wait_until(lambda: stack.one_event(user, "Account review"), what="the Outlook event")
    assert emails(event) == {"colleague@contoso.example"}

    # An edit elsewhere in the activity still leaves the contact out of Outlook and in the CRM.
    stack.crm_edit(created["crmId"], {"subject": "Account review (agenda)"})
    wait_until(lambda: stack.one_event(user, "Account review (agenda)"), what="the renamed event")
    stack.settle()
    event_now = stack.outlook_event(user, event["id"])
    assert event_now is not None
    assert emails(event_now) == {"colleague@contoso.example"}
    activity = stack.world.crm.activity(created["crmId"])
    assert activity is not None
    assert {a["email"] for a in activity["attendees"]} == {
        "colleague@contoso.example",
        "ola@fabrikam.example",
    }
    assert len(stack.outlook_events(user)) == 1


def test_the_description_follows_edits_both_ways_by_default(stack: SyncStack) -> None:
    user = stack.connect("dave") if "usr-dave" not in stack.connected else "usr-dave"
    created = stack.crm_create(
        user, {**crm_activity("Planning", f"{slot(6)[0]}Z", f"{slot(6)[1]}Z"), "description": "Agenda v1"}
    )
    event = wait_until(lambda: stack.one_event(user, "Planning"), what="the event")

    def outlook_body() -> str:
        current = stack.outlook_event(user, event["id"], prefer=TEXT_BODY)
        assert current is not None
        return str(current["body"]["content"]).strip()

    assert outlook_body() == "Agenda v1"
    stack.settle()
    stack.crm_edit(created["crmId"], {"description": "Agenda v2"})
    wait_until(lambda: outlook_body() == "Agenda v2", what="the CRM description in Outlook")
    stack.settle()
    stack.outlook_update(user, event["id"], {"body": {"contentType": "text", "content": "Agenda v3"}})

    def crm_description() -> str | None:
        current = stack.world.crm.activity(created["crmId"])
        return None if current is None else current["description"]

    wait_until(lambda: crm_description() == "Agenda v3", what="the Outlook body in the CRM")
    stack.settle()
    assert outlook_body() == "Agenda v3"
    assert stack.one_activity(user, "Planning") is not None
    assert stack.one_event(user, "Planning") is not None


# --- a modification beats a deletion ----------------------------------------------------------------------


def synced_pair(
    stack: SyncStack, user: str, subject: str, days: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    event = stack.outlook_create(user, timed_event(subject, *slot(days)))
    activity = wait_until(lambda: stack.one_activity(user, subject), what=f"{subject!r} in the CRM")
    stack.settle()
    return event, activity


def test_an_outlook_deletion_loses_to_a_concurrent_crm_edit(stack: SyncStack) -> None:
    user = stack.connect("gus")
    event, activity = synced_pair(stack, user, "Vendor call", 3)

    # The CRM user edits while the Outlook user deletes: the edit wins, the event comes back.
    with stack.run_under_way(
        user, lambda: stack.crm_edit(activity["crmId"], {"subject": "Vendor call (moved)"})
    ):
        stack.outlook_delete(user, event["id"])

    back = wait_until(lambda: stack.one_event(user, "Vendor call (moved)"), what="the event to come back")
    stack.settle()
    assert back["id"] != event["id"]
    assert stack.outlook_event(user, event["id"]) is None
    current = stack.world.crm.activity(activity["crmId"])
    assert current is not None
    assert current["subject"] == "Vendor call (moved)"
    assert stack.one_event(user, "Vendor call (moved)") is not None
    assert stack.one_activity(user, "Vendor call (moved)") is not None
    assert stack.one_activity(user, "Vendor call") is None


def test_a_crm_deletion_loses_to_a_concurrent_outlook_edit(stack: SyncStack) -> None:
    user = stack.connect("gus") if "usr-gus" not in stack.connected else "usr-gus"
    event, activity = synced_pair(stack, user, "Partner lunch", 4)

    with stack.run_under_way(user, lambda: stack.crm_delete(activity["crmId"])):
        stack.outlook_update(user, event["id"], {"subject": "Partner lunch (confirmed)"})

    back = wait_until(
        lambda: stack.one_activity(user, "Partner lunch (confirmed)"), what="the activity to come back"
    )
    stack.settle()
    assert back["crmId"] != activity["crmId"]
    assert stack.world.crm.activity(activity["crmId"]) is None
    outlook = stack.outlook_event(user, event["id"])
    assert outlook is not None
    assert outlook["subject"] == "Partner lunch (confirmed)"
    assert stack.one_event(user, "Partner lunch (confirmed)") is not None
    assert stack.one_activity(user, "Partner lunch (confirmed)") is not None


def test_a_crm_deletion_pushed_late_still_loses_to_the_outlook_edit(stack: SyncStack) -> None:
    user = stack.connect("gus") if "usr-gus" not in stack.connected else "usr-gus"
    event, activity = synced_pair(stack, user, "Board prep", 5)

    # Deleted in the CRM, whose push is slow; meanwhile the Outlook edit syncs and finds the activity gone.
    stack.world.crm.delete_as_user(activity["crmId"])
    stack.outlook_update(user, event["id"], {"subject": "Board prep (final)"})
    stack.settle()
    answer = stack.crm_client.delete_activity(user, activity["crmId"], activity["version"])
    assert answer.status == 202, answer.body
    stack.settle()

    assert stack.world.crm.activity(activity["crmId"]) is None
    back = stack.one_activity(user, "Board prep (final)")
    assert back is not None, "the Outlook edit was lost to the CRM deletion"
    outlook = stack.outlook_event(user, event["id"])
    assert outlook is not None, "the edited event was deleted"
    assert outlook["subject"] == "Board prep (final)"
    assert stack.one_event(user, "Board prep (final)") is not None


# --- the mass-deletion guard ------------------------------------------------------------------------------


def test_a_mass_deletion_in_outlook_deletes_nothing_and_flags_the_user(stack: SyncStack) -> None:
    user = stack.connect("mia")
    events = [stack.outlook_create(user, timed_event(f"Client visit {n}", *slot(2 + n))) for n in range(10)]
    wait_until(lambda: len(stack.crm_activities(user)) == 10, what="ten activities in the CRM")
    stack.settle()
    activities = {a["crmId"] for a in stack.crm_activities(user)}

    # Six of ten deleted at once (MASS_DELETE_MAX_SHARE 0.5 of at least MASS_DELETE_MIN_ITEMS 10).
    with stack.run_under_way(user, lambda: stack.outlook_delete(user, events[0]["id"])):
        for event in events[1:6]:
            stack.outlook_delete(user, event["id"])

    wait_until(lambda: stack.status(user)["state"] == "error", what="the user to be flagged")
    stack.settle()
    status = stack.status(user)
    assert status["lastError"]["reason"] == "mass_deletion"
    guard = [entry for entry in status["syncLog"] if entry["kind"] == "mass_deletion_guard"]
    assert guard
    assert "6 of 10" in guard[0]["message"]
    assert {a["crmId"] for a in stack.crm_activities(user)} == activities  # nothing deleted in the CRM
    assert len(stack.outlook_events(user)) == 4  # and nothing recreated in Outlook
    told = [e for e in stack.crm_events(user, "sync_error") if e["details"]["reason"] == "mass_deletion"]
    assert told
