"""One user's sync run (design §3 "Reconcile", §5): gather → decide (``planning.plan_sync``) → apply → save.

A run, under the user's lease (one run per user at a time, across every instance):

1. clear the user's dirty flag (a notification or CRM push arriving from now on sets it again);
2. read the CRM outbox (the pushed changes not yet synced);
3. read ``calendarView/delta`` from the saved deltaLink (or a full round over the sync window), one page at a
   time: each page is planned and applied before the next is fetched, so memory stays flat on a mailbox of
   any size. Outbox changes of items a page holds are planned with that page (a field edited on both sides is
   then merged, not overwritten); the rest are planned after the last page;
4. apply the actions: writes to Outlook and to the CRM, then the links with their new base, in one
   transaction per 100 rows; conflicts and skipped items go to the user's sync log (and conflicts, as events,
   to the CRM);
5. save the new deltaLink and remove the handled outbox rows; record the run on the connection.

The run repeats while the dirty flag was set again meanwhile; after releasing the lease it looks once more
and queues a run if a change slipped in between (a message that found the lease held was dropped).

What makes it safe to retry at any point (a crash, a lost message, a platform retry): Graph creates carry a
``transactionId`` (Graph answers a repeated one with the first event), CRM writes carry idempotency keys
derived from the request, links are saved per page, and the deltaLink and outbox rows go only once every
item of the round was handled. A rerun of a half-applied round sees its own writes as echoes.

Failures: a throttled or failing remote (after the clients' own retries, ``Retry-After`` honoured and capped)
fails the run, and the queue retries it later; a revoked grant makes the user ``reconnect_required`` (the CRM
is told once); an expired delta token (410 / ``syncStateNotFound``) starts a full round that re-matches
existing links and never duplicates (and reads by id the linked events it did not list: the deleted ones are
deleted on the other side); an item the other side refuses (a 400) is recorded against that item in
the user's status and the run goes on; a mass deletion stops the run and flags the user.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from sync_core.adapters.tables import LinkStore, LinkWrite, MeetingClaim, TableStorage
from sync_core.config import SyncPolicy
from sync_core.domain.actions import (
    Action,
    CreateInCrm,
    CreateInGraph,
    CrmWriteResult,
    DeleteInCrm,
    DeleteInGraph,
    DropLink,
    GraphWriteOptions,
    GraphWriteResult,
    RecordConflict,
    SaveLink,
    Skip,
    UpdateCrm,
    UpdateGraph,
)
from sync_core.domain.changes import (
    CrmChange,
    CrmDeletion,
    CrmUpsert,
    GraphChange,
    GraphDeletion,
    GraphUpsert,
    SharedMeeting,
    SyncRequest,
    SyncRules,
    crm_change_from_outbox,
    emails_to_look_up,
    is_stale_push,
)
from sync_core.domain.connection_view import ConnectionEvent, conflict_event, sync_error_event
from sync_core.domain.crm_mapping import CrmRecord
from sync_core.domain.graph_payloads import Changed, DeltaPage, GraphEvent, Removed, parse_event
from sync_core.domain.model import Activity, AttendeeKind, PeopleDirectory
from sync_core.domain.planning import plan_sync
from sync_core.domain.state import (
    Connection,
    ConnectionState,
    Cursor,
    ErrorRecord,
    Lease,
    Link,
    OutboxEntry,
    OutboxOperation,
    SyncLogEntry,
    SyncLogKind,
    Versioned,
)
from sync_core.domain.sync_message import SyncMessage, SyncReason
from sync_core.errors import (
    ConflictError,
    DeltaExpiredError,
    InvalidRequestError,
    ItemGoneError,
    LeaseHeldError,
    MassDeletionError,
    RemoteRejectedError,
    SyncError,
    TokenCacheUnreadableError,
    TokenRevokedError,
    TransientRemoteError,
)
from sync_core.services.series_sync import SeriesSync, outlook_changed_series

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

EVENTS = "events"  # the cursor's resource kind
_SYNCING = frozenset({ConnectionState.CONNECTED, ConnectionState.ERROR})
# A run repeats while changes keep arriving, but hands over to a new message after this many rounds, so one
# busy user never holds a worker for long.
MAX_ROUNDS_PER_RUN = 5
# Items of a page written at once (Outlook allows 4 concurrent requests per app and mailbox).
ITEM_WRITERS = 4
# A CRM write refused with 412 (the activity changed meanwhile) is re-read and re-planned this many times.
MAX_REPLANS = 3
# A message that found the lease held by a run that is just ending comes back this much later.
_HANDOVER_DELAY_SECONDS = 2
# While a burst goes on (a round ended with the user marked again), a round lasts at least this long before
# it looks at the flag: the changes still arriving then go in the next round together, instead of one round
# each. A round is ~50-100 ms and people's bursts last about a second, so without it a burst of 20 changes
# took up to 5 rounds, each a delta read and ~5 Table transactions (bench.sync_costs). The first round of a
# run never waits, so a lone change syncs as soon as before.
_BURST_ROUND_SECONDS = 0.3
# Linked events a full round did not list, read per plan (in ``$batch`` requests of 20) to confirm them gone.
_UNLISTED_PER_PLAN = 100
# How long a run waits for another user's run to finish creating a meeting's activity.
_CLAIM_WAIT_SECONDS = 5.0


# --- ports ------------------------------------------------------------------------------------------------


class GraphCalendar(Protocol):
    def calendar_delta_url(self, start: datetime, end: datetime) -> str: ...

    def delta_pages(self, token: Callable[[], str], url: str) -> Iterable[DeltaPage]: ...

    def get_event(self, token: Callable[[], str], event_id: str) -> GraphEvent: ...

    def get_events(
        self, token: Callable[[], str], event_ids: Sequence[str]
    ) -> Mapping[str, GraphEvent | None]: ...

    def create_event(self, token: Callable[[], str], body: Mapping[str, object]) -> GraphEvent: ...

    def update_event(
        self, token: Callable[[], str], event_id: str, body: Mapping[str, object]
    ) -> GraphEvent: ...

    def delete_event(self, token: Callable[[], str], event_id: str) -> bool: ...

    def list_instances(
        self,
        token: Callable[[], str],
        master_id: str,
        start: datetime,
        end: datetime,
        *,
        top: int,
        limit: int,
    ) -> tuple[list[GraphEvent], bool, bool]: ...


class CrmActivities(Protocol):
    def create_activity(self, body: Mapping[str, object], idempotency_key: str) -> CrmRecord: ...

    def get_activity(self, crm_id: str) -> CrmRecord: ...

    def update_activity(
        self, crm_id: str, body: Mapping[str, object], if_match: str, idempotency_key: str
    ) -> CrmRecord: ...

    def delete_activity(self, crm_id: str, if_match: str | None, idempotency_key: str) -> bool: ...

    def people(self, emails: Sequence[str]) -> PeopleDirectory: ...

    def notify(self, event: ConnectionEvent) -> None: ...


class UserTokenSource(Protocol):
    def access_token(
        self, user_id: str, home_account_id: str | None, *, force_refresh: bool = False
    ) -> str: ...


class AccessCheck(Protocol):
    """``ConnectService.check_access``: a revoked grant becomes ``reconnect_required`` and the CRM is told."""

    def check_access(self, user_id: str) -> bool: ...


class WorkQueue(Protocol):
    def send(
        self, name: str, payload: Mapping[str, object], visibility_timeout: int | None = None
    ) -> str: ...


# --- what a run reports -----------------------------------------------------------------------------------


@dataclass
class RunReport:
    """What one run did (for logs, tests and benchmarks)."""

    user_id: str
    ran: bool = False  # False: the lease was held, or the user is not connected
    rounds: int = 0
    pages: int = 0
    graph_changes: int = 0
    crm_changes: int = 0
    writes_to_graph: int = 0
    writes_to_crm: int = 0
    conflicts: int = 0
    skipped: int = 0
    item_errors: int = 0
    full_resyncs: int = 0
    requeued: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, name: str) -> None:
        """One more of ``name`` (items of a page are written concurrently)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)


class _Outcome(enum.Enum):
    """Why an item's writes stopped early."""

    SKIPPED = "skipped"  # recorded against the item, or left for the next round
    REPLAN = "replan"  # the CRM changed the activity meanwhile (412)


class _RunToken:
    """The user's access token for one run: fetched once, refreshed when Graph refuses it (401)."""

    def __init__(self, tokens: UserTokenSource, user_id: str, home_account_id: str | None) -> None:
        self._tokens = tokens
        self._user_id = user_id
        self._home_account_id = home_account_id
        self._token: str | None = None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._token is None:
                self._token = self._tokens.access_token(self._user_id, self._home_account_id)
            return self._token

    def refresh(self) -> None:
        with self._lock:
            self._token = self._tokens.access_token(self._user_id, self._home_account_id, force_refresh=True)


@dataclass(frozen=True)
class _Known:
    """The stored links a plan was made from: this user's by CRM id, other users' by (user, CRM id)."""

    links: Mapping[str, Versioned[Link]]
    other_links: Mapping[tuple[str, str], Versioned[Link]] = field(default_factory=dict)


class _LinkCache:
    """The user's links for one round, by Graph id and by CRM id: each read once, kept up to date with what
    the round writes. A full round (no deltaLink: the first sync, or after the token expired) reads them all
    with one query instead of one point read per event."""

    def __init__(self, store: LinkStore, user_id: str) -> None:
        self._store = store
        self._user_id = user_id
        self._by_graph: dict[str, Versioned[Link] | None] = {}
        self._by_crm: dict[str, Versioned[Link] | None] = {}
        self._complete = False
        self._written: set[str] = set()  # Graph ids of the links this round saved or dropped
        self._lock = threading.Lock()

    def load_all(self) -> None:
        with self._lock:
            for link in self._store.list_for_user(self._user_id):
                self._by_graph[link.value.graph_id] = link
                self._by_crm[link.value.crm_id] = link
            self._complete = True

    def prefetch_graph_ids(self, graph_ids: Iterable[str]) -> None:
        """Read the links of every id not known yet, in few queries (``LinkStore.find_by_graph_ids``)."""
        with self._lock:
            if self._complete:
                return
            missing = {graph_id for graph_id in graph_ids if graph_id not in self._by_graph}
        if not missing:
            return
        found = self._store.find_by_graph_ids(self._user_id, missing)
        with self._lock:
            for graph_id in missing:
                link = found.get(graph_id)
                self._by_graph[graph_id] = link
                if link is not None:
                    self._by_crm[link.value.crm_id] = link

    def prefetch_crm_ids(self, crm_ids: Iterable[str]) -> None:
        """Read the links of every CRM id not known yet, in few queries."""
        with self._lock:
            if self._complete:
                return
            missing = {crm_id for crm_id in crm_ids if crm_id not in self._by_crm}
        if not missing:
            return
        found = self._store.find_by_crm_ids(self._user_id, missing)
        with self._lock:
            for crm_id in missing:
                link = found.get(crm_id)
                self._by_crm[crm_id] = link
                if link is not None:
                    self._by_graph[link.value.graph_id] = link

    def by_graph_id(self, graph_id: str) -> Versioned[Link] | None:
        with self._lock:
            if graph_id in self._by_graph or self._complete:
                return self._by_graph.get(graph_id)
        found = self._store.get_by_graph_id(self._user_id, graph_id)
        with self._lock:
            self._by_graph[graph_id] = found
            if found is not None:
                self._by_crm[found.value.crm_id] = found
        return found

    def by_crm_id(self, crm_id: str) -> Versioned[Link] | None:
        with self._lock:
            if crm_id in self._by_crm or self._complete:
                return self._by_crm.get(crm_id)
        found = self._store.get_by_crm_id(self._user_id, crm_id)
        with self._lock:
            self._by_crm[crm_id] = found
            if found is not None:
                self._by_graph[found.value.graph_id] = found
        return found

    def unlisted(self, listed: set[str]) -> list[Versioned[Link]]:
        """After ``load_all``: the links read then whose event is not in ``listed`` and that this round
        left alone."""
        with self._lock:
            assert self._complete
            return [
                link
                for graph_id, link in self._by_graph.items()
                if link is not None
                and graph_id not in listed
                and graph_id not in self._written
                and self._by_crm.get(link.value.crm_id) is link
            ]

    def written(self, saved: Sequence[Versioned[Link]], dropped: Sequence[Versioned[Link]]) -> None:
        with self._lock:
            self._written.update(link.value.graph_id for link in (*saved, *dropped))
            for link in dropped:
                self._by_graph[link.value.graph_id] = None
                self._by_crm[link.value.crm_id] = None
            for link in saved:
                replaced = self._by_crm.get(link.value.crm_id)
                if replaced is not None and replaced.value.graph_id != link.value.graph_id:
                    # case: the activity's link moved to another event (re-created in Outlook): the old
                    # event no longer names it, so a later deletion of that event deletes nothing.
                    self._by_graph[replaced.value.graph_id] = None
                    self._written.add(replaced.value.graph_id)
                self._by_graph[link.value.graph_id] = link
                self._by_crm[link.value.crm_id] = link


@dataclass
class _RunMemo:
    """What a run keeps from one round to the next: the cursor its last round saved."""

    cursor: Versioned[Cursor] | None = None
    cursor_known: bool = False  # False: not read yet (``cursor`` None then says nothing)


@dataclass
class _Round:
    """One delta round's bookkeeping."""

    connection: Connection
    rules: SyncRules
    token: _RunToken
    now: datetime
    outbox: dict[str, Versioned[OutboxEntry]]
    crm_changes: dict[str, CrmChange]
    log_entries: list[SyncLogEntry] = field(default_factory=list)
    events: list[ConnectionEvent] = field(default_factory=list)
    last_item_error: ErrorRecord | None = None
    linked_count: int | None = None
    links: _LinkCache | None = None
    lease: Versioned[Lease] | None = None
    claims: dict[str, Versioned[MeetingClaim]] = field(default_factory=dict)  # meetings this round claimed
    series_read: set[str] = field(default_factory=set)  # series masters this round read (once a round)
    memo: _RunMemo = field(default_factory=_RunMemo)
    new_cursor: Cursor | None = None  # the deltaLink to save with the round's end (None: unchanged)
    listed: set[str] | None = None  # a full round: the Graph ids its pages listed

    @property
    def cache(self) -> _LinkCache:
        assert self.links is not None
        return self.links


class Reconciler:
    def __init__(
        self,
        *,
        storage: TableStorage,
        graph: GraphCalendar,
        crm: CrmActivities,
        tokens: UserTokenSource,
        access: AccessCheck,
        queue: WorkQueue,
        queue_name: str,
        policy: SyncPolicy,
        lease_seconds: int,
        clock: Callable[[], datetime],
        holder: str | None = None,
    ) -> None:
        self._storage = storage
        self._graph = graph
        self._crm = crm
        self._tokens = tokens
        self._access = access
        self._queue = queue
        self._queue_name = queue_name
        self._policy = policy
        self._lease_duration = timedelta(seconds=lease_seconds)
        self._clock = clock
        self._holder = holder or f"run-{uuid.uuid4().hex[:12]}"
        # Items of one page are written concurrently, within Outlook's 4 concurrent requests per mailbox.
        self._pool = ThreadPoolExecutor(ITEM_WRITERS, thread_name_prefix="reconcile")
        self._series = SeriesSync(graph, policy)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # --- the run -------------------------------------------------------------------------------------------

    def run(self, user_id: str) -> RunReport:
        """Sync ``user_id`` once (and again while changes keep arriving). Errors other than a revoked grant
        propagate, so the queue retries the message."""
        report = RunReport(user_id)
        leases = self._storage.leases
        holder = f"{self._holder}/{uuid.uuid4().hex[:8]}"
        connections = self._storage.connections
        try:
            # The lease, the first round's start and the cursor: one query and one transaction.
            begun = connections.begin_run(user_id, holder, self._clock(), self._lease_duration, EVENTS)
        except LeaseHeldError:
            # The holder runs again while the user is dirty, so marking the user is all this message has
            # left to do, whatever queued it; unless the holder is just letting go (its run already ended):
            # then a run is queued for a moment later.
            if self._storage.connections.mark_dirty(user_id, self._clock()):
                self._queue.send(
                    self._queue_name,
                    SyncMessage.of(user_id, SyncReason.NOTIFICATION).body(),
                    visibility_timeout=_HANDOVER_DELAY_SECONDS,
                )
            log.info("reconcile: user %s is being synced by another run; marked for it", user_id)
            return report
        started = time.monotonic()
        lease = begun.lease
        connection = begun.connection
        ended = False
        dirty = False
        memo = _RunMemo(cursor=begun.cursor, cursor_known=True)
        try:
            while report.rounds < MAX_ROUNDS_PER_RUN:
                if connection is None or connection.value.state not in _SYNCING:
                    log.info("reconcile: user %s is not connected; nothing to do", user_id)
                    break
                report.ran = True
                report.rounds += 1
                last = report.rounds >= MAX_ROUNDS_PER_RUN
                lease, again, connection = self._round(
                    connection.value, report, lease, memo, last=last, burst=report.rounds > 1
                )
                if not again:
                    ended = True  # the round's last write also ended the run
                    break
        finally:
            if not ended:
                dirty = connections.end_run(user_id)
                leases.release(lease)  # when the run ended in its last round's write, so did the lease
        # Changes that arrived after the last look only marked the user (a run was on): queue a run for them.
        # A change marked after ``end_run`` finds no run on and queues its own.
        if dirty:
            self._queue.send(self._queue_name, SyncMessage.of(user_id, SyncReason.NOTIFICATION).body())
            report.requeued = True
        log.info(
            "reconcile: user %s: %d round(s), %d page(s), %d Outlook and %d CRM change(s); "
            "wrote %d to Outlook and %d to the CRM; %d conflict(s), %d skipped, %d item error(s) in %.0f ms",
            user_id,
            report.rounds,
            report.pages,
            report.graph_changes,
            report.crm_changes,
            report.writes_to_graph,
            report.writes_to_crm,
            report.conflicts,
            report.skipped,
            report.item_errors,
            (time.monotonic() - started) * 1000,
        )
        return report

    def _round(
        self,
        connection: Connection,
        report: RunReport,
        lease: Versioned[Lease],
        memo: _RunMemo,
        *,
        last: bool,
        burst: bool,
    ) -> tuple[Versioned[Lease], bool, Versioned[Connection] | None]:
        """One round; the lease, whether the user is dirty again, and (dirty, and not the ``last`` round of
        the run) the connection as the next round starts. ``burst``: changes kept arriving during the run's
        previous round (see ``_BURST_ROUND_SECONDS``)."""
        user_id = connection.user_id
        round_started = time.monotonic()
        now = self._clock()
        outbox = {entry.value.crm_id: entry for entry in self._storage.outbox.list_for_user(user_id)}
        state = _Round(
            connection=connection,
            rules=SyncRules.for_user(self._policy, connection),
            # A token per round, though each fetch reads the user's token cache (a Table read): a grant
            # revoked during a run is then noticed by its next round (tests/e2e/test_connect.py).
            token=_RunToken(self._tokens, user_id, connection.home_account_id),
            now=now,
            outbox=outbox,
            crm_changes={},
            links=_LinkCache(self._storage.links, user_id),
            lease=lease,
            memo=memo,
        )
        # The outbox rows' links, in one query per 14 rather than a point read each (the stale-push check).
        state.cache.prefetch_crm_ids(outbox)
        for crm_id, entry in outbox.items():
            try:
                state.crm_changes[crm_id] = crm_change_from_outbox(entry.value)
            except (InvalidRequestError, ValueError):
                # Validated when pushed; a row that no longer parses (a contract change) is reported.
                self._item_error(
                    state, "crm_payload_invalid", "the pushed activity could not be read", crm_id
                )
        for crm_id, change in list(state.crm_changes.items()):
            link = state.cache.by_crm_id(crm_id)
            if is_stale_push(change, None if link is None else link.value):
                # Handled by being ignored: its row goes with the others when the round is done.
                log.info("reconcile: user %s: stale push of activity %s ignored", user_id, crm_id)
                del state.crm_changes[crm_id]
        report.crm_changes += len(state.crm_changes)
        record: Callable[[Connection], Connection | None] = _unchanged
        try:
            self._delta_round(state, report)
        except MassDeletionError as error:
            self._mass_deletion_stop(state, error)
        except (TokenRevokedError, TokenCacheUnreadableError):
            # The grant stopped working: the access check records reconnect_required and tells the CRM, once.
            self._access.check_access(user_id)
            self._flush_log(state)
        else:
            record = self._finish(state)
        assert state.lease is not None
        if burst:
            time.sleep(max(0.0, round_started + _BURST_ROUND_SECONDS - time.monotonic()))
        state.lease = self._kept(state.lease)
        # case: the user was marked dirty during the round: this write also starts the next one (the lease
        # then runs that long), unless this was the run's last round (the next message starts it). The new
        # cursor goes in the same transaction (the round is done), and so does the lease's release when the
        # run ends here.
        cursor = state.new_cursor
        end = self._storage.connections.end_round(
            user_id,
            record,
            next_round_until=None if last else state.lease.value.expires_at,
            cursor=cursor,
            lease=state.lease,
        )
        if end.cursor is not None:
            memo.cursor, memo.cursor_known = end.cursor, True
        return state.lease, end.dirty, end.next_round

    # --- gather and plan, page by page ---------------------------------------------------------------------

    def _delta_round(self, state: _Round, report: RunReport) -> None:
        user_id = state.connection.user_id
        memo = state.memo
        # The run's later rounds start from the cursor its previous round saved (only the lease holder writes
        # it): no read.
        cursor = memo.cursor if memo.cursor_known else self._storage.cursors.get(user_id, EVENTS)
        url = cursor.value.delta_link if cursor is not None else self._full_round_url(state.now)
        if cursor is None:
            state.cache.load_all()
            state.listed = set()
        try:
            delta_link = self._pages(state, report, url)
        except DeltaExpiredError:
            # The delta token expired: start over with a full round. Links are matched by Graph id (and our
            # transactionIds), so every event already synced is recognised, never created again.
            log.warning("reconcile: user %s: delta token expired; full resync", user_id)
            report.full_resyncs += 1
            if cursor is not None:
                self._storage.cursors.delete(user_id, EVENTS)
                cursor = None
                memo.cursor, memo.cursor_known = None, True
            state.cache.load_all()
            state.series_read.clear()
            state.listed = set()
            delta_link = self._pages(state, report, self._full_round_url(state.now))
        if state.listed is not None:
            self._unlisted_links(state, report)
        # The changes no page held an item of (the common case: creates and edits of unchanged events).
        if state.crm_changes:
            self._plan_and_apply(state, report, [], list(state.crm_changes.values()))
            state.crm_changes.clear()
        if cursor is not None and cursor.value.delta_link == delta_link:
            # case: Graph answered with the deltaLink the round started from (nothing changed): it is saved.
            return
        # Saved by the round's last write (``ConnectionStore.end_round``), once the round is done.
        state.new_cursor = Cursor(user_id, EVENTS, delta_link)

    def _kept(self, lease: Versioned[Lease]) -> Versioned[Lease]:
        """The lease, renewed once a quarter of its duration has passed (``LeaseHeldError`` if lost). Renewing
        at every round and page cost a Table write each; this still leaves a page, or a round, at least
        three quarters of a lease to finish in before anyone else may take the user over."""
        now = self._clock()
        if lease.value.expires_at - now > self._lease_duration * 3 / 4:
            return lease
        return self._storage.leases.renew(lease, now, self._lease_duration)

    def _unlisted_links(self, state: _Round, report: RunReport) -> None:
        """The end of a full round: the linked events it did not list. A full round lists only the events
        that exist in the window, so an event deleted in Outlook before it (while the delta token was lost)
        is seen nowhere else. Each is read (``$batch``, 20 to a request): 404 is a confirmed deletion, planned
        as any Outlook deletion (a CRM edit still beats it; the mass-deletion guard counts it, all of them
        in one plan); an event that is there lies outside the window (or was left out of it by Graph), and
        is planned as a changed event, as a delta removal it answers to would be."""
        assert state.listed is not None
        unlisted = [link.value.graph_id for link in state.cache.unlisted(state.listed)]
        if not unlisted:
            return
        deleted: list[GraphChange] = []
        for first in range(0, len(unlisted), _UNLISTED_PER_PLAN):
            found = self._graph.get_events(state.token, unlisted[first : first + _UNLISTED_PER_PLAN])
            present: list[GraphChange] = []
            for graph_id, event in found.items():
                if event is None:
                    deleted.append(GraphDeletion(graph_id))
                else:
                    present.append(GraphUpsert(event))
            if present:
                # case: a series master read back is planned whole, with its instances, as in a delta page.
                present = self._gathered(state, present, unlinked_removals=False)
                report.graph_changes += len(present)
                self._plan_and_apply(state, report, present, self._crm_changes_for(state, present))
        if deleted:
            # case: deleted in Outlook while the delta token was lost (410 / syncStateNotFound): the full
            # round never lists it, so it is confirmed by id and then deleted like any Outlook deletion.
            log.info(
                "reconcile: user %s: %d linked event(s) gone since the delta token was lost",
                state.connection.user_id,
                len(deleted),
            )
            report.graph_changes += len(deleted)
            self._plan_and_apply(state, report, deleted, self._crm_changes_for(state, deleted))

    def _full_round_url(self, now: datetime) -> str:
        return self._graph.calendar_delta_url(
            now - timedelta(days=self._policy.window_past_days),
            now + timedelta(days=self._policy.window_future_days),
        )

    def _pages(self, state: _Round, report: RunReport, url: str) -> str:
        """Plan and apply every page of the round from ``url``; the deltaLink to save."""
        for page in self._graph.delta_pages(state.token, url):
            report.pages += 1
            if state.listed is not None:
                state.listed.update(item.id for item in page.items)
                # case: a full round lists a series by its occurrences and exceptions: their master is
                # listed too (its link names the master), so it is not read back as if it were missing.
                state.listed.update(
                    str(item.raw["seriesMasterId"])
                    for item in page.items
                    if isinstance(item, Changed) and isinstance(item.raw.get("seriesMasterId"), str)
                )
            if report.pages > 1:
                # A long round keeps its lease (and its exclusivity) page by page.
                assert state.lease is not None
                state.lease = self._kept(state.lease)
            # The page's links, in one query per 14 items rather than two point reads per item.
            state.cache.prefetch_graph_ids(item.id for item in page.items)
            changes = self._graph_changes(state, page)
            report.graph_changes += len(changes)
            if changes:
                self._plan_and_apply(state, report, changes, self._crm_changes_for(state, changes))
            if page.delta_link is not None:
                return page.delta_link
        raise RemoteRejectedError("Graph ended a delta round without a deltaLink", code="malformed")

    def _graph_changes(self, state: _Round, page: DeltaPage) -> list[GraphChange]:
        """The page's items as planner input. A removal only counts as a deletion once confirmed: Graph also
        reports events that merely left the window, and one outside the window is never deleted."""
        changes: dict[str, GraphChange] = {}
        unlinked_removals = False
        for item in page.items:
            if isinstance(item, Changed):
                try:
                    changes[item.id] = GraphUpsert(parse_event(item.raw))
                except InvalidRequestError:
                    log.warning(
                        "reconcile: user %s: unreadable event %s skipped", state.connection.user_id, item.id
                    )
                continue
            assert isinstance(item, Removed)
            if state.cache.by_graph_id(item.id) is None:
                unlinked_removals = True  # never synced, or an occurrence of a series (gathered below)
                continue  # never synced: nothing to delete
            try:
                changes[item.id] = GraphUpsert(self._graph.get_event(state.token, item.id))
            except ItemGoneError:
                changes[item.id] = GraphDeletion(item.id)
        return self._gathered(state, list(changes.values()), unlinked_removals=unlinked_removals)

    def _gathered(
        self, state: _Round, changes: list[GraphChange], *, unlinked_removals: bool
    ) -> list[GraphChange]:
        """``changes`` with each series whole: its occurrences' changes become one change of its master."""
        return self._series.gather(
            state.token,
            changes,
            now=state.now,
            unlinked_removals=unlinked_removals,
            already_read=state.series_read,
            series_links=lambda: (
                link.value for link in self._storage.links.list_for_user(state.connection.user_id)
            ),
        )

    def _crm_changes_for(self, state: _Round, graph_changes: Sequence[GraphChange]) -> list[CrmChange]:
        """Outbox changes of the items this page holds (taken out of the round's remaining changes)."""
        if not state.crm_changes:
            return []
        taken: list[CrmChange] = []
        for change in graph_changes:
            graph_id = change.event.id if isinstance(change, GraphUpsert) else change.graph_id
            link = state.cache.by_graph_id(graph_id)
            if link is not None and link.value.crm_id in state.crm_changes:
                taken.append(state.crm_changes.pop(link.value.crm_id))
        return taken

    def _plan_and_apply(
        self,
        state: _Round,
        report: RunReport,
        graph_changes: Sequence[GraphChange],
        crm_changes: Sequence[CrmChange],
    ) -> None:
        user_id = state.connection.user_id
        links = self._links_for(state, graph_changes, crm_changes)
        emails = emails_to_look_up(graph_changes)
        people = self._crm.people(emails) if emails else PeopleDirectory()
        other_links = self._other_users_links(user_id, crm_changes, links)
        if other_links:
            crm_changes = self._current_moves(state, crm_changes, other_links)
        request = SyncRequest(
            user_id=user_id,
            now=state.now,
            rules=state.rules,
            connected_at=state.connection.connected_since,
            graph_changes=graph_changes,
            crm_changes=crm_changes,
            links=[link.value for link in links.values()],
            linked_count=state.linked_count or 0,
            people=people,
            shared_meetings=self._shared_meetings(user_id, graph_changes, links),
            other_users_links=[link.value for link in other_links.values()],
            crm_series=self._crm_series(graph_changes, links),
        )
        actions = self._plan(state, request)
        self._apply(state, report, actions, _Known(links, other_links), request)

    def _crm_series(
        self, graph_changes: Sequence[GraphChange], links: Mapping[str, Versioned[Link]]
    ) -> dict[str, Activity]:
        """The CRM's series, for linked series whose pattern, times or occurrences Outlook changed (a retime
        drops Outlook's exceptions, the CRM still holds them; exceptions outside the window Outlook was read
        in are the CRM's alone): one CRM read per such series change."""
        by_graph = {link.value.graph_id: link.value for link in links.values()}
        found: dict[str, Activity] = {}
        for change in graph_changes:
            if not isinstance(change, GraphUpsert) or change.series is None:
                continue
            link = by_graph.get(change.event.id)
            if link is None or not outlook_changed_series(link, change.series.activity):
                continue
            try:
                found[link.crm_id] = self._crm.get_activity(link.crm_id).activity
            except ItemGoneError:
                continue  # deleted in the CRM meanwhile: its push decides
        return found

    def _shared_meetings(
        self, user_id: str, graph_changes: Sequence[GraphChange], links: Mapping[str, Versioned[Link]]
    ) -> dict[str, SharedMeeting]:
        """For new Outlook events, the meetings whose activity another connected user's link already owns
        (the same iCalUId in two calendars is one meeting: one CRM activity)."""
        linked = {link.value.graph_id for link in links.values()}
        ical_uids = sorted(
            {
                change.event.ical_uid
                for change in graph_changes
                if isinstance(change, GraphUpsert) and change.event.id not in linked and change.event.ical_uid
            }
        )
        # One point read per new event (claims live in partitions of their own: no query can gather them),
        # made concurrently: on a full round every event is new, and one by one these reads were a fifth of
        # the initial sync's time (bench.initial_sync --profile).
        claims = self._each(ical_uids, self._storage.item_index.meeting)
        shared: dict[str, SharedMeeting] = {}
        for ical_uid, claim in zip(ical_uids, claims, strict=True):
            if claim is not None and claim.value.owner != user_id and claim.value.crm_id is not None:
                shared[ical_uid] = SharedMeeting(claim.value.crm_id, claim.value.owner)
        return shared

    def _each(self, items: Sequence[T], call: Callable[[T], R]) -> list[R]:
        """``call`` on every item, on the run's writers when there are several (never from one of them)."""
        if len(items) <= 1:
            return [call(item) for item in items]
        return list(self._pool.map(call, items))

    def _other_users_links(
        self, user_id: str, crm_changes: Sequence[CrmChange], links: Mapping[str, Versioned[Link]]
    ) -> dict[tuple[str, str], Versioned[Link]]:
        """For CRM pushes of activities this user has no link to, the links other users hold (the activity
        may have been reassigned to this user: it then leaves the previous owner's calendar; or reassigned
        and deleted before this user's run: the deletion goes to the calendar that holds the event)."""
        found: dict[tuple[str, str], Versioned[Link]] = {}
        for change in crm_changes:
            if change.crm_id in links:
                continue
            for holder in self._storage.item_index.holders(change.crm_id):
                if holder == user_id:
                    continue
                link = self._storage.links.get_by_crm_id(holder, change.crm_id)
                if link is not None:
                    found[(holder, change.crm_id)] = link
        return found

    def _current_moves(
        self,
        state: _Round,
        crm_changes: Sequence[CrmChange],
        other_links: Mapping[tuple[str, str], Versioned[Link]],
    ) -> list[CrmChange]:
        """The pushes that would move an activity out of another user's calendar, checked against what the
        CRM holds now (one read per move: reassignments are rare)."""
        moving = {crm_id for _holder, crm_id in other_links}
        checked: list[CrmChange] = []
        for change in crm_changes:
            if not isinstance(change, CrmUpsert) or change.crm_id not in moving:
                checked.append(change)
                continue
            try:
                current = self._crm.get_activity(change.crm_id)
            except ItemGoneError:
                # case: reassigned to this user and deleted since: the push is stale and moves nothing. The
                # deletion was pushed to the owner the activity had then (this user's outbox would hold it
                # instead of this push), whose run deletes the event where it is.
                log.info(
                    "reconcile: user %s: activity %s was deleted since; push ignored",
                    state.connection.user_id,
                    change.crm_id,
                )
                continue
            if current.activity.owner_crm_user_id not in (None, state.connection.user_id):
                # case: reassigned to this user and back (A → B → A) before this run: the push is stale and
                # moves nothing; the current owner's own push keeps the event where it is. Handled by being
                # ignored: its outbox row goes with the others when the round is done.
                log.info(
                    "reconcile: user %s: activity %s belongs to another user again; push ignored",
                    state.connection.user_id,
                    change.crm_id,
                )
                continue
            checked.append(change)
        return checked

    def _plan(self, state: _Round, request: SyncRequest) -> tuple[Action, ...]:
        """``plan_sync``, with the mass-deletion guard measured against every link the user has: counted
        (a key-only query) only when the plan deletes something."""
        if state.linked_count is not None:
            return plan_sync(request)
        try:
            actions = plan_sync(request)
        except MassDeletionError:
            actions = ()
            deletes = True
        else:
            deletes = any(
                isinstance(a, DeleteInCrm) or (isinstance(a, DeleteInGraph) and not a.reassigned)
                for a in actions
            )
        if not deletes:
            return actions
        state.linked_count = self._storage.links.count_for_user(state.connection.user_id)
        return plan_sync(replace(request, linked_count=state.linked_count))

    def _links_for(
        self, state: _Round, graph_changes: Sequence[GraphChange], crm_changes: Sequence[CrmChange]
    ) -> dict[str, Versioned[Link]]:
        """The stored links of every item named, by CRM id."""
        found: dict[str, Versioned[Link]] = {}
        for change in graph_changes:
            graph_id = change.event.id if isinstance(change, GraphUpsert) else change.graph_id
            link = state.cache.by_graph_id(graph_id)
            if link is not None:
                found[link.value.crm_id] = link
        for crm_change in crm_changes:
            if crm_change.crm_id not in found:
                link = state.cache.by_crm_id(crm_change.crm_id)
                if link is not None:
                    found[link.value.crm_id] = link
        return found

    # --- apply ---------------------------------------------------------------------------------------------

    def _apply(
        self,
        state: _Round,
        report: RunReport,
        actions: Sequence[Action],
        known: _Known,
        request: SyncRequest,
        replans: int = 0,
    ) -> None:
        user_id = state.connection.user_id
        links = known.links
        by_item: dict[str, list[Action]] = {}
        for action in actions:
            by_item.setdefault(action.item, []).append(action)
        events = {
            change.event.id: change.event
            for change in request.graph_changes
            if isinstance(change, GraphUpsert)
        }
        saves: list[LinkWrite] = []
        drops: list[Versioned[Link]] = []
        others_dropped: list[Versioned[Link]] = []
        # case: a conflict is recorded before its resolution is written. Recorded after the writes, it was
        # lost when the worker died before the end of the run: the retry finds both sides equal and sees no
        # conflict (tests/integration/test_sync_machine.py: edit_both_sides, then run_with_crash).
        conflicts = [action for action in actions if isinstance(action, RecordConflict)]
        for conflict in conflicts:
            self._record_conflict(state, report, conflict)
        if conflicts:
            self._flush_log(state)
        items = list(by_item.values())
        if len(items) > 1:
            outcomes = list(self._pool.map(lambda item: self._apply_item(state, report, item, events), items))
        else:
            outcomes = [self._apply_item(state, report, item, events) for item in items]
        for item_actions, outcome in zip(items, outcomes, strict=True):
            if outcome is _Outcome.REPLAN:
                self._replan_item(state, report, item_actions, request, replans)
                continue
            if outcome is _Outcome.SKIPPED:
                continue
            graph_result, crm_result = outcome
            for action in item_actions:
                if isinstance(action, SaveLink):
                    new_link = self._with_crm_time(
                        action.to_link(graph=graph_result, crm=crm_result), crm_result, request, links
                    )
                    saves.append(LinkWrite(new_link, self._previous(links, new_link, drops)))
                elif isinstance(action, DropLink) and action.link.user_id != user_id:
                    # The previous owner's link of a reassigned activity.
                    other = known.other_links.get((action.link.user_id, action.link.crm_id))
                    if other is not None:
                        others_dropped.append(other)
                elif isinstance(action, DropLink) and action.link.crm_id in links:
                    previous = links[action.link.crm_id]
                    if previous not in drops and not any(s.previous is previous for s in saves):
                        drops.append(previous)
                elif isinstance(action, Skip) and action.reason.logged:
                    report.count("skipped")
                    state.log_entries.append(
                        SyncLogEntry(
                            user_id=state.connection.user_id,
                            at=state.now,
                            kind=SyncLogKind.SKIPPED,
                            reason=action.reason.value,
                            crm_id=action.crm_id,
                            graph_id=action.graph_id,
                            message=action.reason.message,
                        )
                    )
        if saves or drops:
            state.cache.written(self._storage.links.write(user_id, saves, drops), drops)
        deleted = {change.crm_id for change in request.crm_changes if isinstance(change, CrmDeletion)}
        for other in others_dropped:
            if other.value.crm_id in deleted:
                # Before the link goes: a run that dies in between finds the link again and comes back here.
                self._drop_stale_push(other.value.user_id, other.value.crm_id)
            with contextlib.suppress(ConflictError):  # changed by its own user's run meanwhile: theirs wins
                self._storage.links.write(other.value.user_id, deletes=[other])
        self._index(state, saves, drops, others_dropped)

    def _drop_stale_push(self, user_id: str, crm_id: str) -> None:
        """case: an activity reassigned away from ``user_id`` and deleted before the new owner's run: a push
        of it still waiting in ``user_id``'s outbox (a retried push, or the CRM's echo of our own write) is
        older than the deletion. Its link is gone now, so that run would create the activity again in the
        calendar it just left: the row goes (unless a newer one replaced it since)."""
        waiting = self._storage.outbox.get(user_id, crm_id)
        if waiting is not None and waiting.value.operation is OutboxOperation.UPSERT:
            self._storage.outbox.delete_handled(waiting)
            log.info("reconcile: user %s: push of deleted activity %s dropped", user_id, crm_id)

    def _index(
        self,
        state: _Round,
        saves: Sequence[LinkWrite],
        drops: Sequence[Versioned[Link]],
        others_dropped: Sequence[Versioned[Link]],
    ) -> None:
        """Keep the cross-user index beside the links: who holds each activity, and which link owns each
        meeting. Only new and dropped links change it."""
        index = self._storage.item_index

        def index_new(link: Link) -> None:
            index.add_holder(link.crm_id, link.user_id)
            if link.ical_uid and link.crm_owner_id is None:
                claimed = state.claims.get(link.ical_uid)
                index.settle_meeting(link.ical_uid, link.user_id, link.crm_id, state.now, claimed)

        def unindex(dropped: Versioned[Link]) -> None:
            index.remove_holder(dropped.value.crm_id, dropped.value.user_id)

        # Each row is its own partition (no transaction can hold two), so the writes go concurrently: one by
        # one they were half of an initial sync's time (bench.initial_sync --profile).
        self._each(
            [
                save.link
                for save in saves
                if save.previous is None or save.previous.value.crm_id != save.link.crm_id
            ],
            index_new,
        )
        kept = {save.link.crm_id for save in saves}
        self._each(
            [
                dropped
                for dropped in (*drops, *others_dropped)
                if dropped.value.crm_id not in kept or dropped.value.user_id != state.connection.user_id
            ],
            unindex,
        )

    @staticmethod
    def _with_crm_time(
        link: Link,
        written: CrmWriteResult | None,
        request: SyncRequest,
        links: Mapping[str, Versioned[Link]],
    ) -> Link:
        """The link with the CRM modification time of the version it now holds: ours if we wrote it, the
        push's if one was applied, else what the link had."""
        if written is not None and written.modified_at is not None:
            return replace(link, crm_modified_at=written.modified_at)
        for change in request.crm_changes:
            if isinstance(change, CrmUpsert) and change.crm_id == link.crm_id and change.activity.modified_at:
                return replace(link, crm_modified_at=change.activity.modified_at)
        previous = links.get(link.crm_id)
        return replace(link, crm_modified_at=previous.value.crm_modified_at if previous else None)

    @staticmethod
    def _previous(
        links: Mapping[str, Versioned[Link]], new_link: Link, drops: list[Versioned[Link]]
    ) -> Versioned[Link] | None:
        previous = links.get(new_link.crm_id)
        if previous is not None and previous in drops:
            drops.remove(previous)  # dropped and saved again in one plan: a replace
        return previous

    def _apply_item(
        self,
        state: _Round,
        report: RunReport,
        actions: Sequence[Action],
        events: Mapping[str, GraphEvent],
    ) -> tuple[GraphWriteResult | None, CrmWriteResult | None] | _Outcome:
        """Perform one item's writes; what they returned, or why the item stops here."""
        token = state.token
        graph_result: GraphWriteResult | None = None
        crm_result: CrmWriteResult | None = None
        for action in actions:
            try:
                if isinstance(action, CreateInGraph):
                    event = self._graph.create_event(token, action.body())
                    graph_result = GraphWriteResult(event.id, event.change_key, event.ical_uid)
                    report.count("writes_to_graph")
                    if action.activity.is_recurring:
                        self._write_instances(state, report, event.id, action.activity, action.options, True)
                elif isinstance(action, UpdateGraph):
                    body = action.body()
                    if body or not action.activity.is_recurring:
                        event = self._graph.update_event(token, action.graph_id, body)
                        graph_result = GraphWriteResult(event.id, event.change_key, event.ical_uid)
                        report.count("writes_to_graph")
                    else:  # case: only occurrences of the series change: no PATCH of the master
                        graph_result = GraphWriteResult(action.graph_id, None)
                    if action.writes_instances:
                        self._write_instances(
                            state, report, action.graph_id, action.activity, action.options, False
                        )
                elif isinstance(action, DeleteInGraph):
                    self._graph.delete_event(self._token_of(state, action.user_id), action.graph_id)
                    report.count("writes_to_graph")
                elif isinstance(action, CreateInCrm):
                    source = events.get(action.graph_id)
                    if source is not None and source.ical_uid and not self._claim(state, source):
                        return _Outcome.REPLAN  # another connected user's calendar holds this meeting
                    record = self._crm.create_activity(action.body(), action.idempotency_key)
                    crm_result = CrmWriteResult(record.crm_id, record.version, record.activity.modified_at)
                    report.count("writes_to_crm")
                elif isinstance(action, UpdateCrm):
                    if_match = action.if_match
                    if if_match is None:
                        if_match = self._crm.get_activity(action.crm_id).version
                    record = self._crm.update_activity(
                        action.crm_id, action.body(), if_match, action.idempotency_key
                    )
                    crm_result = CrmWriteResult(record.crm_id, record.version, record.activity.modified_at)
                    report.count("writes_to_crm")
                elif isinstance(action, DeleteInCrm):
                    self._crm.delete_activity(action.crm_id, action.if_match, action.idempotency_key)
                    report.count("writes_to_crm")
            except ItemGoneError:
                if isinstance(action, UpdateCrm):
                    # case: deleted in the CRM while Outlook's edit was being copied (its push not here yet):
                    # re-plan now with the deletion, so the edit wins and the activity comes back. Skipping
                    # would lose the edit: this delta is consumed, and the late push alone deletes the event.
                    return _Outcome.REPLAN
                if isinstance(action, UpdateGraph):
                    # Deleted on that side while we planned: the next round sees the deletion and decides
                    # (a modification beats a deletion), so nothing of this item is saved now.
                    self._storage.connections.mark_dirty(state.connection.user_id, state.now)
                    return _Outcome.SKIPPED
                raise
            except RemoteRejectedError as error:
                if error.code == "version_mismatch" and isinstance(action, UpdateCrm | DeleteInCrm):
                    return _Outcome.REPLAN  # changed in the CRM meanwhile: re-read and decide again
                if error.status is not None and 400 <= error.status < 500 and error.status != 401:
                    crm_id = getattr(action, "crm_id", None)
                    self._item_error(
                        state,
                        f"{'crm' if 'Crm' in type(action).__name__ else 'graph'}_rejected",
                        _rejection_message(action, error),
                        crm_id if isinstance(crm_id, str) else None,
                        graph_id=getattr(action, "graph_id", None),
                    )
                    report.count("item_errors")
                    return _Outcome.SKIPPED
                raise
        return graph_result, crm_result

    def _write_instances(
        self,
        state: _Round,
        report: RunReport,
        master_id: str,
        activity: Activity,
        options: GraphWriteOptions,
        created: bool,
    ) -> None:
        written = self._series.write_instances(state.token, master_id, activity, options, created=created)
        for _ in range(written.writes):
            report.count("writes_to_graph")

    def _token_of(self, state: _Round, user_id: str) -> Callable[[], str]:
        """This run's token, or (an activity reassigned away from ``user_id``) that user's."""
        if user_id == state.connection.user_id:
            return state.token
        other = self._storage.connections.get(user_id)
        if other is None or other.value.state not in _SYNCING:
            raise TokenRevokedError(f"reconcile: user {user_id} is not connected", code="not_connected")
        return _RunToken(self._tokens, user_id, other.value.home_account_id)

    def _claim(self, state: _Round, event: GraphEvent) -> bool:
        """Claim a meeting before creating its activity; False when another user's link owns it (the item
        is then planned again as that user's shared meeting). An attendee's copy whose organizer is a
        connected user leaves the claim to the organizer's run for a moment, so the activity belongs to the
        organizer. A claim whose owner never finished (its run died before the create returned) is taken
        over once it is older than a lease."""
        assert event.ical_uid is not None
        ical_uid = event.ical_uid
        user_id = state.connection.user_id
        index = self._storage.item_index
        if self._organizer_is_another_connected_user(state, event):
            deadline = time.monotonic() + _CLAIM_WAIT_SECONDS
            while time.monotonic() < deadline:
                found = index.meeting(ical_uid)
                if found is not None:
                    break
                time.sleep(0.2)
        deadline = time.monotonic() + _CLAIM_WAIT_SECONDS
        while True:
            claim = index.claim_meeting(ical_uid, user_id, state.now)
            if claim.value.owner == user_id:
                state.claims[ical_uid] = claim
                return True
            if claim.value.crm_id is not None:
                return False
            if self._clock() - claim.value.claimed_at > self._lease_duration:
                taken = index.take_over_meeting(ical_uid, claim, user_id, self._clock())
                if taken is not None:
                    state.claims[ical_uid] = taken
                    return True
                continue
            if time.monotonic() > deadline:
                # The owner's run is creating the activity right now: try this round again later (the
                # deltaLink is not saved, so the event comes back).
                raise TransientRemoteError(
                    f"reconcile: meeting of user {user_id} is being created by user {claim.value.owner}"
                )
            time.sleep(0.2)

    def _organizer_is_another_connected_user(self, state: _Round, event: GraphEvent) -> bool:
        if event.raw.get("isOrganizer") is not False:
            return False
        organizer = event.raw.get("organizer")
        address = organizer.get("emailAddress") if isinstance(organizer, Mapping) else None
        email = address.get("address") if isinstance(address, Mapping) else None
        if not isinstance(email, str) or "@" not in email:
            return False
        person = self._crm.people([email]).find(email)
        if (
            person is None
            or person.kind is not AttendeeKind.USER
            or person.crm_id == state.connection.user_id
        ):
            return False
        connection = self._storage.connections.get(person.crm_id)
        return connection is not None and connection.value.state in _SYNCING

    def _replan_item(
        self,
        state: _Round,
        report: RunReport,
        actions: Sequence[Action],
        request: SyncRequest,
        replans: int,
    ) -> None:
        """Decide one item again: the CRM changed the activity while we planned (412: read it), or another
        connected user's link turned out to own the meeting (the claim: link to their activity)."""
        user_id = state.connection.user_id
        if replans >= MAX_REPLANS:
            raise ConflictError(f"reconcile: an item of user {user_id} kept changing while being synced")
        create = next((a for a in actions if isinstance(a, CreateInCrm)), None)
        if create is not None:
            meeting: list[GraphChange] = [
                c
                for c in request.graph_changes
                if isinstance(c, GraphUpsert) and c.event.id == create.graph_id
            ]
            links = self._links_for(state, meeting, [])
            replanned = replace(
                request,
                graph_changes=meeting,
                crm_changes=[],
                links=[link.value for link in links.values()],
                shared_meetings=self._shared_meetings(user_id, meeting, links),
                other_users_links=[],
            )
            log.info("reconcile: user %s: event %s is a meeting another user owns", user_id, create.graph_id)
            self._apply(state, report, self._plan(state, replanned), _Known(links), replanned, replans + 1)
            return
        crm_id = next((a.crm_id for a in actions if isinstance(a, UpdateCrm | DeleteInCrm)), None)
        if crm_id is None:
            raise ConflictError(f"reconcile: an item of user {user_id} cannot be planned again")
        fresh: CrmChange
        try:
            record = self._crm.get_activity(crm_id)
            fresh = CrmUpsert(crm_id, record.version, record.activity)
        except ItemGoneError:
            fresh = CrmDeletion(crm_id, "")
        links = self._links_for(state, [], [fresh])
        graph_ids = {link.value.graph_id for link in links.values()}
        graph_changes = [
            change
            for change in request.graph_changes
            if (change.event.id if isinstance(change, GraphUpsert) else change.graph_id) in graph_ids
        ]
        replanned = replace(
            request,
            graph_changes=graph_changes,
            crm_changes=[fresh],
            links=[link.value for link in links.values()],
            other_users_links=[],
        )
        log.info("reconcile: user %s: activity %s changed in the CRM meanwhile; re-planned", user_id, crm_id)
        self._apply(state, report, self._plan(state, replanned), _Known(links), replanned, replans + 1)

    # --- what people see -----------------------------------------------------------------------------------

    def _record_conflict(self, state: _Round, report: RunReport, conflict: RecordConflict) -> None:
        report.count("conflicts")
        fields = conflict.crm_field_names
        # case: the event's key has the milliseconds its occurredAt has. With whole seconds, the same conflict
        # recorded again within a second (a retried run) reused a key for another body: 409
        # idempotency_key_reused, and the CRM never heard (tests/integration/test_sync_machine.py).
        millis = int(state.now.timestamp() * 1000)
        state.log_entries.append(
            SyncLogEntry(
                user_id=state.connection.user_id,
                at=state.now,
                kind=SyncLogKind.CONFLICT,
                reason="changed_on_both_sides",
                crm_id=conflict.crm_id,
                graph_id=conflict.graph_id,
                fields=fields,
                resolution=conflict.policy.value,
            )
        )
        state.events.append(
            conflict_event(
                state.connection.user_id,
                conflict.crm_id,
                fields,
                conflict.policy.value,
                "crm" if conflict.winner.value == "crm" else "m365",
                state.now,
                key=f"{conflict.crm_id}:{conflict.graph_id}:{','.join(fields)}:{millis}",
            )
        )

    def _item_error(
        self, state: _Round, reason: str, message: str, crm_id: str | None, *, graph_id: str | None = None
    ) -> None:
        log.warning(
            "reconcile: user %s: item crm=%s graph=%s failed: %s",
            state.connection.user_id,
            crm_id or "-",
            graph_id or "-",
            reason,
        )
        state.log_entries.append(
            SyncLogEntry(
                user_id=state.connection.user_id,
                at=state.now,
                kind=SyncLogKind.ERROR,
                reason=reason,
                crm_id=crm_id,
                graph_id=graph_id,
                message=message,
            )
        )
        state.last_item_error = ErrorRecord(state.now, reason, message, crm_id or graph_id)
        state.events.append(sync_error_event(state.connection.user_id, reason, crm_id, False, state.now))

    def _mass_deletion_stop(self, state: _Round, error: MassDeletionError) -> None:
        user_id = state.connection.user_id
        log.error(
            "reconcile: user %s: stopped: %d of %d linked items would be deleted",
            user_id,
            error.would_delete,
            error.linked,
        )
        message = (
            f"this sync would delete {error.would_delete} of {error.linked} synced items; nothing was "
            "deleted. Check the calendar, then confirm the deletion."
        )
        state.log_entries.append(
            SyncLogEntry(
                user_id, state.now, SyncLogKind.MASS_DELETION_GUARD, "mass_deletion", message=message
            )
        )
        failure = ErrorRecord(state.now, "mass_deletion", message)
        self._flush_log(state)
        self._storage.connections.update(
            user_id,
            lambda current: (
                None
                if current is None or current.state is not ConnectionState.CONNECTED
                else replace(current, state=ConnectionState.ERROR, last_error=failure, last_sync_at=state.now)
            ),
        )
        self._notify(sync_error_event(user_id, "mass_deletion", None, False, state.now))

    def _flush_log(self, state: _Round) -> None:
        if state.log_entries:
            self._storage.sync_log.add(state.connection.user_id, state.log_entries)
            state.log_entries = []
            # Only runs that write to the log make it grow, so they keep it short.
            self._storage.sync_log.trim(state.connection.user_id)
        for event in state.events:
            self._notify(event)
        state.events = []

    def _notify(self, event: ConnectionEvent) -> None:
        try:
            self._crm.notify(event)
        except SyncError as error:
            # The sync log holds it too; an unreachable CRM must not undo a run that worked.
            log.warning("reconcile: telling the CRM '%s' failed: %s", event.type.value, type(error).__name__)

    # --- save ----------------------------------------------------------------------------------------------

    def _finish(self, state: _Round) -> Callable[[Connection], Connection | None]:
        """Remove the handled outbox rows and write the log; what to record on the connection."""
        # One transaction for the round's rows (per 100), each still guarded by the ETag it was read with.
        self._storage.outbox.delete_all_handled(list(state.outbox.values()))
        self._flush_log(state)
        item_error = state.last_item_error

        def recorded(current: Connection) -> Connection | None:
            if current.state not in _SYNCING:
                return None
            return replace(
                current,
                state=ConnectionState.CONNECTED,
                last_sync_at=state.now,
                last_good_sync_at=state.now,
                last_error=item_error if item_error is not None else _kept_error(current.last_error),
            )

        return recorded


def _unchanged(_connection: Connection) -> Connection | None:
    return None


def _kept_error(error: ErrorRecord | None) -> ErrorRecord | None:
    """A good run clears run-level errors (a mass-deletion stop, a poison record stays visible in the log)."""
    if error is None or error.item_id is not None:
        return error
    return None


def _rejection_message(action: Action, error: RemoteRejectedError) -> str:
    side = "the CRM" if "Crm" in type(action).__name__ else "Outlook"
    verb = {
        "CreateInCrm": "creating the activity",
        "UpdateCrm": "updating the activity",
        "DeleteInCrm": "deleting the activity",
        "CreateInGraph": "creating the event",
        "UpdateGraph": "updating the event",
        "DeleteInGraph": "deleting the event",
    }.get(type(action).__name__, "writing")
    return f"{side} refused {verb} ({error.code or error.status})"
