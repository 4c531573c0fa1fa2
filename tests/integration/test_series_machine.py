"""The sync state machine's series operations (issue 7): weekly series created, retitled, partly moved,
partly cancelled and deleted at random on both sides, with failures injected, over the real reconciler.

It shares the calendar machine's world (``sync_machine_kit``: the emulators, users connected through the real
sign-in trip, ``MachineContainer`` with crashes injected at the writes that save a run) and its way of
running: the reconciler in-process, a failed run retried as the queue retries its message, the CRM pushing
every change of an activity (the service's own writes included) after each attempt, and runs skipped at
random (a lost queue message: a later run must catch up).

People edit as they do:
- in Outlook (the Graph emulator's user API): create a series, retitle it (the master), move one occurrence
  to a later hour (``PATCH`` of the instance: an exception), delete one occurrence (a cancellation), delete
  the series;
- in the CRM (the emulator's user API, then the push): the same, through ``recurrence``,
  ``occurrenceOverrides`` and ``cancelledOccurrences``.

The model merges per series: the subject is taken from the side that changed it; cancellations and moves
made on either side all survive (each occurrence is touched on one side only, and a series is deleted only
while the other side has not changed it since the last sync, so no conflict policy decides anything here:
the calendar machine covers conflicts). After a quiet phase (every run repeated until a round writes
nothing) each series is one CRM activity and one Outlook series master, linked, nothing duplicated, and both
show the model's subject, the model's cancelled occurrences (Outlook lists none of them) and the model's moved
occurrences (Outlook lists them as exceptions at their new time, the CRM as overrides).

Bug hunting: ``SYNC_MACHINE_RANDOM=1 SYNC_MACHINE_EXAMPLES=100 SYNC_MACHINE_STEPS=30`` (``-o timeout=0``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from devkit.azurite import AzuriteEndpoints
from sync_core.config import ConflictPolicy
from tests.integration.sync_machine_kit import (
    CRASH_POINTS,
    CrashPlan,
    Json,
    MachineContainer,
    MachineWorld,
    Person,
    machine_world,
    run_until_done,
)

# Known service bugs this machine found (reported in the issue notes). While one is True the machine avoids
# the steps that trigger it; set it to False once the bug is fixed.
KNOWN_BUGS = {
    # A series' overrides (and its cancellations) were merged as one field each: one occurrence moved in
    # Outlook and another moved in the CRM before the next run was a conflict on the whole field. Fixed:
    # they merge occurrence by occurrence (``Base.occurrences``).
    "occurrences_merged_whole": False,
}

OCCURRENCES = 5
MAX_SERIES = 3
QUIET_ROUNDS = 4
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SUBJECTS = ("Weekly sync", "Pipeline review", "1:1", "Stand-up (Zürich)")

crash_plans = st.builds(
    CrashPlan,
    point=st.sampled_from(CRASH_POINTS),
    nth=st.sampled_from((1, 2)),
    after=st.booleans(),
    hard=st.booleans(),
)


@dataclass(frozen=True)
class SeriesValues:
    """What one side shows of a series: its subject, which occurrences (by number, 0 the first) are
    cancelled, and which are moved, by how many hours."""

    subject: str
    cancelled: frozenset[int] = frozenset()
    moved: tuple[tuple[int, int], ...] = ()  # (occurrence, hours later), sorted

    def touched(self) -> frozenset[int]:
        return self.cancelled | {number for number, _ in self.moved}

    def with_move(self, number: int, hours: int) -> SeriesValues:
        return replace(self, moved=tuple(sorted((*self.moved, (number, hours)))))


@dataclass
class Series:
    """One series as the model sees it."""

    key: str
    day: int  # days from today to the first occurrence
    hour: int
    crm_id: str | None
    graph_id: str | None  # the series master's id
    crm: SeriesValues | None
    m365: SeriesValues | None
    base: SeriesValues | None = None  # what both held after the last successful run; None: never synced
    occurrence_ids: dict[int, str] = field(default_factory=dict)  # Outlook's instance ids, by number

    def first(self, today: date) -> datetime:
        day = today + timedelta(days=self.day)
        return datetime(day.year, day.month, day.day, self.hour, tzinfo=UTC)

    def original(self, today: date, number: int) -> datetime:
        return self.first(today) + timedelta(weeks=number)

    def recurrence(self, today: date) -> Json:
        first = self.first(today)
        return {
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [WEEKDAYS[first.weekday()]]},
            "range": {
                "type": "numbered",
                "startDate": first.date().isoformat(),
                "numberOfOccurrences": OCCURRENCES,
            },
        }


class SeriesMachine(RuleBasedStateMachine):
    def __init__(self, world: MachineWorld) -> None:
        super().__init__()
        self.world = world
        self.today = world.today
        self.person: Person | None = None
        self.series: list[Series] = []
        self.serial = 0
        self.pushed: dict[str, str] = {}  # crm id → the version the CRM pushed last

    @initialize(
        crm_subject=st.sampled_from(SUBJECTS),
        outlook_subject=st.sampled_from(SUBJECTS),
        days=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    )
    def connect(self, crm_subject: str, outlook_subject: str, days: tuple[int, int]) -> None:
        """A user connects, with a series on each side to start from (so that the steps go to editing)."""
        self.world.crm.reset()
        self.world.graph.clear_faults()
        self.world.switch.disarm()
        self.world.clock.offset = timedelta()
        self.person = self.world.connect(ConflictPolicy.CRM_WINS)
        self._run()
        self.crm_create(crm_subject, days[0], 9)
        self.outlook_create(outlook_subject, days[1], 13)
        self._run()

    @property
    def container(self) -> MachineContainer:
        return self.world.containers[ConflictPolicy.CRM_WINS]

    @property
    def me(self) -> Person:
        assert self.person is not None
        return self.person

    # --- creating ---------------------------------------------------------------------------------------

    @precondition(lambda self: len(self._alive()) < MAX_SERIES)
    @rule(subject=st.sampled_from(SUBJECTS), day=st.integers(1, 20), hour=st.sampled_from((8, 9, 13)))
    def crm_create(self, subject: str, day: int, hour: int) -> None:
        item = Series(self._key(), day, hour, None, None, SeriesValues(subject), None)
        first = item.first(self.today)
        created = self.world.crm.create_as_user(
            {
                "ownerCrmUserId": self.me.user_id,
                "type": "personal_appointment",
                "subject": subject,
                "start": first.isoformat(),
                "end": (first + timedelta(hours=1)).isoformat(),
                "timeZone": "UTC",
                "recurrence": item.recurrence(self.today),
            }
        )
        item.crm_id = created["crmId"]
        self._push(created)
        self.series.append(item)

    @precondition(lambda self: len(self._alive()) < MAX_SERIES)
    @rule(subject=st.sampled_from(SUBJECTS), day=st.integers(1, 20), hour=st.sampled_from((8, 9, 13)))
    def outlook_create(self, subject: str, day: int, hour: int) -> None:
        item = Series(self._key(), day, hour, None, None, None, SeriesValues(subject))
        first = item.first(self.today)
        master = self.world.outlook_create(
            self.me,
            {
                "subject": subject,
                "start": _graph_time(first),
                "end": _graph_time(first + timedelta(hours=1)),
                "recurrence": item.recurrence(self.today),
            },
        )
        item.graph_id = master["id"]
        self.series.append(item)

    # --- editing the whole series -------------------------------------------------------------------------

    @precondition(lambda self: any(self._crm_editable(s, "subject") for s in self.series))
    @rule(data=st.data(), subject=st.sampled_from(SUBJECTS))
    def crm_retitle(self, data: st.DataObject, subject: str) -> None:
        item = self._pick(data, lambda s: self._crm_editable(s, "subject"))
        assert item.crm is not None
        assert item.crm_id is not None
        self._push(self.world.crm.edit_as_user(item.crm_id, {"subject": subject}))
        item.crm = replace(item.crm, subject=subject)

    @precondition(lambda self: any(self._outlook_editable(s, "subject") for s in self.series))
    @rule(data=st.data(), subject=st.sampled_from(SUBJECTS))
    def outlook_retitle(self, data: st.DataObject, subject: str) -> None:
        item = self._pick(data, lambda s: self._outlook_editable(s, "subject"))
        assert item.m365 is not None
        assert item.graph_id is not None
        self.world.outlook_update(self.me, item.graph_id, {"subject": subject})
        item.m365 = replace(item.m365, subject=subject)

    # --- one occurrence -----------------------------------------------------------------------------------

    @precondition(lambda self: any(self._untouched(s) and s.crm is not None for s in self.series))
    @rule(data=st.data(), cancel=st.booleans(), hours=st.sampled_from((2, 5)))
    def crm_occurrence(self, data: st.DataObject, cancel: bool, hours: int) -> None:
        """Cancel one occurrence in the CRM, or move it ``hours`` later."""
        item = self._pick(data, lambda s: bool(self._untouched(s)) and s.crm is not None)
        assert item.crm is not None
        assert item.crm_id is not None
        number = data.draw(st.sampled_from(sorted(self._untouched(item))), label="occurrence")
        item.crm = (
            replace(item.crm, cancelled=item.crm.cancelled | {number})
            if cancel
            else item.crm.with_move(number, hours)
        )
        changes: Json = {
            "cancelledOccurrences": [
                item.original(self.today, n).isoformat() for n in sorted(item.crm.cancelled)
            ],
            "occurrenceOverrides": [
                {
                    "originalStart": item.original(self.today, n).isoformat(),
                    "start": (item.original(self.today, n) + timedelta(hours=h)).isoformat(),
                    "end": (item.original(self.today, n) + timedelta(hours=h + 1)).isoformat(),
                }
                for n, h in item.crm.moved
            ],
        }
        self._push(self.world.crm.edit_as_user(item.crm_id, changes))

    @precondition(lambda self: any(self._untouched(s) and self._in_outlook(s) for s in self.series))
    @rule(data=st.data(), cancel=st.booleans(), hours=st.sampled_from((2, 5)))
    def outlook_occurrence(self, data: st.DataObject, cancel: bool, hours: int) -> None:
        """Delete one occurrence in Outlook, or move it ``hours`` later (an exception)."""
        item = self._pick(data, lambda s: bool(self._untouched(s)) and self._in_outlook(s))
        assert item.m365 is not None
        number = data.draw(st.sampled_from(sorted(self._untouched(item))), label="occurrence")
        occurrence_id = self._occurrence_ids(item)[number]
        if cancel:
            self.world.outlook_delete(self.me, occurrence_id)
            item.m365 = replace(item.m365, cancelled=item.m365.cancelled | {number})
        else:
            start = item.original(self.today, number) + timedelta(hours=hours)
            self.world.outlook_update(
                self.me,
                occurrence_id,
                {"start": _graph_time(start), "end": _graph_time(start + timedelta(hours=1))},
            )
            item.m365 = item.m365.with_move(number, hours)

    # --- deleting the series ------------------------------------------------------------------------------

    @precondition(lambda self: any(self._crm_editable(s, "delete") for s in self.series))
    @rule(data=st.data())
    def crm_delete(self, data: st.DataObject) -> None:
        item = self._pick(data, lambda s: self._crm_editable(s, "delete"))
        assert item.crm_id is not None
        current = self.world.crm.activity(item.crm_id)
        assert current is not None
        self.world.crm.delete_as_user(item.crm_id)
        self.container.activity_pushes.delete(self.me.user_id, item.crm_id, current["version"])
        self.pushed.pop(item.crm_id, None)
        item.crm = None

    @precondition(lambda self: any(self._outlook_editable(s, "delete") for s in self.series))
    @rule(data=st.data())
    def outlook_delete(self, data: st.DataObject) -> None:
        item = self._pick(data, lambda s: self._outlook_editable(s, "delete"))
        assert item.graph_id is not None
        self.world.outlook_delete(self.me, item.graph_id)
        item.m365 = None

    # --- runs ---------------------------------------------------------------------------------------------

    @rule(
        fault=st.sampled_from(("none", "graph", "crm", "crash")),
        status=st.sampled_from((429, 500, 503)),
        count=st.integers(1, 4),
        method=st.sampled_from((None, "GET", "POST", "PATCH", "DELETE")),
        plan=crash_plans,
    )
    def run(self, fault: str, status: int, count: int, method: str | None, plan: CrashPlan) -> None:
        """A sync run; Graph or the CRM throttling or failing its next requests, or the worker dying at one
        of the writes that save the run (the queue retries the message)."""
        if fault == "graph":
            self.world.graph.inject_fault(
                status, count=count, retry_after=0.0, user=self.me.oid, method=method
            )
        elif fault == "crm":
            self.world.crm.fail_next(count, status, retry_after=0)
        elif fault == "crash":
            self.world.switch.arm(plan)
        try:
            self._run()
        finally:
            self.world.graph.clear_faults()
            self.world.switch.disarm()

    @rule()
    def settle(self) -> None:
        self._settle_and_check()

    def teardown(self) -> None:
        try:
            if self.person is not None:
                self._settle_and_check()
        finally:
            self.world.graph.clear_faults()
            self.world.switch.disarm()

    # --- the model ----------------------------------------------------------------------------------------

    def _synced(self) -> None:
        """What a successful run must have made of every series (see the module docstring)."""
        for item in self.series:
            if item.crm is None and item.m365 is None:
                continue
            if item.crm is None or item.m365 is None:
                if item.base is not None:  # deleted on one side, untouched on the other: deleted on both
                    item.crm = item.m365 = None
                    continue
                # created on one side: the same series on the other
                item.crm = item.m365 = item.base = item.crm or item.m365
                continue
            assert item.base is not None
            subject = item.m365.subject if item.m365.subject != item.base.subject else item.crm.subject
            merged = SeriesValues(
                subject,
                item.crm.cancelled | item.m365.cancelled,
                tuple(sorted(set(item.crm.moved) | set(item.m365.moved))),
            )
            item.crm = item.m365 = item.base = merged
        self._resolve_ids()

    def _resolve_ids(self) -> None:
        links = self.world.storage().links
        for item in self._alive():
            if item.crm_id is None:
                assert item.graph_id is not None
                link = links.get_by_graph_id(self.me.user_id, item.graph_id)
                assert link is not None, (
                    f"{item.key}: Outlook series {item.graph_id} was not synced to the CRM"
                )
                item.crm_id = link.value.crm_id
            elif item.graph_id is None:
                link = links.get_by_crm_id(self.me.user_id, item.crm_id)
                assert link is not None, f"{item.key}: CRM series {item.crm_id} was not synced to Outlook"
                item.graph_id = link.value.graph_id

    def _crm_editable(self, item: Series, what: str) -> bool:
        """In the CRM and synced; for a deletion, Outlook has not changed the series since; for the subject,
        Outlook has not changed the subject since."""
        if item.crm is None or item.crm_id is None or item.base is None or item.m365 is None:
            return False
        if what == "delete":
            return item.m365 == item.base
        return item.m365.subject == item.base.subject

    def _outlook_editable(self, item: Series, what: str) -> bool:
        if not self._in_outlook(item) or item.base is None or item.crm is None:
            return False
        assert item.m365 is not None
        if what == "delete":
            return item.crm == item.base
        return item.crm.subject == item.base.subject

    def _in_outlook(self, item: Series) -> bool:
        return item.m365 is not None and item.graph_id is not None

    def _untouched(self, item: Series) -> set[int]:
        """The occurrences (after the first) neither side has moved or cancelled; none while the series is
        only on one side or being deleted."""
        if item.crm is None or item.m365 is None:
            if item.base is not None:
                return set()
            only = item.crm or item.m365
            assert only is not None
            return set(range(1, OCCURRENCES)) - only.touched()
        return set(range(1, OCCURRENCES)) - item.crm.touched() - item.m365.touched()

    def _occurrence_ids(self, item: Series) -> dict[int, str]:
        """Outlook's instance ids of the series, by occurrence number (from ``/instances``)."""
        assert item.graph_id is not None
        found: dict[int, str] = {}
        for instance in self._instances(item):
            original = _instant(instance["originalStart"])
            number = round((original - item.first(self.today)) / timedelta(weeks=1))
            found[number] = instance["id"]
        return found

    def _instances(self, item: Series) -> list[Json]:
        assert item.graph_id is not None
        start = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        end = (datetime.now(UTC) + timedelta(days=80)).strftime("%Y-%m-%dT%H:%M:%SZ")
        answer = self.world.outlook_event(
            self.me, f"{item.graph_id}/instances?startDateTime={start}&endDateTime={end}&$top=100"
        )
        return list(answer["value"])

    # --- running and checking -----------------------------------------------------------------------------

    def _run(self) -> None:
        run_until_done(self.world, self.container, self.me.user_id, after_attempt=self._crm_echo, say=_note)
        self._synced()

    def _crm_echo(self) -> None:
        for activity in self.world.crm.activities(self.me.user_id):
            if self.pushed.get(activity["crmId"]) != activity["version"]:
                self._push(activity)

    def _push(self, activity: Json) -> None:
        self.container.activity_pushes.upsert(self.me.user_id, activity["crmId"], activity)
        self.pushed[activity["crmId"]] = activity["version"]

    def _settle_and_check(self) -> None:
        for _round in range(QUIET_ROUNDS):
            before = (self._crm_versions(), self._outlook_keys())
            self._run()
            if (self._crm_versions(), self._outlook_keys()) == before:
                break
        else:
            raise AssertionError("the series kept changing after the edits stopped")
        self._check()

    def _crm_versions(self) -> dict[str, str]:
        return {a["crmId"]: a["version"] for a in self.world.crm.activities(self.me.user_id)}

    def _outlook_keys(self) -> dict[str, str]:
        return {e["id"]: e.get("changeKey", "") for e in self.world.outlook_events(self.me)}

    def _check(self) -> None:
        alive = self._alive()
        activities = {a["crmId"]: a for a in self.world.crm.activities(self.me.user_id)}
        assert sorted(activities) == sorted(str(s.crm_id) for s in alive), "CRM activities ≠ the model's"
        events = {e["id"]: e for e in self.world.outlook_events(self.me)}
        assert sorted(events) == sorted(str(s.graph_id) for s in alive), "Outlook events ≠ the model's"
        for item in alive:
            expected = item.crm
            assert expected is not None
            assert expected == item.m365
            self._check_crm(item, activities[str(item.crm_id)], expected)
            self._check_outlook(item, events[str(item.graph_id)], expected)

    def _check_crm(self, item: Series, activity: Json, expected: SeriesValues) -> None:
        assert activity["subject"] == expected.subject, item.key
        assert activity["recurrence"]["pattern"]["type"] == "weekly", item.key
        cancelled = {self._number(item, value) for value in activity["cancelledOccurrences"]}
        assert cancelled == set(expected.cancelled), (
            f"{item.key}: CRM cancellations {sorted(cancelled)}, the model's {sorted(expected.cancelled)}"
        )
        moved = {
            (self._number(item, o["originalStart"]), self._hours(item, o["originalStart"], o["start"]))
            for o in activity["occurrenceOverrides"]
            if o.get("start") is not None
        }
        assert moved == set(expected.moved), (
            f"{item.key}: CRM overrides {sorted(moved)}, the model's {sorted(expected.moved)}"
        )

    def _check_outlook(self, item: Series, master: Json, expected: SeriesValues) -> None:
        assert master.get("type") == "seriesMaster", item.key
        assert master["subject"] == expected.subject, item.key
        instances = self._instances(item)
        listed = {self._number(item, i["originalStart"]) for i in instances}
        assert listed == set(range(OCCURRENCES)) - expected.cancelled, (
            f"{item.key}: Outlook lists occurrences {sorted(listed)}; "
            f"the model cancelled {sorted(expected.cancelled)}"
        )
        moved = {
            (self._number(item, i["originalStart"]), self._hours(item, i["originalStart"], i["start"]))
            for i in instances
            if _instant(i["start"]) != _instant(i["originalStart"])
        }
        assert moved == set(expected.moved), (
            f"{item.key}: Outlook exceptions {sorted(moved)}, the model's {sorted(expected.moved)}"
        )

    def _number(self, item: Series, original: object) -> int:
        return round((_instant(original) - item.first(self.today)) / timedelta(weeks=1))

    def _hours(self, item: Series, original: object, start: object) -> int:
        return round((_instant(start) - _instant(original)) / timedelta(hours=1))

    def _alive(self) -> list[Series]:
        return [s for s in self.series if s.crm is not None or s.m365 is not None]

    def _key(self) -> str:
        self.serial += 1
        return f"series{self.serial}"

    def _pick(self, data: st.DataObject, eligible: Callable[[Series], bool]) -> Series:
        keys = [item.key for item in self.series if eligible(item)]
        key = data.draw(st.sampled_from(keys), label="series")
        return next(item for item in self.series if item.key == key)


def _note(text: str) -> None:
    """Hypothesis's ``note`` inside the machine; nothing in the plain tests that reuse its steps."""
    with contextlib.suppress(InvalidArgument):
        note(text)


def _graph_time(moment: datetime) -> Json:
    return {"dateTime": moment.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}


def _instant(value: object) -> datetime:
    """A CRM date-time (with an offset), or Graph's ``{"dateTime", "timeZone": "UTC"}`` / naive UTC text."""
    if isinstance(value, dict):
        assert value.get("timeZone") == "UTC", value
        value = value["dateTime"]
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def world(azurite: AzuriteEndpoints) -> Iterator[MachineWorld]:
    with machine_world(azurite.connection_string) as built:
        yield built


def test_series_edited_on_both_sides_converge(world: MachineWorld) -> None:
    class Machine(SeriesMachine):
        def __init__(self) -> None:
            super().__init__(world)

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=int(os.environ.get("SYNC_MACHINE_EXAMPLES", 8)),
            stateful_step_count=int(os.environ.get("SYNC_MACHINE_STEPS", 20)),
            deadline=None,
            derandomize=not os.environ.get("SYNC_MACHINE_RANDOM"),
            database=None,
            print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_occurrences_moved_on_both_sides_before_a_run_both_survive(world: MachineWorld) -> None:
    """One occurrence moved in Outlook, another in the CRM, then one run: both moves survive (the bug
    ``occurrences_merged_whole`` found, pinned)."""
    machine = SeriesMachine(world)
    machine.connect("Weekly sync", "Pipeline review", (3, 5))
    item = next(s for s in machine.series if s.crm_id is not None and s.graph_id is not None)
    assert item.crm is not None
    assert item.m365 is not None
    start = item.original(machine.today, 1) + timedelta(hours=2)
    world.outlook_update(
        machine.me,
        machine._occurrence_ids(item)[1],
        {"start": _graph_time(start), "end": _graph_time(start + timedelta(hours=1))},
    )
    item.m365 = item.m365.with_move(1, 2)
    moved = item.original(machine.today, 2)
    assert item.crm_id is not None
    machine._push(
        world.crm.edit_as_user(
            item.crm_id,
            {
                "occurrenceOverrides": [
                    {
                        "originalStart": moved.isoformat(),
                        "start": (moved + timedelta(hours=5)).isoformat(),
                        "end": (moved + timedelta(hours=6)).isoformat(),
                    }
                ]
            },
        )
    )
    item.crm = item.crm.with_move(2, 5)
    machine._run()
    machine._settle_and_check()
