"""Graph emulator: recurring series — master, occurrences, an exception and a cancelled occurrence, as they
appear in calendarView, /instances and calendarView/delta."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.graph_emulator import GraphEmulator
from devkit.graph_emulator.testkit import GraphClient, TokenMinter

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "graph-reference" / "fixtures"
ALICE = "9a0b1c2d-0000-4000-8000-00000000a11c"
WINDOW = {"startDateTime": "2026-03-01T00:00:00Z", "endDateTime": "2026-05-01T00:00:00Z"}
CET = "W. Europe Standard Time"


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture
def emulator(minter: TokenMinter) -> Iterator[GraphEmulator]:
    with GraphEmulator(jwks=minter.jwks()) as em:
        em.add_mailbox(ALICE, upn="alice@contoso.onmicrosoft.com", display_name="Alice Adams")
        yield em


@pytest.fixture
def alice(emulator: GraphEmulator, minter: TokenMinter) -> Iterator[GraphClient]:
    with GraphClient(emulator.base_url, minter.delegated(ALICE)) as client:
        yield client


def weekly_series() -> dict[str, Any]:
    return {
        "subject": "Weekly sync",
        "start": {"dateTime": "2026-03-02T10:00:00", "timeZone": CET},
        "end": {"dateTime": "2026-03-02T10:30:00", "timeZone": CET},
        "recurrence": {
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
            "range": {"type": "numbered", "startDate": "2026-03-02", "numberOfOccurrences": 6},
        },
    }


def drain(
    client: GraphClient, link: str, state: dict[str, dict[str, Any]]
) -> tuple[str, list[dict[str, Any]]]:
    items: list[dict[str, Any]] = []
    response = client.get(link, headers={"Prefer": "odata.maxpagesize=4"})
    while True:
        page = response.json()
        items += page["value"]
        for item in page["value"]:
            if "@removed" in item:
                state.pop(item["id"], None)
            else:
                state[item["id"]] = item
        if "@odata.deltaLink" in page:
            return str(page["@odata.deltaLink"]), items
        response = client.get(page["@odata.nextLink"], headers={"Prefer": "odata.maxpagesize=4"})


def test_the_documented_recurring_payload_is_accepted_as_given(
    emulator: GraphEmulator, alice: GraphClient
) -> None:
    raw = json.loads((FIXTURES / "event_recurring_create_request.json").read_text())
    master = emulator.user_create_event(ALICE, raw)
    assert master["type"] == "seriesMaster"
    assert (
        master["recurrence"] == json.loads((FIXTURES / "event_series_master.json").read_text())["recurrence"]
    )
    window = {"startDateTime": "2017-09-01T00:00:00Z", "endDateTime": "2018-01-01T00:00:00Z"}
    instances = alice.get(f"/me/events/{master['id']}/instances", params={**window, "$top": "50"}).json()[
        "value"
    ]
    assert len(instances) == 17  # every Monday from 2017-09-04 to 2017-12-25
    starts = [i["start"]["dateTime"] for i in instances]
    assert starts[0] == "2017-09-04T19:00:00.0000000"  # 12:00 PDT
    assert starts[-1] == "2017-12-25T20:00:00.0000000"  # 12:00 PST: local time kept across the DST change
    assert {i["type"] for i in instances} == {"occurrence"}
    assert {i["seriesMasterId"] for i in instances} == {master["id"]}
    assert len({i["iCalUId"] for i in instances} | {master["iCalUId"]}) == 18


def test_weekly_series_with_an_exception_and_a_cancelled_occurrence(alice: GraphClient) -> None:
    state: dict[str, dict[str, Any]] = {}
    first = alice.get("/me/calendarView/delta", params=WINDOW).json()
    assert first["value"] == []
    link = first["@odata.deltaLink"]

    master = alice.post("/me/events", json=weekly_series()).json()
    assert master["type"] == "seriesMaster"
    assert master["recurrence"]["range"]["recurrenceTimeZone"] == CET
    link, items = drain(alice, link, state)
    assert len(items) == 6
    assert {i["type"] for i in items} == {"occurrence"}  # delta reports instances, never the master
    occurrences = sorted(items, key=lambda i: i["start"]["dateTime"])
    assert [o["start"]["dateTime"][11:16] for o in occurrences] == ["09:00"] * 4 + ["08:00"] * 2  # CET → CEST
    assert {o["changeKey"] for o in occurrences} == {master["changeKey"]}

    moved, cancelled = occurrences[1], occurrences[3]
    exception = alice.patch(
        f"/me/events/{moved['id']}",
        json={
            "subject": "Weekly sync (Tuesday this time)",
            "start": {"dateTime": "2026-03-10T11:00:00", "timeZone": CET},
            "end": {"dateTime": "2026-03-10T11:30:00", "timeZone": CET},
        },
    ).json()
    assert (exception["id"], exception["type"], exception["seriesMasterId"]) == (
        moved["id"],
        "exception",
        master["id"],
    )
    assert alice.delete(f"/me/events/{cancelled['id']}").status_code == 204
    assert alice.get(f"/me/events/{cancelled['id']}").status_code == 404

    view = alice.get("/me/calendarView", params=WINDOW).json()["value"]
    instances = alice.get(f"/me/events/{master['id']}/instances", params=WINDOW).json()["value"]
    for listing in (view, instances):
        by_id = {e["id"]: e for e in listing}
        assert len(by_id) == 5
        assert cancelled["id"] not in by_id
        assert by_id[moved["id"]]["type"] == "exception"
        assert by_id[moved["id"]]["start"]["dateTime"] == "2026-03-10T10:00:00.0000000"
        assert [e["type"] for e in listing].count("occurrence") == 4
    assert master["id"] not in {e["id"] for e in view}

    link, items = drain(alice, link, state)
    removed = [i for i in items if "@removed" in i]
    assert [r["id"] for r in removed] == [cancelled["id"]]
    assert state == {e["id"]: {**e, "@odata.type": "#microsoft.graph.event"} for e in view}
    assert state[moved["id"]]["subject"] == "Weekly sync (Tuesday this time)"
    assert state[moved["id"]]["changeKey"] != state[occurrences[0]["id"]]["changeKey"]

    fetched_master = alice.get(f"/me/events/{master['id']}").json()
    assert fetched_master["type"] == "seriesMaster"
    assert fetched_master["recurrence"]["range"]["numberOfOccurrences"] == 6

    assert alice.delete(f"/me/events/{master['id']}").status_code == 204
    link, items = drain(alice, link, state)
    assert state == {}
    assert {i["id"] for i in items if "@removed" in i} == {e["id"] for e in view}


def test_changing_the_series_time_drops_its_exceptions(alice: GraphClient) -> None:
    master = alice.post("/me/events", json=weekly_series()).json()
    first = alice.get(f"/me/events/{master['id']}/instances", params=WINDOW).json()["value"]
    alice.delete(f"/me/events/{first[0]['id']}")
    alice.patch(f"/me/events/{first[1]['id']}", json={"subject": "special"})
    later = {
        "start": {"dateTime": "2026-03-02T15:00:00", "timeZone": CET},
        "end": {"dateTime": "2026-03-02T15:30:00", "timeZone": CET},
    }
    alice.patch(f"/me/events/{master['id']}", json=later)
    again = alice.get(f"/me/events/{master['id']}/instances", params=WINDOW).json()["value"]
    assert len(again) == 6
    assert {i["type"] for i in again} == {"occurrence"}
    assert {i["subject"] for i in again} == {"Weekly sync"}


def test_monthly_all_day_series_and_recurrence_validation(alice: GraphClient) -> None:
    all_day = {
        "subject": "Month end",
        "isAllDay": True,
        "start": {"dateTime": "2026-03-31T00:00:00", "timeZone": CET},
        "end": {"dateTime": "2026-04-01T00:00:00", "timeZone": CET},
        "recurrence": {
            "pattern": {"type": "absoluteMonthly", "interval": 1, "dayOfMonth": 31},
            "range": {"type": "endDate", "startDate": "2026-03-31", "endDate": "2026-06-30"},
        },
    }
    master = alice.post("/me/events", json=all_day).json()
    instances = alice.get(
        f"/me/events/{master['id']}/instances",
        params={"startDateTime": "2026-03-01T00:00:00Z", "endDateTime": "2026-08-01T00:00:00Z"},
    ).json()["value"]
    assert [i["start"]["dateTime"][:10] for i in instances] == [
        "2026-03-31",
        "2026-04-30",
        "2026-05-31",
        "2026-06-30",
    ]
    assert all(i["isAllDay"] and i["end"]["dateTime"].endswith("T00:00:00.0000000") for i in instances)
    wrong_start = {**weekly_series()}
    wrong_start["recurrence"] = {
        **wrong_start["recurrence"],
        "range": {"type": "noEnd", "startDate": "2026-03-09"},
    }
    assert alice.post("/me/events", json=wrong_start).status_code == 400
    no_days = {
        **weekly_series(),
        "recurrence": {
            "pattern": {"type": "weekly", "interval": 1},
            "range": {"type": "noEnd", "startDate": "2026-03-02"},
        },
    }
    assert alice.post("/me/events", json=no_days).status_code == 400
