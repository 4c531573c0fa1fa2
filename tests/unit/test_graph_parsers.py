"""The parsers accept every documented Graph payload in ../shared/graph-reference unchanged.

Every fixture is named here: either parsed by the parser that reads that kind of payload, or listed as a
request body we send (checked where we build those requests), with the reason. An unclassified fixture fails.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from sync_core.domain.graph_payloads import (
    Changed,
    EventType,
    LifecycleEvent,
    PatternType,
    RangeType,
    Removed,
    RemovedReason,
    parse_batch_response,
    parse_delta_page,
    parse_error_body,
    parse_event,
    parse_event_collection,
    parse_notifications,
    parse_recurrence_pattern,
    parse_recurrence_range,
    parse_subscription,
)
from sync_core.errors import InvalidRequestError

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "graph-reference" / "fixtures"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


DELTA_PAGES = [
    "event_delta_page1.json",
    "event_delta_page2.json",
    "event_delta_page3_final_deltalink.json",
    "event_delta_next_round_with_removed.json",
    "event_delta_api_example_placeholders.json",
    "contact_delta.json",
    "message_delta.json",
    "message_delta_page1.json",
    "message_delta_next_round_with_removed.json",
    "todotask_delta.json",
]
EVENT_DELTA_PAGES = [name for name in DELTA_PAGES if name.startswith("event_delta")]
SINGLE_EVENTS = [
    "event_series_master.json",
    "event_with_online_meeting.json",
    "event_get_prefer_timezone.json",
]
EVENT_COLLECTIONS = ["calendarview_minimal.json", "event_instances_occurrences_and_exception.json"]
NOTIFICATIONS = [
    "notification_created.json",
    "notification_with_resource_data.json",
    "notification_without_resource_data_outlook.json",
    "lifecycle_missed.json",
    "lifecycle_reauthorization_required.json",
    "lifecycle_subscription_removed.json",
]
SUBSCRIPTIONS = [
    "subscription_create_response.json",
    "subscription_create_response_outlook_basic.json",
    "subscription_create_response_outlook_with_resource_data.json",
    "subscription_renew_response.json",
]
ERRORS = ["error_response.json", "throttled_429_response.json"]
BATCH_RESPONSES = ["batch_response.json"]
RECURRENCE_FRAGMENTS = ["recurrence_examples.json"]
# Bodies we send, not parse: the code that builds them is checked against these where it is written.
REQUESTS_WE_SEND = {
    "batch_request.json": "a $batch request body",
    "batch_request_dependson.json": "a $batch request body",
    "event_recurring_create_request.json": "an event create request",
    "event_with_online_meeting_create_request.json": "an event create request",
    "subscription_create_request.json": "a subscription create request",
    "subscription_create_with_lifecycle_url_request.json": "a subscription create request",
    "subscription_renew_request.json": "a subscription renew request",
}
# Payloads of features that arrive with later issues (To Do tasks, mail bodies); their parsers come with them.
LATER_FEATURES = {
    "todotask.json": "To Do task sync",
    "todotask_created_with_linked_resources.json": "To Do task sync",
    "notification_decrypted_message_resource_data.json": "rich mail notifications (we use none)",
}


def test_every_fixture_is_classified() -> None:
    classified = (
        set(
            DELTA_PAGES
            + SINGLE_EVENTS
            + EVENT_COLLECTIONS
            + NOTIFICATIONS
            + SUBSCRIPTIONS
            + ERRORS
            + BATCH_RESPONSES
            + RECURRENCE_FRAGMENTS
        )
        | set(REQUESTS_WE_SEND)
        | set(LATER_FEATURES)
    )
    on_disk = {path.name for path in FIXTURES.glob("*.json")}
    assert on_disk - classified == set(), "classify new fixtures here"
    assert classified - on_disk == set()


@pytest.mark.parametrize("name", DELTA_PAGES)
def test_delta_pages_parse(name: str) -> None:
    page = parse_delta_page(load(name))
    assert (page.next_link is None) != (page.delta_link is None)
    assert len(page.items) + page.unreadable == len(load(name)["value"])


@pytest.mark.parametrize("name", EVENT_DELTA_PAGES)
def test_changed_events_in_delta_pages_parse(name: str) -> None:
    for item in parse_delta_page(load(name)).items:
        if isinstance(item, Changed):
            assert parse_event(item.raw).id == item.id


def test_removed_items_carry_their_reason() -> None:
    page = parse_delta_page(load("event_delta_next_round_with_removed.json"))
    removed = [item for item in page.items if isinstance(item, Removed)]
    assert removed == [
        Removed("AAMkADk0MGFkODE3LWE4MmYtNDRhOS04OGQLkRkXbBznTvAADb6ytyAAA=", RemovedReason.DELETED)
    ]
    assert page.is_last


def test_calendar_view_item_without_id_is_reported_not_fatal() -> None:
    collection = parse_event_collection(load("calendarview_minimal.json"))
    assert collection.unreadable == ("value[0]: id",)


def test_placeholder_items_without_id_are_counted_not_fatal() -> None:
    page = parse_delta_page(load("event_delta_api_example_placeholders.json"))
    assert page.unreadable == 1
    assert page.next_link is not None


@pytest.mark.parametrize("name", SINGLE_EVENTS)
def test_single_events_parse(name: str) -> None:
    event = parse_event(load(name))
    assert event.id
    assert event.start is not None
    assert event.start.tzinfo is not None


def test_series_master_reads_its_recurrence_in_the_windows_zone() -> None:
    event = parse_event(load("event_series_master.json"))
    assert event.type is EventType.SERIES_MASTER
    assert event.recurrence is not None
    assert event.recurrence.pattern.type is PatternType.WEEKLY
    assert event.recurrence.pattern.days_of_week == ("monday",)
    assert event.recurrence.range.type is RangeType.END_DATE
    assert event.recurrence.range.end_date == date(2017, 12, 31)
    # 12:00 Pacific Daylight Time on 2017-09-04 is 19:00 UTC.
    assert event.start is not None
    assert event.start.astimezone(UTC) == datetime(2017, 9, 4, 19, 0, tzinfo=UTC)


@pytest.mark.parametrize("name", EVENT_COLLECTIONS)
def test_event_collections_parse(name: str) -> None:
    collection = parse_event_collection(load(name))
    assert len(collection.events) + len(collection.unreadable) == len(load(name)["value"])


def test_instances_tell_occurrences_from_exceptions() -> None:
    events = parse_event_collection(load("event_instances_occurrences_and_exception.json")).events
    kinds = {event.type for event in events}
    assert kinds == {EventType.OCCURRENCE, EventType.EXCEPTION}
    assert all(event.series_master_id for event in events)


@pytest.mark.parametrize("name", NOTIFICATIONS)
def test_notifications_parse(name: str) -> None:
    batch = parse_notifications(load(name))
    assert len(batch.changes) + len(batch.lifecycle) == len(load(name)["value"])


def test_lifecycle_events_are_recognised() -> None:
    assert parse_notifications(load("lifecycle_missed.json")).lifecycle[0].event is LifecycleEvent.MISSED
    removed = parse_notifications(load("lifecycle_subscription_removed.json")).lifecycle[0]
    assert removed.event is LifecycleEvent.SUBSCRIPTION_REMOVED
    reauthorize = parse_notifications(load("lifecycle_reauthorization_required.json")).lifecycle[0]
    assert reauthorize.event is LifecycleEvent.REAUTHORIZATION_REQUIRED


def test_change_notification_fields() -> None:
    change = parse_notifications(load("notification_created.json")).changes[0]
    assert change.subscription_id == "{subscription_guid}"
    assert change.client_state == "secretClientValue"
    assert change.change_type == "created"
    assert change.resource_id == "{long_id_string}"
    assert "secretClientValue" not in repr(change)


@pytest.mark.parametrize("name", SUBSCRIPTIONS)
def test_subscriptions_parse(name: str) -> None:
    subscription = parse_subscription(load(name))
    assert subscription.expires_at.tzinfo is not None


@pytest.mark.parametrize("name", ERRORS)
def test_error_bodies_parse(name: str) -> None:
    assert parse_error_body(load(name)).code in {"invalidRange", "TooManyRequests"}


def test_batch_response_is_keyed_by_id() -> None:
    responses = parse_batch_response(load("batch_response.json"))
    assert {item.status for item in responses.values()} >= {200, 403}


def test_recurrence_fragments_parse() -> None:
    patterns = ranges = 0
    for fragment in load("recurrence_examples.json"):
        if "pattern" in fragment:
            parse_recurrence_pattern(fragment["pattern"])
            patterns += 1
        if "range" in fragment:
            parse_recurrence_range(fragment["range"])
            ranges += 1
    assert patterns
    assert ranges


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"value": "x"}, "value"),
        ({"value": [{"changeType": "created"}]}, "value[0].subscriptionId"),
        ({"value": [{"subscriptionId": "s", "lifecycleEvent": "nope"}]}, "value[0].lifecycleEvent"),
        ([], "body"),
    ],
)
def test_bad_notifications_name_the_field(body: object, field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_notifications(body)
    assert field in caught.value.field_errors
