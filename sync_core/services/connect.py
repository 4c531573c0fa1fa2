"""Connecting and disconnecting CRM users: the sign-in trip, admin consent, disconnect, status, and the
"is the grant still good?" check every run starts with.

Each use case gathers (stores, the sign-in's answer), decides with ``sync_core.domain.connect`` (allowed
return URLs, the reason a trip failed, whether an account may connect), then applies (tokens, connection,
subscriptions, first sync, the CRM's connection event). Failed trips store nothing: the single-use state row
is consumed, and that is all.

The trip (docs/security.md has the why):
1. ``start``: the CRM asks for an authorize URL. A state row (id, CRM user, return URL, the MSAL flow with the
   PKCE verifier — encrypted, bound to the state id) is stored for ``OAUTH_STATE_TTL_SECONDS``; the ``state``
   parameter is a sealed ticket naming that row.
2. ``finish``: Entra ID posts the answer to ``/api/auth/callback``. The ticket is unsealed (not ours → a plain
   error page: nowhere is safe to redirect to), the row consumed exactly once (gone or expired →
   ``state_invalid`` at the CRM page), the code redeemed by MSAL (PKCE and nonce checked), the account checked
   (personal account, wrong tenant), and only then is anything stored.

Seams to later features: ``SubscriptionManager`` (subscriptions feature), the ``sync`` queue message
``{"user", "reason": "connected"}`` (the reconcile feature), ``check_access`` (what every run calls first).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from sync_core.adapters.identity import IdentityClient, SignInFailed, UserTokens
from sync_core.adapters.tables import TableStorage
from sync_core.adapters.token_cipher import TokenCipher
from sync_core.config import Settings
from sync_core.domain.connect import (
    AdminConsent,
    BrowserOutcome,
    ConnectBody,
    ConnectFailure,
    DisconnectBody,
    Page,
    SignedInAccount,
    StateTicket,
    TripKind,
    aadsts_codes,
    account_from_id_token,
    check_return_url,
    classify_account,
    classify_authorize_error,
    classify_redemption_error,
    expected_tenant_id,
    url_with_outcome,
)
from sync_core.domain.connection_view import (
    ConnectionEvent,
    connected_event,
    disconnected_event,
    iso_ms,
    reconnect_required_event,
    status_view,
)
from sync_core.domain.payloads import check_id, validated
from sync_core.domain.state import Connection, ConnectionState, ErrorRecord, OAuthState
from sync_core.errors import (
    ConflictError,
    NotFoundError,
    SyncError,
    TokenCacheUnreadableError,
    TokenRevokedError,
)

log = logging.getLogger(__name__)

# Associated data for what the state cipher seals. '/' never occurs in a CRM user id (contract §1), so these
# can never equal a token cache's binding ("msal-token-cache:" + user id).
_TICKET_BINDING = "oauth-state/ticket"
_MAX_STATE_LENGTH = 4096
_ERROR_NAME = re.compile(r"^[a-z_]{1,64}$")
_MAX_ATTEMPTS = 5
_REVOKED_MESSAGE = "Microsoft 365 no longer accepts this connection; the user has to connect again."
_UNREADABLE_MESSAGE = (
    "The stored sign-in cannot be read (encryption key removed?); the user has to connect again."
)


class SubscriptionManager(Protocol):
    """A user's Graph change-notification subscriptions (``sync_core.services.subscriptions``)."""

    def create_for_user(self, user_id: str) -> None: ...

    def delete_for_user(self, user_id: str) -> None: ...


class EventSink(Protocol):
    """Where connection events go: the CRM (``sync_core.adapters.crm.CrmClient``)."""

    def notify(self, event: ConnectionEvent) -> None: ...


class WorkQueue(Protocol):
    def send(
        self, name: str, payload: Mapping[str, object], visibility_timeout: int | None = None
    ) -> str: ...


@dataclass(frozen=True)
class ConnectStarted:
    authorize_url: str
    expires_at: datetime

    def as_json(self) -> dict[str, str]:
        return {"authorizeUrl": self.authorize_url, "expiresAt": iso_ms(self.expires_at)}


class ConnectService:
    def __init__(
        self,
        *,
        settings: Settings,
        tables: TableStorage,
        identity: IdentityClient,
        tokens: UserTokens,
        cipher: TokenCipher,
        subscriptions: SubscriptionManager,
        events: EventSink,
        queue: WorkQueue,
        clock: Callable[[], datetime],
    ) -> None:
        self._settings = settings
        self._tables = tables
        self._identity = identity
        self._tokens = tokens
        self._cipher = cipher
        self._subscriptions = subscriptions
        self._events = events
        self._queue = queue
        self._clock = clock
        self._expected_tenant = expected_tenant_id(settings.tenant_id, settings.single_tenant)

    # --- connect: the CRM asks for an authorize URL ------------------------------------------------------

    def start(self, user_id: str, body: Mapping[str, Any]) -> ConnectStarted:
        check_id(user_id, "crmUserId")
        request = validated(ConnectBody, body)
        return_url = check_return_url(request.return_url, self._settings.crm_return_url_origin)
        state_id = secrets.token_urlsafe(32)
        state = self._seal(StateTicket(state_id, TripKind.SIGN_IN, user_id, return_url))
        flow = self._identity.start_sign_in(state=state, login_hint=request.login_hint)
        now = self._clock()
        expires_at = now + timedelta(seconds=self._settings.oauth_state_ttl_seconds)
        sealed_flow = self._cipher.encrypt(
            json.dumps({"kind": TripKind.SIGN_IN.value, "flow": flow}).encode("utf-8"),
            user_id=_flow_binding(state_id),
        )
        self._tables.oauth_states.put(OAuthState(state_id, user_id, return_url, sealed_flow, now, expires_at))
        log.info("connect: user %s started signing in", user_id)
        return ConnectStarted(str(flow["auth_uri"]), expires_at)

    # --- admin consent: an administrator is sent to Entra's tenant-wide consent page -----------------------

    def start_admin_consent(self, params: Mapping[str, str]) -> BrowserOutcome:
        return_url = params.get("returnUrl")
        if return_url is not None:
            check_return_url(return_url, self._settings.crm_return_url_origin)
        state_id = secrets.token_urlsafe(32)
        state = self._seal(StateTicket(state_id, TripKind.ADMIN_CONSENT, None, return_url))
        now = self._clock()
        sealed = self._cipher.encrypt(
            json.dumps({"kind": TripKind.ADMIN_CONSENT.value}).encode("utf-8"),
            user_id=_flow_binding(state_id),
        )
        expires_at = now + timedelta(seconds=self._settings.oauth_state_ttl_seconds)
        self._tables.oauth_states.put(OAuthState(state_id, "", return_url or "", sealed, now, expires_at))
        log.info("admin consent: started")
        return BrowserOutcome(redirect_url=self._identity.admin_consent_url(state=state))

    # --- the callback: Entra ID sends the browser back -----------------------------------------------------

    def finish(self, params: Mapping[str, str]) -> BrowserOutcome:
        """Where the browser goes after the sign-in or consent trip; never raises for the trip's failures."""
        ticket = self._unseal(params.get("state", ""))
        if ticket is None:
            log.warning("callback: the state is not one of ours (forged, garbled or from another deployment)")
            return BrowserOutcome(page=Page.LINK_INVALID, reason=ConnectFailure.STATE_INVALID)
        try:
            return self._finish(ticket, params)
        except Exception as error:  # the browser must land on a page either way; the log says what broke
            _log_failure("callback", error)
            return self._back(ticket, ConnectFailure.INTERNAL)

    def _finish(self, ticket: StateTicket, params: Mapping[str, str]) -> BrowserOutcome:
        try:
            state = self._tables.oauth_states.consume(ticket.state_id, self._clock())
        except NotFoundError:
            log.warning("callback: a state was replayed or expired (user %s)", ticket.crm_user_id or "-")
            return self._back(ticket, ConnectFailure.STATE_INVALID)
        if (state.crm_user_id, state.return_url) != (ticket.crm_user_id or "", ticket.return_url or ""):
            log.warning(
                "callback: a state row does not match its ticket (user %s)", ticket.crm_user_id or "-"
            )
            return self._back(ticket, ConnectFailure.STATE_INVALID)
        trip = json.loads(self._cipher.decrypt(state.flow, user_id=_flow_binding(state.state_id)))
        if trip.get("kind") != ticket.kind.value:
            return self._back(ticket, ConnectFailure.STATE_INVALID)
        if ticket.kind is TripKind.ADMIN_CONSENT:
            return self._finish_admin_consent(ticket, params)
        assert ticket.crm_user_id is not None  # sign-in tickets always name the user
        return self._finish_sign_in(ticket, ticket.crm_user_id, trip["flow"], params)

    def _finish_sign_in(
        self, ticket: StateTicket, user_id: str, flow: dict[str, Any], params: Mapping[str, str]
    ) -> BrowserOutcome:
        error = params.get("error")
        if error:
            codes = aadsts_codes(params.get("error_description"))
            failure = classify_authorize_error(error, codes, params.get("error_subcode"))
            log.info(
                "connect: user %s: sign-in ended with %s %s → %s",
                user_id,
                _safe_word(error),
                sorted(codes),
                failure.value,
            )
            return self._back(ticket, failure)
        if not params.get("code"):
            return self._back(ticket, ConnectFailure.STATE_INVALID)
        result = self._identity.finish_sign_in(flow, params)
        if isinstance(result, SignInFailed):
            failure = (
                ConnectFailure.STATE_INVALID
                if result.error == "invalid_response"
                else classify_redemption_error(result.error, result.codes)
            )
            log.warning(
                "connect: user %s: the code was not redeemed (%s %s) → %s",
                user_id,
                result.error,
                sorted(result.codes),
                failure.value,
            )
            return self._back(ticket, failure)
        account = account_from_id_token(result.claims, self._settings.client_id, result.home_account_id)
        if account is None:
            log.error("connect: user %s: the ID token is not for this app or lacks tid/oid", user_id)
            return self._back(ticket, ConnectFailure.INTERNAL)
        refused = classify_account(account.tenant_id, self._expected_tenant)
        if refused is not None:
            log.info(
                "connect: user %s: account of tenant %s refused (%s)",
                user_id,
                account.tenant_id,
                refused.value,
            )
            return self._back(ticket, refused)
        self._connect(user_id, account, result.serialized_cache)
        return self._back(ticket, None)

    def _connect(self, user_id: str, account: SignedInAccount, serialized_cache: str) -> None:
        """Apply a successful sign-in: tokens, connection, subscriptions, first sync, the CRM's event."""
        now = self._clock()
        previous = self._tables.connections.get(user_id)
        if previous is not None and previous.value.state is not ConnectionState.DISCONNECTED:
            # Connecting again (another account, or after a revoked grant): the old subscriptions belong to
            # the old grant, so they go first, while its tokens are still stored.
            self._best_effort(
                "deleting the previous subscriptions", user_id, self._subscriptions.delete_for_user
            )
        self._tokens.save_new(user_id, serialized_cache)
        switched = previous is not None and previous.value.account_oid not in (None, account.object_id)
        if switched:
            # Delta links and links belong to the other mailbox.
            self._tables.cursors.purge_user(user_id)
            self._tables.links.purge_user(user_id)
        self._update_connection(user_id, lambda current: _connected(user_id, current, account, now, switched))
        log.info("connect: user %s connected (tenant %s)", user_id, account.tenant_id)
        try:
            self._subscriptions.create_for_user(user_id)
        except SyncError as error:
            _log_failure(f"connect: user {user_id}: creating the subscription", error)
            failed = ErrorRecord(now, "subscription_failed", "Change notifications could not be set up yet.")
            self._update_connection(
                user_id, lambda current: replace(_require(current, user_id), last_error=failed)
            )
        self._best_effort(
            "queuing the first sync",
            user_id,
            lambda uid: self._queue.send(
                self._settings.sync_queue_name, {"user": uid, "reason": "connected"}
            ),
        )
        self._notify(connected_event(user_id, account.upn, account.tenant_id, now))

    def _finish_admin_consent(self, ticket: StateTicket, params: Mapping[str, str]) -> BrowserOutcome:
        error = params.get("error")
        if error:
            codes = aadsts_codes(params.get("error_description"))
            failure = classify_authorize_error(error, codes, params.get("error_subcode"))
            log.info("admin consent: ended with %s %s → %s", _safe_word(error), sorted(codes), failure.value)
            return self._back(ticket, failure)
        tenant_id = params.get("tenant", "")
        if params.get("admin_consent", "").lower() != "true" or not tenant_id:
            return self._back(ticket, ConnectFailure.INTERNAL)
        refused = classify_account(tenant_id, self._expected_tenant)
        if refused is not None:
            log.info("admin consent: tenant %s refused (%s)", tenant_id, refused.value)
            return self._back(ticket, refused)
        scopes = tuple(params.get("scope", "").split())
        self._tables.admin_consents.record(AdminConsent(tenant_id, self._clock(), scopes))
        log.info("admin consent: granted for tenant %s (%d permissions)", tenant_id, len(scopes))
        return self._back(ticket, None)

    # --- disconnect and status ---------------------------------------------------------------------------

    def disconnect(self, user_id: str, body: Mapping[str, Any]) -> None:
        """Delete the user's subscriptions and tokens (and with ``purge`` links and cursors); idempotent."""
        check_id(user_id, "crmUserId")
        purge = validated(DisconnectBody, body).purge
        current = self._tables.connections.get(user_id)
        self._subscriptions.delete_for_user(user_id)
        self._tokens.delete(user_id)
        if purge:
            self._tables.links.purge_user(user_id)
            self._tables.cursors.purge_user(user_id)
            self._tables.sync_log.purge_user(user_id)
            if current is not None:
                self._tables.connections.delete(user_id)
        elif current is not None and current.value.state is not ConnectionState.DISCONNECTED:
            self._update_connection(user_id, _disconnected)
        log.info("disconnect: user %s disconnected (purge %s)", user_id, purge)
        if current is not None and current.value.state is not ConnectionState.DISCONNECTED:
            self._notify(disconnected_event(user_id, purge, self._clock()))

    def status(self, user_id: str) -> dict[str, Any]:
        check_id(user_id, "crmUserId")
        connection = self._tables.connections.get(user_id)
        subscriptions = [record.value for record in self._tables.subscriptions.list_for_user(user_id)]
        pending = len(self._tables.outbox.list_for_user(user_id))
        return status_view(
            user_id,
            None if connection is None else connection.value,
            subscriptions,
            pending,
            self._settings.sync.direction,
            self._clock(),
            self._tables.sync_log.recent(user_id),
        )

    # --- the grant check every run starts with -----------------------------------------------------------

    def check_access(self, user_id: str) -> bool:
        """True when the user's grant still yields an access token (refreshing silently when due).

        A revoked or expired grant (``invalid_grant``) or an unreadable cache turns the connection into
        ``reconnect_required`` and tells the CRM, once. Users who are not connected are skipped (False).
        """
        current = self._tables.connections.get(user_id)
        if current is None or current.value.state not in {ConnectionState.CONNECTED, ConnectionState.ERROR}:
            log.info("access: user %s is not connected; nothing to do", user_id)
            return False
        try:
            self._tokens.access_token(user_id, current.value.home_account_id)
        except TokenRevokedError as error:
            log.warning(
                "access: user %s: the grant stopped working (%s)", user_id, error.code or "invalid_grant"
            )
            self._require_reconnect(user_id, "token_revoked", _REVOKED_MESSAGE)
            return False
        except TokenCacheUnreadableError:
            log.error("access: user %s: the token cache cannot be decrypted", user_id)
            self._require_reconnect(user_id, "token_unreadable", _UNREADABLE_MESSAGE)
            return False
        return True

    def _require_reconnect(self, user_id: str, reason: str, message: str) -> None:
        now = self._clock()

        def required(current: Connection | None) -> Connection | None:
            if current is None or current.state not in {ConnectionState.CONNECTED, ConnectionState.ERROR}:
                return None  # already told, or disconnected meanwhile
            failure = ErrorRecord(now, reason, message)
            return replace(current, state=ConnectionState.RECONNECT_REQUIRED, last_error=failure)

        if self._update_connection(user_id, required):
            self._notify(reconnect_required_event(user_id, reason, now))

    # --- helpers -------------------------------------------------------------------------------------------

    def _update_connection(
        self, user_id: str, change: Callable[[Connection | None], Connection | None]
    ) -> bool:
        """Read-modify-write the user's connection under its ETag (``change`` returns None: nothing to do)."""
        connections = self._tables.connections
        for _attempt in range(_MAX_ATTEMPTS):
            current = connections.get(user_id)
            updated = change(None if current is None else current.value)
            if updated is None:
                return False
            try:
                connections.put(updated, etag=None if current is None else current.etag)
            except ConflictError:
                continue  # changed meanwhile (a run marked the user dirty, say): decide again
            return True
        raise ConflictError(f"connections: user {user_id} kept changing")

    def _notify(self, event: ConnectionEvent) -> None:
        """Tell the CRM; a CRM that stays unreachable after the client's retries does not undo the change."""
        self._best_effort(
            f"telling the CRM '{event.type.value}'", event.crm_user_id, lambda _: self._events.notify(event)
        )

    def _best_effort(self, what: str, user_id: str, action: Callable[[str], object]) -> None:
        try:
            action(user_id)
        except SyncError as error:
            _log_failure(f"user {user_id}: {what}", error)

    def _back(self, ticket: StateTicket, failure: ConnectFailure | None) -> BrowserOutcome:
        success = "connected" if ticket.kind is TripKind.SIGN_IN else "consented"
        if ticket.return_url:
            return BrowserOutcome(redirect_url=url_with_outcome(ticket.return_url, failure, success=success))
        if failure is None:
            return BrowserOutcome(page=Page.ADMIN_CONSENT_GRANTED)
        return BrowserOutcome(page=Page.ADMIN_CONSENT_FAILED, reason=failure)

    def _seal(self, ticket: StateTicket) -> str:
        sealed = self._cipher.encrypt(ticket.to_bytes(), user_id=_TICKET_BINDING)
        return base64.urlsafe_b64encode(sealed).decode("ascii").rstrip("=")

    def _unseal(self, state: str) -> StateTicket | None:
        if not state or len(state) > _MAX_STATE_LENGTH:
            return None
        try:
            sealed = base64.urlsafe_b64decode(state + "=" * (-len(state) % 4))
            return StateTicket.from_bytes(self._cipher.decrypt(sealed, user_id=_TICKET_BINDING))
        except (binascii.Error, ValueError, TokenCacheUnreadableError):
            return None


def _safe_word(value: str) -> str:
    """An OAuth error name from the browser, fit for a log line (anything else is not repeated)."""
    return value if _ERROR_NAME.match(value) else "(unrecognised error)"


def _flow_binding(state_id: str) -> str:
    return f"oauth-state/{state_id}"


def _require(current: Connection | None, user_id: str) -> Connection:
    if current is None:
        raise NotFoundError(f"connections: user {user_id} vanished while connecting")
    return current


def _connected(
    user_id: str, current: Connection | None, account: SignedInAccount, now: datetime, switched: bool
) -> Connection:
    base = current if current is not None and not switched else Connection(user_id, ConnectionState.CONNECTED)
    return replace(
        base,
        state=ConnectionState.CONNECTED,
        tenant_id=account.tenant_id,
        account_oid=account.object_id,
        upn=account.upn,
        home_account_id=account.home_account_id,
        connected_since=now,
        last_error=None,
    )


def _disconnected(current: Connection | None) -> Connection | None:
    if current is None or current.state is ConnectionState.DISCONNECTED:
        return None
    return replace(
        current,
        state=ConnectionState.DISCONNECTED,
        tenant_id=None,
        account_oid=None,
        upn=None,
        home_account_id=None,
        connected_since=None,
        last_error=None,
        dirty=False,
        dirty_since=None,
    )


def _log_failure(what: str, error: BaseException) -> None:
    """What failed and where. Errors of the tree carry messages we wrote; for anything else only the class
    and the traceback's frames are logged, not its message (it may quote a remote answer or a token)."""
    if isinstance(error, SyncError):  # our own messages: stable ids and codes, never remote text or tokens
        log.warning("%s failed: %s: %s", what, type(error).__name__, error)
        return
    frames = "".join(traceback.format_tb(error.__traceback__))
    log.error("%s failed: %s\n%s", what, type(error).__name__, frames)
