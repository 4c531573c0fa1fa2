"""Graph emulator: contacts, To Do and messages: CRUD, delta and notifications (for later issues)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from devkit.graph_emulator import EmulatorSettings, GraphEmulator
from devkit.graph_emulator.testkit import GraphClient, TokenMinter, WebhookReceiver

ALICE = "17e30000-0000-4000-8000-00000000a11c"


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture
def emulator(minter: TokenMinter) -> Iterator[GraphEmulator]:
    with GraphEmulator(jwks=minter.jwks(), settings=EmulatorSettings(notification_retry_delays=(0.1,))) as em:
        em.add_mailbox(ALICE, upn="alice@contoso.onmicrosoft.com")
        yield em


@pytest.fixture
def alice(emulator: GraphEmulator, minter: TokenMinter) -> Iterator[GraphClient]:
    with GraphClient(emulator.base_url, minter.delegated(ALICE)) as client:
        yield client


def sync(client: GraphClient, link: str, state: dict[str, dict[str, Any]]) -> str:
    page = client.get(link, headers={"Prefer": "odata.maxpagesize=2"}).json()
    while True:
        for item in page["value"]:
            if "@removed" in item:
                state.pop(item["id"], None)
            else:
                state[item["id"]] = item
        if "@odata.deltaLink" in page:
            return str(page["@odata.deltaLink"])
        page = client.get(page["@odata.nextLink"], headers={"Prefer": "odata.maxpagesize=2"}).json()


def test_contacts_folders_crud_and_delta(alice: GraphClient) -> None:
    folders = alice.get("/me/contactFolders").json()["value"]
    assert [f["displayName"] for f in folders] == ["Contacts"]
    folder = alice.post("/me/contactFolders", json={"displayName": "Customers"}).json()
    path = f"/me/contactFolders/{folder['id']}/contacts"
    state: dict[str, dict[str, Any]] = {}
    link = sync(alice, path + "/delta", state)
    assert state == {}

    ids = []
    for name in ("Ada", "Grace", "Edsger"):
        contact = alice.post(
            path, json={"givenName": name, "surname": "Test", "emailAddresses": [{"address": f"{name}@x.io"}]}
        )
        assert contact.status_code == 201
        ids.append(contact.json()["id"])
    assert alice.get(f"{path}/{ids[0]}").json()["displayName"] == "Ada Test"
    assert alice.patch(f"{path}/{ids[1]}", json={"jobTitle": "Admiral"}).json()["jobTitle"] == "Admiral"
    assert alice.delete(f"{path}/{ids[2]}").status_code == 204
    alice.post("/me/contacts", json={"givenName": "Elsewhere"})  # the default folder: not in this delta
    link = sync(alice, link, state)
    assert set(state) == set(ids[:2])
    assert state[ids[1]]["jobTitle"] == "Admiral"
    assert state[ids[0]]["parentFolderId"] == folder["id"]
    assert [c["givenName"] for c in alice.get("/me/contacts").json()["value"]] == ["Elsewhere"]
    default_state: dict[str, dict[str, Any]] = {}
    sync(alice, "/me/contacts/delta", default_state)
    assert [c["givenName"] for c in default_state.values()] == ["Elsewhere"]


def test_todo_lists_tasks_and_delta(alice: GraphClient) -> None:
    lists = alice.get("/me/todo/lists").json()["value"]
    assert lists[0]["wellknownListName"] == "defaultList"
    todo = alice.post("/me/todo/lists", json={"displayName": "CRM follow-ups"}).json()
    tasks = f"/me/todo/lists/{todo['id']}/tasks"
    state: dict[str, dict[str, Any]] = {}
    link = sync(alice, tasks + "/delta", state)
    created = alice.post(
        tasks,
        json={
            "title": "Call Contoso",
            "dueDateTime": {"dateTime": "2026-06-03T00:00:00.0000000", "timeZone": "UTC"},
            "linkedResources": [
                {"webUrl": "https://crm.example/a/1", "applicationName": "CRM", "displayName": "A1"}
            ],
        },
    ).json()
    assert created["status"] == "notStarted"
    assert created["linkedResources"][0]["id"]
    done = alice.patch(f"{tasks}/{created['id']}", json={"status": "completed"}).json()
    assert done["completedDateTime"]["timeZone"] == "UTC"
    other = alice.post(tasks, json={"title": "Send quote"}).json()
    alice.delete(f"{tasks}/{other['id']}")
    assert alice.post(tasks, json={"title": "x", "status": "finished"}).status_code == 400
    sync(alice, link, state)
    assert list(state) == [created["id"]]
    assert state[created["id"]]["status"] == "completed"


def test_messages_arrive_with_created_notifications_and_delta(
    emulator: GraphEmulator, alice: GraphClient
) -> None:
    with WebhookReceiver() as webhook:
        expires = (emulator.now() + dt.timedelta(hours=1)).isoformat()
        sub = alice.post(
            "/subscriptions",
            json={
                "changeType": "created",
                "notificationUrl": webhook.url("/mail"),
                "resource": "me/mailFolders('Inbox')/messages",
                "expirationDateTime": expires,
                "clientState": "mail-state",
            },
        )
        assert sub.status_code == 201, sub.text
        state: dict[str, dict[str, Any]] = {}
        link = sync(alice, "/me/mailFolders('Inbox')/messages/delta", state)
        message = emulator.deliver_message(
            ALICE,
            {
                "subject": "Quote request",
                "body": {"contentType": "text", "content": "Please send a quote."},
                "from": {"emailAddress": {"name": "Dana", "address": "dana@fabrikam.com"}},
            },
        )
        draft = alice.post("/me/messages", json={"subject": "Reply draft"}).json()
        assert draft["isDraft"] is True
        items = webhook.wait_for(1, "/mail")
        assert [i["resourceData"]["id"] for i in items] == [message["id"]]  # the draft is not in the Inbox
        assert items[0]["clientState"] == "mail-state"
        assert items[0]["resource"].endswith(f"/Messages/{message['id']}")
        link = sync(alice, link, state)
        assert [m["subject"] for m in state.values()] == ["Quote request"]
        assert state[message["id"]]["isRead"] is False
        alice.patch(f"/me/messages/{message['id']}", json={"isRead": True})
        link = sync(alice, link, state)
        assert state[message["id"]]["isRead"] is True
        alice.delete(f"/me/messages/{message['id']}")
        sync(alice, link, state)
        assert state == {}
