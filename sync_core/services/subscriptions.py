"""A user's Graph change-notification subscriptions: created on connect, kept alive by the renewal timer,
repaired after lifecycle notifications, deleted on disconnect.

Every subscription is created with a ``lifecycleNotificationUrl`` (it cannot be added later), a fresh random
clientState of its own (only its SHA-256 is stored), immutable ids (``Prefer: IdType="ImmutableId"``, sent by
``GraphClient`` on every request) and the longest lifetime Graph allows: ``SUBSCRIPTION_MAX_LIFETIME_MINUTES``
first, then Graph's known shorter maxima when Graph answers 400 (``lifetimes_to_try``).

What a user's subscriptions need is decided in ``sync_core.domain.subscription_plan``; this module applies
the steps. Every store write is guarded (a record is created once, replaced or deleted only with the ETag it
was read with), so two instances running the same repair cannot corrupt each other's work: the loser's write
fails and it leaves the winner's result alone. Two instances creating the same missing subscription at once
make two; the next renewal keeps one and drops the other.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TypeVar

from sync_core.adapters.graph import AccessToken, GraphClient
from sync_core.adapters.identity import UserTokens
from sync_core.adapters.tables import ConnectionStore, SubscriptionStore
from sync_core.domain.graph_payloads import SubscriptionInfo
from sync_core.domain.state import Connection, ConnectionState, SubscriptionRecord, Versioned
from sync_core.domain.subscription_plan import (
    KINDS,
    LIFETIME_MARGIN,
    PlannedStep,
    Step,
    SubscriptionKind,
    lifetimes_to_try,
    plan_subscriptions,
)
from sync_core.domain.sync_message import SyncMessage, SyncReason
from sync_core.domain.webhook import client_state_hash
from sync_core.errors import (
    AuthenticationError,
    ConflictError,
    ItemGoneError,
    RemoteRejectedError,
    TokenCacheUnreadableError,
    TokenRevokedError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
LIVE_STATES = frozenset({ConnectionState.CONNECTED, ConnectionState.ERROR})
# Graph's answer when the validation handshake against our endpoints failed: a shorter lifetime cannot help.
_HANDSHAKE_FAILED = "ValidationError"


@dataclass(frozen=True)
class Changes:
    """What one pass over a user's subscriptions did."""

    renewed: int = 0
    recreated: int = 0
    created: int = 0
    dropped: int = 0

    def __add__(self, other: Changes) -> Changes:
        return Changes(
            self.renewed + other.renewed,
            self.recreated + other.recreated,
            self.created + other.created,
            self.dropped + other.dropped,
        )

    @property
    def any(self) -> bool:
        return bool(self.renewed or self.recreated or self.created or self.dropped)


class GraphSubscriptions:
    """A user's subscriptions at Graph and in the ``subscriptions`` table."""

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
        kinds: Sequence[SubscriptionKind] = KINDS,
    ) -> None:
        self._graph = graph
        self._tokens = tokens
        self._store = store
        self._connections = connections
        self._public_base_url = public_base_url.rstrip("/")
        self._lifetimes = lifetimes_to_try(max_lifetime_minutes)
        self._clock = clock
        self._kinds = tuple(kinds)

    # --- the connect service's seam ------------------------------------------------------------------------

    def create_for_user(self, user_id: str) -> None:
        """Subscribe to every kind for a user who just connected (Graph runs the validation handshake)."""
        connection = self._connections.get(user_id)
        if connection is None or connection.value.account_oid is None:
            raise TokenRevokedError(f"subscriptions: user {user_id} is not connected", code="not_connected")
        token = self._token_for(connection.value)
        for kind in self._kinds:
            self._create(connection.value, kind, token)

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

    # --- renewal and repair --------------------------------------------------------------------------------

    def maintain(
        self,
        connection: Connection,
        records: Sequence[Versioned[SubscriptionRecord]],
        renew_before: datetime,
    ) -> Changes:
        """Leave the user one live subscription per kind, none expiring before ``renew_before``.

        Asks Graph (and so for a token) only when something is to be done. A revoked grant raises
        ``TokenRevokedError``; any other failure raises too, after the steps before it were applied.
        """
        steps = plan_subscriptions(records, self._kinds, self._clock(), renew_before)
        if not steps:
            return Changes()
        token = self._token_for(connection)
        done = Changes()
        for step in steps:
            done += self._apply(connection, step, token)
        return done

    def repair(self, message: SyncMessage) -> Changes:
        """React to a lifecycle notification queued for a sync run (``SyncMessage.repairs_subscription``).

        ``reauthorizationRequired``: renew the subscription (a PATCH of the expiry reauthorizes it, too).
        ``subscriptionRemoved``: forget it and create a new one. Either way the user ends up with one live
        subscription per kind; a message handled before (a retry) finds the work done and changes nothing.
        """
        current = self._connections.get(message.user)
        if current is None or current.value.state not in LIVE_STATES or current.value.account_oid is None:
            log.info("subscriptions: user %s is not connected; no repair", message.user)
            return Changes()
        connection = current.value
        record = self._store.get(message.subscription_id) if message.subscription_id else None
        if record is not None and record.value.user_id != message.user:
            record = None  # not this user's: never touch it
        now = self._clock()
        done = Changes()
        if record is not None and message.reason == SyncReason.SUBSCRIPTION_REMOVED.value:
            done += Changes(dropped=int(self._forget(record)))
        elif record is not None and message.reason == SyncReason.REAUTHORIZATION_REQUIRED.value:
            # Renew even when not due: reauthorizing is the point. A record renewed by the renewal timer
            # meanwhile is renewed again, which is harmless.
            kind = next((kind for kind in self._kinds if kind.owns(record.value.resource)), None)
            if kind is not None and record.value.expires_at > now:
                token = self._token_for(connection)
                return self._apply(connection, PlannedStep(Step.RENEW, kind, record), token)
        records = self._store.list_for_user(message.user)
        return done + self.maintain(connection, records, renew_before=now)

    # --- steps ---------------------------------------------------------------------------------------------

    def _apply(self, connection: Connection, planned: PlannedStep, token: AccessToken) -> Changes:
        record = planned.record
        if planned.step is Step.CREATE:
            self._create(connection, planned.kind, token)
            return Changes(created=1)
        assert record is not None
        if planned.step is Step.RENEW:
            return self._renew(connection, planned.kind, record, token)
        if planned.step is Step.RECREATE:
            if self._forget(record):
                self._create(connection, planned.kind, token)
                return Changes(recreated=1)
            return Changes()  # another run got there first
        if record.value.expires_at > self._clock():  # a live duplicate: Graph has it too
            self._graph.delete_subscription(token, record.value.subscription_id)
        return Changes(dropped=int(self._forget(record)))

    def _renew(
        self,
        connection: Connection,
        kind: SubscriptionKind,
        record: Versioned[SubscriptionRecord],
        token: AccessToken,
    ) -> Changes:
        subscription_id = record.value.subscription_id
        try:
            renewed = self._with_lifetimes(
                "renewing",
                record.value.resource,
                lambda expiry: self._graph.renew_subscription(token, subscription_id, expiry),
            )
        except ItemGoneError:
            log.info(
                "subscriptions: Graph no longer has %s of user %s; recreating",
                subscription_id,
                connection.user_id,
            )
            if self._forget(record):
                self._create(connection, kind, token)
                return Changes(recreated=1)
            return Changes()
        try:
            self._store.put(replace(record.value, expires_at=renewed.expires_at), etag=record.etag)
        except ConflictError:
            log.info("subscriptions: %s was changed meanwhile; keeping that", subscription_id)
        log.debug("subscriptions: renewed %s of user %s", subscription_id, connection.user_id)
        return Changes(renewed=1)

    def _create(self, connection: Connection, kind: SubscriptionKind, token: AccessToken) -> SubscriptionInfo:
        if connection.account_oid is None:
            raise TokenRevokedError(
                f"subscriptions: user {connection.user_id} is not connected", code="not_connected"
            )
        resource = kind.resource(connection.account_oid)
        client_state = secrets.token_urlsafe(48)  # 64 characters; Graph allows 128
        created = self._with_lifetimes(
            "creating",
            resource,
            lambda expiry: self._graph.create_subscription(
                token,
                {
                    "changeType": ",".join(kind.change_types),
                    "notificationUrl": f"{self._public_base_url}/api/graph/notifications",
                    "lifecycleNotificationUrl": f"{self._public_base_url}/api/graph/lifecycle",
                    "resource": resource,
                    "expirationDateTime": expiry.isoformat(),
                    "clientState": client_state,
                },
            ),
        )
        self._store.put(
            SubscriptionRecord(
                subscription_id=created.id,
                user_id=connection.user_id,
                resource=resource,
                change_types=kind.change_types,
                expires_at=created.expires_at,
                client_state_hash=client_state_hash(client_state),
            )
        )
        log.info("subscriptions: created %s (%s) for user %s", created.id, kind.name, connection.user_id)
        return created

    def _forget(self, record: Versioned[SubscriptionRecord]) -> bool:
        """Delete our record of a subscription unless someone changed it since it was read."""
        try:
            self._store.delete(record.value, etag=record.etag)
        except ConflictError:
            return False
        return True

    def _with_lifetimes(self, what: str, resource: str, call: Callable[[datetime], T]) -> T:
        """``call(expiry)`` with the longest lifetime Graph accepts: a 400 (other than a failed handshake)
        is taken as "too long" and the next shorter lifetime is tried."""
        for index, lifetime in enumerate(self._lifetimes):
            try:
                result = call(self._clock() + lifetime)
            except RemoteRejectedError as error:
                shorter_left = index + 1 < len(self._lifetimes)
                if error.status != 400 or error.code == _HANDSHAKE_FAILED or not shorter_left:
                    raise
                continue
            if index:
                log.warning(
                    "subscriptions: Graph refused SUBSCRIPTION_MAX_LIFETIME_MINUTES for %s while %s; "
                    "used %d minutes",
                    _resource_kind(resource),
                    what,
                    (lifetime + LIFETIME_MARGIN) // timedelta(minutes=1),
                )
            return result
        raise AssertionError("lifetimes_to_try always yields at least one lifetime")

    def _token_for(self, connection: Connection) -> AccessToken:
        """The user's access token, fetched once for the steps of one pass (MSAL refreshes when due)."""
        fetched: list[str] = []

        def token() -> str:
            if not fetched:
                fetched.append(self._tokens.access_token(connection.user_id, connection.home_account_id))
            return fetched[0]

        return token


def _resource_kind(resource: str) -> str:
    """The last path segment (``events``): what a log line may say about a resource, never the user's id."""
    return resource.rstrip("/").rsplit("/", 1)[-1]
