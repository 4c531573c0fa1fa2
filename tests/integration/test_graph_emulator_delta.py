"""Graph emulator: calendarView delta — paging, mixed changes (API and Outlook), @removed, replays, 410."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from devkit.graph_emulator import EmulatorSettings, GraphEmulator
from devkit.graph_emulator.testkit import GraphClient, TokenMinter

ALICE = "5b7e0c55-aaaa-4d2a-8a55-000000000001"
WINDOW = {"startDateTime": "2026-05-01T00:00:00Z", "endDateTime": "2026-07-01T00:00:00Z"}


def event(subject: str, day: int, month: int = 5, hour: int = 9) -> dict[str, Any]:
    return {
        "subject": subject,
        "start": {
            "dateTime": f"2026-{month:02d}-{day:02d}T{hour:02d}:00:00",
            "timeZone": "W. Europe Standard Time",
        },
        "end": {
            "dateTime": f"2026-{month:02d}-{day:02d}T{hour:02d}:30:00",
            "timeZone": "W. Europe Standard Time",
        },
    }


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture
def emulator(minter: TokenMinter) -> Iterator[GraphEmulator]:
    with GraphEmulator(jwks=minter.jwks(), settings=EmulatorSettings(delta_round_cache=50)) as em:
        em.add_mailbox(ALICE, upn="alice@contoso.onmicrosoft.com")
        yield em


@pytest.fixture
def alice(emulator: GraphEmulator, minter: TokenMinter) -> Iterator[GraphClient]:
    with GraphClient(emulator.base_url, minter.delegated(ALICE)) as client:
        yield client


class Replica:
    """What a sync client keeps: the events by id, built only from delta pages."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.removed_seen: set[str] = set()
        self.pages = 0

    def apply(self, page: dict[str, Any]) -> None:
        self.pages += 1
        for item in page["value"]:
            if "@removed" in item:
                assert item["@removed"] == {"reason": "deleted"}
                self.removed_seen.add(item["id"])
                self.events.pop(item["id"], None)
            else:
                assert item["@odata.type"] == "#microsoft.graph.event"
                self.events[item["id"]] = item


def run_round(
    client: GraphClient, link: str | None, replica: Replica, page_size: int, between_pages: Any = None
) -> str:
    headers = {"Prefer": f"odata.maxpagesize={page_size}"}
    if link:
        response = client.get(link, headers=headers)
    else:
        response = client.get("/me/calendarView/delta", params=WINDOW, headers=headers)
    while True:
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["value"]) <= page_size
        replica.apply(page)
        if "@odata.deltaLink" in page:
            return str(page["@odata.deltaLink"])
        if between_pages is not None:
            between_pages()
        response = client.get(page["@odata.nextLink"], headers=headers)


def server_view(client: GraphClient) -> dict[str, dict[str, Any]]:
    page = client.get("/me/calendarView", params={**WINDOW, "$top": "1000"}).json()
    assert "@odata.nextLink" not in page
    return {e["id"]: e for e in page["value"]}


def assert_same(replica: Replica, client: GraphClient) -> None:
    truth = server_view(client)
    assert set(replica.events) == set(truth)
    for event_id, doc in truth.items():
        mine = replica.events[event_id]
        assert (mine["subject"], mine["start"], mine["end"], mine["changeKey"]) == (
            doc["subject"], doc["start"], doc["end"], doc["changeKey"],
        )  # fmt: skip


def test_250_events_created_updated_deleted_in_mixed_order_across_pages(
    emulator: GraphEmulator, alice: GraphClient
) -> None:
    rng = random.Random(20260501)
    ids: list[str] = []

    def create(index: int) -> None:
        month, day = rng.choice([(4, 20), (5, rng.randint(1, 31)), (6, rng.randint(1, 30)), (7, 15)])
        payload = event(f"E{index}", day, month, hour=rng.randint(7, 18))
        if index % 5 == 0:  # made by the user in Outlook, not through the app
            ids.append(emulator.user_create_event(ALICE, payload)["id"])
        else:
            response = alice.post("/me/events", json=payload)
            assert response.status_code == 201
            ids.append(response.json()["id"])

    def mutate(steps: int) -> None:
        for _ in range(steps):
            if not ids:
                return
            target = rng.choice(ids)
            action = rng.random()
            if action < 0.35:
                assert alice.delete(f"/me/events/{target}").status_code == 204
                ids.remove(target)
            elif action < 0.55:  # moved: possibly out of (or into) the window
                month, day = rng.choice([(5, 10), (6, 20), (8, 1), (4, 1)])
                patch = {k: v for k, v in event("moved", day, month).items() if k != "subject"}
                emulator.user_update_event(ALICE, target, patch)
            else:
                assert alice.patch(f"/me/events/{target}", json={"subject": f"edit {rng.random():.5f}"}).ok

    for index in range(100):
        create(index)
    replica = Replica()
    link = run_round(alice, None, replica, page_size=17)
    assert replica.pages >= 3
    assert_same(replica, alice)

    created = 100
    for _ in range(4):  # rounds with changes made before and *during* the paging
        for index in range(created, created + 30):
            create(index)
        created += 30
        mutate(25)
        link = run_round(alice, link, replica, page_size=9, between_pages=lambda: mutate(2))
    while created < 250:
        create(created)
        created += 1
    mutate(30)
    link = run_round(alice, link, replica, page_size=50)
    link = run_round(alice, link, replica, page_size=50)  # settles what changed during the last paging
    assert_same(replica, alice)
    assert replica.removed_seen, "deleted events must be reported with @removed"

    # Expired on demand: 410 Gone with syncStateNotFound and where to restart.
    emulator.expire_delta_tokens(ALICE, "events")
    gone = alice.get(link)
    assert gone.status_code == 410
    assert gone.json()["error"]["code"] == "syncStateNotFound"
    restart = gone.headers["Location"]
    assert "/me/calendarView/delta?startDateTime=" in restart
    fresh = Replica()
    run_round(alice, restart, fresh, page_size=100)
    assert_same(fresh, alice)


def test_changes_outside_the_window_are_reported_as_removed(alice: GraphClient) -> None:
    inside = alice.post("/me/events", json=event("inside", 3)).json()["id"]
    replica = Replica()
    link = run_round(alice, None, replica, page_size=10)
    outside = alice.post("/me/events", json=event("outside", 3, month=9)).json()["id"]
    alice.patch(
        f"/me/events/{inside}", json={"start": event("x", 3, 10)["start"], "end": event("x", 3, 10)["end"]}
    )
    page = alice.get(link).json()
    assert {item["id"]: item.get("@removed") for item in page["value"]} == {
        outside: {"reason": "deleted"},
        inside: {"reason": "deleted"},
    }


def test_delta_links_can_be_replayed_and_replay_is_configurable(
    emulator: GraphEmulator, alice: GraphClient
) -> None:
    first = alice.post("/me/events", json=event("one", 4)).json()["id"]
    link = run_round(alice, None, Replica(), page_size=10)
    second = alice.post("/me/events", json=event("two", 5)).json()["id"]
    once = alice.get(link).json()
    twice = alice.get(link).json()  # the same deltaLink again: the same changes again
    assert [i["id"] for i in once["value"]] == [i["id"] for i in twice["value"]] == [second]
    emulator.update_settings(delta_replay=2)
    replayed = alice.get(once["@odata.deltaLink"]).json()
    assert {i["id"] for i in replayed["value"]} == {first, second}  # already-reported changes come again


def test_an_evicted_skip_token_answers_410(emulator: GraphEmulator, alice: GraphClient) -> None:
    for day in range(1, 6):
        alice.post("/me/events", json=event(f"d{day}", day))
    first = alice.get("/me/calendarView/delta", params=WINDOW, headers={"Prefer": "odata.maxpagesize=2"})
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=2"
    next_link = first.json()["@odata.nextLink"]
    for _ in range(60):  # more rounds than the token cache holds (delta_round_cache=50)
        alice.get("/me/calendarView/delta", params=WINDOW)
    evicted = alice.get(next_link)
    assert evicted.status_code == 410
    assert evicted.json()["error"]["code"] == "syncStateNotFound"


def test_delta_needs_a_window_and_refuses_select(alice: GraphClient) -> None:
    assert alice.get("/me/calendarView/delta").status_code == 400
    assert alice.get("/me/calendarView/delta", params={**WINDOW, "$select": "subject"}).status_code == 400
