"""Sync direction (design §5): the tenant's ``SYNC_DIRECTION`` and a per-user override.

The tenant syncs ``crm_to_m365``:

- ``test_the_tenant_direction_syncs_one_way_only``: creates, edits and deletions travel the tenant's way
  only; the other side's are left where they are (a deletion there unlinks, never deletes).
- ``test_a_per_user_override_syncs_that_user_the_other_way``: a user whose connection overrides the
  direction (``m365_to_crm``) syncs the opposite way, and the status shows the user's direction.

The override lives on the user's connection row (``Connection.direction_override``); no endpoint sets it
yet, so the test writes it there (``SyncStack.set_overrides``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devkit.azurite import AzuriteEndpoints
from devkit.host_process import HostLauncher
from sync_core.config import SyncDirection
from tests.e2e.kit import wait_until
from tests.e2e.sync_stack import SyncStack, crm_activity, running_sync_stack, slot, timed_event

TENANT = SyncDirection.CRM_TO_M365


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, local_hosts: HostLauncher, azurite: AzuriteEndpoints
) -> Iterator[SyncStack]:
    work = tmp_path_factory.mktemp("sync-directions")
    launcher = HostLauncher(work_root=work, base_settings=local_hosts.base_settings, env=local_hosts.env)
    with running_sync_stack(
        work, launcher, azurite.connection_string, ("quinn", "ray"), SYNC_DIRECTION=TENANT.value
    ) as built:
        yield built


def other_way(direction: SyncDirection) -> SyncDirection:
    return SyncDirection.M365_TO_CRM if direction is SyncDirection.CRM_TO_M365 else SyncDirection.CRM_TO_M365


def check_crm_to_m365(stack: SyncStack, user: str) -> None:
    """The CRM's creates, edits and deletions reach Outlook; Outlook's never reach the CRM."""
    kept = stack.crm_create(user, crm_activity("CRM plan", f"{slot(3)[0]}Z", f"{slot(3)[1]}Z"))
    gone = stack.crm_create(user, crm_activity("CRM call-off", f"{slot(4)[0]}Z", f"{slot(4)[1]}Z"))
    stack.outlook_create(user, timed_event("Outlook private plan", *slot(5)))
    event = wait_until(lambda: stack.one_event(user, "CRM plan"), what="the CRM activity in Outlook")
    other = wait_until(lambda: stack.one_event(user, "CRM call-off"), what="the second activity in Outlook")
    stack.settle()

    stack.crm_edit(kept["crmId"], {"subject": "CRM plan (v2)"})
    stack.crm_delete(gone["crmId"])
    wait_until(lambda: stack.one_event(user, "CRM plan (v2)"), what="the CRM edit in Outlook")
    wait_until(lambda: stack.outlook_event(user, other["id"]) is None, what="the CRM deletion in Outlook")
    stack.settle()
    stack.outlook_update(user, event["id"], {"location": {"displayName": "Outlook room"}})
    stack.settle()
    stack.outlook_delete(user, event["id"])
    stack.settle()

    assert stack.one_activity(user, "Outlook private plan") is None
    current = stack.world.crm.activity(kept["crmId"])
    assert current is not None, "an Outlook deletion reached the CRM"
    assert current["subject"] == "CRM plan (v2)"
    assert current["location"] is None, "an Outlook edit reached the CRM"
    assert [a["crmId"] for a in stack.crm_activities(user)] == [kept["crmId"]]
    assert [e["subject"] for e in stack.outlook_events(user)] == ["Outlook private plan"]


def check_m365_to_crm(stack: SyncStack, user: str) -> None:
    """Outlook's creates, edits and deletions reach the CRM; the CRM's never reach Outlook."""
    kept = stack.outlook_create(user, timed_event("Outlook plan", *slot(3)))
    gone = stack.outlook_create(user, timed_event("Outlook call-off", *slot(4)))
    stack.crm_create(user, crm_activity("CRM private plan", f"{slot(5)[0]}Z", f"{slot(5)[1]}Z"))
    activity = wait_until(lambda: stack.one_activity(user, "Outlook plan"), what="the event in the CRM")
    other = wait_until(
        lambda: stack.one_activity(user, "Outlook call-off"), what="the second event in the CRM"
    )
    stack.settle()

    stack.outlook_update(user, kept["id"], {"subject": "Outlook plan (v2)"})
    stack.outlook_delete(user, gone["id"])
    wait_until(lambda: stack.one_activity(user, "Outlook plan (v2)"), what="the Outlook edit in the CRM")
    wait_until(
        lambda: stack.world.crm.activity(other["crmId"]) is None, what="the Outlook deletion in the CRM"
    )
    stack.settle()
    stack.crm_edit(activity["crmId"], {"location": "CRM room"})
    stack.settle()
    stack.crm_delete(activity["crmId"])
    stack.settle()

    assert stack.one_event(user, "CRM private plan") is None
    current = stack.outlook_event(user, kept["id"])
    assert current is not None, "a CRM deletion reached Outlook"
    assert current["subject"] == "Outlook plan (v2)"
    assert current["location"]["displayName"] == "", "a CRM edit reached Outlook"
    assert [e["id"] for e in stack.outlook_events(user)] == [kept["id"]]
    assert [a["subject"] for a in stack.crm_activities(user)] == ["CRM private plan"]


CHECKS = {SyncDirection.CRM_TO_M365: check_crm_to_m365, SyncDirection.M365_TO_CRM: check_m365_to_crm}


def test_the_tenant_direction_syncs_one_way_only(stack: SyncStack) -> None:
    user = stack.connect("quinn")
    assert stack.status(user)["direction"] == TENANT.value
    CHECKS[TENANT](stack, user)
    assert stack.status(user)["lastError"] is None


def test_a_per_user_override_syncs_that_user_the_other_way(stack: SyncStack) -> None:
    user = stack.connect("ray")
    stack.set_overrides(user, direction=other_way(TENANT))
    assert stack.status(user)["direction"] == other_way(TENANT).value
    CHECKS[other_way(TENANT)](stack, user)
    assert stack.status(user)["lastError"] is None
