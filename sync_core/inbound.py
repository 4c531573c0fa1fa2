"""Reading inbound HTTP requests, so the triggers in ``function_app.py`` stay one line each.

- ``crm_call``: a CRM-facing route (connect, disconnect, status, activity push and delete). In the
  contract's order (docs/crm-contract.md §3.2): size limit (413), signature (401, nonce remembered in the
  shared store only once the signature verified), then the JSON body and the use case; errors map through
  ``sync_core.responses``.
- ``browser_call``: a route a browser reaches (the OAuth callback, admin consent). Parameters come from the
  query and, for ``response_mode=form_post``, from the form body; the outcome is a redirect or a page.
- ``graph_call``: Graph's webhook and lifecycle endpoints: the validation handshake, else a burst of
  notifications checked (size, media type, JSON, shape: 400 with field errors, nothing queued) and handed
  to ``NotificationService.accept``; 202 once the work is recorded, 5xx only when it could not be (Graph
  retries then).
- ``sync_message``: the ``sync`` queue's message, ``{"user": crmUserId, "reason": …}``;
  ``parked_sync_message`` the same from its poison queue.
- ``next_run``: when a timer fires next, from its schedule status (when the platform gives it).

Nothing here logs a body, a query string or a header value: the callback's form holds the authorization code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from sync_core import wiring
from sync_core.domain.connect import BrowserOutcome
from sync_core.domain.graph_payloads import parse_notifications
from sync_core.domain.payloads import BODY, json_object
from sync_core.domain.signing import NONCE_MEMORY_SECONDS, SignatureFailure, SignedRequest, check_signature
from sync_core.domain.sync_message import SyncMessage, parse_sync_message
from sync_core.errors import InvalidRequestError, SyncError
from sync_core.responses import (
    browser_response,
    error_response,
    json_response,
    response_for_error,
    text_response,
)
from sync_core.services.notifications import validation_response

log = logging.getLogger(__name__)

CrmAction = Callable[[str, dict[str, Any]], Mapping[str, Any] | None]
_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"
_MAX_FORM_BYTES = 64 * 1024


def crm_call(
    req: func.HttpRequest, operation: str, action: CrmAction, *, status: int = 200
) -> func.HttpResponse:
    """Check and run a CRM call: ``action(crmUserId, body)`` returns the JSON answer (``status``: 200, or
    202 for work accepted for later) or None (204)."""
    container = wiring.container()
    body = req.get_body() or b""
    if len(body) > container.settings.max_request_bytes:
        return error_response(413, "payload_too_large", "the body is over the size limit")
    try:
        failure = _signature_failure(req, body)
        if failure is not None:
            log.warning("%s: request refused: %s", operation, failure.value)
            return error_response(401, failure.value, failure.message)
        result = action(req.route_params.get("crmUserId", ""), json_object(body) if body else {})
    except SyncError as error:
        return response_for_error(error, operation=operation)
    return func.HttpResponse(status_code=204) if result is None else json_response(result, status)


def _signature_failure(req: func.HttpRequest, body: bytes) -> SignatureFailure | None:
    container = wiring.container()
    parts = urlsplit(req.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    signed = SignedRequest.from_headers(req.method, target, body, dict(req.headers))
    failure = check_signature(signed, [container.settings.crm_signing_secret.value], time.time())
    if failure is not None or signed.nonce is None:
        return failure
    first_use = container.ready_tables().nonces.remember(
        signed.nonce, datetime.now(UTC), timedelta(seconds=NONCE_MEMORY_SECONDS)
    )
    return None if first_use else SignatureFailure.REPLAYED


def browser_call(
    req: func.HttpRequest, operation: str, action: Callable[[dict[str, str]], BrowserOutcome]
) -> func.HttpResponse:
    """Run a browser trip's step with the query and form parameters; answer with a redirect or a page."""
    params = dict(req.params)
    content_type = (req.headers.get("content-type") or "").split(";")[0].strip().lower()
    if req.method == "POST" and content_type == _FORM:
        body = req.get_body() or b""
        if len(body) > _MAX_FORM_BYTES:
            return error_response(413, "payload_too_large", "the form is over the size limit")
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    try:
        return browser_response(action(params))
    except SyncError as error:
        return response_for_error(error, operation=operation)


def graph_call(req: func.HttpRequest, operation: str) -> func.HttpResponse:
    """Graph's webhook / lifecycle endpoint: the validation handshake, or a burst of notifications (202)."""
    token = req.params.get("validationToken")
    if token is not None:
        try:
            return text_response(validation_response(token))
        except SyncError as error:
            return response_for_error(error, operation=operation)
    container = wiring.container()
    body = req.get_body() or b""
    limit = container.settings.max_request_bytes
    if len(body) > limit:
        log.warning("%s: refused a body of %d bytes", operation, len(body))
        return error_response(
            400,
            "payload_too_large",
            "the body is too large",
            {"fields": {BODY: f"must be at most {limit} bytes"}},
        )
    if _media_type(req) != _JSON:
        log.warning("%s: refused a body that is not JSON", operation)
        return error_response(
            400,
            "unsupported_media_type",
            "notifications are JSON",
            {"fields": {"Content-Type": "must be application/json"}},
        )
    try:
        batch = parse_notifications(json_object(body))
    except InvalidRequestError as error:
        log.warning("%s: refused a malformed body (%s)", operation, ", ".join(sorted(error.field_errors)))
        return response_for_error(error, operation=operation)
    try:
        container.notifications.accept(batch, operation=operation)
    except SyncError as error:
        # Not recorded: a 5xx makes Graph deliver the burst again (a 4xx would lose it).
        log.warning("%s: the notifications could not be recorded (%s)", operation, type(error).__name__)
        return error_response(503, "unavailable", "the notifications could not be recorded; retry")
    return func.HttpResponse(status_code=202)


def _media_type(req: func.HttpRequest) -> str:
    return (req.headers.get("content-type") or "").split(";")[0].strip().lower()


def sync_message(body: bytes) -> SyncMessage:
    """A ``sync`` queue message; a malformed one raises (and ends in the poison queue)."""
    return parse_sync_message(body)


def parked_sync_message(body: bytes, message_id: str) -> SyncMessage | None:
    """A message from the sync queue's poison queue; one that names no user cannot be recorded anywhere but
    the log (retrying it would not help), so it is logged and dropped here."""
    try:
        return parse_sync_message(body)
    except InvalidRequestError:
        log.error("sync_poison: message %s is not a sync message (%d bytes); dropped", message_id, len(body))
        return None


def next_run(timer: func.TimerRequest) -> datetime | None:
    """When the timer fires next, from the schedule status the platform passes (None when it does not)."""
    # The abstract TimerRequest does not declare it; the worker's (and the devkit host's) class has it.
    status = getattr(timer, "schedule_status", None)
    text = status.get("Next") if isinstance(status, Mapping) else None
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
