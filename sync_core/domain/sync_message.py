"""The ``sync`` queue's message: which user to sync, and why (pure: no I/O).

On the wire it is ``{"user": crmUserId, "reason": "...", "subscription": id}`` (``subscription`` only for
lifecycle work), JSON, base64-encoded by the queue client as the Functions queue trigger expects. The reason
is for logs and for the run to pick its work: a lifecycle reason makes the run repair the named subscription
before it syncs. Unknown reasons are kept as they are (a newer sender, a hand-made message): any message that
names a user is a request to sync that user.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass

from sync_core.errors import InvalidRequestError

_REASON = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
UNSPECIFIED = "unspecified"


class SyncReason(enum.Enum):
    CONNECTED = "connected"  # the first sync after connecting
    NOTIFICATION = "notification"  # Graph said something changed
    MISSED = "missed"  # lifecycle: Graph dropped notifications; resync with delta
    SUBSCRIPTION_REMOVED = "subscription_removed"  # lifecycle: recreate the subscription, then resync
    REAUTHORIZATION_REQUIRED = "reauthorization_required"  # lifecycle: renew the subscription (reauthorizes)
    SWEEP = "sweep"  # the safety sweep: no good sync for a while
    OUTBOX = "outbox"  # the safety sweep: CRM changes are waiting
    CRM_CHANGE = "crm_change"  # the CRM pushed a change or deletion of an activity (its outbox)


# Reasons whose run first repairs the subscription named in the message.
SUBSCRIPTION_REPAIRS = frozenset(
    {SyncReason.SUBSCRIPTION_REMOVED.value, SyncReason.REAUTHORIZATION_REQUIRED.value}
)


@dataclass(frozen=True)
class SyncMessage:
    user: str
    reason: str = UNSPECIFIED
    subscription_id: str | None = None

    @classmethod
    def of(cls, user: str, reason: SyncReason, subscription_id: str | None = None) -> SyncMessage:
        return cls(user, reason.value, subscription_id)

    def body(self) -> dict[str, str]:
        body = {"user": self.user, "reason": self.reason}
        if self.subscription_id is not None:
            body["subscription"] = self.subscription_id
        return body

    @property
    def repairs_subscription(self) -> bool:
        return self.reason in SUBSCRIPTION_REPAIRS and self.subscription_id is not None


def parse_sync_message(body: bytes) -> SyncMessage:
    """A queued message; one that names no user raises ``InvalidRequestError`` (and so ends in poison)."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        message = None
    user = message.get("user") if isinstance(message, dict) else None
    if not isinstance(user, str) or not user:
        raise InvalidRequestError("not a sync message", {"user": "is required"})
    assert isinstance(message, dict)
    reason = message.get("reason")
    subscription = message.get("subscription")
    return SyncMessage(
        user=user,
        reason=reason if isinstance(reason, str) and _REASON.match(reason) else UNSPECIFIED,
        subscription_id=subscription if isinstance(subscription, str) and subscription else None,
    )
