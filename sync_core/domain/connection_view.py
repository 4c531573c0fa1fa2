"""What the CRM sees of a connection (pure): the status document and the connection events.

Both follow docs/crm-contract.md: the status (§5, ``GET /api/users/{id}/status``) never carries a token,
a subscription id or a client state; connection events (§4, ``POST /events``) carry an idempotency key that a
retry of the same event reuses.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sync_core.config import SyncDirection
from sync_core.domain.state import Connection, ConnectionState, SubscriptionRecord, SyncLogEntry

# Renewal runs every 6 hours: a subscription that expires before the run after next is "expiring".
EXPIRING_WITHIN = timedelta(hours=12)
_RESOURCE_NAMES = (("events", "calendar"), ("contacts", "contacts"), ("messages", "mail"), ("tasks", "tasks"))


def iso_ms(moment: datetime) -> str:
    """A UTC date-time with millisecond precision and ``Z``, as the contract writes timestamps."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _iso_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else iso_ms(moment)


def resource_name(resource: str) -> str:
    """``/users/{id}/events`` → ``calendar``: the contract's name for what a subscription watches."""
    lowered = resource.lower().rstrip("/")
    return next((name for suffix, name in _RESOURCE_NAMES if lowered.endswith(suffix)), "other")


def subscription_health(
    records: Sequence[SubscriptionRecord], now: datetime, *, connected: bool
) -> list[dict[str, Any]]:
    """``[{resource, state, expiresAt}]``; a connected user without a calendar subscription: missing."""
    health: list[dict[str, Any]] = [
        {
            "resource": resource_name(record.resource),
            "state": "active" if record.expires_at - now > EXPIRING_WITHIN else "expiring",
            "expiresAt": iso_ms(record.expires_at),
        }
        for record in sorted(records, key=lambda record: record.expires_at)
        if record.expires_at > now
    ]
    if connected and not any(item["resource"] == "calendar" for item in health):
        health.append({"resource": "calendar", "state": "missing", "expiresAt": None})
    return health


def status_view(
    user_id: str,
    connection: Connection | None,
    subscriptions: Sequence[SubscriptionRecord],
    pending_changes: int,
    default_direction: SyncDirection,
    now: datetime,
    sync_log: Sequence[SyncLogEntry] = (),
) -> dict[str, Any]:
    if connection is None:
        connection = Connection(user_id=user_id, state=ConnectionState.DISCONNECTED)
    error = connection.last_error
    account = (
        {"upn": connection.upn, "tenantId": connection.tenant_id}
        if connection.tenant_id and connection.state is not ConnectionState.DISCONNECTED
        else None
    )
    live = connection.state in {ConnectionState.CONNECTED, ConnectionState.ERROR}
    return {
        "crmUserId": user_id,
        "state": connection.state.value,
        "account": account,
        "connectedSince": _iso_or_none(connection.connected_since),
        "lastSyncAt": _iso_or_none(connection.last_sync_at),
        "lastGoodSyncAt": _iso_or_none(connection.last_good_sync_at),
        "lastError": None
        if error is None
        else {
            "item": None if error.item_id is None else {"crmId": error.item_id, "graphEventId": None},
            "reason": error.code,
            "message": error.message,
            "at": iso_ms(error.at),
        },
        "pendingChanges": pending_changes,
        "direction": (connection.direction_override or default_direction).value,
        "subscriptions": subscription_health(subscriptions, now, connected=live),
        "syncLog": [sync_log_view(entry) for entry in sync_log],
    }


def sync_log_view(entry: SyncLogEntry) -> dict[str, Any]:
    """One ``syncLog`` entry as the contract shows it."""
    item = None
    if entry.crm_id is not None or entry.graph_id is not None:
        item = {"crmId": entry.crm_id, "graphEventId": entry.graph_id}
    return {
        "at": iso_ms(entry.at),
        "kind": entry.kind.value,
        "item": item,
        "fields": None if entry.fields is None else list(entry.fields),
        "reason": entry.reason,
        "resolution": entry.resolution,
        "message": entry.message,
    }


# --- connection events ------------------------------------------------------------------------------------


class EventType(enum.Enum):
    CONNECTED = "connected"
    RECONNECT_REQUIRED = "reconnect_required"
    DISCONNECTED = "disconnected"
    CONFLICT = "conflict"
    POISON = "poison"
    SYNC_ERROR = "sync_error"


@dataclass(frozen=True)
class ConnectionEvent:
    type: EventType
    crm_user_id: str
    occurred_at: datetime
    details: Mapping[str, Any] = field(default_factory=dict)
    # Set when the event stems from something with its own stable id (a queue message): retries that happen
    # at another time must still reuse the key.
    key: str | None = None

    @property
    def idempotency_key(self) -> str:
        """Derived from the event itself, so every retry of it (any instance, any attempt) reuses the key."""
        if self.key is not None:
            return self.key
        millis = int(self.occurred_at.timestamp() * 1000)
        return f"event:{self.type.value}:{self.crm_user_id}:{millis}"

    def body(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "crmUserId": self.crm_user_id,
            "occurredAt": iso_ms(self.occurred_at),
            "details": dict(self.details),
        }


def connected_event(user_id: str, upn: str, tenant_id: str, at: datetime) -> ConnectionEvent:
    return ConnectionEvent(EventType.CONNECTED, user_id, at, {"account": {"upn": upn, "tenantId": tenant_id}})


def reconnect_required_event(user_id: str, reason: str, at: datetime) -> ConnectionEvent:
    return ConnectionEvent(EventType.RECONNECT_REQUIRED, user_id, at, {"reason": reason})


def disconnected_event(user_id: str, purged: bool, at: datetime) -> ConnectionEvent:
    return ConnectionEvent(EventType.DISCONNECTED, user_id, at, {"reason": "crm_request", "purged": purged})


def poison_event(user_id: str, sync_reason: str, message_id: str, at: datetime) -> ConnectionEvent:
    """A sync message that kept failing was parked; the key is the parked message's, so retries reuse it."""
    return ConnectionEvent(
        EventType.POISON,
        user_id,
        at,
        {"reason": "sync_failed_repeatedly", "crmId": None, "syncReason": sync_reason},
        key=f"event:poison:{user_id}:{message_id}",
    )


def conflict_event(
    user_id: str, crm_id: str, fields: Sequence[str], policy: str, winner: str, at: datetime, key: str
) -> ConnectionEvent:
    """Fields changed on both sides; ``key`` names the decision (a retried run reuses it)."""
    return ConnectionEvent(
        EventType.CONFLICT,
        user_id,
        at,
        {"crmId": crm_id, "fields": list(fields), "policy": policy, "winner": winner},
        key=f"event:conflict:{user_id}:{key}",
    )


def sync_error_event(
    user_id: str, reason: str, crm_id: str | None, retrying: bool, at: datetime
) -> ConnectionEvent:
    return ConnectionEvent(
        EventType.SYNC_ERROR, user_id, at, {"reason": reason, "crmId": crm_id, "retrying": retrying}
    )
