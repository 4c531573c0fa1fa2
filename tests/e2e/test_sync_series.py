"""Recurring series both ways through the whole service (issue 7): the local host, the Graph emulator (which
expands series and serves ``/instances``) and the CRM emulator (which validates series as the contract says).

A series is one CRM activity with ``recurrence``, ``occurrenceOverrides`` and ``cancelledOccurrences``; in
Outlook a series master with its occurrences, exceptions and missing (cancelled) occurrences. Each test
changes one side as a person would and waits for the other side to show it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devkit.azurite import AzuriteEndpoints
from devkit.host_process import HostLauncher
from tests.e2e.kit import wait_until
from tests.e2e.sync_stack import SyncStack, crm_activity, instant, running_sync_stack, timed_event

Json = dict[str, Any]
USERS = tuple(f"s{n:02d}" for n in range(40))
BERLIN = ZoneInfo("Europe/Berlin")
_next_user = iter(USERS)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, local_hosts: HostLauncher, azurite: AzuriteEndpoints
) -> Iterator[SyncStack]:
    work = tmp_path_factory.mktemp("sync-series")
    launcher = HostLauncher(work_root=work, base_settings=local_hosts.base_settings, env=local_hosts.env)
    with running_sync_stack(work, launcher, azurite.connection_string, USERS) as built:
        yield built


def new_user(stack: SyncStack) -> str:
    return stack.connect(next(_next_user))


def first_day(days: int, weekday: int | None = None) -> date:
    """A date ``days`` from today (moved forward to ``weekday``, Monday 0, when given)."""
    day = datetime.now(UTC).date() + timedelta(days=days)
    while weekday is not None and day.weekday() != weekday:
        day += timedelta(days=1)
    return day


def wall(day: date, hour: int) -> str:
    return f"{day.isoformat()}T{hour:02d}:00:00"


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def outlook_series(subject: str, day: date, recurrence: Json, *, hour: int = 10, zone: str = "UTC") -> Json:
    return timed_event(subject, wall(day, hour), wall(day, hour + 1), zone, recurrence=recurrence)


def crm_series(
    subject: str, day: date, recurrence: Json, *, hour: int = 10, zone: str = "UTC", **extra: Any
) -> Json:
    offset = datetime.combine(day, datetime.min.time(), ZoneInfo(zone)).utcoffset()
    assert offset is not None
    start = datetime(day.year, day.month, day.day, hour, tzinfo=ZoneInfo(zone))
    return crm_activity(
        subject,
        start.isoformat(),
        (start + timedelta(hours=1)).isoformat(),
        zone,
        recurrence=recurrence,
        **extra,
    )


def weekly(day: date, count: int = 6) -> Json:
    return {
        "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [WEEKDAYS[day.weekday()]]},
        "range": {"type": "numbered", "startDate": day.isoformat(), "numberOfOccurrences": count},
    }


def instances(stack: SyncStack, user: str, master_id: str) -> list[Json]:
    start = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (datetime.now(UTC) + timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, body = stack.world.graph.outlook(
        stack.oid(user),
        "GET",
        f"/events/{master_id}/instances?startDateTime={start}&endDateTime={end}&$top=500",
    )
    assert status == 200, body
    return sorted(body["value"], key=lambda item: str(item["originalStart"]))


def utc_of(text: str) -> datetime:
    return instant(text)


def crm_keys(values: list[Any]) -> list[datetime]:
    return sorted(utc_of(value if isinstance(value, str) else value["originalStart"]) for value in values)


def the_series(stack: SyncStack, user: str, subject: str) -> Json:
    """The one Outlook series master with ``subject``."""
    masters = [
        e for e in stack.outlook_events(user) if e["subject"] == subject and e.get("type") == "seriesMaster"
    ]
    assert len(masters) <= 1, f"duplicated series {subject!r}"
    return masters[0] if masters else {}


def graph_posts(stack: SyncStack, user: str) -> int:
    return sum(
        1
        for r in stack.graph_requests(user)
        if r["method"] == "POST" and r["path"].rstrip("/").endswith("/events")
    )


# --- Outlook → CRM ----------------------------------------------------------------------------------------


def test_an_outlook_series_with_a_moved_and_a_cancelled_occurrence_is_one_crm_activity(
    stack: SyncStack,
) -> None:
    user = new_user(stack)
    day = first_day(3)
    master = stack.outlook_create(user, outlook_series("Team sync", day, weekly(day)))
    found = instances(stack, user, master["id"])
    assert len(found) == 6
    moved, cancelled = found[1], found[3]
    moved_start = wall(day + timedelta(days=8), 15)
    stack.outlook_update(
        user,
        moved["id"],
        {
            "start": {"dateTime": moved_start, "timeZone": "UTC"},
            "end": {"dateTime": wall(day + timedelta(days=8), 16), "timeZone": "UTC"},
        },
    )
    stack.outlook_delete(user, cancelled["id"])

    def synced() -> Json | None:
        activity = stack.one_activity(user, "Team sync")
        if activity is None or not activity["occurrenceOverrides"] or not activity["cancelledOccurrences"]:
            return None
        return activity

    activity = wait_until(synced, what="the series with its exception and cancellation in the CRM")
    assert activity["recurrence"]["pattern"]["type"] == "weekly"
    assert activity["recurrence"]["range"]["numberOfOccurrences"] == 6
    assert crm_keys(activity["cancelledOccurrences"]) == [utc_of(cancelled["originalStart"])]
    [override] = activity["occurrenceOverrides"]
    assert utc_of(override["originalStart"]) == utc_of(moved["originalStart"])
    assert utc_of(override["start"]) == utc_of(moved_start + "Z")
    stack.settle()
    assert len([a for a in stack.crm_activities(user) if a["subject"] == "Team sync"]) == 1

    # A change to one occurrence changes only that occurrence.
    third = instances(stack, user, master["id"])[2]
    stack.outlook_update(user, third["id"], {"subject": "Team sync (demo)"})
    wait_until(
        lambda: len((stack.one_activity(user, "Team sync") or {}).get("occurrenceOverrides", [])) == 2,
        what="the retitled occurrence in the CRM",
    )
    activity = stack.one_activity(user, "Team sync")
    assert activity is not None
    assert sorted(o.get("subject") or "" for o in activity["occurrenceOverrides"]) == ["", "Team sync (demo)"]
    assert crm_keys(activity["cancelledOccurrences"]) == [utc_of(cancelled["originalStart"])]

    # Deleting the series deletes the activity.
    stack.outlook_delete(user, master["id"])
    wait_until(
        lambda: stack.world.crm.activity(activity["crmId"]) is None, what="the series deleted in the CRM"
    )
    stack.settle()
    assert stack.status(user)["lastError"] is None


# --- CRM → Outlook ----------------------------------------------------------------------------------------


def test_a_crm_series_with_a_moved_and_a_cancelled_occurrence_is_one_outlook_series(stack: SyncStack) -> None:
    user = new_user(stack)
    day = first_day(4)
    start = datetime(day.year, day.month, day.day, 10, tzinfo=UTC)
    second, fourth = start + timedelta(weeks=1), start + timedelta(weeks=3)
    before = graph_posts(stack, user)
    created = stack.crm_create(
        user,
        crm_series(
            "Account review",
            day,
            weekly(day),
            attendees=[{"email": "s01@contoso.example", "kind": "user", "crmId": "usr-s01"}],
            occurrenceOverrides=[
                {
                    "originalStart": second.isoformat(),
                    "start": (second + timedelta(hours=4)).isoformat(),
                    "end": (second + timedelta(hours=5)).isoformat(),
                }
            ],
            cancelledOccurrences=[fourth.isoformat()],
        ),
    )
    master = wait_until(
        lambda: the_series(stack, user, "Account review") or None, what="the series in Outlook"
    )
    stack.settle()
    listed = instances(stack, user, master["id"])
    assert len(listed) == 5  # one cancelled
    assert utc_of(fourth.isoformat()) not in [utc_of(i["originalStart"]) for i in listed]
    [exception] = [i for i in listed if i["type"] == "exception"]
    assert utc_of(exception["originalStart"]) == second
    assert instant(exception["start"]["dateTime"], exception["start"]["timeZone"]) == second + timedelta(
        hours=4
    )
    assert graph_posts(stack, user) - before == 1  # one create for the series, not one per occurrence

    # Cancelling one more occurrence in the CRM deletes that occurrence in Outlook, and only it.
    fifth = start + timedelta(weeks=4)
    stack.crm_edit(created["crmId"], {"cancelledOccurrences": [fourth.isoformat(), fifth.isoformat()]})
    wait_until(lambda: len(instances(stack, user, master["id"])) == 4, what="the cancelled occurrence gone")
    stack.settle()
    assert [
        i for i in instances(stack, user, master["id"]) if i["type"] == "exception"
    ]  # the exception stays

    # Deleting the series in the CRM deletes it in Outlook.
    stack.crm_delete(created["crmId"])
    wait_until(lambda: not the_series(stack, user, "Account review"), what="the series gone from Outlook")
    assert stack.status(user)["lastError"] is None
