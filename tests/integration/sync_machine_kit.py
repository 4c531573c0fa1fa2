"""The kit of the sync state machine (``test_sync_machine.py``): the running world, users connected through
the real sign-in trip, the reconciler built by the real wiring, injected crashes, and calendar items as the
machine models them.

Nothing is mocked. Azurite holds the state; the Graph and Entra ID emulators (HTTPS, test CA) and the CRM
emulator (HTTP) are the remote sides; MSAL, requests and azure-data-tables run for real. Two things differ
from ``Container(settings)``, both in ``MachineContainer``:

- its table storage is ``CrashingTables``: the real ``TableStorage`` over the same Azurite tables, whose
  stores raise ``InjectedCrashError`` at one armed call (before or after the real call) to stand for a worker
  dying between applying a plan and saving it; a *hard* crash also keeps the lease (a dead worker releases
  nothing), so the next message finds it held until it expires;
- its retry back-off is 10 ms instead of 0.5 s (``Retry-After`` is honoured as configured), so injected 5xx
  cost milliseconds.

Its clock is ``ShiftableClock``: wall time plus an offset the machine moves forward to let a lease expire.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from devkit.graph_emulator.testkit import WebhookReceiver
from sync_core.adapters.tables import (
    CONNECTIONS,
    LINKS,
    OUTBOX,
    SYNC_LOG,
    ConnectionStore,
    LeaseStore,
    LinkStore,
    LinkWrite,
    OutboxStore,
    RoundEnd,
    SyncLogStore,
    TableStorage,
)
from sync_core.config import ConflictPolicy, EncryptionKey, Settings, StorageSettings
from sync_core.domain.crm_mapping import crm_record_from_json
from sync_core.domain.hashing import JsonValue, canonical_value
from sync_core.domain.mapping import GRAPH_PREFER, activity_from_graph
from sync_core.domain.model import Activity, AllDay, Attendee, AttendeeKind, AttendeeType, Field, Timed
from sync_core.domain.retry_policy import RetryPolicy
from sync_core.domain.state import Connection, Cursor, Lease, Link, OutboxEntry, SyncLogEntry, Versioned
from sync_core.errors import ThrottledError, TransientRemoteError
from sync_core.services.reconcile import RunReport
from sync_core.wiring import Container
from tests.e2e.kit import RETURN_URL, Browser, World, new_key, running_world

Json = dict[str, Any]
T = TypeVar("T")

# --- injected crashes ---------------------------------------------------------------------------------------


class InjectedCrashError(Exception):
    """The worker died here (injected by ``CrashSwitch``)."""


CRASH_POINTS: tuple[str, ...] = (
    "links.write",
    "connections.end_round",  # the round's last write: its record, the new cursor, the lease's release
    "outbox.delete_handled",
    "sync_log.add",
    "connections.update",
)


@dataclass(frozen=True)
class CrashPlan:
    point: str  # one of CRASH_POINTS
    nth: int  # the n-th call of the point (counted from arming)
    after: bool  # the call takes effect, then the worker dies; False: it dies before the call
    hard: bool  # the lease is not released either (a dead worker releases nothing)


class CrashSwitch:
    """Arms one crash; the stores of ``CrashingTables`` ask it around each guarded call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plan: CrashPlan | None = None
        self._calls = 0
        self.fired: CrashPlan | None = None
        self._keep_lease = False

    def arm(self, plan: CrashPlan) -> None:
        with self._lock:
            self._plan, self._calls, self.fired, self._keep_lease = plan, 0, None, False

    def disarm(self) -> None:
        with self._lock:
            self._plan, self.fired, self._keep_lease = None, None, False

    def around(self, point: str, call: Callable[[], T]) -> T:
        with self._lock:
            plan = self._plan
            fire = False
            if plan is not None and plan.point == point:
                self._calls += 1
                fire = self._calls == plan.nth
                if fire:
                    self._plan, self.fired, self._keep_lease = None, plan, plan.hard
        if fire and plan is not None and not plan.after:
            raise InjectedCrashError(f"before {point}")
        result = call()
        if fire:
            raise InjectedCrashError(f"after {point}")
        return result

    def lease_released(self) -> bool:
        """Whether a release may go through (False once: the worker that held the lease died)."""
        with self._lock:
            keep, self._keep_lease = self._keep_lease, False
        return not keep


class _Links(LinkStore):
    def __init__(self, tables: CrashingTables) -> None:
        super().__init__(tables._table(LINKS))
        self._switch = tables.switch

    def write(
        self, user_id: str, saves: Sequence[LinkWrite] = (), deletes: Sequence[Versioned[Link]] = ()
    ) -> list[Versioned[Link]]:
        return self._switch.around("links.write", lambda: LinkStore.write(self, user_id, saves, deletes))


class _Outbox(OutboxStore):
    def __init__(self, tables: CrashingTables) -> None:
        super().__init__(tables._table(OUTBOX))
        self._switch = tables.switch

    def delete_all_handled(self, entries: Sequence[Versioned[OutboxEntry]]) -> int:
        # The run removes its handled rows in one call (a transaction per 100): that call is the point.
        return self._switch.around(
            "outbox.delete_handled", lambda: OutboxStore.delete_all_handled(self, entries)
        )


class _SyncLog(SyncLogStore):
    def __init__(self, tables: CrashingTables) -> None:
        super().__init__(tables._table(SYNC_LOG))
        self._switch = tables.switch

    def add(self, user_id: str, entries: Sequence[SyncLogEntry]) -> None:
        self._switch.around("sync_log.add", lambda: SyncLogStore.add(self, user_id, entries))


class _Connections(ConnectionStore):
    def __init__(self, tables: CrashingTables) -> None:
        super().__init__(tables._table(CONNECTIONS))
        self._switch = tables.switch

    def update(
        self, user_id: str, change: Callable[[Connection | None], Connection | None]
    ) -> Versioned[Connection] | None:
        return self._switch.around(
            "connections.update", lambda: ConnectionStore.update(self, user_id, change)
        )

    def end_round(
        self,
        user_id: str,
        change: Callable[[Connection], Connection | None],
        *,
        next_round_until: datetime | None = None,
        cursor: Cursor | None = None,
        lease: Versioned[Lease] | None = None,
    ) -> RoundEnd:
        return self._switch.around(
            "connections.end_round",
            lambda: ConnectionStore.end_round(
                self, user_id, change, next_round_until=next_round_until, cursor=cursor, lease=lease
            ),
        )


class _Leases(LeaseStore):
    def __init__(self, tables: CrashingTables) -> None:
        super().__init__(tables._table(CONNECTIONS))
        self._switch = tables.switch

    def release(self, lease: Versioned[Lease]) -> None:
        if self._switch.lease_released():
            LeaseStore.release(self, lease)


class CrashingTables(TableStorage):
    """The real table storage (same Azurite tables); its stores crash where ``switch`` is armed."""

    def __init__(self, settings: StorageSettings, switch: CrashSwitch) -> None:
        super().__init__(settings)
        self.switch = switch

    @cached_property
    def links(self) -> LinkStore:
        return _Links(self)

    @cached_property
    def outbox(self) -> OutboxStore:
        return _Outbox(self)

    @cached_property
    def sync_log(self) -> SyncLogStore:
        return _SyncLog(self)

    @cached_property
    def connections(self) -> ConnectionStore:
        return _Connections(self)

    @cached_property
    def leases(self) -> LeaseStore:
        return _Leases(self)


class ShiftableClock:
    """Wall time plus an offset that only the machine moves (to let a lease expire)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


class MachineContainer(Container):
    """``Container`` with crashing table storage and a 10 ms retry back-off (see the module docstring)."""

    def __init__(self, settings: Settings, clock: ShiftableClock, switch: CrashSwitch) -> None:
        super().__init__(settings, clock.now)
        self.switch = switch

    @cached_property
    def tables(self) -> TableStorage:
        return CrashingTables(self.settings.storage, self.switch)

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            base_delay=0.01, max_delay=0.05, retry_after_cap=self.settings.retry_after_cap_seconds
        )


# --- the world ----------------------------------------------------------------------------------------------

POLICIES: tuple[ConflictPolicy, ...] = (
    ConflictPolicy.CRM_WINS,
    ConflictPolicy.M365_WINS,
    ConflictPolicy.LATEST_WINS,
)
LEASE_SECONDS = 5
# Retry-After up to this is waited out in-process; a longer one fails the run (the queue retries later).
RETRY_AFTER_CAP = 0.5


@dataclass
class Person:
    """A CRM user with a Microsoft 365 account, connected through the real sign-in trip."""

    user_id: str
    upn: str
    oid: str


@dataclass
class MachineWorld:
    world: World
    public_base_url: str
    clock: ShiftableClock
    switch: CrashSwitch
    containers: dict[ConflictPolicy, MachineContainer]
    today: date  # day 0 of the items' slots
    browser: Browser
    _users: int = 0

    @property
    def graph(self) -> Any:
        return self.world.graph

    @property
    def crm(self) -> Any:
        return self.world.crm

    def storage(self) -> TableStorage:
        return self.containers[POLICIES[0]].ready_tables()

    def connect(self, policy: ConflictPolicy) -> Person:
        """A new CRM user and Entra ID account, connected by the real trip: the service's ``start``, the
        browser at Entra ID (PKCE, code), the service's callback (MSAL redeems the code, stores the encrypted
        token cache, creates the Graph subscription against the webhook stand-in)."""
        self._users += 1
        name = f"m{self._users}x{secrets.token_hex(3)}"
        account = self.world.identity.add_user(self.world.tenant_id, f"{name}@contoso.example")
        user_id = f"usr-{name}"
        self.world.crm.add_user(user_id, account.upn, name.title())
        service = self.containers[policy].connect_service
        started = service.start(user_id, {"returnUrl": RETURN_URL, "loginHint": account.upn})
        arrival = self.browser.visit_entra(started.as_json()["authorizeUrl"])
        outcome = service.finish(arrival.fields)
        assert outcome.redirect_url is not None, outcome
        assert "status=connected" in outcome.redirect_url, outcome.redirect_url
        return Person(user_id, account.upn, account.oid)

    # Outlook, as the person (the Graph emulator's user API), with the immutable ids the service uses.

    def outlook_create(self, person: Person, event: Json) -> Json:
        return self._outlook(person, "POST", "/events", event)

    def outlook_update(self, person: Person, event_id: str, changes: Json) -> Json:
        return self._outlook(person, "PATCH", f"/events/{event_id}", changes)

    def outlook_delete(self, person: Person, event_id: str) -> None:
        self._outlook(person, "DELETE", f"/events/{event_id}")

    def outlook_event(self, person: Person, event_id: str) -> Json:
        return self._outlook(person, "GET", f"/events/{event_id}")

    def outlook_events(self, person: Person) -> list[Json]:
        return list(self._outlook(person, "GET", "/events?$top=1000")["value"])

    def _outlook(self, person: Person, method: str, path: str, body: Json | None = None) -> Json:
        status, answer = self.world.graph.outlook(
            person.oid, method, path, body, headers={"Prefer": ", ".join(GRAPH_PREFER)}
        )
        assert status < 300, f"Outlook {method} {path}: {status} {answer}"
        return dict(answer or {})


@contextlib.contextmanager
def machine_world(connection_string: str) -> Iterator[MachineWorld]:
    """The emulators (``tests.e2e.kit.running_world``), a ``WebhookReceiver`` answering Graph's validation
    handshakes as the app's public endpoints would, and one container per conflict policy over one set of
    Azurite tables (a container per policy, not per-user overrides: the tenant setting is what varies)."""
    with WebhookReceiver() as hook, tempfile.TemporaryDirectory(prefix="sync-machine-") as work:
        public = hook.url("/api/graph/notifications").removesuffix("/api/graph/notifications")
        with running_world(Path(work) / "ca", [public], ()) as world:
            previous_bundle = os.environ.get("REQUESTS_CA_BUNDLE")
            # The service's own sessions read the CA bundle from the environment, as the deployed app's do.
            os.environ["REQUESTS_CA_BUNDLE"] = str(world.ca.cert_path)
            clock, switch = ShiftableClock(), CrashSwitch()
            prefix = "m" + secrets.token_hex(6)
            key = new_key("k1")
            containers = {
                policy: MachineContainer(
                    Settings.from_env(_settings(world, public, prefix, key, connection_string, policy)),
                    clock,
                    switch,
                )
                for policy in POLICIES
            }
            browser = Browser(world.ca, world.secrets_seen)
            try:
                yield MachineWorld(
                    world=world,
                    public_base_url=public,
                    clock=clock,
                    switch=switch,
                    containers=containers,
                    today=datetime.now(UTC).date(),
                    browser=browser,
                )
            finally:
                browser.close()
                for container in containers.values():
                    container.close()
                if previous_bundle is None:
                    os.environ.pop("REQUESTS_CA_BUNDLE", None)
                else:
                    os.environ["REQUESTS_CA_BUNDLE"] = previous_bundle


def _settings(
    world: World,
    public: str,
    prefix: str,
    key: EncryptionKey,
    connection_string: str,
    policy: ConflictPolicy,
) -> dict[str, str]:
    settings = world.host_settings(
        public,
        prefix,
        key,
        CONFLICT_POLICY=policy.value,
        # Attendees the CRM adds are invited in Outlook, so both sides' attendee lists must converge.
        INVITE_CRM_CONTACTS="true",
        # The mass-deletion guard would stop runs the machine's deletions trigger; it has its own tests.
        MASS_DELETE_MIN_ITEMS="1000000",
        LEASE_SECONDS=str(LEASE_SECONDS),
        RETRY_AFTER_CAP_SECONDS=str(RETRY_AFTER_CAP),
    )
    settings["AzureWebJobsStorage"] = connection_string
    return settings


# --- calendar items as the machine models them --------------------------------------------------------------

# IANA zone → the Windows name Outlook uses for it.
ZONES: Mapping[str, str] = {
    "America/New_York": "Eastern Standard Time",
    "Europe/Berlin": "W. Europe Standard Time",
    "UTC": "UTC",
}
ATTENDEE_NAMES: Mapping[str, str] = {
    "ann@fabrikam.example": "Ann Fabrikam",
    "li@tailspin.example": "Li Tailspin",
    "ola@tailspin.example": "Ola Tailspin",
    "raj@fabrikam.example": "Raj Fabrikam",
}
SCALAR_FIELDS: tuple[Field, ...] = (
    Field.SUBJECT,
    Field.DESCRIPTION,
    Field.START_END,
    Field.LOCATION,
    Field.PRIVACY,
)
MODEL_FIELDS: tuple[Field, ...] = (*SCALAR_FIELDS, Field.ATTENDEES)


@dataclass(frozen=True)
class Slot:
    """When an item is: ``day`` days after the machine's day 0; timed (``hour``, ``length`` minutes, ``zone``)
    or all day (``hour`` None, ``length`` days)."""

    day: int
    hour: int | None
    length: int
    zone: str

    def when(self, today: date) -> Timed | AllDay:
        first = today + timedelta(days=self.day)
        if self.hour is None:
            return AllDay(first, first + timedelta(days=self.length), self.zone)
        start = datetime.combine(first, time(self.hour), tzinfo=ZoneInfo(self.zone))
        return Timed(start, start + timedelta(minutes=self.length), self.zone)

    def crm_json(self, today: date) -> Json:
        when = self.when(today)
        if isinstance(when, AllDay):
            return {
                "start": when.start.isoformat(),
                "end": when.end.isoformat(),
                "timeZone": None,
                "isAllDay": True,
            }
        return {
            "start": when.start.isoformat(),
            "end": when.end.isoformat(),
            "timeZone": self.zone,
            "isAllDay": False,
        }

    def graph_json(self, today: date) -> Json:
        when = self.when(today)
        zone = ZONES[self.zone]
        if isinstance(when, AllDay):
            return {
                "start": {"dateTime": f"{when.start.isoformat()}T00:00:00", "timeZone": zone},
                "end": {"dateTime": f"{when.end.isoformat()}T00:00:00", "timeZone": zone},
                "isAllDay": True,
            }
        return {
            "start": {"dateTime": when.start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": zone},
            "end": {"dateTime": when.end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": zone},
            "isAllDay": False,
        }


@dataclass(frozen=True)
class Values:
    """What one side holds of one item, in the fields the machine edits (already in normalized form)."""

    subject: str
    description: str | None
    location: str | None
    slot: Slot
    private: bool
    attendees: tuple[tuple[str, str], ...] = field(default=())  # (email, type), sorted by email

    def activity(self, today: date) -> Activity:
        return Activity(
            subject=self.subject,
            when=self.slot.when(today),
            description=self.description,
            location=self.location,
            is_private=self.private,
            attendees=tuple(
                Attendee(email, ATTENDEE_NAMES[email], AttendeeKind.EXTERNAL, AttendeeType(kind))
                for email, kind in self.attendees
            ),
        )

    def canonical(self, today: date) -> dict[Field, JsonValue]:
        return canonical_fields(self.activity(today))

    def crm_create(self, owner: str, today: date) -> Json:
        return {
            "ownerCrmUserId": owner,
            "type": "personal_appointment",
            "subject": self.subject,
            "description": self.description,
            **self.slot.crm_json(today),
            "location": self.location,
            "isPrivate": self.private,
            "attendees": [_crm_attendee(email, kind) for email, kind in self.attendees],
        }

    def graph_create(self, today: date, sensitivity: str) -> Json:
        return {
            "subject": self.subject,
            "body": {"contentType": "text", "content": self.description or ""},
            **self.slot.graph_json(today),
            "location": {"displayName": self.location or ""},
            "sensitivity": sensitivity,
            "attendees": [_graph_attendee(email, kind) for email, kind in self.attendees],
        }


def canonical_fields(activity: Activity) -> dict[Field, JsonValue]:
    """Each modelled field as ``sync_core.domain.hashing`` normalizes it (attendees: email and type)."""
    return {field_: canonical_value(field_, activity) for field_ in MODEL_FIELDS}


def crm_changes(field_: Field, values: Values, today: date, current: Json) -> Json:
    """The CRM edit (``edit_as_user`` changes) that gives ``field_`` its value in ``values``."""
    if field_ is Field.SUBJECT:
        return {"subject": values.subject}
    if field_ is Field.DESCRIPTION:
        return {"description": values.description}
    if field_ is Field.LOCATION:
        return {"location": values.location}
    if field_ is Field.PRIVACY:
        return {"isPrivate": values.private}
    if field_ is Field.START_END:
        return values.slot.crm_json(today)
    kept = {str(a["email"]).lower(): a for a in current.get("attendees") or []}
    return {
        "attendees": [
            {**kept[email], "type": kind} if email in kept else _crm_attendee(email, kind)
            for email, kind in values.attendees
        ]
    }


def graph_changes(field_: Field, values: Values, today: date, current: Json, sensitivity: str) -> Json:
    """The Outlook edit (``user_update_event`` changes) that gives ``field_`` its value in ``values``."""
    if field_ is Field.SUBJECT:
        return {"subject": values.subject}
    if field_ is Field.DESCRIPTION:
        return {"body": {"contentType": "text", "content": values.description or ""}}
    if field_ is Field.LOCATION:
        return {"location": {"displayName": values.location or ""}}
    if field_ is Field.PRIVACY:
        return {"sensitivity": sensitivity}
    if field_ is Field.START_END:
        return values.slot.graph_json(today)
    kept = {str(a["emailAddress"]["address"]).lower(): a for a in current.get("attendees") or []}
    return {
        "attendees": [
            {**kept[email], "type": kind} if email in kept else _graph_attendee(email, kind)
            for email, kind in values.attendees
        ]
    }


def _crm_attendee(email: str, kind: str) -> Json:
    return {
        "email": email,
        "name": ATTENDEE_NAMES[email],
        "kind": "external",
        "type": kind,
        "response": "none",
        "crmId": None,
    }


def _graph_attendee(email: str, kind: str) -> Json:
    return {"emailAddress": {"address": email, "name": ATTENDEE_NAMES[email]}, "type": kind}


def crm_side(activity_json: Json) -> dict[Field, JsonValue]:
    return canonical_fields(crm_record_from_json(activity_json).activity)


def graph_side(event_json: Json) -> dict[Field, JsonValue]:
    return canonical_fields(activity_from_graph(event_json))


# --- runs as the queue makes them ---------------------------------------------------------------------------

# A run that fails is retried this many times at most (faults are finite; a hard crash costs one attempt).
MAX_ATTEMPTS = 12
# Failures a run may meet: the queue retries these.
RETRIED = (ThrottledError, TransientRemoteError, InjectedCrashError)


def run_until_done(
    world: MachineWorld,
    container: MachineContainer,
    user_id: str,
    *,
    after_attempt: Callable[[], None],
    say: Callable[[str], None],
) -> RunReport:
    """Run ``user_id``'s sync until one run succeeds, as the queue retries a failing message, calling
    ``after_attempt`` after each attempt (the CRM pushing the changes the service made to it) and ``say`` with
    what happened. A hard crash leaves the lease held: the next message is dropped (the run reports
    ``ran=False``) until the lease expires, so the clock is moved past it."""
    failures: list[str] = []
    for _attempt in range(MAX_ATTEMPTS):
        try:
            report = container.reconciler.run(user_id)
        except RETRIED as error:
            failures.append(f"{type(error).__name__}: {error}")
            say(f"run of {user_id} failed: {failures[-1]}")
            after_attempt()
            continue
        after_attempt()
        say(f"run of {user_id}: {report}")
        if report.ran:
            return report
        fired = world.switch.fired
        assert fired is not None, "a run found the lease held though no worker died"
        assert fired.hard, "a run found the lease held though its worker released it"
        world.clock.offset += timedelta(seconds=LEASE_SECONDS + 1)
    raise AssertionError(f"no run of {user_id} succeeded in {MAX_ATTEMPTS} attempts: {failures}")
