"""The demo's series steps: a weekly series with one moved and one cancelled occurrence, made on each side as
people make them, each timed until the other side shows the whole series (DESIGN §5, recurrence).

In Outlook: the series is created, then one occurrence is moved to another day and time and one is deleted
(Outlook's "delete this occurrence"), through the Graph emulator's user API; the CRM must show one activity
with a ``recurrence``, one ``occurrenceOverrides`` entry and one ``cancelledOccurrences`` entry. In the CRM:
one activity with the same three parts is created and pushed; Outlook must show one series master whose
``/instances`` lack the cancelled occurrence and hold the moved one as an ``exception``.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from devkit.demo import DemoError, DemoRun, Outcome, Step
from devkit.demo_sync import arrival, crm_activities, one, outlook_events, push

Json = dict[str, Any]
OCCURRENCES = 6
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _first_day(days: int) -> date:
    return datetime.now(UTC).date() + timedelta(days=days)


def _weekly(day: date) -> Json:
    return {
        "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [WEEKDAYS[day.weekday()]]},
        "range": {"type": "numbered", "startDate": day.isoformat(), "numberOfOccurrences": OCCURRENCES},
    }


def _at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def _graph_time(moment: datetime) -> Json:
    return {"dateTime": moment.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}


def _instant(text: str) -> datetime:
    """A CRM or Graph date-time (with an offset, or Graph's naive UTC) as an aware instant."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _instances(run: DemoRun, master_id: str) -> list[Json]:
    start = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (datetime.now(UTC) + timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, body = run.the_world().graph.outlook(
        run.oid(), "GET", f"/events/{master_id}/instances?startDateTime={start}&endDateTime={end}&$top=100"
    )
    if status != 200:
        raise DemoError(f"the instances of series {master_id} answered {status}: {body}")
    return sorted(body["value"], key=lambda item: _instant(str(item["originalStart"])))


def _masters(run: DemoRun, subject: str) -> list[Json]:
    return [e for e in outlook_events(run) if e.get("subject") == subject and e.get("type") == "seriesMaster"]


def outlook_series(run: DemoRun) -> Outcome:
    """Outlook → CRM: a weekly series, its second occurrence moved, its fourth deleted."""
    world, oid = run.the_world(), run.oid()
    subject, day = "Demo: weekly pipeline review", _first_day(7)
    started = time.perf_counter()
    master = world.graph.user_create_event(
        oid,
        {
            "subject": subject,
            "start": _graph_time(_at(day, 9)),
            "end": _graph_time(_at(day, 10)),
            "recurrence": _weekly(day),
        },
    )
    listed = _instances(run, master["id"])
    if len(listed) != OCCURRENCES:
        raise DemoError(f"Outlook expanded the series into {len(listed)} occurrences, not {OCCURRENCES}")
    moved, cancelled = listed[1], listed[3]
    moved_to = _at(day + timedelta(days=8), 15)  # from next week's day at 09:00 to the day after, 15:00
    world.graph.user_update_event(
        oid, moved["id"], {"start": _graph_time(moved_to), "end": _graph_time(moved_to + timedelta(hours=1))}
    )
    world.graph.user_delete_event(oid, cancelled["id"])

    def whole_series() -> Json | None:
        activity = one(crm_activities(run, subject), f"CRM activity {subject!r}")
        if activity is None or activity.get("recurrence") is None:
            return None
        overrides, cancellations = activity["occurrenceOverrides"], activity["cancelledOccurrences"]
        if len(overrides) != 1 or len(cancellations) != 1:
            return None
        return activity

    activity, ms = arrival(run, started, whole_series, "the series with its moved and cancelled occurrence")
    [override] = activity["occurrenceOverrides"]
    if _instant(override["start"]) != moved_to:
        raise DemoError(f"the moved occurrence reached the CRM at {override['start']}, not {moved_to}")
    if _instant(activity["cancelledOccurrences"][0]) != _instant(str(cancelled["originalStart"])):
        raise DemoError(f"the wrong occurrence is cancelled in the CRM: {activity['cancelledOccurrences']}")
    run.items["outlook_series_crm_id"], run.items["outlook_series_event_id"] = activity["crmId"], master["id"]
    return Outcome(
        f"Outlook series of {OCCURRENCES} (one moved to {moved_to:%a %H:%M}, one deleted) is CRM activity "
        f"{activity['crmId']} with 1 override and 1 cancelled occurrence",
        ms,
    )


def crm_series(run: DemoRun) -> Outcome:
    """CRM → Outlook: a weekly series with its third occurrence moved and its fifth cancelled."""
    world = run.the_world()
    subject, day = "Demo: weekly key-account call", _first_day(8)
    first = _at(day, 11)
    moved_from, cancelled = first + timedelta(weeks=2), first + timedelta(weeks=4)
    moved_to = moved_from + timedelta(hours=5)
    started = time.perf_counter()
    created = world.crm.create_as_user(
        {
            "ownerCrmUserId": run.user_id,
            "type": "personal_appointment",
            "subject": subject,
            "start": first.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end": (first + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "timeZone": "UTC",
            "recurrence": _weekly(day),
            "occurrenceOverrides": [
                {
                    "originalStart": moved_from.isoformat(),
                    "start": moved_to.isoformat(),
                    "end": (moved_to + timedelta(hours=1)).isoformat(),
                }
            ],
            "cancelledOccurrences": [cancelled.isoformat()],
        }
    )
    push(run, created)

    def whole_series() -> tuple[Json, list[Json]] | None:
        master = one(_masters(run, subject), f"Outlook series {subject!r}")
        if master is None:
            return None
        listed = _instances(run, master["id"])
        exceptions = [i for i in listed if i.get("type") == "exception"]
        if len(listed) != OCCURRENCES - 1 or len(exceptions) != 1:
            return None
        return master, listed

    what = f"the series of CRM activity {created['crmId']}"
    (master, listed), ms = arrival(run, started, whole_series, what)
    [exception] = [i for i in listed if i.get("type") == "exception"]
    if _instant(str(exception["start"]["dateTime"])) != moved_to:
        raise DemoError(f"the moved occurrence is at {exception['start']} in Outlook, not {moved_to}")
    if cancelled in [_instant(str(i["originalStart"])) for i in listed]:
        raise DemoError("the cancelled occurrence is still in Outlook")
    run.items["crm_series_crm_id"], run.items["crm_series_event_id"] = created["crmId"], master["id"]
    return Outcome(
        f"CRM series {created['crmId']} (one moved to {moved_to:%a %H:%M}, one cancelled) is one Outlook "
        f"series: {len(listed)} occurrences, 1 exception",
        ms,
    )


SERIES_STEPS: tuple[Step, ...] = (
    ("Outlook weekly series, one moved and one deleted occurrence → CRM", outlook_series),
    ("CRM weekly series, one moved and one cancelled occurrence → Outlook", crm_series),
)
