"""What a burst of Graph notifications asks for, decided without I/O: which users to sync, which lifecycle
work to queue, and what to ignore.

Terminology
-----------
burst
    One POST from Graph: ``value[]`` may hold change and lifecycle items of several subscriptions.
clientState
    The per-subscription secret Graph echoes in every item. Only its SHA-256 is stored; an item is ours when
    the hash of what it carries equals the stored hash, compared in constant time.
unknown / forged
    An item whose subscription we do not hold (expired, deleted, or never ours), or whose clientState does not
    match: both are dropped and counted, never acted on.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from sync_core.domain.graph_payloads import LifecycleEvent, NotificationBatch
from sync_core.domain.state import SubscriptionRecord
from sync_core.domain.sync_message import SyncMessage, SyncReason

_LIFECYCLE_REASONS = {
    LifecycleEvent.REAUTHORIZATION_REQUIRED: SyncReason.REAUTHORIZATION_REQUIRED,
    LifecycleEvent.SUBSCRIPTION_REMOVED: SyncReason.SUBSCRIPTION_REMOVED,
    LifecycleEvent.MISSED: SyncReason.MISSED,
}


def client_state_hash(client_state: str) -> str:
    """What is stored of a clientState: its SHA-256, hex."""
    return hashlib.sha256(client_state.encode("utf-8")).hexdigest()


def client_state_matches(given: str | None, stored_hash: str) -> bool:
    """Whether ``given`` is the clientState whose hash is stored; constant time in the compared bytes."""
    if given is None:
        return False
    return hmac.compare_digest(client_state_hash(given).encode("ascii"), stored_hash.encode("ascii"))


def subscription_ids(batch: NotificationBatch) -> tuple[str, ...]:
    """The distinct subscriptions a burst names, first seen first: one point read each."""
    ids = [change.subscription_id for change in batch.changes]
    ids += [item.subscription_id for item in batch.lifecycle]
    return tuple(dict.fromkeys(ids))


@dataclass(frozen=True)
class Triage:
    users: tuple[str, ...]  # users with at least one accepted change item, first seen first
    lifecycle: tuple[SyncMessage, ...]  # one message per accepted (subscription, lifecycle event)
    accepted: int  # items accepted (change and lifecycle)
    unknown: int  # items of subscriptions we do not hold
    forged: int  # items whose clientState does not match
    forged_subscriptions: tuple[str, ...]  # our subscription ids that received a wrong clientState


def triage(batch: NotificationBatch, records: Mapping[str, SubscriptionRecord | None]) -> Triage:
    """Sort a burst: ``records`` maps every id of ``subscription_ids(batch)`` to its record, or None."""
    unknown = forged = 0
    forged_ids: dict[str, None] = {}
    users: dict[str, None] = {}
    lifecycle: dict[tuple[str, LifecycleEvent], SyncMessage] = {}

    def owner(subscription_id: str, client_state: str | None) -> str | None:
        nonlocal unknown, forged
        record = records.get(subscription_id)
        if record is None:
            unknown += 1
            return None
        if not client_state_matches(client_state, record.client_state_hash):
            forged += 1
            forged_ids[subscription_id] = None
            return None
        return record.user_id

    for change in batch.changes:
        user = owner(change.subscription_id, change.client_state)
        if user is not None:
            users[user] = None
    for item in batch.lifecycle:
        user = owner(item.subscription_id, item.client_state)
        if user is not None:
            message = SyncMessage.of(user, _LIFECYCLE_REASONS[item.event], item.subscription_id)
            lifecycle.setdefault((item.subscription_id, item.event), message)
    total = len(batch.changes) + len(batch.lifecycle)
    return Triage(
        users=tuple(users),
        lifecycle=tuple(lifecycle.values()),
        accepted=total - unknown - forged,
        unknown=unknown,
        forged=forged,
        forged_subscriptions=tuple(forged_ids),
    )
