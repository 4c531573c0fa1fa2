"""The connect flow's pure decisions: return URLs, state tickets, outcome → reason, accounts, status view."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest

from sync_core.config import SyncDirection
from sync_core.domain.connect import (
    CONSUMER_TENANT_ID,
    ConnectBody,
    ConnectFailure,
    DisconnectBody,
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
    connected_event,
    disconnected_event,
    iso_ms,
    reconnect_required_event,
    status_view,
    subscription_health,
)
from sync_core.domain.payloads import check_id, json_object, validated
from sync_core.domain.state import Connection, ConnectionState, ErrorRecord, SubscriptionRecord
from sync_core.errors import InvalidRequestError

ORIGIN = "https://crm.example.com"
TENANT = "11111111-2222-3333-4444-555555555555"
NOW = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    "url",
    [
        "https://crm.example.com/settings",
        "https://CRM.example.com:443/settings?tab=1#top",
        "https://crm.example.com",
    ],
)
def test_return_urls_under_the_origin_are_allowed(url: str) -> None:
    assert check_return_url(url, ORIGIN) == url


@pytest.mark.parametrize(
    "url",
    [
        "https://crm.example.com.evil.example/",
        "https://evil.example/https://crm.example.com/",
        "http://crm.example.com/",
        "https://crm.example.com:8443/",
        "https://user:pw@crm.example.com/",
        "https://crm.example.com\\@evil.example/",
        "https://crm.example.com/a b",
        "javascript:alert(1)",
        "//crm.example.com/x",
        "/relative",
        "https://crm.example.com:99999/",
        "https://crm.example.com/" + "a" * 2100,
    ],
)
def test_other_return_urls_are_refused_with_a_field_error(url: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_return_url(url, ORIGIN)
    assert set(caught.value.field_errors) == {"returnUrl"}


def test_an_origin_with_a_path_admits_only_urls_under_it_and_loopback_may_be_http() -> None:
    assert check_return_url("https://crm.example.com/app/x", ORIGIN + "/app")
    for outside in ("https://crm.example.com/application", "https://crm.example.com/"):
        with pytest.raises(InvalidRequestError):
            check_return_url(outside, ORIGIN + "/app")
    assert check_return_url("http://localhost:7103/back", "http://localhost:7103")


def test_the_outcome_is_added_to_the_return_urls_query_keeping_its_own() -> None:
    url = url_with_outcome("https://crm.example.com/s?tab=1&status=old#frag", ConnectFailure.WRONG_TENANT)
    parts = urlsplit(url)
    assert parse_qsl(parts.query) == [("tab", "1"), ("status", "error"), ("reason", "wrong_tenant")]
    assert parts.fragment == "frag"
    assert url_with_outcome("https://crm.example.com/s", None) == "https://crm.example.com/s?status=connected"


def test_state_tickets_round_trip_and_reject_anything_else() -> None:
    ticket = StateTicket("abc", TripKind.SIGN_IN, "usr-1", "https://crm.example.com/x")
    assert StateTicket.from_bytes(ticket.to_bytes()) == ticket
    consent = StateTicket("def", TripKind.ADMIN_CONSENT, None, None)
    assert StateTicket.from_bytes(consent.to_bytes()) == consent
    for junk in (b"", b"{}", b"[1]", b'{"i":"x","k":"other","u":null,"r":null}', b"\xff"):
        with pytest.raises(ValueError, match="not a state ticket"):
            StateTicket.from_bytes(junk)


@pytest.mark.parametrize(
    ("error", "description", "subcode", "reason"),
    [
        (
            "access_denied",
            "AADSTS65004: User declined to consent to access the app.",
            "cancel",
            "consent_denied",
        ),
        ("access_denied", None, "cancel", "consent_denied"),
        (
            "access_denied",
            "AADSTS90094: The grant requires admin permission.",
            None,
            "admin_approval_required",
        ),
        (
            "consent_required",
            "AADSTS65001: The user or administrator has not consented",
            None,
            "admin_approval_required",
        ),
        ("access_denied", "something else", None, "consent_denied"),
        ("invalid_request", "AADSTS900144: missing", None, "internal"),
        ("server_error", None, None, "internal"),
    ],
)
def test_authorize_errors_become_reasons(
    error: str, description: str | None, subcode: str | None, reason: str
) -> None:
    assert classify_authorize_error(error, aadsts_codes(description), subcode).value == reason


def test_redemption_errors_become_reasons() -> None:
    assert classify_redemption_error("invalid_grant", frozenset({501481})) is ConnectFailure.STATE_INVALID
    assert classify_redemption_error("invalid_grant", frozenset({54005})) is ConnectFailure.STATE_INVALID
    assert (
        classify_redemption_error("invalid_grant", frozenset({65001}))
        is ConnectFailure.ADMIN_APPROVAL_REQUIRED
    )
    assert classify_redemption_error("invalid_client", frozenset({7000215})) is ConnectFailure.INTERNAL
    assert aadsts_codes("AADSTS50173: x. AADSTS70000", [50173, "junk"]) == frozenset({50173, 70000})


def test_accounts_personal_and_other_tenants() -> None:
    expected = expected_tenant_id(TENANT.upper(), single_tenant=True)
    assert expected == TENANT
    assert classify_account(TENANT, expected) is None
    assert classify_account(CONSUMER_TENANT_ID, expected) is ConnectFailure.PERSONAL_ACCOUNT
    assert classify_account(CONSUMER_TENANT_ID, None) is ConnectFailure.PERSONAL_ACCOUNT  # multi-tenant too
    assert classify_account("99999999-2222-3333-4444-555555555555", expected) is ConnectFailure.WRONG_TENANT
    assert classify_account("99999999-2222-3333-4444-555555555555", None) is None
    assert expected_tenant_id("organizations", single_tenant=False) is None
    assert (
        expected_tenant_id("contoso.onmicrosoft.com", single_tenant=True) is None
    )  # the authority enforces it


def test_id_token_claims_must_be_for_this_app_and_name_tenant_and_object() -> None:
    claims = {
        "aud": "client-1",
        "iss": f"https://login.example/{TENANT}/v2.0",
        "tid": TENANT,
        "oid": "oid-1",
        "preferred_username": "jo@contoso.com",
    }
    account = account_from_id_token(claims, "client-1", None)
    assert account is not None
    assert (account.upn, account.home_account_id) == ("jo@contoso.com", f"oid-1.{TENANT}")
    assert account_from_id_token(claims, "client-1", "home.id").home_account_id == "home.id"  # type: ignore[union-attr]
    assert account_from_id_token(claims, "client-2", None) is None
    assert (
        account_from_id_token({**claims, "iss": "https://login.example/other/v2.0"}, "client-1", None) is None
    )
    assert account_from_id_token({**claims, "oid": None}, "client-1", None) is None


def test_bodies_and_ids_give_field_errors() -> None:
    assert validated(ConnectBody, {"returnUrl": "https://x", "loginHint": None}).login_hint is None
    with pytest.raises(InvalidRequestError) as caught:
        validated(ConnectBody, {"returnUrl": 5, "loginhint": "x", "extra": 1})
    assert set(caught.value.field_errors) == {"returnUrl", "loginhint", "extra"}
    assert caught.value.field_errors["extra"] == "is not a known field"
    with pytest.raises(InvalidRequestError) as caught:
        validated(ConnectBody, {})
    assert caught.value.field_errors == {"returnUrl": "is required"}
    assert validated(DisconnectBody, {}).purge is False
    with pytest.raises(InvalidRequestError):
        validated(DisconnectBody, {"purge": "yes"})
    assert json_object(b"") == {}
    for bad in (b"[]", b"nope", b"\xff"):
        with pytest.raises(InvalidRequestError) as caught:
            json_object(bad)
        assert "(body)" in caught.value.field_errors
    assert check_id("usr-1:a@b.c_d", "crmUserId") == "usr-1:a@b.c_d"
    for bad_id in ("", "a/b", "a b", "x" * 129):
        with pytest.raises(InvalidRequestError):
            check_id(bad_id, "crmUserId")


def subscription(expires_in: timedelta, resource: str = "/users/o/events") -> SubscriptionRecord:
    return SubscriptionRecord("sub-1", "usr-1", resource, ("created",), NOW + expires_in, "hash")


def test_subscription_health() -> None:
    health = subscription_health(
        [subscription(timedelta(days=2)), subscription(timedelta(hours=3))], NOW, connected=True
    )
    assert [(h["resource"], h["state"]) for h in health] == [("calendar", "expiring"), ("calendar", "active")]
    assert subscription_health([subscription(-timedelta(minutes=1))], NOW, connected=True) == [
        {"resource": "calendar", "state": "missing", "expiresAt": None}
    ]
    assert subscription_health([], NOW, connected=False) == []


def test_status_view_never_carries_secrets_and_reports_every_field() -> None:
    never = status_view("usr-1", None, [], 0, SyncDirection.BOTH, NOW)
    assert never["state"] == "disconnected"
    assert never["account"] is None
    assert never["subscriptions"] == []
    connection = Connection(
        user_id="usr-1",
        state=ConnectionState.RECONNECT_REQUIRED,
        tenant_id=TENANT,
        upn="jo@contoso.com",
        home_account_id="secret-ish",
        connected_since=NOW,
        last_error=ErrorRecord(NOW, "token_revoked", "connect again"),
        direction_override=SyncDirection.CRM_TO_M365,
    )
    view = status_view("usr-1", connection, [], 2, SyncDirection.BOTH, NOW)
    assert view["account"] == {"upn": "jo@contoso.com", "tenantId": TENANT}
    assert view["connectedSince"] == "2026-03-01T08:00:00.123Z"
    assert view["lastError"] == {
        "item": None,
        "reason": "token_revoked",
        "message": "connect again",
        "at": iso_ms(NOW),
    }
    assert (view["pendingChanges"], view["direction"], view["syncLog"]) == (2, "crm_to_m365", [])
    assert "secret-ish" not in repr(view)


def test_connection_events_have_the_contracts_shape_and_a_stable_key() -> None:
    event = connected_event("usr-1", "jo@contoso.com", TENANT, NOW)
    assert event.body() == {
        "type": "connected",
        "crmUserId": "usr-1",
        "occurredAt": "2026-03-01T08:00:00.123Z",
        "details": {"account": {"upn": "jo@contoso.com", "tenantId": TENANT}},
    }
    assert event.idempotency_key == connected_event("usr-1", "x", "y", NOW).idempotency_key
    assert event.idempotency_key != reconnect_required_event("usr-1", "token_revoked", NOW).idempotency_key
    assert disconnected_event("usr-1", True, NOW).body()["details"] == {
        "reason": "crm_request",
        "purged": True,
    }
    assert all(0x21 <= ord(ch) <= 0x7E for ch in event.idempotency_key)
