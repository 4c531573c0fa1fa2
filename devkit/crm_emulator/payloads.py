"""Payload shapes: what an activity holds, and the pydantic models that check types, enums and unknown fields.

The rules beyond the shape (required fields, times, zones, references, recurrence) are in ``validation``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from devkit.crm_emulator.errors import _invalid

Json = dict[str, Any]


ACTIVITY_FIELDS: tuple[str, ...] = (
    "crmId",
    "version",
    "createdAt",
    "modifiedAt",
    "ownerCrmUserId",
    "type",
    "subject",
    "description",
    "start",
    "end",
    "timeZone",
    "isAllDay",
    "location",
    "isPrivate",
    "attendees",
    "organizer",
    "onlineMeeting",
    "requestOnlineMeeting",
    "links",
    "recurrence",
    "occurrenceOverrides",
    "cancelledOccurrences",
)
_READ_ONLY_FIELDS = ("crmId", "version", "createdAt", "modifiedAt")
_REQUIRED_ON_CREATE = ("ownerCrmUserId", "type", "subject", "start", "end")
_NULLABLE_FIELDS = frozenset(
    {"description", "timeZone", "location", "organizer", "onlineMeeting", "recurrence"}
)
_FIXED_AFTER_CREATE = ("ownerCrmUserId", "type")  # through the contract; a CRM user may change them


def _activity_defaults() -> Json:
    return {
        "description": None,
        "timeZone": None,
        "isAllDay": False,
        "location": None,
        "isPrivate": False,
        "attendees": [],
        "organizer": None,
        "onlineMeeting": None,
        "requestOnlineMeeting": False,
        "links": {"accountId": None, "contactIds": [], "leadIds": []},
        "recurrence": None,
        "occurrenceOverrides": [],
        "cancelledOccurrences": [],
    }


_MESSAGES = {  # pydantic error types → the contract's wording (no Python class names in field errors)
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "list_type": "must be an array",
    "string_type": "must be a string",
    "bool_type": "must be a boolean",
    "int_type": "must be an integer",
}


_MODEL = ConfigDict(
    extra="forbid", strict=True, alias_generator=to_camel, validate_by_alias=True, validate_by_name=False
)
_OPEN_MODEL = ConfigDict(
    extra="allow", strict=True, alias_generator=to_camel, validate_by_alias=True, validate_by_name=False
)
DayOfWeek = Literal["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]


class _Attendee(BaseModel):
    model_config = _MODEL
    email: str = Field(max_length=320)
    name: str | None = Field(default=None, max_length=255)
    kind: Literal["user", "contact", "lead", "external"]
    type: Literal["required", "optional", "resource"] = "required"
    response: Literal["none", "organizer", "accepted", "tentativelyAccepted", "declined", "notResponded"] = (
        "none"
    )
    crm_id: str | None = None


class _Organizer(BaseModel):
    model_config = _MODEL
    email: str = Field(max_length=320)
    name: str | None = Field(default=None, max_length=255)


class _OnlineMeeting(BaseModel):
    model_config = _MODEL
    join_url: str = Field(max_length=2048)


class _Links(BaseModel):
    model_config = _MODEL
    account_id: str | None = None
    contact_ids: list[str] = Field(default_factory=list)
    lead_ids: list[str] = Field(default_factory=list)


class _RecurrencePattern(BaseModel):
    model_config = _MODEL
    type: Literal["daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly"]
    interval: int = Field(ge=1, le=99)
    days_of_week: list[DayOfWeek] = Field(default_factory=list)
    first_day_of_week: DayOfWeek = "sunday"
    index: Literal["first", "second", "third", "fourth", "last"] = "first"
    day_of_month: int | None = Field(default=None, ge=1, le=31)
    month: int | None = Field(default=None, ge=1, le=12)


class _RecurrenceRange(BaseModel):
    model_config = _MODEL
    type: Literal["endDate", "noEnd", "numbered"]
    start_date: str
    end_date: str | None = None
    number_of_occurrences: int | None = Field(default=None, ge=1)
    recurrence_time_zone: str | None = None


class _Recurrence(BaseModel):
    model_config = _MODEL
    pattern: _RecurrencePattern
    range: _RecurrenceRange


class _OccurrenceOverride(BaseModel):
    model_config = _MODEL
    original_start: str
    subject: str | None = Field(default=None, max_length=255)
    description: str | None = Field(default=None, max_length=32_000)
    location: str | None = Field(default=None, max_length=255)
    start: str | None = None
    end: str | None = None
    attendees: list[_Attendee] | None = Field(default=None, max_length=500)


class _ActivityInput(BaseModel):
    """Every field optional here; which are required, read-only or fixed depends on the operation."""

    model_config = _MODEL
    crm_id: object = None
    version: object = None
    created_at: object = None
    modified_at: object = None
    owner_crm_user_id: str | None = None
    type: Literal["meeting", "personal_appointment", "call", "task"] | None = None
    subject: str | None = Field(default=None, max_length=255)
    description: str | None = Field(default=None, max_length=32_000)
    start: str | None = None
    end: str | None = None
    time_zone: str | None = None
    is_all_day: bool | None = None
    location: str | None = Field(default=None, max_length=255)
    is_private: bool | None = None
    attendees: list[_Attendee] | None = Field(default=None, max_length=500)
    organizer: _Organizer | None = None
    online_meeting: _OnlineMeeting | None = None
    request_online_meeting: bool | None = None
    links: _Links | None = None
    recurrence: _Recurrence | None = None
    occurrence_overrides: list[_OccurrenceOverride] | None = None
    cancelled_occurrences: list[str] | None = None


class _AccountDetails(BaseModel):
    model_config = _OPEN_MODEL
    upn: str
    tenant_id: str


class _ConnectedDetails(BaseModel):
    model_config = _OPEN_MODEL
    account: _AccountDetails


class _ReasonDetails(BaseModel):
    model_config = _OPEN_MODEL
    reason: str = Field(min_length=1)


class _DisconnectedDetails(_ReasonDetails):
    purged: bool


class _ConflictDetails(BaseModel):
    model_config = _OPEN_MODEL
    crm_id: str = Field(min_length=1)
    fields: list[str] = Field(min_length=1)
    policy: Literal["crm_wins", "m365_wins", "latest_wins"]
    winner: Literal["crm", "m365"]


class _PoisonDetails(_ReasonDetails):
    crm_id: str | None


class _SyncErrorDetails(_PoisonDetails):
    retrying: bool


_EVENT_DETAILS: dict[str, type[BaseModel]] = {
    "connected": _ConnectedDetails,
    "reconnect_required": _ReasonDetails,
    "disconnected": _DisconnectedDetails,
    "conflict": _ConflictDetails,
    "poison": _PoisonDetails,
    "sync_error": _SyncErrorDetails,
}


class _EventInput(BaseModel):
    model_config = _MODEL
    type: Literal["connected", "reconnect_required", "disconnected", "conflict", "poison", "sync_error"]
    crm_user_id: str
    occurred_at: str
    details: dict[str, Any]


class _FailureInput(BaseModel):
    model_config = _MODEL
    count: int = Field(default=1, ge=1, le=10_000)
    status: int = 500
    retry_after: int | None = Field(default=None, ge=0, le=3600)
    method: str | None = None
    path: str | None = None


class _SeedUser(BaseModel):
    model_config = _MODEL
    crm_user_id: str
    email: str
    name: str | None = None


class _SeedAccount(BaseModel):
    model_config = _MODEL
    crm_id: str | None = None
    name: str


class _SeedContact(BaseModel):
    model_config = _MODEL
    crm_id: str | None = None
    email: str
    name: str | None = None
    account_id: str | None = None


class _SeedLead(BaseModel):
    model_config = _MODEL
    crm_id: str | None = None
    email: str
    name: str | None = None
    company: str | None = None


class _Seed(BaseModel):
    model_config = _MODEL
    users: list[_SeedUser] = Field(default_factory=list)
    accounts: list[_SeedAccount] = Field(default_factory=list)
    contacts: list[_SeedContact] = Field(default_factory=list)
    leads: list[_SeedLead] = Field(default_factory=list)


def _field_errors(exc: ValidationError, prefix: str = "") -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors():
        path = ".".join(str(part) for part in (*([prefix] if prefix else []), *error["loc"])) or "(body)"
        errors.setdefault(path, _MESSAGES.get(error["type"], error["msg"]))
    return errors


def _validate(model: type[BaseModel], data: object, prefix: str = "") -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(_field_errors(exc, prefix)) from None
