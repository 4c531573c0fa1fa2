"""One queued ``sync`` message, run: lifecycle repairs first, then the user's sync.

A lifecycle message (``subscription_removed``, ``reauthorization_required``) first repairs the subscription it
names (``GraphSubscriptions.repair``): Graph's order is "recreate, then resync". Then the sync itself
(``Reconciler.run``: under the user's lease; a revoked grant becomes ``reconnect_required`` and the CRM is
told).

Failures other than a revoked grant propagate: the platform retries the message after ``visibilityTimeout``
and parks it in the poison queue after ``maxDequeueCount`` tries (``sync_core.services.poison``).
"""

from __future__ import annotations

import logging
from typing import Protocol

from sync_core.domain.sync_message import SyncMessage
from sync_core.errors import TokenCacheUnreadableError, TokenRevokedError
from sync_core.services.subscriptions import GraphSubscriptions

log = logging.getLogger(__name__)


class UserSync(Protocol):
    """``Reconciler.run``: one user's sync under the user's lease."""

    def run(self, user_id: str) -> object: ...


class SyncRunner:
    def __init__(self, *, subscriptions: GraphSubscriptions, reconciler: UserSync) -> None:
        self._subscriptions = subscriptions
        self._reconciler = reconciler

    def run(self, message: SyncMessage, *, dequeue_count: int = 1) -> None:
        log.info("sync: run for user %s (reason %s, try %d)", message.user, message.reason, dequeue_count)
        if message.repairs_subscription:
            try:
                changes = self._subscriptions.repair(message)
            except (TokenRevokedError, TokenCacheUnreadableError):
                log.warning("sync: user %s: no working grant to repair its subscription", message.user)
            else:
                log.info(
                    "sync: user %s: subscription %s repaired (%d renewed, %d recreated, %d created)",
                    message.user,
                    message.subscription_id,
                    changes.renewed,
                    changes.recreated,
                    changes.created,
                )
        self._reconciler.run(message.user)
