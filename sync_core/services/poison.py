"""Sync messages that kept failing: the Functions host moves a message to ``{SYNC_QUEUE_NAME}-poison``
after ``maxDequeueCount`` failed runs (host.json); this records it where people look, so nothing disappears
silently.

The user's connection gets ``last_error`` code ``poison`` (state ``error`` when it was connected), so the
status endpoint shows it, and the CRM gets a ``poison`` connection event. The event's idempotency key and
time come from the parked message (its id and the time it was parked), so a retry of this function sends
the very same event. When the user was already poisoned before this message was parked (a permanently failing
user re-queued by every sweep), the record is refreshed but the CRM is not told again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Protocol

from sync_core.adapters.tables import ConnectionStore
from sync_core.domain.connection_view import ConnectionEvent, iso_ms, poison_event
from sync_core.domain.state import Connection, ConnectionState, ErrorRecord
from sync_core.domain.sync_message import SyncMessage
from sync_core.services.subscriptions import LIVE_STATES

log = logging.getLogger(__name__)

POISON = "poison"


class EventSink(Protocol):
    """Where connection events go: the CRM (``sync_core.adapters.crm.CrmClient``)."""

    def notify(self, event: ConnectionEvent) -> None: ...


class PoisonRecorder:
    def __init__(
        self, *, connections: ConnectionStore, events: EventSink, clock: Callable[[], datetime]
    ) -> None:
        self._connections = connections
        self._events = events
        self._clock = clock

    def record(self, message: SyncMessage, message_id: str, parked_at: datetime | None) -> None:
        """Record a parked sync message; a CRM that cannot be told raises, so the platform retries this."""
        at = parked_at or self._clock()
        text = (
            f"The sync failed repeatedly and was set aside at {iso_ms(at)} (reason: {message.reason}); "
            "the safety sweep retries it."
        )
        told_before: list[bool] = []

        def poisoned(current: Connection | None) -> Connection | None:
            if current is None:
                return None
            told_before[:] = [_poisoned_before(current, at)]
            state = ConnectionState.ERROR if current.state in LIVE_STATES else current.state
            return replace(current, state=state, last_error=ErrorRecord(at, POISON, text))

        if self._connections.update(message.user, poisoned) is None:
            log.error(
                "poison: a sync message for user %s (reason %s, message %s) failed repeatedly; no such user",
                message.user,
                message.reason,
                message_id,
            )
            return
        log.error(
            "poison: the sync of user %s (reason %s, message %s) failed repeatedly; recorded in its status",
            message.user,
            message.reason,
            message_id,
        )
        if told_before and told_before[0]:
            log.info("poison: user %s was already poisoned; the CRM was told then", message.user)
            return
        self._events.notify(poison_event(message.user, message.reason, message_id, at))


def _poisoned_before(connection: Connection, parked_at: datetime) -> bool:
    """Poisoned by an earlier message: the recorded time is before this message was parked. A retry of this
    same message finds its own record (recorded at ``parked_at``), which does not count."""
    error = connection.last_error
    return error is not None and error.code == POISON and error.at < parked_at
