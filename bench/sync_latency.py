"""Sync latency through the whole service, each way (DESIGN §9: p50 < 1 s, p95 < 2 s).

Starts Azurite, the emulators and the local Functions host on function_app.py (``bench.sync_scenario``) and
connects two users through the real sign-in trip: one whose changes are made in Outlook, one whose changes are
made in the CRM. Then, alternately in each direction, one change at a time (creates, edits and deletes, in
cycles of create → edit → edit → delete):

- Outlook → CRM: ``GraphEmulator.user_create_event`` / ``user_update_event`` / ``user_delete_event``; Graph
  sends the change notification to the host's webhook, which queues a sync; the ``reconcile`` function
  writes to the CRM. Arrival: the CRM emulator holds the activity (its subject, or its absence).
- CRM → Outlook: ``CrmEmulator.create_as_user`` / ``edit_as_user`` / ``delete_as_user``, then the CRM's signed
  push (``PUT``/``DELETE /api/users/{id}/activities/{crmId}``), which stores the change and queues a sync;
  ``reconcile`` writes to Outlook. Arrival: the Graph emulator holds the event (its subject, or its absence).

Each change is timed from just before the edit until the other side shows it, polled every 5 ms. After each
arrival the benchmark waits until the service is quiet (the echo of our own write handled, no message queued,
no run going on), so each change is measured alone. A few changes each way first warm up the connections and
caches and are not counted.

The host polls its queues with the tests' host.json (``fast_queue_host_json``: an empty queue is polled
after 0.1 s, then every 0.2 s; a change that closely follows the previous run may meet the 0.1 s wait, at most
0.1 s less than a change minutes apart would wait). The deployed
host.json lets the back-off grow to 0.5 s (0.1, 0.2, 0.4, 0.5 s), which adds up to 0.5 s (about 0.25 s on
average) to a change that finds the queue idle, as a person's changes minutes apart do: ``--deployed-polling``
measures that, pausing ``--idle`` seconds (default 4) plus a random 0-2 s before each change, so that the
poller has backed off and the change meets it at a random point of its period, as it would.

    python -m bench.sync_latency [--changes 100] [--deployed-polling [--idle 4]]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.sync_scenario import (
    DEPLOYED_MAX_POLLING_S,
    FAST_MAX_POLLING_S,
    BenchError,
    BenchStack,
    Figures,
    Json,
    figure,
    percentile,
    running_stack,
)
from bench.table_meter import TableMeter
from devkit.azurite import Azurite

KINDS = ("create", "edit", "edit", "delete")  # one item's life; the benchmark cycles through it
WARM_UP = 4  # changes each way that are made but not counted (one full cycle)
ARRIVAL_TIMEOUT = 30.0
M365 = "m365_to_crm"
CRM = "crm_to_m365"


class _Direction:
    """One user's changes on one side, and how to see them arrive on the other."""

    def __init__(self, stack: BenchStack, user_id: str, poll_interval: float) -> None:
        self.stack = stack
        self.user_id = user_id
        self.poll_interval = poll_interval
        self.graph_id: str | None = None
        self.crm_id: str | None = None
        self.serial = 0

    def change(self, kind: str) -> float:
        """Make one change of ``kind``; seconds until it arrived."""
        self.serial += 1
        subject = f"Bench {self.user_id} {self.serial}"
        started = time.perf_counter()
        arrived = self._make(kind, subject)
        deadline = started + ARRIVAL_TIMEOUT
        while not arrived():
            if time.perf_counter() > deadline:
                raise BenchError(f"{kind} {subject!r} did not arrive within {ARRIVAL_TIMEOUT:g} s")
            time.sleep(self.poll_interval)
        return time.perf_counter() - started

    def _make(self, kind: str, subject: str) -> Callable[[], bool]:
        raise NotImplementedError


class _FromOutlook(_Direction):
    def _make(self, kind: str, subject: str) -> Callable[[], bool]:
        graph, crm, oid = self.stack.world.graph, self.stack.world.crm, self.stack.oid(self.user_id)
        if kind == "create":
            start, end = _slot(self.serial)
            event = graph.user_create_event(
                oid,
                {
                    "subject": subject,
                    "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
                    "end": {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
                    "location": {"displayName": "Room 1"},
                },
            )
            self.graph_id = str(event["id"])

            def created() -> bool:
                found = [a for a in crm.activities(self.user_id) if a["subject"] == subject]
                if found:
                    self.crm_id = str(found[0]["crmId"])
                return bool(found)

            return created
        graph_id, crm_id = self._ids()
        if kind == "edit":
            changes: Json = {"subject": subject}
            if self.serial % 2:
                changes["location"] = {"displayName": f"Room {self.serial}"}
            else:
                start, end = _slot(self.serial)
                changes["start"] = {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}
                changes["end"] = {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}
            graph.user_update_event(oid, graph_id, changes)

            def edited() -> bool:
                activity = crm.activity(crm_id)
                return activity is not None and activity["subject"] == subject

            return edited
        graph.user_delete_event(oid, graph_id)
        return lambda: crm.activity(crm_id) is None

    def _ids(self) -> tuple[str, str]:
        if self.graph_id is None or self.crm_id is None:
            raise BenchError("an edit or delete before the item's create arrived")
        return self.graph_id, self.crm_id


class _FromCrm(_Direction):
    def _make(self, kind: str, subject: str) -> Callable[[], bool]:
        stack, crm = self.stack, self.stack.world.crm
        if kind == "create":
            start, end = _slot(self.serial)
            created = crm.create_as_user(
                {
                    "ownerCrmUserId": self.user_id,
                    "type": "personal_appointment",
                    "subject": subject,
                    "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "timeZone": "UTC",
                    "location": "Room 1",
                }
            )
            self.crm_id = str(created["crmId"])
            stack.push(self.user_id, created)

            def arrived_create() -> bool:
                found = [e for e in stack.outlook_events(self.user_id) if e["subject"] == subject]
                if found:
                    self.graph_id = str(found[0]["id"])
                return bool(found)

            return arrived_create
        crm_id, graph_id = self._ids()
        if kind == "edit":
            changes: Json = {"subject": subject}
            if self.serial % 2:
                changes["location"] = f"Room {self.serial}"
            else:
                start, end = _slot(self.serial)
                changes["start"] = start.strftime("%Y-%m-%dT%H:%M:%SZ")
                changes["end"] = end.strftime("%Y-%m-%dT%H:%M:%SZ")
            stack.push(self.user_id, crm.edit_as_user(crm_id, changes))

            def arrived_edit() -> bool:
                event = stack.outlook_event(self.user_id, graph_id)
                return event is not None and event["subject"] == subject

            return arrived_edit
        current = crm.activity(crm_id)
        if current is None:
            raise BenchError(f"activity {crm_id} vanished from the CRM")
        crm.delete_as_user(crm_id)
        stack.push_deletion(self.user_id, crm_id, str(current["version"]))
        return lambda: stack.outlook_event(self.user_id, graph_id) is None

    def _ids(self) -> tuple[str, str]:
        if self.graph_id is None or self.crm_id is None:
            raise BenchError("an edit or delete before the item's create arrived")
        return self.crm_id, self.graph_id


def _slot(serial: int) -> tuple[datetime, datetime]:
    """A one-hour slot a few days ahead, inside the sync window, moving with ``serial``."""
    day = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(days=3)
    start = day + timedelta(minutes=30 * (serial % 20))
    return start, start + timedelta(hours=1)


def run(
    *,
    changes: int = 100,
    connection_string: str | None = None,
    work_dir: Path | None = None,
    poll_interval: float = 0.005,
    fast_queue_polling: bool = True,
    idle: float = 0.0,
    count_costs: bool = False,
    seed: int = 20260316,
    report: Callable[[str], None] = print,
) -> Figures:
    """Measure ``changes`` changes each way; returns ``{"sync_latency_m365_to_crm_p50_ms": {…}, …}``.
    ``connection_string``: an Azurite already running (else one is started and stopped here); ``work_dir``:
    where the host keeps its settings and log (else a temporary directory, removed at the end); ``idle``:
    seconds of quiet (plus a random part of the poller's longest interval) before each change;
    ``count_costs``: also count the Graph requests and (through a ``TableMeter``, which costs a little time)
    the Table Storage transactions of each change made alone, and ``report`` them (an analysis)."""
    timings: dict[str, list[tuple[str, float]]] = {M365: [], CRM: []}
    costs: dict[str, Counter[str]] = {M365: Counter(), CRM: Counter()}
    polling = FAST_MAX_POLLING_S if fast_queue_polling else DEPLOYED_MAX_POLLING_S
    rng = random.Random(seed)
    with contextlib.ExitStack() as resources:
        if connection_string is None:
            connection_string = resources.enter_context(Azurite()).connection_string
        meter = resources.enter_context(TableMeter(connection_string)) if count_costs else None
        stack = resources.enter_context(
            running_stack(
                ("alice", "bob"),
                connection_string=connection_string,
                work_dir=work_dir,
                fast_queue_polling=fast_queue_polling,
                host_storage=meter.connection_string if meter is not None else None,
            )
        )
        directions = {
            M365: _FromOutlook(stack, stack.connect("alice"), poll_interval),
            CRM: _FromCrm(stack, stack.connect("bob"), poll_interval),
        }
        stack.wait_quiet()
        log_start = 0
        for index in range(WARM_UP + changes):
            kind = KINDS[index % len(KINDS)]
            if index == WARM_UP:
                log_start = len(stack.host.log_text())
            for name, direction in directions.items():
                graph_before = len(stack.world.graph.request_log())
                tables_before = len(meter.transactions()) if meter is not None else 0
                if idle:
                    # Quiet, then a random phase against the poller's period, as changes minutes apart have.
                    time.sleep(idle + rng.uniform(0, polling))
                elapsed = direction.change(kind)
                stack.wait_quiet()
                if index >= WARM_UP:
                    timings[name].append((kind, elapsed))
                    costs[name]["graph"] += len(stack.world.graph.request_log()) - graph_before
                    if meter is not None:
                        costs[name]["tables"] += len(meter.transactions()) - tables_before
        durations = _durations(stack.host.log_text()[log_start:])
    figures: Figures = {}
    for name, measured in timings.items():
        values = [elapsed * 1000 for _, elapsed in measured]
        figures[f"sync_latency_{name}_p50_ms"] = figure(percentile(values, 50), "ms")
        figures[f"sync_latency_{name}_p95_ms"] = figure(percentile(values, 95), "ms")
        figures[f"sync_latency_{name}_max_ms"] = figure(max(values), "ms")
        for kind in dict.fromkeys(KINDS):
            of_kind = [elapsed * 1000 for k, elapsed in measured if k == kind]
            if of_kind:
                figures[f"sync_latency_{name}_{kind}_p50_ms"] = figure(percentile(of_kind, 50), "ms")
        tables = f", {costs[name]['tables'] / len(measured):.2f} table transactions" if meter else ""
        report(
            f"  {name}: {costs[name]['graph'] / len(measured):.2f} Graph requests{tables} per change alone"
        )
    # Where the time goes, as the host logged each invocation while measuring (echo runs included).
    for function, name in _FUNCTIONS.items():
        logged = durations.get(function)
        if logged:
            figures[f"sync_latency_{name}_p50_ms"] = figure(percentile(logged, 50), "ms")
            report(
                f"  {function}: {len(logged)} invocations, "
                f"p50 {percentile(logged, 50):.0f} ms, p95 {percentile(logged, 95):.0f} ms"
            )
    # Not measured, but what the figures above depend on: the longest wait of an idle queue poller.
    figures["sync_latency_queue_max_polling_ms"] = figure(polling * 1000, "ms")
    return figures


# The host's log line per invocation (devkit/host_invoke.py, as the Functions host writes it).
_EXECUTED = re.compile(r"Executed 'Functions\.(\w+)' \((\w+), Id=[^,]+, Duration=(\d+)ms\)")
_FUNCTIONS = {
    "graph_notifications": "webhook_run",
    "activity_push": "push_run",
    "activity_delete": "push_delete_run",
    "reconcile": "reconcile_run",
}


def _durations(log: str) -> dict[str, list[float]]:
    """Milliseconds per invocation, by function, from the host's log."""
    found: dict[str, list[float]] = {}
    for function, _, duration in _EXECUTED.findall(log):
        found.setdefault(function, []).append(float(duration))
    return found


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sync_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=100, help="changes measured in each direction")
    parser.add_argument(
        "--deployed-polling",
        action="store_true",
        help="use the repository's host.json (queues polled every 0.5 s at most) instead of the tests' 0.2 s",
    )
    parser.add_argument(
        "--idle", type=float, help="seconds of quiet before each change (default 0; 4 deployed)"
    )
    parser.add_argument(
        "--count-costs",
        action="store_true",
        help="also count Graph requests and table transactions per change made alone (slows it a little)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    figures = run(
        changes=args.changes,
        fast_queue_polling=not args.deployed_polling,
        idle=args.idle if args.idle is not None else (4.0 if args.deployed_polling else 0.0),
        count_costs=args.count_costs,
    )
    for name, value in figures.items():
        print(f"{name}: {value['value']} {value['unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
