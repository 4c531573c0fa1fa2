"""Waking a user's sync: how new work (a Graph notification, a CRM push) reaches the ``sync`` queue.

The user is marked dirty on their connection (a read; a write only when the user goes clean → dirty), and
only on clean → dirty one ``sync`` message is sent. Every later wake-up finds the flag set and costs one
read: a burst for one user becomes one run, because the run re-runs while the flag is set (the reconcile
feature clears it under an ETag at the end of its run). When the message cannot be sent, the mark this call
made is undone before the error propagates, so a retry of the same request marks (and queues) again; the
sweep timer is the safety net for a message lost after it was sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from sync_core.adapters.tables import ConnectionStore
from sync_core.domain.state import ConnectionState
from sync_core.domain.sync_message import SyncMessage, SyncReason
from sync_core.errors import SyncError


class WorkQueue(Protocol):
    def send(
        self, name: str, payload: Mapping[str, object], visibility_timeout: int | None = None
    ) -> str: ...


def wake_user(
    connections: ConnectionStore,
    queue: WorkQueue,
    queue_name: str,
    user_id: str,
    reason: SyncReason,
    now: datetime,
    *,
    accepts: Callable[[ConnectionState], bool] | None = None,
) -> bool:
    """Mark ``user_id`` dirty and queue its run if it was clean; True when a message was sent.

    False: the user was already dirty (its pending run will see the new work), or has no connection row.
    Storage and queue failures raise (``SyncError``), after undoing this call's mark. ``accepts``: see
    ``ConnectionStore.mark_dirty`` (a refused user raises ``UserNotConnectedError``, nothing marked).
    """
    if not connections.mark_dirty(user_id, now, accepts=accepts):
        return False
    try:
        queue.send(queue_name, SyncMessage.of(user_id, reason).body())
    except SyncError:
        connections.unmark_dirty(user_id, now)
        raise
    return True
