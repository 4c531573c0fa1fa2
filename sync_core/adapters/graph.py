"""Microsoft Graph over ``requests``: a user's bearer token, immutable ids, typed errors, and retries whose
decisions live in one place (``sync_core.domain.retry_policy``).

Every request carries ``Prefer: IdType="ImmutableId"`` so ids never change when an item moves. Answers are
translated here into ``sync_core.errors`` (401 → ``AuthenticationError``, 404 → ``ItemGoneError``, 410 →
``DeltaExpiredError``, 429/503 → ``ThrottledError`` with the capped ``Retry-After``, other 5xx and network
failures → ``TransientRemoteError``, other 4xx → ``RemoteRejectedError``), naming Graph's error code only:
Graph's messages can quote request data. Logs carry method, path without query, status and stable ids.

Subscriptions (create, renew — a PATCH, which also reauthorizes — and delete) and the calendar: the
``calendarView/delta`` pages of a round (streamed, one page at a time), single-event reads and writes, and
reads of many events by id through ``$batch``.
Event calls carry ``mapping.GRAPH_PREFER`` (immutable ids, text bodies, UTC times).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

import requests

from sync_core.domain.graph_payloads import (
    DeltaPage,
    GraphEvent,
    SubscriptionInfo,
    parse_delta_page,
    parse_error_body,
    parse_event,
    parse_subscription,
)
from sync_core.domain.mapping import GRAPH_PREFER
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


@runtime_checkable
class RefreshableToken(Protocol):
    """A token provider that can fetch a fresh token when Graph refused the one it gave (401): an access
    token can expire, or be revoked, between being cached and being used."""

    def __call__(self) -> str: ...

    def refresh(self) -> None: ...


_IMMUTABLE_IDS = 'IdType="ImmutableId"'
_DEFAULT_TIMEOUT = (5.0, 30.0)
# Events per delta page: big enough to keep requests per event low, small enough to keep a page in memory.
DELTA_PAGE_SIZE = 100
# Requests per ``$batch`` (Graph's limit).
BATCH_SIZE = 20
_EVENT_PREFER = tuple(value for value in GRAPH_PREFER if value != _IMMUTABLE_IDS)


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

    # --- calendar ---

    def calendar_delta_url(self, start: datetime, end: datetime) -> str:
        """The first URL of a full round over the primary calendar's view between ``start`` and ``end``."""
        return f"{self._base_url}/me/calendarView/delta?startDateTime={_iso(start)}&endDateTime={_iso(end)}"

    def delta_pages(self, token: AccessToken, url: str) -> Iterator[DeltaPage]:
        """The pages of one delta round from ``url`` (a saved deltaLink, or ``calendar_delta_url``), one at
        a time: the caller plans and saves each before the next is fetched, so memory stays flat. The last
        page carries the deltaLink to save. 410 or ``syncStateNotFound`` → ``DeltaExpiredError``."""
        next_url: str | None = url
        while next_url is not None:
            try:
                body = self.request(
                    "GET",
                    next_url,
                    token,
                    replay_safe=True,
                    prefer=(*_EVENT_PREFER, f"odata.maxpagesize={DELTA_PAGE_SIZE}"),
                )
            except RemoteRejectedError as error:
                if error.code in {"syncStateNotFound", "resyncRequired", "syncStateInvalid"}:
                    raise DeltaExpiredError(str(error), status=error.status, code=error.code) from error
                raise
            try:
                page = parse_delta_page(body)
            except InvalidRequestError as error:
                raise RemoteRejectedError(
                    "Graph answered a malformed delta page", code="malformed"
                ) from error
            yield page
            next_url = page.next_link

    def get_event(self, token: AccessToken, event_id: str) -> GraphEvent:
        """GET one event; 404 → ``ItemGoneError`` (deleted, or never there)."""
        body = self.request("GET", _event_path(event_id), token, replay_safe=True, prefer=_EVENT_PREFER)
        return _event(body)

    def list_instances(
        self, token: AccessToken, master_id: str, start: datetime, end: datetime, *, top: int, limit: int
    ) -> tuple[list[GraphEvent], bool, bool]:
        """The occurrences and exceptions of series ``master_id`` between ``start`` and ``end``, as Graph
        lists them (by start; ``/instances`` takes no ``$orderby``), following nextLinks, at most ``top`` a
        page and no further once ``limit`` are read. Also: whether every item was readable (False: one was
        malformed, so an absent occurrence must not be read as cancelled), and whether ``limit`` cut the
        list (later instances were not read). 404 → ``ItemGoneError``."""
        next_url: str | None = (
            f"{_event_path(master_id)}/instances?startDateTime={_iso(start)}&endDateTime={_iso(end)}"
            f"&$top={top}"
        )
        instances: list[GraphEvent] = []
        complete = True
        while next_url is not None:
            body = self.request("GET", next_url, token, replay_safe=True, prefer=_EVENT_PREFER)
            items = body.get("value") if isinstance(body, Mapping) else None
            if not isinstance(items, list):
                raise RemoteRejectedError("Graph answered a malformed instance list", code="malformed")
            for item in items:
                try:
                    instances.append(parse_event(item))
                except InvalidRequestError:
                    complete = False
            link = body.get("@odata.nextLink")
            next_url = link if isinstance(link, str) else None
            if next_url is not None and len(instances) >= limit:
                return instances, complete, True
        return instances, complete, False

    def get_events(self, token: AccessToken, event_ids: Sequence[str]) -> dict[str, GraphEvent | None]:
        """GET many events, ``BATCH_SIZE`` to a ``$batch`` request: each id → its event, or None when Graph
        answers 404 (deleted). An inner request that fails otherwise (an inner 429 or 5xx: Graph throttles
        each one on its own, and SDKs do not retry them) is sent again alone, with the usual retries."""
        found: dict[str, GraphEvent | None] = {}
        headers = {"Prefer": ", ".join((_IMMUTABLE_IDS, *_EVENT_PREFER))}
        for first in range(0, len(event_ids), BATCH_SIZE):
            chunk = list(dict.fromkeys(event_ids[first : first + BATCH_SIZE]))
            requests_ = [
                {"id": str(n), "method": "GET", "url": _event_path(event_id), "headers": headers}
                for n, event_id in enumerate(chunk)
            ]
            answer = self.request("POST", "/$batch", token, body={"requests": requests_}, replay_safe=True)
            responses = answer.get("responses") if isinstance(answer, Mapping) else None
            answered: dict[str, Mapping[str, Any]] = {}
            for response in responses if isinstance(responses, list) else []:
                if isinstance(response, Mapping) and str(response.get("id")).isdigit():
                    number = int(str(response["id"]))
                    if number < len(chunk):
                        answered[chunk[number]] = response
            for event_id in chunk:
                response = answered.get(event_id, {})
                status = response.get("status")
                if status == 200:
                    found[event_id] = _event(response.get("body"))
                elif status == 404:
                    found[event_id] = None
                else:
                    try:
                        found[event_id] = self.get_event(token, event_id)
                    except ItemGoneError:
                        found[event_id] = None
        return found

    def create_event(self, token: AccessToken, body: Mapping[str, Any]) -> GraphEvent:
        """POST an event. Replay-safe only because every create we send carries a ``transactionId``: Graph
        answers a repeated one with the event the first request made."""
        replay_safe = bool(body.get("transactionId"))
        answer = self.request(
            "POST", "/me/events", token, body=body, replay_safe=replay_safe, prefer=_EVENT_PREFER
        )
        return _event(answer)

    def update_event(self, token: AccessToken, event_id: str, body: Mapping[str, Any]) -> GraphEvent:
        """PATCH the properties in ``body`` (the same PATCH twice sets the same values: replay-safe)."""
        answer = self.request(
            "PATCH", _event_path(event_id), token, body=body, replay_safe=True, prefer=_EVENT_PREFER
        )
        return _event(answer)

    def delete_event(self, token: AccessToken, event_id: str) -> bool:
        """DELETE an event; False when it was already gone (which counts as done)."""
        try:
            self.request("DELETE", _event_path(event_id), token, replay_safe=True)
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
        prefer: Sequence[str] = (),
    ) -> Any:
        """Send one logical request (retrying as the policy says); the parsed JSON answer, or None."""
        url = path_or_url if "://" in path_or_url else self._base_url + path_or_url
        path = urlsplit(url).path
        headers = {
            "Authorization": f"Bearer {token()}",
            "Prefer": ", ".join((_IMMUTABLE_IDS, *prefer)),
            "Accept": "application/json",
        }
        attempt = 0
        refreshed = False
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
            if status == 401 and not refreshed and isinstance(token, RefreshableToken):
                # The token expired (or was revoked) after it was cached: one fresh token, one more try.
                log.info("graph: %s %s → 401; retrying once with a fresh token", method, path)
                refreshed = True
                token.refresh()
                headers["Authorization"] = f"Bearer {token()}"
                continue
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            delay = next_delay(self._policy, attempt, status, retry_after, replay_safe=replay_safe)
            if delay is None:
                raise _error_for(method, path, response, capped(retry_after, self._policy))
            log.info("graph: %s %s → %s; retrying in %.1fs", method, path, status, delay)
            self._sleep(delay)


def _event_path(event_id: str) -> str:
    return f"/me/events/{quote(event_id, safe='')}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _event(body: object) -> GraphEvent:
    try:
        return parse_event(body)
    except InvalidRequestError as error:
        raise RemoteRejectedError("Graph answered a malformed event", code="malformed") from error


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
