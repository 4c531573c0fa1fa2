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


# --- Outlook → CRM ------------------------------------------------------------------------------------------


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


# --- CRM → Outlook ------------------------------------------------------------------------------------------


def test_a_crm_series_with_a_moved_and_a_cancelled_occurrence_is_one_outlook_series(stack: SyncStack) -> None:
    user = new_user(stack)
    stack.connect("s39")  # a colleague, invited
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
            attendees=[{"email": "s39@contoso.example", "kind": "user", "crmId": "usr-s39"}],
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
    # The colleague got one invitation: the series (with its exception), not one per occurrence.
    status, body = stack.world.graph.outlook(stack.world.users["s39"].oid, "GET", "/events?$top=100")
    assert status == 200, body
    copies = [e for e in body["value"] if e["subject"] == "Account review"]
    assert [e["type"] for e in copies] == ["seriesMaster"]

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


# --- the six pattern types and three range types, each way --------------------------------------------------


def _nth_weekday_start(days: int) -> date:
    """The next date at least ``days`` ahead that is the first of its weekday in its month."""
    day = first_day(days)
    while day.day > 7:
        day += timedelta(days=1)
    return day


def pattern_of(kind: str, day: date) -> Json:
    weekday = WEEKDAYS[day.weekday()]
    return {
        "daily": {"type": "daily", "interval": 2},
        "weekly": {"type": "weekly", "interval": 1, "daysOfWeek": [weekday]},
        "absoluteMonthly": {"type": "absoluteMonthly", "interval": 1, "dayOfMonth": day.day},
        "relativeMonthly": {
            "type": "relativeMonthly",
            "interval": 1,
            "daysOfWeek": [weekday],
            "index": "first",
        },
        "absoluteYearly": {
            "type": "absoluteYearly",
            "interval": 1,
            "dayOfMonth": day.day,
            "month": day.month,
        },
        "relativeYearly": {
            "type": "relativeYearly",
            "interval": 1,
            "daysOfWeek": [weekday],
            "index": "first",
            "month": day.month,
        },
    }[kind]


PATTERNS = ("daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly")
# How many occurrences of a numbered range of 3 ``instances`` lists (400 days): a yearly one reaches past it.
IN_WINDOW = {"absoluteYearly": 2, "relativeYearly": 2}


def _start_for(kind: str) -> date:
    day = _nth_weekday_start(5) if kind.startswith("relative") else first_day(5)
    if day.month == 2 and day.day == 29:
        day += timedelta(days=1)
    return day


@pytest.mark.parametrize("kind", PATTERNS)
def test_each_pattern_type_created_in_outlook_arrives_in_the_crm(stack: SyncStack, kind: str) -> None:
    user = new_user(stack)
    day = _start_for(kind)
    recurrence = {
        "pattern": pattern_of(kind, day),
        "range": {"type": "numbered", "startDate": day.isoformat(), "numberOfOccurrences": 3},
    }
    stack.outlook_create(user, outlook_series(f"Pattern {kind}", day, recurrence))
    activity = wait_until(
        lambda: stack.one_activity(user, f"Pattern {kind}"), what=f"the {kind} series in the CRM"
    )
    pattern = activity["recurrence"]["pattern"]
    assert pattern["type"] == kind
    assert pattern["interval"] == recurrence["pattern"]["interval"]
    for key in ("daysOfWeek", "dayOfMonth", "month", "index"):
        if key in recurrence["pattern"]:
            assert pattern[key] == recurrence["pattern"][key], key
    assert activity["recurrence"]["range"]["numberOfOccurrences"] == 3
    assert utc_of(activity["start"]) == datetime(day.year, day.month, day.day, 10, tzinfo=UTC)
    assert activity["occurrenceOverrides"] == []
    assert activity["cancelledOccurrences"] == []


@pytest.mark.parametrize("kind", PATTERNS)
def test_each_pattern_type_created_in_the_crm_arrives_in_outlook(stack: SyncStack, kind: str) -> None:
    user = new_user(stack)
    day = _start_for(kind)
    recurrence = {
        "pattern": pattern_of(kind, day),
        "range": {"type": "numbered", "startDate": day.isoformat(), "numberOfOccurrences": 3},
    }
    stack.crm_create(user, crm_series(f"Pattern {kind}", day, recurrence))
    master = wait_until(lambda: the_series(stack, user, f"Pattern {kind}") or None, what=f"the {kind} series")
    assert master["recurrence"]["pattern"]["type"] == kind
    listed = instances(stack, user, master["id"])
    assert len(listed) == IN_WINDOW.get(kind, 3)
    assert utc_of(listed[0]["originalStart"]) == datetime(day.year, day.month, day.day, 10, tzinfo=UTC)
    stack.settle()
    activity = stack.crm_activities(user)
    assert len(activity) == 1  # no echo became a second activity
    assert activity[0]["occurrenceOverrides"] == []


def range_of(kind: str, day: date) -> Json:
    if kind == "endDate":
        return {
            "type": "endDate",
            "startDate": day.isoformat(),
            "endDate": (day + timedelta(weeks=3)).isoformat(),
        }
    if kind == "noEnd":
        return {"type": "noEnd", "startDate": day.isoformat()}
    return {"type": "numbered", "startDate": day.isoformat(), "numberOfOccurrences": 4}


RANGES = ("endDate", "noEnd", "numbered")


@pytest.mark.parametrize("kind", RANGES)
def test_each_range_type_created_in_outlook_arrives_in_the_crm(stack: SyncStack, kind: str) -> None:
    user = new_user(stack)
    day = first_day(2)
    recurrence = {"pattern": pattern_of("weekly", day), "range": range_of(kind, day)}
    stack.outlook_create(user, outlook_series(f"Range {kind}", day, recurrence))
    activity = wait_until(
        lambda: stack.one_activity(user, f"Range {kind}"), what=f"the {kind} series in the CRM"
    )
    span = activity["recurrence"]["range"]
    assert span["type"] == kind
    assert span["startDate"] == day.isoformat()
    assert span.get("endDate") == recurrence["range"].get("endDate")
    assert span.get("numberOfOccurrences") == recurrence["range"].get("numberOfOccurrences")


@pytest.mark.parametrize("kind", RANGES)
def test_each_range_type_created_in_the_crm_arrives_in_outlook(stack: SyncStack, kind: str) -> None:
    user = new_user(stack)
    day = first_day(2)
    recurrence = {"pattern": pattern_of("weekly", day), "range": range_of(kind, day)}
    stack.crm_create(user, crm_series(f"Range {kind}", day, recurrence))
    master = wait_until(lambda: the_series(stack, user, f"Range {kind}") or None, what=f"the {kind} series")
    assert master["recurrence"]["range"]["type"] == kind
    listed = instances(stack, user, master["id"])
    if kind == "noEnd":
        assert len(listed) > 50  # every week of the year ahead
    else:
        assert len(listed) == 4


# --- one occurrence moved or cancelled on each side, after the series synced --------------------------------


def synced_series(
    stack: SyncStack, user: str, subject: str, day: date, *, in_crm: bool = False
) -> tuple[Json, Json]:
    """A weekly series of 6 synced both ways: (the Outlook master, the CRM activity)."""
    if in_crm:
        stack.crm_create(user, crm_series(subject, day, weekly(day)))
        master = wait_until(lambda: the_series(stack, user, subject) or None, what="the series in Outlook")
    else:
        master = stack.outlook_create(user, outlook_series(subject, day, weekly(day)))
    activity = wait_until(lambda: stack.one_activity(user, subject), what="the series in the CRM")
    stack.settle()
    return master, activity


def test_one_occurrence_moved_in_the_crm_moves_only_it_in_outlook(stack: SyncStack) -> None:
    user = new_user(stack)
    day = first_day(3)
    master, activity = synced_series(stack, user, "Moved in CRM", day)
    third = datetime(day.year, day.month, day.day, 10, tzinfo=UTC) + timedelta(weeks=2)
    stack.crm_edit(
        activity["crmId"],
        {
            "occurrenceOverrides": [
                {
                    "originalStart": third.isoformat(),
                    "start": (third + timedelta(hours=2)).isoformat(),
                    "end": (third + timedelta(hours=3)).isoformat(),
                }
            ]
        },
    )

    def exceptions() -> list[Json]:
        return [i for i in instances(stack, user, master["id"]) if i["type"] == "exception"]

    [moved] = wait_until(exceptions, what="the moved occurrence in Outlook")
    assert utc_of(moved["originalStart"]) == third
    assert instant(moved["start"]["dateTime"], moved["start"]["timeZone"]) == third + timedelta(hours=2)
    stack.settle()
    assert len(instances(stack, user, master["id"])) == 6
    after = stack.world.crm.activity(activity["crmId"])
    assert after is not None
    assert len(after["occurrenceOverrides"]) == 1  # the echo changed nothing


def test_one_occurrence_moved_in_outlook_moves_only_it_in_the_crm(stack: SyncStack) -> None:
    user = new_user(stack)
    day = first_day(3)
    master, activity = synced_series(stack, user, "Moved in Outlook", day, in_crm=True)
    second = instances(stack, user, master["id"])[1]
    new_day = day + timedelta(days=8)
    stack.outlook_update(
        user,
        second["id"],
        {
            "start": {"dateTime": wall(new_day, 16), "timeZone": "UTC"},
            "end": {"dateTime": wall(new_day, 17), "timeZone": "UTC"},
        },
    )

    def overrides() -> list[Json]:
        return list((stack.world.crm.activity(activity["crmId"]) or {}).get("occurrenceOverrides", []))

    [override] = wait_until(overrides, what="the moved occurrence in the CRM")
    assert utc_of(override["originalStart"]) == utc_of(second["originalStart"])
    assert utc_of(override["start"]) == datetime(new_day.year, new_day.month, new_day.day, 16, tzinfo=UTC)
    assert override.get("subject") is None  # only the times changed
    stack.settle()
    after = stack.world.crm.activity(activity["crmId"])
    assert after is not None
    assert after["cancelledOccurrences"] == []
    assert after["start"] == activity["start"]  # the series itself did not move


def test_attendees_changed_on_one_occurrence_in_the_crm_reach_only_that_occurrence(stack: SyncStack) -> None:
    user = new_user(stack)
    day = first_day(3)
    stack.connect("s38")  # a colleague: CRM users are always invited
    master, activity = synced_series(stack, user, "Guest on one", day, in_crm=True)
    third = datetime(day.year, day.month, day.day, 10, tzinfo=UTC) + timedelta(weeks=2)
    guest = {"email": "s38@contoso.example", "name": "Colleague", "kind": "user", "crmId": "usr-s38"}
    stack.crm_edit(
        activity["crmId"],
        {"occurrenceOverrides": [{"originalStart": third.isoformat(), "attendees": [guest]}]},
    )

    def with_guest() -> list[Json]:
        return [
            i
            for i in instances(stack, user, master["id"])
            if any(a["emailAddress"]["address"] == guest["email"] for a in i.get("attendees", []))
        ]

    [exception] = wait_until(with_guest, what="the guest on the third occurrence in Outlook")
    assert utc_of(exception["originalStart"]) == third
    stack.settle()
    assert len(with_guest()) == 1


def test_one_occurrence_cancelled_in_outlook_cancels_only_it_in_the_crm(stack: SyncStack) -> None:
    user = new_user(stack)
    day = first_day(3)
    master, activity = synced_series(stack, user, "Cancelled in Outlook", day, in_crm=True)
    fifth = instances(stack, user, master["id"])[4]
    stack.outlook_delete(user, fifth["id"])

    def cancelled() -> list[Any]:
        current = stack.world.crm.activity(activity["crmId"]) or {}
        return list(current.get("cancelledOccurrences", []))

    assert crm_keys(wait_until(cancelled, what="the cancellation in the CRM")) == [
        utc_of(fifth["originalStart"])
    ]
    stack.settle()
    after = stack.world.crm.activity(activity["crmId"])
    assert after is not None
    assert after["occurrenceOverrides"] == []
    assert after["subject"] == "Cancelled in Outlook"
    assert len(instances(stack, user, master["id"])) == 5


# --- the whole series retimed while an exception exists -----------------------------------------------------


def test_a_series_retimed_in_the_crm_keeps_its_exception_in_outlook(stack: SyncStack) -> None:
    user = new_user(stack)
    day = first_day(3)
    start = datetime(day.year, day.month, day.day, 10, tzinfo=UTC)
    second = start + timedelta(weeks=1)
    created = stack.crm_create(
        user,
        crm_series(
            "Retimed in CRM",
            day,
            weekly(day),
            occurrenceOverrides=[{"originalStart": second.isoformat(), "subject": "Retimed in CRM (demo)"}],
        ),
    )
    master = wait_until(
        lambda: the_series(stack, user, "Retimed in CRM") or None, what="the series in Outlook"
    )
    stack.settle()
    # The whole series moves to 14:00; the exception is keyed by the new series' occurrence on its date.
    later = start + timedelta(hours=4)
    stack.crm_edit(
        created["crmId"],
        {
            "start": later.isoformat(),
            "end": (later + timedelta(hours=1)).isoformat(),
            "occurrenceOverrides": [
                {
                    "originalStart": (second + timedelta(hours=4)).isoformat(),
                    "subject": "Retimed in CRM (demo)",
                }
            ],
        },
    )

    def retimed() -> list[Json] | None:
        listed = instances(stack, user, master["id"])
        if instant(listed[0]["start"]["dateTime"], listed[0]["start"]["timeZone"]) != later:
            return None
        return [i for i in listed if i["type"] == "exception"] or None

    [exception] = wait_until(retimed, what="the retimed series with its exception in Outlook")
    assert exception["subject"] == "Retimed in CRM (demo)"
    assert utc_of(exception["originalStart"]) == second + timedelta(hours=4)
    stack.settle()
    assert stack.status(user)["lastError"] is None


def test_a_series_retimed_in_outlook_keeps_its_exception_on_both_sides(stack: SyncStack) -> None:
    user = new_user(stack)
    day = first_day(3)
    master, activity = synced_series(stack, user, "Retimed in Outlook", day)
    second = instances(stack, user, master["id"])[1]
    stack.outlook_update(user, second["id"], {"subject": "Retimed in Outlook (demo)"})
    wait_until(
        lambda: (stack.world.crm.activity(activity["crmId"]) or {}).get("occurrenceOverrides"),
        what="the exception in the CRM",
    )
    stack.settle()
    stack.outlook_update(
        user,
        master["id"],
        {
            "start": {"dateTime": wall(day, 15), "timeZone": "UTC"},
            "end": {"dateTime": wall(day, 16), "timeZone": "UTC"},
        },
    )
    later_second = datetime(day.year, day.month, day.day, 15, tzinfo=UTC) + timedelta(weeks=1)

    def crm_retimed() -> Json | None:
        current = stack.world.crm.activity(activity["crmId"]) or {}
        if not current or utc_of(current["start"]) != later_second - timedelta(weeks=1):
            return None
        return current

    current = wait_until(crm_retimed, what="the retimed series in the CRM")
    [override] = current["occurrenceOverrides"]
    assert (utc_of(override["originalStart"]), override["subject"]) == (
        later_second,
        "Retimed in Outlook (demo)",
    )
    stack.settle()
    # Outlook dropped the exception with the retime; the sync put it back.
    [exception] = [i for i in instances(stack, user, master["id"]) if i["type"] == "exception"]
    assert exception["subject"] == "Retimed in Outlook (demo)"
    assert utc_of(exception["originalStart"]) == later_second


# --- ended early, split, DST --------------------------------------------------------------------------------


def test_a_series_ended_early_in_the_crm_ends_early_in_outlook(stack: SyncStack) -> None:
    user = new_user(stack)
    day = first_day(3)
    master, activity = synced_series(stack, user, "Ended early", day, in_crm=True)
    stack.crm_edit(
        activity["crmId"],
        {
            "recurrence": {
                **activity["recurrence"],
                "range": {
                    "type": "endDate",
                    "startDate": day.isoformat(),
                    "endDate": (day + timedelta(weeks=1)).isoformat(),
                },
            }
        },
    )
    wait_until(lambda: len(instances(stack, user, master["id"])) == 2, what="the series ended after two")
    stack.settle()
    assert the_series(stack, user, "Ended early")["recurrence"]["range"]["type"] == "endDate"


def test_a_series_ended_early_in_outlook_ends_early_in_the_crm(stack: SyncStack) -> None:
    user = new_user(stack)
    day = first_day(3)
    master, activity = synced_series(stack, user, "Ended early in Outlook", day)
    stack.outlook_update(
        user,
        master["id"],
        {
            "recurrence": {
                **master["recurrence"],
                "range": {
                    "type": "endDate",
                    "startDate": day.isoformat(),
                    "endDate": (day + timedelta(weeks=2)).isoformat(),
                },
            }
        },
    )
    wait_until(
        lambda: (
            (stack.world.crm.activity(activity["crmId"]) or {})
            .get("recurrence", {})
            .get("range", {})
            .get("type")
            == "endDate"
        ),
        what="the series ended in the CRM",
    )
    current = stack.world.crm.activity(activity["crmId"])
    assert current is not None
    assert current["recurrence"]["range"]["endDate"] == (day + timedelta(weeks=2)).isoformat()


def test_a_series_split_in_outlook_ends_the_old_series_and_starts_a_new_one(stack: SyncStack) -> None:
    user = new_user(stack)
    day = first_day(3)
    master, activity = synced_series(stack, user, "Split", day)
    # "This and following" from the fourth occurrence: the old series ends before it, a new one starts there.
    fourth = day + timedelta(weeks=3)
    stack.outlook_update(
        user,
        master["id"],
        {
            "recurrence": {
                **master["recurrence"],
                "range": {
                    "type": "endDate",
                    "startDate": day.isoformat(),
                    "endDate": (fourth - timedelta(days=1)).isoformat(),
                },
            }
        },
    )
    stack.outlook_create(user, outlook_series("Split (new room)", fourth, weekly(fourth, 3), hour=11))
    new = wait_until(lambda: stack.one_activity(user, "Split (new room)"), what="the new series in the CRM")
    wait_until(
        lambda: (
            (stack.world.crm.activity(activity["crmId"]) or {})
            .get("recurrence", {})
            .get("range", {})
            .get("endDate")
            == (fourth - timedelta(days=1)).isoformat()
        ),
        what="the old series ended in the CRM",
    )
    assert new["recurrence"]["range"]["numberOfOccurrences"] == 3
    assert utc_of(new["start"]) == datetime(fourth.year, fourth.month, fourth.day, 11, tzinfo=UTC)


def _before_dst_change() -> date:
    """A Monday two weeks before Europe's next change to summer time (the last Sunday of March)."""
    today = datetime.now(UTC).date()
    year = today.year if today < date(today.year, 3, 1) else today.year + 1
    last_sunday = max(date(year, 3, d) for d in range(25, 32) if date(year, 3, d).weekday() == 6)
    return last_sunday - timedelta(days=13)


@pytest.mark.parametrize("origin", ["outlook", "crm"])
def test_a_weekly_series_across_a_dst_change_keeps_its_local_time(stack: SyncStack, origin: str) -> None:
    user = new_user(stack)
    day = _before_dst_change()
    subject = f"Across DST ({origin})"
    if origin == "crm":
        stack.crm_create(user, crm_series(subject, day, weekly(day, 4), hour=9, zone="Europe/Berlin"))
        master = wait_until(lambda: the_series(stack, user, subject) or None, what="the series in Outlook")
    else:
        master = stack.outlook_create(
            user, outlook_series(subject, day, weekly(day, 4), hour=9, zone="W. Europe Standard Time")
        )
    activity = wait_until(lambda: stack.one_activity(user, subject), what="the series in the CRM")
    assert activity["timeZone"] == "Europe/Berlin"
    local = [
        instant(i["start"]["dateTime"], i["start"]["timeZone"]).astimezone(BERLIN)
        for i in instances(stack, user, master["id"])
    ]
    assert [moment.hour for moment in local] == [9, 9, 9, 9]  # 08:00Z before the change, 07:00Z after
    assert len({moment.utcoffset() for moment in local}) == 2
    stack.settle()
    assert len(stack.crm_activities(user)) == 1
    assert stack.world.crm.activity(activity["crmId"])["occurrenceOverrides"] == []  # type: ignore[index]


# --- the delta token lost ---------------------------------------------------------------------------------


def test_after_an_expired_delta_token_series_are_matched_and_a_deleted_series_is_deleted(
    stack: SyncStack,
) -> None:
    """A full round lists a series by its occurrences: an untouched series is matched (not read back as
    missing, not skipped as incomplete, nothing created again or rewritten), a cancellation made meanwhile
    arrives, and a series deleted while Graph had forgotten the delta token is deleted in the CRM too."""
    user = new_user(stack)
    day = first_day(3)
    kept = stack.outlook_create(user, outlook_series("Kept series", day, weekly(day)))
    gone = stack.outlook_create(user, outlook_series("Gone series", day, weekly(day), hour=14))
    stack.outlook_create(user, outlook_series("Untouched series", day, weekly(day), hour=16))
    wait_until(
        lambda: len([a for a in stack.crm_activities(user) if a.get("recurrence")]) == 3,
        what="the three series in the CRM",
    )
    stack.settle()
    gone_activity = stack.one_activity(user, "Gone series")
    untouched = stack.one_activity(user, "Untouched series")
    assert gone_activity is not None
    assert untouched is not None
    seen = len(stack.graph_requests(user))

    stack.world.graph.expire_delta_tokens(stack.oid(user))
    stack.outlook_delete(user, gone["id"])
    cancelled = instances(stack, user, kept["id"])[2]
    stack.outlook_delete(user, cancelled["id"])

    def cancellation_arrived() -> bool:
        activity = stack.one_activity(user, "Kept series")
        return activity is not None and len(activity["cancelledOccurrences"]) == 1

    wait_until(cancellation_arrived, what="the cancellation in the CRM")
    wait_until(
        lambda: stack.world.crm.activity(gone_activity["crmId"]) is None, what="the deleted series in the CRM"
    )
    stack.settle()
    log = stack.graph_requests(user)[seen:]
    assert any(entry["status"] == 410 for entry in log)
    assert not any(
        entry["method"] == "POST" and entry["path"].rstrip("/").endswith("/events") for entry in log
    )
    activity = stack.one_activity(user, "Kept series")
    assert activity is not None
    assert crm_keys(activity["cancelledOccurrences"]) == [utc_of(cancelled["originalStart"])]
    assert (stack.world.crm.activity(untouched["crmId"]) or {}).get("version") == untouched["version"]
    status = stack.status(user)
    assert status["lastError"] is None
    assert [entry for entry in status["syncLog"] if entry["kind"] == "skipped"] == []


def graph_posts_in(log: list[Json]) -> int:
    return sum(1 for r in log if r["method"] == "POST" and r["path"].rstrip("/").endswith("/events"))
