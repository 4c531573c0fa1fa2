"""Microsoft Graph over ``requests``: a user's bearer token, immutable ids, typed errors, and retries whose
decisions live in one place (``sync_core.domain.retry_policy``).

Every request carries ``Prefer: IdType="ImmutableId"`` so ids never change when an item moves. Answers are
translated here into ``sync_core.errors`` (401 → ``AuthenticationError``, 404 → ``ItemGoneError``, 410 →
``DeltaExpiredError``, 429/503 → ``ThrottledError`` with the capped ``Retry-After``, other 5xx and network
failures → ``TransientRemoteError``, other 4xx → ``RemoteRejectedError``), naming Graph's error code only:
Graph's messages can quote request data. Logs carry method, path without query, status and stable ids.

Later features add delta paging and ``$batch`` here; so far it has what subscriptions need: create, renew
(PATCH, which also reauthorizes) and delete change-notification subscriptions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from sync_core.domain.graph_payloads import SubscriptionInfo, parse_error_body, parse_subscription
from sync_core.domain.retry_policy import RetryPolicy, capped, next_delay, parse_retry_after
from sync_core.errors import (
    AuthenticationError,
    DeltaExpiredError,
    InvalidRequestError,
    ItemGoneError,
    RemoteError,
    RemoteRejectedError,
    ThrottledError,
    TransientRemoteError,
)

log = logging.getLogger(__name__)

AccessToken = Callable[[], str]
_IMMUTABLE_IDS = 'IdType="ImmutableId"'
_DEFAULT_TIMEOUT = (5.0, 30.0)


class GraphClient:
    """Graph calls on behalf of one user at a time: each call takes the user's token provider."""

    def __init__(
        self,
        base_url: str,
        session: requests.Session,
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        timeout: tuple[float, float] = _DEFAULT_TIMEOUT,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._session = session
        self._policy = policy
        self._sleep = sleep
        self._timeout = timeout

    # --- subscriptions ---

    def create_subscription(self, token: AccessToken, subscription: Mapping[str, Any]) -> SubscriptionInfo:
        """POST /subscriptions (Graph runs the validation handshake against the notification URLs first).

        Not replay-safe: a create that may have happened is not sent again (only a 429 is retried)."""
        body = self.request("POST", "/subscriptions", token, body=subscription, replay_safe=False)
        try:
            return parse_subscription(body)
        except InvalidRequestError as error:
            raise RemoteRejectedError("Graph answered a malformed subscription", code="malformed") from error

    def renew_subscription(
        self, token: AccessToken, subscription_id: str, expires_at: datetime
    ) -> SubscriptionInfo:
        """PATCH /subscriptions/{id} with a new ``expirationDateTime``; this also reauthorizes it.

        Replay-safe (the same PATCH twice sets the same expiry). 404 → ``ItemGoneError``: Graph dropped it."""
        body = {"expirationDateTime": expires_at.astimezone(UTC).isoformat()}
        answer = self.request(
            "PATCH", f"/subscriptions/{quote(subscription_id, safe='')}", token, body=body, replay_safe=True
        )
        try:
            return parse_subscription(answer)
        except InvalidRequestError as error:
            raise RemoteRejectedError("Graph answered a malformed subscription", code="malformed") from error

    def delete_subscription(self, token: AccessToken, subscription_id: str) -> bool:
        """DELETE /subscriptions/{id}; False when Graph no longer had it (already gone counts as done)."""
        try:
            self.request(
                "DELETE", f"/subscriptions/{quote(subscription_id, safe='')}", token, replay_safe=True
            )
        except ItemGoneError:
            return False
        return True

    # --- the one request loop ---

    def request(
        self,
        method: str,
        path_or_url: str,
        token: AccessToken,
        *,
        body: Mapping[str, Any] | None = None,
        replay_safe: bool,
    ) -> Any:
        """Send one logical request (retrying as the policy says); the parsed JSON answer, or None."""
        url = path_or_url if "://" in path_or_url else self._base_url + path_or_url
        path = urlsplit(url).path
        headers = {
            "Authorization": f"Bearer {token()}",
            "Prefer": _IMMUTABLE_IDS,
            "Accept": "application/json",
        }
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._session.request(
                    method,
                    url,
                    json=None if body is None else dict(body),
                    headers=headers,
                    timeout=self._timeout,
                )
            except requests.RequestException as error:
                delay = next_delay(self._policy, attempt, None, None, replay_safe=replay_safe)
                if delay is None:
                    raise TransientRemoteError(
                        f"Graph {method} {path}: no answer ({type(error).__name__})"
                    ) from error
                log.info("graph: %s %s got no answer; retrying in %.1fs", method, path, delay)
                self._sleep(delay)
                continue
            status = response.status_code
            if status < 400:
                log.debug("graph: %s %s → %s", method, path, status)
                return response.json() if response.content else None
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            delay = next_delay(self._policy, attempt, status, retry_after, replay_safe=replay_safe)
            if delay is None:
                raise _error_for(method, path, response, capped(retry_after, self._policy))
            log.info("graph: %s %s → %s; retrying in %.1fs", method, path, status, delay)
            self._sleep(delay)


def _error_for(method: str, path: str, response: requests.Response, retry_after: float) -> RemoteError:
    status = response.status_code
    try:
        code = parse_error_body(response.json()).code
    except ValueError:
        code = "unknown"
    what = f"Graph {method} {path}: HTTP {status} {code}"
    log.warning("graph: %s %s → %s %s", method, path, status, code)
    if status in (429, 503):
        return ThrottledError(what, retry_after=retry_after, status=status)
    if status == 401:
        return AuthenticationError(what, status=status, code=code)
    if status == 404:
        return ItemGoneError(what, status=status, code=code)
    if status == 410:
        return DeltaExpiredError(what, status=status, code=code)
    if status >= 500:
        return TransientRemoteError(what, status=status, code=code)
    return RemoteRejectedError(what, status=status, code=code)
