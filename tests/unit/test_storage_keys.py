"""Pure parts of the storage adapters: key escaping, queue names, credentials, and no I/O before first use."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from hypothesis import given
from hypothesis import strategies as st

from sync_core.adapters.queues import StorageQueues, poison_queue_name, queue_name
from sync_core.adapters.tables import TableStorage, decode_key, encode_key, storage_credential
from sync_core.config import StorageSettings
from sync_core.domain.state import Lease, OutboxEntry, OutboxOperation

FORBIDDEN_IN_KEYS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
NOW = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)


def identity_settings(client_id: str | None) -> StorageSettings:
    # An address nothing listens on: any request would fail loudly.
    return StorageSettings(
        connection_string=None,
        table_service_uri="https://nothing.invalid",
        queue_service_uri="https://nothing.invalid",
        managed_identity_client_id=client_id,
        table_prefix="app",
    )


@given(st.text())
def test_any_id_encodes_to_a_valid_key_and_back(identifier: str) -> None:
    key = encode_key(identifier)
    assert not FORBIDDEN_IN_KEYS.search(key)
    assert decode_key(key) == identifier


@given(st.text(alphabet=st.characters(exclude_characters="%/\\#?", exclude_categories=["Cc"])))
def test_ids_without_forbidden_characters_stay_readable(identifier: str) -> None:
    assert encode_key(identifier) == identifier


def test_escapes_look_like_percent_encoding() -> None:
    assert encode_key("a/b#c?d\\e%f\x01") == "a%2Fb%23c%3Fd%5Ce%25f%01"


def test_queue_names_are_used_as_given_and_the_poison_queue_appends_poison() -> None:
    # The table prefix is for tables only: SYNC_QUEUE_NAME is the full name the queue trigger listens on.
    assert queue_name("sync") == "sync"
    assert queue_name("t1a2bsync") == "t1a2bsync"
    assert poison_queue_name("t1a2bsync") == "t1a2bsync-poison"
    with pytest.raises(ValueError, match="not a valid queue name"):
        queue_name("Sync_Queue")
    with pytest.raises(ValueError, match="not a valid queue name"):
        poison_queue_name("q" * 57)


def test_credential_is_the_user_assigned_identity_when_a_client_id_is_set() -> None:
    assert isinstance(
        storage_credential(identity_settings("11111111-2222-3333-4444-555555555555")),
        ManagedIdentityCredential,
    )
    assert isinstance(storage_credential(identity_settings(None)), DefaultAzureCredential)


def test_identity_mode_builds_clients_without_any_request() -> None:
    tables = TableStorage(identity_settings("11111111-2222-3333-4444-555555555555"))
    queues = StorageQueues(identity_settings(None))
    try:
        assert tables.connections is tables.connections
        assert tables.table_name("links") == "applinks"
        assert queues.queue_name("sync") == "sync"
    finally:
        tables.close()
        queues.close()


def outbox_entry(
    version: str, operation: OutboxOperation = OutboxOperation.UPSERT, modified: datetime | None = None
) -> OutboxEntry:
    return OutboxEntry("user-1", "act-1", operation, None, version, NOW, crm_modified_at=modified)


def test_outbox_the_later_modification_wins_and_a_deletion_is_final() -> None:
    earlier, later = NOW, NOW + timedelta(seconds=1)
    assert outbox_entry("b", modified=later).supersedes(outbox_entry("a", modified=earlier))
    assert not outbox_entry("a", modified=earlier).supersedes(outbox_entry("b", modified=later))
    # The same push again (a retry): keep what waits.
    assert not outbox_entry("a", modified=earlier).supersedes(outbox_entry("a", modified=earlier))
    # Two writes in the same millisecond: pushes come in order, so the one arriving later wins.
    assert outbox_entry("b", modified=earlier).supersedes(outbox_entry("a", modified=earlier))
    # Versions are opaque: "9" is not older than "10".
    assert not outbox_entry("9", modified=earlier).supersedes(outbox_entry("10", modified=later))
    assert outbox_entry("a", OutboxOperation.DELETE).supersedes(outbox_entry("b", modified=later))
    assert not outbox_entry("c", modified=later).supersedes(outbox_entry("a", OutboxOperation.DELETE))
    assert not outbox_entry("a", OutboxOperation.DELETE).supersedes(outbox_entry("a", OutboxOperation.DELETE))


def test_lease_is_live_until_it_expires() -> None:
    lease = Lease("user-1", "run-a", NOW)
    assert lease.is_live(NOW - timedelta(microseconds=1))
    assert not lease.is_live(NOW)
