"""The CRM's activity push (``PUT /api/users/{crmUserId}/activities/{crmId}``, ``DELETE …?version=``), end to
end through the local Functions host.

The CRM emulator holds the activities and calls the service as the CRM does (function key + v1 signature);
users connect through the real sign-in trip (Entra ID and Graph emulators); Azurite holds the outbox and the
``sync`` queue, which the test reads directly. The host's ``reconcile`` function is disabled
(``AzureWebJobs.reconcile.Disabled``, as ``bench/webhook.py`` does), so the messages a push queues stay in the
queue to be counted and nothing drains the outbox behind the test's back.

What is shown where:
- 202 ``queued``, the outbox row holding the change, the user's sync woken (one ``crm_change`` message):
  ``test_a_push_is_kept_in_the_outbox_and_wakes_the_users_sync``
- ordering by ``modifiedAt`` (later wins, older answers ``superseded``, retries harmless):
  ``test_a_later_change_supersedes_and_an_older_push_is_answered_superseded``
- a deletion after an upsert is kept and wins: ``test_a_deletion_after_an_upsert_is_kept_and_wins``
- 400 with field errors, 413, 409, 401: ``test_invalid_pushes_get_400_naming_every_bad_field``,
  ``test_an_oversized_body_gets_413``, ``test_users_who_are_not_connected_get_409_others_are_queued``,
  ``test_unsigned_or_wrongly_signed_pushes_get_401_and_change_nothing``
- coalescing: ``test_a_burst_of_50_pushes_for_one_user_queues_one_sync``
- a queue failure: ``test_when_the_sync_cannot_be_queued_the_push_gets_503_and_stays_in_the_outbox``
- logs: ``test_no_log_line_holds_the_pushed_activity_or_a_secret`` (runs last)
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.storage.queue import BinaryBase64DecodePolicy, QueueClient

from devkit.azurite import AzuriteEndpoints
from devkit.crm_emulator import CrmServiceClient, ServiceResponse
from devkit.crm_emulator.signing import signature_headers
from devkit.host_process import HostLauncher, HostProcess, loopback_session
from sync_core.adapters.tables import TableStorage
from sync_core.domain.state import ConnectionState, OutboxEntry, OutboxOperation
from tests.e2e.kit import (
    CRM_SIGNING_SECRET,
    RETURN_URL,
    Browser,
    LogCollector,
    World,
    new_key,
    repo_path,
    running_world,
    storage_for,
    unique_prefix,
)
from tests.e2e.relay import Relay

APP = repo_path("function_app.py")
NEVER = "0 0 0 1 1 *"  # timers run only when a test fires them
USERS = ("alice", "bob", "carol", "dave", "erin", "gina", "hank", "ivan")
# Words only the pushed activities hold: no log line may show them.
SUBJECT = "Merger-talks-" + secrets.token_hex(6)
DESCRIPTION = "Board-only-agenda-" + secrets.token_hex(6)
LOCATION = "Room-" + secrets.token_hex(6)


@dataclass
class Stack:
    world: World
    host: HostProcess
    relay: Relay
    storage: TableStorage
    queue_name: str
    connection_string: str
    browser: Browser
    crm_client: CrmServiceClient
    http: requests.Session

    def connect(self, name: str) -> str:
        """Sign ``name`` in through the real trip; returns the CRM user id (also a user in the CRM)."""
        user_id = f"usr-{name}"
        self.world.crm.add_user(user_id, self.world.users[name].upn)
        answer = self.crm_client.connect(user_id, RETURN_URL, login_hint=self.world.users[name].upn)
        assert answer.status == 200, answer.body
        assert self.browser.sign_in(answer.body["authorizeUrl"]).outcome == {"status": "connected"}
        assert self.connection_state(user_id) is ConnectionState.CONNECTED
        return user_id

    def connection_state(self, user_id: str) -> ConnectionState | None:
        found = self.storage.connections.get(user_id)
        return None if found is None else found.value.state

    def is_dirty(self, user_id: str) -> bool:
        found = self.storage.connections.get(user_id)
        return found is not None and found.value.dirty

    def outbox(self, user_id: str) -> dict[str, OutboxEntry]:
        return {row.value.crm_id: row.value for row in self.storage.outbox.list_for_user(user_id)}

    def queued_reasons(self, user_id: str) -> list[str]:
        """The reasons of the ``sync`` messages waiting for ``user_id`` (nothing consumes them here)."""
        with QueueClient.from_connection_string(
            self.connection_string, self.queue_name, message_decode_policy=BinaryBase64DecodePolicy()
        ) as queue:
            messages = queue.peek_messages(max_messages=32)
        assert len(messages) < 32, "more messages than one peek shows: the count below would be wrong"
        bodies = [json.loads(message.content) for message in messages]
        return [body["reason"] for body in bodies if body["user"] == user_id]

    def new_activity(self, user_id: str, **changes: Any) -> dict[str, Any]:
        """An activity created in the CRM by a person, as the CRM returns it (crmId, version, modifiedAt)."""
        fields = {
            "ownerCrmUserId": user_id,
            "type": "meeting",
            "subject": SUBJECT,
            "description": DESCRIPTION,
            "start": "2026-05-04T10:00:00+02:00",
            "end": "2026-05-04T11:00:00+02:00",
            "timeZone": "Europe/Berlin",
            "location": LOCATION,
            "attendees": [
                {"email": "erin@example.net", "name": "Erin", "kind": "external", "type": "optional"}
            ],
        }
        return self.world.crm.create_as_user({**fields, **changes})

    def edit(self, crm_id: str, **changes: Any) -> dict[str, Any]:
        """A person edits the activity in the CRM: a new version, a later ``modifiedAt``."""
        time.sleep(0.002)  # the CRM writes modifiedAt to the millisecond
        return self.world.crm.edit_as_user(crm_id, changes)

    def raw(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        *,
        sign: bool = True,
        signed_target: str | None = None,
        signed_body: bytes | None = None,
        function_key: bool = True,
    ) -> requests.Response:
        """A request made by hand: signed (or not) over what the test says, which need not be what is sent."""
        headers = {"Content-Type": "application/json"} if body else {}
        if function_key:
            headers["x-functions-key"] = self.host.function_key
        if sign:
            headers.update(
                signature_headers(
                    CRM_SIGNING_SECRET,
                    method,
                    signed_target if signed_target is not None else target,
                    signed_body if signed_body is not None else body,
                    now=time.time(),
                )
            )
        return self.http.request(method, self.relay.url + target, data=body, headers=headers, timeout=30)


def activity_path(user_id: str, crm_id: str) -> str:
    return f"/api/users/{user_id}/activities/{crm_id}"


def sample_activity(user_id: str, crm_id: str = "act-sample-1", **changes: Any) -> dict[str, Any]:
    """A valid Activity the CRM emulator does not hold (for pushes refused before the body is looked at)."""
    activity = {
        "crmId": crm_id,
        "version": "7",
        "createdAt": "2026-01-02T08:15:00.000Z",
        "modifiedAt": "2026-01-02T09:00:12.345Z",
        "ownerCrmUserId": user_id,
        "type": "meeting",
        "subject": SUBJECT,
        "description": DESCRIPTION,
        "start": "2026-05-04T10:00:00+02:00",
        "end": "2026-05-04T11:00:00+02:00",
        "timeZone": "Europe/Berlin",
        "location": LOCATION,
    }
    return {**activity, **changes}


def assert_accepted(answer: ServiceResponse, activity: dict[str, Any], status: str) -> None:
    assert answer.status == 202, answer.body
    assert answer.body == {"crmId": activity["crmId"], "version": activity["version"], "status": status}


def modified_at(activity: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(activity["modifiedAt"])


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
    work = tmp_path_factory.mktemp("activity-push")
    launcher = HostLauncher(work_root=work, base_settings=local_hosts.base_settings, env=local_hosts.env)
    with Relay() as relay, running_world(Path(work / "ca"), [relay.url], USERS) as world:
        prefix = unique_prefix()
        settings = world.host_settings(
            relay.url,
            prefix,
            new_key("k1"),
            RENEWAL_SCHEDULE=NEVER,
            SWEEP_SCHEDULE=NEVER,
            **{"AzureWebJobs.reconcile.Disabled": "true"},
        )
        host = launcher.start(APP, settings)
        relay.point_at(host.base_url)
        world.secrets_seen.update({host.function_key, host.master_key})
        built = Stack(
            world=world,
            host=host,
            relay=relay,
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


# --- accepted pushes ----------------------------------------------------------------------------------------


def test_a_push_is_kept_in_the_outbox_and_wakes_the_users_sync(stack: Stack) -> None:
    user_id = stack.connect("alice")
    assert not stack.is_dirty(user_id)
    activity = stack.new_activity(user_id)

    assert_accepted(stack.crm_client.put_activity(user_id, activity), activity, "queued")

    [entry] = stack.outbox(user_id).values()
    assert entry.operation is OutboxOperation.UPSERT
    assert (entry.user_id, entry.crm_id, entry.crm_version) == (
        user_id,
        activity["crmId"],
        activity["version"],
    )
    assert entry.crm_modified_at == modified_at(activity)
    assert entry.payload_json is not None
    assert json.loads(entry.payload_json) == activity  # the activity as the CRM sent it
    assert stack.is_dirty(user_id)
    assert stack.queued_reasons(user_id) == ["connected", "crm_change"]
    assert stack.crm_client.status(user_id).body["pendingChanges"] == 1

    # Another activity of the same user: kept too, and the sync already queued covers it.
    other = stack.new_activity(user_id, subject="Second", type="personal_appointment")
    assert_accepted(stack.crm_client.put_activity(user_id, other), other, "queued")
    assert set(stack.outbox(user_id)) == {activity["crmId"], other["crmId"]}
    assert stack.queued_reasons(user_id) == ["connected", "crm_change"]
    assert "activity_push: user usr-alice: upsert of " + other["crmId"] + " queued" in stack.host.log_text()


def test_a_later_change_supersedes_and_an_older_push_is_answered_superseded(stack: Stack) -> None:
    user_id = stack.connect("bob")
    first = stack.new_activity(user_id)
    second = stack.edit(first["crmId"], subject="Moved", location=None)
    assert modified_at(second) > modified_at(first)

    assert_accepted(stack.crm_client.put_activity(user_id, first), first, "queued")
    assert_accepted(stack.crm_client.put_activity(user_id, second), second, "queued")
    kept = stack.outbox(user_id)[first["crmId"]]
    assert (kept.crm_version, kept.crm_modified_at) == (second["version"], modified_at(second))
    assert kept.payload_json is not None
    assert json.loads(kept.payload_json)["subject"] == "Moved"

    # A late retry of the older push is ignored, and says so; a retry of the kept one is harmless.
    assert_accepted(stack.crm_client.put_activity(user_id, first), first, "superseded")
    assert_accepted(stack.crm_client.put_activity(user_id, second), second, "queued")
    assert stack.outbox(user_id)[first["crmId"]] == kept
    # Two writes in the same millisecond cannot be ordered by modifiedAt: the one pushed later wins.
    same_moment = {**second, "version": "same-ms", "subject": "Same millisecond"}
    assert_accepted(stack.crm_client.put_activity(user_id, same_moment), same_moment, "queued")
    assert stack.outbox(user_id)[first["crmId"]].crm_version == "same-ms"
    assert stack.queued_reasons(user_id).count("crm_change") == 1


def test_a_deletion_after_an_upsert_is_kept_and_wins(stack: Stack) -> None:
    user_id = stack.connect("carol")
    activity = stack.new_activity(user_id)
    assert_accepted(stack.crm_client.put_activity(user_id, activity), activity, "queued")
    stack.world.crm.delete_as_user(activity["crmId"])

    answer = stack.crm_client.delete_activity(user_id, activity["crmId"], activity["version"])
    assert answer.status == 202, answer.body
    assert answer.body == {"crmId": activity["crmId"], "version": activity["version"], "status": "queued"}
    deletion = stack.outbox(user_id)[activity["crmId"]]
    assert (deletion.operation, deletion.payload_json, deletion.crm_modified_at) == (
        OutboxOperation.DELETE,
        None,
        None,
    )
    assert deletion.crm_version == activity["version"]

    # A push that arrives after the deletion (even with a later modifiedAt) does not bring it back.
    late = {**activity, "version": "late-1", "modifiedAt": "2099-01-01T00:00:00.000Z"}
    assert_accepted(stack.crm_client.put_activity(user_id, late), late, "superseded")
    assert stack.outbox(user_id)[activity["crmId"]] == deletion
    # Deleting again is harmless.
    again = stack.crm_client.delete_activity(user_id, activity["crmId"], activity["version"])
    assert (again.status, again.body["status"]) == (202, "queued")
    assert stack.queued_reasons(user_id).count("crm_change") == 1


# --- refused pushes -----------------------------------------------------------------------------------------


def test_invalid_pushes_get_400_naming_every_bad_field(stack: Stack) -> None:
    user_id = stack.connect("dave")
    activity = stack.new_activity(user_id)

    def refused(answer: ServiceResponse) -> dict[str, str]:
        assert answer.status == 400, answer.body
        assert answer.error_code == "invalid_request"
        assert isinstance(answer.body["error"]["message"], str)
        fields: dict[str, str] = answer.body["error"]["details"]["fields"]
        return fields

    # Several bad fields at once, each named with a message: wrong types, unknown fields, missing ones…
    broken = {**activity, "subject": 5, "colour": "red", "attendees": [{"email": "a@b.example", "kind": "x"}]}
    del broken["version"]
    del broken["modifiedAt"]
    fields = refused(stack.crm_client.put_activity(user_id, broken))
    assert set(fields) == {"subject", "colour", "attendees.0.kind", "version", "modifiedAt"}, fields
    assert fields["version"] == fields["modifiedAt"] == "is required"
    # …and the rules between fields, with a path mismatch on top.
    broken = {
        **activity,
        "modifiedAt": "yesterday",
        "end": "2026-05-04T09:00:00+02:00",  # before start
        "attendees": [{"email": "not-an-address", "kind": "external"}],
        "ownerCrmUserId": "usr-someone-else",
    }
    fields = refused(stack.crm_client.put_activity(user_id, broken))
    assert set(fields) == {"modifiedAt", "end", "attendees.0.email", "ownerCrmUserId"}, fields

    # The body's crmId and owner must be the path's.
    fields = refused(stack.crm_client.put_activity(user_id, activity, crm_id="act-elsewhere"))
    assert set(fields) == {"crmId"}
    not_the_owner = stack.crm_client.put_activity("usr-someone-else", activity)
    assert set(refused(not_the_owner)) == {"ownerCrmUserId"}
    fields = refused(
        stack.crm_client.put_activity(user_id, {**activity, "ownerCrmUserId": "usr-x", "end": 3})
    )
    assert set(fields) == {"ownerCrmUserId", "end"}

    # Not a JSON object.
    not_an_object = stack.raw("PUT", activity_path(user_id, activity["crmId"]), b"[1, 2]")
    assert (not_an_object.status_code, not_an_object.json()["error"]["details"]["fields"]) == (
        400,
        {"(body)": "must be a JSON object"},
    )

    # A deletion needs the version the CRM last held.
    for version in (None, ""):
        fields = refused(stack.crm_client.delete_activity(user_id, activity["crmId"], version))
        assert set(fields) == {"version"}
    assert set(refused(stack.crm_client.delete_activity(user_id, "act 1", "3"))) == {"crmId"}

    assert stack.outbox(user_id) == {}
    assert stack.queued_reasons(user_id) == ["connected"]
    assert not stack.is_dirty(user_id)


def test_an_oversized_body_gets_413(stack: Stack) -> None:
    user_id = "usr-dave"
    huge = sample_activity(user_id, description="x" * (1024 * 1024))
    answer = stack.crm_client.put_activity(user_id, huge)
    assert (answer.status, answer.error_code) == (413, "payload_too_large")
    assert stack.outbox(user_id) == {}


def test_users_who_are_not_connected_get_409_others_are_queued(stack: Stack) -> None:
    world = stack.world
    # Never connected: no connection at all.
    world.crm.add_user("usr-nobody", "nobody@contoso.example")
    stranger = stack.new_activity("usr-nobody")
    for answer in (
        stack.crm_client.put_activity("usr-nobody", stranger),
        stack.crm_client.delete_activity("usr-nobody", stranger["crmId"], stranger["version"]),
    ):
        assert (answer.status, answer.error_code) == (409, "user_not_connected")
    assert stack.outbox("usr-nobody") == {}
    assert stack.storage.connections.get("usr-nobody") is None  # nothing was created for them

    # Disconnected by the CRM.
    user_id = stack.connect("erin")
    assert stack.crm_client.disconnect(user_id).status == 204
    assert stack.connection_state(user_id) is ConnectionState.DISCONNECTED
    activity = stack.new_activity(user_id)
    answer = stack.crm_client.put_activity(user_id, activity)
    assert (answer.status, answer.error_code) == (409, "user_not_connected")
    assert stack.outbox(user_id) == {}

    # A user whose grant stopped working keeps receiving pushes: they sync once the user reconnects.
    user_id = stack.connect("hank")
    stack.storage.connections.update(
        user_id,
        lambda current: (
            None if current is None else replace(current, state=ConnectionState.RECONNECT_REQUIRED)
        ),
    )
    activity = stack.new_activity(user_id)
    assert_accepted(stack.crm_client.put_activity(user_id, activity), activity, "queued")
    assert set(stack.outbox(user_id)) == {activity["crmId"]}


def test_unsigned_or_wrongly_signed_pushes_get_401_and_change_nothing(stack: Stack) -> None:
    user_id = "usr-alice"
    before = stack.outbox(user_id)
    activity = sample_activity(user_id)
    path = activity_path(user_id, activity["crmId"])
    body = json.dumps(activity).encode()

    unsigned = stack.raw("PUT", path, body, sign=False)
    assert (unsigned.status_code, unsigned.json()["error"]["code"]) == (401, "missing_signature")
    altered = stack.raw("PUT", path, body, signed_body=json.dumps({**activity, "subject": "Other"}).encode())
    assert (altered.status_code, altered.json()["error"]["code"]) == (401, "invalid_signature")
    other_version = stack.raw(
        "DELETE", path + "?version=1", signed_target=path + "?version=" + activity["version"]
    )
    assert (other_version.status_code, other_version.json()["error"]["code"]) == (401, "invalid_signature")
    with CrmServiceClient(stack.relay.url, stack.host.function_key, "not-the-signing-secret") as forger:
        forged = forger.put_activity(user_id, activity)
    assert (forged.status, forged.error_code) == (401, "invalid_signature")
    assert stack.raw("PUT", path, body, function_key=False).status_code == 401  # the host's own check

    assert stack.outbox(user_id) == before


# --- coalescing and failures --------------------------------------------------------------------------------


def test_a_burst_of_50_pushes_for_one_user_queues_one_sync(stack: Stack) -> None:
    user_id = stack.connect("gina")
    activities = [stack.new_activity(user_id, subject=f"{SUBJECT} {index}") for index in range(50)]
    clients = [stack.world.crm.service_client(stack.relay.url, stack.host.function_key) for _ in range(8)]
    try:
        with ThreadPoolExecutor(len(clients)) as pool:  # the CRM pushes from several workers at once
            answers = list(
                pool.map(
                    lambda pair: clients[pair[0] % len(clients)].put_activity(user_id, pair[1]),
                    enumerate(activities),
                )
            )
    finally:
        for client in clients:
            client.close()

    assert [(answer.status, answer.body["status"]) for answer in answers] == [(202, "queued")] * 50
    assert set(stack.outbox(user_id)) == {activity["crmId"] for activity in activities}
    # One user going clean → dirty once: one run queued for the whole burst (the run would re-run while the
    # flag is set; at most a couple even if a run cleared it meanwhile).
    assert 1 <= stack.queued_reasons(user_id).count("crm_change") <= 2
    assert stack.crm_client.status(user_id).body["pendingChanges"] == 50
    lines = [line for line in stack.host.log_text().splitlines() if f"user {user_id}: upsert of " in line]
    assert len(lines) == 50
    assert 1 <= sum("(sync run queued)" in line for line in lines) <= 2


def test_when_the_sync_cannot_be_queued_the_push_gets_503_and_stays_in_the_outbox(stack: Stack) -> None:
    user_id = stack.connect("ivan")
    activity = stack.new_activity(user_id)
    with QueueClient.from_connection_string(stack.connection_string, stack.queue_name) as queue:
        queue.delete_queue()  # the host created it once and will not again: its next send fails
        try:
            answer = stack.crm_client.put_activity(user_id, activity)
            assert (answer.status, answer.error_code) == (503, "unavailable")
            # The change is durable (the sweep finds non-empty outboxes) and the mark is undone, so a retry
            # queues the run.
            kept = stack.outbox(user_id)[activity["crmId"]]
            assert kept.crm_version == activity["version"]
            assert not stack.is_dirty(user_id)
        finally:
            queue.create_queue()

    assert_accepted(stack.crm_client.put_activity(user_id, activity), activity, "queued")
    assert stack.is_dirty(user_id)
    assert stack.queued_reasons(user_id) == ["crm_change"]
    assert "its sync could not be queued (StoreError)" in stack.host.log_text()


def test_no_log_line_holds_the_pushed_activity_or_a_secret(stack: Stack, logs: LogCollector) -> None:
    texts = {"host": stack.host.log_text(), "test process": "\n".join(logs.lines)}
    assert "activity_push: user usr-alice: upsert of" in texts["host"]
    for where, text in texts.items():
        for word in (SUBJECT, DESCRIPTION, LOCATION, "erin@example.net"):
            assert word not in text, f"{where} logged a pushed activity's content"
        leaked = [value[:6] + "…" for value in stack.world.secrets_seen if value and value in text]
        assert leaked == [], f"{where} logged a secret"
    assert "Traceback" not in texts["host"]
