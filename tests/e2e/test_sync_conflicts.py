"""Conflicts (design §5): a field changed on both sides to different values is settled by the tenant's
``CONFLICT_POLICY``; the other fields edited on either side survive (field-level merge); every conflict is
recorded in the user's sync log (``GET …/status``) and sent to the CRM as a ``conflict`` event.

The tenant's policy is ``crm_wins``; one user overrides it with ``m365_wins``, another with ``latest_wins``
(``Connection.conflict_policy_override``: no endpoint sets it yet, so the test writes it on the connection).
``test_a_field_edited_on_both_sides_is_settled_by_the_policy_and_logged`` runs for each policy, once with
Outlook editing last and once with the CRM editing last: ``crm_wins`` and ``m365_wins`` ignore the order,
``latest_wins`` follows it.

Both edits must reach one sync run, as they do when two people edit at nearly the same time: the test holds
a run (started by an unrelated CRM change) at its Outlook write, makes the two edits meanwhile, and the next
round, which the held run goes on to, sees both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from devkit.azurite import AzuriteEndpoints
from devkit.host_process import HostLauncher
from sync_core.config import ConflictPolicy
from tests.e2e.kit import wait_until
from tests.e2e.sync_stack import SyncStack, crm_activity, running_sync_stack, slot, timed_event

POLICIES = ("crm_wins", "m365_wins", "latest_wins")
TEXT_BODY = 'outlook.body-content-type="text"'


TENANT_POLICY = "crm_wins"
USER_OF_POLICY = {"crm_wins": "pia", "m365_wins": "pol", "latest_wins": "pam"}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, local_hosts: HostLauncher, azurite: AzuriteEndpoints
) -> Iterator[SyncStack]:
    work = tmp_path_factory.mktemp("sync-conflicts")
    launcher = HostLauncher(work_root=work, base_settings=local_hosts.base_settings, env=local_hosts.env)
    with running_sync_stack(
        work,
        launcher,
        azurite.connection_string,
        tuple(USER_OF_POLICY.values()),
        CONFLICT_POLICY=TENANT_POLICY,
    ) as built:
        yield built


def user_with(stack: SyncStack, policy: str) -> str:
    """The module's user whose conflicts ``policy`` settles (the tenant's, or the user's override)."""
    user = f"usr-{USER_OF_POLICY[policy]}"
    if user not in stack.connected:
        stack.connect(USER_OF_POLICY[policy])
        if policy != TENANT_POLICY:
            stack.set_overrides(user, conflict_policy=ConflictPolicy(policy))
    return user


@pytest.mark.parametrize("last", ["outlook", "crm"])
@pytest.mark.parametrize("policy", POLICIES)
def test_a_field_edited_on_both_sides_is_settled_by_the_policy_and_logged(
    stack: SyncStack, policy: str, last: str
) -> None:
    user = user_with(stack, policy)
    subject = f"Kickoff ({last} last)"
    event = stack.outlook_create(
        user,
        timed_event(
            subject,
            *slot(3),
            location={"displayName": "Room 1"},
            body={"contentType": "text", "content": "Agenda"},
        ),
    )
    activity = wait_until(lambda: stack.one_activity(user, subject), what="the activity")
    stack.settle()

    def edit_in_outlook() -> None:
        stack.outlook_update(
            user,
            event["id"],
            {
                "subject": f"{subject} / Outlook",
                "body": {"contentType": "text", "content": "Agenda (Outlook)"},
            },
        )

    def edit_in_crm() -> None:
        stack.crm_edit(activity["crmId"], {"subject": f"{subject} / CRM", "location": "Room 2 (CRM)"})

    first, second = (edit_in_crm, edit_in_outlook) if last == "outlook" else (edit_in_outlook, edit_in_crm)
    unrelated = crm_activity(f"Unrelated ({last} last)", f"{slot(9)[0]}Z", f"{slot(9)[1]}Z")
    with stack.run_under_way(user, lambda: stack.crm_create(user, unrelated), at=("POST", "/events")):
        first()
        time.sleep(0.01)  # two distinct modification times, also at the CRM's millisecond precision
        second()

    latest = "m365" if last == "outlook" else "crm"
    winner = {"crm_wins": "crm", "m365_wins": "m365", "latest_wins": latest}[policy]
    won = f"{subject} / CRM" if winner == "crm" else f"{subject} / Outlook"

    def merged() -> bool:
        crm = stack.world.crm.activity(activity["crmId"])
        outlook = stack.outlook_event(user, event["id"], prefer=TEXT_BODY)
        return (
            crm is not None
            and outlook is not None
            and crm["subject"] == won
            and outlook["subject"] == won
            and crm["location"] == "Room 2 (CRM)"
            and outlook["location"]["displayName"] == "Room 2 (CRM)"
            and crm["description"] == "Agenda (Outlook)"
            and outlook["body"]["content"].strip() == "Agenda (Outlook)"
        )

    wait_until(merged, timeout=30, what=f"the conflict settled for {winner} with both sides' other edits")
    stack.settle()
    assert merged()  # and it stays so: no echo undid it

    conflicts = [
        entry
        for entry in stack.status(user)["syncLog"]
        if entry["kind"] == "conflict" and (entry["item"] or {}).get("crmId") == activity["crmId"]
    ]
    assert len(conflicts) == 1, conflicts
    assert conflicts[0]["fields"] == ["subject"]
    assert conflicts[0]["resolution"] == policy
    assert conflicts[0]["reason"] == "changed_on_both_sides"
    told: list[dict[str, Any]] = [
        e["details"] for e in stack.crm_events(user, "conflict") if e["details"]["crmId"] == activity["crmId"]
    ]
    assert told == [{"crmId": activity["crmId"], "fields": ["subject"], "policy": policy, "winner": winner}]
    assert stack.one_activity(user, won) is not None
    assert stack.one_event(user, won) is not None
    assert stack.one_event(user, f"Unrelated ({last} last)") is not None
