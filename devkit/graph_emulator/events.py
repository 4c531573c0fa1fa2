"""Graph event JSON in and out: validation of create/update payloads and rendering of stored events.

A stored event keeps its Graph properties as given (normalized), its start/end as local wall-clock times with
the Windows (or IANA) time-zone names the client sent, and the series state of a master (exceptions by their
original start, cancelled original starts). Rendering produces what Graph returns: every property present,
start/end in UTC or the ``Prefer: outlook.timezone`` zone, all-day events midnight to midnight in any zone.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import html
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from devkit.graph_emulator import timezones
from devkit.graph_emulator.recurrence import Recurrence, RecurrenceError
from devkit.graph_emulator.util import (
    ZERO_TIME,
    GraphError,
    Json,
    body_preview,
    etag,
    fmt_local,
    fmt_utc,
    html_to_text,
)

ENUMS = {
    "importance": ("low", "normal", "high"),
    "sensitivity": ("normal", "personal", "private", "confidential"),
    "showAs": ("free", "tentative", "busy", "oof", "workingElsewhere", "unknown"),
    "onlineMeetingProvider": ("unknown", "teamsForBusiness", "skypeForBusiness", "skypeForConsumer"),
}
BOOLEANS = (
    "isAllDay",
    "isReminderOn",
    "responseRequested",
    "allowNewTimeProposals",
    "hideAttendees",
    "isOnlineMeeting",
    "isDraft",
)
# Accepted and kept as given (structure checked lightly): the product may send any of these.
PASSTHROUGH = ("location", "locations", "singleValueExtendedProperties", "multiValueExtendedProperties")
# Read-only or server-computed properties a client may echo back: accepted and ignored, as Graph does.
IGNORED = frozenset(
    {
        "id",
        "changeKey",
        "createdDateTime",
        "lastModifiedDateTime",
        "iCalUId",
        "uid",
        "type",
        "seriesMasterId",
        "webLink",
        "onlineMeetingUrl",
        "onlineMeeting",
        "isOrganizer",
        "isCancelled",
        "bodyPreview",
        "hasAttachments",
        "originalStart",
        "originalStartTimeZone",
        "originalEndTimeZone",
        "responseStatus",
        "occurrenceId",
        "cancelledOccurrences",
        "exceptionOccurrences",
    }
)
WRITABLE = frozenset(
    {"subject", "body", "start", "end", "attendees", "categories", "recurrence", "transactionId", "organizer"}
    | set(ENUMS)
    | set(BOOLEANS)
    | set(PASSTHROUGH)
    | {"reminderMinutesBeforeStart"}
)
ATTENDEE_TYPES = ("required", "optional", "resource")


def validation_failure() -> GraphError:
    return GraphError(400, "ErrorPropertyValidationFailure", "At least one property failed validation.")


def body_read_error(message: str) -> GraphError:
    return GraphError(400, "RequestBodyRead", message)


@dataclass(frozen=True)
class When:
    """A dateTimeTimeZone as stored: local wall-clock time and the zone name the client used."""

    local: dt.datetime
    zone_name: str

    @property
    def utc(self) -> dt.datetime:
        return timezones.to_utc(self.local, timezones.resolve(self.zone_name))

    @classmethod
    def parse(cls, value: Any, name: str) -> When:
        if not isinstance(value, Mapping) or not isinstance(value.get("dateTime"), str):
            raise body_read_error(f"Property '{name}' must be a dateTimeTimeZone with dateTime and timeZone.")
        zone_name = value.get("timeZone") or "UTC"
        if not isinstance(zone_name, str):
            raise body_read_error(f"Property '{name}.timeZone' must be a string.")
        zone = timezones.resolve(zone_name)
        try:
            parsed = dt.datetime.fromisoformat(value["dateTime"].strip())
        except ValueError as exc:
            raise body_read_error(
                f"Cannot convert the literal '{value['dateTime']}' to a date-time."
            ) from exc
        if parsed.tzinfo is not None:  # an explicit offset wins; keep the wall-clock time of the named zone
            parsed = timezones.to_local(parsed, zone)
        return cls(parsed, zone_name)


@dataclass
class ExceptionState:
    """An occurrence that was changed: its own times, the properties it overrides, its own version."""

    start: When
    end: When
    overrides: Json
    change_key: str
    created: dt.datetime
    modified: dt.datetime


@dataclass
class EventRecord:
    key: bytes
    props: Json
    start: When
    end: When
    change_key: str
    created: dt.datetime
    modified: dt.datetime
    ical_uid: str
    recurrence: Recurrence | None = None
    exceptions: dict[dt.datetime, ExceptionState] = field(default_factory=dict)
    cancelled: set[dt.datetime] = field(default_factory=set)
    join_url: str | None = None
    # Meetings (invitations.py): the organizer's event knows the mailboxes holding a copy and counts its
    # versions; an attendee's copy names the organizer's event, shares its iCalUId and has its own answer.
    ical_key: bytes | None = None  # the key the iCalUIds derive from (the organizer's, on a copy)
    invited: set[str] = field(default_factory=set)
    meeting_seq: int = 0
    invitation: tuple[str, bytes] | None = None  # (organizer's user id, organizer's record key)
    is_cancelled: bool = False
    response: Json | None = None

    @property
    def is_all_day(self) -> bool:
        return bool(self.props.get("isAllDay"))

    @property
    def type(self) -> str:
        return "seriesMaster" if self.recurrence is not None else "singleInstance"

    @property
    def recurrence_zone_name(self) -> str:
        assert self.recurrence is not None
        return self.recurrence.range.time_zone or self.start.zone_name

    @property
    def duration(self) -> dt.timedelta:
        return self.end.utc - self.start.utc


# --- input ------------------------------------------------------------------------------------------------


def _check_attendees(value: Any) -> list[Json]:
    if not isinstance(value, list):
        raise body_read_error("Property 'attendees' must be an array.")
    result = []
    for item in value:
        email = item.get("emailAddress") if isinstance(item, Mapping) else None
        if not isinstance(email, Mapping) or not isinstance(email.get("address", ""), str):
            raise body_read_error("Each attendee needs an emailAddress object.")
        kind = item.get("type", "required")
        if kind not in ATTENDEE_TYPES:
            raise body_read_error(f"Cannot convert the literal '{kind}' to the expected type 'attendeeType'.")
        attendee: Json = {
            "type": kind,
            "status": copy.deepcopy(item.get("status")) or {"response": "none", "time": ZERO_TIME},
            "emailAddress": {
                "name": email.get("name") or email.get("address", ""),
                "address": email.get("address", ""),
            },
        }
        for extra in ("proposedNewTime",):
            if extra in item:
                attendee[extra] = copy.deepcopy(item[extra])
        result.append(attendee)
    return result


def clean_payload(payload: Any, *, creating: bool) -> Json:
    """Check an event payload's properties and types; return the writable ones, normalized."""
    if not isinstance(payload, Mapping):
        raise body_read_error("The request body must be a JSON object.")
    cleaned: Json = {}
    for name, value in payload.items():
        if name.startswith("@odata.") or "@odata." in name or name in IGNORED:
            continue
        if name not in WRITABLE:
            raise body_read_error(
                f"The property '{name}' does not exist on type 'microsoft.graph.event'. Make sure to only "
                "use property names that are defined by the type or mark the type as open type."
            )
        if name in ENUMS:
            if value not in ENUMS[name]:
                raise body_read_error(f"Cannot convert the literal '{value}' to the expected type '{name}'.")
        elif name in BOOLEANS:
            if not isinstance(value, bool):
                raise body_read_error(f"Property '{name}' must be a boolean.")
        elif name in ("subject", "transactionId"):
            if value is not None and not isinstance(value, str):
                raise body_read_error(f"Property '{name}' must be a string.")
        elif name == "reminderMinutesBeforeStart":
            if isinstance(value, bool) or not isinstance(value, int):
                raise body_read_error("Property 'reminderMinutesBeforeStart' must be an integer.")
        elif name == "categories":
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise body_read_error("Property 'categories' must be an array of strings.")
        elif name == "body":
            if not isinstance(value, Mapping):
                raise body_read_error("Property 'body' must be an itemBody.")
            kind = str(value.get("contentType", "text")).lower()
            if kind not in ("text", "html"):
                raise body_read_error(f"Cannot convert the literal '{kind}' to the expected type 'bodyType'.")
            value = {"contentType": kind, "content": str(value.get("content") or "")}
        elif name == "attendees":
            value = _check_attendees(value)
        elif name in ("start", "end"):
            value = When.parse(value, name)
        elif name == "recurrence":
            if value is not None:
                try:
                    value = Recurrence.parse(value)
                except RecurrenceError as exc:
                    raise GraphError(400, "ErrorInvalidRequest", f"Invalid recurrence: {exc}") from exc
        elif name == "location" and not isinstance(value, Mapping | None):
            raise body_read_error("Property 'location' must be an object.")
        elif name in PASSTHROUGH and name != "location" and not isinstance(value, list):
            raise body_read_error(f"Property '{name}' must be an array.")
        cleaned[name] = copy.deepcopy(value) if not isinstance(value, When | Recurrence) else value
    if creating and ("start" not in cleaned or "end" not in cleaned):
        raise GraphError(
            400, "ErrorInvalidRequest", "Your request can't be completed. Start and end are required."
        )
    return cleaned


def check_times(start: When, end: When, all_day: bool) -> None:
    """Graph's rules: end after start; an all-day event runs midnight to midnight in one zone, whole days."""
    if end.utc < start.utc:
        raise validation_failure()
    if all_day:
        midnight = dt.time(0, 0)
        if start.local.time() != midnight or end.local.time() != midnight or start.zone_name != end.zone_name:
            raise validation_failure()
        if end.local - start.local < dt.timedelta(days=1):
            raise validation_failure()


def location_doc(value: Any) -> tuple[Json, list[Json]]:
    """``location`` and ``locations`` as Graph returns them for a location given as e.g. ``{displayName}``."""
    if not isinstance(value, Mapping) or not value.get("displayName"):
        empty: Json = {"displayName": "", "locationType": "default", "uniqueIdType": "unknown"}
        empty.update({"address": {}, "coordinates": {}})
        return empty, []
    name = str(value["displayName"])
    doc: Json = {"displayName": name, "locationType": value.get("locationType", "default")}
    doc["uniqueId"] = value.get("uniqueId", name)
    doc["uniqueIdType"] = value.get("uniqueIdType", "private")
    for extra in ("address", "coordinates", "locationEmailAddress", "locationUri"):
        if extra in value:
            doc[extra] = copy.deepcopy(value[extra])
    entry: Json = {"displayName": name, "locationType": doc["locationType"], "uniqueIdType": "unknown"}
    for extra in ("address", "coordinates"):
        if extra in value:
            entry[extra] = copy.deepcopy(value[extra])
    return doc, [entry]


def wrap_html(content: str, content_type: str) -> str:
    """Outlook stores bodies as HTML documents: text is escaped, fragments get an html/head/body envelope."""
    inner = html.escape(content).replace("\n", "<br>\r\n") if content_type == "text" else content
    if "<html" in inner.lower():
        return inner
    return (
        '<html>\r\n<head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\r\n'
        f"</head>\r\n<body>\r\n{inner}\r\n</body>\r\n</html>\r\n"
    )


def teams_join_url(record_key: bytes, tenant_id: str, organizer_id: str) -> str:
    digest = hashlib.sha256(record_key).hexdigest()
    thread = f"19:meeting_{digest[:48]}@thread.v2"
    context = '{"Tid":"%s","Oid":"%s"}' % (tenant_id, organizer_id)  # noqa: UP031 - JSON braces
    return (
        "https://teams.microsoft.com/l/meetup-join/"
        + urllib.parse.quote(thread, safe="")
        + "/0?context="
        + urllib.parse.quote(context, safe="")
    )


def online_meeting_doc(join_url: str) -> Json:
    digits = str(int(hashlib.sha256(join_url.encode()).hexdigest()[:12], 16))[:9]
    # The toll number is the documented example's; conference ids are 9 digits as in the docs.
    return {"joinUrl": join_url, "conferenceId": digits, "tollNumber": "+1 425 555 0123"}


def teams_block(join_url: str) -> str:
    """The Teams invitation Outlook appends to the body of an online meeting (shortened)."""
    rule = '<div style="width:100%">' + "_" * 80 + "</div>"
    link = f'<a class="me-email-headline" href="{html.escape(join_url)}">Join the meeting now</a>'
    return (
        f'{rule}<div class="me-email-text" lang="en-US"><div style="margin-bottom:24px">'
        '<span style="font-size:24px;font-weight:700">Microsoft Teams meeting</span></div>'
        f"<div>{link}</div></div>{rule}"
    )


def ical_uid(record_key: bytes, instance_date: dt.date | None = None) -> str:
    """Outlook's GlobalObjectId form; occurrences carry their date, so each has its own iCalUId."""
    date_part = (
        f"{instance_date.year:04X}{instance_date.month:02X}{instance_date.day:02X}"
        if instance_date
        else "00000000"
    )
    return (
        "040000008200E00074C5B7101A82E008"
        + date_part
        + hashlib.sha256(b"t" + record_key).hexdigest()[:16].upper()
        + "0000000000000000"
        + "10000000"
        + hashlib.sha256(b"u" + record_key).hexdigest()[:32].upper()
    )


# --- output -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderOptions:
    """What shapes an event document: the zone for start/end, the id form, the body format."""

    zone_name: str | None = None
    body_type: str | None = None

    def when(self, value: When, all_day: bool) -> Json:
        label = self.zone_name or "UTC"
        if all_day:  # all-day events are midnight to midnight in every zone (by design, Graph says)
            return {"dateTime": fmt_local(value.local), "timeZone": label}
        zone = timezones.resolve(label)
        return {"dateTime": fmt_local(timezones.to_local(value.utc, zone)), "timeZone": label}


def render_body(body: Mapping[str, Any] | None, body_type: str | None) -> tuple[Json, str]:
    content_type = str((body or {}).get("contentType", "html"))
    content = str((body or {}).get("content", ""))
    html_content = wrap_html(content, content_type) if content else ""
    preview = body_preview(html_content, "html") if html_content else ""
    if body_type == "text":
        return {"contentType": "text", "content": html_to_text(html_content)}, preview
    return {"contentType": "html", "content": html_content}, preview


def render_event(
    props: Mapping[str, Any],
    *,
    event_id: str,
    event_type: str,
    change_key: str,
    created: dt.datetime,
    modified: dt.datetime,
    start: When,
    end: When,
    ical: str,
    organizer: Json,
    is_organizer: bool,
    options: RenderOptions,
    series_master_id: str | None = None,
    recurrence: Json | None = None,
    original_start: dt.datetime | None = None,
    join_url: str | None = None,
    is_cancelled: bool = False,
    response: Json | None = None,
    web_link_base: str = "https://outlook.office365.com/owa/",
) -> Json:
    all_day = bool(props.get("isAllDay"))
    body, preview = render_body(props.get("body"), options.body_type)
    location, locations = location_doc(props.get("location"))
    if props.get("locations"):
        locations = copy.deepcopy(props["locations"])
    online = bool(props.get("isOnlineMeeting"))
    quoted_id = urllib.parse.quote(event_id, safe="")
    doc: Json = {
        "@odata.etag": etag(change_key),
        "id": event_id,
        "createdDateTime": fmt_utc(created),
        "lastModifiedDateTime": fmt_utc(modified),
        "changeKey": change_key,
        "categories": list(props.get("categories") or []),
        "transactionId": props.get("transactionId"),
        "originalStartTimeZone": start.zone_name,
        "originalEndTimeZone": end.zone_name,
        "iCalUId": ical,
        "reminderMinutesBeforeStart": props.get("reminderMinutesBeforeStart", 15),
        "isReminderOn": props.get("isReminderOn", True),
        "hasAttachments": False,
        "subject": props.get("subject") or "",
        "bodyPreview": preview,
        "importance": props.get("importance", "normal"),
        "sensitivity": props.get("sensitivity", "normal"),
        "isAllDay": all_day,
        "isCancelled": is_cancelled,
        "isOrganizer": is_organizer,
        "responseRequested": props.get("responseRequested", True),
        "seriesMasterId": series_master_id,
        "showAs": props.get("showAs", "busy"),
        "type": event_type,
        "webLink": f"{web_link_base}?itemid={quoted_id}&exvsurl=1&path=/calendar/item",
        "onlineMeetingUrl": None,
        "isOnlineMeeting": online,
        "onlineMeetingProvider": props.get("onlineMeetingProvider", "unknown") if online else "unknown",
        "allowNewTimeProposals": props.get("allowNewTimeProposals", True),
        "isDraft": props.get("isDraft", False),
        "hideAttendees": props.get("hideAttendees", False),
        "responseStatus": copy.deepcopy(response)
        or {"response": "organizer" if is_organizer else "none", "time": ZERO_TIME},
        "body": body,
        "start": options.when(start, all_day),
        "end": options.when(end, all_day),
        "location": location,
        "locations": locations,
        "recurrence": recurrence,
        "attendees": copy.deepcopy(props.get("attendees") or []),
        "organizer": {"emailAddress": dict(organizer["emailAddress"])},
        "onlineMeeting": online_meeting_doc(join_url) if online and join_url else None,
    }
    if original_start is not None:
        doc["originalStart"] = fmt_utc(original_start).replace(".0000000Z", "Z")
    return doc


def select(doc: Json, fields: list[str] | None) -> Json:
    if not fields:
        return doc
    keep = {name.strip() for name in fields} | {"id"}
    return {k: v for k, v in doc.items() if k in keep or k.startswith("@odata.")}
