"""The CRM's Activity JSON (docs/crm-contract.md §2) ⇄ ``Activity``, with the contract's validation (pure).

``crm_record_from_json`` backs the inbound ``PUT /api/users/{id}/activities/{crmId}``: every problem is
collected and raised as one ``InvalidRequestError`` whose ``field_errors`` map a contract field path
(``attendees.2.email``, ``recurrence.pattern.daysOfWeek``, ``(body)``) to a message. Shapes, types, enums
and unknown fields are checked by strict pydantic models; the rules between fields (times, zones, unique
emails, what recurrence needs) by ``_rule_errors``; once the Activity is built, every override's and
cancellation's ``originalStart`` must be an occurrence of the series (``_occurrence_errors``). References
(does this contact exist?) are the CRM's to check; nothing here does I/O.

Series (docs/crm-contract.md §2): ``recurrence`` ⇄ ``Activity.recurrence``, ``occurrenceOverrides`` ⇄
``occurrence_overrides``, ``cancelledOccurrences`` ⇄ ``cancelled_occurrences``. Instants are written in the
activity's ``timeZone`` (``2026-01-12T10:00:00+01:00``), whatever zone they were read in.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from sync_core.domain.graph_payloads import PatternType, RangeType
from sync_core.domain.model import (
    Activity,
    ActivityType,
    AllDay,
    Attendee,
    AttendeeKind,
    AttendeeResponse,
    AttendeeType,
    CrmLinks,
    OccurrenceOverride,
    Organizer,
    PeopleDirectory,
    Person,
    Recurrence,
    RecurrencePattern,
    RecurrenceRange,
    Timed,
    normalize_description,
)
from sync_core.domain.model import Field as SyncField
from sync_core.domain.recurrence import are_occurrences
from sync_core.domain.timezones import zone
from sync_core.errors import InvalidRequestError

Json = dict[str, Any]

_ID = r"^[A-Za-z0-9._:@-]{1,128}$"
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_MESSAGES = {  # pydantic's error types in the contract's words (no Python class names in field errors)
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "list_type": "must be an array",
    "string_type": "must be a string",
    "bool_type": "must be a boolean",
    "int_type": "must be an integer",
    "literal_error": "is not one of the allowed values",
    "string_too_long": "is too long",
    "string_too_short": "must not be empty",
    "string_pattern_mismatch": "is not a valid id",
    "too_long": "has too many items",
}
_MODEL = ConfigDict(
    extra="forbid", strict=True, alias_generator=to_camel, validate_by_alias=True, validate_by_name=False
)
_Day = Literal["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]


class _Attendee(BaseModel):
    model_config = _MODEL
    email: str = Field(max_length=320)
    name: str | None = Field(default=None, max_length=255)
    kind: Literal["user", "contact", "lead", "external"]
    type: Literal["required", "optional", "resource"] = "required"
    response: Literal["none", "organizer", "accepted", "tentativelyAccepted", "declined", "notResponded"] = (
        "none"
    )
    crm_id: str | None = Field(default=None, pattern=_ID)


class _Organizer(BaseModel):
    model_config = _MODEL
    email: str = Field(max_length=320)
    name: str | None = Field(default=None, max_length=255)


class _OnlineMeeting(BaseModel):
    model_config = _MODEL
    join_url: str = Field(max_length=2048)


class _Links(BaseModel):
    model_config = _MODEL
    account_id: str | None = Field(default=None, pattern=_ID)
    contact_ids: list[str] = Field(default_factory=list)
    lead_ids: list[str] = Field(default_factory=list)


class _Pattern(BaseModel):
    model_config = _MODEL
    type: Literal["daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly"]
    interval: int = Field(ge=1, le=99)
    days_of_week: list[_Day] = Field(default_factory=list)
    first_day_of_week: _Day = "sunday"
    index: Literal["first", "second", "third", "fourth", "last"] = "first"
    day_of_month: int | None = Field(default=None, ge=1, le=31)
    month: int | None = Field(default=None, ge=1, le=12)


class _Range(BaseModel):
    model_config = _MODEL
    type: Literal["endDate", "noEnd", "numbered"]
    start_date: str
    end_date: str | None = None
    number_of_occurrences: int | None = Field(default=None, ge=1)
    recurrence_time_zone: str | None = None


class _Recurrence(BaseModel):
    model_config = _MODEL
    pattern: _Pattern
    range: _Range


class _Override(BaseModel):
    model_config = _MODEL
    original_start: str
    subject: str | None = Field(default=None, max_length=255)
    description: str | None = Field(default=None, max_length=32_000)
    location: str | None = Field(default=None, max_length=255)
    start: str | None = None
    end: str | None = None
    attendees: list[_Attendee] | None = Field(default=None, max_length=500)


class _PushedActivity(BaseModel):
    """The inbound PUT body; also accepts the full Activity the CRM returns (every field present)."""

    model_config = _MODEL
    crm_id: str = Field(pattern=_ID)
    version: str = Field(min_length=1, max_length=64)
    created_at: str | None = None
    modified_at: str
    owner_crm_user_id: str = Field(pattern=_ID)
    type: Literal["meeting", "personal_appointment", "call", "task"]
    subject: str = Field(max_length=255)
    description: str | None = Field(default=None, max_length=32_000)
    start: str
    end: str
    time_zone: str | None = Field(default=None, min_length=1)
    is_all_day: bool = False
    location: str | None = Field(default=None, max_length=255)
    is_private: bool = False
    attendees: list[_Attendee] = Field(default_factory=list, max_length=500)
    organizer: _Organizer | None = None
    online_meeting: _OnlineMeeting | None = None
    request_online_meeting: bool = False
    links: _Links = Field(default_factory=_Links)
    recurrence: _Recurrence | None = None
    occurrence_overrides: list[_Override] = Field(default_factory=list)
    cancelled_occurrences: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class CrmRecord:
    """A CRM activity with the CRM's own identity: its id and opaque version."""

    crm_id: str
    version: str
    activity: Activity


def crm_record_from_json(body: object) -> CrmRecord:
    """Validate an Activity as the CRM pushes it (or returns it) and read it; ``InvalidRequestError`` with
    field errors when anything is wrong."""
    if not isinstance(body, Mapping):
        raise InvalidRequestError("the activity is invalid", {"(body)": "must be a JSON object"})
    try:
        pushed = _PushedActivity.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequestError("the activity is invalid", _field_errors(exc)) from None
    errors = _rule_errors(pushed)
    if errors:
        raise InvalidRequestError("the activity is invalid", errors)
    activity = _activity(pushed)
    errors = _occurrence_errors(pushed, activity)
    if errors:
        raise InvalidRequestError("the activity is invalid", errors)
    return CrmRecord(pushed.crm_id, pushed.version, activity)


def activity_from_crm(body: object) -> Activity:
    """The Activity a CRM activity JSON holds (validated as ``crm_record_from_json`` does)."""
    return crm_record_from_json(body).activity


def _field_errors(exc: ValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"]) or "(body)"
        errors.setdefault(path, _MESSAGES.get(error["type"], error["msg"]))
    return errors


# --- rules beyond the shape ---------------------------------------------------------------------------------


def _rule_errors(pushed: _PushedActivity) -> dict[str, str]:
    errors: dict[str, str] = {}
    for name, text in (("createdAt", pushed.created_at), ("modifiedAt", pushed.modified_at)):
        if text is not None and _parse_date_time(text) is None:
            errors[name] = "must be an RFC 3339 date-time with offset"
    errors.update(_time_errors(pushed))
    errors.update(_attendee_errors(pushed.attendees, "attendees"))
    if pushed.organizer is not None and not _EMAIL.match(pushed.organizer.email):
        errors["organizer.email"] = "is not an email address"
    if pushed.online_meeting is not None and not pushed.online_meeting.join_url.startswith("https://"):
        errors["onlineMeeting.joinUrl"] = "must be an https URL"
    for name, ids in (
        ("links.contactIds", pushed.links.contact_ids),
        ("links.leadIds", pushed.links.lead_ids),
    ):
        for index, item in enumerate(ids):
            if not re.match(_ID, item):
                errors[f"{name}.{index}"] = "is not a valid id"
    errors.update(_recurrence_errors(pushed))
    return errors


def _time_errors(pushed: _PushedActivity) -> dict[str, str]:
    errors: dict[str, str] = {}
    if pushed.is_all_day:
        start_day, end_day = _parse_date(pushed.start), _parse_date(pushed.end)
        for name, parsed in (("start", start_day), ("end", end_day)):
            if parsed is None:
                errors[name] = "must be a date (YYYY-MM-DD) for an all-day activity"
        if start_day is not None and end_day is not None and end_day <= start_day:
            errors["end"] = "must be after start (the end date is exclusive)"
        if pushed.time_zone is not None and not _is_time_zone(pushed.time_zone):
            errors["timeZone"] = "must be an IANA time zone name"
        return errors
    start_at, end_at = _parse_date_time(pushed.start), _parse_date_time(pushed.end)
    for name, parsed_at in (("start", start_at), ("end", end_at)):
        if parsed_at is None:
            errors[name] = "must be an RFC 3339 date-time with offset"
    if start_at is not None and end_at is not None and end_at < start_at:
        errors["end"] = "must not be before start"
    if pushed.time_zone is None:
        errors["timeZone"] = "is required for a timed activity"
    elif not _is_time_zone(pushed.time_zone):
        errors["timeZone"] = "must be an IANA time zone name"
    return errors


def _attendee_errors(attendees: Sequence[_Attendee], prefix: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    seen: set[str] = set()
    for index, attendee in enumerate(attendees):
        path = f"{prefix}.{index}"
        if not _EMAIL.match(attendee.email):
            errors[f"{path}.email"] = "is not an email address"
        elif attendee.email.casefold() in seen:
            errors[f"{path}.email"] = "appears twice in the attendees"
        seen.add(attendee.email.casefold())
        if attendee.kind == "external" and attendee.crm_id is not None:
            errors[f"{path}.crmId"] = "must be null for an external attendee"
    return errors


def _recurrence_errors(pushed: _PushedActivity) -> dict[str, str]:
    errors: dict[str, str] = {}
    recurrence = pushed.recurrence
    if recurrence is None:
        if pushed.occurrence_overrides:
            errors["occurrenceOverrides"] = "must be empty when recurrence is null"
        if pushed.cancelled_occurrences:
            errors["cancelledOccurrences"] = "must be empty when recurrence is null"
        return errors
    pattern, span = recurrence.pattern, recurrence.range
    needs = {
        "weekly": ("days_of_week",),
        "absoluteMonthly": ("day_of_month",),
        "relativeMonthly": ("days_of_week",),
        "absoluteYearly": ("day_of_month", "month"),
        "relativeYearly": ("days_of_week", "month"),
    }
    for name in needs.get(pattern.type, ()):
        if getattr(pattern, name) in (None, []):
            errors[f"recurrence.pattern.{to_camel(name)}"] = f"is required for {pattern.type} recurrence"
    if len(set(pattern.days_of_week)) != len(pattern.days_of_week):
        errors["recurrence.pattern.daysOfWeek"] = "must not name a day twice"
    if span.recurrence_time_zone is not None and not _is_time_zone(span.recurrence_time_zone):
        errors["recurrence.range.recurrenceTimeZone"] = "must be an IANA time zone name"
    start_date = _parse_date(span.start_date)
    if start_date is None:
        errors["recurrence.range.startDate"] = "must be a date (YYYY-MM-DD)"
    elif not _starts_on(pushed, start_date):
        errors["recurrence.range.startDate"] = (
            "must be the date the activity starts (in the series' time zone)"
        )
    end_date = _parse_date(span.end_date) if span.end_date is not None else None
    if span.end_date is not None and end_date is None:
        errors["recurrence.range.endDate"] = "must be a date (YYYY-MM-DD)"
    if span.type == "endDate":
        if span.end_date is None:
            errors["recurrence.range.endDate"] = "is required (a date) for an endDate range"
        elif start_date is not None and end_date is not None and end_date < start_date:
            errors["recurrence.range.endDate"] = "must not be before startDate"
    if span.type == "numbered" and span.number_of_occurrences is None:
        errors["recurrence.range.numberOfOccurrences"] = "is required for a numbered range"
    errors.update(_occurrence_list_errors(pushed))
    return errors


def _occurrence_list_errors(pushed: _PushedActivity) -> dict[str, str]:
    errors: dict[str, str] = {}
    parse = _parse_date if pushed.is_all_day else _parse_date_time
    expected = "a date (YYYY-MM-DD)" if pushed.is_all_day else "an RFC 3339 date-time with offset"
    originals: set[date] = set()  # parsed, so one instant written with two offsets is one original start
    for index, override in enumerate(pushed.occurrence_overrides):
        path = f"occurrenceOverrides.{index}"
        original = parse(override.original_start)
        if original is None:
            errors[f"{path}.originalStart"] = f"must be {expected}"
        elif original in originals:
            errors[f"{path}.originalStart"] = "appears twice"
        else:
            originals.add(original)
        if (override.start is None) != (override.end is None):
            errors[f"{path}.start"] = "start and end come together"
        moved = [parse(text) if text is not None else None for text in (override.start, override.end)]
        for name, text, parsed in (("start", override.start, moved[0]), ("end", override.end, moved[1])):
            if text is not None and parsed is None:
                errors[f"{path}.{name}"] = f"must be {expected}"
        errors.update(_moved_errors(moved[0], moved[1], f"{path}.end", all_day=pushed.is_all_day))
        if override.attendees is not None:
            errors.update(_attendee_errors(override.attendees, f"{path}.attendees"))
    cancelled: set[date] = set()
    for index, text in enumerate(pushed.cancelled_occurrences):
        moment = parse(text)
        if moment is None:
            errors[f"cancelledOccurrences.{index}"] = f"must be {expected}"
        elif moment in cancelled:
            errors[f"cancelledOccurrences.{index}"] = "appears twice"
        elif moment in originals:
            errors[f"cancelledOccurrences.{index}"] = "is also in occurrenceOverrides"
        if moment is not None:
            cancelled.add(moment)
    return errors


def _moved_errors(start: date | None, end: date | None, path: str, *, all_day: bool) -> dict[str, str]:
    if start is None or end is None:
        return {}
    if all_day and end <= start:
        return {path: "must be after start (the end date is exclusive)"}
    if not all_day and end < start:
        return {path: "must not be before start"}
    return {}


def _starts_on(pushed: _PushedActivity, start_date: date) -> bool:
    """Whether the activity starts on ``start_date`` in the series' zone (Graph refuses a series whose
    ``range.startDate`` is not the date of its start)."""
    assert pushed.recurrence is not None
    if pushed.is_all_day:
        return _parse_date(pushed.start) in (None, start_date)
    start_at = _parse_date_time(pushed.start)
    zone_name = pushed.recurrence.range.recurrence_time_zone or pushed.time_zone
    if start_at is None or zone_name is None or not _is_time_zone(zone_name):
        return True  # the start or the zone has its own error
    return start_at.astimezone(zone(zone_name)).date() == start_date


def _occurrence_errors(pushed: _PushedActivity, activity: Activity) -> dict[str, str]:
    """Every original start must be an occurrence of the series (checked against the built Activity, so by
    the rules the sync expands with, in one walk; indexes are the pushed lists')."""
    if activity.recurrence is None:
        return {}
    paths = [
        f"occurrenceOverrides.{index}.originalStart" for index in range(len(pushed.occurrence_overrides))
    ]
    paths += [f"cancelledOccurrences.{index}" for index in range(len(pushed.cancelled_occurrences))]
    texts = [
        override.original_start for override in pushed.occurrence_overrides
    ] + pushed.cancelled_occurrences
    answers = are_occurrences(activity, [_moment(text, pushed.is_all_day) for text in texts])
    return {
        path: "is not an occurrence of the series"
        for path, answer in zip(paths, answers, strict=True)
        if answer is False
    }


def _parse_date_time(text: str | None) -> datetime | None:
    if text is None or not _DATE_TIME.match(text):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _parse_date(text: str | None) -> date | None:
    if text is None or not _DATE.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _is_time_zone(name: str) -> bool:
    """An IANA zone name (the contract never takes Windows names)."""
    if not name or name.startswith("/") or ".." in name:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


# --- validated JSON → Activity ------------------------------------------------------------------------------


def _activity(pushed: _PushedActivity) -> Activity:
    return Activity(
        subject=pushed.subject,
        when=_when(pushed),
        description=normalize_description(pushed.description),
        location=(pushed.location or "").strip() or None,
        is_private=pushed.is_private,
        attendees=tuple(_attendee(attendee) for attendee in pushed.attendees),
        organizer=Organizer(pushed.organizer.email, pushed.organizer.name) if pushed.organizer else None,
        is_online_meeting=pushed.request_online_meeting,
        join_url=pushed.online_meeting.join_url if pushed.online_meeting else None,
        activity_type=ActivityType(pushed.type),
        owner_crm_user_id=pushed.owner_crm_user_id,
        created_at=_parse_date_time(pushed.created_at),
        modified_at=_parse_date_time(pushed.modified_at),
        crm_links=CrmLinks(
            pushed.links.account_id, tuple(pushed.links.contact_ids), tuple(pushed.links.lead_ids)
        ),
        recurrence=_recurrence(pushed.recurrence) if pushed.recurrence else None,
        occurrence_overrides=tuple(
            _override(override, pushed.is_all_day) for override in pushed.occurrence_overrides
        ),
        cancelled_occurrences=tuple(
            _moment(text, pushed.is_all_day) for text in pushed.cancelled_occurrences
        ),
    )


def _when(pushed: _PushedActivity) -> Timed | AllDay:
    if pushed.is_all_day:
        start_day, end_day = _parse_date(pushed.start), _parse_date(pushed.end)
        assert start_day is not None
        assert end_day is not None
        return AllDay(start_day, end_day, pushed.time_zone)
    start_at, end_at = _parse_date_time(pushed.start), _parse_date_time(pushed.end)
    assert start_at is not None
    assert end_at is not None
    assert pushed.time_zone is not None
    return Timed(start_at, end_at, pushed.time_zone)


def _attendee(attendee: _Attendee) -> Attendee:
    return Attendee(
        email=attendee.email,
        name=attendee.name,
        kind=AttendeeKind(attendee.kind),
        type=AttendeeType(attendee.type),
        response=AttendeeResponse(attendee.response),
        crm_id=attendee.crm_id,
    )


def _recurrence(recurrence: _Recurrence) -> Recurrence:
    pattern, span = recurrence.pattern, recurrence.range
    start_date = _parse_date(span.start_date)
    assert start_date is not None
    return Recurrence(
        RecurrencePattern(
            type=PatternType(pattern.type),
            interval=pattern.interval,
            days_of_week=tuple(pattern.days_of_week),
            first_day_of_week=pattern.first_day_of_week,
            index=pattern.index,
            day_of_month=pattern.day_of_month,
            month=pattern.month,
        ),
        RecurrenceRange(
            type=RangeType(span.type),
            start_date=start_date,
            # A value the range type does not use is ignored, as Graph ignores it.
            end_date=_parse_date(span.end_date) if span.type == "endDate" else None,
            number_of_occurrences=span.number_of_occurrences if span.type == "numbered" else None,
            recurrence_time_zone=span.recurrence_time_zone,
        ),
    )


def _override(override: _Override, all_day: bool) -> OccurrenceOverride:
    return OccurrenceOverride(
        original_start=_moment(override.original_start, all_day),
        subject=override.subject,
        description=override.description,
        location=override.location,
        start=_moment(override.start, all_day) if override.start is not None else None,
        end=_moment(override.end, all_day) if override.end is not None else None,
        attendees=tuple(_attendee(a) for a in override.attendees) if override.attendees is not None else None,
    )


def _moment(text: str, all_day: bool) -> datetime | date:
    parsed = _parse_date(text) if all_day else _parse_date_time(text)
    assert parsed is not None  # validated before
    return parsed


# --- Activity → JSON ----------------------------------------------------------------------------------------


def crm_activity_json(activity: Activity, *, fields: Collection[SyncField] | None = None) -> Json:
    """The body of ``POST /activities`` (``fields`` None) or of a ``PATCH`` carrying only ``fields``.

    PATCH semantics are the contract's: each top-level key sent replaces the stored value wholesale, so a
    field is always sent whole (all of ``start``, ``end``, ``timeZone``, ``isAllDay`` for ``START_END``;
    the full attendee list). ``type`` and ``ownerCrmUserId`` are sent only on create (the type never
    changes after creation; owners change in the CRM). A create sends the series fields only for a series;
    a PATCH sends them when ``fields`` names them (``recurrence: null`` and empty lists for a single item).
    """
    values = _crm_values(activity)
    if fields is not None:
        if any(field_.series_only for field_ in fields):
            values.update(_crm_series_values(activity))
        return {key: values[key] for field_ in fields for key in field_.crm_keys}
    if activity.owner_crm_user_id is None or activity.activity_type is None:
        raise ValueError("a CRM create needs the owner and the activity type")
    body: Json = {
        "ownerCrmUserId": activity.owner_crm_user_id,
        "type": activity.activity_type.value,
        **values,
        "links": {
            "accountId": activity.crm_links.account_id,
            "contactIds": list(activity.crm_links.contact_ids),
            "leadIds": list(activity.crm_links.lead_ids),
        },
    }
    if activity.recurrence is not None:
        body.update(_crm_series_values(activity))
    return body


def _crm_values(activity: Activity) -> Json:
    when = activity.when
    if isinstance(when, AllDay):
        times: Json = {
            "start": when.start.isoformat(),
            "end": when.end.isoformat(),
            "timeZone": when.time_zone,
        }
    else:
        event_zone = zone(when.time_zone)
        times = {
            "start": _rfc3339(when.start.astimezone(event_zone)),
            "end": _rfc3339(when.end.astimezone(event_zone)),
            "timeZone": when.time_zone,
        }
    join_url = activity.join_url if activity.join_url and activity.join_url.startswith("https://") else None
    return {
        "subject": activity.subject[:255],
        "description": activity.description[:32_000] if activity.description is not None else None,
        **times,
        "isAllDay": activity.is_all_day,
        "location": activity.location[:255] if activity.location is not None else None,
        "isPrivate": activity.is_private,
        "attendees": [_crm_attendee(attendee) for attendee in activity.attendees],
        "organizer": (
            {"email": activity.organizer.email, "name": activity.organizer.name}
            if activity.organizer
            else None
        ),
        "onlineMeeting": {"joinUrl": join_url} if join_url else None,
        "requestOnlineMeeting": activity.is_online_meeting,
    }


def _rfc3339(moment: datetime) -> str:
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _crm_attendee(attendee: Attendee) -> Json:
    return {
        "email": attendee.email,
        "name": attendee.name[:255] if attendee.name else None,
        "kind": attendee.kind.value,
        "type": attendee.type.value,
        "response": attendee.response.value,
        "crmId": attendee.crm_id if attendee.kind is not AttendeeKind.EXTERNAL else None,
    }


def _crm_series_values(activity: Activity) -> Json:
    if activity.recurrence is None:
        return {"recurrence": None, "occurrenceOverrides": [], "cancelledOccurrences": []}
    pattern, span = activity.recurrence.pattern, activity.recurrence.range
    when = activity.when
    event_zone = zone(when.time_zone) if isinstance(when, Timed) else None

    def moment(value: datetime | date) -> str:
        if not isinstance(value, datetime):
            return value.isoformat()
        return _rfc3339(value.astimezone(event_zone) if event_zone is not None else value)

    return {
        "recurrence": {
            "pattern": {
                "type": pattern.type.value,
                "interval": pattern.interval,
                "daysOfWeek": list(pattern.days_of_week),
                "firstDayOfWeek": pattern.first_day_of_week,
                "index": pattern.index,
                "dayOfMonth": pattern.day_of_month,
                "month": pattern.month,
            },
            "range": {
                "type": span.type.value,
                "startDate": span.start_date.isoformat(),
                "endDate": span.end_date.isoformat() if span.end_date else None,
                "numberOfOccurrences": span.number_of_occurrences,
                "recurrenceTimeZone": span.recurrence_time_zone,
            },
        },
        "occurrenceOverrides": [
            {
                "originalStart": moment(override.original_start),
                "subject": override.subject,
                "description": override.description,
                "location": override.location,
                "start": moment(override.start) if override.start is not None else None,
                "end": moment(override.end) if override.end is not None else None,
                "attendees": (
                    [_crm_attendee(a) for a in override.attendees] if override.attendees is not None else None
                ),
            }
            for override in activity.occurrence_overrides
        ],
        "cancelledOccurrences": [moment(value) for value in activity.cancelled_occurrences],
    }


# --- people -------------------------------------------------------------------------------------------------


def people_from_crm_json(body: object) -> PeopleDirectory:
    """The answer of ``GET /people`` as a ``PeopleDirectory``; records without an email or id are skipped."""
    if not isinstance(body, Mapping):
        raise InvalidRequestError("not a people answer", {"(body)": "must be a JSON object"})
    people: list[Person] = []
    for key, kind, id_key in (
        ("users", AttendeeKind.USER, "crmUserId"),
        ("contacts", AttendeeKind.CONTACT, "crmId"),
        ("leads", AttendeeKind.LEAD, "crmId"),
    ):
        records = body.get(key)
        for record in records if isinstance(records, list) else []:
            if not isinstance(record, Mapping):
                continue
            email, crm_id, name = record.get("email"), record.get(id_key), record.get("name")
            if not isinstance(email, str) or not isinstance(crm_id, str):
                continue
            account = record.get("account")
            account_id = account.get("crmId") if isinstance(account, Mapping) else None
            people.append(
                Person(
                    email=email,
                    kind=kind,
                    crm_id=crm_id,
                    name=name if isinstance(name, str) else None,
                    account_id=account_id if isinstance(account_id, str) else None,
                )
            )
    return PeopleDirectory(tuple(people))
