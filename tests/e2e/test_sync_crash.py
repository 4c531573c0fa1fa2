"""Initial backfill on (``INITIAL_BACKFILL=true``) and a host process killed in the middle of a large run.

- ``test_with_backfill_on_what_existed_before_connecting_syncs_at_connect``
- ``test_a_host_killed_mid_backfill_converges_on_restart_without_duplicates``: 200 Outlook events (two
  delta pages), the host SIGKILLed while it copies them to the CRM, a new host on the same storage finishes.
- ``test_a_host_killed_while_creating_events_converges_on_restart_without_duplicates``: the same while it
  creates 60 CRM activities in Outlook.

After a kill, the user's lease runs out (``LEASE_SECONDS``) and the killed host's queue message stays
invisible for the queue lease (10 minutes): the safety sweep (fired here instead of waiting for its timer)
queues the user again, as it would for any user without a recent good sync or with CRM changes waiting.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devkit.azurite import AzuriteEndpoints
from devkit.host_process import HostLauncher
from tests.e2e.kit import wait_until
from tests.e2e.sync_stack import SyncStack, crm_activity, running_sync_stack, slot, timed_event

USERS = ("bea", "kim", "lou")
BACKFILL = 200
CREATES = 60


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, local_hosts: HostLauncher, azurite: AzuriteEndpoints
) -> Iterator[SyncStack]:
    work = tmp_path_factory.mktemp("sync-crash")
    launcher = HostLauncher(work_root=work, base_settings=local_hosts.base_settings, env=local_hosts.env)
    with running_sync_stack(
        work, launcher, azurite.connection_string, USERS, INITIAL_BACKFILL="true", LEASE_SECONDS="10"
    ) as built:
        yield built


def resume_after_kill(stack: SyncStack, user: str) -> None:
    """Once the dead run's lease ran out, let the sweep queue the user (as its timer would)."""
    wait_until(lambda: stack.lease_expired(user), timeout=15, what="the killed run's lease to run out")
    stack.host.fire("sweep")


def assert_converged(stack: SyncStack, user: str, count: int) -> None:
    """Both sides hold ``count`` items, each once, all linked; no CRM change waits; the user is fine."""

    def pending() -> int:
        return int(stack.status(user)["pendingChanges"])

    wait_until(lambda: stack.storage.links.count_for_user(user) >= count, timeout=60, what="every link")
    wait_until(lambda: pending() == 0, timeout=60, what="the outbox to drain")
    stack.settle(visible_only=True)
    crm = [a["subject"] for a in stack.crm_activities(user)]
    outlook = [e["subject"] for e in stack.outlook_events(user)]
    assert len(crm) == len(set(crm)) == count, f"{len(crm)} activities, {len(set(crm))} distinct"
    assert len(outlook) == len(set(outlook)) == count, f"{len(outlook)} events, {len(set(outlook))} distinct"
    assert stack.storage.links.count_for_user(user) == count
    status = stack.status(user)
    assert (status["state"], status["lastError"], status["pendingChanges"]) == ("connected", None, 0)


def test_with_backfill_on_what_existed_before_connecting_syncs_at_connect(stack: SyncStack) -> None:
    mailbox = stack.open_mailbox("bea")
    graph = stack.world.graph
    for n in range(3):
        graph.user_create_event(mailbox, timed_event(f"Existing {n}", *slot(2 + n)))
    graph.user_create_event(mailbox, timed_event("Existing, long ago", *slot(-90)))
    stack.world.crm.add_user("usr-bea", stack.world.users["bea"].upn, "Bea")
    older = stack.world.crm.create_as_user(
        {
            **crm_activity("Existing in the CRM", f"{slot(6)[0]}Z", f"{slot(6)[1]}Z"),
            "ownerCrmUserId": "usr-bea",
        }
    )

    user = stack.connect("bea")  # returns once the first sync ran
    assert sorted(a["subject"] for a in stack.crm_activities(user) if a["crmId"] != older["crmId"]) == [
        "Existing 0",
        "Existing 1",
        "Existing 2",
    ]
    stack.push(user, older)  # the CRM handing over what it had: with backfill, it syncs too
    wait_until(lambda: stack.one_event(user, "Existing in the CRM"), what="the older activity in Outlook")
    stack.settle()
    assert stack.one_activity(user, "Existing, long ago") is None  # outside the window all the same
    assert len(stack.crm_activities(user)) == 4
    assert len(stack.outlook_events(user)) == 5


def test_a_host_killed_mid_backfill_converges_on_restart_without_duplicates(stack: SyncStack) -> None:
    mailbox = stack.open_mailbox("kim")
    graph = stack.world.graph
    for n in range(BACKFILL):
        graph.user_create_event(mailbox, timed_event(f"Backlog {n:03d}", *slot(1 + n, 8 + n % 10)))
    # Each delta page takes a moment, so the kill lands mid-run whatever the machine's speed.
    graph.inject_fault(None, count=None, retry_after=None, latency=0.3, user=mailbox, path_contains="/delta")

    user = stack.connect("kim", wait=False)
    wait_until(lambda: len(stack.crm_activities(user)) >= 20, timeout=60, what="the backfill to be under way")
    stack.restart_host(kill=True)
    at_kill = len(stack.crm_activities(user))
    assert 0 < at_kill < BACKFILL, at_kill
    graph.clear_faults()

    resume_after_kill(stack, user)
    wait_until(lambda: len(stack.crm_activities(user)) >= BACKFILL, timeout=90, what="the backfill to finish")
    assert_converged(stack, user, BACKFILL)
    assert not [r for r in stack.graph_requests(user) if r["method"] != "GET"], (
        "the backfill wrote to Outlook"
    )


def test_a_host_killed_while_creating_events_converges_on_restart_without_duplicates(
    stack: SyncStack,
) -> None:
    user = stack.connect("lou")
    graph = stack.world.graph
    # Each create takes a moment (4 at a time: 60 creates take about 2 s), so the kill lands mid-run
    # whatever the machine's speed; at 50 ms a fast run had made them all before the kill.
    graph.inject_fault(
        None,
        count=None,
        retry_after=None,
        latency=0.15,
        user=stack.oid(user),
        method="POST",
        path_contains="/events",
    )
    created = [
        stack.world.crm.create_as_user(
            {
                **crm_activity(f"Order {n:03d}", f"{slot(1 + n, 14)[0]}Z", f"{slot(1 + n, 14)[1]}Z"),
                "ownerCrmUserId": user,
            }
        )
        for n in range(CREATES)
    ]
    for activity in created:
        stack.push(user, activity)
    wait_until(lambda: len(stack.outlook_events(user)) >= 15, timeout=60, what="the creates to be under way")
    stack.restart_host(kill=True)
    at_kill = len(stack.outlook_events(user))
    assert 0 < at_kill < CREATES, at_kill
    graph.clear_faults()

    resume_after_kill(stack, user)
    wait_until(
        lambda: len(stack.outlook_events(user)) >= CREATES, timeout=60, what="every activity in Outlook"
    )
    assert_converged(stack, user, CREATES)
