"""Graph's calls to the webhook and lifecycle endpoints: the validation handshake, and turning a burst of
notifications into queued work, in milliseconds.

The validation handshake: when a subscription is created, Graph POSTs ``…?validationToken=<token>`` and
expects, within 10 seconds, ``200 text/plain`` with the token URL-decoded and nothing else. The token holds
spaces and colons, so it must be the decoded query value, never the raw query string.

A burst (``NotificationService.accept``), on the hot path; no sync work happens here:

1. one point read per distinct subscription id (no scan), unless this worker read it in the last minute:
   unknown ids and wrong clientStates are dropped and counted (``sync_core.domain.webhook.triage``). What the
   webhook reads of a record (its user and clientState hash) never changes for a subscription id, so a
   recently read record is kept in memory (``RecordCache``) and a burst then costs one read per user. Nothing
   depends on the cache: a miss reads storage, unknown ids are never cached, and a subscription deleted
   meanwhile is accepted at most a minute longer (its user's run finds nothing to do);
2. per distinct user with changes: ``mark_dirty`` (a read; a write only when the user goes clean → dirty), and
   only on clean → dirty one ``sync`` message (``sync_core.services.wakeup``, shared with the CRM's pushes).
   Every later notification finds the user dirty and costs one read: a burst for one user becomes one run,
   because the run re-runs while the flag is set (the reconcile feature clears it under an ETag at the end of
   its run). The sweep timer is the safety net for a lost message;
3. per accepted lifecycle item, one ``sync`` message with the lifecycle reason (rare; never coalesced).

Users are handled concurrently (a small shared pool), so a burst costs about one user's round trips. Any
storage failure propagates so the caller answers 5xx and Graph retries; when queueing fails right after this
request marked the user dirty, the mark is undone first, so the retry marks and queues again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sync_core.adapters.tables import ConnectionStore, SubscriptionStore
from sync_core.domain.graph_payloads import NotificationBatch
from sync_core.domain.state import SubscriptionRecord
from sync_core.domain.sync_message import SyncReason
from sync_core.domain.webhook import Triage, subscription_ids, triage
from sync_core.errors import InvalidRequestError
from sync_core.services.wakeup import WorkQueue as WorkQueue  # re-exported: the sweep's queue port too
from sync_core.services.wakeup import wake_user

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Graph's tokens are about a hundred characters; anything far longer is not Graph.
MAX_VALIDATION_TOKEN_LENGTH = 1024


def validation_response(token: str) -> str:
    """The body to answer a validation request with: the (already URL-decoded) token itself."""
    if not token or len(token) > MAX_VALIDATION_TOKEN_LENGTH:
        raise InvalidRequestError(
            "not a validation request", {"validationToken": "must be 1-1024 characters"}
        )
    return token


@dataclass(frozen=True)
class Accepted:
    triage: Triage
    queued: int  # sync messages sent for changes (users that went clean → dirty)
    lifecycle_queued: int


class RecordCache:
    """Subscription records this worker read lately, for ``ttl_seconds``; at most ``max_entries``."""

    def __init__(self, ttl_seconds: float = 60.0, max_entries: int = 50_000) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, SubscriptionRecord]] = OrderedDict()

    def get(self, subscription_id: str) -> SubscriptionRecord | None:
        with self._lock:
            entry = self._entries.get(subscription_id)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._entries[subscription_id]
                return None
            return entry[1]

    def put(self, record: SubscriptionRecord) -> None:
        with self._lock:
            self._entries[record.subscription_id] = (time.monotonic() + self._ttl, record)
            self._entries.move_to_end(record.subscription_id)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)


class NotificationService:
    def __init__(
        self,
        *,
        subscriptions: SubscriptionStore,
        connections: ConnectionStore,
        queue: WorkQueue,
        queue_name: str,
        clock: Callable[[], datetime],
        pool: Executor,
        cache: RecordCache | None = None,
    ) -> None:
        self._subscriptions = subscriptions
        self._cache = cache or RecordCache()
        self._connections = connections
        self._queue = queue
        self._queue_name = queue_name
        self._clock = clock
        self._pool = pool

    def accept(self, batch: NotificationBatch, *, operation: str) -> Accepted:
        """Record what ``batch`` asks for (see the module docstring); storage failures raise."""
        sorted_out = triage(batch, self._records(subscription_ids(batch)))
        queued = sum(self._each(sorted_out.users, self._mark_dirty))
        for message in sorted_out.lifecycle:
            self._queue.send(self._queue_name, message.body())
            log.info(
                "%s: user %s: %s for subscription %s queued",
                operation,
                message.user,
                message.reason,
                message.subscription_id,
            )
        if sorted_out.unknown or sorted_out.forged:
            log.warning(
                "%s: ignored %d item(s) of unknown subscriptions and %d with a wrong clientState%s",
                operation,
                sorted_out.unknown,
                sorted_out.forged,
                f" (subscriptions {', '.join(sorted_out.forged_subscriptions)})" if sorted_out.forged else "",
            )
        log.info(
            "%s: %d item(s) accepted: %d user(s) with changes (%d sync run(s) queued, %d already pending), "
            "%d lifecycle event(s) queued",
            operation,
            sorted_out.accepted,
            len(sorted_out.users),
            queued,
            len(sorted_out.users) - queued,
            len(sorted_out.lifecycle),
        )
        return Accepted(sorted_out, queued, len(sorted_out.lifecycle))

    def _records(self, ids: Sequence[str]) -> dict[str, SubscriptionRecord | None]:
        records: dict[str, SubscriptionRecord | None] = {sid: self._cache.get(sid) for sid in ids}
        missing = [sid for sid, record in records.items() if record is None]
        for sid, found in zip(missing, self._each(missing, self._subscriptions.get), strict=True):
            if found is not None:
                self._cache.put(found.value)
                records[sid] = found.value
        return records

    def _mark_dirty(self, user_id: str) -> bool:
        # False: already dirty (its run will see this change), or no connection.
        return wake_user(
            self._connections, self._queue, self._queue_name, user_id, SyncReason.NOTIFICATION, self._clock()
        )

    def _each(self, items: Iterable[T], call: Callable[[T], R]) -> list[R]:
        """``call`` on every item, concurrently when there are several; the first failure is raised once
        all calls have finished (none is left running behind the caller's answer)."""
        items = list(items)
        if len(items) <= 1:
            return [call(item) for item in items]
        futures = [self._pool.submit(call, item) for item in items]
        errors = [future.exception() for future in futures]
        first_error = next((error for error in errors if error is not None), None)
        if first_error is not None:
            raise first_error
        return [future.result() for future in futures]
