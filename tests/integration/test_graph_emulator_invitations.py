"""Graph emulator: meeting invitations between its mailboxes — copies with the organizer's iCalUId in each
attendee mailbox (calendar, delta, notifications), organizer updates, cancellations, local attendee edits."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devkit.graph_emulator import EmulatorSettings, GraphEmulator
from devkit.graph_emulator.testkit import GraphClient, TokenMinter, WebhookReceiver
from devkit.tls import CertAuthority

ALICE = "a11ce000-0000-4000-8000-00000000000a"
BOB = "b0b00000-0000-4000-8000-00000000000b"
CAROL = "ca201000-0000-4000-8000-00000000000c"
DAVE = "da7e0000-0000-4000-8000-00000000000d"
ALICE_UPN = "alice@contoso.onmicrosoft.com"
BOB_UPN = "bob@contoso.onmicrosoft.com"
CAROL_MAIL = "carol.clark@contoso.com"  # carol is reached by her mail, not her UPN
DAVE_UPN = "dave@contoso.onmicrosoft.com"
WINDOW = {"startDateTime": "2026-05-01T00:00:00Z", "endDateTime": "2026-07-01T00:00:00Z"}
NOT_RESPONDED = {"response": "notResponded", "time": "0001-01-01T00:00:00Z"}
SHARED = (
    "iCalUId", "subject", "body", "start", "end", "location", "isAllDay", "sensitivity", "isOnlineMeeting",
    "attendees",
)  # fmt: skip


def attendee(address: str, name: str | None = None) -> dict[str, Any]:
    return {"emailAddress": {"address": address, "name": name or address}, "type": "required"}


def meeting(subject: str = "Quarterly review", *addresses: str, **extra: Any) -> dict[str, Any]:
    return {
        "subject": subject,
        "body": {"contentType": "text", "content": "Agenda: numbers."},
        "start": {"dateTime": "2026-06-01T09:00:00", "timeZone": "W. Europe Standard Time"},
        "end": {"dateTime": "2026-06-01T10:00:00", "timeZone": "W. Europe Standard Time"},
        "location": {"displayName": "Room 4"},
        "attendees": [attendee(a) for a in addresses],
        **extra,
    }


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture
def emulator(minter: TokenMinter, test_ca: CertAuthority) -> Iterator[GraphEmulator]:
    settings = EmulatorSettings(notification_coalesce_seconds=0.02, notification_retry_delays=(0.1,))
    certificate = test_ca.issue_server_certificate()
    with GraphEmulator(jwks=minter.jwks(), settings=settings, certificate=certificate) as em:
        em.add_mailbox(ALICE, upn=ALICE_UPN, display_name="Alice Adams")
        em.add_mailbox(BOB, upn=BOB_UPN, display_name="Bob Brown")
        em.add_mailbox(
            CAROL, upn="carol@contoso.onmicrosoft.com", mail="Carol.Clark@contoso.com", display_name="Carol"
        )
        em.add_mailbox(DAVE, upn=DAVE_UPN, display_name="Dave Dunn")
        yield em


class Users:
    """One delegated HTTPS client per mailbox, and an app-only one."""

    def __init__(self, emulator: GraphEmulator, minter: TokenMinter, ca: CertAuthority) -> None:
        verify = str(ca.cert_path)
        self.clients = {
            user: GraphClient(emulator.base_url, minter.delegated(user), verify=verify)
            for user in (ALICE, BOB, CAROL, DAVE)
        }
        self.app = GraphClient(emulator.base_url, minter.application(), verify=verify)

    def __getitem__(self, user: str) -> GraphClient:
        return self.clients[user]

    def close(self) -> None:
        for client in [*self.clients.values(), self.app]:
            client.close()


@pytest.fixture
def users(emulator: GraphEmulator, minter: TokenMinter, test_ca: CertAuthority) -> Iterator[Users]:
    clients = Users(emulator, minter, test_ca)
    yield clients
    clients.close()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def subscribe(emulator: GraphEmulator, client: GraphClient, webhook: WebhookReceiver, path: str) -> str:
    expiry = (emulator.now() + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
    body = {
        "changeType": "created,updated,deleted",
        "notificationUrl": webhook.url(path),
        "resource": "/me/events",
        "expirationDateTime": expiry,
        "clientState": "state-" + path.strip("/"),
    }
    response = client.post("/subscriptions", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def view(client: GraphClient) -> list[dict[str, Any]]:
    response = client.get("/me/calendarView", params=WINDOW)
    assert response.status_code == 200, response.text
    return list(response.json()["value"])


def only(client: GraphClient) -> dict[str, Any]:
    events = view(client)
    assert len(events) == 1, [e["subject"] for e in events]
    return events[0]


def delta_round(client: GraphClient, link: str | None) -> tuple[list[dict[str, Any]], str]:
    """Every item of one delta round (all pages), and the round's deltaLink."""
    items: list[dict[str, Any]] = []
    response = client.get(link) if link else client.get("/me/calendarView/delta", params=WINDOW)
    while True:
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["value"])
        if "@odata.deltaLink" in page:
            return items, str(page["@odata.deltaLink"])
        response = client.get(page["@odata.nextLink"])


def changes(webhook: WebhookReceiver, path: str) -> list[tuple[str, str]]:
    return [(n["changeType"], n["resourceData"]["id"]) for n in webhook.notifications(path)]


def settle(webhook: WebhookReceiver, path: str, count: int) -> list[tuple[str, str]]:
    """Wait for ``count`` notifications to ``path``, then a little longer for any unexpected extra."""
    webhook.wait_for(count, path, timeout=10)
    time.sleep(0.3)
    return changes(webhook, path)


# --- delivery ---


def test_a_meeting_lands_in_each_attendee_mailbox_with_the_organizers_ical_uid(
    emulator: GraphEmulator, users: Users, webhook: WebhookReceiver
) -> None:
    bob_sub = subscribe(emulator, users[BOB], webhook, "/bob")
    carol_sub = subscribe(emulator, users[CAROL], webhook, "/carol")
    dave_sub = subscribe(emulator, users[DAVE], webhook, "/dave")
    bob_items, bob_link = delta_round(users[BOB], None)
    carol_items, carol_link = delta_round(users[CAROL], None)
    assert bob_items == carol_items == []

    body = meeting(
        "Quarterly review",
        BOB_UPN.upper(),  # addresses match any case
        CAROL_MAIL,
        "dana@fabrikam.com",  # external: nobody here
        isOnlineMeeting=True,
        onlineMeetingProvider="teamsForBusiness",
        sensitivity="private",
    )
    response = users[ALICE].post("/me/events", json=body)
    assert response.status_code == 201, response.text
    organizer = response.json()
    assert organizer["isOrganizer"] is True
    assert organizer["responseStatus"] == {"response": "organizer", "time": "0001-01-01T00:00:00Z"}
    assert organizer["organizer"] == {"emailAddress": {"name": "Alice Adams", "address": ALICE_UPN}}
    assert organizer["onlineMeeting"]["joinUrl"]

    copies = {user: only(users[user]) for user in (BOB, CAROL)}
    for copy in copies.values():
        assert {k: copy[k] for k in SHARED} == {k: organizer[k] for k in SHARED}
        assert copy["onlineMeeting"]["joinUrl"] == organizer["onlineMeeting"]["joinUrl"]
        assert copy["organizer"] == organizer["organizer"]
        assert copy["isOrganizer"] is False
        assert copy["responseStatus"] == NOT_RESPONDED
        assert copy["isCancelled"] is False
        assert copy["type"] == "singleInstance"
        assert copy["transactionId"] is None
    ids = {organizer["id"], copies[BOB]["id"], copies[CAROL]["id"]}
    assert len(ids) == 3  # each mailbox has its own item
    assert copies[BOB]["changeKey"] != copies[CAROL]["changeKey"]
    assert view(users[DAVE]) == []
    assert len(view(users[ALICE])) == 1

    # The copy is a change in the attendee's mailbox like any other: delta and notifications.
    bob_items, _ = delta_round(users[BOB], bob_link)
    carol_items, _ = delta_round(users[CAROL], carol_link)
    assert [(i["id"], i["iCalUId"]) for i in bob_items] == [(copies[BOB]["id"], organizer["iCalUId"])]
    assert [(i["id"], i["iCalUId"]) for i in carol_items] == [(copies[CAROL]["id"], organizer["iCalUId"])]
    assert settle(webhook, "/bob", 1) == [("created", copies[BOB]["id"])]
    assert settle(webhook, "/carol", 1) == [("created", copies[CAROL]["id"])]
    assert changes(webhook, "/dave") == []
    assert {n["subscriptionId"] for n in webhook.notifications("/bob")} == {bob_sub}
    assert {n["subscriptionId"] for n in webhook.notifications("/carol")} == {carol_sub}
    assert all(d["subscriptionIds"] != [dave_sub] for d in emulator.deliveries())


def test_meetings_created_by_the_app_for_a_user_or_in_outlook_are_delivered_too(
    emulator: GraphEmulator, users: Users
) -> None:
    by_app = users.app.post(f"/users/{ALICE_UPN}/events", json=meeting("By the app", BOB_UPN))
    assert by_app.status_code == 201, by_app.text
    in_outlook = emulator.user_create_event(ALICE, meeting("In Outlook", BOB_UPN))
    assert in_outlook["isOrganizer"] is True
    received = {e["subject"]: e for e in view(users[BOB])}
    assert set(received) == {"By the app", "In Outlook"}
    assert received["By the app"]["iCalUId"] == by_app.json()["iCalUId"]
    assert received["In Outlook"]["iCalUId"] == in_outlook["iCalUId"]
    # An invitation the user received elsewhere (someone else organizes it) is not re-sent from here.
    foreign = meeting("Forwarded", DAVE_UPN, organizer=attendee("erin@fabrikam.com", "Erin"))
    assert emulator.user_create_event(BOB, foreign)["isOrganizer"] is False
    assert view(users[DAVE]) == []


def test_a_retried_create_makes_no_second_copies(
    emulator: GraphEmulator, users: Users, webhook: WebhookReceiver
) -> None:
    subscribe(emulator, users[BOB], webhook, "/bob")
    body = meeting("Retried", BOB_UPN, transactionId="8d2f0f6e-retry-0001")
    first = users[ALICE].post("/me/events", json=body).json()
    second = users[ALICE].post("/me/events", json=body).json()
    assert first["id"] == second["id"]
    copy = only(users[BOB])
    assert copy["iCalUId"] == first["iCalUId"]
    assert settle(webhook, "/bob", 1) == [("created", copy["id"])]


def test_delivery_can_be_switched_off(emulator: GraphEmulator, users: Users) -> None:
    emulator.update_settings(deliver_invitations=False)
    assert users[ALICE].post("/me/events", json=meeting("Private", BOB_UPN)).status_code == 201
    assert view(users[BOB]) == []


# --- organizer updates ---


def test_organizer_updates_propagate_added_attendees_get_copies_removed_ones_cancelled(
    emulator: GraphEmulator, users: Users, webhook: WebhookReceiver
) -> None:
    subscribe(emulator, users[BOB], webhook, "/bob")
    subscribe(emulator, users[DAVE], webhook, "/dave")
    organizer = users[ALICE].post("/me/events", json=meeting("Kick-off", BOB_UPN)).json()
    bob_copy = only(users[BOB])
    _, bob_link = delta_round(users[BOB], None)

    moved = {
        "subject": "Kick-off (moved)",
        "body": {"contentType": "text", "content": "New agenda."},
        "start": {"dateTime": "2026-06-02T14:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-06-02T15:30:00", "timeZone": "UTC"},
        "location": {"displayName": "Room 9"},
    }
    updated = users[ALICE].patch(f"/me/events/{organizer['id']}", json=moved).json()
    after = only(users[BOB])
    assert after["id"] == bob_copy["id"]
    assert after["changeKey"] != bob_copy["changeKey"]
    assert {k: after[k] for k in SHARED} == {k: updated[k] for k in SHARED}
    assert after["start"] == {"dateTime": "2026-06-02T14:00:00.0000000", "timeZone": "UTC"}
    bob_items, bob_link = delta_round(users[BOB], bob_link)
    assert [(i["id"], i["subject"]) for i in bob_items] == [(bob_copy["id"], "Kick-off (moved)")]

    # A change that is not the meeting's (the organizer's own categories) sends nothing.
    users[ALICE].patch(f"/me/events/{organizer['id']}", json={"categories": ["CRM"]})
    assert only(users[BOB])["changeKey"] == after["changeKey"]
    assert delta_round(users[BOB], bob_link)[0] == []

    # Bob is replaced by Dave: Dave gets the meeting, Bob's copy is cancelled and stays.
    users[ALICE].patch(f"/me/events/{organizer['id']}", json={"attendees": [attendee(DAVE_UPN)]})
    dave_copy = only(users[DAVE])
    assert dave_copy["iCalUId"] == organizer["iCalUId"]
    assert dave_copy["subject"] == "Kick-off (moved)"
    assert dave_copy["attendees"] == [
        {
            "type": "required",
            "status": {"response": "none", "time": "0001-01-01T00:00:00Z"},
            "emailAddress": {"name": DAVE_UPN, "address": DAVE_UPN},
        }
    ]
    cancelled = only(users[BOB])
    assert (cancelled["id"], cancelled["isCancelled"]) == (bob_copy["id"], True)
    assert cancelled["subject"] == "Canceled: Kick-off (moved)"
    assert settle(webhook, "/bob", 3) == [
        ("created", bob_copy["id"]),
        ("updated", bob_copy["id"]),
        ("updated", bob_copy["id"]),
    ]
    assert settle(webhook, "/dave", 1) == [("created", dave_copy["id"])]

    # Invited again: the same copy comes back to life with the organizer's current version.
    users[ALICE].patch(
        f"/me/events/{organizer['id']}", json={"attendees": [attendee(DAVE_UPN), attendee(BOB_UPN)]}
    )
    revived = only(users[BOB])
    assert (revived["id"], revived["isCancelled"], revived["subject"]) == (
        bob_copy["id"],
        False,
        "Kick-off (moved)",
    )


def test_an_attendees_edit_stays_in_their_mailbox(
    emulator: GraphEmulator, users: Users, webhook: WebhookReceiver
) -> None:
    organizer = users[ALICE].post("/me/events", json=meeting("Sync", BOB_UPN, CAROL_MAIL)).json()
    subscribe(emulator, users[CAROL], webhook, "/carol")
    subscribe(emulator, users[ALICE], webhook, "/alice")
    bob_copy = only(users[BOB])
    carol_before = only(users[CAROL])
    edited = users[BOB].patch(
        f"/me/events/{bob_copy['id']}", json={"subject": "Sync (my notes)", "showAs": "free"}
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["isOrganizer"] is False
    emulator.user_update_event(BOB, bob_copy["id"], {"location": {"displayName": "My desk"}})
    assert users[ALICE].get(f"/me/events/{organizer['id']}").json()["changeKey"] == organizer["changeKey"]
    assert only(users[CAROL])["changeKey"] == carol_before["changeKey"]
    time.sleep(0.3)
    assert changes(webhook, "/carol") == changes(webhook, "/alice") == []

    # The organizer's next version replaces the meeting's fields; the attendee's own showAs stays.
    users[ALICE].patch(f"/me/events/{organizer['id']}", json={"body": {"content": "v2"}})
    bob_after = only(users[BOB])
    assert (bob_after["subject"], bob_after["location"]["displayName"]) == ("Sync", "Room 4")
    assert bob_after["showAs"] == "free"


# --- cancellation ---


def test_the_organizer_deleting_the_meeting_cancels_the_copies(
    emulator: GraphEmulator, users: Users, webhook: WebhookReceiver
) -> None:
    organizer = users[ALICE].post("/me/events", json=meeting("Offsite", BOB_UPN, CAROL_MAIL)).json()
    subscribe(emulator, users[BOB], webhook, "/bob")
    bob_copy = only(users[BOB])
    _, bob_link = delta_round(users[BOB], None)
    assert users[ALICE].delete(f"/me/events/{organizer['id']}").status_code == 204
    assert view(users[ALICE]) == []
    for user in (BOB, CAROL):
        copy = only(users[user])
        assert copy["isCancelled"] is True
        assert copy["subject"] == "Canceled: Offsite"
        assert copy["iCalUId"] == organizer["iCalUId"]
    bob_items, _ = delta_round(users[BOB], bob_link)
    assert [(i["id"], i["isCancelled"]) for i in bob_items] == [(bob_copy["id"], True)]
    assert settle(webhook, "/bob", 1) == [("updated", bob_copy["id"])]
    # It stays until the attendee deletes it.
    assert users[BOB].get(f"/me/events/{bob_copy['id']}").json()["isCancelled"] is True
    assert users[BOB].delete(f"/me/events/{bob_copy['id']}").status_code == 204
    assert view(users[BOB]) == []
    assert settle(webhook, "/bob", 2)[-1] == ("deleted", bob_copy["id"])


# --- series and concurrency ---


def test_a_recurring_meeting_is_delivered_with_the_same_occurrence_ical_uids(users: Users) -> None:
    body = meeting("Weekly", BOB_UPN)
    body["recurrence"] = {
        "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
        "range": {"type": "numbered", "startDate": "2026-06-01", "numberOfOccurrences": 4},
    }
    master = users[ALICE].post("/me/events", json=body).json()
    alice_view, bob_view = view(users[ALICE]), view(users[BOB])
    assert len(alice_view) == len(bob_view) == 4
    assert [e["iCalUId"] for e in bob_view] == [e["iCalUId"] for e in alice_view]
    assert {e["type"] for e in bob_view} == {"occurrence"}
    # The organizer changes one occurrence: the attendee's occurrence changes too.
    users[ALICE].patch(f"/me/events/{alice_view[1]['id']}", json={"subject": "Weekly (special)"})
    assert [e["subject"] for e in view(users[BOB])] == ["Weekly", "Weekly (special)", "Weekly", "Weekly"]
    assert users[ALICE].delete(f"/me/events/{master['id']}").status_code == 204
    assert {(e["isCancelled"], e["subject"][:10]) for e in view(users[BOB])} == {(True, "Canceled: ")}


def test_meetings_between_two_organizers_at_once_do_not_deadlock(users: Users) -> None:
    errors: list[str] = []

    def organize(user: str, other: str) -> None:
        for index in range(15):
            response = users[user].post("/me/events", json=meeting(f"{user[:4]}-{index}", other))
            if response.status_code != 201:
                errors.append(response.text)

    threads = [
        threading.Thread(target=organize, args=(ALICE, BOB_UPN)),
        threading.Thread(target=organize, args=(BOB, ALICE_UPN)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    for user in (ALICE, BOB):
        events = users[user].get("/me/events", params={"$top": 100}).json()["value"]
        assert sum(e["isOrganizer"] for e in events) == sum(not e["isOrganizer"] for e in events) == 15
