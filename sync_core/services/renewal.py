"""The renewal timer (``RENEWAL_SCHEDULE``, every six hours): keep every connected user's subscriptions alive.

One run reads every subscription (a key-range scan) and every connection (a scan: timers only), then, per
connected user, renews what would expire before the next run plus a margin, recreates what Graph no longer
knows (an expired record, or a 404 on renewal), creates what is missing, and drops duplicates
(``GraphSubscriptions.maintain``). Users whose subscriptions need nothing cost no Graph request and no token.

Users are handled concurrently on a small bounded pool (``RENEWAL_CONCURRENCY``): each user's requests go one
after another, so no mailbox ever sees more than one of ours at a time, and the app as a whole stays within
Outlook's concurrency limit. Throttling answers are honoured by ``GraphClient``'s one retry policy (a
``Retry-After`` over the cap fails that user for this run; the margin covers the next run).

A user whose grant was revoked becomes ``reconnect_required`` (the CRM is told, once) instead of failing the
run; a user whose renewal fails for any other reason is logged and counted, and the run carries on. Every
operation is idempotent and every write ETag-guarded, so runs on several instances at once are safe.
"""

from __future__ import annotations

import enum
import logging
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from sync_core.adapters.tables import ConnectionStore, SubscriptionStore
from sync_core.domain.state import Connection, SubscriptionRecord, Versioned
from sync_core.domain.subscription_plan import renewal_horizon
from sync_core.errors import SyncError, TokenCacheUnreadableError, TokenRevokedError
from sync_core.services.reconcile import AccessCheck
from sync_core.services.subscriptions import LIVE_STATES, Changes, GraphSubscriptions

log = logging.getLogger(__name__)

# Users renewed at once. Outlook allows 4 concurrent requests per app (graph-facts.md, Throttling); each
# user's requests are sequential, so this bounds the app's concurrency at Graph.
RENEWAL_CONCURRENCY = 4


class Outcome(enum.Enum):
    OK = "ok"
    RECONNECT_REQUIRED = "reconnect_required"
    FAILED = "failed"


@dataclass(frozen=True)
class RenewalReport:
    users: int = 0
    changes: Changes = field(default_factory=Changes)
    reconnect_required: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    seconds: float = 0.0


class SubscriptionRenewal:
    def __init__(
        self,
        *,
        connections: ConnectionStore,
        store: SubscriptionStore,
        subscriptions: GraphSubscriptions,
        access: AccessCheck,
        clock: Callable[[], datetime],
        concurrency: int = RENEWAL_CONCURRENCY,
    ) -> None:
        self._connections = connections
        self._store = store
        self._subscriptions = subscriptions
        self._access = access
        self._clock = clock
        self._concurrency = concurrency

    def renew_due(self, next_run: datetime | None = None) -> RenewalReport:
        """One run. ``next_run``: when the timer fires next, if the trigger says (else six hours from now)."""
        started = time.monotonic()
        horizon = renewal_horizon(self._clock(), next_run)
        records: dict[str, list[Versioned[SubscriptionRecord]]] = defaultdict(list)
        for record in self._store.list_all():
            records[record.value.user_id].append(record)
        users = sorted(
            (found.value for found in self._connections.list_all() if found.value.state in LIVE_STATES),
            key=lambda connection: connection.user_id,
        )
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="renewal") as pool:
            outcomes = list(
                pool.map(lambda user: self._renew_user(user, records.get(user.user_id, []), horizon), users)
            )
        changes = sum((changes for _, changes, _ in outcomes), Changes())
        report = RenewalReport(
            users=len(users),
            changes=changes,
            reconnect_required=tuple(
                user for user, _, outcome in outcomes if outcome is Outcome.RECONNECT_REQUIRED
            ),
            failed=tuple(user for user, _, outcome in outcomes if outcome is Outcome.FAILED),
            seconds=time.monotonic() - started,
        )
        log.info(
            "renewal: %d connected user(s): %d renewed, %d recreated, %d created, %d duplicate(s) dropped; "
            "%d now reconnect_required, %d failed%s; %.1fs",
            report.users,
            changes.renewed,
            changes.recreated,
            changes.created,
            changes.dropped,
            len(report.reconnect_required),
            len(report.failed),
            f" ({', '.join(report.failed[:20])})" if report.failed else "",
            report.seconds,
        )
        return report

    def _renew_user(
        self, connection: Connection, records: list[Versioned[SubscriptionRecord]], horizon: datetime
    ) -> tuple[str, Changes, Outcome]:
        user_id = connection.user_id
        try:
            try:
                return user_id, self._subscriptions.maintain(connection, records, horizon), Outcome.OK
            except (TokenRevokedError, TokenCacheUnreadableError) as error:
                log.warning("renewal: user %s has no working grant (%s)", user_id, type(error).__name__)
                # The access check turns this into reconnect_required and tells the CRM (once).
                self._access.check_access(user_id)
                return user_id, Changes(), Outcome.RECONNECT_REQUIRED
        except SyncError as error:  # our own messages: stable ids and codes only
            log.warning("renewal: user %s failed: %s: %s", user_id, type(error).__name__, error)
        except Exception as error:  # one user's bug must not stop the others; its message may quote a remote
            frames = "".join(traceback.format_tb(error.__traceback__))
            log.error("renewal: user %s failed: %s\n%s", user_id, type(error).__name__, frames)
        return user_id, Changes(), Outcome.FAILED
