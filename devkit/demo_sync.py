"""The demo's sync steps: changes made as people make them, each timed until it shows on the other side.

Outlook changes go through the Graph emulator's user API (``GraphEmulator.user_create_event`` …), which sends
the change notification to the host's webhook as Graph does. CRM changes go through the CRM emulator's user
API (``CrmEmulator.create_as_user`` …) followed by the CRM's signed push to the service (``PUT``/``DELETE
/api/users/{id}/activities/{crmId}``). Nothing in the service is called directly. A step's time runs from just
before the change until the other side shows it, polled every ``DemoRun.poll_interval``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from azure.storage.queue import QueueClient

from devkit.demo import DemoError, DemoRun, Outcome, Step

T = TypeVar("T")
Json = dict[str, Any]


# --- time slots inside the sync window (now - 60 days … now + 365 days) ---


def slot(days: int, hour: int, minutes: int = 60) -> tuple[datetime, datetime]:
    start = (datetime.now(UTC) + timedelta(days=days)).replace(hour=hour, minute=0, second=0, microsecond=0)
    return start, start + timedelta(minutes=minutes)


def outlook_event(subject: str, days: int, hour: int, location: str) -> Json:
    """An event as a person creates it in Outlook (Graph's JSON)."""
    start, end = slot(days, hour)
    return {
        "subject": subject,
        "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
        "end": {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
        "location": {"displayName": location},
    }


def crm_activity(owner: str, subject: str, days: int, hour: int, location: str) -> Json:
    """An activity as a person creates it in the CRM."""
    start, end = slot(days, hour)
    return {
        "ownerCrmUserId": owner,
        "type": "personal_appointment",
        "subject": subject,
        "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "timeZone": "UTC",
        "location": location,
    }


# --- both sides, as their users see them ---


def crm_activities(run: DemoRun, subject: str) -> list[Json]:
    return [a for a in run.the_world().crm.activities(run.user_id) if a.get("subject") == subject]


def outlook_events(run: DemoRun) -> list[Json]:
    status, body = run.the_world().graph.outlook(run.oid(), "GET", "/events?$top=1000")
    if status != 200:
        raise DemoError(f"Outlook's event list answered {status}: {body}")
    return list(body["value"])


def outlook_get(run: DemoRun, event_id: str) -> Json | None:
    status, body = run.the_world().graph.outlook(run.oid(), "GET", f"/events/{event_id}")
    return body if status == 200 else None


def location_of(event: Mapping[str, Any]) -> str | None:
    location = event.get("location") or {}
    return location.get("displayName") if isinstance(location, dict) else None


def one(found: list[Json], what: str) -> Json | None:
    if len(found) > 1:
        raise DemoError(f"{what} is there {len(found)} times: a duplicate")
    return found[0] if found else None


def push(run: DemoRun, activity: Mapping[str, Any]) -> None:
    """The CRM's push of a changed activity to the service (signed, function key)."""
    answer = run.the_crm_client().put_activity(run.user_id, dict(activity))
    if answer.status != 202:
        raise DemoError(f"PUT activity {activity['crmId']} answered {answer.status}: {answer.body}")


def arrival(run: DemoRun, started: float, check: Callable[[], T | None], what: str) -> tuple[T, float]:
    """Poll ``check`` until it returns something; that and the ms since ``started`` (a perf_counter)."""
    deadline = started + run.timeout
    while True:
        found = check()
        if found:
            return found, (time.perf_counter() - started) * 1000
        if time.perf_counter() > deadline:
            raise DemoError(f"{what} did not arrive within {run.timeout:g} s (timeout)")
        time.sleep(run.poll_interval)


def settle(run: DemoRun) -> None:
    """Wait until the sync queue is empty and no run holds the user's lease (twice, 0.3 s apart)."""
    storage = run.storage
    assert storage is not None
    connection_string = run.host_settings["AzureWebJobsStorage"]
    queue_name = run.host_settings["SYNC_QUEUE_NAME"]
    with QueueClient.from_connection_string(connection_string, queue_name) as queue:
        for _ in range(2):
            deadline = time.monotonic() + run.timeout
            while (
                queue.get_queue_properties().approximate_message_count != 0
                or storage.leases.get(run.user_id) is not None
            ):
                if time.monotonic() > deadline:
                    raise DemoError(f"the sync queue did not drain within {run.timeout:g} s")
                time.sleep(run.poll_interval * 5)
            time.sleep(0.3)


# --- 1. Outlook → CRM ---


def outlook_create(run: DemoRun) -> Outcome:
    subject = "Demo: quarterly review"
    started = time.perf_counter()
    event = run.the_world().graph.user_create_event(run.oid(), outlook_event(subject, 3, 9, "Room 1"))
    activity, ms = arrival(
        run,
        started,
        lambda: one(crm_activities(run, subject), f"CRM activity {subject!r}"),
        f"the CRM activity for Outlook event {subject!r}",
    )
    if activity.get("location") != "Room 1":
        raise DemoError(f"the CRM activity arrived without its location: {activity}")
    run.items["outlook_event_id"], run.items["outlook_crm_id"] = event["id"], activity["crmId"]
    return Outcome(
        f"Outlook event {subject!r} (Room 1, {activity['start']}) is CRM {activity['type']} "
        f"{activity['crmId']}",
        ms,
    )


def outlook_update(run: DemoRun) -> Outcome:
    subject = "Demo: quarterly review (moved to Room 2)"
    crm_id = run.items["outlook_crm_id"]
    started = time.perf_counter()
    run.the_world().graph.user_update_event(
        run.oid(), run.items["outlook_event_id"], {"subject": subject, "location": {"displayName": "Room 2"}}
    )

    def updated() -> Json | None:
        activity = run.the_world().crm.activity(crm_id)
        if activity is None or activity.get("subject") != subject or activity.get("location") != "Room 2":
            return None
        return activity

    activity, ms = arrival(run, started, updated, f"the Outlook edit of {crm_id}")
    return Outcome(
        f"CRM {crm_id} now reads {subject!r} in {activity['location']} (version {activity['version']})", ms
    )


def outlook_delete(run: DemoRun) -> Outcome:
    crm_id = run.items["outlook_crm_id"]
    started = time.perf_counter()
    run.the_world().graph.user_delete_event(run.oid(), run.items["outlook_event_id"])
    _, ms = arrival(
        run, started, lambda: run.the_world().crm.activity(crm_id) is None, f"the deletion of {crm_id}"
    )
    return Outcome(f"deleted in Outlook; CRM {crm_id} is gone", ms)


# --- 2. CRM → Outlook ---


def crm_create(run: DemoRun) -> Outcome:
    subject = "Demo: site visit"
    started = time.perf_counter()
    created = run.the_world().crm.create_as_user(crm_activity(run.user_id, subject, 4, 14, "Plant 2"))
    push(run, created)
    event, ms = arrival(
        run,
        started,
        lambda: one(
            [e for e in outlook_events(run) if e.get("subject") == subject], f"Outlook event {subject!r}"
        ),
        f"the Outlook event for CRM activity {created['crmId']}",
    )
    if location_of(event) != "Plant 2":
        raise DemoError(f"the Outlook event arrived without its location: {event.get('location')}")
    run.items["crm_crm_id"], run.items["crm_event_id"] = created["crmId"], event["id"]
    return Outcome(f"CRM activity {created['crmId']} {subject!r} (Plant 2) is in Outlook", ms)


def crm_update(run: DemoRun) -> Outcome:
    subject = "Demo: site visit (confirmed)"
    event_id = run.items["crm_event_id"]
    started = time.perf_counter()
    edited = run.the_world().crm.edit_as_user(run.items["crm_crm_id"], {"subject": subject})
    push(run, edited)

    def updated() -> Json | None:
        event = outlook_get(run, event_id)
        return event if event is not None and event.get("subject") == subject else None

    _, ms = arrival(run, started, updated, f"the CRM edit of {edited['crmId']}")
    return Outcome(f"the Outlook event now reads {subject!r}", ms)


def crm_delete(run: DemoRun) -> Outcome:
    world, crm_id, event_id = run.the_world(), run.items["crm_crm_id"], run.items["crm_event_id"]
    current = world.crm.activity(crm_id)
    if current is None:
        raise DemoError(f"CRM activity {crm_id} is already gone")
    started = time.perf_counter()
    world.crm.delete_as_user(crm_id)
    answer = run.the_crm_client().delete_activity(run.user_id, crm_id, current["version"])
    if answer.status != 202:
        raise DemoError(f"DELETE activity {crm_id} answered {answer.status}: {answer.body}")
    _, ms = arrival(run, started, lambda: outlook_get(run, event_id) is None, f"the deletion of {crm_id}")
    return Outcome("deleted in the CRM; the Outlook event is gone", ms)


# --- 3. both sides at once ---


def merge(run: DemoRun) -> Outcome:
    world, oid = run.the_world(), run.oid()
    subject = "Demo: budget"
    started = time.perf_counter()
    event = world.graph.user_create_event(oid, outlook_event(subject, 5, 10, "Room 3"))
    activity, created_ms = arrival(
        run, started, lambda: one(crm_activities(run, subject), f"CRM activity {subject!r}"), "the activity"
    )
    settle(run)  # linked on both sides and quiet: now both people edit it

    crm_id, new_subject, new_location = activity["crmId"], "Demo: budget 2027", "Board room"
    started = time.perf_counter()
    world.graph.user_update_event(oid, event["id"], {"subject": new_subject})
    push(run, world.crm.edit_as_user(crm_id, {"location": new_location}))

    def merged() -> bool:
        crm = world.crm.activity(crm_id)
        outlook = outlook_get(run, event["id"])
        return (
            crm is not None
            and outlook is not None
            and (crm.get("subject"), crm.get("location")) == (new_subject, new_location)
            and (outlook.get("subject"), location_of(outlook)) == (new_subject, new_location)
        )

    _, ms = arrival(run, started, merged, "both edits on both sides")
    run.items["merged_crm_id"], run.items["merged_event_id"] = crm_id, event["id"]
    return Outcome(
        f"subject edited in Outlook, location in the CRM: both now read {new_subject!r} at {new_location!r} "
        f"(the event first reached the CRM in {created_ms:.0f} ms)",
        ms,
    )


# What the demo leaves behind on purpose: each pair is run.items keys of a CRM id and its Outlook event id.
KEPT_ITEMS = (
    ("merged_crm_id", "merged_event_id"),
    ("outlook_series_crm_id", "outlook_series_event_id"),
    ("crm_series_crm_id", "crm_series_event_id"),
)


def check_clean(run: DemoRun) -> Outcome:
    """After all that: each item the demo kept is one activity and one event (nothing duplicated, nothing
    echoed), nothing else is left on either side, and no error."""
    settle(run)
    kept = [(run.items[crm], run.items[event]) for crm, event in KEPT_ITEMS if crm in run.items]
    activities = run.the_world().crm.activities(run.user_id)
    events = outlook_events(run)
    if sorted(a["crmId"] for a in activities) != sorted(crm_id for crm_id, _ in kept):
        raise DemoError(
            f"the CRM should hold {len(kept)} activities; it holds {[a.get('subject') for a in activities]}"
        )
    if sorted(e["id"] for e in events) != sorted(event_id for _, event_id in kept):
        raise DemoError(
            f"Outlook should hold {len(kept)} events; it holds {[e.get('subject') for e in events]}"
        )
    answer = run.the_crm_client().status(run.user_id)
    if answer.status != 200:
        raise DemoError(f"GET /api/users/{run.user_id}/status answered {answer.status}: {answer.body}")
    status = answer.body
    if status.get("lastError") is not None or status.get("state") != "connected":
        raise DemoError(f"the user's status shows a problem: {status}")
    return Outcome(
        f"CRM {len(activities)} activities, Outlook {len(events)} events (series count once); "
        f"GET /api/users/{run.user_id}/status: {status['state']}, "
        f"lastError none, pendingChanges {status.get('pendingChanges')}, "
        f"lastGoodSyncAt {status['lastGoodSyncAt']}"
    )


SYNC_STEPS: tuple[Step, ...] = (
    ("Outlook create → CRM", outlook_create),
    ("Outlook update → CRM", outlook_update),
    ("Outlook delete → CRM", outlook_delete),
    ("CRM create → Outlook", crm_create),
    ("CRM update → Outlook", crm_update),
    ("CRM delete → Outlook", crm_delete),
    ("Both sides edit one event → merged field by field", merge),
)
CHECK_STEPS: tuple[Step, ...] = (("Nothing duplicated, nothing echoed, no error", check_clean),)
