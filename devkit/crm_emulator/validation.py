"""The rules beyond a payload's shape: required fields, times, zones, references, recurrence."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping, Sequence
from datetime import date, datetime

from devkit.crm_emulator.errors import _invalid
from devkit.crm_emulator.payloads import (
    _NULLABLE_FIELDS,
    _READ_ONLY_FIELDS,
    _REQUIRED_ON_CREATE,
    Json,
    _ActivityInput,
    _validate,
)

_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")

_DATE_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def _parse_date_time(text: object) -> datetime | None:
    match = _DATE_TIME.match(text) if isinstance(text, str) else None
    if match is None:
        return None
    day, clock, fraction, offset = match.groups()
    micro = f".{(fraction or '')[:6].ljust(6, '0')}" if fraction else ""
    try:
        return datetime.fromisoformat(f"{day}T{clock}{micro}{'+00:00' if offset == 'Z' else offset}")
    except ValueError:
        return None


def _parse_date(text: object) -> date | None:
    if not isinstance(text, str) or not _DATE.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _is_time_zone(name: object) -> bool:
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _time_errors(activity: Json, all_day: bool) -> dict[str, str]:
    errors: dict[str, str] = {}
    start_text, end_text, zone = activity.get("start"), activity.get("end"), activity["timeZone"]
    if all_day:
        start_day, end_day = _parse_date(start_text), _parse_date(end_text)
        for name, text, parsed in (("start", start_text, start_day), ("end", end_text, end_day)):
            if text is not None and parsed is None:
                errors[name] = "must be a date (YYYY-MM-DD) for an all-day activity"
        if start_day is not None and end_day is not None and end_day <= start_day:
            errors["end"] = "must be after start (the end date is exclusive)"
        if zone is not None and not _is_time_zone(zone):
            errors["timeZone"] = "must be an IANA time zone name"
        return errors
    start_at, end_at = _parse_date_time(start_text), _parse_date_time(end_text)
    for name, text, parsed_at in (("start", start_text, start_at), ("end", end_text, end_at)):
        if text is not None and parsed_at is None:
            errors[name] = "must be an RFC 3339 date-time with offset"
    if start_at is not None and end_at is not None and end_at < start_at:
        errors["end"] = "must not be before start"
    if zone is None:
        errors["timeZone"] = "is required for a timed activity"
    elif not _is_time_zone(zone):
        errors["timeZone"] = "must be an IANA time zone name"
    return errors


class ActivityRules:
    """Checks an activity against the rules and the seeded records it names (state: ``CrmStore``)."""

    _users: dict[str, Json]
    _accounts: dict[str, Json]
    _contacts: dict[str, Json]
    _leads: dict[str, Json]

    @staticmethod
    def _activity_changes(body: Json, *, fixed: Mapping[str, object] | None) -> Json:
        """The fields a request sets (shape-checked); refuses read-only, fixed and wrongly null fields."""
        model = _validate(_ActivityInput, body)
        changes: Json = model.model_dump(by_alias=True, include=model.model_fields_set)
        errors: dict[str, str] = {}
        for name, value in changes.items():
            if name in _READ_ONLY_FIELDS:
                errors[name] = "is read-only"
            elif value is None and name not in _NULLABLE_FIELDS:
                errors[name] = "may not be null"
            elif fixed is not None and name in fixed and value != fixed[name]:
                errors[name] = "cannot be changed through the contract"
        if errors:
            raise _invalid(errors, "the activity is invalid")
        return changes

    def _activity_errors(self, activity: Json) -> dict[str, str]:
        """Every rule beyond the shape (required, times, zones, references, recurrence); {} when valid."""
        errors: dict[str, str] = {}
        for name in _REQUIRED_ON_CREATE:
            if activity.get(name) is None:
                errors[name] = "is required"
        owner = activity.get("ownerCrmUserId")
        if owner is not None and owner not in self._users:
            errors["ownerCrmUserId"] = "unknown CRM user"
        all_day = bool(activity["isAllDay"])
        errors.update(_time_errors(activity, all_day))
        links = activity["links"]
        if links["accountId"] is not None and links["accountId"] not in self._accounts:
            errors["links.accountId"] = "unknown account"
        for index, contact_id in enumerate(links["contactIds"]):
            if contact_id not in self._contacts:
                errors[f"links.contactIds.{index}"] = "unknown contact"
        for index, lead_id in enumerate(links["leadIds"]):
            if lead_id not in self._leads:
                errors[f"links.leadIds.{index}"] = "unknown lead"
        errors.update(self._attendee_errors(activity["attendees"], "attendees"))
        organizer = activity["organizer"]
        if organizer is not None and not _EMAIL.match(organizer["email"]):
            errors["organizer.email"] = "is not an email address"
        meeting = activity["onlineMeeting"]
        if meeting is not None and not meeting["joinUrl"].startswith("https://"):
            errors["onlineMeeting.joinUrl"] = "must be an https URL"
        errors.update(self._recurrence_errors(activity, all_day))
        return errors

    def _attendee_errors(self, attendees: Sequence[Json], prefix: str) -> dict[str, str]:
        errors: dict[str, str] = {}
        seen: set[str] = set()
        known = {"user": self._users, "contact": self._contacts, "lead": self._leads}
        for index, attendee in enumerate(attendees):
            path = f"{prefix}.{index}"
            email = attendee["email"]
            if not _EMAIL.match(email):
                errors[f"{path}.email"] = "is not an email address"
            elif email.casefold() in seen:
                errors[f"{path}.email"] = "appears twice in the attendees"
            seen.add(email.casefold())
            crm_id, kind = attendee["crmId"], attendee["kind"]
            if crm_id is not None and kind == "external":
                errors[f"{path}.crmId"] = "must be null for an external attendee"
            elif crm_id is not None and crm_id not in known[kind]:
                errors[f"{path}.crmId"] = f"unknown {kind}"
        return errors

    def _recurrence_errors(self, activity: Json, all_day: bool) -> dict[str, str]:
        errors: dict[str, str] = {}
        recurrence = activity["recurrence"]
        overrides, cancelled = activity["occurrenceOverrides"], activity["cancelledOccurrences"]
        if recurrence is None:
            if overrides:
                errors["occurrenceOverrides"] = "must be empty when recurrence is null"
            if cancelled:
                errors["cancelledOccurrences"] = "must be empty when recurrence is null"
            return errors
        pattern, span = recurrence["pattern"], recurrence["range"]
        needs = {
            "weekly": ("daysOfWeek",),
            "absoluteMonthly": ("dayOfMonth",),
            "relativeMonthly": ("daysOfWeek",),
            "absoluteYearly": ("dayOfMonth", "month"),
            "relativeYearly": ("daysOfWeek", "month"),
        }
        for name in needs.get(pattern["type"], ()):
            if pattern[name] in (None, []):
                errors[f"recurrence.pattern.{name}"] = f"is required for {pattern['type']} recurrence"
        start_date = _parse_date(span["startDate"])
        if start_date is None:
            errors["recurrence.range.startDate"] = "must be a date (YYYY-MM-DD)"
        if span["type"] == "endDate":
            end_date = _parse_date(span["endDate"])
            if end_date is None:
                errors["recurrence.range.endDate"] = "is required (a date) for an endDate range"
            elif start_date is not None and end_date < start_date:
                errors["recurrence.range.endDate"] = "must not be before startDate"
        elif span["endDate"] is not None and _parse_date(span["endDate"]) is None:
            errors["recurrence.range.endDate"] = "must be a date (YYYY-MM-DD)"
        if span["type"] == "numbered" and span["numberOfOccurrences"] is None:
            errors["recurrence.range.numberOfOccurrences"] = "is required for a numbered range"
        zone = span["recurrenceTimeZone"]
        if zone is not None and not _is_time_zone(zone):
            errors["recurrence.range.recurrenceTimeZone"] = "must be an IANA time zone name"
        parse = _parse_date if all_day else _parse_date_time
        expected = "a date (YYYY-MM-DD)" if all_day else "an RFC 3339 date-time with offset"
        originals: set[str] = set()
        for index, override in enumerate(overrides):
            path = f"occurrenceOverrides.{index}"
            if parse(override["originalStart"]) is None:
                errors[f"{path}.originalStart"] = f"must be {expected}"
            elif override["originalStart"] in originals:
                errors[f"{path}.originalStart"] = "appears twice"
            originals.add(override["originalStart"])
            if (override["start"] is None) != (override["end"] is None):
                errors[f"{path}.start"] = "start and end come together"
            for name in ("start", "end"):
                if override[name] is not None and parse(override[name]) is None:
                    errors[f"{path}.{name}"] = f"must be {expected}"
            if override["attendees"] is not None:
                errors.update(self._attendee_errors(override["attendees"], f"{path}.attendees"))
        for index, original in enumerate(cancelled):
            if parse(original) is None:
                errors[f"cancelledOccurrences.{index}"] = f"must be {expected}"
        return errors
