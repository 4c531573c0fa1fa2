"""The services behind the webhook, the poison queue and the sweep, on Azurite (and the CRM emulator): the
parts of their contracts the end-to-end tests cannot arrange, such as a queue that fails right after a user
was marked dirty."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import requests
from azure.storage.queue import QueueClient

from devkit.crm_emulator import CrmEmulator
from sync_core.adapters.crm import CrmClient
from sync_core.adapters.queues import StorageQueues
from sync_core.adapters.tables import TableStorage
from sync_core.config import Secret, StorageSettings
from sync_core.domain.graph_payloads import parse_notifications
from sync_core.domain.retry_policy import RetryPolicy
from sync_core.domain.state import (
    Connection,
    ConnectionState,
    OAuthState,
    OutboxEntry,
    OutboxOperation,
    SubscriptionRecord,
)
from sync_core.domain.sync_message import SyncMessage
from sync_core.domain.webhook import client_state_hash
from sync_core.errors import StoreError
from sync_core.services.notifications import NotificationService
from sync_core.services.poison import PoisonRecorder
from sync_core.services.sweep import Sweep

NOW = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
STATE = "a-client-state-of-sixty-four-characters-0123456789-abcdefghijkl"
API_KEY, SIGNING_SECRET = "svc-api-key", "svc-signing-secret"


@pytest.fixture
def settings(storage_connection_string: str, unique_prefix: str) -> StorageSettings:
    return StorageSettings(Secret(storage_connection_string), None, None, None, unique_prefix)


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


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def messages(connection_string: str, name: str) -> list[dict[str, str]]:
    with QueueClient.from_connection_string(connection_string, name) as queue:
        return [json.loads(base64.b64decode(m.content)) for m in queue.peek_messages(max_messages=32)]


def seed(storage: TableStorage, user_id: str, subscription_id: str, **fields: object) -> None:
    storage.connections.put(replace(Connection(user_id, ConnectionState.CONNECTED), **fields))  # type: ignore[arg-type]
    storage.subscriptions.put(
        SubscriptionRecord(
            subscription_id,
            user_id,
            "/users/o/events",
            ("updated",),
            NOW + timedelta(days=2),
            client_state_hash(STATE),
        )
    )


def burst(*subscription_ids: str) -> object:
    items = [
        {"subscriptionId": sid, "clientState": STATE, "changeType": "updated", "resource": "Users/o/Events/1"}
        for sid in subscription_ids
    ]
    return parse_notifications({"value": items})


def test_a_burst_queues_one_run_per_clean_user_and_none_for_dirty_ones(
    storage: TableStorage,
    queues: StorageQueues,
    pool: ThreadPoolExecutor,
    storage_connection_string: str,
    unique_prefix: str,
) -> None:
    name = f"{unique_prefix}sync"
    queues.ensure_queue(name)
    seed(storage, "usr-a", "sub-a")
    seed(storage, "usr-b", "sub-b", dirty=True, dirty_since=NOW)
    service = NotificationService(
        subscriptions=storage.subscriptions,
        connections=storage.connections,
        queue=queues,
        queue_name=name,
        clock=lambda: NOW,
        pool=pool,
    )

    first = service.accept(burst("sub-a", "sub-a", "sub-b", "sub-x"), operation="test")  # type: ignore[arg-type]
    again = service.accept(burst("sub-a", "sub-b"), operation="test")  # type: ignore[arg-type]

    assert (first.triage.users, first.triage.unknown, first.queued) == (("usr-a", "usr-b"), 1, 1)
    assert again.queued == 0
    assert messages(storage_connection_string, name) == [{"user": "usr-a", "reason": "notification"}]
    marked = storage.connections.get("usr-a")
    assert marked is not None
    assert (marked.value.dirty, marked.value.dirty_since) == (True, NOW)
    assert marked.value.state is ConnectionState.CONNECTED  # only the flag changed


def test_when_queueing_fails_the_mark_is_undone_so_that_graphs_retry_queues_again(
    storage: TableStorage,
    queues: StorageQueues,
    pool: ThreadPoolExecutor,
    storage_connection_string: str,
    unique_prefix: str,
) -> None:
    name = f"{unique_prefix}sync"  # not created yet: sending fails
    seed(storage, "usr-c", "sub-c")

    def service(queue_name: str) -> NotificationService:
        return NotificationService(
            subscriptions=storage.subscriptions,
            connections=storage.connections,
            queue=queues,
            queue_name=queue_name,
            clock=lambda: NOW,
            pool=pool,
        )

    with pytest.raises(StoreError):
        service(name).accept(burst("sub-c"), operation="test")  # type: ignore[arg-type]
    current = storage.connections.get("usr-c")
    assert current is not None
    assert not current.value.dirty

    queues.ensure_queue(name)  # storage is back; Graph delivers the same burst again
    assert service(name).accept(burst("sub-c"), operation="test").queued == 1  # type: ignore[arg-type]
    assert messages(storage_connection_string, name) == [{"user": "usr-c", "reason": "notification"}]


def test_a_parked_message_is_recorded_and_the_crm_told_once(storage: TableStorage) -> None:
    seed(storage, "usr-p", "sub-p")
    parked = NOW + timedelta(minutes=5)
    with CrmEmulator(API_KEY, SIGNING_SECRET, base_path="/crm/v1") as crm:
        client = CrmClient(
            crm.base_url, Secret(API_KEY), Secret(SIGNING_SECRET), loopback(), RetryPolicy(base_delay=0.01)
        )
        recorder = PoisonRecorder(connections=storage.connections, events=client, clock=lambda: NOW)
        message = SyncMessage("usr-p", "notification")

        recorder.record(message, "msg-1", parked)
        recorder.record(message, "msg-1", parked)  # the poison function retried: the same event again
        recorder.record(message, "msg-2", parked + timedelta(minutes=30))  # parked again later (a sweep)
        recorder.record(SyncMessage("usr-nobody"), "msg-3", parked)  # no such user: logged only

        [event] = crm.events("poison", "usr-p")
    assert event["details"] == {
        "reason": "sync_failed_repeatedly",
        "crmId": None,
        "syncReason": "notification",
    }
    current = storage.connections.get("usr-p")
    assert current is not None
    assert current.value.state is ConnectionState.ERROR
    assert current.value.last_error is not None
    assert (current.value.last_error.code, current.value.last_error.at) == (
        "poison",
        parked + timedelta(minutes=30),
    )
    assert "failed repeatedly" in current.value.last_error.message


def test_the_sweep_queues_stale_and_waiting_users_and_purges_expired_rows(
    storage: TableStorage, queues: StorageQueues, storage_connection_string: str, unique_prefix: str
) -> None:
    name = f"{unique_prefix}sync"
    queues.ensure_queue(name)
    seed(storage, "usr-stale", "s1", last_good_sync_at=NOW - timedelta(hours=1))
    seed(storage, "usr-fresh", "s2", last_good_sync_at=NOW - timedelta(minutes=5))
    seed(storage, "usr-never", "s3")
    seed(storage, "usr-outbox", "s4", last_good_sync_at=NOW - timedelta(minutes=1))
    seed(storage, "usr-gone", "s5", state=ConnectionState.RECONNECT_REQUIRED)
    for user_id in ("usr-outbox", "usr-gone"):
        storage.outbox.put(OutboxEntry(user_id, "act-1", OutboxOperation.DELETE, None, "1", NOW))
    storage.oauth_states.put(
        OAuthState("st-1", "usr-x", "https://crm", b"f", NOW - timedelta(hours=1), NOW - timedelta(minutes=1))
    )
    sweep = Sweep(
        connections=storage.connections,
        outbox=storage.outbox,
        oauth_states=storage.oauth_states,
        nonces=storage.nonces,
        queue=queues,
        queue_name=name,
        age=timedelta(minutes=30),
        clock=lambda: NOW,
    )

    report = sweep.run()

    assert (report.stale, report.outbox, report.purged_states) == (2, 1, 1)
    assert sorted((m["user"], m["reason"]) for m in messages(storage_connection_string, name)) == [
        ("usr-never", "sweep"),
        ("usr-outbox", "outbox"),
        ("usr-stale", "sweep"),
    ]


def loopback() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session
