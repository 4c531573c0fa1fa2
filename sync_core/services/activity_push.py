"""The CRM's activity push: ``PUT /api/users/{crmUserId}/activities/{crmId}`` (the activity changed) and
``DELETE …?version=`` (it was deleted), turned into durable queued work in milliseconds.

One push, *gather → decide → apply*:

1. decide what the push asks for (``sync_core.domain.activity_push``: the contract's field checks; 400 with
   every field error at once, before anything is read or written);
2. gather the user's connection: none, or ``disconnected`` → ``UserNotConnectedError`` (409). Pushes for
   ``pending``, ``reconnect_required`` and ``error`` users are kept and sync once the user syncs again;
3. apply: write the change to the user's outbox (``OutboxStore.put``: one row per activity, the newest change
   wins; a push older than the waiting change is answered ``superseded``). From here the change is durable:
   the sweep finds every non-empty outbox, so nothing is lost even if no message is ever queued;
4. wake the user's sync as the Graph webhook does (``sync_core.services.wakeup``: mark dirty, one ``sync``
   message ``crm_change`` only on clean → dirty, so a burst of pushes becomes one run). When that fails the
   mark is undone and ``StoreUnavailableError`` (503) is raised: the CRM retries, and a retried push is
   harmless (the outbox keeps one change per activity).

Logs hold stable ids only (user, activity, operation, status): never the body, which holds subjects,
descriptions and attendees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sync_core.adapters.tables import ConnectionStore, LinkStore, OutboxStore
from sync_core.domain.activity_push import (
    PushReceipt,
    PushStatus,
    accepts_pushes_in,
    delete_entry,
    may_be_older_than_synced,
    older_than_synced,
    push_status,
    upsert_entry,
)
from sync_core.domain.state import OutboxEntry
from sync_core.domain.sync_message import SyncReason
from sync_core.errors import StoreUnavailableError, SyncError, UserNotConnectedError
from sync_core.services.wakeup import WorkQueue, wake_user

log = logging.getLogger(__name__)


class ActivityPushes:
    def __init__(
        self,
        *,
        connections: ConnectionStore,
        outbox: OutboxStore,
        queue: WorkQueue,
        queue_name: str,
        clock: Callable[[], datetime],
        links: LinkStore | None = None,
    ) -> None:
        self._connections = connections
        self._outbox = outbox
        self._links = links
        self._queue = queue
        self._queue_name = queue_name
        self._clock = clock

    def upsert(self, user_id: str, crm_id: str, body: Mapping[str, Any]) -> PushReceipt:
        """Keep a changed activity (the full Activity as the CRM holds it) for the user's next run."""
        return self._keep(upsert_entry(user_id, crm_id, body, self._clock()))

    def delete(self, user_id: str, crm_id: str, version: str | None) -> PushReceipt:
        """Keep the deletion of an activity (``version``: the last one the CRM held) for the next run."""
        return self._keep(delete_entry(user_id, crm_id, version, self._clock()))

    def _keep(self, entry: OutboxEntry) -> PushReceipt:
        user_id, crm_id, operation = entry.user_id, entry.crm_id, entry.operation.value
        # The user's connection is checked by the read that marks the user dirty, after the change is kept
        # (one read of the connection, not two: a push was the dearest change in Table transactions,
        # bench.sync_costs). A refused push then takes its own row out again, below.
        if self._links is not None and may_be_older_than_synced(entry):
            link = self._links.get_by_crm_id(user_id, crm_id)
            if older_than_synced(entry, None if link is None else link.value):
                log.info(
                    "activity_push: user %s: %s of %s older than the synced one", user_id, operation, crm_id
                )
                return PushReceipt(crm_id, entry.crm_version, PushStatus.SUPERSEDED)
        kept = self._outbox.put(entry)
        status = push_status(entry, kept.value)
        try:
            queued = wake_user(
                self._connections,
                self._queue,
                self._queue_name,
                user_id,
                SyncReason.CRM_CHANGE,
                self._clock(),
                accepts=accepts_pushes_in,
            )
        except UserNotConnectedError:
            # case: the user never connected or disconnected: the change is refused, and the row this push
            # wrote goes again (guarded by its ETag; a row kept from before is not this push's to remove).
            if kept.value == entry:
                self._outbox.delete_handled(kept)
            log.info("activity_push: user %s is not connected; %s of %s refused", user_id, operation, crm_id)
            raise
        except SyncError as error:
            log.warning(
                "activity_push: user %s: %s of %s is in the outbox, but its sync could not be queued (%s)",
                user_id,
                operation,
                crm_id,
                type(error).__name__,
            )
            raise StoreUnavailableError("the change is kept, but its sync could not be queued") from error
        log.info(
            "activity_push: user %s: %s of %s %s (%s)",
            user_id,
            operation,
            crm_id,
            status.value,
            "sync run queued" if queued else "sync run already pending",
        )
        return PushReceipt(crm_id, entry.crm_version, status)
