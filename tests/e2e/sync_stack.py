"""A running service for sync scenarios: Azurite, the local Functions host on function_app.py, the Graph,
Entra ID and CRM emulators, and users who connected through the real sign-in trip.

Changes are made as people make them: in Outlook through the Graph emulator's user API (which sends change
notifications to the host's webhook, as Graph does), in the CRM through the CRM emulator's user API followed
by the CRM's push to the service (``PUT``/``DELETE /api/users/{id}/activities/{crmId}``, signed). The sync
then runs by itself: webhook → queue → ``reconcile``. Nothing is called directly in the service.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import requests
from azure.storage.queue import QueueClient

from devkit.crm_emulator import CrmServiceClient
from devkit.graph_emulator import EmulatorSettings
from devkit.host_process import HostLauncher, HostProcess
from sync_core.adapters.tables import TableStorage
from sync_core.config import ConflictPolicy, SyncDirection
from tests.e2e.kit import (
    RETURN_URL,
    Browser,
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
Json = dict[str, Any]


@dataclass
class SyncStack:
    world: World
    host: HostProcess
    relay: Relay
    prefix: str
    storage: TableStorage
    queue_name: str
    connection_string: str
    browser: Browser
    crm_client: CrmServiceClient
    connected: dict[str, str] = field(default_factory=dict)  # CRM user id → emulator user name
    # What ``restart_host`` needs to start another host on the same storage (set by ``running_sync_stack``).
    launcher: HostLauncher | None = None
    host_settings: dict[str, str] = field(default_factory=dict)
    host_json: Path | None = None

    # --- people ---

    def connect(self, name: str, *, wait: bool = True) -> str:
        """Sign ``name`` in (a CRM user ``usr-{name}`` with the same email); returns the CRM user id once its
        first sync ran (``wait=False``: as soon as the sign-in came back)."""
        user_id = f"usr-{name}"
        upn = self.world.users[name].upn
        self.world.crm.add_user(user_id, upn, name.title())
        answer = self.crm_client.connect(user_id, RETURN_URL, login_hint=upn)
        assert answer.status == 200, answer.body
        assert self.browser.sign_in(answer.body["authorizeUrl"]).outcome == {"status": "connected"}
        self.connected[user_id] = name
        if wait:
            wait_until(lambda: self._ran_once(user_id), timeout=30, what=f"the first sync of {user_id}")
        return user_id

    def open_mailbox(self, name: str) -> str:
        """Give ``name`` their Outlook mailbox before they connect (for events that exist before connecting);
        returns its user id for ``world.graph.user_create_event``."""
        user = self.world.users[name]
        self.world.graph.add_mailbox(
            user.oid, upn=user.upn, display_name=user.display_name, tenant_id=user.tenant_id
        )
        return user.oid

    def set_overrides(
        self,
        user_id: str,
        *,
        direction: SyncDirection | None = None,
        conflict_policy: ConflictPolicy | None = None,
    ) -> None:
        """Give ``user_id`` a per-user sync direction / conflict policy. The service reads them from the
        user's connection row; no endpoint sets them yet, so this writes the row (as an admin tool would)."""
        updated = self.storage.connections.update(
            user_id,
            lambda current: (
                None
                if current is None
                else replace(current, direction_override=direction, conflict_policy_override=conflict_policy)
            ),
        )
        assert updated is not None, f"{user_id} has no connection"

    def connected_user(self, name: str) -> str:
        """``name``'s CRM user id, connecting the user first if no test did yet."""
        user_id = f"usr-{name}"
        return user_id if user_id in self.connected else self.connect(name)

    def _ran_once(self, user_id: str) -> bool:
        connection = self.storage.connections.get(user_id)
        return connection is not None and connection.value.last_good_sync_at is not None

    def oid(self, user_id: str) -> str:
        return self.world.users[self.connected[user_id]].oid

    # --- Outlook, as the user ---

    def outlook_create(self, user_id: str, event: Mapping[str, Any]) -> Json:
        return self.world.graph.user_create_event(self.oid(user_id), event)

    def outlook_update(self, user_id: str, event_id: str, changes: Mapping[str, Any]) -> Json:
        return self.world.graph.user_update_event(self.oid(user_id), event_id, changes)

    def outlook_delete(self, user_id: str, event_id: str) -> None:
        self.world.graph.user_delete_event(self.oid(user_id), event_id)

    def outlook_events(self, user_id: str) -> list[Json]:
        status, body = self.world.graph.outlook(self.oid(user_id), "GET", "/events?$top=1000")
        assert status == 200, body
        return list(body["value"])

    def outlook_event(self, user_id: str, event_id: str, *, prefer: str | None = None) -> Json | None:
        """The event as Outlook holds it (``prefer``: a Prefer header, e.g. a body type or time zone)."""
        headers = {"Prefer": prefer} if prefer else None
        status, body = self.world.graph.outlook(
            self.oid(user_id), "GET", f"/events/{event_id}", None, headers
        )
        return body if status == 200 else None

    def immutable_id(self, user_id: str, event_id: str) -> str:
        """The immutable id of an event (what the service and its sync log name it by)."""
        event = self.outlook_event(user_id, event_id, prefer='IdType="ImmutableId"')
        assert event is not None
        return str(event["id"])

    def one_event(self, user_id: str, subject: str) -> Json | None:
        """The user's Outlook event with ``subject``, or None; two of them fail the test (a duplicate)."""
        found = [event for event in self.outlook_events(user_id) if event["subject"] == subject]
        assert len(found) <= 1, f"duplicated event {subject!r}: {len(found)} of them"
        return found[0] if found else None

    # --- the CRM, as its users, then its push ---

    def crm_create(self, user_id: str, activity: Mapping[str, Any]) -> Json:
        created = self.world.crm.create_as_user({"ownerCrmUserId": user_id, **activity})
        self.push(user_id, created)
        return created

    def crm_edit(self, crm_id: str, changes: Mapping[str, Any]) -> Json:
        edited = self.world.crm.edit_as_user(crm_id, changes)
        self.push(edited["ownerCrmUserId"], edited)
        return edited

    def crm_delete(self, crm_id: str) -> None:
        current = self.world.crm.activity(crm_id)
        assert current is not None
        self.world.crm.delete_as_user(crm_id)
        answer = self.crm_client.delete_activity(current["ownerCrmUserId"], crm_id, current["version"])
        assert answer.status == 202, answer.body

    def push(self, user_id: str, activity: Mapping[str, Any]) -> None:
        answer = self.crm_client.put_activity(user_id, dict(activity))
        assert answer.status == 202, answer.body

    def crm_activities(self, user_id: str) -> list[Json]:
        return self.world.crm.activities(user_id)

    def one_activity(self, user_id: str, subject: str) -> Json | None:
        """The user's CRM activity with ``subject``, or None; two of them fail the test (a duplicate)."""
        found = [activity for activity in self.crm_activities(user_id) if activity["subject"] == subject]
        assert len(found) <= 1, f"duplicated activity {subject!r}: {len(found)} of them"
        return found[0] if found else None

    def crm_events(self, user_id: str, event_type: str | None = None) -> list[Json]:
        """The connection events (``POST /events``) the service sent the CRM about ``user_id``."""
        return self.world.crm.events(event_type, user_id)

    # --- Graph, as Graph ---

    def graph_requests(self, user_id: str) -> list[Json]:
        """The service's requests to the user's mailbox (method, path, status), oldest first."""
        return self.world.graph.request_log(self.oid(user_id))

    def post_notification(self, payload: Mapping[str, Any]) -> int:
        """POST a change-notification payload to the service's webhook, as Graph delivers it; the status."""
        with requests.Session() as session:
            session.trust_env = False
            answer = session.post(f"{self.relay.url}/api/graph/notifications", json=dict(payload), timeout=10)
        return answer.status_code

    @contextlib.contextmanager
    def run_under_way(
        self,
        user_id: str,
        start: Callable[[], object],
        *,
        hold: float = 1.2,
        at: tuple[str, str] = ("GET", "/calendarView/delta"),
    ) -> Iterator[None]:
        """``start`` a sync run of ``user_id`` (a change that wakes it) and hold the run for ``hold`` seconds
        at its first delta read (``at``: another request, by method and path part); the body runs meanwhile.
        So the body's changes happen while the run is under way: held at its delta read, the run read the CRM
        outbox before, and its delta answer shows Outlook as it is after the hold."""
        graph = self.world.graph
        fault = graph.inject_fault(
            None,
            retry_after=None,
            latency=hold,
            user=self.oid(user_id),
            method=at[0],
            path_contains=at[1],
        )
        start()
        wait_until(
            lambda: all(rule.id != fault for rule in graph.app.throttler.faults()),
            timeout=20,
            what=f"a sync run of {user_id} to reach {at[0]} {at[1]}",
        )
        started = time.monotonic()
        yield
        assert time.monotonic() - started < hold, "the changes took longer than the run was held"

    # --- the host ---

    def restart_host(self, *, kill: bool) -> None:
        """Stop the host (``kill``: SIGKILL, mid-whatever it was doing; else a clean stop) and start a new
        one on the same storage, queues and settings behind the same public URL."""
        assert self.launcher is not None
        if kill:
            self.host.kill()
        else:
            self.host.stop()
        self.host = self.launcher.start(APP, self.host_settings, host_json=self.host_json)
        self.relay.point_at(self.host.base_url)
        self.world.secrets_seen.update({self.host.function_key, self.host.master_key})
        self.crm_client.close()
        self.crm_client = self.world.crm.service_client(self.relay.url, self.host.function_key)

    def lease_expired(self, user_id: str) -> bool:
        lease = self.storage.leases.get(user_id)
        return lease is None or not lease.value.is_live(datetime.now(UTC))

    # --- waiting ---

    def settle(self, timeout: float = 30.0, *, visible_only: bool = False) -> None:
        """Wait until every queued sync message was handled and no run is going on (``visible_only``: ignore
        messages a killed host had taken, which stay invisible for the queue lease)."""
        with QueueClient.from_connection_string(self.connection_string, self.queue_name) as queue:

            def idle() -> bool:
                if visible_only:
                    if list(queue.peek_messages(max_messages=1)):
                        return False
                elif queue.get_queue_properties().approximate_message_count != 0:
                    return False
                if visible_only:
                    return all(self.lease_expired(user) for user in self.connected)
                return all(self.storage.leases.get(user) is None for user in self.connected)

            wait_until(idle, timeout=timeout, what="the sync queue to drain")
            time.sleep(0.5)
            wait_until(idle, timeout=timeout, what="the sync queue to drain")

    def status(self, user_id: str) -> Json:
        answer = self.crm_client.status(user_id)
        assert answer.status == 200, answer.body
        return dict(answer.body)


@contextlib.contextmanager
def running_sync_stack(
    work: Path,
    launcher: HostLauncher,
    connection_string: str,
    users: Sequence[str],
    *,
    graph_settings: EmulatorSettings | None = None,
    **settings_overrides: str,
) -> Iterator[SyncStack]:
    with Relay() as relay, running_world(work / "ca", [relay.url], users, graph_settings) as world:
        prefix = unique_prefix()
        settings = world.host_settings(
            relay.url,
            prefix,
            new_key("k1"),
            RENEWAL_SCHEDULE=NEVER,
            SWEEP_SCHEDULE=NEVER,
            **settings_overrides,
        )
        host_json = fast_queue_host_json(work)
        host = launcher.start(APP, settings, host_json=host_json)
        relay.point_at(host.base_url)
        world.secrets_seen.update({host.function_key, host.master_key})
        stack = SyncStack(
            world=world,
            host=host,
            relay=relay,
            prefix=prefix,
            storage=storage_for(connection_string, prefix),
            queue_name=settings["SYNC_QUEUE_NAME"],
            connection_string=connection_string,
            browser=Browser(world.ca, world.secrets_seen),
            crm_client=world.crm.service_client(relay.url, host.function_key),
            launcher=launcher,
            host_settings=settings,
            host_json=host_json,
        )
        try:
            yield stack
        finally:
            launcher.stop_all()
            for closable in (stack.browser, stack.crm_client, stack.storage):
                closable.close()


def slot(days: float, hour: int = 9, minutes: int = 60) -> tuple[str, str]:
    """A wall-clock slot ``days`` from today (UTC) at ``hour``, as Graph's ``dateTime`` strings."""
    start = (datetime.now(UTC) + timedelta(days=days)).replace(hour=hour, minute=0, second=0, microsecond=0)
    end = start + timedelta(minutes=minutes)
    return start.strftime("%Y-%m-%dT%H:%M:%S"), end.strftime("%Y-%m-%dT%H:%M:%S")


def instant(text: str, zone: str = "UTC") -> datetime:
    """A CRM date-time (offset or ``Z``) or a Graph ``dateTime`` in ``zone`` (Windows or IANA), as UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(_IANA.get(zone, zone)))
    return moment.astimezone(UTC)


_IANA = {
    "UTC": "UTC",
    "W. Europe Standard Time": "Europe/Berlin",
    "Pacific Standard Time": "America/Los_Angeles",
}


def timed_event(subject: str, start: str, end: str, zone: str = "UTC", **extra: Any) -> Json:
    """A Graph event body as Outlook would create it."""
    return {
        "subject": subject,
        "start": {"dateTime": start, "timeZone": zone},
        "end": {"dateTime": end, "timeZone": zone},
        **extra,
    }


def crm_activity(subject: str, start: str, end: str, zone: str = "UTC", **extra: Any) -> Json:
    """A CRM activity body as a CRM user would create it (owner added by ``SyncStack.crm_create``)."""
    return {
        "type": "personal_appointment",
        "subject": subject,
        "start": start,
        "end": end,
        "timeZone": zone,
        **extra,
    }
