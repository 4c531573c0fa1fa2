"""Pure decisions behind the webhook, the renewal timer and the sync queue: triage of a burst, the
subscription plan, lifetimes, the renewal horizon, sync messages, and the local host's reading of the poison
queue name."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from devkit.host_config import resolve_references
from sync_core.domain.connection_view import poison_event
from sync_core.domain.graph_payloads import parse_notifications
from sync_core.domain.state import SubscriptionRecord, Versioned
from sync_core.domain.subscription_plan import (
    EVENTS,
    KINDS,
    RENEWAL_MARGIN,
    Step,
    lifetimes_to_try,
    plan_subscriptions,
    renewal_horizon,
)
from sync_core.domain.sync_message import SyncMessage, SyncReason, parse_sync_message
from sync_core.domain.webhook import client_state_hash, client_state_matches, subscription_ids, triage
from sync_core.errors import InvalidRequestError

NOW = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


STATE = "s3cret"


def record(sid: str, user: str, expires_in: timedelta) -> SubscriptionRecord:
    return SubscriptionRecord(
        sid, user, "/users/oid-1/events", EVENTS.change_types, NOW + expires_in, client_state_hash(STATE)
    )


def change(sid: str, state: str | None) -> dict[str, object]:
    item: dict[str, object] = {"subscriptionId": sid, "changeType": "updated", "resource": "Users/x/Events/1"}
    if state is not None:
        item["clientState"] = state
    return item


# --- triage ------------------------------------------------------------------------------------------------


def test_a_burst_becomes_one_entry_per_user_and_unknown_or_forged_items_are_only_counted() -> None:
    records = {"s-a": record("s-a", "usr-a", HOUR), "s-b": record("s-b", "usr-b", HOUR), "s-x": None}
    batch = parse_notifications(
        {
            "value": [
                *(change("s-a", "s3cret") for _ in range(5)),
                change("s-b", "s3cret"),
                change("s-b", "wrong"),
                change("s-b", None),
                change("s-x", "s3cret"),
                {"subscriptionId": "s-a", "clientState": "s3cret", "lifecycleEvent": "missed"},
                {"subscriptionId": "s-a", "clientState": "s3cret", "lifecycleEvent": "missed"},
                {"subscriptionId": "s-b", "clientState": "nope", "lifecycleEvent": "subscriptionRemoved"},
            ]
        }
    )
    assert subscription_ids(batch) == ("s-a", "s-b", "s-x")

    sorted_out = triage(batch, records)

    assert sorted_out.users == ("usr-a", "usr-b")
    assert sorted_out.lifecycle == (SyncMessage("usr-a", "missed", "s-a"),)
    assert (sorted_out.accepted, sorted_out.unknown, sorted_out.forged) == (8, 1, 3)
    assert sorted_out.forged_subscriptions == ("s-b",)


def test_client_state_is_compared_by_hash() -> None:
    stored = client_state_hash("a" * 64)
    assert client_state_matches("a" * 64, stored)
    assert not client_state_matches("a" * 63, stored)
    assert not client_state_matches(None, stored)
    assert not client_state_matches("", stored)


# --- the subscription plan -------------------------------------------------------------------------------


def versioned(sid: str, expires_in: timedelta) -> Versioned[SubscriptionRecord]:
    return Versioned(record(sid, "usr-a", expires_in), f"etag-{sid}")


def steps(
    *records: Versioned[SubscriptionRecord], renew_within: timedelta = 12 * HOUR
) -> list[tuple[Step, str]]:
    planned = plan_subscriptions(records, KINDS, NOW, NOW + renew_within)
    return [(step.step, step.record.value.subscription_id if step.record else "-") for step in planned]


def test_plan_renews_what_expires_before_the_horizon_and_leaves_the_rest() -> None:
    assert steps(versioned("s1", 70 * HOUR)) == []
    assert steps(versioned("s1", 11 * HOUR)) == [(Step.RENEW, "s1")]
    assert steps(versioned("s1", 11 * HOUR), renew_within=timedelta(0)) == []


def test_plan_creates_missing_recreates_expired_and_drops_duplicates() -> None:
    assert steps() == [(Step.CREATE, "-")]
    assert steps(versioned("old", -HOUR)) == [(Step.RECREATE, "old")]
    assert steps(versioned("old", -HOUR), versioned("older", -2 * HOUR)) == [
        (Step.DROP, "older"),
        (Step.RECREATE, "old"),
    ]
    # Two live ones (two runs raced): the one lasting longest stays, renewed if due; the rest go.
    assert steps(versioned("a", 5 * HOUR), versioned("b", 8 * HOUR), versioned("gone", -HOUR)) == [
        (Step.DROP, "a"),
        (Step.DROP, "gone"),
        (Step.RENEW, "b"),
    ]


def test_plan_leaves_records_of_kinds_it_does_not_manage() -> None:
    contacts = Versioned(
        SubscriptionRecord("c1", "usr-a", "/users/oid-1/contacts", ("updated",), NOW - HOUR, "h"), "e"
    )
    assert steps(contacts, versioned("s1", 70 * HOUR)) == []


def test_lifetimes_step_down_through_graphs_known_maxima_with_a_margin() -> None:
    minute = timedelta(minutes=1)
    assert lifetimes_to_try(4230) == (4229 * minute, 1439 * minute, 59 * minute)
    assert lifetimes_to_try(10080) == (10079 * minute, 4229 * minute, 1439 * minute, 59 * minute)
    assert lifetimes_to_try(45) == (44 * minute,)


def test_the_horizon_is_the_next_run_plus_a_margin_else_six_hours_on() -> None:
    assert renewal_horizon(NOW, NOW + 6 * HOUR) == NOW + 6 * HOUR + RENEWAL_MARGIN
    assert renewal_horizon(NOW, NOW + 2 * HOUR) == NOW + 2 * HOUR + RENEWAL_MARGIN
    for unknown_or_insane in (None, NOW - HOUR, NOW + timedelta(days=30)):
        assert renewal_horizon(NOW, unknown_or_insane) == NOW + 6 * HOUR + RENEWAL_MARGIN


# --- sync messages and the poison queue -----------------------------------------------------------------


def test_sync_messages_round_trip_and_tolerate_unknown_reasons() -> None:
    message = SyncMessage.of("usr-1", SyncReason.SUBSCRIPTION_REMOVED, "sub-1")
    assert message.body() == {"user": "usr-1", "reason": "subscription_removed", "subscription": "sub-1"}
    assert parse_sync_message(json.dumps(message.body()).encode()) == message
    assert message.repairs_subscription
    assert not SyncMessage.of("usr-1", SyncReason.MISSED, "sub-1").repairs_subscription
    assert parse_sync_message(b'{"user": "usr-1", "reason": "Bad Reason!"}') == SyncMessage("usr-1")
    assert parse_sync_message(b'{"user": "usr-1", "reason": "test"}').reason == "test"
    for bad in (b"", b"[]", b'{"user": ""}', b"\xff", b'{"reason": "connected"}'):
        with pytest.raises(InvalidRequestError):
            parse_sync_message(bad)


def test_the_poison_event_key_comes_from_the_parked_message() -> None:
    first = poison_event("usr-1", "notification", "msg-1", NOW)
    later = poison_event("usr-1", "notification", "msg-1", NOW + HOUR)
    assert first.idempotency_key == later.idempotency_key == "event:poison:usr-1:msg-1"
    assert first.body()["details"] == {
        "reason": "sync_failed_repeatedly",
        "crmId": None,
        "syncReason": "notification",
    }


def test_the_local_host_resolves_a_setting_inside_a_longer_queue_name() -> None:
    settings = {"SYNC_QUEUE_NAME": "t1sync"}
    assert resolve_references("%SYNC_QUEUE_NAME%-poison", settings, what="sync_poison") == "t1sync-poison"
