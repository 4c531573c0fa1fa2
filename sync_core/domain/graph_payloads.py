"""Microsoft Graph payloads as Graph sends them, parsed into frozen values (pure: no I/O).

Terminology
-----------
delta link / next link
    ``@odata.deltaLink`` ends a round of delta pages and is saved to resume from; ``@odata.nextLink`` means
    more pages follow in this round. Both are opaque URLs: followed as given, never built or edited.
@removed
    A delta item saying an item is gone (``reason`` ``deleted``) or left the tracked view (``changed``).
changeKey
    Graph's version stamp of an item; it moves on every write, even one that changes nothing we sync.
clientState
    The secret we give a subscription; Graph echoes it in every notification, telling ours from forgeries.

The parsers accept the documented shapes unchanged (``../shared/graph-reference/fixtures``): documented
examples are shortened, so every property not needed for a decision is optional, and unknown properties are
kept in ``raw`` untouched. A payload that cannot be read raises ``InvalidRequestError`` with field errors.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import Any

from sync_core.domain.timezones import UnknownTimeZoneError, parse_graph_datetime
from sync_core.errors import InvalidRequestError

JsonObject = Mapping[str, Any]


# --- delta pages -------------------------------------------------------------------------------------------


class RemovedReason(enum.Enum):
    DELETED = "deleted"
    CHANGED = "changed"  # left the tracked view (e.g. moved out of the calendarView window)


@dataclass(frozen=True)
class Removed:
    id: str
    reason: RemovedReason


@dataclass(frozen=True)
class Changed:
    id: str
    raw: JsonObject = field(repr=False)  # at least the changed properties; usually the whole item


@dataclass(frozen=True)
class DeltaPage:
    items: tuple[Changed | Removed, ...]
    next_link: str | None
    delta_link: str | None
    unreadable: int = 0  # items with no id: counted and reported, never allowed to stop the round

    @property
    def is_last(self) -> bool:
        return self.delta_link is not None


def parse_delta_page(body: object) -> DeltaPage:
    """One page of any Graph delta query (events, contacts, messages, To Do tasks)."""
    page = _object(body, "body")
    values = page.get("value")
    if not isinstance(values, list):
        raise InvalidRequestError("not a delta page", {"value": "must be an array"})
    next_link = _optional_str(page, "@odata.nextLink")
    delta_link = _optional_str(page, "@odata.deltaLink")
    if (next_link is None) == (delta_link is None):
        raise InvalidRequestError(
            "not a delta page", {"@odata.nextLink": "exactly one of nextLink or deltaLink must be present"}
        )
    items: list[Changed | Removed] = []
    unreadable = 0
    for value in values:
        if not isinstance(value, Mapping) or not isinstance(value.get("id"), str) or not value["id"]:
            unreadable += 1
            continue
        removed = value.get("@removed")
        if removed is None:
            items.append(Changed(value["id"], MappingProxyType(dict(value))))
            continue
        reason = removed.get("reason") if isinstance(removed, Mapping) else None
        # An unknown reason is still a removal: the item left what we track, whatever Graph calls it.
        try:
            items.append(Removed(value["id"], RemovedReason(reason)))
        except ValueError:
            items.append(Removed(value["id"], RemovedReason.CHANGED))
    return DeltaPage(tuple(items), next_link, delta_link, unreadable)


# --- events ------------------------------------------------------------------------------------------------


class EventType(enum.Enum):
    SINGLE_INSTANCE = "singleInstance"
    OCCURRENCE = "occurrence"
    EXCEPTION = "exception"
    SERIES_MASTER = "seriesMaster"


class PatternType(enum.Enum):
    DAILY = "daily"
    WEEKLY = "weekly"
    ABSOLUTE_MONTHLY = "absoluteMonthly"
    RELATIVE_MONTHLY = "relativeMonthly"
    ABSOLUTE_YEARLY = "absoluteYearly"
    RELATIVE_YEARLY = "relativeYearly"


class RangeType(enum.Enum):
    END_DATE = "endDate"
    NO_END = "noEnd"
    NUMBERED = "numbered"


@dataclass(frozen=True)
class RecurrencePattern:
    type: PatternType
    interval: int
    days_of_week: tuple[str, ...]
    first_day_of_week: str
    index: str
    day_of_month: int
    month: int


@dataclass(frozen=True)
class RecurrenceRange:
    type: RangeType
    start_date: date | None
    end_date: date | None
    number_of_occurrences: int
    recurrence_time_zone: str | None


@dataclass(frozen=True)
class GraphRecurrence:
    pattern: RecurrencePattern
    range: RecurrenceRange


@dataclass(frozen=True)
class GraphEvent:
    """The properties of a Graph event that sync decisions need; ``raw`` keeps the whole payload."""

    id: str
    type: EventType
    change_key: str | None
    etag: str | None
    ical_uid: str | None
    series_master_id: str | None
    subject: str | None
    start: datetime | None
    end: datetime | None
    start_time_zone: str | None
    is_all_day: bool
    is_cancelled: bool
    sensitivity: str | None
    recurrence: GraphRecurrence | None
    original_start: datetime | None
    last_modified: datetime | None
    raw: JsonObject = field(repr=False, compare=False)


def parse_event(body: object) -> GraphEvent:
    """A Graph event as returned by GET, create, update, calendarView, /instances or a delta page."""
    event = _object(body, "event")
    errors: dict[str, str] = {}
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id:
        errors["id"] = "must be a non-empty string"
    try:
        event_type = EventType(event.get("type", EventType.SINGLE_INSTANCE.value))
    except ValueError:
        errors["type"] = "must be singleInstance, occurrence, exception or seriesMaster"
        event_type = EventType.SINGLE_INSTANCE
    start = _datetime_field(event, "start", errors)
    end = _datetime_field(event, "end", errors)
    recurrence = None
    if isinstance(event.get("recurrence"), Mapping):
        recurrence = _recurrence(event["recurrence"], errors)
    original_start = _instant(event, "originalStart", errors)
    last_modified = _instant(event, "lastModifiedDateTime", errors)
    if errors:
        raise InvalidRequestError("malformed event", errors)
    start_value = event.get("start")
    return GraphEvent(
        id=str(event_id),
        type=event_type,
        change_key=_optional_str(event, "changeKey"),
        etag=_optional_str(event, "@odata.etag"),
        ical_uid=_optional_str(event, "iCalUId"),
        series_master_id=_optional_str(event, "seriesMasterId"),
        subject=_optional_str(event, "subject"),
        start=start,
        end=end,
        start_time_zone=start_value.get("timeZone") if isinstance(start_value, Mapping) else None,
        is_all_day=event.get("isAllDay") is True,
        is_cancelled=event.get("isCancelled") is True,
        sensitivity=_optional_str(event, "sensitivity"),
        recurrence=recurrence,
        original_start=original_start,
        last_modified=last_modified,
        raw=MappingProxyType(dict(event)),
    )


def _recurrence(value: JsonObject, errors: dict[str, str]) -> GraphRecurrence | None:
    pattern = value.get("pattern")
    range_ = value.get("range")
    if not isinstance(pattern, Mapping) or not isinstance(range_, Mapping):
        errors["recurrence"] = "needs pattern and range objects"
        return None
    parsed_pattern = _pattern(pattern, errors, "recurrence.pattern")
    parsed_range = _range(range_, errors, "recurrence.range")
    if parsed_pattern is None or parsed_range is None:
        return None
    if parsed_range.start_date is None:
        errors["recurrence.range.startDate"] = "must be a date (YYYY-MM-DD)"
        return None
    return GraphRecurrence(parsed_pattern, parsed_range)


def parse_recurrence_pattern(body: object) -> RecurrencePattern:
    errors: dict[str, str] = {}
    pattern = _pattern(_object(body, "pattern"), errors, "pattern")
    if pattern is None or errors:
        raise InvalidRequestError("malformed recurrence pattern", errors)
    return pattern


def parse_recurrence_range(body: object) -> RecurrenceRange:
    errors: dict[str, str] = {}
    range_ = _range(_object(body, "range"), errors, "range")
    if range_ is None or errors:
        raise InvalidRequestError("malformed recurrence range", errors)
    return range_


def _pattern(pattern: JsonObject, errors: dict[str, str], where: str) -> RecurrencePattern | None:
    try:
        pattern_type = PatternType(pattern.get("type"))
    except ValueError:
        errors[f"{where}.type"] = "unknown pattern type"
        return None
    days = pattern.get("daysOfWeek") or []
    if not isinstance(days, list) or not all(isinstance(day, str) for day in days):
        errors[f"{where}.daysOfWeek"] = "must be an array of day names"
        days = []
    interval = _int(pattern.get("interval"), 1)
    if interval < 1:
        errors[f"{where}.interval"] = "must be a positive number"
    return RecurrencePattern(
        type=pattern_type,
        interval=interval,
        days_of_week=tuple(day.lower() for day in days),
        first_day_of_week=str(pattern.get("firstDayOfWeek") or "sunday").lower(),
        index=str(pattern.get("index") or "first").lower(),
        day_of_month=_int(pattern.get("dayOfMonth"), 0),
        month=_int(pattern.get("month"), 0),
    )


def _range(range_: JsonObject, errors: dict[str, str], where: str) -> RecurrenceRange | None:
    try:
        range_type = RangeType(range_.get("type"))
    except ValueError:
        errors[f"{where}.type"] = "must be endDate, noEnd or numbered"
        return None
    end_date = _date(range_.get("endDate"))
    if range_type is RangeType.END_DATE and end_date is None:
        errors[f"{where}.endDate"] = "is required for an endDate range"
    occurrences = _int(range_.get("numberOfOccurrences"), 0)
    if range_type is RangeType.NUMBERED and occurrences < 1:
        errors[f"{where}.numberOfOccurrences"] = "must be positive for a numbered range"
    return RecurrenceRange(
        type=range_type,
        start_date=_date(range_.get("startDate")),
        end_date=end_date if range_type is RangeType.END_DATE else None,
        number_of_occurrences=occurrences,
        recurrence_time_zone=_optional_str(range_, "recurrenceTimeZone"),
    )


# --- change and lifecycle notifications --------------------------------------------------------------------


class LifecycleEvent(enum.Enum):
    REAUTHORIZATION_REQUIRED = "reauthorizationRequired"
    SUBSCRIPTION_REMOVED = "subscriptionRemoved"
    MISSED = "missed"


@dataclass(frozen=True)
class ChangeNotification:
    subscription_id: str
    client_state: str | None = field(repr=False)
    change_type: str
    resource: str
    resource_id: str | None
    tenant_id: str | None


@dataclass(frozen=True)
class LifecycleNotification:
    subscription_id: str
    client_state: str | None = field(repr=False)
    event: LifecycleEvent
    tenant_id: str | None


@dataclass(frozen=True)
class NotificationBatch:
    changes: tuple[ChangeNotification, ...]
    lifecycle: tuple[LifecycleNotification, ...]
    validation_tokens: tuple[str, ...] = field(repr=False, default=())


def parse_notifications(body: object) -> NotificationBatch:
    """A ``changeNotificationCollection``: change and lifecycle items may come mixed in one ``value[]``."""
    collection = _object(body, "body")
    values = collection.get("value")
    if not isinstance(values, list) or not values:
        raise InvalidRequestError("not a notification collection", {"value": "must be a non-empty array"})
    changes: list[ChangeNotification] = []
    lifecycle: list[LifecycleNotification] = []
    errors: dict[str, str] = {}
    for index, item in enumerate(values):
        where = f"value[{index}]"
        if not isinstance(item, Mapping):
            errors[where] = "must be an object"
            continue
        subscription_id = item.get("subscriptionId")
        if not isinstance(subscription_id, str) or not subscription_id:
            errors[f"{where}.subscriptionId"] = "must be a non-empty string"
            continue
        client_state = _optional_str(item, "clientState")
        tenant_id = _optional_str(item, "tenantId")
        if "lifecycleEvent" in item:
            try:
                event = LifecycleEvent(item["lifecycleEvent"])
            except ValueError:
                errors[f"{where}.lifecycleEvent"] = "unknown lifecycle event"
                continue
            lifecycle.append(LifecycleNotification(subscription_id, client_state, event, tenant_id))
            continue
        change_type = item.get("changeType")
        resource = item.get("resource")
        if not isinstance(change_type, str) or not isinstance(resource, str):
            errors[where] = "a change notification needs changeType and resource"
            continue
        resource_data = item.get("resourceData")
        resource_id = resource_data.get("id") if isinstance(resource_data, Mapping) else None
        changes.append(
            ChangeNotification(
                subscription_id=subscription_id,
                client_state=client_state,
                change_type=change_type,
                resource=resource,
                resource_id=resource_id if isinstance(resource_id, str) else None,
                tenant_id=tenant_id,
            )
        )
    if errors:
        raise InvalidRequestError("malformed notifications", errors)
    tokens = collection.get("validationTokens") or []
    return NotificationBatch(
        tuple(changes), tuple(lifecycle), tuple(token for token in tokens if isinstance(token, str))
    )


# --- subscriptions, errors, $batch -------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionInfo:
    id: str
    resource: str
    change_type: str
    expires_at: datetime
    notification_url: str | None
    lifecycle_notification_url: str | None


def parse_subscription(body: object) -> SubscriptionInfo:
    subscription = _object(body, "subscription")
    errors: dict[str, str] = {}
    for name in ("id", "resource", "changeType", "expirationDateTime"):
        if not isinstance(subscription.get(name), str):
            errors[name] = "must be a string"
    expires_at = _instant(subscription, "expirationDateTime", errors)
    if errors or expires_at is None:
        raise InvalidRequestError("malformed subscription", errors)
    return SubscriptionInfo(
        id=subscription["id"],
        resource=subscription["resource"],
        change_type=subscription["changeType"],
        expires_at=expires_at,
        notification_url=_optional_str(subscription, "notificationUrl"),
        lifecycle_notification_url=_optional_str(subscription, "lifecycleNotificationUrl"),
    )


@dataclass(frozen=True)
class GraphErrorBody:
    code: str
    message: str
    inner_code: str | None


def parse_error_body(body: object) -> GraphErrorBody:
    """Graph's ``{"error": {"code", "message", "innerError"}}``; anything else reads as an unknown error."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return GraphErrorBody("unknown", "", None)
    inner = error.get("innerError") or error.get("innererror")
    inner_code = inner.get("code") if isinstance(inner, Mapping) else None
    return GraphErrorBody(
        code=str(error.get("code") or "unknown"),
        message=str(error.get("message") or ""),
        inner_code=inner_code if isinstance(inner_code, str) else None,
    )


@dataclass(frozen=True)
class BatchItemResponse:
    id: str
    status: int
    headers: Mapping[str, str]
    body: object


def parse_batch_response(body: object) -> dict[str, BatchItemResponse]:
    """A ``$batch`` answer keyed by request id (answers come in any order)."""
    batch = _object(body, "body")
    responses = batch.get("responses")
    if not isinstance(responses, list):
        raise InvalidRequestError("not a batch response", {"responses": "must be an array"})
    parsed: dict[str, BatchItemResponse] = {}
    for index, item in enumerate(responses):
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
            raise InvalidRequestError(
                "malformed batch response", {f"responses[{index}].id": "must be a string"}
            )
        if not isinstance(item.get("status"), int):
            raise InvalidRequestError(
                "malformed batch response", {f"responses[{index}].status": "must be an integer"}
            )
        headers = item.get("headers") or {}
        parsed[item["id"]] = BatchItemResponse(
            id=item["id"],
            status=item["status"],
            headers={str(key): str(value) for key, value in headers.items()}
            if isinstance(headers, Mapping)
            else {},
            body=item.get("body"),
        )
    return parsed


# --- helpers -----------------------------------------------------------------------------------------------


def _object(body: object, name: str) -> JsonObject:
    if not isinstance(body, Mapping):
        raise InvalidRequestError(f"{name} must be a JSON object", {name: "must be an object"})
    return body


def _optional_str(value: JsonObject, name: str) -> str | None:
    item = value.get(name)
    return item if isinstance(item, str) else None


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _date(value: object) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _datetime_field(event: JsonObject, name: str, errors: dict[str, str]) -> datetime | None:
    value = event.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        errors[name] = "must be a dateTimeTimeZone object"
        return None
    try:
        return parse_graph_datetime(value)
    except UnknownTimeZoneError:
        errors[f"{name}.timeZone"] = "unknown time zone"
    except ValueError:
        errors[name] = "must hold an ISO dateTime and a timeZone"
    return None


def _instant(value: JsonObject, name: str, errors: dict[str, str]) -> datetime | None:
    """An ISO instant such as ``2019-03-20T11:00:00.0000000Z``; naive values are UTC by Graph's convention."""
    raw = value.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str):
        errors[name] = "must be an ISO date-time string"
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        errors[name] = "must be an ISO date-time string"
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class EventCollection:
    events: tuple[GraphEvent, ...]
    unreadable: tuple[str, ...]  # the id (or position) of each item that could not be read, with why


def parse_event_collection(body: object) -> EventCollection:
    """The ``value[]`` of calendarView or /instances; one unreadable item never hides the others."""
    values = _object(body, "body").get("value")
    if not isinstance(values, list):
        raise InvalidRequestError("not an event collection", {"value": "must be an array"})
    events: list[GraphEvent] = []
    unreadable: list[str] = []
    for index, value in enumerate(values):
        try:
            events.append(parse_event(value))
        except InvalidRequestError as exc:
            item_id = value.get("id") if isinstance(value, Mapping) else None
            where = item_id if isinstance(item_id, str) and item_id else f"value[{index}]"
            unreadable.append(f"{where}: {', '.join(sorted(exc.field_errors))}")
    return EventCollection(tuple(events), tuple(unreadable))
