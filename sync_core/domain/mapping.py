"""Graph event JSON ⇄ Activity ⇄ CRM activity JSON, and the classification of Outlook events (pure).

Outlook side (this module): ``activity_from_graph`` reads an event as Graph returns it; ``graph_event_body``
writes the body of a create (``POST /events``) or an update (``PATCH``, only the fields given).
CRM side (``crm_mapping``, re-exported here): ``activity_from_crm`` / ``crm_record_from_json`` validate and
read the contract's Activity JSON, ``crm_activity_json`` writes a create or a PATCH body.

Decisions the design leaves open, made here:

- Bodies. The service asks Graph for text bodies (``GRAPH_PREFER``: ``outlook.body-content-type="text"``)
  and writes text. An HTML body that arrives anyway is turned into text (``html_to_text``). Either way the
  description is normalized (``model.normalize_description``), so a body that changed only in its
  formatting (CRLF, trailing spaces, the Teams invitation block Outlook appends) is not a change.
- Time zones. Graph speaks Windows names on the wire (``timezones.windows_name``); the event's own zone is
  ``originalStartTimeZone`` (delta answers in UTC when asked to, which says nothing about the event's zone).
  All-day events are written midnight to midnight in one zone with ``isAllDay: true``, as Graph requires.
- Attendees. Outlook gets a CRM user always, a contact, lead or external person only with
  ``invite_crm_contacts``; nobody is added to an event that has already ended (no invitation storm for
  activities logged after the fact); someone Outlook already has stays. ``attendees_for_outlook`` is the
  one rule, used by the planner and by ``graph_event_body`` alike.
- Organizer. Only a meeting someone else organises (``isOrganizer: false``) carries an organizer to the CRM.
"""

from __future__ import annotations

import html.parser
import re
from collections.abc import Collection, Mapping
from dataclasses import replace
from datetime import date, datetime
from typing import Any, TypeVar

from sync_core.config import DescriptionPolicy
from sync_core.domain.crm_mapping import (
    CrmRecord,
    activity_from_crm,
    crm_activity_json,
    crm_record_from_json,
    people_from_crm_json,
)
from sync_core.domain.graph_payloads import GraphEvent, GraphRecurrence, RangeType, parse_event
from sync_core.domain.model import (
    ALL_FIELDS,
    Activity,
    ActivityType,
    AllDay,
    Attendee,
    AttendeeKind,
    AttendeeResponse,
    AttendeeType,
    CrmLinks,
    Field,
    Organizer,
    PeopleDirectory,
    Recurrence,
    RecurrencePattern,
    RecurrenceRange,
    Timed,
    normalize_description,
)
from sync_core.domain.timezones import CUSTOM_ZONE, UnknownTimeZoneError, iana_name, windows_name, zone
from sync_core.errors import InvalidRequestError

__all__ = [
    "GRAPH_PREFER",
    "CrmRecord",
    "activity_for_crm",
    "activity_from_crm",
    "activity_from_graph",
    "attendees_for_outlook",
    "classify",
    "crm_activity_json",
    "crm_record_from_json",
    "graph_event_body",
    "graph_fields_present",
    "graph_recurrence",
    "html_to_text",
    "may_invite",
    "people_from_crm_json",
    "with_people",
]

Json = dict[str, Any]
_E = TypeVar("_E", AttendeeType, AttendeeResponse)
_SPACES = re.compile(r"\s+")

# The Prefer headers every Graph event read should carry: immutable ids (stable across folder moves), text
# bodies (what the CRM holds), UTC times (zones are read from originalStartTimeZone).
GRAPH_PREFER: tuple[str, ...] = (
    'IdType="ImmutableId"',
    'outlook.body-content-type="text"',
    'outlook.timezone="UTC"',
)
TEAMS_PROVIDER = "teamsForBusiness"
_PRIVATE_SENSITIVITIES = frozenset({"private", "confidential"})


# --- Graph → Activity ---------------------------------------------------------------------------------------


def activity_from_graph(event: GraphEvent | Mapping[str, Any]) -> Activity:
    """The Activity an Outlook event holds. Raises ``InvalidRequestError`` when it has no start or end.

    Properties a shortened payload leaves out read as their defaults; ``graph_fields_present`` says which
    fields the payload really carried, so the planner does not take a missing property for a cleared one.
    """
    parsed = event if isinstance(event, GraphEvent) else parse_event(event)
    raw = parsed.raw
    if parsed.start is None or parsed.end is None:
        raise InvalidRequestError(
            "the event has no start or end", {"start": "is required", "end": "is required"}
        )
    return Activity(
        subject=parsed.subject or "",
        when=_graph_when(parsed),
        description=_graph_description(raw.get("body")),
        location=_graph_location(raw.get("location")),
        is_private=parsed.sensitivity in _PRIVATE_SENSITIVITIES,
        attendees=_graph_attendees(raw.get("attendees")),
        organizer=_graph_organizer(raw),
        is_online_meeting=raw.get("isOnlineMeeting") is True,
        join_url=_graph_join_url(raw),
        created_at=_graph_instant(raw.get("createdDateTime")),
        modified_at=parsed.last_modified,
        recurrence=_recurrence_from_graph(parsed.recurrence, _event_zone(parsed)),
    )


def graph_fields_present(event: GraphEvent | Mapping[str, Any]) -> frozenset[Field]:
    """The fields whose properties the payload carries (delta items carry at least the changed ones)."""
    raw = event.raw if isinstance(event, GraphEvent) else event
    present = {
        Field.SUBJECT: "subject" in raw,
        Field.DESCRIPTION: "body" in raw,
        Field.START_END: "start" in raw and "end" in raw,
        Field.LOCATION: "location" in raw,
        Field.PRIVACY: "sensitivity" in raw,
        Field.ATTENDEES: "attendees" in raw,
        Field.ONLINE_MEETING: "isOnlineMeeting" in raw,
        Field.JOIN_URL: "isOnlineMeeting" in raw or "onlineMeeting" in raw,
        Field.ORGANIZER: "isOrganizer" in raw or "organizer" in raw,
    }
    return frozenset(field_ for field_, here in present.items() if here)


def _graph_when(event: GraphEvent) -> Timed | AllDay:
    assert event.start is not None
    assert event.end is not None
    event_zone = _event_zone(event)
    if event.is_all_day:
        # All-day events float: the wall-clock dates are the event, whatever zone Graph answered in.
        return AllDay(_wall_date(event.raw.get("start")), _wall_date(event.raw.get("end")), event_zone)
    return Timed(event.start, event.end, event_zone or "UTC")


def _event_zone(event: GraphEvent) -> str | None:
    for candidate in (event.raw.get("originalStartTimeZone"), event.start_time_zone):
        if isinstance(candidate, str) and candidate and candidate != CUSTOM_ZONE:
            try:
                return iana_name(candidate)
            except UnknownTimeZoneError:
                continue
    return None


def _wall_date(value: object) -> date:
    raw = value.get("dateTime") if isinstance(value, Mapping) else None
    if not isinstance(raw, str):
        raise InvalidRequestError("the event has no start or end", {"start": "is required"})
    return datetime.fromisoformat(raw).date()


def _graph_description(body: object) -> str | None:
    if not isinstance(body, Mapping):
        return None
    content = body.get("content")
    if not isinstance(content, str):
        return None
    if str(body.get("contentType", "text")).lower() == "html":
        content = html_to_text(content)
    return normalize_description(content)


def _graph_location(location: object) -> str | None:
    name = location.get("displayName") if isinstance(location, Mapping) else None
    return name.strip() or None if isinstance(name, str) else None


def _graph_attendees(attendees: object) -> tuple[Attendee, ...]:
    if not isinstance(attendees, list):
        return ()
    seen: dict[str, Attendee] = {}
    for item in attendees:
        address = item.get("emailAddress") if isinstance(item, Mapping) else None
        email = address.get("address") if isinstance(address, Mapping) else None
        if not isinstance(email, str) or "@" not in email:
            continue  # a room or a group without an address: nothing to sync it by
        assert isinstance(address, Mapping)
        assert isinstance(item, Mapping)
        name = address.get("name")
        status = item.get("status")
        attendee = Attendee(
            email=email,
            name=name if isinstance(name, str) and name else None,
            type=_enum_or(AttendeeType, item.get("type"), AttendeeType.REQUIRED),
            response=_enum_or(
                AttendeeResponse,
                status.get("response") if isinstance(status, Mapping) else None,
                AttendeeResponse.NONE,
            ),
        )
        seen.setdefault(attendee.email, attendee)
    return tuple(seen.values())


def _graph_organizer(raw: Mapping[str, Any]) -> Organizer | None:
    if raw.get("isOrganizer", True) is not False:
        return None
    address = (
        raw.get("organizer", {}).get("emailAddress") if isinstance(raw.get("organizer"), Mapping) else None
    )
    email = address.get("address") if isinstance(address, Mapping) else None
    if not isinstance(email, str) or "@" not in email:
        return None
    assert isinstance(address, Mapping)
    name = address.get("name")
    return Organizer(email, name if isinstance(name, str) and name else None)


def _graph_join_url(raw: Mapping[str, Any]) -> str | None:
    if raw.get("isOnlineMeeting") is not True:
        return None
    meeting = raw.get("onlineMeeting")
    url = meeting.get("joinUrl") if isinstance(meeting, Mapping) else None
    if not isinstance(url, str):
        url = raw.get("onlineMeetingUrl")
    return url if isinstance(url, str) and url.startswith("https://") else None


def _graph_instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone("UTC"))


def _recurrence_from_graph(recurrence: GraphRecurrence | None, event_zone: str | None) -> Recurrence | None:
    if recurrence is None:
        return None
    pattern, span = recurrence.pattern, recurrence.range
    start_date = span.start_date
    if start_date is None:
        return None
    range_zone = span.recurrence_time_zone or event_zone
    try:
        iana_range_zone = iana_name(range_zone) if range_zone else None
    except UnknownTimeZoneError:
        iana_range_zone = None
    return Recurrence(
        RecurrencePattern(
            type=pattern.type,
            interval=pattern.interval,
            days_of_week=pattern.days_of_week,
            first_day_of_week=pattern.first_day_of_week,
            index=pattern.index,
            day_of_month=pattern.day_of_month or None,
            month=pattern.month or None,
        ),
        RecurrenceRange(
            type=span.type,
            start_date=start_date,
            end_date=span.end_date if span.type is RangeType.END_DATE else None,
            number_of_occurrences=span.number_of_occurrences or None
            if span.type is RangeType.NUMBERED
            else None,
            recurrence_time_zone=iana_range_zone,
        ),
    )


def _enum_or(enum_type: type[_E], value: object, default: _E) -> _E:
    try:
        return enum_type(value)
    except ValueError:
        return default


class _TextExtractor(html.parser.HTMLParser):
    _BLOCKS = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"}
    )
    _HIDDEN = frozenset({"head", "style", "script", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCKS and tag != "br":
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(_SPACES.sub(" ", data))


def html_to_text(content: str) -> str:
    """The text an HTML body shows: block elements become line breaks, markup and head content go."""
    extractor = _TextExtractor()
    extractor.feed(content)
    extractor.close()
    lines = "".join(extractor.parts).split("\n")
    return "\n".join(line.strip() for line in lines)


# --- Activity → Graph ---------------------------------------------------------------------------------------


def may_invite(attendee: Attendee, *, invite_crm_contacts: bool) -> bool:
    """Whether the service may add ``attendee`` to an Outlook event: CRM users always, anyone else (contacts,
    leads, external people) only when the tenant lets the service invite CRM contacts."""
    return attendee.kind is AttendeeKind.USER or invite_crm_contacts


def attendees_for_outlook(
    attendees: Collection[Attendee],
    *,
    already_invited: Collection[str],
    invite_crm_contacts: bool,
    ended: bool,
) -> tuple[Attendee, ...] | None:
    """The attendee list Outlook should get for the CRM's ``attendees``, or None: leave Outlook's alone.

    Someone Outlook already has (``already_invited``, emails) stays; anyone new is added only when
    ``may_invite`` allows it. An event that has ended never gets an attendee change: None.
    """
    if ended:
        return None
    invited = {email.lower() for email in already_invited}
    return tuple(
        attendee
        for attendee in attendees
        if attendee.email in invited or may_invite(attendee, invite_crm_contacts=invite_crm_contacts)
    )


def graph_event_body(
    activity: Activity,
    *,
    for_create: bool,
    now: datetime,
    description_policy: DescriptionPolicy,
    invite_crm_contacts: bool,
    fields: Collection[Field] = ALL_FIELDS,
    transaction_id: str | None = None,
    already_invited: Collection[str] = (),
    default_time_zone: str = "UTC",
    ended: bool | None = None,
) -> Json:
    """The JSON body to create (``for_create``) or update an Outlook event from ``activity``.

    An update (PATCH) carries only ``fields``; a create carries every field we write and, when given, the
    ``transactionId`` that makes a retried create return the first event instead of a second one. Fields
    Graph does not let us write (``Field.m365_owned``) are never sent. With ``DescriptionPolicy.ON_CREATE``
    an update never carries the body. Attendees follow ``attendees_for_outlook``; ``already_invited`` are
    the emails the event already has (for an update). ``ended`` says whether the event is over (None:
    ``activity.has_ended(now)``; a series is over only after its last occurrence, which
    ``series_to_graph`` works out). The series fields are never written here: a create of a series carries
    its ``recurrence``, everything else about series is ``series_to_graph``'s.
    """
    wanted = set(ALL_FIELDS if for_create else fields)
    body: Json = {}
    if Field.SUBJECT in wanted:
        body["subject"] = activity.subject
    send_description = description_policy is DescriptionPolicy.ALWAYS or for_create
    if (
        Field.DESCRIPTION in wanted
        and send_description
        and (activity.description is not None or not for_create)
    ):
        body["body"] = {"contentType": "text", "content": activity.description or ""}
    if Field.START_END in wanted:
        body.update(_graph_times(activity, default_time_zone))
    if Field.LOCATION in wanted and (activity.location is not None or not for_create):
        body["location"] = {"displayName": activity.location or ""}
    if Field.ATTENDEES in wanted:
        attendees = attendees_for_outlook(
            activity.attendees,
            already_invited=() if for_create else already_invited,
            invite_crm_contacts=invite_crm_contacts,
            ended=activity.has_ended(now) if ended is None else ended,
        )
        if attendees is not None and (attendees or not for_create):
            body["attendees"] = [_graph_attendee(attendee) for attendee in attendees]
    if Field.PRIVACY in wanted and (activity.is_private or not for_create):
        body["sensitivity"] = "private" if activity.is_private else "normal"
    if Field.ONLINE_MEETING in wanted and (activity.is_online_meeting or not for_create):
        body["isOnlineMeeting"] = activity.is_online_meeting
        if activity.is_online_meeting:
            body["onlineMeetingProvider"] = TEAMS_PROVIDER
    if for_create and activity.recurrence is not None:
        body["recurrence"] = graph_recurrence(activity.recurrence)
    if for_create and transaction_id is not None:
        body["transactionId"] = transaction_id
    return body


def _graph_times(activity: Activity, default_time_zone: str) -> Json:
    when = activity.when
    if isinstance(when, AllDay):
        wire_zone = windows_name(iana_name(when.time_zone or default_time_zone))
        return {
            "start": {"dateTime": f"{when.start.isoformat()}T00:00:00", "timeZone": wire_zone},
            "end": {"dateTime": f"{when.end.isoformat()}T00:00:00", "timeZone": wire_zone},
            "isAllDay": True,
        }
    event_zone = zone(when.time_zone)
    wire_zone = windows_name(when.time_zone)
    return {
        "start": {"dateTime": _wall_clock(when.start.astimezone(event_zone)), "timeZone": wire_zone},
        "end": {"dateTime": _wall_clock(when.end.astimezone(event_zone)), "timeZone": wire_zone},
        "isAllDay": False,
    }


def _wall_clock(local: datetime) -> str:
    naive = local.replace(tzinfo=None)
    if naive.microsecond:
        return naive.isoformat(timespec="microseconds") + "0"  # Graph's seven fraction digits
    return naive.isoformat(timespec="seconds")


def _graph_attendee(attendee: Attendee) -> Json:
    address: Json = {"address": attendee.email}
    if attendee.name:
        address["name"] = attendee.name
    return {"emailAddress": address, "type": attendee.type.value}


def graph_recurrence(recurrence: Recurrence) -> Json:
    """Graph's ``patternedRecurrence`` for ``recurrence`` (the zone as a Windows name where one exists)."""
    pattern, span = recurrence.pattern, recurrence.range
    graph_pattern: Json = {"type": pattern.type.value, "interval": pattern.interval}
    if pattern.days_of_week:
        graph_pattern["daysOfWeek"] = list(pattern.days_of_week)
    if pattern.first_day_of_week != "sunday":
        graph_pattern["firstDayOfWeek"] = pattern.first_day_of_week
    if pattern.type.value.startswith("relative"):
        graph_pattern["index"] = pattern.index
    if pattern.day_of_month is not None:
        graph_pattern["dayOfMonth"] = pattern.day_of_month
    if pattern.month is not None:
        graph_pattern["month"] = pattern.month
    graph_range: Json = {"type": span.type.value, "startDate": span.start_date.isoformat()}
    if span.end_date is not None:
        graph_range["endDate"] = span.end_date.isoformat()
    if span.number_of_occurrences is not None:
        graph_range["numberOfOccurrences"] = span.number_of_occurrences
    if span.recurrence_time_zone is not None:
        graph_range["recurrenceTimeZone"] = windows_name(span.recurrence_time_zone)
    return {"pattern": graph_pattern, "range": graph_range}


# --- people and classification ------------------------------------------------------------------------------


def with_people(activity: Activity, people: PeopleDirectory) -> Activity:
    """``activity`` with each attendee's kind and CRM id as the CRM knows them (unknown people: external)."""
    attendees = []
    for attendee in activity.attendees:
        person = people.find(attendee.email)
        attendees.append(
            Attendee(
                email=attendee.email,
                name=attendee.name or (person.name if person else None),
                kind=person.kind if person else AttendeeKind.EXTERNAL,
                type=attendee.type,
                response=attendee.response,
                crm_id=person.crm_id if person else None,
            )
        )
    return replace(activity, attendees=tuple(attendees))


def classify(activity: Activity, people: PeopleDirectory) -> ActivityType:
    """Design §5: an event from Outlook is a ``meeting`` when an attendee is a CRM contact that belongs to an
    account, else a ``personal_appointment``. Decided once, at creation; later updates never change it."""
    for attendee in activity.attendees:
        person = people.find(attendee.email)
        if person is not None and person.kind is AttendeeKind.CONTACT and person.account_id is not None:
            return ActivityType.MEETING
    return ActivityType.PERSONAL_APPOINTMENT


def activity_for_crm(activity: Activity, *, people: PeopleDirectory, owner_crm_user_id: str) -> Activity:
    """An Outlook event made ready to become a new CRM activity: attendees known to the CRM, the type
    decided by ``classify``, the owner set, and ``links`` pointing at the contacts, leads and account met."""
    known = with_people(activity, people)
    contacts = [people.find(a.email) for a in known.attendees if a.kind is AttendeeKind.CONTACT]
    account_id = next((person.account_id for person in contacts if person and person.account_id), None)
    return replace(
        known,
        activity_type=classify(activity, people),
        owner_crm_user_id=owner_crm_user_id,
        crm_links=CrmLinks(
            account_id=account_id,
            contact_ids=tuple(
                dict.fromkeys(
                    a.crm_id for a in known.attendees if a.kind is AttendeeKind.CONTACT and a.crm_id
                )
            ),
            lead_ids=tuple(
                dict.fromkeys(a.crm_id for a in known.attendees if a.kind is AttendeeKind.LEAD and a.crm_id)
            ),
        ),
    )
