"""Graph's webhook and lifecycle endpoints, the sync queue's poison handling and the timers, end to end
through the local Functions host.

Users connect through the real sign-in trip; the Graph emulator creates their subscriptions (running the
validation handshake against the host), sends change notifications when the test edits their calendars as
they would in Outlook, and lifecycle notifications on demand; the CRM emulator receives connection events;
Azurite holds the state. A "sync run" is one message handled by the ``reconcile`` trigger, seen in the host's
log line ``sync: run for user … (reason …)``.

Done-means of the issue, and where each is shown:
1. ``test_subscription_passes_the_handshake_and_a_notification_leads_to_one_sync_run``,
   ``test_wrong_client_state_unknown_subscriptions_and_malformed_input_are_ignored_or_refused``
2. ``test_1000_notifications_for_10_users_make_at_most_20_sync_messages``
3. (a timer run through the host) ``test_the_renewal_timer_recreates_a_missing_subscription_and_the_sweep_
   queues_users``; the 200-user run is tests/integration/test_renewal.py
4. ``test_each_lifecycle_event_gets_its_reaction``
5. ``test_a_message_that_always_fails_is_parked_and_shows_in_the_status_and_at_the_crm``
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.data.tables import TableClient, UpdateMode
from azure.storage.queue import QueueClient

from devkit.azurite import AzuriteEndpoints
from devkit.crm_emulator import CrmServiceClient
from devkit.host_process import HostLauncher, HostProcess, loopback_session
from sync_core.adapters.queues import StorageQueues
from sync_core.adapters.tables import TableStorage
from sync_core.config import Secret, StorageSettings
from sync_core.domain.state import OutboxEntry, OutboxOperation, SubscriptionRecord, Versioned
from tests.e2e.kit import (
    RETURN_URL,
    Browser,
    LogCollector,
    World,
    fast_queue_host_json,
    new_key,
    repo_path,
    running_world,
    storage_for,
    unique_prefix,
    wait_until,
)
from tests.e2e.relay import Relay

APP = repo_path("function_app.py")
NEVER = "0 0 0 1 1 *"  # timers run only when a test fires them
COALESCING_USERS = tuple(f"user{index:02d}" for index in range(10))
USERS = ("alice", "bob", "carol", "dave", "erin", "gina", *COALESCING_USERS)
EVENT = {
    "subject": "Planning",
    "start": {"dateTime": "2026-05-04T09:00:00", "timeZone": "UTC"},
    "end": {"dateTime": "2026-05-04T09:30:00", "timeZone": "UTC"},
}


@dataclass
class Stack:
    world: World
    host: HostProcess
    relay: Relay
    prefix: str
    storage: TableStorage
    queue_name: str
    connection_string: str
    browser: Browser
    crm_client: CrmServiceClient
    http: requests.Session

    def connect(self, name: str) -> str:
        """Sign ``name`` in through the real trip; returns the CRM user id once its first sync ran."""
        user_id = f"usr-{name}"
        answer = self.crm_client.connect(user_id, RETURN_URL, login_hint=self.world.users[name].upn)
        assert answer.status == 200, answer.body
        assert self.browser.sign_in(answer.body["authorizeUrl"]).outcome == {"status": "connected"}
        wait_until(lambda: self.runs(user_id, "connected") == 1, what=f"the first sync of {user_id}")
        return user_id

    def runs(self, user_id: str, reason: str) -> int:
        return self.host.log_text().count(f"sync: run for user {user_id} (reason {reason},")

    def subscription(self, user_id: str) -> Versioned[SubscriptionRecord]:
        [record] = self.storage.subscriptions.list_for_user(user_id)
        return record

    def post(self, route: str, body: bytes, content_type: str = "application/json") -> requests.Response:
        return self.http.post(
            f"{self.relay.url}/api/graph/{route}",
            data=body,
            headers={"Content-Type": content_type},
            timeout=10,
        )

    def settle(self) -> None:
        """Wait until every queued sync message was handled (the queue is empty and stays so for a moment)."""
        with QueueClient.from_connection_string(self.connection_string, self.queue_name) as queue:

            def empty() -> bool:
                return queue.get_queue_properties().approximate_message_count == 0

            wait_until(empty, timeout=30, what="the sync queue to drain")
            time.sleep(0.6)  # a message fetched just now is still running: three polling rounds
            wait_until(empty, timeout=30, what="the sync queue to drain")


@pytest.fixture(scope="module")
def logs() -> Iterator[LogCollector]:
    yield from LogCollector().install()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    local_hosts: HostLauncher,
    azurite: AzuriteEndpoints,
    logs: LogCollector,
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("webhooks")
    launcher = HostLauncher(work_root=work, base_settings=local_hosts.base_settings, env=local_hosts.env)
    with Relay() as relay, running_world(Path(work / "ca"), [relay.url], USERS) as world:
        prefix = unique_prefix()
        settings = world.host_settings(
            relay.url, prefix, new_key("k1"), RENEWAL_SCHEDULE=NEVER, SWEEP_SCHEDULE=NEVER
        )
        host = launcher.start(APP, settings, host_json=fast_queue_host_json(work))
        relay.point_at(host.base_url)
        world.secrets_seen.update({host.function_key, host.master_key})
        built = Stack(
            world=world,
            host=host,
            relay=relay,
            prefix=prefix,
            storage=storage_for(azurite.connection_string, prefix),
            queue_name=settings["SYNC_QUEUE_NAME"],
            connection_string=azurite.connection_string,
            browser=Browser(world.ca, world.secrets_seen),
            crm_client=world.crm.service_client(relay.url, host.function_key),
            http=loopback_session(),
        )
        try:
            yield built
        finally:
            launcher.stop_all()
            for closable in (built.browser, built.crm_client, built.storage, built.http):
                closable.close()


def delivered_items(world: World, subscription_ids: set[str]) -> int:
    deliveries = world.graph.deliveries()
    return sum(
        1
        for delivery in deliveries
        if delivery["outcome"] == "delivered" and not delivery["lifecycle"]
        for item in delivery["payload"]["value"]
        if item["subscriptionId"] in subscription_ids
    )


# --- 1. the handshake, and a notification → one sync run ----------------------------------------------------


def test_subscription_passes_the_handshake_and_a_notification_leads_to_one_sync_run(stack: Stack) -> None:
    world = stack.world
    user_id = stack.connect("alice")
    record = stack.subscription(user_id)
    [subscription] = [s for s in world.graph.subscriptions() if s["id"] == record.value.subscription_id]
    # Graph created it only after the host answered the handshake on both URLs.
    assert subscription["notificationUrl"] == f"{stack.relay.url}/api/graph/notifications"
    assert subscription["lifecycleNotificationUrl"] == f"{stack.relay.url}/api/graph/lifecycle"
    assert record.value.client_state_hash == hashlib.sha256(subscription["clientState"].encode()).hexdigest()
    assert 64 <= len(subscription["clientState"]) <= 128
    stack.settle()  # the first sync is over

    for index in range(3):  # a burst of edits in Outlook
        world.graph.user_create_event(world.users["alice"].oid, {**EVENT, "subject": f"Planning {index}"})
    wait_until(lambda: delivered_items(world, {record.value.subscription_id}) == 3, what="the notifications")
    stack.settle()

    assert stack.runs(user_id, "notification") == 1
    assert all(d["status"] == 202 for d in world.graph.deliveries(record.value.subscription_id))
    connection = stack.storage.connections.get(user_id)
    assert connection is not None
    assert not connection.value.dirty  # the run cleared it
    assert connection.value.last_good_sync_at is not None


def test_wrong_client_state_unknown_subscriptions_and_malformed_input_are_ignored_or_refused(
    stack: Stack,
) -> None:
    user_id = stack.connect("bob")
    sid = stack.subscription(user_id).value.subscription_id

    def items(*values: dict[str, Any]) -> bytes:
        return json.dumps({"value": list(values)}).encode()

    change = {"subscriptionId": sid, "changeType": "updated", "resource": "Users/x/Events/1", "tenantId": "t"}
    ignored = [
        ("notifications", items({**change, "clientState": "not-the-secret"})),
        ("notifications", items({**change})),  # no clientState at all
        ("notifications", items({**change, "subscriptionId": "00000000-0000-0000-0000-000000000000"})),
        ("lifecycle", items({"subscriptionId": sid, "clientState": "nope", "lifecycleEvent": "missed"})),
    ]
    for route, body in ignored:
        assert stack.post(route, body).status_code == 202  # acknowledged (Graph must not retry), not acted on

    refused = [
        (b"{not json", "application/json", "invalid_request", "(body)"),
        (items({**change, "clientState": "x"}), "text/plain", "unsupported_media_type", "Content-Type"),
        (b'{"value": [' + b'"x",' * 300_000 + b'"x"]}', "application/json", "payload_too_large", "(body)"),
        (b'{"value": []}', "application/json", "invalid_request", "value"),
        (items({"subscriptionId": 5}), "application/json", "invalid_request", "value[0].subscriptionId"),
        (
            items({"subscriptionId": sid, "lifecycleEvent": "exploded"}),
            "application/json",
            "invalid_request",
            None,
        ),
    ]
    for body, content_type, code, field in refused:
        answer = stack.post("notifications", body, content_type)
        assert answer.status_code == 400, (code, answer.text)
        error = answer.json()["error"]
        assert error["code"] == code
        if field is not None:
            assert field in error["details"]["fields"]

    stack.settle()
    assert stack.runs(user_id, "notification") == 0
    assert stack.runs(user_id, "missed") == 0
    connection = stack.storage.connections.get(user_id)
    assert connection is not None
    assert not connection.value.dirty
    log = stack.host.log_text()
    assert (
        f"ignored 0 item(s) of unknown subscriptions and 1 with a wrong clientState (subscriptions {sid})"
        in log
    )
    assert "ignored 1 item(s) of unknown subscriptions and 0 with a wrong clientState" in log


# --- 2. coalescing ------------------------------------------------------------------------------------------


def test_1000_notifications_for_10_users_make_at_most_20_sync_messages(stack: Stack) -> None:
    world = stack.world
    user_ids = [stack.connect(name) for name in COALESCING_USERS]
    subscription_ids = {stack.subscription(user_id).value.subscription_id for user_id in user_ids}

    for round_ in range(100):  # the users edit their calendars at once: 1,000 changes in all
        for name in COALESCING_USERS:
            world.graph.user_create_event(world.users[name].oid, {**EVENT, "subject": f"Call {round_}"})
    wait_until(
        lambda: delivered_items(world, subscription_ids) == 1000, timeout=60, what="1,000 notifications"
    )
    stack.settle()

    runs = {user_id: stack.runs(user_id, "notification") for user_id in user_ids}
    assert sum(runs.values()) <= 20, runs
    assert all(count >= 1 for count in runs.values()), runs  # and every user's changes were heard
    posts = [d for d in world.graph.deliveries() if set(d["subscriptionIds"]) & subscription_ids]
    assert all(d["status"] == 202 and d["attempt"] == 1 for d in posts)  # never a retry, never slow
    assert max(d["latencyMs"] for d in posts) < 2900


# --- 4. lifecycle events ------------------------------------------------------------------------------------


def test_each_lifecycle_event_gets_its_reaction(stack: Stack) -> None:
    world = stack.world
    user_id = stack.connect("carol")
    before = stack.subscription(user_id)
    sid = before.value.subscription_id

    # reauthorizationRequired → renewed (a PATCH of the expiry also reauthorizes).
    world.graph.reset_request_log()
    assert world.graph.send_lifecycle(sid, "reauthorizationRequired")
    wait_until(lambda: stack.runs(user_id, "reauthorization_required") == 1, what="the reauthorization run")
    wait_until(lambda: stack.subscription(user_id).value.expires_at > before.value.expires_at, what="renewal")
    patches = [r for r in world.graph.request_log() if r["method"] == "PATCH"]
    assert [(r["path"], r["status"]) for r in patches] == [(f"/subscriptions/{sid}", 200)]
    [at_graph] = [s for s in world.graph.subscriptions() if s["id"] == sid]
    assert (
        datetime.fromisoformat(at_graph["expirationDateTime"]) == stack.subscription(user_id).value.expires_at
    )

    # missed → a resync.
    assert world.graph.send_lifecycle(sid, "missed")
    wait_until(lambda: stack.runs(user_id, "missed") == 1, what="the resync after missed")

    # subscriptionRemoved → a new subscription (handshake and all), the old record gone, then a resync.
    world.graph.remove_subscription(sid, notify=True)
    wait_until(lambda: stack.runs(user_id, "subscription_removed") == 1, what="the run after removal")
    wait_until(
        lambda: (
            [r.value.subscription_id for r in stack.storage.subscriptions.list_for_user(user_id)]
            not in ([], [sid])
        ),
        what="the new subscription",
    )
    replacement = stack.subscription(user_id).value
    assert replacement.subscription_id != sid
    assert stack.storage.subscriptions.get(sid) is None
    assert replacement.subscription_id in {s["id"] for s in world.graph.subscriptions()}
    assert sid not in {s["id"] for s in world.graph.subscriptions()}

    # The new subscription delivers: an Outlook change reaches the host and is accepted.
    world.graph.user_create_event(world.users["carol"].oid, EVENT)
    wait_until(lambda: delivered_items(world, {replacement.subscription_id}) == 1, what="a notification")


# --- 5. poison ----------------------------------------------------------------------------------------------


def test_a_message_that_always_fails_is_parked_and_shows_in_the_status_and_at_the_crm(stack: Stack) -> None:
    world = stack.world
    user_id = stack.connect("dave")
    stack.settle()  # the first sync is over: only the message below is in play
    # The user's token row is damaged (its recorded size no longer fits): every run fails reading it.
    with TableClient.from_connection_string(stack.connection_string, f"{stack.prefix}tokens") as table:
        table.update_entity({"PartitionKey": user_id, "RowKey": "msal", "Size": 1}, mode=UpdateMode.MERGE)
    queues = StorageQueues(
        StorageSettings(Secret(stack.connection_string), None, None, None, table_prefix=stack.prefix)
    )
    try:
        queues.send(stack.queue_name, {"user": user_id, "reason": "notification"})
    finally:
        queues.close()

    [event] = wait_until(
        lambda: world.crm.events("poison", user_id), timeout=30, what="the CRM's poison event"
    )
    assert event["details"]["reason"] == "sync_failed_repeatedly"
    assert event["details"]["crmId"] is None
    assert stack.runs(user_id, "notification") == 5  # host.json maxDequeueCount
    assert f"Moving message to queue '{stack.queue_name}-poison'" in stack.host.log_text()

    status = stack.crm_client.status(user_id).body
    assert status["state"] == "error"
    assert status["lastError"]["reason"] == "poison"
    assert "failed repeatedly" in status["lastError"]["message"]
    assert status["lastError"]["at"] == event["occurredAt"]


# --- timers through the host --------------------------------------------------------------------------------


def test_the_renewal_timer_recreates_a_missing_subscription_and_the_sweep_queues_users(stack: Stack) -> None:
    world = stack.world
    user_id = stack.connect("gina")
    lost = stack.subscription(user_id)
    world.graph.remove_subscription(lost.value.subscription_id, notify=False)  # gone at Graph, silently…
    stack.storage.subscriptions.delete(lost.value)  # …and here (a repair that failed half-way)

    stack.host.fire("renew_subscriptions")
    wait_until(lambda: stack.storage.subscriptions.list_for_user(user_id), what="the recreated subscription")
    recreated = stack.subscription(user_id).value
    assert recreated.subscription_id in {s["id"] for s in world.graph.subscriptions()}
    wait_until(lambda: "renewal: " in stack.host.log_text(), what="the renewal report")
    assert "1 created" in stack.host.log_text().split("renewal: ")[-1].splitlines()[0]

    # Gina's last good sync is long ago, Alice has a CRM change waiting: the sweep queues both, and only them.
    stack.settle()
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    stack.storage.connections.update(
        user_id, lambda current: None if current is None else replace(current, last_good_sync_at=long_ago)
    )
    stack.storage.outbox.put(
        OutboxEntry("usr-alice", "act-swept", OutboxOperation.DELETE, None, "v1", datetime.now(UTC))
    )
    stack.host.fire("sweep")
    for swept, reason in ((user_id, "sweep"), ("usr-alice", "outbox")):
        wait_until(partial(stack.runs, swept, reason), what=f"the sweep's run of {swept}")
        assert stack.runs(swept, reason) == 1
    stack.settle()
    assert stack.runs("usr-user03", "sweep") == 0
    assert not stack.storage.outbox.has_pending("usr-alice")  # the run handled the waiting change


def test_no_log_line_holds_a_client_state_token_or_secret(stack: Stack, logs: LogCollector) -> None:
    client_states = {s["clientState"] for s in stack.world.graph.subscriptions()}
    assert client_states
    texts = {"host": stack.host.log_text(), "test process": "\n".join(logs.lines)}
    for where, text in texts.items():
        leaked = [
            value[:6] + "…" for value in client_states | stack.world.secrets_seen if value and value in text
        ]
        assert leaked == [], f"{where} logged a secret"
        assert "eyJ" not in text, f"{where} logged something JWT-shaped"
