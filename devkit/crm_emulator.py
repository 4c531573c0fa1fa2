"""A CRM for local development and tests: the outbound side of ``docs/crm-contract.md``, implemented exactly.

The service calls this emulator the way it calls a customer's CRM: signed requests, a Bearer API key,
idempotency keys on writes, ``If-Match`` versions on updates. The emulator holds state (CRM users, accounts,
contacts, leads, activities, the connection events it was sent, a request log), lets a test act "as a CRM
user" (edit or delete an activity, which bumps its version), injects failures, and can play the CRM's part of
calling the service's inbound triggers (``CrmServiceClient``).

Terminology:
    outbound      the service calls the CRM (this emulator serves that side)
    inbound       the CRM calls the service (``CrmServiceClient`` makes those calls)
    signature     HMAC-SHA256 over ``timestamp\\nnonce\\nMETHOD\\npath-with-query\\nsha256(body)``, header
                  ``X-Sync-Signature: v1=<hex>``; checked here with code of its own, never with sync_core's,
                  so a bug in the service's client cannot hide behind a shared helper
    nonce         a per-request random value; one seen again within the window is a replay
    version       an activity's opaque write counter; every write (contract or CRM user) changes it
    idempotency   a write's ``Idempotency-Key``: the same key and request replay the stored 2xx response

Control API (no authentication, loopback only), mirrored by Python methods of ``CrmEmulator``:
    POST   /_devkit/reset                          forget everything (ids and versions keep counting)
    POST   /_devkit/seed                           {users, accounts, contacts, leads} → 201 the records
    GET    /_devkit/people                         every seeded record
    GET    /_devkit/activities[?ownerCrmUserId=]   {"activities": [...]}
    POST   /_devkit/activities                     create as a CRM user → 201 activity
    GET    /_devkit/activities/{crmId}             the activity
    PATCH  /_devkit/activities/{crmId}             edit as a CRM user (may change owner or type) → new version
    DELETE /_devkit/activities/{crmId}             delete as a CRM user → 204
    GET    /_devkit/events[?type=&crmUserId=]      {"events": [...]}
    GET    /_devkit/requests                       {"requests": [...]}: method, target, status; no bodies
    POST   /_devkit/failures                       {count, status, retryAfter, method, path}: fail next
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import itertools
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

log = logging.getLogger(__name__)

Json = dict[str, Any]

REPLAY_WINDOW_SECONDS = 300
MAX_BODY_BYTES = 1_048_576
MAX_PEOPLE_EMAILS = 50
DEFAULT_PORT = 7103  # CRM_BASE_URL in local.settings.sample.json
# The local values of local.settings.sample.json: not secrets, but what a local service is configured with.
DEFAULT_API_KEY = "local-dev-crm-api-key"
DEFAULT_SIGNING_SECRET = "local-dev-crm-signing-secret"

# (method, path template relative to the base URL): every outbound route of the contract. The router is built
# from this table, and the tests check it against docs/crm-contract.openapi.json.
CONTRACT_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", "/activities"),
    ("GET", "/activities/{crmId}"),
    ("PATCH", "/activities/{crmId}"),
    ("DELETE", "/activities/{crmId}"),
    ("GET", "/people"),
    ("POST", "/events"),
)
DEVKIT_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", "/_devkit/reset"),
    ("POST", "/_devkit/seed"),
    ("GET", "/_devkit/people"),
    ("GET", "/_devkit/activities"),
    ("POST", "/_devkit/activities"),
    ("GET", "/_devkit/activities/{crmId}"),
    ("PATCH", "/_devkit/activities/{crmId}"),
    ("DELETE", "/_devkit/activities/{crmId}"),
    ("GET", "/_devkit/events"),
    ("GET", "/_devkit/requests"),
    ("POST", "/_devkit/failures"),
)

ACTIVITY_FIELDS: tuple[str, ...] = (
    "crmId",
    "version",
    "createdAt",
    "modifiedAt",
    "ownerCrmUserId",
    "type",
    "subject",
    "description",
    "start",
    "end",
    "timeZone",
    "isAllDay",
    "location",
    "isPrivate",
    "attendees",
    "organizer",
    "onlineMeeting",
    "requestOnlineMeeting",
    "links",
    "recurrence",
    "occurrenceOverrides",
    "cancelledOccurrences",
)
_READ_ONLY_FIELDS = ("crmId", "version", "createdAt", "modifiedAt")
_REQUIRED_ON_CREATE = ("ownerCrmUserId", "type", "subject", "start", "end")
_NULLABLE_FIELDS = frozenset(
    {"description", "timeZone", "location", "organizer", "onlineMeeting", "recurrence"}
)
_FIXED_AFTER_CREATE = ("ownerCrmUserId", "type")  # through the contract; a CRM user may change them


def _activity_defaults() -> Json:
    return {
        "description": None,
        "timeZone": None,
        "isAllDay": False,
        "location": None,
        "isPrivate": False,
        "attendees": [],
        "organizer": None,
        "onlineMeeting": None,
        "requestOnlineMeeting": False,
        "links": {"accountId": None, "contactIds": [], "leadIds": []},
        "recurrence": None,
        "occurrenceOverrides": [],
        "cancelledOccurrences": [],
    }


_WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_HEX64 = re.compile(r"^[0-9A-Fa-f]{64}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_DATE_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_MAX_DRAIN_BYTES = 64 * 1_048_576
_MESSAGES = {  # pydantic error types → the contract's wording (no Python class names in field errors)
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "list_type": "must be an array",
    "string_type": "must be a string",
    "bool_type": "must be a boolean",
    "int_type": "must be an integer",
}
_INJECTABLE = {429: "throttled", 500: "internal", 502: "bad_gateway", 503: "unavailable", 504: "timeout"}


# ------------------------------------------------------------------------------------------------------------
# Errors


class ContractError(Exception):
    """An answer other than success, as the contract words it; the Python methods raise it too."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})


def _invalid(fields: Mapping[str, str], message: str = "the request is invalid") -> ContractError:
    return ContractError(400, "invalid_request", message, {"fields": dict(fields)})


# ------------------------------------------------------------------------------------------------------------
# Signatures (own implementation: never import sync_core here)


def canonical_string(timestamp: str, nonce: str, method: str, path_with_query: str, body: bytes) -> str:
    """The string a v1 signature covers (docs/crm-contract.md §3.2)."""
    return "\n".join((timestamp, nonce, method.upper(), path_with_query, hashlib.sha256(body).hexdigest()))


def compute_signature(secret: str, canonical: str) -> str:
    """Lower-case hex HMAC-SHA256 of ``canonical`` keyed with the UTF-8 bytes of ``secret``."""
    return hmac.new(secret.encode("utf-8"), canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def signature_headers(
    secret: str, method: str, path_with_query: str, body: bytes, *, now: float, nonce: str | None = None
) -> dict[str, str]:
    """The three ``X-Sync-*`` headers for one request; a fresh nonce unless one is given."""
    timestamp = str(int(now))
    nonce = nonce if nonce is not None else secrets.token_hex(16)
    signature = compute_signature(secret, canonical_string(timestamp, nonce, method, path_with_query, body))
    return {"X-Sync-Timestamp": timestamp, "X-Sync-Nonce": nonce, "X-Sync-Signature": f"v1={signature}"}


class SignatureVerifier:
    """Checks v1 signatures in the documented order and remembers accepted nonces (thread-safe)."""

    def __init__(
        self,
        secret: str,
        *,
        window_seconds: int = REPLAY_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._window = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # nonce → when it may be forgotten
        self._expiry: collections.deque[tuple[float, str]] = collections.deque()

    def verify(
        self,
        *,
        method: str,
        path_with_query: str,
        body: bytes,
        timestamp: str | None,
        nonce: str | None,
        signature: str | None,
    ) -> None:
        """Return when the request is authentic; raise ``ContractError`` (401) naming the first failure."""
        if timestamp is None or nonce is None or signature is None:
            raise ContractError(
                401, "missing_signature", "X-Sync-Timestamp, X-Sync-Nonce and X-Sync-Signature are required"
            )
        candidates = [
            entry.strip()[3:].lower()
            for entry in signature.split(",")
            if entry.strip().startswith("v1=") and _HEX64.match(entry.strip()[3:])
        ]
        if not _TIMESTAMP.match(timestamp) or not _NONCE.match(nonce) or not candidates:
            raise ContractError(
                401, "malformed_signature", "a signature header is not in the documented form"
            )
        now = self._clock()
        if abs(now - int(timestamp)) > self._window:
            raise ContractError(401, "stale_timestamp", f"the timestamp is more than {self._window} s off")
        expected = compute_signature(
            self._secret, canonical_string(timestamp, nonce, method, path_with_query, body)
        )
        matched = False
        for candidate in candidates:  # compare every entry: no early exit on a match
            matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            raise ContractError(401, "invalid_signature", "the signature does not match the request")
        with self._lock:
            while self._expiry and self._expiry[0][0] < now:
                self._seen.pop(self._expiry.popleft()[1], None)
            if nonce in self._seen:
                raise ContractError(401, "replayed_nonce", "this nonce was already used")
            forget_at = now + 2 * self._window
            self._seen[nonce] = forget_at
            self._expiry.append((forget_at, nonce))

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()
            self._expiry.clear()


# ------------------------------------------------------------------------------------------------------------
# Payload shapes (pydantic: types, enums, unknown fields) and rules (``_activity_errors``: everything else)

_MODEL = ConfigDict(
    extra="forbid", strict=True, alias_generator=to_camel, validate_by_alias=True, validate_by_name=False
)
_OPEN_MODEL = ConfigDict(
    extra="allow", strict=True, alias_generator=to_camel, validate_by_alias=True, validate_by_name=False
)
DayOfWeek = Literal["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]


class _Attendee(BaseModel):
    model_config = _MODEL
    email: str = Field(max_length=320)
    name: str | None = Field(default=None, max_length=255)
    kind: Literal["user", "contact", "lead", "external"]
    type: Literal["required", "optional", "resource"] = "required"
    response: Literal["none", "organizer", "accepted", "tentativelyAccepted", "declined", "notResponded"] = (
        "none"
    )
    crm_id: str | None = None


class _Organizer(BaseModel):
    model_config = _MODEL
    email: str = Field(max_length=320)
    name: str | None = Field(default=None, max_length=255)


class _OnlineMeeting(BaseModel):
    model_config = _MODEL
    join_url: str = Field(max_length=2048)


class _Links(BaseModel):
    model_config = _MODEL
    account_id: str | None = None
    contact_ids: list[str] = Field(default_factory=list)
    lead_ids: list[str] = Field(default_factory=list)


class _RecurrencePattern(BaseModel):
    model_config = _MODEL
    type: Literal["daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly"]
    interval: int = Field(ge=1, le=99)
    days_of_week: list[DayOfWeek] = Field(default_factory=list)
    first_day_of_week: DayOfWeek = "sunday"
    index: Literal["first", "second", "third", "fourth", "last"] = "first"
    day_of_month: int | None = Field(default=None, ge=1, le=31)
    month: int | None = Field(default=None, ge=1, le=12)


class _RecurrenceRange(BaseModel):
    model_config = _MODEL
    type: Literal["endDate", "noEnd", "numbered"]
    start_date: str
    end_date: str | None = None
    number_of_occurrences: int | None = Field(default=None, ge=1)
    recurrence_time_zone: str | None = None


class _Recurrence(BaseModel):
    model_config = _MODEL
    pattern: _RecurrencePattern
    range: _RecurrenceRange


class _OccurrenceOverride(BaseModel):
    model_config = _MODEL
    original_start: str
    subject: str | None = Field(default=None, max_length=255)
    description: str | None = Field(default=None, max_length=32_000)
    location: str | None = Field(default=None, max_length=255)
    start: str | None = None
    end: str | None = None
    attendees: list[_Attendee] | None = Field(default=None, max_length=500)


class _ActivityInput(BaseModel):
    """Every field optional here; which are required, read-only or fixed depends on the operation."""

    model_config = _MODEL
    crm_id: object = None
    version: object = None
    created_at: object = None
    modified_at: object = None
    owner_crm_user_id: str | None = None
    type: Literal["meeting", "personal_appointment", "call", "task"] | None = None
    subject: str | None = Field(default=None, max_length=255)
    description: str | None = Field(default=None, max_length=32_000)
    start: str | None = None
    end: str | None = None
    time_zone: str | None = None
    is_all_day: bool | None = None
    location: str | None = Field(default=None, max_length=255)
    is_private: bool | None = None
    attendees: list[_Attendee] | None = Field(default=None, max_length=500)
    organizer: _Organizer | None = None
    online_meeting: _OnlineMeeting | None = None
    request_online_meeting: bool | None = None
    links: _Links | None = None
    recurrence: _Recurrence | None = None
    occurrence_overrides: list[_OccurrenceOverride] | None = None
    cancelled_occurrences: list[str] | None = None


class _AccountDetails(BaseModel):
    model_config = _OPEN_MODEL
    upn: str
    tenant_id: str


class _ConnectedDetails(BaseModel):
    model_config = _OPEN_MODEL
    account: _AccountDetails


class _ReasonDetails(BaseModel):
    model_config = _OPEN_MODEL
    reason: str = Field(min_length=1)


class _DisconnectedDetails(_ReasonDetails):
    purged: bool


class _ConflictDetails(BaseModel):
    model_config = _OPEN_MODEL
    crm_id: str = Field(min_length=1)
    fields: list[str] = Field(min_length=1)
    policy: Literal["crm_wins", "m365_wins", "latest_wins"]
    winner: Literal["crm", "m365"]


class _PoisonDetails(_ReasonDetails):
    crm_id: str | None


class _SyncErrorDetails(_PoisonDetails):
    retrying: bool


_EVENT_DETAILS: dict[str, type[BaseModel]] = {
    "connected": _ConnectedDetails,
    "reconnect_required": _ReasonDetails,
    "disconnected": _DisconnectedDetails,
    "conflict": _ConflictDetails,
    "poison": _PoisonDetails,
    "sync_error": _SyncErrorDetails,
}


class _EventInput(BaseModel):
    model_config = _MODEL
    type: Literal["connected", "reconnect_required", "disconnected", "conflict", "poison", "sync_error"]
    crm_user_id: str
    occurred_at: str
    details: dict[str, Any]


class _FailureInput(BaseModel):
    model_config = _MODEL
    count: int = Field(default=1, ge=1, le=10_000)
    status: int = 500
    retry_after: int | None = Field(default=None, ge=0, le=3600)
    method: str | None = None
    path: str | None = None


class _SeedUser(BaseModel):
    model_config = _MODEL
    crm_user_id: str
    email: str
    name: str | None = None


class _SeedAccount(BaseModel):
    model_config = _MODEL
    crm_id: str | None = None
    name: str


class _SeedContact(BaseModel):
    model_config = _MODEL
    crm_id: str | None = None
    email: str
    name: str | None = None
    account_id: str | None = None


class _SeedLead(BaseModel):
    model_config = _MODEL
    crm_id: str | None = None
    email: str
    name: str | None = None
    company: str | None = None


class _Seed(BaseModel):
    model_config = _MODEL
    users: list[_SeedUser] = Field(default_factory=list)
    accounts: list[_SeedAccount] = Field(default_factory=list)
    contacts: list[_SeedContact] = Field(default_factory=list)
    leads: list[_SeedLead] = Field(default_factory=list)


def _field_errors(exc: ValidationError, prefix: str = "") -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors():
        path = ".".join(str(part) for part in (*([prefix] if prefix else []), *error["loc"])) or "(body)"
        errors.setdefault(path, _MESSAGES.get(error["type"], error["msg"]))
    return errors


def _validate(model: type[BaseModel], data: object, prefix: str = "") -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(_field_errors(exc, prefix)) from None


def _parse_date_time(text: object) -> datetime | None:
    match = _DATE_TIME.match(text) if isinstance(text, str) else None
    if match is None:
        return None
    day, clock, fraction, offset = match.groups()
    micro = f".{(fraction or '')[:6].ljust(6, '0')}" if fraction else ""
    try:
        return datetime.fromisoformat(f"{day}T{clock}{micro}{'+00:00' if offset == 'Z' else offset}")
    except ValueError:
        return None


def _parse_date(text: object) -> date | None:
    if not isinstance(text, str) or not _DATE.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _is_time_zone(name: object) -> bool:
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _iso_utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------------------------
# HTTP plumbing shared by the contract and control routes


@dataclass(frozen=True)
class _Request:
    method: str
    target: str  # path-with-query exactly as in the request line
    path: str
    query: str
    headers: Message
    body: bytes

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else str(value)


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    replayed: bool = False
    injected: bool = False


def _json_response(status: int, payload: object, headers: Sequence[tuple[str, str]] = ()) -> _Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return _Response(status, body, (("Content-Type", "application/json; charset=utf-8"), *headers))


def _error_response(exc: ContractError) -> _Response:
    body = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
    return _json_response(exc.status, body, tuple(exc.headers.items()))


def _reject_constant(name: str) -> object:
    raise ValueError(name)


def _json_object(request: _Request) -> Json:
    if not request.body:
        raise ContractError(400, "invalid_json", "the body must be a JSON object")
    media_type = (request.header("Content-Type") or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ContractError(415, "unsupported_media_type", "the body must be application/json")
    try:
        data = json.loads(request.body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        raise ContractError(400, "invalid_json", "the body is not valid UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise ContractError(400, "invalid_json", "the body must be a JSON object")
    return data


@dataclass(frozen=True)
class _Route:
    method: str
    template: str
    pattern: re.Pattern[str]


def _routes(table: Sequence[tuple[str, str]]) -> tuple[_Route, ...]:
    def compile_template(template: str) -> re.Pattern[str]:
        # Templates hold only letters, '/', '_' and {params}: nothing else needs escaping.
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")

    return tuple(_Route(method, template, compile_template(template)) for method, template in table)


def _match(routes: Sequence[_Route], method: str, path: str) -> tuple[str, dict[str, str]]:
    """The matching template and its (decoded) parameters; 404 / 405 otherwise."""
    allowed: list[str] = []
    for route in routes:
        found = route.pattern.match(path)
        if found is None:
            continue
        if route.method == method:
            return route.template, {name: unquote(value) for name, value in found.groupdict().items()}
        allowed.append(route.method)
    if allowed:
        raise ContractError(
            405, "method_not_allowed", f"{method} is not allowed here", headers={"Allow": ", ".join(allowed)}
        )
    raise ContractError(404, "route_not_found", "no such path (check the base URL): this is not a deletion")


def _if_match_version(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    return value


@dataclass(frozen=True)
class _StoredResponse:
    fingerprint: str
    response: _Response


@dataclass
class _Failure:
    remaining: int
    status: int
    retry_after: int | None
    method: str | None
    path: str | None

    def applies(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method == method)
            and (self.path is None or path.startswith(self.path))
        )


# ------------------------------------------------------------------------------------------------------------
# The emulator


class CrmEmulator:
    """A stateful CRM over real HTTP on 127.0.0.1; ``start()`` / ``stop()`` or use it as a context manager.

    ``base_url`` is what the service's ``CRM_BASE_URL`` should be (``base_path`` lets a test check that the
    client signs the full path). ``clock`` drives the replay window and the timestamps it writes. Every public
    method is thread-safe and raises ``ContractError`` with the status and code the HTTP API would answer.
    """

    def __init__(
        self,
        api_key: str,
        signing_secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        base_path: str = "",
        clock: Callable[[], float] = time.time,
        replay_window_seconds: int = REPLAY_WINDOW_SECONDS,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        if base_path and (not base_path.startswith("/") or base_path.endswith("/")):
            raise ValueError("base_path must start with '/' and not end with one, e.g. '/crm/v1'")
        self._api_key = api_key
        self._signing_secret = signing_secret
        self._host = host
        self._port = port
        self._base_path = base_path
        self._clock = clock
        self.max_body_bytes = max_body_bytes
        self._verifier = SignatureVerifier(signing_secret, window_seconds=replay_window_seconds, clock=clock)
        self._contract_routes = _routes(CONTRACT_ROUTES)
        self._devkit_routes = _routes(DEVKIT_ROUTES)
        self._lock = threading.RLock()
        self._sequence = itertools.count(1)  # versions and request ids; never reset, so never reused
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._clear()

    def _clear(self) -> None:
        self._users: dict[str, Json] = {}
        self._accounts: dict[str, Json] = {}
        self._contacts: dict[str, Json] = {}
        self._leads: dict[str, Json] = {}
        self._activities: dict[str, Json] = {}
        self._events: list[Json] = []
        self._requests: list[Json] = []
        self._idempotency: dict[str, _StoredResponse] = {}
        self._failures: list[_Failure] = []

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> str:
        if self._server is not None:
            raise RuntimeError("the CRM emulator is already running")
        server = _Server((self._host, self._port), self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="crm-emulator", daemon=True
        )
        self._thread.start()
        log.info("crm emulator listening on %s", self.base_url)
        return self.base_url

    def stop(self) -> None:
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> CrmEmulator:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        if self._server is None:
            raise RuntimeError("the CRM emulator is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """The CRM_BASE_URL for the service under test."""
        return self.origin + self._base_path

    @property
    def devkit_url(self) -> str:
        return self.origin + "/_devkit"

    # -- seeding and inspection -----------------------------------------------------------------------------

    def seed(self, data: Mapping[str, Any]) -> Json:
        """Add (or replace, by id) users, accounts, contacts, leads; accounts go first for the contacts."""
        seed = _validate(_Seed, dict(data))
        assert isinstance(seed, _Seed)
        created: Json = {"users": [], "accounts": [], "contacts": [], "leads": []}
        with self._lock:
            for index, account in enumerate(seed.accounts):
                crm_id = self._new_or_given_id(account.crm_id, "acc", f"accounts.{index}.crmId")
                self._accounts[crm_id] = {"crmId": crm_id, "name": account.name}
                created["accounts"].append(dict(self._accounts[crm_id]))
            for index, user in enumerate(seed.users):
                self._check_seed_email(user.email, f"users.{index}.email")
                crm_user_id = self._new_or_given_id(user.crm_user_id, "usr", f"users.{index}.crmUserId")
                self._users[crm_user_id] = {"crmUserId": crm_user_id, "email": user.email, "name": user.name}
                created["users"].append(dict(self._users[crm_user_id]))
            for index, contact in enumerate(seed.contacts):
                self._check_seed_email(contact.email, f"contacts.{index}.email")
                if contact.account_id is not None and contact.account_id not in self._accounts:
                    raise _invalid({f"contacts.{index}.accountId": "unknown account"})
                crm_id = self._new_or_given_id(contact.crm_id, "con", f"contacts.{index}.crmId")
                self._contacts[crm_id] = {
                    "crmId": crm_id,
                    "email": contact.email,
                    "name": contact.name,
                    "accountId": contact.account_id,
                }
                created["contacts"].append(self._contact_json(self._contacts[crm_id]))
            for index, lead in enumerate(seed.leads):
                self._check_seed_email(lead.email, f"leads.{index}.email")
                crm_id = self._new_or_given_id(lead.crm_id, "lead", f"leads.{index}.crmId")
                self._leads[crm_id] = {
                    "crmId": crm_id,
                    "email": lead.email,
                    "name": lead.name,
                    "company": lead.company,
                }
                created["leads"].append(dict(self._leads[crm_id]))
        return created

    def add_user(self, crm_user_id: str, email: str, name: str | None = None) -> Json:
        user: Json = self.seed({"users": [{"crmUserId": crm_user_id, "email": email, "name": name}]})[
            "users"
        ][0]
        return user

    def add_account(self, name: str, crm_id: str | None = None) -> Json:
        account: Json = self.seed({"accounts": [{"crmId": crm_id, "name": name}]})["accounts"][0]
        return account

    def add_contact(
        self, email: str, name: str | None = None, account_id: str | None = None, crm_id: str | None = None
    ) -> Json:
        contact: Json = self.seed(
            {"contacts": [{"crmId": crm_id, "email": email, "name": name, "accountId": account_id}]}
        )["contacts"][0]
        return contact

    def add_lead(
        self, email: str, name: str | None = None, company: str | None = None, crm_id: str | None = None
    ) -> Json:
        lead: Json = self.seed(
            {"leads": [{"crmId": crm_id, "email": email, "name": name, "company": company}]}
        )["leads"][0]
        return lead

    def people(self) -> Json:
        with self._lock:
            return {
                "users": [dict(user) for user in self._users.values()],
                "accounts": [dict(account) for account in self._accounts.values()],
                "contacts": [self._contact_json(contact) for contact in self._contacts.values()],
                "leads": [dict(lead) for lead in self._leads.values()],
            }

    def activities(self, owner_crm_user_id: str | None = None) -> list[Json]:
        with self._lock:
            return [
                copy.deepcopy(activity)
                for activity in self._activities.values()
                if owner_crm_user_id is None or activity["ownerCrmUserId"] == owner_crm_user_id
            ]

    def activity(self, crm_id: str) -> Json | None:
        with self._lock:
            found = self._activities.get(crm_id)
            return None if found is None else copy.deepcopy(found)

    def events(self, event_type: str | None = None, crm_user_id: str | None = None) -> list[Json]:
        with self._lock:
            return [
                copy.deepcopy(event)
                for event in self._events
                if (event_type is None or event["type"] == event_type)
                and (crm_user_id is None or event["crmUserId"] == crm_user_id)
            ]

    def request_log(self) -> list[Json]:
        """Every contract request: method, target, status, error code, idempotency key; no bodies."""
        with self._lock:
            return [dict(entry) for entry in self._requests]

    # -- acting as the CRM's users --------------------------------------------------------------------------

    def create_as_user(self, activity: Mapping[str, Any]) -> Json:
        """Create an activity as a person in the CRM would (no idempotency key, no signature)."""
        with self._lock:
            return self._create_activity(dict(activity))

    def edit_as_user(self, crm_id: str, changes: Mapping[str, Any]) -> Json:
        """Change an activity as a person in the CRM would: any writable field, owner and type included."""
        with self._lock:
            current = self._existing_activity(crm_id)
            return self._update_activity(current, dict(changes), fixed=())

    def delete_as_user(self, crm_id: str) -> None:
        with self._lock:
            self._existing_activity(crm_id)
            del self._activities[crm_id]

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        retry_after: int | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``count`` authenticated contract requests (optionally only ``method`` and paths
        starting with ``path``, relative to the base URL) with ``status`` (429, 500, 502, 503, 504).
        429 always carries ``Retry-After`` (default 1 s); 5xx only when ``retry_after`` is given."""
        failure = _validate(
            _FailureInput,
            {"count": count, "status": status, "retryAfter": retry_after, "method": method, "path": path},
        )
        assert isinstance(failure, _FailureInput)
        self._add_failure(failure)

    def reset(self) -> None:
        with self._lock:
            self._clear()
            self._verifier.reset()

    def service_client(self, base_url: str, function_key: str) -> CrmServiceClient:
        """A client that calls the service's inbound triggers as this CRM, signed with this CRM's secret."""
        return CrmServiceClient(base_url, function_key, self._signing_secret, clock=self._clock)

    # -- the contract ---------------------------------------------------------------------------------------

    def _serve_contract(self, request: _Request) -> _Response:
        with self._lock:
            request_id = f"req-{next(self._sequence)}"
            try:
                self._authenticate(request)
                relative = self._relative_path(request.path)
                injected = None if relative is None else self._injected_failure(request.method, relative)
                if injected is not None:
                    response = injected
                else:
                    template, params = _match(self._contract_routes, request.method, relative or "")
                    if request.method in _WRITE_METHODS:
                        response = self._idempotent(
                            request, lambda: self._dispatch(template, params, request)
                        )
                    else:
                        response = self._dispatch(template, params, request)
            except ContractError as exc:
                response = _error_response(exc)
            # Per request, also on a replayed response: it names this request in both sides' logs.
            response = dataclasses.replace(
                response, headers=(*response.headers, ("X-Request-Id", request_id))
            )
            self._record(request_id, request, response)
            return response

    def _relative_path(self, path: str) -> str | None:
        """The path relative to the base URL; None when it lies outside (no route can match)."""
        if not self._base_path:
            return path
        return path[len(self._base_path) :] if path.startswith(self._base_path + "/") else None

    def _authenticate(self, request: _Request) -> None:
        authorization = request.header("Authorization")
        scheme, _, credential = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise ContractError(401, "missing_api_key", "Authorization: Bearer <api key> is required")
        if not hmac.compare_digest(credential.strip().encode("utf-8"), self._api_key.encode("utf-8")):
            raise ContractError(401, "invalid_api_key", "the API key is not valid")
        self._verifier.verify(
            method=request.method,
            path_with_query=request.target,
            body=request.body,
            timestamp=request.header("X-Sync-Timestamp"),
            nonce=request.header("X-Sync-Nonce"),
            signature=request.header("X-Sync-Signature"),
        )

    def _injected_failure(self, method: str, relative_path: str) -> _Response | None:
        for failure in self._failures:
            if failure.applies(method, relative_path):
                failure.remaining -= 1
                headers: dict[str, str] = {}
                if failure.status == 429 or failure.retry_after is not None:
                    headers["Retry-After"] = str(
                        failure.retry_after if failure.retry_after is not None else 1
                    )
                error = ContractError(
                    failure.status, _INJECTABLE[failure.status], "injected failure", headers=headers
                )
                response = _error_response(error)
                self._failures = [f for f in self._failures if f.remaining > 0]
                return _Response(response.status, response.body, response.headers, injected=True)
        return None

    def _idempotent(self, request: _Request, execute: Callable[[], _Response]) -> _Response:
        key = request.header("Idempotency-Key")
        if key is None:
            raise ContractError(400, "missing_idempotency_key", "writes need an Idempotency-Key header")
        if not _IDEMPOTENCY_KEY.match(key):
            raise ContractError(
                400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 visible ASCII characters"
            )
        fingerprint = "\n".join(
            (
                request.method,
                request.target,
                request.header("If-Match") or "",
                hashlib.sha256(request.body).hexdigest(),
            )
        )
        stored = self._idempotency.get(key)
        if stored is not None:
            if stored.fingerprint != fingerprint:
                raise ContractError(
                    409, "idempotency_key_reused", "this Idempotency-Key was used for another request"
                )
            original = stored.response
            return _Response(
                original.status,
                original.body,
                (*original.headers, ("Idempotent-Replayed", "true")),
                replayed=True,
            )
        response = execute()
        if 200 <= response.status < 300:
            self._idempotency[key] = _StoredResponse(fingerprint, response)
        return response

    def _dispatch(self, template: str, params: Mapping[str, str], request: _Request) -> _Response:
        method = request.method
        if template == "/activities":
            created = self._create_activity(_json_object(request))
            location = f"{self._base_path}/activities/{quote(created['crmId'], safe='')}"
            return _json_response(201, created, (("Location", location), ("ETag", f'"{created["version"]}"')))
        if template == "/activities/{crmId}":
            crm_id = params["crmId"]
            if method == "GET":
                found = self._existing_activity(crm_id)
                return _json_response(200, found, (("ETag", f'"{found["version"]}"'),))
            if_match = _if_match_version(request.header("If-Match"))
            if method == "PATCH":
                if if_match is None:
                    raise ContractError(428, "precondition_required", "PATCH needs If-Match with the version")
                current = self._existing_activity(crm_id)
                self._check_version(current, if_match)
                updated = self._update_activity(current, _json_object(request), fixed=_FIXED_AFTER_CREATE)
                return _json_response(200, updated, (("ETag", f'"{updated["version"]}"'),))
            current = self._existing_activity(crm_id)  # DELETE
            if if_match is not None:
                self._check_version(current, if_match)
            del self._activities[crm_id]
            return _Response(204)
        if template == "/people":
            return _json_response(200, self._look_up_people(request.query))
        self._record_event(_json_object(request), request.header("Idempotency-Key"))  # POST /events
        return _Response(204)

    # -- activities -----------------------------------------------------------------------------------------

    def _existing_activity(self, crm_id: str) -> Json:
        found = self._activities.get(crm_id)
        if found is None:
            raise ContractError(404, "activity_not_found", "the activity does not exist")
        return found

    @staticmethod
    def _check_version(current: Json, if_match: str) -> None:
        if not hmac.compare_digest(if_match.encode("utf-8"), str(current["version"]).encode("utf-8")):
            raise ContractError(
                412,
                "version_mismatch",
                "the activity changed since that version",
                {"currentVersion": current["version"]},
            )

    def _create_activity(self, body: Json) -> Json:
        changes = self._activity_changes(body, fixed=None)
        activity = {**_activity_defaults(), **changes}
        for name in _REQUIRED_ON_CREATE:
            activity.setdefault(name, None)
        errors = self._activity_errors(activity)
        if errors:
            raise _invalid(errors, "the activity is invalid")
        crm_id = "act-" + secrets.token_hex(6)
        now = _iso_utc(self._clock())
        stored = {
            "crmId": crm_id,
            "version": self._next_version(),
            "createdAt": now,
            "modifiedAt": now,
            **activity,
        }
        self._activities[crm_id] = {name: stored[name] for name in ACTIVITY_FIELDS}
        return copy.deepcopy(self._activities[crm_id])

    def _update_activity(self, current: Json, body: Json, *, fixed: Sequence[str]) -> Json:
        changes = self._activity_changes(body, fixed={name: current[name] for name in fixed})
        activity = {**current, **changes}
        errors = self._activity_errors(activity)
        if errors:
            raise _invalid(errors, "the activity is invalid")
        activity["version"] = self._next_version()
        activity["modifiedAt"] = _iso_utc(self._clock())
        self._activities[current["crmId"]] = {name: activity[name] for name in ACTIVITY_FIELDS}
        return copy.deepcopy(self._activities[current["crmId"]])

    def _next_version(self) -> str:
        return str(next(self._sequence))

    @staticmethod
    def _activity_changes(body: Json, *, fixed: Mapping[str, object] | None) -> Json:
        """The fields a request sets (shape-checked); refuses read-only, fixed and wrongly null fields."""
        model = _validate(_ActivityInput, body)
        changes: Json = model.model_dump(by_alias=True, include=model.model_fields_set)
        errors: dict[str, str] = {}
        for name, value in changes.items():
            if name in _READ_ONLY_FIELDS:
                errors[name] = "is read-only"
            elif value is None and name not in _NULLABLE_FIELDS:
                errors[name] = "may not be null"
            elif fixed is not None and name in fixed and value != fixed[name]:
                errors[name] = "cannot be changed through the contract"
        if errors:
            raise _invalid(errors, "the activity is invalid")
        return changes

    def _activity_errors(self, activity: Json) -> dict[str, str]:
        """Every rule beyond the shape (required, times, zones, references, recurrence); {} when valid."""
        errors: dict[str, str] = {}
        for name in _REQUIRED_ON_CREATE:
            if activity.get(name) is None:
                errors[name] = "is required"
        owner = activity.get("ownerCrmUserId")
        if owner is not None and owner not in self._users:
            errors["ownerCrmUserId"] = "unknown CRM user"
        all_day = bool(activity["isAllDay"])
        errors.update(_time_errors(activity, all_day))
        links = activity["links"]
        if links["accountId"] is not None and links["accountId"] not in self._accounts:
            errors["links.accountId"] = "unknown account"
        for index, contact_id in enumerate(links["contactIds"]):
            if contact_id not in self._contacts:
                errors[f"links.contactIds.{index}"] = "unknown contact"
        for index, lead_id in enumerate(links["leadIds"]):
            if lead_id not in self._leads:
                errors[f"links.leadIds.{index}"] = "unknown lead"
        errors.update(self._attendee_errors(activity["attendees"], "attendees"))
        organizer = activity["organizer"]
        if organizer is not None and not _EMAIL.match(organizer["email"]):
            errors["organizer.email"] = "is not an email address"
        meeting = activity["onlineMeeting"]
        if meeting is not None and not meeting["joinUrl"].startswith("https://"):
            errors["onlineMeeting.joinUrl"] = "must be an https URL"
        errors.update(self._recurrence_errors(activity, all_day))
        return errors

    def _attendee_errors(self, attendees: Sequence[Json], prefix: str) -> dict[str, str]:
        errors: dict[str, str] = {}
        seen: set[str] = set()
        known = {"user": self._users, "contact": self._contacts, "lead": self._leads}
        for index, attendee in enumerate(attendees):
            path = f"{prefix}.{index}"
            email = attendee["email"]
            if not _EMAIL.match(email):
                errors[f"{path}.email"] = "is not an email address"
            elif email.casefold() in seen:
                errors[f"{path}.email"] = "appears twice in the attendees"
            seen.add(email.casefold())
            crm_id, kind = attendee["crmId"], attendee["kind"]
            if crm_id is not None and kind == "external":
                errors[f"{path}.crmId"] = "must be null for an external attendee"
            elif crm_id is not None and crm_id not in known[kind]:
                errors[f"{path}.crmId"] = f"unknown {kind}"
        return errors

    def _recurrence_errors(self, activity: Json, all_day: bool) -> dict[str, str]:
        errors: dict[str, str] = {}
        recurrence = activity["recurrence"]
        overrides, cancelled = activity["occurrenceOverrides"], activity["cancelledOccurrences"]
        if recurrence is None:
            if overrides:
                errors["occurrenceOverrides"] = "must be empty when recurrence is null"
            if cancelled:
                errors["cancelledOccurrences"] = "must be empty when recurrence is null"
            return errors
        pattern, span = recurrence["pattern"], recurrence["range"]
        needs = {
            "weekly": ("daysOfWeek",),
            "absoluteMonthly": ("dayOfMonth",),
            "relativeMonthly": ("daysOfWeek",),
            "absoluteYearly": ("dayOfMonth", "month"),
            "relativeYearly": ("daysOfWeek", "month"),
        }
        for name in needs.get(pattern["type"], ()):
            if pattern[name] in (None, []):
                errors[f"recurrence.pattern.{name}"] = f"is required for {pattern['type']} recurrence"
        start_date = _parse_date(span["startDate"])
        if start_date is None:
            errors["recurrence.range.startDate"] = "must be a date (YYYY-MM-DD)"
        if span["type"] == "endDate":
            end_date = _parse_date(span["endDate"])
            if end_date is None:
                errors["recurrence.range.endDate"] = "is required (a date) for an endDate range"
            elif start_date is not None and end_date < start_date:
                errors["recurrence.range.endDate"] = "must not be before startDate"
        elif span["endDate"] is not None and _parse_date(span["endDate"]) is None:
            errors["recurrence.range.endDate"] = "must be a date (YYYY-MM-DD)"
        if span["type"] == "numbered" and span["numberOfOccurrences"] is None:
            errors["recurrence.range.numberOfOccurrences"] = "is required for a numbered range"
        zone = span["recurrenceTimeZone"]
        if zone is not None and not _is_time_zone(zone):
            errors["recurrence.range.recurrenceTimeZone"] = "must be an IANA time zone name"
        parse = _parse_date if all_day else _parse_date_time
        expected = "a date (YYYY-MM-DD)" if all_day else "an RFC 3339 date-time with offset"
        originals: set[str] = set()
        for index, override in enumerate(overrides):
            path = f"occurrenceOverrides.{index}"
            if parse(override["originalStart"]) is None:
                errors[f"{path}.originalStart"] = f"must be {expected}"
            elif override["originalStart"] in originals:
                errors[f"{path}.originalStart"] = "appears twice"
            originals.add(override["originalStart"])
            if (override["start"] is None) != (override["end"] is None):
                errors[f"{path}.start"] = "start and end come together"
            for name in ("start", "end"):
                if override[name] is not None and parse(override[name]) is None:
                    errors[f"{path}.{name}"] = f"must be {expected}"
            if override["attendees"] is not None:
                errors.update(self._attendee_errors(override["attendees"], f"{path}.attendees"))
        for index, original in enumerate(cancelled):
            if parse(original) is None:
                errors[f"cancelledOccurrences.{index}"] = f"must be {expected}"
        return errors

    # -- people and events ----------------------------------------------------------------------------------

    def _look_up_people(self, query: str) -> Json:
        params = parse_qs(query, keep_blank_values=True)
        errors = {name: "unknown query parameter" for name in params if name != "email"}
        emails = params.get("email", [])
        if not emails:
            errors["email"] = "at least one email is required"
        elif len(emails) > MAX_PEOPLE_EMAILS:
            errors["email"] = f"at most {MAX_PEOPLE_EMAILS} emails per request"
        elif any(not email.strip() for email in emails):
            errors["email"] = "must not be empty"
        if errors:
            raise _invalid(errors)
        wanted = list(dict.fromkeys(email.strip().casefold() for email in emails))

        def matches(records: Mapping[str, Json]) -> list[Json]:
            return [
                record
                for email in wanted
                for record in records.values()
                if str(record["email"]).casefold() == email
            ]

        return {
            "contacts": [self._contact_json(contact) for contact in matches(self._contacts)],
            "leads": [dict(lead) for lead in matches(self._leads)],
            "users": [dict(user) for user in matches(self._users)],
        }

    def _contact_json(self, contact: Json) -> Json:
        account = self._accounts.get(contact["accountId"]) if contact["accountId"] is not None else None
        return {
            "crmId": contact["crmId"],
            "email": contact["email"],
            "name": contact["name"],
            "account": None if account is None else {"crmId": account["crmId"], "name": account["name"]},
        }

    def _record_event(self, body: Json, idempotency_key: str | None) -> None:
        event = _validate(_EventInput, body)
        assert isinstance(event, _EventInput)
        errors: dict[str, str] = {}
        if not _ID.match(event.crm_user_id):
            errors["crmUserId"] = "is not a valid id"
        if _parse_date_time(event.occurred_at) is None:
            errors["occurredAt"] = "must be an RFC 3339 date-time with offset"
        if errors:
            raise _invalid(errors, "the event is invalid")
        _validate(_EVENT_DETAILS[event.type], event.details, prefix="details")
        self._events.append(
            {
                "eventId": f"evt-{next(self._sequence)}",
                "receivedAt": _iso_utc(self._clock()),
                "type": event.type,
                "crmUserId": event.crm_user_id,
                "occurredAt": event.occurred_at,
                "details": event.details,
                "idempotencyKey": idempotency_key,
            }
        )

    # -- bookkeeping ----------------------------------------------------------------------------------------

    def _record(self, request_id: str, request: _Request, response: _Response) -> None:
        code: str | None = None
        if response.status >= 400:
            try:
                code = json.loads(response.body)["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
        self._requests.append(
            {
                "requestId": request_id,
                "at": _iso_utc(self._clock()),
                "method": request.method,
                "target": request.target,
                "status": response.status,
                "code": code,
                "idempotencyKey": request.header("Idempotency-Key"),
                "replayed": response.replayed,
                "injected": response.injected,
            }
        )
        # The path without its query (it may hold emails); never a body or a header value.
        log.debug("crm emulator: %s %s -> %d %s", request.method, request.path, response.status, code or "-")

    def _add_failure(self, failure: _FailureInput) -> None:
        if failure.status not in _INJECTABLE:
            raise _invalid({"status": f"must be one of {', '.join(map(str, sorted(_INJECTABLE)))}"})
        with self._lock:
            self._failures.append(
                _Failure(
                    failure.count,
                    failure.status,
                    failure.retry_after,
                    failure.method.upper() if failure.method else None,
                    failure.path,
                )
            )

    def _new_or_given_id(self, given: str | None, prefix: str, path: str) -> str:
        if given is None:
            return f"{prefix}-{secrets.token_hex(6)}"
        if not _ID.match(given):
            raise _invalid({path: "must be 1-128 characters of A-Z a-z 0-9 . _ : @ -"})
        return given

    @staticmethod
    def _check_seed_email(email: str, path: str) -> None:
        if not _EMAIL.match(email):
            raise _invalid({path: "is not an email address"})

    # -- the control API ------------------------------------------------------------------------------------

    def _serve_devkit(self, request: _Request) -> _Response:
        try:
            template, params = _match(self._devkit_routes, request.method, request.path)
            return self._devkit(template, params, request)
        except ContractError as exc:
            return _error_response(exc)

    def _devkit(self, template: str, params: Mapping[str, str], request: _Request) -> _Response:
        query = {name: values[-1] for name, values in parse_qs(request.query).items()}
        method = request.method
        if template == "/_devkit/reset":
            self.reset()
            return _Response(204)
        if template == "/_devkit/seed":
            return _json_response(201, self.seed(_json_object(request)))
        if template == "/_devkit/people":
            return _json_response(200, self.people())
        if template == "/_devkit/activities":
            if method == "POST":
                return _json_response(201, self.create_as_user(_json_object(request)))
            return _json_response(200, {"activities": self.activities(query.get("ownerCrmUserId"))})
        if template == "/_devkit/activities/{crmId}":
            crm_id = params["crmId"]
            if method == "PATCH":
                return _json_response(200, self.edit_as_user(crm_id, _json_object(request)))
            if method == "DELETE":
                self.delete_as_user(crm_id)
                return _Response(204)
            found = self.activity(crm_id)
            if found is None:
                raise ContractError(404, "activity_not_found", "the activity does not exist")
            return _json_response(200, found)
        if template == "/_devkit/events":
            return _json_response(200, {"events": self.events(query.get("type"), query.get("crmUserId"))})
        if template == "/_devkit/requests":
            return _json_response(200, {"requests": self.request_log()})
        failure = _validate(_FailureInput, _json_object(request))  # POST /_devkit/failures
        assert isinstance(failure, _FailureInput)
        self._add_failure(failure)
        return _Response(204)


def _time_errors(activity: Json, all_day: bool) -> dict[str, str]:
    errors: dict[str, str] = {}
    start_text, end_text, zone = activity.get("start"), activity.get("end"), activity["timeZone"]
    if all_day:
        start_day, end_day = _parse_date(start_text), _parse_date(end_text)
        for name, text, parsed in (("start", start_text, start_day), ("end", end_text, end_day)):
            if text is not None and parsed is None:
                errors[name] = "must be a date (YYYY-MM-DD) for an all-day activity"
        if start_day is not None and end_day is not None and end_day <= start_day:
            errors["end"] = "must be after start (the end date is exclusive)"
        if zone is not None and not _is_time_zone(zone):
            errors["timeZone"] = "must be an IANA time zone name"
        return errors
    start_at, end_at = _parse_date_time(start_text), _parse_date_time(end_text)
    for name, text, parsed_at in (("start", start_text, start_at), ("end", end_text, end_at)):
        if text is not None and parsed_at is None:
            errors[name] = "must be an RFC 3339 date-time with offset"
    if start_at is not None and end_at is not None and end_at < start_at:
        errors["end"] = "must not be before start"
    if zone is None:
        errors["timeZone"] = "is required for a timed activity"
    elif not _is_time_zone(zone):
        errors["timeZone"] = "must be an IANA time zone name"
    return errors


# ------------------------------------------------------------------------------------------------------------
# The HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], emulator: CrmEmulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """End idle keep-alive connections, so their handler threads finish and close their sockets."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "CrmEmulator/1"
    timeout = 30  # an idle keep-alive connection is closed after this many seconds
    # Headers and body leave in one segment (the buffer is flushed after each request) and without Nagle's
    # delay: otherwise delayed ACKs add ~40 ms to every response on loopback.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    @property
    def _server(self) -> _Server:
        assert isinstance(self.server, _Server)
        return self.server

    def setup(self) -> None:
        super().setup()
        self._server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._server.untrack(self.connection)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        emulator = self._server.emulator
        parts = urlsplit(self.path)
        try:
            body = self._read_body(emulator.max_body_bytes)
        except ContractError as exc:
            if exc.status != 413:
                self.close_connection = True  # an unread body must not be taken for the next request
            self._send(_error_response(exc))
            return
        request = _Request(self.command, self.path, parts.path, parts.query, self.headers, body)
        if parts.path == "/_devkit" or parts.path.startswith("/_devkit/"):
            response = emulator._serve_devkit(request)
        else:
            response = emulator._serve_contract(request)
        self._send(response)

    def _read_body(self, limit: int) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise ContractError(411, "length_required", "send the body with Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            raise ContractError(400, "invalid_request", "Content-Length is not a number") from None
        if length < 0:
            raise ContractError(400, "invalid_request", "Content-Length is negative")
        if length > limit:
            # Read the body away so the client gets to see the 413 rather than a reset connection; a body too
            # large even for that ends the connection instead.
            if length > _MAX_DRAIN_BYTES:
                self.close_connection = True
            else:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            raise ContractError(413, "payload_too_large", f"the body is larger than {limit} bytes")
        return self.rfile.read(length)

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.status != 204:
            self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if response.body and response.status != 204:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        # Requests are logged by the emulator (without queries); http.server's own lines would carry them.
        pass

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("crm emulator: malformed HTTP request")


# ------------------------------------------------------------------------------------------------------------
# The CRM's side of the inbound contract: calling the service's HTTP triggers


@dataclass(frozen=True)
class ServiceResponse:
    status: int
    body: Any  # parsed JSON, or None for an empty or non-JSON body
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = self.body["error"].get("code")
            return code if isinstance(code, str) else None
        return None


class CrmServiceClient:
    """Calls the service's inbound triggers as the CRM: ``x-functions-key`` plus a v1 signature per request.

    ``base_url`` is the function app's base (``PUBLIC_BASE_URL``, without ``/api``). Answers come back as
    ``ServiceResponse`` whatever their status, so tests can look at errors too.
    """

    def __init__(
        self,
        base_url: str,
        function_key: str,
        signing_secret: str,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._function_key = function_key
        self._signing_secret = signing_secret
        self._clock = clock
        self._timeout = timeout
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()

    def connect(self, crm_user_id: str, return_url: str, *, login_hint: str | None = None) -> ServiceResponse:
        body: Json = {"returnUrl": return_url}
        if login_hint is not None:
            body["loginHint"] = login_hint
        return self._call("POST", f"/api/users/{_segment(crm_user_id)}/connect", body=body)

    def disconnect(self, crm_user_id: str, *, purge: bool = False) -> ServiceResponse:
        return self._call("POST", f"/api/users/{_segment(crm_user_id)}/disconnect", body={"purge": purge})

    def status(self, crm_user_id: str) -> ServiceResponse:
        return self._call("GET", f"/api/users/{_segment(crm_user_id)}/status")

    def put_activity(self, crm_user_id: str, activity: Mapping[str, Any]) -> ServiceResponse:
        """Push an activity as the CRM holds it (e.g. ``CrmEmulator.activity(crm_id)``)."""
        crm_id = str(activity["crmId"])
        path = f"/api/users/{_segment(crm_user_id)}/activities/{_segment(crm_id)}"
        return self._call("PUT", path, body=dict(activity))

    def delete_activity(self, crm_user_id: str, crm_id: str, version: str) -> ServiceResponse:
        path = f"/api/users/{_segment(crm_user_id)}/activities/{_segment(crm_id)}"
        return self._call("DELETE", path, query={"version": version})

    def health(self) -> ServiceResponse:
        return self._call("GET", "/api/health")

    def _call(
        self, method: str, path: str, *, body: Json | None = None, query: Mapping[str, str] | None = None
    ) -> ServiceResponse:
        url = self._base_url + path + (f"?{urlencode(query)}" if query else "")
        data = b"" if body is None else json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"x-functions-key": self._function_key, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        prepared = self._session.prepare_request(
            requests.Request(method, url, data=data or None, headers=headers)
        )
        # Sign exactly what goes on the wire: the prepared request target and body bytes.
        prepared.headers.update(
            signature_headers(self._signing_secret, method, prepared.path_url, data, now=self._clock())
        )
        answer = self._session.send(prepared, timeout=self._timeout)
        try:
            parsed: Any = answer.json() if answer.content else None
        except ValueError:
            parsed = None
        return ServiceResponse(answer.status_code, parsed, answer.headers)

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def __enter__(self) -> CrmServiceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _segment(value: str) -> str:
    return quote(value, safe="")


# ------------------------------------------------------------------------------------------------------------
# python -m devkit crm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``crm`` command's options (``python -m devkit crm``)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)"
    )
    parser.add_argument("--base-path", default="", help="path prefix of the contract routes, e.g. /crm/v1")
    parser.add_argument(
        "--seed", type=Path, help="JSON file {users, accounts, contacts, leads} to load at start"
    )


def run(args: argparse.Namespace) -> int:
    """Run the CRM emulator until SIGINT/SIGTERM.

    The API key and signing secret are ``CRM_API_KEY`` and ``CRM_SIGNING_SECRET`` from the environment when
    set, else the local values of ``local.settings.sample.json``. Prints one JSON line (addresses, no secret).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    emulator = CrmEmulator(
        os.environ.get("CRM_API_KEY") or DEFAULT_API_KEY,
        os.environ.get("CRM_SIGNING_SECRET") or DEFAULT_SIGNING_SECRET,
        host=args.host,
        port=args.port,
        base_path=args.base_path,
    )
    if args.seed is not None:
        try:
            emulator.seed(json.loads(args.seed.read_text(encoding="utf-8")))
        except (OSError, ValueError, ContractError) as exc:
            print(f"error: cannot load the seed file {args.seed}: {exc}", file=sys.stderr)
            return 2
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with emulator:
        print(json.dumps({"crmBaseUrl": emulator.base_url, "controlUrl": emulator.devkit_url}), flush=True)
        try:
            while not stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CRM emulator alone: ``python -c 'from devkit.crm_emulator import main; main()'``."""
    parser = argparse.ArgumentParser(prog="python -m devkit crm", description=run.__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
