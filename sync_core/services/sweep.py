"""The safety sweep (``SWEEP_SCHEDULE``, every few minutes): queue a sync for every connected user whose last
good sync is older than ``SWEEP_AGE_MINUTES`` (or who never had one), and for every user whose outbox holds
CRM changes. Whatever a lost queue message, a dropped notification or a missed lifecycle event left behind is
picked up here, within the sweep age plus one sweep interval.

It also purges expired OAuth states and nonces, which nothing else removes. Two scans and a key scan: timer
work only, never on a request path. Running on several instances at once only queues a user twice; a run that
finds the user's lease held drops its message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sync_core.adapters.tables import ConnectionStore, NonceStore, OAuthStateStore, OutboxStore
from sync_core.domain.sync_message import SyncMessage, SyncReason
from sync_core.services.notifications import WorkQueue
from sync_core.services.subscriptions import LIVE_STATES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    stale: int  # users queued because their last good sync is too old
    outbox: int  # users queued because CRM changes wait
    purged_states: int
    purged_nonces: int


class Sweep:
    def __init__(
        self,
        *,
        connections: ConnectionStore,
        outbox: OutboxStore,
        oauth_states: OAuthStateStore,
        nonces: NonceStore,
        queue: WorkQueue,
        queue_name: str,
        age: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self._connections = connections
        self._outbox = outbox
        self._oauth_states = oauth_states
        self._nonces = nonces
        self._queue = queue
        self._queue_name = queue_name
        self._age = age
        self._clock = clock

    def run(self) -> SweepReport:
        now = self._clock()
        stale_before = now - self._age
        live: set[str] = set()
        queued: set[str] = set()
        for found in self._connections.list_all():
            connection = found.value
            if connection.state not in LIVE_STATES:
                continue
            live.add(connection.user_id)
            last_good = connection.last_good_sync_at
            if last_good is None or last_good < stale_before:
                self._send(SyncMessage.of(connection.user_id, SyncReason.SWEEP))
                queued.add(connection.user_id)
        stale = len(queued)
        for user_id in self._outbox.users_with_pending():
            if user_id in live and user_id not in queued:
                self._send(SyncMessage.of(user_id, SyncReason.OUTBOX))
                queued.add(user_id)
        report = SweepReport(
            stale=stale,
            outbox=len(queued) - stale,
            purged_states=self._oauth_states.purge_expired(now),
            purged_nonces=self._nonces.purge_expired(now),
        )
        log.info(
            "sweep: queued %d user(s) without a recent good sync and %d with waiting CRM changes; "
            "purged %d expired sign-in state(s) and %d nonce(s)",
            report.stale,
            report.outbox,
            report.purged_states,
            report.purged_nonces,
        )
        return report

    def _send(self, message: SyncMessage) -> None:
        self._queue.send(self._queue_name, message.body())
