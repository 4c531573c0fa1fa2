"""Field by field through the whole service (design §5 "Fields"), with a tenant that lets the service invite
CRM contacts (``INVITE_CRM_CONTACTS=true``) and writes descriptions only on create (``DESCRIPTION_POLICY=
on_create``):

- attendees: ``test_contacts_and_leads_are_invited_when_inviting_is_on``,
  ``test_nobody_is_invited_to_an_event_that_already_ended``
- location: ``test_the_location_syncs_both_ways``
- privacy: ``test_private_maps_to_sensitivity_private_both_ways``
- Teams: ``test_an_outlook_teams_meeting_gives_the_crm_its_join_url``,
  ``test_a_crm_request_for_an_online_meeting_makes_a_teams_meeting``
- time zones: ``test_a_windows_time_zone_keeps_wall_clock_and_instants_across_the_dst_change``
- all-day: ``test_a_multi_day_all_day_event_syncs_both_ways_with_an_exclusive_end``
- description policy ``on_create``: ``test_with_on_create_the_description_is_written_once_and_never_again``
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from functools import partial
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

USERS = ("ann", "cat", "eve", "gil")
TEXT_BODY = 'outlook.body-content-type="text"'
BERLIN_WINDOWS = "W. Europe Standard Time"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, local_hosts: HostLauncher, azurite: AzuriteEndpoints
) -> Iterator[SyncStack]:
    work = tmp_path_factory.mktemp("sync-fields")
    launcher = HostLauncher(work_root=work, base_settings=local_hosts.base_settings, env=local_hosts.env)
    with running_sync_stack(
        work,
        launcher,
        azurite.connection_string,
        USERS,
        INVITE_CRM_CONTACTS="true",
        DESCRIPTION_POLICY="on_create",
    ) as built:
        yield built


def user_of(stack: SyncStack, name: str) -> str:
    return f"usr-{name}" if f"usr-{name}" in stack.connected else stack.connect(name)


def emails(event: dict[str, Any]) -> set[str]:
    return {a["emailAddress"]["address"].lower() for a in event.get("attendees") or []}


def activity_field(stack: SyncStack, crm_id: str, name: str) -> Any:
    current = stack.world.crm.activity(crm_id)
    assert current is not None, f"activity {crm_id} is gone"
    return current[name]


def event_field(stack: SyncStack, user: str, event_id: str, *path: str, prefer: str | None = None) -> Any:
    value: Any = stack.outlook_event(user, event_id, prefer=prefer)
    assert value is not None, f"event {event_id} is gone"
    for key in path:
        value = value[key]
    return value


# --- attendees --------------------------------------------------------------------------------------------


def people(stack: SyncStack) -> list[dict[str, Any]]:
    crm = stack.world.crm
    account = crm.add_account("Tailspin")
    contact = crm.add_contact("tom@tailspin.example", "Tom", account["crmId"])
    lead = crm.add_lead("lia@newco.example", "Lia", "NewCo")
    colleague = crm.add_user("usr-ann-colleague", "pat@contoso.example", "Pat")
    return [
        {"email": colleague["email"], "name": "Pat", "kind": "user", "crmId": colleague["crmUserId"]},
        {"email": contact["email"], "name": "Tom", "kind": "contact", "crmId": contact["crmId"]},
        {"email": lead["email"], "name": "Lia", "kind": "lead", "crmId": lead["crmId"]},
    ]


def test_contacts_and_leads_are_invited_when_inviting_is_on(stack: SyncStack) -> None:
    user = user_of(stack, "ann")
    attendees = people(stack)
    created = stack.crm_create(
        user, {**crm_activity("Tailspin demo", f"{slot(3)[0]}Z", f"{slot(3)[1]}Z"), "attendees": attendees}
    )
    event = wait_until(lambda: stack.one_event(user, "Tailspin demo"), what="the Outlook event")
    assert emails(event) == {"pat@contoso.example", "tom@tailspin.example", "lia@newco.example"}

    # Outlook's answers come back to the CRM's attendees; nobody is duplicated.
    answered = [
        {**a, "status": {"response": "accepted", "time": "2026-01-01T00:00:00Z"}}
        if a["emailAddress"]["address"] == "tom@tailspin.example"
        else a
        for a in event["attendees"]
    ]
    stack.outlook_update(user, event["id"], {"attendees": answered})

    def tom_accepted() -> bool:
        current = stack.world.crm.activity(created["crmId"])
        return current is not None and any(
            a["email"] == "tom@tailspin.example" and a["response"] == "accepted" for a in current["attendees"]
        )

    wait_until(tom_accepted, what="Tom's answer in the CRM")
    stack.settle()
    final = stack.world.crm.activity(created["crmId"])
    assert final is not None
    assert sorted((a["email"], a["kind"]) for a in final["attendees"]) == [
        ("lia@newco.example", "lead"),
        ("pat@contoso.example", "user"),
        ("tom@tailspin.example", "contact"),
    ]
    assert len(stack.outlook_events(user)) == 1


def test_nobody_is_invited_to_an_event_that_already_ended(stack: SyncStack) -> None:
    user = user_of(stack, "ann")
    crm = stack.world.crm
    account = crm.add_account("Litware")
    contact = crm.add_contact("lou@litware.example", "Lou", account["crmId"])
    colleague = crm.add_user("usr-ann-mate", "mat@contoso.example", "Mat")
    start, end = slot(-1)  # yesterday: a meeting logged after the fact
    created = stack.crm_create(
        user,
        {
            **crm_activity("Litware debrief", f"{start}Z", f"{end}Z"),
            "attendees": [
                {"email": contact["email"], "name": "Lou", "kind": "contact", "crmId": contact["crmId"]},
                {"email": colleague["email"], "name": "Mat", "kind": "user", "crmId": colleague["crmUserId"]},
            ],
        },
    )
    event = wait_until(lambda: stack.one_event(user, "Litware debrief"), what="the logged event in Outlook")
    assert emails(event) == set()

    # Adding someone to the ended activity later invites nobody either; the CRM keeps its attendees.
    extra = crm.add_contact("liv@litware.example", "Liv", account["crmId"])
    stack.crm_edit(
        created["crmId"],
        {
            "subject": "Litware debrief (notes)",
            "attendees": [
                *created["attendees"],
                {"email": extra["email"], "name": "Liv", "kind": "contact", "crmId": extra["crmId"]},
            ],
        },
    )
    wait_until(lambda: stack.one_event(user, "Litware debrief (notes)"), what="the renamed event")
    stack.settle()
    assert emails(event_field(stack, user, event["id"])) == set()
    assert {a["email"] for a in activity_field(stack, created["crmId"], "attendees")} == {
        "lou@litware.example",
        "mat@contoso.example",
        "liv@litware.example",
    }


# --- location, privacy, Teams -----------------------------------------------------------------------------


def test_the_location_syncs_both_ways(stack: SyncStack) -> None:
    user = user_of(stack, "cat")
    event = stack.outlook_create(
        user, timed_event("Offsite", *slot(5), location={"displayName": "Lakehouse"})
    )
    activity = wait_until(lambda: stack.one_activity(user, "Offsite"), what="the activity")
    assert activity["location"] == "Lakehouse"
    stack.settle()

    stack.crm_edit(activity["crmId"], {"location": "Mountain lodge"})
    wait_until(
        lambda: event_field(stack, user, event["id"], "location", "displayName") == "Mountain lodge",
        what="the CRM's location in Outlook",
    )
    stack.settle()
    stack.outlook_update(user, event["id"], {"location": {"displayName": ""}})
    wait_until(
        lambda: activity_field(stack, activity["crmId"], "location") is None, what="the cleared location"
    )
    stack.settle()
    assert event_field(stack, user, event["id"], "location", "displayName") == ""
    assert stack.one_activity(user, "Offsite") is not None


def test_private_maps_to_sensitivity_private_both_ways(stack: SyncStack) -> None:
    user = user_of(stack, "cat")
    event = stack.outlook_create(user, timed_event("Doctor", *slot(6), sensitivity="private"))
    activity = wait_until(lambda: stack.one_activity(user, "Doctor"), what="the activity")
    assert activity["isPrivate"] is True
    created = stack.crm_create(
        user, {**crm_activity("Salary talk", f"{slot(7)[0]}Z", f"{slot(7)[1]}Z"), "isPrivate": True}
    )
    private_event = wait_until(lambda: stack.one_event(user, "Salary talk"), what="the private event")
    assert private_event["sensitivity"] == "private"
    stack.settle()

    stack.crm_edit(activity["crmId"], {"isPrivate": False})
    stack.outlook_update(user, private_event["id"], {"sensitivity": "normal"})
    wait_until(
        lambda: event_field(stack, user, event["id"], "sensitivity") == "normal", what="Outlook made public"
    )
    wait_until(
        lambda: activity_field(stack, created["crmId"], "isPrivate") is False, what="the CRM made public"
    )
    stack.settle()
    assert activity_field(stack, activity["crmId"], "isPrivate") is False
    assert event_field(stack, user, private_event["id"], "sensitivity") == "normal"
    assert stack.one_event(user, "Doctor") is not None
    assert stack.one_activity(user, "Salary talk") is not None


def test_an_outlook_teams_meeting_gives_the_crm_its_join_url(stack: SyncStack) -> None:
    user = user_of(stack, "cat")
    event = stack.outlook_create(
        user,
        timed_event(
            "Teams sync",
            *slot(8),
            isOnlineMeeting=True,
            onlineMeetingProvider="teamsForBusiness",
            body={"contentType": "text", "content": "Bring numbers"},
        ),
    )
    join_url = event["onlineMeeting"]["joinUrl"]
    assert join_url.startswith("https://teams.microsoft.com/")
    activity = wait_until(lambda: stack.one_activity(user, "Teams sync"), what="the activity")
    assert activity["onlineMeeting"] == {"joinUrl": join_url}
    assert activity["requestOnlineMeeting"] is True
    assert activity["description"] == "Bring numbers"  # Outlook's Teams invitation block is not copied
    stack.settle()
    assert event_field(stack, user, event["id"], "isOnlineMeeting") is True
    assert event_field(stack, user, event["id"], "onlineMeeting", "joinUrl") == join_url
    assert stack.one_event(user, "Teams sync") is not None
    assert stack.one_activity(user, "Teams sync") is not None


def test_a_crm_request_for_an_online_meeting_makes_a_teams_meeting(stack: SyncStack) -> None:
    user = user_of(stack, "cat")
    created = stack.crm_create(
        user,
        {**crm_activity("Remote kickoff", f"{slot(9)[0]}Z", f"{slot(9)[1]}Z"), "requestOnlineMeeting": True},
    )
    event = wait_until(lambda: stack.one_event(user, "Remote kickoff"), what="the Outlook event")
    assert event["isOnlineMeeting"] is True
    join_url = event["onlineMeeting"]["joinUrl"]
    assert join_url.startswith("https://teams.microsoft.com/")

    wait_until(
        lambda: activity_field(stack, created["crmId"], "onlineMeeting") == {"joinUrl": join_url},
        what="the join URL back in the CRM",
    )
    stack.settle()
    assert activity_field(stack, created["crmId"], "requestOnlineMeeting") is True
    assert stack.one_event(user, "Remote kickoff") is not None
    assert stack.one_activity(user, "Remote kickoff") is not None


# --- time zones and all-day events ------------------------------------------------------------------------


def next_berlin_dst_change() -> date:
    """The next last Sunday of March at least two days away (always inside the 365-day window)."""
    today = datetime.now(UTC).date()
    for year in (today.year, today.year + 1):
        last = date(year, 3, 31)
        change = last - timedelta(days=(last.weekday() + 1) % 7)
        if change > today + timedelta(days=2):
            return change
    raise AssertionError("unreachable")


def test_a_windows_time_zone_keeps_wall_clock_and_instants_across_the_dst_change(stack: SyncStack) -> None:
    user = user_of(stack, "eve")
    change = next_berlin_dst_change()
    before, after = change - timedelta(days=1), change + timedelta(days=1)

    # From Outlook: 10:00 Berlin time on both sides of the change (UTC+1, then UTC+2).
    for label, day in (("before", before), ("after", after)):
        stack.outlook_create(
            user,
            timed_event(f"Outlook {label} DST", f"{day}T10:00:00", f"{day}T11:00:00", BERLIN_WINDOWS),
        )
    for label, day, hour_utc in (("before", before, 9), ("after", after, 8)):
        activity = wait_until(
            partial(stack.one_activity, user, f"Outlook {label} DST"), what=f"the {label} activity"
        )
        assert activity["timeZone"] == "Europe/Berlin"
        assert instant(activity["start"]) == datetime(day.year, day.month, day.day, hour_utc, tzinfo=UTC)
        assert instant(activity["end"]) == datetime(day.year, day.month, day.day, hour_utc + 1, tzinfo=UTC)

    # From the CRM: the same wall-clock hour reaches Outlook in the Windows zone.
    for label, day, offset in (("before", before, "+01:00"), ("after", after, "+02:00")):
        stack.crm_create(
            user,
            crm_activity(
                f"CRM {label} DST", f"{day}T10:00:00{offset}", f"{day}T11:00:00{offset}", "Europe/Berlin"
            ),
        )
    for label, day in (("before", before), ("after", after)):
        event = wait_until(partial(stack.one_event, user, f"CRM {label} DST"), what=f"the {label} event")
        assert event["originalStartTimeZone"] == BERLIN_WINDOWS
        local = stack.outlook_event(user, event["id"], prefer=f'outlook.timezone="{BERLIN_WINDOWS}"')
        assert local is not None
        assert local["start"] == {"dateTime": f"{day}T10:00:00.0000000", "timeZone": BERLIN_WINDOWS}
        assert local["end"] == {"dateTime": f"{day}T11:00:00.0000000", "timeZone": BERLIN_WINDOWS}
    stack.settle()
    assert len(stack.crm_activities(user)) == 4
    assert len(stack.outlook_events(user)) == 4


def test_a_multi_day_all_day_event_syncs_both_ways_with_an_exclusive_end(stack: SyncStack) -> None:
    user = user_of(stack, "eve")
    first = (datetime.now(UTC) + timedelta(days=10)).date()
    event = stack.outlook_create(
        user,
        {
            "subject": "Trade fair",
            "isAllDay": True,
            "start": {"dateTime": f"{first}T00:00:00", "timeZone": "UTC"},
            "end": {"dateTime": f"{first + timedelta(days=3)}T00:00:00", "timeZone": "UTC"},
        },
    )
    activity = wait_until(lambda: stack.one_activity(user, "Trade fair"), what="the all-day activity")
    assert activity["isAllDay"] is True
    assert (activity["start"], activity["end"]) == (str(first), str(first + timedelta(days=3)))

    other = first + timedelta(days=20)
    created = stack.crm_create(
        user,
        {
            **crm_activity("Holiday", str(other), str(other + timedelta(days=2))),
            "isAllDay": True,
            "timeZone": None,
        },
    )
    holiday = wait_until(lambda: stack.one_event(user, "Holiday"), what="the all-day event")
    assert holiday["isAllDay"] is True
    assert holiday["start"]["dateTime"].startswith(f"{other}T00:00:00")
    assert holiday["end"]["dateTime"].startswith(f"{other + timedelta(days=2)}T00:00:00")
    stack.settle()

    # Outlook lengthens the fair by a day; the CRM moves the holiday a day later.
    stack.outlook_update(
        user, event["id"], {"end": {"dateTime": f"{first + timedelta(days=4)}T00:00:00", "timeZone": "UTC"}}
    )
    stack.crm_edit(
        created["crmId"], {"start": str(other + timedelta(days=1)), "end": str(other + timedelta(days=3))}
    )
    wait_until(
        lambda: activity_field(stack, activity["crmId"], "end") == str(first + timedelta(days=4)),
        what="the longer fair in the CRM",
    )
    wait_until(
        lambda: event_field(stack, user, holiday["id"], "end", "dateTime").startswith(
            f"{other + timedelta(days=3)}T00:00:00"
        ),
        what="the moved holiday in Outlook",
    )
    stack.settle()
    assert activity_field(stack, activity["crmId"], "start") == str(first)
    assert event_field(stack, user, holiday["id"], "start", "dateTime").startswith(
        f"{other + timedelta(days=1)}"
    )
    assert event_field(stack, user, holiday["id"], "isAllDay") is True
    assert activity_field(stack, activity["crmId"], "isAllDay") is True


# --- description on create only ---------------------------------------------------------------------------


def test_with_on_create_the_description_is_written_once_and_never_again(stack: SyncStack) -> None:
    user = user_of(stack, "gil")
    created = stack.crm_create(
        user, {**crm_activity("Audit", f"{slot(4)[0]}Z", f"{slot(4)[1]}Z"), "description": "Brief v1"}
    )
    event = wait_until(lambda: stack.one_event(user, "Audit"), what="the event")
    assert event_field(stack, user, event["id"], "body", "content", prefer=TEXT_BODY).strip() == "Brief v1"
    from_outlook = stack.outlook_create(
        user, timed_event("Workshop", *slot(5), body={"contentType": "text", "content": "Outlook notes"})
    )
    workshop = wait_until(lambda: stack.one_activity(user, "Workshop"), what="the activity")
    assert workshop["description"] == "Outlook notes"
    stack.settle()

    # Later description edits stay on their side; other fields still travel.
    stack.crm_edit(created["crmId"], {"description": "Brief v2", "subject": "Audit (scope)"})
    stack.outlook_update(
        user,
        from_outlook["id"],
        {"body": {"contentType": "text", "content": "Outlook notes v2"}, "location": {"displayName": "Lab"}},
    )
    wait_until(lambda: stack.one_event(user, "Audit (scope)"), what="the subject edit in Outlook")
    wait_until(
        lambda: activity_field(stack, workshop["crmId"], "location") == "Lab", what="the location edit"
    )
    stack.settle()
    assert event_field(stack, user, event["id"], "body", "content", prefer=TEXT_BODY).strip() == "Brief v1"
    assert activity_field(stack, created["crmId"], "description") == "Brief v2"
    assert activity_field(stack, workshop["crmId"], "description") == "Outlook notes"
    assert event_field(stack, user, from_outlook["id"], "body", "content", prefer=TEXT_BODY).strip() == (
        "Outlook notes v2"
    )
