"""A user's Graph change-notification subscriptions: created when the user connects, deleted when they leave.

This is the first, minimal implementation of the ``SubscriptionManager`` seam of the connect service:
create and delete, for real, against Graph. Renewal, reauthorization and recreation (the 6-hourly timer and
the lifecycle endpoint) belong to the subscriptions feature, which grows this module behind the same two
methods.

Terminology
-----------
clientState
    A secret we give Graph with each subscription; Graph echoes it in every notification, which is how ours
    are told from forgeries. Only its SHA-256 is stored; the secret lives in Graph alone.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from sync_core.adapters.graph import GraphClient
from sync_core.adapters.identity import UserTokens
from sync_core.adapters.tables import ConnectionStore, SubscriptionStore
from sync_core.domain.state import SubscriptionRecord
from sync_core.errors import AuthenticationError, TokenCacheUnreadableError, TokenRevokedError

log = logging.getLogger(__name__)

CHANGE_TYPES = ("created", "updated", "deleted")
# Asked-for lifetimes stay this far below the maximum, so clocks a little apart never exceed Graph's limit.
LIFETIME_MARGIN = timedelta(minutes=1)


def client_state_hash(client_state: str) -> str:
    return hashlib.sha256(client_state.encode("utf-8")).hexdigest()


class GraphSubscriptions:
    """Creates and deletes a user's calendar subscription at Graph and in the ``subscriptions`` table."""

    def __init__(
        self,
        graph: GraphClient,
        tokens: UserTokens,
        store: SubscriptionStore,
        connections: ConnectionStore,
        *,
        public_base_url: str,
        max_lifetime_minutes: int,
        clock: Callable[[], datetime],
    ) -> None:
        self._graph = graph
        self._tokens = tokens
        self._store = store
        self._connections = connections
        self._public_base_url = public_base_url.rstrip("/")
        self._lifetime = timedelta(minutes=max_lifetime_minutes) - LIFETIME_MARGIN
        self._clock = clock

    def create_for_user(self, user_id: str) -> None:
        """Subscribe to the user's calendar events (Graph runs the validation handshake first)."""
        connection = self._connections.get(user_id)
        if connection is None or connection.value.account_oid is None:
            raise TokenRevokedError(f"subscriptions: user {user_id} is not connected", code="not_connected")
        home_account_id = connection.value.home_account_id
        resource = f"/users/{connection.value.account_oid}/events"
        client_state = secrets.token_urlsafe(48)
        created = self._graph.create_subscription(
            lambda: self._tokens.access_token(user_id, home_account_id),
            {
                "changeType": ",".join(CHANGE_TYPES),
                "notificationUrl": f"{self._public_base_url}/api/graph/notifications",
                "lifecycleNotificationUrl": f"{self._public_base_url}/api/graph/lifecycle",
                "resource": resource,
                "expirationDateTime": (self._clock() + self._lifetime).isoformat(),
                "clientState": client_state,
            },
        )
        self._store.put(
            SubscriptionRecord(
                subscription_id=created.id,
                user_id=user_id,
                resource=resource,
                change_types=CHANGE_TYPES,
                expires_at=created.expires_at,
                client_state_hash=client_state_hash(client_state),
            )
        )
        log.info("subscriptions: created %s for user %s", created.id, user_id)

    def delete_for_user(self, user_id: str) -> None:
        """Delete every subscription of the user at Graph and here; ones Graph no longer has count as deleted.

        Without a working grant (revoked, no tokens) Graph cannot be asked: the rows go anyway, and Graph
        drops the subscriptions when they expire (three days at most); their notifications find no row.
        """
        records = self._store.list_for_user(user_id)
        if not records:
            return
        connection = self._connections.get(user_id)
        home_account_id = connection.value.home_account_id if connection is not None else None
        graph_reachable = True
        for record in records:
            if graph_reachable:
                try:
                    self._graph.delete_subscription(
                        lambda: self._tokens.access_token(user_id, home_account_id),
                        record.value.subscription_id,
                    )
                except (TokenRevokedError, TokenCacheUnreadableError, AuthenticationError) as error:
                    graph_reachable = False
                    log.warning(
                        "subscriptions: user %s has no working grant (%s); leaving Graph's copies to expire",
                        user_id,
                        type(error).__name__,
                    )
            self._store.delete(record.value)
            log.info("subscriptions: deleted %s of user %s", record.value.subscription_id, user_id)
