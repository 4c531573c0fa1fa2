"""Failures through the whole service (design §3 "Reconcile", failures): the run meets them and converges,
with nothing duplicated on either side.

- throttling: ``test_a_429_storm_honours_retry_after_up_to_the_cap_and_converges``
- an expired delta token: ``test_an_expired_delta_token_means_a_full_resync_without_duplicates``
- notifications Graph sends twice or late: ``test_replayed_and_out_of_order_notifications_change_nothing``
- CRM pushes out of order: ``test_an_older_crm_push_arriving_while_the_newer_waits_is_superseded``,
  ``test_an_older_crm_push_after_the_newer_was_synced_does_not_win``
- a token expiring mid-run: ``test_a_token_that_expires_mid_run_is_refreshed_once_and_the_run_goes_on``
  (last in the module: it moves the Entra/Graph clock an hour on)

A host killed mid-run is in ``test_sync_crash``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from devkit.azurite import AzuriteEndpoints
from devkit.host_process import HostLauncher
from tests.e2e.kit import wait_until
from tests.e2e.sync_stack import SyncStack, crm_activity, running_sync_stack, slot, timed_event

USERS = ("sam", "tess", "uma", "vic", "wes")
RETRY_AFTER_CAP = 2.0  # RETRY_AFTER_CAP_SECONDS of this module's host


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, local_hosts: HostLauncher, azurite: AzuriteEndpoints
) -> Iterator[SyncStack]:
    work = tmp_path_factory.mktemp("sync-failures")
    launcher = HostLauncher(work_root=work, base_settings=local_hosts.base_settings, env=local_hosts.env)
    with running_sync_stack(
        work, launcher, azurite.connection_string, USERS, RETRY_AFTER_CAP_SECONDS=str(RETRY_AFTER_CAP)
    ) as built:
        yield built


def at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["time"])


def assert_no_duplicates(stack: SyncStack, user: str) -> None:
    crm = [a["subject"] for a in stack.crm_activities(user)]
    outlook = [e["subject"] for e in stack.outlook_events(user)]
    assert len(crm) == len(set(crm)), f"duplicated activities: {sorted(crm)}"
    assert len(outlook) == len(set(outlook)), f"duplicated events: {sorted(outlook)}"


# --- throttling -------------------------------------------------------------------------------------------


def test_a_429_storm_honours_retry_after_up_to_the_cap_and_converges(stack: SyncStack) -> None:
    user = stack.connect("sam")
    graph = stack.world.graph
    seen = len(stack.graph_requests(user))
    # Three 429s asking for 0.5 s (waited in the run), then two asking for 30 s (above the cap: the run gives
    # up and the queue retries it, instead of a worker sleeping 30 s).
    graph.inject_fault(429, count=3, retry_after=0.5, user=stack.oid(user))
    graph.inject_fault(429, count=2, retry_after=30, user=stack.oid(user))

    stack.outlook_create(user, timed_event("Storm from Outlook", *slot(3)))
    stack.crm_create(user, crm_activity("Storm from the CRM", f"{slot(4)[0]}Z", f"{slot(4)[1]}Z"))
    wait_until(
        lambda: stack.one_activity(user, "Storm from Outlook"), timeout=40, what="the event in the CRM"
    )
    wait_until(
        lambda: stack.one_event(user, "Storm from the CRM"), timeout=40, what="the activity in Outlook"
    )
    stack.settle()

    log = stack.graph_requests(user)[seen:]
    throttled = [n for n, entry in enumerate(log) if entry["status"] == 429]
    assert len(throttled) == 5
    short, long = throttled[:3], throttled[3:]
    for n in short:  # the next try waited the Retry-After asked for
        assert (at(log[n + 1]) - at(log[n])).total_seconds() >= 0.5
    for n in long:  # … but never the 30 s: the run gave up at once, and its message came back
        assert (at(log[n + 1]) - at(log[n])).total_seconds() < 30 - RETRY_AFTER_CAP
    assert log[-1]["status"] < 400
    assert_no_duplicates(stack, user)
    assert len(stack.crm_activities(user)) == 2
    assert len(stack.outlook_events(user)) == 2
    assert stack.status(user)["state"] == "connected"


# --- an expired delta token -------------------------------------------------------------------------------


def test_an_expired_delta_token_means_a_full_resync_without_duplicates(stack: SyncStack) -> None:
    user = stack.connect("tess")
    events = [stack.outlook_create(user, timed_event(f"Outlook item {n}", *slot(2 + n))) for n in range(3)]
    for n in range(2):
        stack.crm_create(user, crm_activity(f"CRM item {n}", f"{slot(6 + n)[0]}Z", f"{slot(6 + n)[1]}Z"))
    wait_until(lambda: len(stack.crm_activities(user)) == 5, what="five activities")
    wait_until(lambda: len(stack.outlook_events(user)) == 5, what="five events")
    stack.settle()
    seen = len(stack.graph_requests(user))

    stack.world.graph.expire_delta_tokens(stack.oid(user))
    stack.outlook_update(user, events[0]["id"], {"subject": "Outlook item 0 (after expiry)"})
    wait_until(lambda: stack.one_activity(user, "Outlook item 0 (after expiry)"), what="the edit in the CRM")
    stack.settle()

    log = stack.graph_requests(user)[seen:]
    assert any(entry["status"] == 410 and "delta" in entry["path"].lower() for entry in log)
    assert not any(entry["method"] == "POST" for entry in log), "the full resync created events again"
    assert_no_duplicates(stack, user)
    assert len(stack.crm_activities(user)) == 5
    assert len(stack.outlook_events(user)) == 5
    assert stack.status(user)["lastError"] is None


# --- notifications twice, late, out of order --------------------------------------------------------------


def test_replayed_and_out_of_order_notifications_change_nothing(stack: SyncStack) -> None:
    user = stack.connect("uma")
    subscriptions = {
        record.value.subscription_id for record in stack.storage.subscriptions.list_for_user(user)
    }
    assert subscriptions

    def delivered() -> list[dict[str, Any]]:
        return [
            d["payload"]
            for d in stack.world.graph.deliveries()
            if set(d["subscriptionIds"]) & subscriptions and d["status"] == 202 and not d["lifecycle"]
        ]

    steady = stack.outlook_create(user, timed_event("Steady", *slot(3)))
    doomed = stack.outlook_create(user, timed_event("Doomed", *slot(4)))
    wait_until(lambda: stack.one_activity(user, "Doomed"), what="the activity")
    stack.outlook_update(user, doomed["id"], {"subject": "Doomed (v2)"})
    wait_until(lambda: stack.one_activity(user, "Doomed (v2)"), what="the edit")
    stack.settle()
    before_deletion = delivered()
    assert before_deletion
    stack.outlook_delete(user, doomed["id"])
    wait_until(lambda: stack.one_activity(user, "Doomed (v2)") is None, what="the deletion in the CRM")
    stack.settle()
    after = delivered()
    deletion = after[len(before_deletion) :]
    assert deletion

    # Graph delivers again, and in any order: the deletion twice, then the old creates and updates.
    for payload in [*deletion, *deletion, *reversed(before_deletion)]:
        assert stack.post_notification(payload) == 202
    stack.settle()

    assert [a["subject"] for a in stack.crm_activities(user)] == ["Steady"]
    assert [e["id"] for e in stack.outlook_events(user)] == [steady["id"]]
    assert stack.status(user)["lastError"] is None


# --- CRM pushes out of order ------------------------------------------------------------------------------


def three_versions(stack: SyncStack, user: str, subject: str) -> tuple[dict[str, Any], ...]:
    """An activity synced at v1, then edited twice in the CRM (v2, v3), the pushes of the edits not sent."""
    v1 = stack.crm_create(user, crm_activity(subject, f"{slot(5)[0]}Z", f"{slot(5)[1]}Z"))
    wait_until(lambda: stack.one_event(user, subject), what="the event")
    stack.settle()
    v2 = stack.world.crm.edit_as_user(v1["crmId"], {"subject": f"{subject} v2"})
    time.sleep(
        0.01
    )  # two edits a person makes: distinct modification times at the CRM's millisecond precision
    v3 = stack.world.crm.edit_as_user(v1["crmId"], {"subject": f"{subject} v3", "location": "Room 3"})
    assert v2["modifiedAt"] < v3["modifiedAt"]
    return v1, v2, v3


def test_an_older_crm_push_arriving_while_the_newer_waits_is_superseded(stack: SyncStack) -> None:
    user = stack.connect("vic")
    _, v2, v3 = three_versions(stack, user, "Order")

    with stack.run_under_way(user, lambda: stack.push(user, v3)):
        late = stack.crm_client.put_activity(user, v2)
    assert late.status == 202, late.body
    assert late.body["status"] == "superseded"

    event = wait_until(lambda: stack.one_event(user, "Order v3"), what="the newest version in Outlook")
    stack.settle()
    assert event["location"]["displayName"] == "Room 3"
    assert stack.one_event(user, "Order v2") is None
    assert [a["subject"] for a in stack.crm_activities(user)] == ["Order v3"]
    assert len(stack.outlook_events(user)) == 1


def test_an_older_crm_push_after_the_newer_was_synced_does_not_win(stack: SyncStack) -> None:
    user = stack.connect("vic") if "usr-vic" not in stack.connected else "usr-vic"
    _, v2, v3 = three_versions(stack, user, "Retry")
    stack.push(user, v3)
    wait_until(lambda: stack.one_event(user, "Retry v3"), what="the newest version in Outlook")
    stack.settle()

    late = stack.crm_client.put_activity(user, v2)  # e.g. the CRM retrying a push that timed out
    assert late.status == 202, late.body
    assert late.body["status"] == "superseded"
    stack.settle()
    assert stack.one_event(user, "Retry v2") is None, "the older push overwrote Outlook"
    assert stack.one_event(user, "Retry v3") is not None
    assert [a["subject"] for a in stack.crm_activities(user) if a["subject"].startswith("Retry")] == [
        "Retry v3"
    ]


# --- a token expiring mid-run (moves the clock: keep last) ------------------------------------------------


def test_a_token_that_expires_mid_run_is_refreshed_once_and_the_run_goes_on(stack: SyncStack) -> None:
    user = stack.connect("wes")
    stack.outlook_create(user, timed_event("Before expiry", *slot(3)))
    wait_until(lambda: stack.one_activity(user, "Before expiry"), what="the first event in the CRM")
    stack.settle()
    graph = stack.world.graph
    seen = len(graph.request_log())  # all mailboxes: a request refused at sign-in is logged under none

    # The run holds a token when it starts; while it waits on Graph, an hour passes at Entra ID and Graph:
    # its next request is refused (401), it gets a fresh token once and finishes.
    activity = crm_activity("After expiry", f"{slot(4)[0]}Z", f"{slot(4)[1]}Z")
    with stack.run_under_way(user, lambda: stack.crm_create(user, activity)):
        stack.world.identity.clock.advance(3700)
    wait_until(lambda: stack.one_event(user, "After expiry"), timeout=30, what="the activity in Outlook")
    stack.settle()

    log = graph.request_log()[seen:]
    refused = [n for n, entry in enumerate(log) if entry["status"] == 401]
    assert len(refused) == 1, log
    first = log[refused[0]]
    retried = next(
        e for e in log[refused[0] + 1 :] if (e["method"], e["path"]) == (first["method"], first["path"])
    )
    assert retried["status"] < 400
    assert retried["mailbox"] == stack.oid(user)
    assert_no_duplicates(stack, user)
    assert len(stack.outlook_events(user)) == 2
    assert len(stack.crm_activities(user)) == 2
    status = stack.status(user)
    assert (status["state"], status["lastError"]) == ("connected", None)
