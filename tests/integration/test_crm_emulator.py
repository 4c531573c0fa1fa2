"""The CRM emulator implements the outbound side of docs/crm-contract.md: over real sockets, signed by hand.

The signing helper here is written from the contract text, independent of the emulator's verifier, so the two
implementations check each other (and the worked examples in the doc check both).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.crm_emulator import (
    ACTIVITY_FIELDS,
    CONTRACT_ROUTES,
    ContractError,
    CrmEmulator,
    SignatureVerifier,
)

REPO = Path(__file__).resolve().parents[2]
CONTRACT_DOC = REPO / "docs" / "crm-contract.md"
OPENAPI = REPO / "docs" / "crm-contract.openapi.json"

API_KEY = "test-crm-api-key"
SECRET = "test-crm-signing-secret"


# --- signing, from the contract text ------------------------------------------------------------------------


def sign(
    secret: str,
    method: str,
    target: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = secrets.token_hex(16) if nonce is None else nonce
    canonical = f"{timestamp}\n{nonce}\n{method.upper()}\n{target}\n{hashlib.sha256(body).hexdigest()}"
    digest = hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    return {"X-Sync-Timestamp": str(timestamp), "X-Sync-Nonce": nonce, "X-Sync-Signature": f"v1={digest}"}


class Crm:
    """Calls the emulator as the service's CRM client would, with knobs to get each part wrong."""

    def __init__(self, http: requests.Session, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    def prepare(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        if_match: str | None = None,
        api_key: str | None = API_KEY,
        secret: str = SECRET,
        signed: bool = True,
        timestamp: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.PreparedRequest:
        data = b"" if body is None else json.dumps(body).encode()
        sent: dict[str, str] = {"Content-Type": "application/json"} if body is not None else {}
        if api_key is not None:
            sent["Authorization"] = f"Bearer {api_key}"
        if method in {"POST", "PATCH", "DELETE"}:
            sent["Idempotency-Key"] = key or secrets.token_hex(8)
        if if_match is not None:
            sent["If-Match"] = if_match
        sent.update(headers or {})
        prepared = self.http.prepare_request(
            requests.Request(method, self.base_url + path, data=data or None, headers=sent)
        )
        if signed:
            prepared.headers.update(sign(secret, method, prepared.path_url, data, timestamp=timestamp))
        return prepared

    def send(self, method: str, path: str, body: Any = None, **options: Any) -> requests.Response:
        return self.http.send(self.prepare(method, path, body, **options), timeout=10)


def error_code(response: requests.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    code = body["error"]["code"]
    assert isinstance(code, str)
    return code


def meeting(**changes: Any) -> dict[str, Any]:
    activity: dict[str, Any] = {
        "ownerCrmUserId": "usr-1",
        "type": "meeting",
        "subject": "Kick-off",
        "start": "2026-01-05T10:00:00+01:00",
        "end": "2026-01-05T11:00:00+01:00",
        "timeZone": "Europe/Berlin",
    }
    activity.update(changes)
    return activity


SEED: dict[str, Any] = {
    "users": [
        {"crmUserId": "usr-1", "email": "jo@vendor.example", "name": "Jo"},
        {"crmUserId": "usr-2", "email": "kim@vendor.example", "name": "Kim"},
    ],
    "accounts": [{"crmId": "acc-1", "name": "Contoso"}],
    "contacts": [
        {"crmId": "con-1", "email": "ada@contoso.com", "name": "Ada", "accountId": "acc-1"},
        {"crmId": "con-2", "email": "solo@example.org", "name": "Solo"},
    ],
    "leads": [{"crmId": "lead-1", "email": "bob@fabrikam.com", "name": "Bob", "company": "Fabrikam"}],
}


@pytest.fixture(scope="module")
def running_crm_emulator() -> Iterator[CrmEmulator]:
    with CrmEmulator(API_KEY, SECRET) as emulator:
        yield emulator


@pytest.fixture
def crm_emulator(running_crm_emulator: CrmEmulator) -> CrmEmulator:
    """The module's emulator, reset and seeded: no test sees another's state."""
    running_crm_emulator.reset()
    running_crm_emulator.seed(SEED)
    return running_crm_emulator


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def crm(crm_emulator: CrmEmulator, http: requests.Session) -> Crm:
    return Crm(http, crm_emulator.base_url)


# --- authentication -----------------------------------------------------------------------------------------


def test_a_correctly_signed_request_is_accepted(crm: Crm, crm_emulator: CrmEmulator) -> None:
    created = crm.send("POST", "/activities", meeting())
    assert created.status_code == 201, created.text
    body = created.json()
    assert tuple(body) == ACTIVITY_FIELDS
    assert created.headers["ETag"] == f'"{body["version"]}"'
    assert created.headers["Location"] == f"/activities/{body['crmId']}"
    read = crm.send("GET", f"/activities/{body['crmId']}")
    assert read.status_code == 200
    assert read.json() == body
    assert crm_emulator.activity(body["crmId"]) == body


def test_an_unsigned_request_is_rejected(crm: Crm, crm_emulator: CrmEmulator) -> None:
    response = crm.send("POST", "/activities", meeting(), signed=False)
    assert response.status_code == 401
    assert error_code(response) == "missing_signature"
    assert crm_emulator.activities() == []


def test_a_tampered_body_is_rejected(crm: Crm, crm_emulator: CrmEmulator) -> None:
    prepared = crm.prepare("POST", "/activities", meeting(subject="signed"))
    prepared.prepare_body(json.dumps(meeting(subject="tampered")).encode(), None)
    response = crm.http.send(prepared, timeout=10)
    assert response.status_code == 401
    assert error_code(response) == "invalid_signature"
    assert crm_emulator.activities() == []


def test_a_tampered_path_is_rejected(crm: Crm, crm_emulator: CrmEmulator) -> None:
    created = crm.send("POST", "/activities", meeting()).json()
    prepared = crm.prepare("DELETE", "/activities/act-someone-else")
    prepared.url = f"{crm.base_url}/activities/{created['crmId']}"
    response = crm.http.send(prepared, timeout=10)
    assert response.status_code == 401
    assert error_code(response) == "invalid_signature"
    assert crm_emulator.activity(created["crmId"]) is not None


def test_a_request_signed_with_another_secret_is_rejected(crm: Crm) -> None:
    response = crm.send("POST", "/activities", meeting(), secret="not-the-secret")
    assert response.status_code == 401
    assert error_code(response) == "invalid_signature"


@pytest.mark.parametrize("skew", [-301, 301])
def test_a_timestamp_outside_the_window_is_rejected(crm: Crm, skew: int) -> None:
    response = crm.send("GET", "/people?email=ada%40contoso.com", timestamp=int(time.time()) + skew)
    assert response.status_code == 401
    assert error_code(response) == "stale_timestamp"


def test_a_timestamp_inside_the_window_is_accepted(crm: Crm) -> None:
    response = crm.send("GET", "/people?email=ada%40contoso.com", timestamp=int(time.time()) - 250)
    assert response.status_code == 200


def test_a_replayed_request_is_rejected(crm: Crm, crm_emulator: CrmEmulator) -> None:
    prepared = crm.prepare("POST", "/activities", meeting())
    first = crm.http.send(prepared, timeout=10)
    again = crm.http.send(prepared, timeout=10)  # same nonce and signature, byte for byte
    assert first.status_code == 201
    assert again.status_code == 401
    assert error_code(again) == "replayed_nonce"
    assert len(crm_emulator.activities()) == 1


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"X-Sync-Timestamp": "yesterday"}, "malformed_signature"),
        ({"X-Sync-Nonce": "short"}, "malformed_signature"),
        ({"X-Sync-Signature": "sha256=abc"}, "malformed_signature"),
    ],
)
def test_malformed_signature_headers_are_rejected(crm: Crm, headers: dict[str, str], code: str) -> None:
    prepared = crm.prepare("GET", "/people?email=ada%40contoso.com")
    prepared.headers.update(headers)
    response = crm.http.send(prepared, timeout=10)
    assert response.status_code == 401
    assert error_code(response) == code


def test_a_rotation_signature_list_is_accepted_when_one_entry_matches(crm: Crm) -> None:
    prepared = crm.prepare("GET", "/people?email=ada%40contoso.com")
    prepared.headers["X-Sync-Signature"] = f"v1={'0' * 64}, {prepared.headers['X-Sync-Signature']}"
    assert crm.http.send(prepared, timeout=10).status_code == 200


@pytest.mark.parametrize(("api_key", "code"), [(None, "missing_api_key"), ("wrong-key", "invalid_api_key")])
def test_a_missing_or_wrong_api_key_is_rejected(crm: Crm, api_key: str | None, code: str) -> None:
    response = crm.send("GET", "/people?email=ada%40contoso.com", api_key=api_key)
    assert response.status_code == 401
    assert error_code(response) == code


def test_the_signature_covers_the_base_path(http: requests.Session) -> None:
    with CrmEmulator(API_KEY, SECRET, base_path="/crm/v1") as emulator:
        emulator.seed(SEED)
        assert emulator.base_url.endswith("/crm/v1")
        crm = Crm(http, emulator.base_url)
        assert crm.send("POST", "/activities", meeting()).status_code == 201
        # Signing only the path relative to the base URL is a classic client bug: it must fail.
        prepared = crm.prepare("GET", "/people?email=ada%40contoso.com")
        prepared.headers.update(sign(SECRET, "GET", "/people?email=ada%40contoso.com", b""))
        response = http.send(prepared, timeout=10)
        assert response.status_code == 401
        assert error_code(response) == "invalid_signature"


def test_unauthenticated_callers_learn_nothing_about_routes(crm: Crm) -> None:
    assert error_code(crm.send("GET", "/no/such/path", signed=False)) == "missing_signature"
    response = crm.send("GET", "/no/such/path")
    assert response.status_code == 404
    assert error_code(response) == "route_not_found"


# --- idempotency --------------------------------------------------------------------------------------------


def test_the_same_key_and_body_replay_the_stored_response(crm: Crm, crm_emulator: CrmEmulator) -> None:
    first = crm.send("POST", "/activities", meeting(), key="create-1")
    second = crm.send("POST", "/activities", meeting(), key="create-1")  # a retry: new nonce, same key
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["ETag"] == first.headers["ETag"]
    assert second.headers["X-Request-Id"] != first.headers["X-Request-Id"]
    assert [entry["requestId"] for entry in crm_emulator.request_log()] == [
        first.headers["X-Request-Id"],
        second.headers["X-Request-Id"],
    ]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(crm_emulator.activities()) == 1


def test_the_same_key_with_another_body_is_a_conflict(crm: Crm, crm_emulator: CrmEmulator) -> None:
    assert crm.send("POST", "/activities", meeting(), key="create-1").status_code == 201
    response = crm.send("POST", "/activities", meeting(subject="Other"), key="create-1")
    assert response.status_code == 409
    assert error_code(response) == "idempotency_key_reused"
    assert len(crm_emulator.activities()) == 1


def test_a_failed_write_is_not_stored_under_its_key(crm: Crm, crm_emulator: CrmEmulator) -> None:
    crm_emulator.fail_next(1, status=503)
    assert crm.send("POST", "/activities", meeting(), key="create-1").status_code == 503
    retried = crm.send("POST", "/activities", meeting(), key="create-1")
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried.headers
    assert len(crm_emulator.activities()) == 1


@pytest.mark.parametrize(
    ("key", "code"), [(None, "missing_idempotency_key"), ("bad key", "invalid_idempotency_key")]
)
def test_writes_need_a_well_formed_idempotency_key(crm: Crm, key: str | None, code: str) -> None:
    prepared = crm.prepare("POST", "/activities", meeting())
    if key is None:
        del prepared.headers["Idempotency-Key"]
    else:
        prepared.headers["Idempotency-Key"] = key
    response = crm.http.send(prepared, timeout=10)
    assert response.status_code == 400
    assert error_code(response) == code


# --- versions -----------------------------------------------------------------------------------------------


def test_an_update_with_the_current_version_succeeds(crm: Crm) -> None:
    created = crm.send("POST", "/activities", meeting()).json()
    path = f"/activities/{created['crmId']}"
    updated = crm.send(
        "PATCH", path, {"subject": "Moved", "location": "Room 1"}, if_match=f'"{created["version"]}"'
    )
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert body["subject"] == "Moved"
    assert body["location"] == "Room 1"
    assert body["start"] == created["start"]
    assert body["version"] != created["version"]
    assert updated.headers["ETag"] == f'"{body["version"]}"'
    bare = crm.send("PATCH", path, {"location": None}, if_match=body["version"])  # a bare version is accepted
    assert bare.status_code == 200
    assert bare.json()["location"] is None


def test_an_update_with_an_old_version_is_refused(crm: Crm, crm_emulator: CrmEmulator) -> None:
    created = crm.send("POST", "/activities", meeting()).json()
    edited = crm_emulator.edit_as_user(created["crmId"], {"subject": "Edited in the CRM"})
    assert edited["version"] != created["version"]
    path = f"/activities/{created['crmId']}"
    response = crm.send("PATCH", path, {"subject": "From Outlook"}, if_match=f'"{created["version"]}"')
    assert response.status_code == 412
    assert error_code(response) == "version_mismatch"
    assert response.json()["error"]["details"]["currentVersion"] == edited["version"]
    deleting = crm.send("DELETE", path, if_match=f'"{created["version"]}"')
    assert deleting.status_code == 412  # a modification beats a deletion
    assert crm_emulator.activity(created["crmId"]) == edited


def test_an_update_without_if_match_is_refused(crm: Crm) -> None:
    created = crm.send("POST", "/activities", meeting()).json()
    response = crm.send("PATCH", f"/activities/{created['crmId']}", {"subject": "x"})
    assert response.status_code == 428
    assert error_code(response) == "precondition_required"


def test_deleting_and_the_gone_code(crm: Crm, crm_emulator: CrmEmulator) -> None:
    created = crm.send("POST", "/activities", meeting()).json()
    path = f"/activities/{created['crmId']}"
    assert crm.send("DELETE", path, if_match=f'"{created["version"]}"').status_code == 204
    for response in (
        crm.send("GET", path),
        crm.send("DELETE", path),
        crm.send("PATCH", path, {}, if_match='"1"'),
    ):
        assert response.status_code == 404
        assert error_code(response) == "activity_not_found"
    assert crm_emulator.activities() == []


def test_owner_and_type_cannot_change_through_the_contract(crm: Crm, crm_emulator: CrmEmulator) -> None:
    created = crm.send("POST", "/activities", meeting()).json()
    response = crm.send(
        "PATCH",
        f"/activities/{created['crmId']}",
        {"type": "call", "ownerCrmUserId": "usr-2", "version": "9"},
        if_match=f'"{created["version"]}"',
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"]["fields"] == {
        "type": "cannot be changed through the contract",
        "ownerCrmUserId": "cannot be changed through the contract",
        "version": "is read-only",
    }
    moved = crm_emulator.edit_as_user(created["crmId"], {"ownerCrmUserId": "usr-2"})  # a CRM user may
    assert moved["ownerCrmUserId"] == "usr-2"
    assert [a["crmId"] for a in crm_emulator.activities("usr-2")] == [created["crmId"]]


# --- validation ---------------------------------------------------------------------------------------------


def test_invalid_activities_get_field_errors(crm: Crm) -> None:
    response = crm.send(
        "POST",
        "/activities",
        meeting(
            end="2026-01-05T09:00:00+01:00",
            timeZone="Mars/Olympus",
            colour="red",
            attendees=[{"email": "ada@contoso.com", "kind": "contact", "crmId": "con-404"}],
            links={"accountId": "acc-404"},
        ),
    )
    assert response.status_code == 400
    assert error_code(response) == "invalid_request"
    assert response.json()["error"]["details"]["fields"] == {"colour": "unknown field"}
    response = crm.send(
        "POST",
        "/activities",
        meeting(
            end="2026-01-05T09:00:00+01:00",
            timeZone="Mars/Olympus",
            attendees=[{"email": "ada@contoso.com", "kind": "contact", "crmId": "con-404"}],
            links={"accountId": "acc-404"},
        ),
    )
    assert response.json()["error"]["details"]["fields"] == {
        "end": "must not be before start",
        "timeZone": "must be an IANA time zone name",
        "attendees.0.crmId": "unknown contact",
        "links.accountId": "unknown account",
    }


def test_all_day_activities_use_dates_with_an_exclusive_end(crm: Crm) -> None:
    one_day = meeting(isAllDay=True, start="2026-01-05", end="2026-01-06", timeZone=None)
    created = crm.send("POST", "/activities", one_day)
    assert created.status_code == 201, created.text
    assert created.json()["isAllDay"] is True
    same_day = crm.send("POST", "/activities", dict(one_day, end="2026-01-05"))
    assert same_day.json()["error"]["details"]["fields"] == {
        "end": "must be after start (the end date is exclusive)"
    }
    timed = crm.send("POST", "/activities", dict(one_day, start="2026-01-05T00:00:00Z"))
    assert "start" in timed.json()["error"]["details"]["fields"]


def test_the_reserved_recurrence_shape_is_accepted_and_checked(crm: Crm) -> None:
    series = meeting(
        recurrence={
            "pattern": {
                "type": "weekly",
                "interval": 1,
                "daysOfWeek": ["monday"],
                "firstDayOfWeek": "monday",
            },
            "range": {"type": "endDate", "startDate": "2026-01-05", "endDate": "2026-03-30"},
        },
        occurrenceOverrides=[{"originalStart": "2026-01-12T10:00:00+01:00", "subject": "Moved"}],
        cancelledOccurrences=["2026-01-19T10:00:00+01:00"],
    )
    created = crm.send("POST", "/activities", series)
    assert created.status_code == 201, created.text
    assert created.json()["recurrence"]["pattern"]["dayOfMonth"] is None
    broken = dict(
        series,
        recurrence={
            "pattern": {"type": "absoluteYearly", "interval": 1},
            "range": {"type": "numbered", "startDate": "2026-01-05"},
        },
    )
    fields = crm.send("POST", "/activities", broken).json()["error"]["details"]["fields"]
    assert fields == {
        "recurrence.pattern.dayOfMonth": "is required for absoluteYearly recurrence",
        "recurrence.pattern.month": "is required for absoluteYearly recurrence",
        "recurrence.range.numberOfOccurrences": "is required for a numbered range",
    }


def test_bodies_must_be_json_objects(crm: Crm) -> None:
    wrong_type = crm.send("POST", "/activities", meeting(), headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    assert error_code(wrong_type) == "unsupported_media_type"
    array = crm.send("POST", "/activities", [meeting()])
    assert array.status_code == 400
    assert error_code(array) == "invalid_json"


def test_oversized_bodies_are_refused(crm: Crm) -> None:
    response = crm.send("POST", "/activities", meeting(description="x" * 1_100_000))
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"


def test_unknown_methods_on_known_paths_are_405(crm: Crm) -> None:
    response = crm.send("PUT", "/activities/act-1", meeting(), headers={"Idempotency-Key": "k"})
    assert response.status_code == 405
    assert error_code(response) == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) == {"GET", "PATCH", "DELETE"}


# --- people and events --------------------------------------------------------------------------------------


def test_people_lookup_returns_contacts_with_their_account_leads_and_users(crm: Crm) -> None:
    emails = [
        "ADA@contoso.com",
        "bob@fabrikam.com",
        "jo@vendor.example",
        "solo@example.org",
        "nobody@x.example",
    ]
    response = crm.send("GET", "/people?" + "&".join(f"email={e.replace('@', '%40')}" for e in emails))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "contacts": [
            {
                "crmId": "con-1",
                "email": "ada@contoso.com",
                "name": "Ada",
                "account": {"crmId": "acc-1", "name": "Contoso"},
            },
            {"crmId": "con-2", "email": "solo@example.org", "name": "Solo", "account": None},
        ],
        "leads": [{"crmId": "lead-1", "email": "bob@fabrikam.com", "name": "Bob", "company": "Fabrikam"}],
        "users": [{"crmUserId": "usr-1", "email": "jo@vendor.example", "name": "Jo"}],
    }


def test_people_lookup_checks_its_query(crm: Crm) -> None:
    none = crm.send("GET", "/people")
    assert none.status_code == 400
    assert none.json()["error"]["details"]["fields"] == {"email": "at least one email is required"}
    too_many = crm.send("GET", "/people?" + "&".join(f"email=p{i}%40x.example" for i in range(51)))
    assert too_many.json()["error"]["details"]["fields"] == {"email": "at most 50 emails per request"}
    unknown = crm.send("GET", "/people?email=a%40b.example&mail=c")
    assert unknown.json()["error"]["details"]["fields"] == {"mail": "unknown query parameter"}


def test_connection_events_are_recorded(crm: Crm, crm_emulator: CrmEmulator) -> None:
    events = [
        {"type": "connected", "details": {"account": {"upn": "jo@contoso.com", "tenantId": "t-1"}}},
        {"type": "reconnect_required", "details": {"reason": "token_revoked"}},
        {
            "type": "conflict",
            "details": {"crmId": "act-1", "fields": ["subject"], "policy": "latest_wins", "winner": "m365"},
        },
        {"type": "poison", "details": {"reason": "crm_rejected", "crmId": None}},
        {
            "type": "sync_error",
            "details": {"reason": "mass_deletion_guard", "crmId": None, "retrying": False},
        },
        {"type": "disconnected", "details": {"reason": "crm_request", "purged": True}},
    ]
    for event in events:
        body = {"crmUserId": "usr-1", "occurredAt": "2026-01-05T09:00:00Z", **event}
        response = crm.send("POST", "/events", body, key=f"event-{event['type']}")
        assert response.status_code == 204, response.text
    recorded = crm_emulator.events(crm_user_id="usr-1")
    assert [e["type"] for e in recorded] == [e["type"] for e in events]
    assert recorded[0]["details"] == events[0]["details"]
    assert recorded[0]["idempotencyKey"] == "event-connected"
    assert len(crm_emulator.events("conflict")) == 1


def test_events_are_checked_by_type(crm: Crm, crm_emulator: CrmEmulator) -> None:
    bad_type = crm.send(
        "POST",
        "/events",
        {"type": "hello", "crmUserId": "usr-1", "occurredAt": "2026-01-05T09:00:00Z", "details": {}},
    )
    assert "type" in bad_type.json()["error"]["details"]["fields"]
    conflict = crm.send(
        "POST",
        "/events",
        {
            "type": "conflict",
            "crmUserId": "usr-1",
            "occurredAt": "2026-01-05 09:00",
            "details": {"crmId": "a"},
        },
    )
    assert conflict.status_code == 400
    assert conflict.json()["error"]["details"]["fields"] == {
        "occurredAt": "must be an RFC 3339 date-time with offset"
    }
    missing = crm.send(
        "POST",
        "/events",
        {
            "type": "conflict",
            "crmUserId": "usr-1",
            "occurredAt": "2026-01-05T09:00:00Z",
            "details": {"crmId": "a"},
        },
    )
    assert set(missing.json()["error"]["details"]["fields"]) == {
        "details.fields",
        "details.policy",
        "details.winner",
    }
    assert crm_emulator.events() == []


# --- failures, the control API and the request log ----------------------------------------------------------


def test_injected_failures_answer_the_next_requests(crm: Crm, crm_emulator: CrmEmulator) -> None:
    crm_emulator.fail_next(2, status=429, retry_after=7, method="GET", path="/people")
    query = "/people?email=ada%40contoso.com"
    throttled = [crm.send("GET", query) for _ in range(2)]
    assert all(r.status_code == 429 and r.headers["Retry-After"] == "7" for r in throttled)
    assert error_code(throttled[0]) == "throttled"
    assert crm.send("POST", "/activities", meeting()).status_code == 201  # not matched by the filter
    assert crm.send("GET", query).status_code == 200
    crm_emulator.fail_next(1, status=500)
    failed = crm.send("GET", query)
    assert failed.status_code == 500
    assert error_code(failed) == "internal"
    assert "Retry-After" not in failed.headers
    assert [entry["injected"] for entry in crm_emulator.request_log()] == [True, True, False, False, True]


def test_the_control_api_over_http(crm_emulator: CrmEmulator, http: requests.Session, crm: Crm) -> None:
    control = crm_emulator.devkit_url
    seeded = http.post(
        f"{control}/seed", json={"users": [{"crmUserId": "usr-3", "email": "lee@vendor.example"}]}
    )
    assert seeded.status_code == 201
    assert seeded.json()["users"][0]["crmUserId"] == "usr-3"
    created = http.post(f"{control}/activities", json=meeting(ownerCrmUserId="usr-3"))
    assert created.status_code == 201
    crm_id = created.json()["crmId"]
    edited = http.patch(f"{control}/activities/{crm_id}", json={"subject": "Edited", "type": "call"})
    assert edited.status_code == 200
    assert edited.json()["version"] != created.json()["version"]
    listed = http.get(f"{control}/activities", params={"ownerCrmUserId": "usr-3"}).json()["activities"]
    assert [a["subject"] for a in listed] == ["Edited"]
    assert (
        http.post(f"{control}/failures", json={"count": 1, "status": 503, "retryAfter": 2}).status_code == 204
    )
    assert crm.send("GET", f"/activities/{crm_id}").headers["Retry-After"] == "2"
    assert http.delete(f"{control}/activities/{crm_id}").status_code == 204
    assert http.get(f"{control}/activities/{crm_id}").status_code == 404
    assert (
        crm.send(
            "POST",
            "/events",
            {
                "type": "poison",
                "crmUserId": "usr-3",
                "occurredAt": "2026-01-05T09:00:00Z",
                "details": {"reason": "x", "crmId": None},
            },
        ).status_code
        == 204
    )
    assert len(http.get(f"{control}/events", params={"type": "poison"}).json()["events"]) == 1
    requests_seen = http.get(f"{control}/requests").json()["requests"]
    assert [entry["status"] for entry in requests_seen] == [503, 204]
    assert http.post(f"{control}/reset").status_code == 204
    assert http.get(f"{control}/people").json() == {"users": [], "accounts": [], "contacts": [], "leads": []}
    assert http.get(f"{control}/requests").json() == {"requests": []}


def test_the_request_log_holds_no_secrets_or_bodies(crm: Crm, crm_emulator: CrmEmulator) -> None:
    crm.send("POST", "/activities", meeting(subject="Very private subject"), key="k-1")
    crm.send("GET", "/people?email=ada%40contoso.com", api_key="wrong-key")
    log_text = json.dumps(crm_emulator.request_log())
    for secret in (API_KEY, SECRET, "wrong-key", "Very private subject"):
        assert secret not in log_text
    assert [(e["method"], e["status"], e["code"]) for e in crm_emulator.request_log()] == [
        ("POST", 201, None),
        ("GET", 401, "invalid_api_key"),
    ]


def test_python_methods_raise_the_contract_error(crm_emulator: CrmEmulator) -> None:
    with pytest.raises(ContractError) as gone:
        crm_emulator.edit_as_user("act-missing", {"subject": "x"})
    assert (gone.value.status, gone.value.code) == (404, "activity_not_found")
    with pytest.raises(ContractError) as invalid:
        crm_emulator.create_as_user(meeting(ownerCrmUserId="usr-404"))
    assert invalid.value.details["fields"] == {"ownerCrmUserId": "unknown CRM user"}


# --- the documents ------------------------------------------------------------------------------------------


def worked_examples() -> list[dict[str, str]]:
    text = CONTRACT_DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```signature-example\n(.*?)```", text, flags=re.DOTALL)
    examples = []
    for block in blocks:
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value[1:] if value.startswith(" ") else value
        examples.append(fields)
    return examples


def test_the_worked_examples_in_the_contract_compute_to_the_documented_hex() -> None:
    examples = worked_examples()
    assert len(examples) >= 2
    for example in examples:
        body = example["body"].encode("utf-8")
        assert hashlib.sha256(body).hexdigest() == example["body-sha256"]
        headers = sign(
            example["secret"],
            example["method"],
            example["path"],
            body,
            timestamp=int(example["timestamp"]),
            nonce=example["nonce"],
        )
        assert headers["X-Sync-Signature"] == example["signature"], example["path"]


def test_the_emulator_verifier_accepts_the_worked_examples() -> None:
    for example in worked_examples():
        # Its clock stands 299 s after the example was signed: still inside the window.
        clock = itertools.repeat(float(example["timestamp"]) + 299).__next__
        verifier = SignatureVerifier(example["secret"], clock=clock)
        verifier.verify(
            method=example["method"],
            path_with_query=example["path"],
            body=example["body"].encode("utf-8"),
            timestamp=example["timestamp"],
            nonce=example["nonce"],
            signature=example["signature"],
        )


def test_the_example_activity_in_the_contract_has_every_field_in_order() -> None:
    blocks = re.findall(r"```json\n(.*?)```", CONTRACT_DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    examples = [json.loads(block) for block in blocks if '"crmId": "act-' in block and '"version"' in block]
    assert len(examples) == 1
    assert tuple(examples[0]) == ACTIVITY_FIELDS


def test_the_openapi_file_is_openapi_3_1_and_describes_every_emulator_route() -> None:
    spec = json.loads(OPENAPI.read_text(encoding="utf-8"))
    assert spec["openapi"].startswith("3.1.")
    served = {(method.lower(), template) for method, template in CONTRACT_ROUTES}
    described_outbound = {
        (method, path)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"} and "outbound" in operation["tags"]
    }
    assert served == described_outbound
    inbound = {
        (method, path)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"} and "inbound" in operation["tags"]
    }
    assert inbound == {
        ("post", "/api/users/{crmUserId}/connect"),
        ("post", "/api/users/{crmUserId}/disconnect"),
        ("get", "/api/users/{crmUserId}/status"),
        ("put", "/api/users/{crmUserId}/activities/{crmId}"),
        ("delete", "/api/users/{crmUserId}/activities/{crmId}"),
        ("get", "/api/health"),
    }
    assert all(item.get("servers") for item in spec["paths"].values())
    assert tuple(spec["components"]["schemas"]["Activity"]["properties"]) == ACTIVITY_FIELDS
    refs = set(re.findall(r'"\$ref": "#/components/(\w+)/(\w+)"', OPENAPI.read_text(encoding="utf-8")))
    assert refs
    assert all(name in spec["components"][kind] for kind, name in refs)


# --- the CRM's side of the inbound contract -----------------------------------------------------------------


class _FakeService(ThreadingHTTPServer):
    """Stands in for the service's HTTP triggers: records each request and checks it with both verifiers."""

    daemon_threads = True

    def __init__(self, verifier: SignatureVerifier) -> None:
        self.verifier = verifier
        self.received: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _FakeServiceHandler)


class _FakeServiceHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # one segment per response: no delayed-ACK stalls on loopback
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        assert isinstance(self.server, _FakeService)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        payload: dict[str, Any]
        try:
            self.server.verifier.verify(
                method=self.command,
                path_with_query=self.path,
                body=body,
                timestamp=self.headers.get("X-Sync-Timestamp"),
                nonce=self.headers.get("X-Sync-Nonce"),
                signature=self.headers.get("X-Sync-Signature"),
            )
            status, payload = 202, {"status": "queued"}
        except ContractError as exc:
            status, payload = exc.status, {"error": {"code": exc.code, "message": exc.message, "details": {}}}
        self.server.received.append(
            {"method": self.command, "target": self.path, "body": body, "headers": dict(self.headers.items())}
        )
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_service() -> Iterator[_FakeService]:
    server = _FakeService(SignatureVerifier(SECRET))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_the_service_client_signs_every_inbound_call(
    crm_emulator: CrmEmulator, fake_service: _FakeService
) -> None:
    activity = crm_emulator.create_as_user(meeting())
    base_url = f"http://127.0.0.1:{fake_service.server_address[1]}"
    with crm_emulator.service_client(base_url, "function-key-1") as client:
        answers = [
            client.connect("usr-1", "http://localhost:7103/back", login_hint="jo@vendor.example"),
            client.disconnect("usr-1", purge=True),
            client.status("usr 1/x"),
            client.put_activity("usr-1", activity),
            client.delete_activity("usr-1", activity["crmId"], activity["version"]),
            client.health(),
        ]
    assert [answer.status for answer in answers] == [202] * 6, [a.body for a in answers]
    received = fake_service.received
    assert [(r["method"], r["target"]) for r in received] == [
        ("POST", "/api/users/usr-1/connect"),
        ("POST", "/api/users/usr-1/disconnect"),
        ("GET", "/api/users/usr%201%2Fx/status"),
        ("PUT", f"/api/users/usr-1/activities/{activity['crmId']}"),
        ("DELETE", f"/api/users/usr-1/activities/{activity['crmId']}?version={activity['version']}"),
        ("GET", "/api/health"),
    ]
    assert json.loads(received[0]["body"]) == {
        "returnUrl": "http://localhost:7103/back",
        "loginHint": "jo@vendor.example",
    }
    assert json.loads(received[1]["body"]) == {"purge": True}
    assert json.loads(received[3]["body"]) == activity
    for request in received:
        headers = request["headers"]
        assert headers["x-functions-key"] == "function-key-1"
        # The test's own signer, from the contract text, agrees with what the client sent.
        expected = sign(
            SECRET,
            request["method"],
            request["target"],
            request["body"],
            timestamp=int(headers["X-Sync-Timestamp"]),
            nonce=headers["X-Sync-Nonce"],
        )
        assert headers["X-Sync-Signature"] == expected["X-Sync-Signature"]
    assert len({request["headers"]["X-Sync-Nonce"] for request in received}) == len(received)


def test_a_service_client_with_the_wrong_secret_is_refused(fake_service: _FakeService) -> None:
    base_url = f"http://127.0.0.1:{fake_service.server_address[1]}"
    with CrmEmulator(API_KEY, "another-secret") as other, other.service_client(base_url, "key") as client:
        answer = client.status("usr-1")
    assert answer.status == 401
    assert answer.error_code == "invalid_signature"
