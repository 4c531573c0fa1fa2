"""The CRM's activity push, decided: field checks, who may push, and what the CRM is answered (pure)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync_core.domain.activity_push import (
    PushReceipt,
    PushStatus,
    accepts_pushes,
    delete_entry,
    may_be_older_than_synced,
    older_than_synced,
    push_status,
    upsert_entry,
)
from sync_core.domain.changes import CrmDeletion, crm_change_from_outbox, is_stale_push
from sync_core.domain.state import Connection, ConnectionState, Link, OutboxEntry, OutboxOperation
from sync_core.domain.sync_message import SyncMessage, SyncReason, parse_sync_message
from sync_core.errors import InvalidRequestError

NOW = datetime(2026, 1, 2, 9, 0, tzinfo=UTC)


def activity(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "crmId": "act-1",
        "version": "12",
        "createdAt": "2026-01-02T08:15:00.000Z",
        "modifiedAt": "2026-01-02T09:00:12.345Z",
        "ownerCrmUserId": "usr-1",
        "type": "meeting",
        "subject": "Kick-off",
        "description": "Agenda: scope, plan",
        "start": "2026-01-05T10:00:00+01:00",
        "end": "2026-01-05T11:00:00+01:00",
        "timeZone": "Europe/Berlin",
        "isAllDay": False,
        "location": "Room 4.12",
        "isPrivate": False,
        "attendees": [
            {
                "email": "ada@contoso.com",
                "name": "Ada Lovelace",
                "kind": "contact",
                "type": "required",
                "response": "accepted",
                "crmId": "con-1",
            }
        ],
        "organizer": None,
        "onlineMeeting": None,
        "requestOnlineMeeting": False,
        "links": {"accountId": "acc-1", "contactIds": ["con-1"], "leadIds": []},
        "recurrence": None,
        "occurrenceOverrides": [],
        "cancelledOccurrences": [],
    }
    body.update(changes)
    return body


def field_errors(call: Any) -> dict[str, str]:
    with pytest.raises(InvalidRequestError) as raised:
        call()
    return raised.value.field_errors


def test_a_valid_push_becomes_an_upsert_holding_the_body_as_sent() -> None:
    body = activity()
    entry = upsert_entry("usr-1", "act-1", body, NOW)
    assert entry.operation is OutboxOperation.UPSERT
    assert (entry.user_id, entry.crm_id, entry.crm_version, entry.received_at) == (
        "usr-1",
        "act-1",
        "12",
        NOW,
    )
    assert entry.crm_modified_at == datetime(2026, 1, 2, 9, 0, 12, 345000, tzinfo=UTC)
    assert entry.payload_json is not None
    assert json.loads(entry.payload_json) == body
    assert list(json.loads(entry.payload_json)) == list(body)  # the CRM's field order, too


def test_every_bad_field_is_named_at_once_with_the_path_checks() -> None:
    body = activity(subject=5, end="2026-01-05T09:00:00+01:00", crmId="act-2", ownerCrmUserId="usr-2")
    del body["version"]
    del body["modifiedAt"]
    errors = field_errors(lambda: upsert_entry("usr-1", "act-1", body, NOW))
    assert set(errors) == {"subject", "version", "modifiedAt", "crmId", "ownerCrmUserId"}
    assert errors["version"] == errors["modifiedAt"] == "is required"
    assert "path" in errors["crmId"]
    assert "path" in errors["ownerCrmUserId"]


def test_rule_errors_and_a_path_mismatch_come_together() -> None:
    errors = field_errors(
        lambda: upsert_entry(
            "usr-1", "act-1", activity(end="2026-01-05T09:00:00+01:00", ownerCrmUserId="usr-9"), NOW
        )
    )
    assert set(errors) == {"end", "ownerCrmUserId"}


@pytest.mark.parametrize("user_id", ["", "usr/1", "usr-1\n", "x" * 129])
def test_a_path_user_that_is_no_id_is_refused(user_id: str) -> None:
    errors = field_errors(lambda: upsert_entry(user_id, "act-1", activity(ownerCrmUserId=user_id), NOW))
    assert "crmUserId" in errors
    assert "crmUserId" in field_errors(lambda: delete_entry(user_id, "act-1", "3", NOW))


@pytest.mark.parametrize("version", [None, "", "v" * 65])
def test_a_deletion_needs_a_version(version: str | None) -> None:
    assert set(field_errors(lambda: delete_entry("usr-1", "act-1", version, NOW))) == {"version"}


def test_a_deletion_carries_no_payload_and_no_modification_time() -> None:
    entry = delete_entry("usr-1", "act-1", "13", NOW)
    assert (entry.operation, entry.payload_json, entry.crm_modified_at, entry.crm_version) == (
        OutboxOperation.DELETE,
        None,
        None,
        "13",
    )


@pytest.mark.parametrize(
    ("state", "accepted"),
    [
        (None, False),
        (ConnectionState.DISCONNECTED, False),
        (ConnectionState.PENDING, True),
        (ConnectionState.CONNECTED, True),
        (ConnectionState.RECONNECT_REQUIRED, True),
        (ConnectionState.ERROR, True),
    ],
)
def test_only_disconnected_and_unknown_users_are_refused(
    state: ConnectionState | None, accepted: bool
) -> None:
    connection = None if state is None else Connection("usr-1", state)
    assert accepts_pushes(connection) is accepted


def test_the_answer_says_whether_the_outbox_kept_this_change() -> None:
    sent = upsert_entry("usr-1", "act-1", activity(), NOW)
    later = upsert_entry("usr-1", "act-1", activity(version="13", modifiedAt="2026-01-02T09:05:00.000Z"), NOW)
    deletion = delete_entry("usr-1", "act-1", "14", NOW)
    assert push_status(sent, sent) is PushStatus.QUEUED
    assert (
        push_status(sent, replace(sent, received_at=NOW - timedelta(seconds=5))) is PushStatus.QUEUED
    )  # retry
    assert push_status(sent, later) is PushStatus.SUPERSEDED
    assert push_status(sent, deletion) is PushStatus.SUPERSEDED
    assert push_status(deletion, deletion) is PushStatus.QUEUED
    assert (
        push_status(deletion, replace(deletion, crm_version="9")) is PushStatus.QUEUED
    )  # deleted either way
    assert PushReceipt("act-1", "12", PushStatus.SUPERSEDED).as_json() == {
        "crmId": "act-1",
        "version": "12",
        "status": "superseded",
    }


def test_the_crm_change_reason_travels_and_unknown_reasons_are_kept() -> None:
    message = SyncMessage.of("usr-1", SyncReason.CRM_CHANGE)
    assert message.body() == {"user": "usr-1", "reason": "crm_change"}
    assert parse_sync_message(json.dumps(message.body()).encode()) == message
    assert parse_sync_message(b'{"user": "usr-1", "reason": "from_the_future"}').reason == "from_the_future"


def test_a_push_older_than_the_synced_version_is_superseded_and_never_applied() -> None:
    synced_at = datetime(2026, 1, 2, 9, 5, tzinfo=UTC)
    minute = timedelta(minutes=1)
    link = Link("usr-1", "act-1", "AAMk-1", crm_version="v3", crm_modified_at=synced_at)
    payload = json.dumps(activity())  # modifiedAt 09:00:12, before the synced 09:05
    older = OutboxEntry(
        "usr-1",
        "act-1",
        OutboxOperation.UPSERT,
        payload,
        "12",
        NOW,
        datetime(2026, 1, 2, 9, 0, 12, tzinfo=UTC),
    )
    newer = replace(older, crm_version="v4", crm_modified_at=synced_at + minute)
    deletion = OutboxEntry("usr-1", "act-1", OutboxOperation.DELETE, None, "v2", NOW)
    assert older_than_synced(older, link)
    assert not older_than_synced(newer, link)
    assert not older_than_synced(deletion, link)  # a deletion is never older
    assert not older_than_synced(older, None)
    assert not older_than_synced(older, replace(link, crm_modified_at=None))
    # What can never be older needs no look at the link.
    assert may_be_older_than_synced(older)
    assert not may_be_older_than_synced(deletion)
    assert not may_be_older_than_synced(replace(older, crm_modified_at=None))
    # The reconciler applies the same rule to what waits in the outbox.
    assert is_stale_push(crm_change_from_outbox(older), link)
    assert not is_stale_push(CrmDeletion("act-1", "v2"), link)
