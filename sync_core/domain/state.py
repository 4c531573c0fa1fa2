"""What the service keeps between runs: one frozen dataclass per stored record, plus ``Versioned``.

These are plain values with no I/O; ``sync_core.adapters.tables`` reads and writes them. Every timestamp is
timezone-aware UTC. Records change by ``dataclasses.replace``, never in place. Later features add fields with
defaults, so stored rows written by an older version still read.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

from sync_core.config import ConflictPolicy, SyncDirection

T = TypeVar("T")


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """A stored value with the ETag it had when read or written: hand both back to change it safely."""

    value: T
    etag: str


class ConnectionState(enum.Enum):
    """Where a user's connection to Microsoft 365 stands."""

    PENDING = "pending"  # sign-in started, no tokens yet
    CONNECTED = "connected"
    RECONNECT_REQUIRED = "reconnect_required"  # the refresh token was revoked or expired (invalid_grant)
    DISCONNECTED = "disconnected"
    ERROR = "error"  # a run failed in a way the user or an admin must look at (see ``last_error``)


@dataclass(frozen=True)
class ErrorRecord:
    """The last failure of a user's sync: when, a stable code, a short message, and the item at fault if any.

    ``message`` is written by us (never a remote body or a token); ``item_id`` is a CRM or Graph id.
    """

    at: datetime
    code: str
    message: str
    item_id: str | None = None


@dataclass(frozen=True)
class Connection:
    """One CRM user's link to their Microsoft 365 account, and how their sync is doing."""

    user_id: str  # the CRM user id
    state: ConnectionState
    tenant_id: str | None = None
    account_oid: str | None = None  # the Entra ID object id of the signed-in account
    upn: str | None = None
    home_account_id: str | None = None  # MSAL's "{oid}.{tid}", the key of the account in the token cache
    connected_since: datetime | None = None
    last_sync_at: datetime | None = None
    last_good_sync_at: datetime | None = None
    last_error: ErrorRecord | None = None
    # Set by a notification or a CRM change, cleared by the run that handled it; the holder of the lease
    # re-runs while it is set, so a run that found the lease held can be dropped safely.
    dirty: bool = False
    dirty_since: datetime | None = None
    # Set by a sync run while it holds the user's lease (until the lease's expiry): a change arriving then
    # only marks the user dirty, without queueing a message, since the run looks at the flag before it ends.
    running_until: datetime | None = None
    # Per-user overrides of the tenant-wide sync policy; None means "use the tenant setting".
    direction_override: SyncDirection | None = None
    conflict_policy_override: ConflictPolicy | None = None


@dataclass(frozen=True)
class OAuthState:
    """A pending sign-in: the ``state`` sent to Entra ID and what the callback needs. Single-use, expiring."""

    state_id: str
    crm_user_id: str
    return_url: str
    flow: bytes  # the MSAL auth-code flow (holds the PKCE verifier), opaque to the store
    created_at: datetime
    expires_at: datetime

    def is_expired(self, now: datetime) -> bool:
        return now >= self.expires_at


@dataclass(frozen=True)
class SubscriptionRecord:
    """A Graph change-notification subscription we created for a user."""

    subscription_id: str
    user_id: str
    resource: str  # e.g. "/users/{id}/events"
    change_types: tuple[str, ...]  # e.g. ("created", "updated", "deleted")
    expires_at: datetime
    client_state_hash: str  # a hash of the clientState we gave Graph; the secret itself is not stored


@dataclass(frozen=True)
class Link:
    """One CRM activity and the Graph item it is synced with, plus the *base* of the last sync.

    ``base_hashes`` maps a field name to the hash of its normalized value after the last sync: the three-way
    merge compares each side against it to tell which side changed which field.
    """

    user_id: str
    crm_id: str
    graph_id: str  # the Graph immutable id
    ical_uid: str | None = None
    change_key: str | None = None  # Graph changeKey of the version we last saw or wrote
    crm_version: str | None = None  # the CRM version we last saw or wrote (opaque)
    base_hashes: dict[str, str] = field(default_factory=dict)
    series_master_id: str | None = None  # for an occurrence or exception: the Graph id of its series
    # The attendee lists both sides held after the last sync, as canonical JSON written and read only by
    # ``sync_core.domain.hashing.Base`` (attendees merge one by one, which needs the lists, not a hash).
    # None: unknown (an older link); the merge then re-baselines attendees from what it sees.
    base_attendees: str | None = None
    # A series' touched occurrences each side held after the last sync, as canonical JSON written and read
    # only by ``hashing.Base`` (overrides and cancellations merge occurrence by occurrence). None: a single
    # item, or a series linked before this was kept; its occurrence fields then merge whole.
    base_occurrences: str | None = None
    # Set when this user's event is a copy of a meeting whose CRM activity another connected user owns
    # (matched by iCalUId): the CRM user id of that owner. Such a link never writes or deletes in the CRM;
    # the owner's own link keeps the activity in sync. None: this user owns the activity.
    crm_owner_id: str | None = None
    # The CRM's ``modifiedAt`` of the version this link was synced with: a push older than that (a late
    # retry) is stale and never applied.
    crm_modified_at: datetime | None = None


@dataclass(frozen=True)
class Cursor:
    """Where a user's delta query stopped: Graph's deltaLink for one resource kind."""

    user_id: str
    resource: str  # e.g. "events"
    delta_link: str


class OutboxOperation(enum.Enum):
    UPSERT = "upsert"
    DELETE = "delete"


@dataclass(frozen=True)
class OutboxEntry:
    """A change the CRM pushed that the next sync run must apply; one per activity, the newest wins."""

    user_id: str
    crm_id: str
    operation: OutboxOperation
    payload_json: str | None  # the activity as the CRM sent it; None for a delete
    crm_version: str  # the CRM's version of the activity (opaque: equal or not, never ordered)
    received_at: datetime
    crm_modified_at: datetime | None = None  # upserts carry it; deletions need not

    def supersedes(self, other: OutboxEntry) -> bool:
        """True when this change should replace ``other`` (the same activity's change already waiting).

        A deletion is final: it replaces any waiting change, and no upsert replaces a waiting deletion. Two
        upserts are ordered by the CRM's ``modifiedAt`` (versions are opaque and cannot be ordered); an
        upsert with an earlier ``modifiedAt`` (a retried older push), or the waiting version again, is
        ignored.
        """
        if other.operation is OutboxOperation.DELETE:
            return False
        if self.operation is OutboxOperation.DELETE:
            return True
        if self.crm_modified_at is None or other.crm_modified_at is None:
            return self.crm_version != other.crm_version
        if self.crm_modified_at == other.crm_modified_at:
            # Two writes within the CRM's clock resolution (milliseconds): pushes come in order, so another
            # version arriving later is the newer one (the contract calls a push superseded only when a
            # *later* modifiedAt waits); the same version again is a retry.
            return self.crm_version != other.crm_version
        return self.crm_modified_at > other.crm_modified_at


class SyncLogKind(enum.Enum):
    """What a sync log entry is about (docs/crm-contract.md §5, ``syncLog[].kind``)."""

    CONFLICT = "conflict"
    SKIPPED = "skipped"
    ERROR = "error"
    POISON = "poison"
    MASS_DELETION_GUARD = "mass_deletion_guard"


@dataclass(frozen=True)
class SyncLogEntry:
    """One line of a user's sync log: what happened to which item, and why (shown in the status)."""

    user_id: str
    at: datetime
    kind: SyncLogKind
    reason: str  # a stable code
    crm_id: str | None = None
    graph_id: str | None = None
    fields: tuple[str, ...] | None = None  # CRM field names, for conflicts
    resolution: str | None = None  # the conflict policy that decided
    message: str | None = None  # written by us, safe to show; never a remote body


@dataclass(frozen=True)
class Lease:
    """The right to run one user's sync, held by ``holder`` until ``expires_at`` unless renewed."""

    user_id: str
    holder: str  # who runs: e.g. "{instance}/{invocation id}"
    expires_at: datetime

    def is_live(self, now: datetime) -> bool:
        return now < self.expires_at
