"""The CRM's REST contract, outbound side (docs/crm-contract.md §3-§6): what the service calls on the CRM.

Every request carries ``Authorization: Bearer <CRM_API_KEY>`` and a ``v1`` signature over the exact bytes
sent, made afresh for every attempt (new timestamp and nonce); writes carry an ``Idempotency-Key`` that every
retry of the same write keeps. Retries follow ``sync_core.domain.retry_policy``: 429 always, 5xx and network
failures only for reads and keyed writes. Answers are translated here into ``sync_core.errors``:

- 401 → ``AuthenticationError``: a configuration error (API key or signing secret), never retried;
- 404 ``activity_not_found`` → ``ItemGoneError`` (the activity is gone); any other 404 (``route_not_found``)
  → ``RemoteRejectedError``: a wrong base URL must never read as a deletion;
- 409 / 412 / other 4xx → ``RemoteRejectedError`` with the contract's error code;
- 429 / 503 → ``ThrottledError`` (``Retry-After`` capped); other 5xx, no answer → ``TransientRemoteError``.

Activities (create, read, update with ``If-Match``, delete with ``If-Match``), people lookups and connection
events all go through the one ``_send``. Logs hold method, path without query, status, error code and the
CRM's request id: never a body, a key or a signature.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import requests

from sync_core.config import Secret
from sync_core.domain.connection_view import ConnectionEvent
from sync_core.domain.crm_mapping import CrmRecord, crm_record_from_json, people_from_crm_json
from sync_core.domain.model import PeopleDirectory
from sync_core.domain.retry_policy import RetryPolicy, capped, next_delay, parse_retry_after
from sync_core.domain.signing import signature_headers
from sync_core.errors import (
    AuthenticationError,
    InvalidRequestError,
    ItemGoneError,
    RemoteError,
    RemoteRejectedError,
    ThrottledError,
    TransientRemoteError,
)

log = logging.getLogger(__name__)

_DEFAULT_TIMEOUT = (5.0, 30.0)
_GONE_CODE = "activity_not_found"
# The contract's limit of emails per ``GET /people``.
PEOPLE_PER_LOOKUP = 50


class CrmClient:
    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        signing_secret: Secret,
        session: requests.Session,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        timeout: tuple[float, float] = _DEFAULT_TIMEOUT,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._signing_secret = signing_secret
        self._session = session
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._timeout = timeout

    def notify(self, event: ConnectionEvent) -> None:
        """POST /events: tell the CRM about a connection event (204). Retries reuse the event's key."""
        self._send("POST", "/events", body=event.body(), idempotency_key=event.idempotency_key)

    # --- activities ---

    def create_activity(self, body: Mapping[str, Any], idempotency_key: str) -> CrmRecord:
        """POST /activities (201): the stored activity with its id and version."""
        return _record(self._send("POST", "/activities", body=body, idempotency_key=idempotency_key))

    def get_activity(self, crm_id: str) -> CrmRecord:
        """GET /activities/{id}; gone → ``ItemGoneError``."""
        return _record(self._send("GET", f"/activities/{quote(crm_id, safe='')}"))

    def update_activity(
        self, crm_id: str, body: Mapping[str, Any], if_match: str, idempotency_key: str
    ) -> CrmRecord:
        """PATCH /activities/{id} under ``If-Match``: 412 → ``RemoteRejectedError`` code ``version_mismatch``
        (the CRM changed meanwhile), gone → ``ItemGoneError``."""
        response = self._send(
            "PATCH",
            f"/activities/{quote(crm_id, safe='')}",
            body=body,
            idempotency_key=idempotency_key,
            if_match=if_match,
        )
        return _record(response)

    def delete_activity(self, crm_id: str, if_match: str | None, idempotency_key: str) -> bool:
        """DELETE /activities/{id}; False when it was already gone (done either way). 412 as for update."""
        try:
            self._send(
                "DELETE",
                f"/activities/{quote(crm_id, safe='')}",
                idempotency_key=idempotency_key,
                if_match=if_match,
            )
        except ItemGoneError:
            return False
        return True

    def people(self, emails: Sequence[str]) -> PeopleDirectory:
        """The CRM's users, contacts and leads with these emails (``GET /people``, 50 emails a call)."""
        directory = PeopleDirectory()
        for first in range(0, len(emails), PEOPLE_PER_LOOKUP):
            chunk = list(emails[first : first + PEOPLE_PER_LOOKUP])
            response = self._send("GET", "/people", query={"email": chunk})
            try:
                found = people_from_crm_json(response.json())
            except (ValueError, InvalidRequestError) as error:
                raise RemoteRejectedError(
                    "the CRM answered a malformed people list", code="malformed"
                ) from error
            directory = directory.merged(found.people)
        return directory

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str | Sequence[str]] | None = None,
        idempotency_key: str | None = None,
        if_match: str | None = None,
    ) -> requests.Response:
        """One logical request: signed per attempt, retried where safe; the final 2xx answer, or an error."""
        url = self._base_url + path + (f"?{urlencode(query, doseq=True)}" if query else "")
        data = b"" if body is None else json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Authorization": f"Bearer {self._api_key.value}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        replay_safe = method == "GET" or idempotency_key is not None
        logged_path = urlsplit(url).path
        attempt = 0
        while True:
            attempt += 1
            prepared = self._session.prepare_request(
                requests.Request(method, url, data=data or None, headers=headers)
            )
            # Sign exactly what goes on the wire: the prepared request target and the body bytes.
            prepared.headers.update(
                signature_headers(
                    self._signing_secret.value,
                    method,
                    prepared.path_url,
                    data,
                    now=self._clock(),
                    nonce=secrets.token_hex(16),
                )
            )
            try:
                response = self._session.send(prepared, timeout=self._timeout)
            except requests.RequestException as error:
                delay = next_delay(self._policy, attempt, None, None, replay_safe=replay_safe)
                if delay is None:
                    raise TransientRemoteError(
                        f"CRM {method} {logged_path}: no answer ({type(error).__name__})"
                    ) from error
                log.info("crm: %s %s got no answer; retrying in %.1fs", method, logged_path, delay)
                self._sleep(delay)
                continue
            status = response.status_code
            if status < 400:
                log.info(
                    "crm: %s %s → %s (request %s)",
                    method,
                    logged_path,
                    status,
                    response.headers.get("X-Request-Id", "-"),
                )
                return response
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            delay = next_delay(self._policy, attempt, status, retry_after, replay_safe=replay_safe)
            if delay is None:
                raise _error_for(method, logged_path, response, capped(retry_after, self._policy))
            log.info("crm: %s %s → %s; retrying in %.1fs", method, logged_path, status, delay)
            self._sleep(delay)


def _record(response: requests.Response) -> CrmRecord:
    try:
        return crm_record_from_json(response.json())
    except (ValueError, InvalidRequestError) as error:
        raise RemoteRejectedError("the CRM answered a malformed activity", code="malformed") from error


def _error_for(method: str, path: str, response: requests.Response, retry_after: float) -> RemoteError:
    status = response.status_code
    code = _error_code(response)
    what = f"CRM {method} {path}: HTTP {status} {code}"
    log.warning(
        "crm: %s %s → %s %s (request %s)",
        method,
        path,
        status,
        code,
        response.headers.get("X-Request-Id", "-"),
    )
    if status in (429, 503):
        return ThrottledError(what, retry_after=retry_after, status=status)
    if status == 401:
        return AuthenticationError(what, status=status, code=code)
    if status == 404 and code == _GONE_CODE:
        return ItemGoneError(what, status=status, code=code)
    if status >= 500:
        return TransientRemoteError(what, status=status, code=code)
    return RemoteRejectedError(what, status=status, code=code)


def _error_code(response: requests.Response) -> str:
    try:
        error = response.json().get("error")
        code = error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        return "unknown"
    return code if isinstance(code, str) else "unknown"
