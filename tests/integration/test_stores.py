"""Contract suite for the Table Storage stores and the queue client, against the session's Azurite.

Every call goes over real HTTP to Azurite; each test gets its own table prefix, so tests never share rows.
What it shows: stale ETags are conflicts, a lease has one holder even when two clients race for it, a failed
entity-group transaction writes nothing, big values round-trip through chunks, OAuth states are single-use and
expire, and queue messages are base64 on the wire.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from sync_core.adapters.queues import StorageQueues
from sync_core.adapters.tables import LinkWrite, TableStorage
from sync_core.config import ConflictPolicy, Secret, StorageSettings, SyncDirection
from sync_core.domain.state import (
    Connection,
    ConnectionState,
    Cursor,
    ErrorRecord,
    Lease,
    Link,
    OAuthState,
    OutboxEntry,
    OutboxOperation,
    SubscriptionRecord,
    Versioned,
)
from sync_core.errors import (
    ConflictError,
    LeaseHeldError,
    NotFoundError,
    StoreError,
    UserNotConnectedError,
)

NOW = datetime(2026, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
# Ids with every character Table keys forbid, plus the escape character itself, quotes and non-ASCII.
AWKWARD_ID = "a/b\\c#d?e%25f'g\"h|i\x01j\x7fk\u0085l ü😀"


@pytest.fixture
def settings(storage_connection_string: str, unique_prefix: str) -> StorageSettings:
    return StorageSettings(
        connection_string=Secret(storage_connection_string),
        table_service_uri=None,
        queue_service_uri=None,
        managed_identity_client_id=None,
        table_prefix=unique_prefix,
    )


@pytest.fixture
def storage(settings: StorageSettings) -> Iterator[TableStorage]:
    tables = TableStorage(settings)
    tables.ensure_tables()
    yield tables
    tables.close()


@pytest.fixture
def queues(settings: StorageSettings) -> Iterator[StorageQueues]:
    client = StorageQueues(settings)
    yield client
    client.close()


def raced(*calls: Callable[[], object]) -> list[object]:
    """Run the calls on their own threads, released together by a barrier; each result or raised exception."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], object]) -> object:
        barrier.wait()
        try:
            return call()
        except Exception as error:
            return error

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def connection(user_id: str = "user-1") -> Connection:
    return Connection(user_id=user_id, state=ConnectionState.CONNECTED, tenant_id="tenant-1")


def link(crm_id: str, graph_id: str, user_id: str = "user-1", **changes: object) -> Link:
    base = Link(user_id=user_id, crm_id=crm_id, graph_id=graph_id, base_hashes={"subject": "h1"})
    return replace(base, **changes)  # type: ignore[arg-type]


def outbox_entry(version: int, operation: OutboxOperation = OutboxOperation.UPSERT) -> OutboxEntry:
    """The change of ``act-1`` the CRM made ``version`` minutes after NOW (versions are opaque text)."""
    upsert = operation is OutboxOperation.UPSERT
    return OutboxEntry(
        user_id="user-1",
        crm_id="act-1",
        operation=operation,
        payload_json=json.dumps({"subject": f"v{version}"}) if upsert else None,
        crm_version=f"v{version}",
        received_at=NOW,
        crm_modified_at=NOW + version * MINUTE if upsert else None,
    )


def oauth_state(state_id: str = "state-1", expires_at: datetime = NOW + 10 * MINUTE) -> OAuthState:
    return OAuthState(
        state_id=state_id,
        crm_user_id="user-1",
        return_url="https://crm.example/settings",
        flow=b'{"code_verifier": "v"}',
        created_at=NOW,
        expires_at=expires_at,
    )


def subscription(subscription_id: str, user_id: str = "user-1") -> SubscriptionRecord:
    return SubscriptionRecord(
        subscription_id=subscription_id,
        user_id=user_id,
        resource=f"/users/{user_id}/events",
        change_types=("created", "updated", "deleted"),
        expires_at=NOW + timedelta(days=2),
        client_state_hash="sha256:abc",
    )


# --- (1) a stale ETag is a conflict -----------------------------------------------------------------------


def test_connection_round_trips_every_field(storage: TableStorage) -> None:
    full = Connection(
        user_id=AWKWARD_ID,
        state=ConnectionState.RECONNECT_REQUIRED,
        tenant_id="tenant-1",
        account_oid="oid-1",
        upn="ada@contoso.example",
        home_account_id="oid-1.tenant-1",
        connected_since=NOW - timedelta(days=3),
        last_sync_at=NOW - MINUTE,
        last_good_sync_at=NOW - 2 * MINUTE,
        last_error=ErrorRecord(at=NOW, code="token_revoked", message="sign in again", item_id="act-9"),
        dirty=True,
        dirty_since=NOW,
        direction_override=SyncDirection.CRM_TO_M365,
        conflict_policy_override=ConflictPolicy.CRM_WINS,
    )
    written = storage.connections.put(full)
    read = storage.connections.get(AWKWARD_ID)
    assert read == written
    assert read is not None
    assert read.value == full
    assert storage.connections.get("someone-else") is None


def test_connection_create_twice_and_stale_etag_are_conflicts(storage: TableStorage) -> None:
    first = storage.connections.put(connection())
    with pytest.raises(ConflictError):
        storage.connections.put(connection())
    storage.connections.put(replace(first.value, upn="new@contoso.example"), etag=first.etag)
    with pytest.raises(ConflictError):
        storage.connections.put(replace(first.value, upn="stale@contoso.example"), etag=first.etag)
    current = storage.connections.get("user-1")
    assert current is not None
    assert current.value.upn == "new@contoso.example"


def test_write_to_a_row_deleted_since_it_was_read_is_a_conflict(storage: TableStorage) -> None:
    first = storage.connections.put(connection())
    storage.connections.delete("user-1")
    with pytest.raises(ConflictError):
        storage.connections.put(first.value, etag=first.etag)


def test_token_put_with_stale_etag_is_a_conflict(storage: TableStorage) -> None:
    first = storage.tokens.put("user-1", b"cache-1")
    second = storage.tokens.put("user-1", b"cache-2", etag=first.etag)
    with pytest.raises(ConflictError):
        storage.tokens.put("user-1", b"cache-3", etag=first.etag)
    assert storage.tokens.get("user-1") == second
    with pytest.raises(ConflictError):
        storage.tokens.put("user-1", b"cache-4")  # create over an existing cache


def test_cursor_put_with_stale_etag_is_a_conflict(storage: TableStorage) -> None:
    first = storage.cursors.put(Cursor("user-1", "events", "https://graph/delta?token=1"))
    storage.cursors.put(Cursor("user-1", "events", "https://graph/delta?token=2"), etag=first.etag)
    with pytest.raises(ConflictError):
        storage.cursors.put(Cursor("user-1", "events", "https://graph/delta?token=3"), etag=first.etag)
    current = storage.cursors.get("user-1", "events")
    assert current is not None
    assert current.value.delta_link.endswith("token=2")


def test_subscription_put_with_stale_etag_is_a_conflict(storage: TableStorage) -> None:
    first = storage.subscriptions.put(subscription("sub-1"))
    storage.subscriptions.put(replace(first.value, expires_at=NOW + timedelta(days=3)), etag=first.etag)
    with pytest.raises(ConflictError):
        storage.subscriptions.put(replace(first.value, expires_at=NOW + timedelta(days=4)), etag=first.etag)


def test_link_save_with_stale_previous_is_a_conflict(storage: TableStorage) -> None:
    (first,) = storage.links.write("user-1", [LinkWrite(link("crm-1", "g-1"))])
    storage.links.write("user-1", [LinkWrite(replace(first.value, change_key="ck-2"), previous=first)])
    with pytest.raises(ConflictError):
        storage.links.write("user-1", [LinkWrite(replace(first.value, change_key="ck-3"), previous=first)])
    with pytest.raises(ConflictError):
        storage.links.write("user-1", deletes=[first])
    current = storage.links.get_by_crm_id("user-1", "crm-1")
    assert current is not None
    assert current.value.change_key == "ck-2"


# --- (2) one lease holder, even when two clients race ------------------------------------------------------


def test_lease_race_has_exactly_one_winner_in_each_of_100_rounds(settings: StorageSettings) -> None:
    # Two TableStorage objects: separate clients and connections, as two Functions instances would have.
    first, second = TableStorage(settings), TableStorage(settings)
    first.ensure_tables()
    write_races = 0
    try:
        for round_number in range(100):
            user_id = f"user-{round_number}"
            if round_number % 2:
                # Odd rounds race to take over an expired lease rather than to create one.
                first.leases.acquire(user_id, "crashed-run", NOW - 10 * MINUTE, MINUTE)
            outcomes = raced(
                partial(first.leases.acquire, user_id, "run-a", NOW, MINUTE),
                partial(second.leases.acquire, user_id, "run-b", NOW, MINUTE),
            )
            winners = [outcome for outcome in outcomes if isinstance(outcome, Versioned)]
            losers = [outcome for outcome in outcomes if isinstance(outcome, LeaseHeldError)]
            assert len(winners) == 1, outcomes
            assert len(losers) == 1, outcomes
            stored = first.leases.get(user_id)
            assert stored is not None
            assert stored == winners[0]
            # The loser lost at the conditional write (not at the read) when both read before either wrote.
            write_races += isinstance(losers[0].__cause__, ConflictError)
    finally:
        first.close()
        second.close()
    assert write_races > 0, "the threads never reached the conditional write together"


def test_lease_is_refused_while_live_and_taken_over_once_expired(storage: TableStorage) -> None:
    leases = storage.leases
    held = leases.acquire("user-1", "run-a", NOW, MINUTE)
    assert held.value == Lease("user-1", "run-a", NOW + MINUTE)
    with pytest.raises(LeaseHeldError):
        leases.acquire("user-1", "run-b", NOW + timedelta(seconds=30), MINUTE)
    taken = leases.acquire("user-1", "run-b", NOW + MINUTE, MINUTE)  # expires_at is exclusive
    assert taken.value.holder == "run-b"
    with pytest.raises(LeaseHeldError):
        leases.renew(held, NOW + MINUTE, MINUTE)  # run-a lost it
    leases.release(held)  # releasing a lease that passed on must not delete the new holder's
    assert leases.get("user-1") == taken


def test_lease_renew_and_release(storage: TableStorage) -> None:
    leases = storage.leases
    held = leases.acquire("user-1", "run-a", NOW, MINUTE)
    renewed = leases.renew(held, NOW + timedelta(seconds=50), MINUTE)
    assert renewed.value.expires_at == NOW + timedelta(seconds=110)
    with pytest.raises(LeaseHeldError):
        leases.acquire("user-1", "run-b", NOW + timedelta(seconds=90), MINUTE)
    again = leases.acquire("user-1", "run-a", NOW + timedelta(seconds=90), MINUTE)  # its own holder
    leases.release(again)
    assert leases.get("user-1") is None
    leases.release(again)  # already gone: fine
    with pytest.raises(LeaseHeldError):
        leases.renew(again, NOW, MINUTE)
    assert leases.acquire("user-1", "run-b", NOW, MINUTE).value.holder == "run-b"


# --- (3) a failed entity-group transaction writes nothing -------------------------------------------------


def test_failed_transaction_midway_leaves_nothing_written(storage: TableStorage) -> None:
    (existing,) = storage.links.write("user-1", [LinkWrite(link("crm-x", "g-x"))])
    # Operations: create c|crm-a, create g|g-a, create c|crm-x (exists: fails), create g|g-y.
    with pytest.raises(ConflictError):
        storage.links.write("user-1", [LinkWrite(link("crm-a", "g-a")), LinkWrite(link("crm-x", "g-y"))])
    assert storage.links.get_by_crm_id("user-1", "crm-a") is None
    assert storage.links.get_by_graph_id("user-1", "g-a") is None
    assert storage.links.get_by_graph_id("user-1", "g-y") is None
    assert list(storage.links.list_for_user("user-1")) == [existing]


def test_stale_update_in_a_transaction_rolls_back_the_other_saves(storage: TableStorage) -> None:
    first, second = storage.links.write(
        "user-1", [LinkWrite(link("crm-1", "g-1")), LinkWrite(link("crm-2", "g-2"))]
    )
    storage.links.write("user-1", [LinkWrite(replace(second.value, change_key="elsewhere"), previous=second)])
    with pytest.raises(ConflictError):
        storage.links.write(
            "user-1",
            [
                LinkWrite(replace(first.value, graph_id="g-1b"), previous=first),
                LinkWrite(replace(second.value, change_key="stale"), previous=second),
            ],
        )
    assert storage.links.get_by_crm_id("user-1", "crm-1") == first
    assert storage.links.get_by_graph_id("user-1", "g-1") == first
    assert storage.links.get_by_graph_id("user-1", "g-1b") is None


# --- (4) big values are chunked, not truncated --------------------------------------------------------------


@pytest.mark.parametrize("size", [300 * 1024, 900 * 1024])
def test_oversized_token_cache_round_trips(storage: TableStorage, size: int) -> None:
    blob = os.urandom(size)
    written = storage.tokens.put("user-1", blob)
    read = storage.tokens.get("user-1")
    assert read is not None
    assert read.value == blob
    assert read.etag == written.etag
    # Shrinking replaces the whole row: no chunk of the old value survives.
    storage.tokens.put("user-1", b"small", etag=read.etag)
    again = storage.tokens.get("user-1")
    assert again is not None
    assert again.value == b"small"


def test_value_over_the_entity_limit_is_refused_and_nothing_written(storage: TableStorage) -> None:
    with pytest.raises(StoreError, match="entity limit"):
        storage.tokens.put("user-1", os.urandom(1024 * 1024))
    assert storage.tokens.get("user-1") is None


def test_big_text_round_trips_in_outbox_payload_and_link_base(storage: TableStorage) -> None:
    description = "Ünïcode 😀 " * 20_000  # ~240 KB of UTF-8, far over one 64 KiB property
    entry = replace(outbox_entry(1), payload_json=json.dumps({"description": description}))
    storage.outbox.put(entry)
    (stored,) = storage.outbox.list_for_user("user-1")
    assert stored.value == entry
    hashes = {f"field-{number}": "f" * 64 for number in range(2000)}  # ~150 KB of JSON
    (saved,) = storage.links.write("user-1", [LinkWrite(link("crm-1", "g-1", base_hashes=hashes))])
    assert storage.links.get_by_graph_id("user-1", "g-1") == saved
    assert saved.value.base_hashes == hashes


def test_links_with_big_bases_are_split_below_the_transaction_size_limit(storage: TableStorage) -> None:
    hashes = {f"field-{number}": "f" * 64 for number in range(3000)}  # ~220 KB each, ~3.5 MB in all
    saved = storage.links.write(
        "user-1", [LinkWrite(link(f"crm-{n}", f"g-{n}", base_hashes=hashes)) for n in range(16)]
    )
    assert [item.value.base_hashes == hashes for item in storage.links.list_for_user("user-1")] == [True] * 16
    assert storage.links.get_by_graph_id("user-1", "g-15") == saved[15]


# --- (5) OAuth states are single-use and expire -----------------------------------------------------------


def test_oauth_state_is_single_use(storage: TableStorage) -> None:
    state = oauth_state()
    storage.oauth_states.put(state)
    assert storage.oauth_states.consume("state-1", NOW) == state
    with pytest.raises(NotFoundError):
        storage.oauth_states.consume("state-1", NOW)
    with pytest.raises(NotFoundError):
        storage.oauth_states.consume("never-issued", NOW)
    storage.oauth_states.put(oauth_state("state-2"))
    with pytest.raises(ConflictError):
        storage.oauth_states.put(oauth_state("state-2"))


def test_racing_consumes_of_one_oauth_state_have_exactly_one_winner(settings: StorageSettings) -> None:
    first, second = TableStorage(settings), TableStorage(settings)
    first.ensure_tables()
    try:
        for round_number in range(20):
            state_id = f"state-{round_number}"
            first.oauth_states.put(oauth_state(state_id))
            outcomes = raced(
                partial(first.oauth_states.consume, state_id, NOW),
                partial(second.oauth_states.consume, state_id, NOW),
            )
            assert sum(isinstance(outcome, OAuthState) for outcome in outcomes) == 1, outcomes
            assert sum(isinstance(outcome, NotFoundError) for outcome in outcomes) == 1, outcomes
    finally:
        first.close()
        second.close()


def test_oauth_state_expires(storage: TableStorage) -> None:
    storage.oauth_states.put(oauth_state(expires_at=NOW + MINUTE))
    with pytest.raises(NotFoundError, match="expired"):
        storage.oauth_states.consume("state-1", NOW + MINUTE)
    # The expired row was deleted when met.
    with pytest.raises(NotFoundError, match="already used"):
        storage.oauth_states.consume("state-1", NOW)


def test_purge_expired_oauth_states(storage: TableStorage) -> None:
    storage.oauth_states.put(oauth_state("old", expires_at=NOW - MINUTE))
    storage.oauth_states.put(oauth_state("fresh", expires_at=NOW + MINUTE))
    assert storage.oauth_states.purge_expired(NOW) == 1
    assert storage.oauth_states.consume("fresh", NOW).state_id == "fresh"


# --- links --------------------------------------------------------------------------------------------------


def test_links_are_found_by_both_ids_and_listed_per_user(storage: TableStorage) -> None:
    saved = storage.links.write(
        AWKWARD_ID,
        [
            LinkWrite(
                link("crm/1#", "AAMk/+=1", user_id=AWKWARD_ID, ical_uid="uid-1", crm_version='W/"2**40"')
            ),
            LinkWrite(
                link(
                    AWKWARD_ID,
                    "AAMk/+=2",
                    user_id=AWKWARD_ID,
                    series_master_id="AAMk/+=0",
                    base_attendees='{"crm":[],"m365":[]}',
                    base_occurrences='{"crm":{"2026-03-10T10:00:00Z":"ab"},"m365":{}}',
                    crm_owner_id="usr-owner",
                )
            ),
        ],
    )
    storage.links.write("user-2", [LinkWrite(link("crm/1#", "other", user_id="user-2"))])
    assert storage.links.get_by_crm_id(AWKWARD_ID, "crm/1#") == saved[0]
    assert storage.links.get_by_graph_id(AWKWARD_ID, "AAMk/+=1") == saved[0]
    assert storage.links.get_by_graph_id(AWKWARD_ID, "AAMk/+=2") == saved[1]
    assert storage.links.get_by_graph_id(AWKWARD_ID, "other") is None
    assert sorted(item.value.crm_id for item in storage.links.list_for_user(AWKWARD_ID)) == sorted(
        ["crm/1#", AWKWARD_ID]
    )


def test_links_are_found_many_at_once_by_either_id(storage: TableStorage) -> None:
    # 40 links: the lookups span several queries (14 keys each), and awkward ids survive the filter's quoting.
    ids = [(f"crm-{n}'{AWKWARD_ID}", f"AAMk/+={n}'q") for n in range(40)]
    saved = storage.links.write(
        AWKWARD_ID, [LinkWrite(link(crm_id, graph_id, user_id=AWKWARD_ID)) for crm_id, graph_id in ids]
    )
    storage.links.write("user-2", [LinkWrite(link(ids[0][0], "elsewhere", user_id="user-2"))])
    wanted = [graph_id for _crm_id, graph_id in ids[::2]] + ["never-linked", "elsewhere"]
    by_graph = storage.links.find_by_graph_ids(AWKWARD_ID, wanted)
    assert by_graph == {ids[n][1]: saved[n] for n in range(0, 40, 2)}
    by_crm = storage.links.find_by_crm_ids(AWKWARD_ID, [crm_id for crm_id, _graph_id in ids] + ["nope"])
    assert by_crm == {ids[n][0]: saved[n] for n in range(40)}
    assert storage.links.find_by_crm_ids("user-2", [ids[0][0], ids[1][0]]) == {
        ids[0][0]: storage.links.get_by_crm_id("user-2", ids[0][0])
    }
    assert storage.links.find_by_graph_ids(AWKWARD_ID, []) == {}


def test_link_graph_id_change_moves_the_index(storage: TableStorage) -> None:
    (first,) = storage.links.write("user-1", [LinkWrite(link("crm-1", "g-old"))])
    (moved,) = storage.links.write(
        "user-1", [LinkWrite(replace(first.value, graph_id="g-new"), previous=first)]
    )
    assert storage.links.get_by_graph_id("user-1", "g-old") is None
    assert storage.links.get_by_graph_id("user-1", "g-new") == moved


def test_two_links_swapping_graph_ids_in_one_write(storage: TableStorage) -> None:
    one, two = storage.links.write(
        "user-1", [LinkWrite(link("crm-1", "g-1")), LinkWrite(link("crm-2", "g-2"))]
    )
    storage.links.write(
        "user-1",
        [
            LinkWrite(replace(one.value, graph_id="g-2"), previous=one),
            LinkWrite(replace(two.value, graph_id="g-1"), previous=two),
        ],
    )
    by_graph_1 = storage.links.get_by_graph_id("user-1", "g-1")
    by_graph_2 = storage.links.get_by_graph_id("user-1", "g-2")
    assert by_graph_1 is not None
    assert by_graph_1.value.crm_id == "crm-2"
    assert by_graph_2 is not None
    assert by_graph_2.value.crm_id == "crm-1"


def test_graph_id_linked_twice_is_a_conflict(storage: TableStorage) -> None:
    storage.links.write("user-1", [LinkWrite(link("crm-1", "g-1"))])
    with pytest.raises(ConflictError):
        storage.links.write("user-1", [LinkWrite(link("crm-2", "g-1"))])
    assert storage.links.get_by_crm_id("user-1", "crm-2") is None


def test_link_delete_removes_both_rows_and_more_than_100_operations_split(storage: TableStorage) -> None:
    many = [LinkWrite(link(f"crm-{number}", f"g-{number}")) for number in range(120)]  # 240 row operations
    saved = storage.links.write("user-1", many)
    assert len(list(storage.links.list_for_user("user-1"))) == 120
    storage.links.write("user-1", deletes=saved[:60])
    assert storage.links.get_by_graph_id("user-1", "g-0") is None
    assert storage.links.get_by_crm_id("user-1", "crm-0") is None
    assert storage.links.get_by_graph_id("user-1", "g-60") == saved[60]
    assert storage.links.purge_user("user-1") == 120  # 60 links, 2 rows each
    assert list(storage.links.list_for_user("user-1")) == []


# --- outbox -------------------------------------------------------------------------------------------------


def test_outbox_keeps_the_newest_change(storage: TableStorage) -> None:
    outbox = storage.outbox
    assert not outbox.has_pending("user-1")
    outbox.put(outbox_entry(2))
    assert outbox.put(outbox_entry(1)).value == outbox_entry(2)  # older arrives late: ignored
    assert outbox.put(outbox_entry(3)).value == outbox_entry(3)
    deletion = outbox_entry(3, OutboxOperation.DELETE)  # a delete is final
    assert outbox.put(deletion).value == deletion
    assert outbox.put(outbox_entry(4)).value == deletion  # no upsert revives a waiting deletion
    assert [entry.value for entry in outbox.list_for_user("user-1")] == [deletion]
    waiting = outbox.get("user-1", deletion.crm_id)
    assert waiting is not None
    assert waiting.value == deletion
    assert outbox.get("user-1", "crm-other") is None
    assert outbox.has_pending("user-1")
    assert list(outbox.users_with_pending()) == ["user-1"]


def test_outbox_delete_handled_never_deletes_a_newer_change(storage: TableStorage) -> None:
    outbox = storage.outbox
    outbox.put(outbox_entry(1))
    (handled,) = outbox.list_for_user("user-1")
    outbox.put(outbox_entry(2))  # arrives while the run applies version 1
    assert outbox.delete_handled(handled) is False
    (waiting,) = outbox.list_for_user("user-1")
    assert waiting.value.crm_version == "v2"
    assert outbox.delete_handled(waiting) is True
    assert not outbox.has_pending("user-1")


def test_outbox_rows_handled_together_go_in_one_call_and_a_newer_change_stays(storage: TableStorage) -> None:
    outbox = storage.outbox
    for number in range(120):  # more than one transaction holds
        outbox.put(replace(outbox_entry(1), crm_id=f"act-{number}"))
    handled = outbox.list_for_user("user-1")
    assert outbox.delete_all_handled(handled) == 120
    assert not outbox.has_pending("user-1")
    for number in range(3):
        outbox.put(replace(outbox_entry(1), crm_id=f"act-{number}"))
    handled = outbox.list_for_user("user-1")
    outbox.put(replace(outbox_entry(2), crm_id="act-1"))  # arrives while the run applies version 1
    assert outbox.delete_all_handled(handled) == 2
    (waiting,) = outbox.list_for_user("user-1")
    assert (waiting.value.crm_id, waiting.value.crm_version) == ("act-1", "v2")


# --- subscriptions ------------------------------------------------------------------------------------------


def test_subscriptions_by_id_by_user_and_all(storage: TableStorage) -> None:
    subscriptions = storage.subscriptions
    first = subscriptions.put(subscription("sub-1"))
    second = subscriptions.put(subscription("sub-2"))
    other = subscriptions.put(subscription("sub-3", user_id=AWKWARD_ID))
    assert subscriptions.get("sub-1") == first
    assert subscriptions.get("sub-unknown") is None
    assert sorted(s.value.subscription_id for s in subscriptions.list_for_user("user-1")) == [
        "sub-1",
        "sub-2",
    ]
    assert subscriptions.list_for_user(AWKWARD_ID) == [other]
    assert sorted(s.value.subscription_id for s in subscriptions.list_all()) == ["sub-1", "sub-2", "sub-3"]
    subscriptions.delete(second.value)
    assert subscriptions.get("sub-2") is None
    assert subscriptions.list_for_user("user-1") == [first]
    with pytest.raises(ConflictError):
        subscriptions.put(subscription("sub-1"))


def test_subscription_readers_skip_a_dangling_index_row(
    storage: TableStorage, storage_connection_string: str
) -> None:
    kept = storage.subscriptions.put(subscription("sub-1"))
    # What a crash between writing the index row and the primary row leaves behind.
    with TableClient.from_connection_string(
        storage_connection_string, storage.table_name("subscriptions")
    ) as raw:
        raw.create_entity({"PartitionKey": "u|user-1", "RowKey": "sub-crashed"})
    assert storage.subscriptions.list_for_user("user-1") == [kept]
    assert [s.value.subscription_id for s in storage.subscriptions.list_all()] == ["sub-1"]


# --- cursors, connections -----------------------------------------------------------------------------------


def test_cursors_per_user_and_resource(storage: TableStorage) -> None:
    long_link = "https://graph.microsoft.com/v1.0/me/calendarView/delta?$deltatoken=" + "x" * 40_000
    storage.cursors.put(Cursor(AWKWARD_ID, "events", long_link))
    storage.cursors.put(Cursor(AWKWARD_ID, "contacts", "https://graph/contacts"))
    events = storage.cursors.get(AWKWARD_ID, "events")
    assert events is not None
    assert events.value.delta_link == long_link
    assert storage.cursors.get("user-2", "events") is None
    assert storage.cursors.purge_user(AWKWARD_ID) == 2
    assert storage.cursors.get(AWKWARD_ID, "contacts") is None


def test_mark_dirty_and_list_all_connections(storage: TableStorage) -> None:
    storage.connections.put(connection("user-1"))
    storage.connections.put(connection("user-2"))
    assert storage.connections.mark_dirty("user-1", NOW) is True
    assert storage.connections.mark_dirty("user-1", NOW + MINUTE) is False  # already dirty: no write
    assert storage.connections.mark_dirty("nobody", NOW) is False
    dirty = {c.value.user_id: (c.value.dirty, c.value.dirty_since) for c in storage.connections.list_all()}
    assert dirty == {"user-1": (True, NOW), "user-2": (False, None)}


def test_mark_dirty_checks_the_state_in_the_same_read_and_refuses_without_writing(
    storage: TableStorage,
) -> None:
    connections = storage.connections
    connections.put(replace(connection("user-1"), state=ConnectionState.DISCONNECTED))
    connections.put(replace(connection("user-2"), state=ConnectionState.RECONNECT_REQUIRED))

    def accepts(state: ConnectionState) -> bool:
        return state is not ConnectionState.DISCONNECTED

    with pytest.raises(UserNotConnectedError):
        connections.mark_dirty("user-1", NOW, accepts=accepts)
    with pytest.raises(UserNotConnectedError):
        connections.mark_dirty("nobody", NOW, accepts=accepts)
    assert not connections.is_dirty("user-1")
    assert connections.mark_dirty("user-2", NOW, accepts=accepts) is True
    assert connections.is_dirty("user-2")


def test_end_round_starts_the_next_round_in_the_same_write_when_dirty(storage: TableStorage) -> None:
    connections = storage.connections
    connections.put(connection("user-1"))
    started = connections.start_round("user-1", NOW + MINUTE)
    assert started is not None
    assert started.value.running_until == NOW + MINUTE
    assert connections.mark_dirty("user-1", NOW) is False  # a run is on: it looks at the flag itself
    end = connections.end_round("user-1", lambda c: None, next_round_until=NOW + 2 * MINUTE)
    assert end.dirty is True
    assert end.next_round is not None
    assert (end.next_round.value.dirty, end.next_round.value.running_until) == (False, NOW + 2 * MINUTE)
    assert connections.get("user-1") == end.next_round
    # Clean at the end: the run ends in that write (no run on), and no next round is started.
    end = connections.end_round("user-1", lambda c: None, next_round_until=NOW + 3 * MINUTE)
    assert (end.dirty, end.next_round) == (False, None)
    stored = connections.get("user-1")
    assert stored is not None
    assert stored.value.running_until is not None
    assert stored.value.running_until < NOW
    # Dirty at the run's last round (no next_round_until): the flag stays for the next message's run.
    connections.start_round("user-1", NOW + MINUTE)
    connections.mark_dirty("user-1", NOW)
    assert connections.end_round("user-1", lambda c: None).dirty is True
    assert connections.is_dirty("user-1")


def test_a_run_begins_and_ends_with_its_lease_and_cursor_in_one_transaction_each(
    storage: TableStorage,
) -> None:
    connections = storage.connections
    connections.put(replace(connection("user-1"), dirty=True))
    begun = connections.begin_run("user-1", "run-a", NOW, MINUTE, "events")
    assert begun.cursor is None
    assert begun.connection is not None
    assert (begun.connection.value.dirty, begun.connection.value.running_until) == (False, NOW + MINUTE)
    assert connections.get("user-1") == begun.connection
    assert storage.leases.get("user-1") == begun.lease
    with pytest.raises(LeaseHeldError):  # exclusive: a second run is refused, and writes nothing
        connections.begin_run("user-1", "run-b", NOW + timedelta(seconds=30), MINUTE, "events")
    assert storage.leases.get("user-1") == begun.lease
    # The round ends dirty: the cursor is saved and the next round starts; the lease stays.
    connections.mark_dirty("user-1", NOW)
    first = Cursor("user-1", "events", "https://graph/delta?token=1")
    end = connections.end_round(
        "user-1", lambda c: None, next_round_until=NOW + MINUTE, cursor=first, lease=begun.lease
    )
    assert (end.dirty, end.released) == (True, False)
    assert end.cursor == storage.cursors.get("user-1", "events")
    assert storage.leases.get("user-1") == begun.lease
    # The last round ends clean: cursor saved and lease released in the same write.
    second = Cursor("user-1", "events", "https://graph/delta?token=2")
    end = connections.end_round("user-1", lambda c: None, cursor=second, lease=begun.lease)
    assert (end.dirty, end.released) == (False, True)
    assert storage.cursors.get("user-1", "events") == end.cursor
    assert end.cursor is not None
    assert end.cursor.value == second
    assert storage.leases.get("user-1") is None
    again = connections.begin_run("user-1", "run-b", NOW, MINUTE, "events")
    assert again.cursor == end.cursor
    # Only connection rows are listed, though the partition holds the lease and cursor too.
    assert [found.value.user_id for found in connections.list_all()] == ["user-1"]


def test_begin_run_race_has_exactly_one_winner(settings: StorageSettings) -> None:
    first, second = TableStorage(settings), TableStorage(settings)
    try:
        first.ensure_tables()
        for number in range(20):
            user_id = f"user-{number}"
            first.connections.put(connection(user_id))
            if number % 2:  # half of them with an expired lease to take over
                first.leases.acquire(user_id, "crashed-run", NOW - 10 * MINUTE, MINUTE)
            results = raced(
                partial(first.connections.begin_run, user_id, "run-a", NOW, MINUTE, "events"),
                partial(second.connections.begin_run, user_id, "run-b", NOW, MINUTE, "events"),
            )
            winners = [result for result in results if not isinstance(result, Exception)]
            assert len(winners) == 1, results
            assert all(isinstance(result, LeaseHeldError) for result in results if result not in winners)
    finally:
        first.close()
        second.close()


def test_an_id_too_long_for_a_key_is_refused_clearly(storage: TableStorage) -> None:
    with pytest.raises(StoreError, match="too long for a Table key"):
        storage.connections.get("x" * 600)


def test_missing_tables_are_a_store_error_not_an_absent_row(settings: StorageSettings) -> None:
    not_ensured = TableStorage(replace(settings, table_prefix=settings.table_prefix + "x"))
    try:
        with pytest.raises(StoreError, match="ensure_tables"):
            not_ensured.connections.get("user-1")
    finally:
        not_ensured.close()


# --- queues -------------------------------------------------------------------------------------------------


def test_queue_message_is_base64_json_on_the_wire(
    queues: StorageQueues, storage_connection_string: str, unique_prefix: str
) -> None:
    name = unique_prefix + "sync"  # queue names are used as given; tests choose unique ones
    queues.ensure_queue(name)
    queues.ensure_queue(name)  # idempotent
    assert queues.queue_name(name) == name
    payload = {"userId": AWKWARD_ID, "reason": "notification"}
    queues.send(name, payload)
    # Read it as the Functions host does: raw text, no decode policy; it must be base64 of the JSON.
    with QueueClient.from_connection_string(storage_connection_string, unique_prefix + "sync") as raw:
        (message,) = list(raw.receive_messages(max_messages=5))
        assert json.loads(base64.b64decode(message.content, validate=True)) == payload


def test_queue_visibility_timeout_and_size_limit(
    queues: StorageQueues, storage_connection_string: str, unique_prefix: str
) -> None:
    name = unique_prefix + "sync"
    queues.ensure_queue(name)
    queues.send(name, {"userId": "user-1"}, visibility_timeout=60)
    with QueueClient.from_connection_string(storage_connection_string, name) as raw:
        assert raw.peek_messages() == []
        assert raw.get_queue_properties().approximate_message_count == 1
    with pytest.raises(StoreError, match="64 KiB"):
        queues.send(name, {"blob": "x" * 60_000})


def test_sending_to_a_queue_never_created_is_a_store_error(queues: StorageQueues, unique_prefix: str) -> None:
    with pytest.raises(StoreError, match="ensure_queue"):
        queues.send(unique_prefix + "neverensured", {"userId": "user-1"})
