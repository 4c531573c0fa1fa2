"""What one synced change costs: Graph requests and Table Storage transactions per change (DESIGN §9: ≤ 1.2
Graph requests, ≤ 3 table transactions).

Starts the whole service (``bench.sync_scenario``) with the host's Table endpoint behind a counting proxy
(``bench.table_meter``: every request the host makes to Table Storage is one transaction, a ``$batch`` one),
connects two users through the real sign-in trip, then runs a mixed workload: creates, edits and deletes in
Outlook (the Graph emulator's user API, which notifies the host's webhook) and in the CRM (the CRM emulator's
user API, then the CRM's signed push), in bursts as people make them — 5 to 20 changes by one user, a few
tens of milliseconds apart, on one side or (one burst in ten) on both — and after each burst waits until both
sides agree and the service is quiet. No item is touched twice in one burst, so the end state is known and
is checked: a workload that did not sync would make the figures meaningless.

Counted over the workload only (connecting the users and their first syncs are not):

- Graph: every request the app made to the Graph emulator (its request log; the users' own Outlook edits are
  not requests of the app and are not logged). Subscription requests are counted apart: none is expected
  while measuring (renewal is a timer, off here), and they are not per change.
- Table Storage: every request the host made to the Table endpoint.

Per change = total / number of changes (each create, edit or delete a user made on one side is one change).

    python -m bench.sync_costs [--changes 500] [--users 2]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.sync_scenario import (
    BenchError,
    BenchStack,
    Figures,
    Json,
    figure,
    running_stack,
)
from bench.table_meter import TableMeter
from devkit.azurite import Azurite

USERS = ("alice", "bob", "carol", "dave")
OUTLOOK = "outlook"
CRM = "crm"
SETTLE_TIMEOUT = 60.0


@dataclass
class _Item:
    """One calendar item of the workload, as the benchmark expects it on both sides."""

    number: int
    version: int = 0
    graph_id: str | None = None
    crm_id: str | None = None

    @property
    def subject(self) -> str:
        return f"W{self.number} v{self.version}"


@dataclass
class _User:
    user_id: str
    items: dict[int, _Item] = field(default_factory=dict)


@dataclass
class _Tally:
    changes: Counter[str] = field(default_factory=Counter)  # "outlook create", "crm delete", …
    bursts: int = 0


class _Workload:
    def __init__(self, stack: BenchStack, users: list[_User], rng: random.Random, gap: float) -> None:
        self.stack = stack
        self.users = users
        self.rng = rng
        self.gap = gap
        self.serial = 0
        self.tally = _Tally()

    def burst(self, size: int) -> None:
        user = self.rng.choice(self.users)
        side = self.rng.choices((OUTLOOK, CRM, "both"), weights=(45, 45, 10))[0]
        touched: set[int] = set()
        for _ in range(size):
            this_side = side if side != "both" else self.rng.choice((OUTLOOK, CRM))
            candidates = [
                item
                for item in user.items.values()
                if item.number not in touched and (item.graph_id if this_side == OUTLOOK else item.crm_id)
            ]
            kind = "create"
            if len(candidates) >= 3:
                kind = self.rng.choices(("create", "edit", "delete"), weights=(35, 45, 20))[0]
            item = self._new_item(user) if kind == "create" else self.rng.choice(candidates)
            touched.add(item.number)
            (self._outlook if this_side == OUTLOOK else self._crm)(user, item, kind)
            self.tally.changes[f"{this_side} {kind}"] += 1
            time.sleep(self.rng.uniform(0, 2 * self.gap))
        self.tally.bursts += 1

    def _new_item(self, user: _User) -> _Item:
        self.serial += 1
        item = _Item(self.serial)
        user.items[item.number] = item
        return item

    def _outlook(self, user: _User, item: _Item, kind: str) -> None:
        graph, oid = self.stack.world.graph, self.stack.oid(user.user_id)
        if kind == "delete":
            assert item.graph_id is not None
            graph.user_delete_event(oid, item.graph_id)
            del user.items[item.number]
            return
        start, end = _slot(item.number, item.version)
        if kind == "create":
            body: Json = {
                "subject": item.subject,
                "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
                "end": {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
                "location": {"displayName": f"Room {item.number % 7}"},
                "body": {"contentType": "text", "content": f"Agenda for item {item.number}"},
            }
            item.graph_id = str(graph.user_create_event(oid, body)["id"])
            return
        item.version += 1
        changes: Json = {"subject": item.subject}
        if self.rng.random() < 0.5:
            start, end = _slot(item.number, item.version)
            changes["start"] = {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}
            changes["end"] = {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}
        assert item.graph_id is not None
        graph.user_update_event(oid, item.graph_id, changes)

    def _crm(self, user: _User, item: _Item, kind: str) -> None:
        crm = self.stack.world.crm
        if kind == "delete":
            assert item.crm_id is not None
            current = crm.activity(item.crm_id)
            if current is None:
                raise BenchError(f"activity {item.crm_id} vanished from the CRM")
            crm.delete_as_user(item.crm_id)
            self.stack.push_deletion(user.user_id, item.crm_id, str(current["version"]))
            del user.items[item.number]
            return
        start, end = _slot(item.number, item.version)
        if kind == "create":
            created = crm.create_as_user(
                {
                    "ownerCrmUserId": user.user_id,
                    "type": "personal_appointment",
                    "subject": item.subject,
                    "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "timeZone": "UTC",
                    "location": f"Room {item.number % 7}",
                    "description": f"Agenda for item {item.number}",
                }
            )
            item.crm_id = str(created["crmId"])
            self.stack.push(user.user_id, created)
            return
        item.version += 1
        changes: Json = {"subject": item.subject}
        if self.rng.random() < 0.5:
            start, end = _slot(item.number, item.version)
            changes["start"] = start.strftime("%Y-%m-%dT%H:%M:%SZ")
            changes["end"] = end.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert item.crm_id is not None
        self.stack.push(user.user_id, crm.edit_as_user(item.crm_id, changes))

    # --- after a burst ---

    def settle(self) -> None:
        """Wait until both sides hold exactly what the workload expects, then until the service is quiet;
        then learn the ids each side gave the items created on the other."""
        # Quiet first (cheap to check), then compare both sides (dearer: every item rendered): polling the
        # sides all the time would take CPU from the service being measured.
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            self.stack.wait_quiet(timeout=SETTLE_TIMEOUT)
            if self._converged():
                return
            if time.monotonic() > deadline:
                raise BenchError("the service went quiet, but the two sides do not agree")
            time.sleep(0.1)

    def _converged(self) -> bool:
        for user in self.users:
            expected = {item.subject: item for item in user.items.values()}
            events = self.stack.outlook_events(user.user_id)
            activities = self.stack.world.crm.activities(user.user_id)
            if sorted(e["subject"] for e in events) != sorted(expected):
                return False
            if sorted(a["subject"] for a in activities) != sorted(expected):
                return False
            for event in events:
                expected[event["subject"]].graph_id = str(event["id"])
            for activity in activities:
                expected[activity["subject"]].crm_id = str(activity["crmId"])
        return True


def _slot(number: int, version: int) -> tuple[datetime, datetime]:
    """A one-hour slot within the next weeks (inside the sync window), moving with each edit."""
    day = datetime.now(UTC).replace(hour=7, minute=0, second=0, microsecond=0) + timedelta(days=1)
    start = day + timedelta(days=number % 30, minutes=30 * ((number + version) % 20))
    return start, start + timedelta(hours=1)


def _graph_kind(entry: Json) -> str:
    method, path = str(entry["method"]), str(entry["path"])
    if "/subscriptions" in path:
        return "subscription"
    if path.endswith("/calendarView/delta"):
        return "delta page read"
    if "/$batch" in path:
        return "batch"
    if path.endswith("/events"):
        return "event create" if method == "POST" else "events list"
    if "/events/" in path:
        return {"GET": "event read", "PATCH": "event update", "DELETE": "event delete"}.get(method, method)
    return f"{method} {path}"


def run(
    *,
    changes: int = 500,
    users: int = 2,
    connection_string: str | None = None,
    work_dir: Path | None = None,
    gap: float = 0.03,
    seed: int = 20260315,
    report: Callable[[str], None] = print,
) -> Figures:
    """Run the workload of ``changes`` changes by ``users`` users; returns ``{"graph_requests_per_change":
    {…}, "table_transactions_per_change": {…}, …}``, and ``report``s the breakdown (what was counted)."""
    if not 1 <= users <= len(USERS):
        raise ValueError(f"users must be 1 to {len(USERS)}")
    rng = random.Random(seed)
    with contextlib.ExitStack() as resources:
        if connection_string is None:
            connection_string = resources.enter_context(Azurite()).connection_string
        meter = resources.enter_context(TableMeter(connection_string))
        stack = resources.enter_context(
            running_stack(
                USERS[:users],
                connection_string=connection_string,
                work_dir=work_dir,
                host_storage=meter.connection_string,
            )
        )
        people = [_User(stack.connect(name)) for name in USERS[:users]]
        workload = _Workload(stack, people, rng, gap)
        stack.wait_quiet()
        graph = stack.world.graph
        graph.reset_request_log()
        meter.reset()
        started = time.monotonic()
        made = 0
        while made < changes:
            size = min(rng.randint(5, 20), changes - made)
            workload.burst(size)
            made += size
            workload.settle()
        seconds = time.monotonic() - started
        oids = {stack.oid(user.user_id) for user in people}
        requests = [
            entry for entry in graph.request_log() if entry.get("mailbox") in oids or not entry.get("mailbox")
        ]
        table_summary = meter.summary(strip_prefix=stack.prefix)
        transactions = meter.transactions()
    by_kind = Counter(_graph_kind(entry) for entry in requests)
    subscription_requests = by_kind.pop("subscription", 0)
    graph_requests = sum(by_kind.values())
    report(
        f"  workload: {made} changes in {workload.tally.bursts} bursts by {users} users in {seconds:.1f} s: "
        + ", ".join(f"{count} {name}" for name, count in sorted(workload.tally.changes.items()))
    )
    report(
        f"  graph requests: {graph_requests} ("
        + ", ".join(f"{count} {name}" for name, count in by_kind.most_common())
        + f"); {subscription_requests} subscription request(s) not counted"
    )
    batched = sum(t.operations for t in transactions if t.kind == "batch")
    report(
        f"  table transactions: {len(transactions)} (by table and kind: "
        + ", ".join(f"{count} {name}" for name, count in table_summary.items())
        + f"); the batches carried {batched} operations"
    )
    figures: Figures = {
        "graph_requests_per_change": figure(graph_requests / made, "requests", 3),
        "table_transactions_per_change": figure(len(transactions) / made, "transactions", 3),
        "graph_delta_reads_per_change": figure(by_kind.get("delta page read", 0) / made, "requests", 3),
        "sync_costs_changes": figure(made, "changes", 0),
    }
    return figures


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sync_costs", description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=500)
    parser.add_argument("--users", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.03, help="mean seconds between changes in a burst")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    figures = run(changes=args.changes, users=args.users, gap=args.gap)
    for name, value in figures.items():
        print(f"{name}: {value['value']} {value['unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
