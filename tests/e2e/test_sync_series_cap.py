"""The occurrence cap (``MAX_OCCURRENCES_PER_SERIES``) through the whole service: a series with more
occurrences than the cap is read one page of instances at a time, never expanded past the cap, and what the
read did not reach is never taken as cancelled."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devkit.azurite import AzuriteEndpoints
from devkit.host_process import HostLauncher
from tests.e2e.kit import wait_until
from tests.e2e.sync_stack import SyncStack, instant, running_sync_stack, timed_event

CAP = 10


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, local_hosts: HostLauncher, azurite: AzuriteEndpoints
) -> Iterator[SyncStack]:
    work = tmp_path_factory.mktemp("sync-series-cap")
    launcher = HostLauncher(work_root=work, base_settings=local_hosts.base_settings, env=local_hosts.env)
    with running_sync_stack(
        work, launcher, azurite.connection_string, ("ivy",), MAX_OCCURRENCES_PER_SERIES=str(CAP)
    ) as built:
        yield built


def test_a_daily_series_past_the_cap_syncs_and_reads_one_capped_page_per_change(stack: SyncStack) -> None:
    user = stack.connect("ivy")
    day = (datetime.now(UTC) + timedelta(days=2)).date()
    recurrence = {
        "pattern": {"type": "daily", "interval": 1},
        "range": {"type": "noEnd", "startDate": day.isoformat()},
    }
    master = stack.outlook_create(
        user, timed_event("Daily check-in", f"{day}T08:00:00", f"{day}T08:15:00", recurrence=recurrence)
    )
    activity = wait_until(lambda: stack.one_activity(user, "Daily check-in"), what="the series in the CRM")
    stack.settle()
    assert activity["recurrence"]["range"]["type"] == "noEnd"
    assert activity["cancelledOccurrences"] == []  # 400 occurrences not read are not cancelled ones

    window = f"startDateTime={day}T00:00:00Z&endDateTime={day + timedelta(days=5)}T00:00:00Z"
    status, body = stack.world.graph.outlook(
        stack.oid(user), "GET", f"/events/{master['id']}/instances?{window}"
    )
    assert status == 200, body
    third: dict[str, Any] = body["value"][2]
    before = len(stack.graph_requests(user))
    stack.outlook_delete(user, third["id"])

    def cancelled() -> list[str]:
        return list((stack.world.crm.activity(activity["crmId"]) or {}).get("cancelledOccurrences", []))

    [key] = wait_until(cancelled, what="the cancellation in the CRM")
    assert instant(key) == instant(third["originalStart"])
    stack.settle()
    requests = stack.graph_requests(user)[before:]
    paths = [(r["method"], r["path"]) for r in requests]
    # Delta lists every occurrence of a changed series (several pages); the series is read once for them all:
    # its master and one capped page of instances.
    listings = [path for _, path in paths if path.endswith("/instances")]
    masters = [
        path for _, path in paths if path.startswith("/me/events/") and not path.endswith("/instances")
    ]
    assert (len(listings), len(masters)) == (1, 1), paths
    assert {method for method, _ in paths} == {"GET"}  # nothing written for an Outlook change
    assert len([p for _, p in paths if p == "/me/calendarView/delta"]) == len(paths) - 2
