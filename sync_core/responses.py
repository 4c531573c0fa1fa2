"""HTTP outcomes, mapped in one place: what each outcome of a use case becomes for the caller.

Error bodies follow the CRM contract: ``{"error": {"code", "message", "details"}}``. Messages are fixed
texts or validation results, never exception text from outside services (it may carry hosts, ids or tokens).
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Mapping
from typing import Any

import azure.functions as func

from sync_core.domain.connect import BrowserOutcome
from sync_core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    SettingsError,
    StoreUnavailableError,
    SyncError,
    ThrottledError,
    TransientRemoteError,
    UserNotConnectedError,
)

log = logging.getLogger(__name__)

_JSON = "application/json"


def json_response(
    body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        mimetype=_JSON,
        charset="utf-8",
        headers=dict(headers or {}),
    )


def error_response(
    status: int, code: str, message: str, details: Mapping[str, Any] | None = None
) -> func.HttpResponse:
    return json_response(
        {"error": {"code": code, "message": message, "details": dict(details or {})}}, status
    )


def response_for_error(exc: SyncError, *, operation: str) -> func.HttpResponse:
    """The one mapping from the error tree to HTTP. ``operation`` is a stable name for the log line."""
    if isinstance(exc, InvalidRequestError):
        return error_response(400, "invalid_request", str(exc), {"fields": exc.field_errors})
    if isinstance(exc, UserNotConnectedError):
        return error_response(409, "user_not_connected", "the user is not connected; connect the user first")
    if isinstance(exc, NotFoundError):
        return error_response(404, "not_found", "the resource does not exist")
    if isinstance(exc, ConflictError):
        return error_response(409, "conflict", "the resource changed meanwhile; retry")
    if isinstance(exc, ThrottledError):
        retry_after = str(max(1, round(exc.retry_after)))
        return json_response(
            {"error": {"code": "throttled", "message": "try again later", "details": {}}},
            503,
            {"Retry-After": retry_after},
        )
    if isinstance(exc, StoreUnavailableError):
        log.warning("%s: storage unavailable", operation)
        return error_response(503, "unavailable", "storage is unavailable; retry")
    if isinstance(exc, TransientRemoteError):
        log.warning(
            "%s: a remote service is unavailable (%s)", operation, exc.code or exc.status or "no answer"
        )
        return error_response(503, "unavailable", "a service this depends on is unavailable; retry")
    if isinstance(exc, SettingsError):
        log.error("%s: settings invalid: %s", operation, ", ".join(sorted(exc.problems)))
        return error_response(500, "misconfigured", "the service is misconfigured")
    log.error("%s failed: %s", operation, type(exc).__name__)
    return error_response(500, "internal", "internal error")


# --- browser-facing answers (the OAuth callback and admin consent) and Graph's validation handshake ---------

# A page or redirect the browser sees: never cached, never framed, sends no Referer (the callback's query
# must not leak to the CRM page), runs no script.
_BROWSER_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


def browser_response(outcome: BrowserOutcome) -> func.HttpResponse:
    """A redirect back to the CRM (303, so a form POST becomes a GET there), or one of our fixed pages."""
    if outcome.redirect_url is not None:
        return func.HttpResponse(
            status_code=303, headers={**_BROWSER_HEADERS, "Location": outcome.redirect_url}
        )
    page = outcome.page
    if page is None:
        raise ValueError("a browser outcome needs a redirect or a page")
    reason = f"<p>Reason: <code>{html.escape(outcome.reason.value)}</code></p>" if outcome.reason else ""
    body = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(page.title)}</title></head>'
        f"<body><h1>{html.escape(page.title)}</h1><p>{html.escape(page.text)}</p>{reason}</body></html>"
    )
    return func.HttpResponse(
        body, status_code=page.status, mimetype="text/html", charset="utf-8", headers=dict(_BROWSER_HEADERS)
    )


def text_response(text: str) -> func.HttpResponse:
    """200 ``text/plain``: exactly ``text`` (Graph's validation handshake), never sniffed as anything else."""
    return func.HttpResponse(
        text,
        status_code=200,
        mimetype="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
    )
