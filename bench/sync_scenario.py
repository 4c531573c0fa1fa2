"""What the sync benchmarks share: the whole service running locally, users connected through the real
sign-in trip, a way to wait until it is quiet, and the arithmetic of the figures.

``running_stack`` starts (unless given) Azurite, then the Entra ID, Graph and CRM emulators
(``devkit.scenario.running_world``), a relay standing in for the app's public front end, and the local
Functions host on function_app.py, pointed at all of them: the same pieces as the e2e tests and
``python -m devkit demo``. Changes then travel as in production: Outlook edits through the Graph emulator's
user API (which sends change notifications to the host's webhook), CRM edits through the CRM emulator's user
API followed by the CRM's signed push; the sync runs by itself (webhook/push → queue → ``reconcile``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from azure.storage.queue import QueueClient

from devkit.azurite import Azurite
from devkit.crm_emulator import CrmServiceClient
from devkit.host_process import REPO_ROOT, HostProcess
from devkit.identity_emulator import User
from devkit.relay import Relay
from devkit.scenario import (
    RETURN_URL,
    Browser,
    World,
    fast_queue_host_json,
    new_key,
    running_world,
    storage_for,
)
from sync_core.adapters.tables import TableStorage

APP = REPO_ROOT / "function_app.py"
NEVER = "0 0 0 1 1 *"  # the renewal and sweep timers stay quiet while measuring
# The host gets only these variables from the benchmark's environment; its settings come from its own file.
HOST_ENV_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
# How often the local host polls an empty queue at most: host.json's ``maxPollingInterval`` as deployed, and
# as the tests and these benchmarks shorten it (``fast_queue_host_json``).
DEPLOYED_MAX_POLLING_S = 0.5
FAST_MAX_POLLING_S = 0.2

Figures = dict[str, dict[str, object]]
Json = dict[str, Any]
T = TypeVar("T")


class BenchError(RuntimeError):
    """The service did not do what the benchmark waits for (nothing measured would mean anything)."""


def host_env() -> dict[str, str]:
    return {name: os.environ[name] for name in HOST_ENV_PASSTHROUGH if name in os.environ}


@dataclass
class BenchStack:
    world: World
    host: HostProcess
    relay: Relay
    prefix: str
    settings: dict[str, str]  # the host's app settings: also what an engine run in another process needs
    storage: TableStorage  # the service's tables, read directly at Azurite (never through a meter)
    queue: QueueClient
    browser: Browser
    crm_client: CrmServiceClient
    connected: dict[str, User] = field(default_factory=dict)  # CRM user id → the directory's user

    # --- people ---

    def connect(self, name: str, *, first_sync: bool = True, timeout: float = 60.0) -> str:
        """Sign ``name`` in as the CRM and the user's browser do (connect → Entra sign-in → form_post to the
        callback); the CRM user id ``usr-{name}``. ``first_sync``: wait until its first sync ran too."""
        user = self.world.users[name]
        user_id = f"usr-{name}"
        self.world.crm.add_user(user_id, user.upn, name.title())
        answer = self.crm_client.connect(user_id, RETURN_URL, login_hint=user.upn)
        if answer.status != 200:
            raise BenchError(f"connect {user_id} answered {answer.status}: {answer.body}")
        landing = self.browser.sign_in(answer.body["authorizeUrl"])
        if landing.outcome != {"status": "connected"}:
            raise BenchError(f"the sign-in of {user_id} ended at {landing.location} ({landing.status})")

        def ready() -> bool:
            connection = self.storage.connections.get(user_id)
            if connection is None:
                return False
            return connection.value.last_good_sync_at is not None if first_sync else True

        wait_for(ready, timeout=timeout, what=f"the connection of {user_id}")
        self.connected[user_id] = user
        return user_id

    def oid(self, user_id: str) -> str:
        return self.connected[user_id].oid

    # --- the CRM's push, as the CRM sends it after a user's edit ---

    def push(self, user_id: str, activity: Mapping[str, Any]) -> None:
        answer = self.crm_client.put_activity(user_id, dict(activity))
        if answer.status != 202:
            raise BenchError(f"the push of {activity.get('crmId')} answered {answer.status}: {answer.body}")

    def push_deletion(self, user_id: str, crm_id: str, version: str) -> None:
        answer = self.crm_client.delete_activity(user_id, crm_id, version)
        if answer.status != 202:
            raise BenchError(f"the deletion push of {crm_id} answered {answer.status}: {answer.body}")

    # --- looking at both sides ---

    def outlook_events(self, user_id: str) -> list[Json]:
        status, body = self.world.graph.outlook(self.oid(user_id), "GET", "/events?$top=1000")
        if status != 200:
            raise BenchError(f"listing the events of {user_id} answered {status}")
        return list(body["value"])

    def outlook_event(self, user_id: str, event_id: str) -> Json | None:
        status, body = self.world.graph.outlook(self.oid(user_id), "GET", f"/events/{event_id}")
        return body if status == 200 else None

    # --- waiting ---

    def is_idle(self) -> bool:
        """Nothing on its way: no change notification waiting in Graph (each is queued there before Graph
        answers the write that caused it), no sync message in the queue (a message being handled still
        counts until it is deleted, after its run), and no user's sync lease held."""
        if self.world.graph.app.subscriptions.notifier.pending_count():
            return False
        if self.queue.get_queue_properties().approximate_message_count:
            return False
        return all(self.storage.leases.get(user_id) is None for user_id in self.connected)

    def wait_quiet(self, *, hold: float = 0.05, timeout: float = 60.0, interval: float = 0.02) -> None:
        """Wait until the service has been idle for ``hold`` seconds in a row (checked every ``interval``
        seconds: each check is a few requests to Azurite, which the service shares)."""
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        while True:
            now = time.monotonic()
            if self.is_idle():
                idle_since = idle_since if idle_since is not None else now
                if now - idle_since >= hold:
                    return
            else:
                idle_since = None
            if now > deadline:
                raise BenchError(f"the service did not become quiet within {timeout:g} s")
            time.sleep(interval)

    def close(self) -> None:
        for closable in (self.browser, self.crm_client, self.storage, self.queue):
            closable.close()


@contextlib.contextmanager
def running_stack(
    users: Sequence[str],
    *,
    connection_string: str | None = None,
    work_dir: Path | None = None,
    host_storage: str | None = None,
    fast_queue_polling: bool = True,
    settings: Mapping[str, str] | None = None,
) -> Iterator[BenchStack]:
    """The service and its world. ``connection_string``: an Azurite already running (else one is started and
    stopped here); ``host_storage``: the connection string the host gets, when it must differ (a meter in
    front of a storage endpoint); ``fast_queue_polling``: the tests' host.json (queues polled at least every
    0.2 s), else the repository's (every 2 s at most, as deployed); ``settings``: app settings on top."""
    with contextlib.ExitStack() as stack:
        if connection_string is None:
            connection_string = stack.enter_context(Azurite()).connection_string
        work = work_dir
        if work is None:
            work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        relay = stack.enter_context(Relay())
        world = stack.enter_context(running_world(work / "ca", [relay.url], users))
        prefix = "b" + uuid.uuid4().hex[:10]
        sample = json.loads((REPO_ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
        app_settings = {
            **sample,
            "AzureWebJobsStorage": host_storage or connection_string,
            **world.host_settings(
                relay.url,
                prefix,
                new_key("bench1"),
                RENEWAL_SCHEDULE=NEVER,
                SWEEP_SCHEDULE=NEVER,
                **(settings or {}),
            ),
        }
        host = HostProcess(
            APP,
            work_dir=work / "host",
            settings=app_settings,
            env=host_env(),
            host_json=fast_queue_host_json(work / "host-json") if fast_queue_polling else None,
        )
        stack.callback(host.stop)
        host.start()
        relay.point_at(host.base_url)
        queue = QueueClient.from_connection_string(connection_string, app_settings["SYNC_QUEUE_NAME"])
        built = BenchStack(
            world=world,
            host=host,
            relay=relay,
            prefix=prefix,
            settings=app_settings,
            storage=storage_for(connection_string, prefix),
            queue=queue,
            browser=Browser(world.ca, world.secrets_seen),
            crm_client=world.crm.service_client(relay.url, host.function_key),
        )
        stack.callback(built.close)
        yield built


def wait_for(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` every ``interval`` seconds until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- figures ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def figure(value: float, unit: str, digits: int = 2) -> dict[str, object]:
    return {"value": round(value, digits), "unit": unit}
