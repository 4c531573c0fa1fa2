"""Graph emulator: tokens, event CRUD and the event rules (time zones, all-day, online meetings, ids)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.graph_emulator import EmulatorSettings, GraphEmulator
from devkit.graph_emulator.testkit import GraphClient, TokenMinter
from devkit.identity_emulator import IdentityEmulator
from devkit.jwt import SigningKey
from devkit.tls import CertAuthority

ALICE = "0d1c6b4e-1111-4a8e-9b0c-aaaaaaaaaaaa"
BOB = "0d1c6b4e-2222-4a8e-9b0c-bbbbbbbbbbbb"
PST = "Pacific Standard Time"


def event(subject: str = "Review", day: str = "2026-03-02", **extra: Any) -> dict[str, Any]:
    return {
        "subject": subject,
        "start": {"dateTime": f"{day}T09:00:00", "timeZone": PST},
        "end": {"dateTime": f"{day}T10:00:00", "timeZone": PST},
        **extra,
    }


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture
def emulator(minter: TokenMinter) -> Iterator[GraphEmulator]:
    with GraphEmulator(jwks=minter.jwks(), settings=EmulatorSettings()) as em:
        em.add_mailbox(ALICE, upn="alice@contoso.onmicrosoft.com", display_name="Alice Adams")
        em.add_mailbox(BOB, upn="bob@contoso.onmicrosoft.com", display_name="Bob Brown")
        yield em


@pytest.fixture
def alice(emulator: GraphEmulator, minter: TokenMinter) -> Iterator[GraphClient]:
    with GraphClient(emulator.base_url, minter.delegated(ALICE, "alice@contoso.onmicrosoft.com")) as client:
        yield client


def assert_graph_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert set(error["innerError"]) >= {"date", "request-id", "client-request-id"}


# --- tokens ---


def test_requests_without_a_valid_graph_token_get_401_in_graphs_shape(
    emulator: GraphEmulator, minter: TokenMinter
) -> None:
    stranger = SigningKey.generate("stranger")
    now = int(time.time())
    claims = {
        "aud": "https://graph.microsoft.com",
        "oid": ALICE,
        "scp": "Calendars.ReadWrite",
        "exp": now + 600,
    }
    tokens = {
        "missing": None,
        "garbage": "not-a-jwt",
        "foreign key": stranger.sign(claims),
        "expired": minter.delegated(ALICE, lifetime=-3600),
        "other audience": minter.delegated(ALICE, audience="api://crm-sync"),
    }
    for reason, token in tokens.items():
        with GraphClient(emulator.base_url, token) as client:
            response = client.get("/me/events")
        assert_graph_error(response, 401, "InvalidAuthenticationToken")
        assert "Bearer" in response.headers["WWW-Authenticate"], reason


def test_scopes_and_mailbox_access_are_enforced(emulator: GraphEmulator, minter: TokenMinter) -> None:
    with GraphClient(emulator.base_url, minter.delegated(ALICE, scopes=["User.Read"])) as client:
        assert_graph_error(client.get("/me/events"), 403, "ErrorAccessDenied")
    with GraphClient(emulator.base_url, minter.delegated(ALICE)) as client:
        assert_graph_error(client.get(f"/users/{BOB}/events"), 403, "ErrorAccessDenied")
        assert client.get("/users/alice@contoso.onmicrosoft.com/events").status_code == 200
    with GraphClient(emulator.base_url, minter.application(["Calendars.ReadWrite"])) as app:
        assert_graph_error(app.get("/me/events"), 400, "BadRequest")
        created = app.post(f"/users/{BOB}/events", json=event("By the app"))
        assert created.status_code == 201
        assert created.json()["organizer"]["emailAddress"]["address"] == "bob@contoso.onmicrosoft.com"
        assert_graph_error(app.get("/users/nobody@contoso.onmicrosoft.com/events"), 404, "ErrorInvalidUser")


def test_a_first_token_for_an_unknown_user_gets_a_mailbox(
    emulator: GraphEmulator, minter: TokenMinter
) -> None:
    newcomer = "0d1c6b4e-3333-4a8e-9b0c-cccccccccccc"
    with GraphClient(
        emulator.base_url, minter.delegated(newcomer, "carol@contoso.onmicrosoft.com")
    ) as client:
        me = client.get("/me").json()
    assert (me["id"], me["userPrincipalName"]) == (newcomer, "carol@contoso.onmicrosoft.com")


# --- CRUD ---


def test_create_get_update_delete_with_a_new_change_key_on_every_write(alice: GraphClient) -> None:
    created = alice.post("/me/events", json=event(sensitivity="private", showAs="tentative"))
    assert created.status_code == 201
    doc = created.json()
    assert doc["type"] == "singleInstance"
    assert doc["@odata.etag"] == f'W/"{doc["changeKey"]}"'
    assert doc["start"] == {"dateTime": "2026-03-02T17:00:00.0000000", "timeZone": "UTC"}
    assert (doc["originalStartTimeZone"], doc["sensitivity"], doc["showAs"]) == (PST, "private", "tentative")
    event_id, ical = doc["id"], doc["iCalUId"]

    keys = {doc["changeKey"]}
    for subject in ("Review (moved)", "Review (moved)"):  # even an identical write is a new version
        updated = alice.patch(f"/me/events/{event_id}", json={"subject": subject}).json()
        assert updated["id"] == event_id
        assert updated["iCalUId"] == ical
        keys.add(updated["changeKey"])
    assert len(keys) == 3
    fetched = alice.get(f"/me/events/{event_id}").json()
    assert (fetched["subject"], fetched["changeKey"]) == ("Review (moved)", updated["changeKey"])

    assert alice.delete(f"/me/events/{event_id}").status_code == 204
    assert_graph_error(alice.get(f"/me/events/{event_id}"), 404, "ErrorItemNotFound")
    assert_graph_error(alice.get("/me/events/not-an-id"), 400, "ErrorInvalidIdMalformed")


def test_transaction_id_makes_a_retried_create_return_the_first_event(alice: GraphClient) -> None:
    first = alice.post("/me/events", json=event(transactionId="crm-42-create")).json()
    again = alice.post("/me/events", json=event(transactionId="crm-42-create"))
    assert again.json()["id"] == first["id"]
    assert first["transactionId"] == "crm-42-create"
    assert len(alice.get("/me/events").json()["value"]) == 1


def test_if_match_with_a_stale_etag_is_refused(alice: GraphClient) -> None:
    doc = alice.post("/me/events", json=event()).json()
    alice.patch(f"/me/events/{doc['id']}", json={"subject": "newer"})
    stale = alice.patch(
        f"/me/events/{doc['id']}", json={"subject": "mine"}, headers={"If-Match": doc["@odata.etag"]}
    )
    assert_graph_error(stale, 412, "ErrorIrresolvableConflict")


def test_payloads_graph_would_refuse_are_refused(alice: GraphClient) -> None:
    assert_graph_error(alice.post("/me/events", json={**event(), "colour": "red"}), 400, "RequestBodyRead")
    assert_graph_error(alice.post("/me/events", json=event(sensitivity="secret")), 400, "RequestBodyRead")
    bad_zone = event()
    bad_zone["start"]["timeZone"] = "Mars Standard Time"
    assert_graph_error(alice.post("/me/events", json=bad_zone), 400, "TimeZoneNotSupportedException")
    backwards = event()
    backwards["end"]["dateTime"] = "2026-03-02T08:00:00"
    assert_graph_error(alice.post("/me/events", json=backwards), 400, "ErrorPropertyValidationFailure")
    assert_graph_error(
        alice.post("/me/events", data=b"{", headers={"Content-Type": "application/json"}), 400, "BadRequest"
    )


def test_prefer_time_zone_converts_and_is_echoed_in_preference_applied(alice: GraphClient) -> None:
    doc = alice.post("/me/events", json=event()).json()
    plain = alice.get(f"/me/events/{doc['id']}")
    assert "Preference-Applied" not in plain.headers
    eastern = alice.get(
        f"/me/events/{doc['id']}", headers={"Prefer": 'outlook.timezone="Eastern Standard Time"'}
    )
    assert eastern.headers["Preference-Applied"] == 'outlook.timezone="Eastern Standard Time"'
    assert eastern.json()["start"] == {
        "dateTime": "2026-03-02T12:00:00.0000000",
        "timeZone": "Eastern Standard Time",
    }
    unknown = alice.get(f"/me/events/{doc['id']}", headers={"Prefer": 'outlook.timezone="Nowhere"'})
    assert_graph_error(unknown, 400, "TimeZoneNotSupportedException")


def test_all_day_events_are_midnight_to_midnight_in_every_zone(alice: GraphClient) -> None:
    all_day = {
        "subject": "Offsite",
        "isAllDay": True,
        "start": {"dateTime": "2026-03-05T00:00:00", "timeZone": PST},
        "end": {"dateTime": "2026-03-07T00:00:00", "timeZone": PST},
    }
    doc = alice.post("/me/events", json=all_day).json()
    tokyo = alice.get(
        f"/me/events/{doc['id']}", headers={"Prefer": 'outlook.timezone="Tokyo Standard Time"'}
    ).json()
    assert tokyo["start"] == {"dateTime": "2026-03-05T00:00:00.0000000", "timeZone": "Tokyo Standard Time"}
    assert tokyo["end"]["dateTime"] == "2026-03-07T00:00:00.0000000"
    for start, end, zone_end in (("T09:00:00", "T00:00:00", PST), ("T00:00:00", "T00:00:00", "UTC")):
        wrong = {**all_day, "start": {"dateTime": "2026-03-05" + start, "timeZone": PST}}
        wrong["end"] = {"dateTime": "2026-03-06" + end, "timeZone": zone_end}
        assert_graph_error(alice.post("/me/events", json=wrong), 400, "ErrorPropertyValidationFailure")
    too_short = {**all_day, "end": {"dateTime": "2026-03-05T00:00:00", "timeZone": PST}}
    assert_graph_error(alice.post("/me/events", json=too_short), 400, "ErrorPropertyValidationFailure")


def test_attendees_location_and_teams_meeting(alice: GraphClient) -> None:
    payload = event(
        attendees=[{"emailAddress": {"address": "dana@fabrikam.com", "name": "Dana"}, "type": "required"}],
        location={"displayName": "Harry's Bar"},
        isOnlineMeeting=True,
        onlineMeetingProvider="teamsForBusiness",
        body={"contentType": "HTML", "content": "Agenda"},
    )
    doc = alice.post("/me/events", json=payload).json()
    assert doc["attendees"][0]["status"] == {"response": "none", "time": "0001-01-01T00:00:00Z"}
    assert doc["location"]["uniqueId"] == "Harry's Bar"
    assert doc["locations"][0]["displayName"] == "Harry's Bar"
    assert doc["onlineMeetingProvider"] == "teamsForBusiness"
    join_url = doc["onlineMeeting"]["joinUrl"]
    assert join_url.startswith("https://teams.microsoft.com/l/meetup-join/")
    assert "Agenda" in doc["body"]["content"]
    assert join_url.split("?")[0] in doc["body"]["content"]
    assert doc["body"]["contentType"] == "html"
    again = alice.patch(f"/me/events/{doc['id']}", json={"subject": "Agenda v2"}).json()
    assert again["onlineMeeting"]["joinUrl"] == join_url
    text = alice.get(f"/me/events/{doc['id']}", headers={"Prefer": 'outlook.body-content-type="text"'}).json()
    assert text["body"]["contentType"] == "text"
    assert "Agenda" in text["body"]["content"]


def test_immutable_ids_differ_from_regular_ids_and_both_are_accepted(alice: GraphClient) -> None:
    prefer = {"Prefer": 'IdType="ImmutableId"'}
    created = alice.post("/me/events", json=event(), headers=prefer)
    assert created.headers["Preference-Applied"] == 'IdType="ImmutableId"'
    immutable_id = created.json()["id"]
    regular_id = alice.get("/me/events").json()["value"][0]["id"]
    assert immutable_id != regular_id
    assert alice.get(f"/me/events/{immutable_id}").json()["id"] == regular_id
    assert alice.get(f"/me/events/{regular_id}", headers=prefer).json()["id"] == immutable_id


def test_calendar_view_needs_a_window_and_pages_with_next_links(alice: GraphClient) -> None:
    assert_graph_error(alice.get("/me/calendarView"), 400, "ErrorInvalidParameter")
    for day in range(1, 26):
        alice.post("/me/events", json=event(f"Day {day}", day=f"2026-04-{day:02d}"))
    window = {"startDateTime": "2026-04-01T00:00:00Z", "endDateTime": "2026-04-21T00:00:00Z"}
    page = alice.get("/me/calendarView", params={**window, "$top": "7"}).json()
    subjects = [e["subject"] for e in page["value"]]
    while "@odata.nextLink" in page:
        page = alice.get(page["@odata.nextLink"]).json()
        subjects += [e["subject"] for e in page["value"]]
    assert subjects == [f"Day {day}" for day in range(1, 21)]
    found = alice.get("/me/calendarView", params={**window, "$filter": "subject eq 'Day 3'"}).json()["value"]
    assert [e["subject"] for e in found] == ["Day 3"]


def test_extended_properties_round_trip_and_filter(alice: GraphClient) -> None:
    prop_id = "String {66f5a359-4659-4830-9070-00040ec6ac6e} Name CrmActivityId"
    doc = alice.post(
        "/me/events", json=event(singleValueExtendedProperties=[{"id": prop_id, "value": "act-7"}])
    ).json()
    assert "singleValueExtendedProperties" not in doc
    expand = f"singleValueExtendedProperties($filter=id eq '{prop_id}')"
    expanded = alice.get(f"/me/events/{doc['id']}", params={"$expand": expand}).json()
    assert expanded["singleValueExtendedProperties"] == [{"id": prop_id, "value": "act-7"}]
    match = f"singleValueExtendedProperties/any(ep: ep/id eq '{prop_id}' and ep/value eq 'act-7')"
    assert [e["id"] for e in alice.get("/me/events", params={"$filter": match}).json()["value"]] == [
        doc["id"]
    ]


def test_https_with_the_devkit_ca(minter: TokenMinter, tmp_path: Path) -> None:
    authority = CertAuthority(tmp_path / "ca")
    with GraphEmulator(jwks=minter.jwks(), certificate=authority.issue_server_certificate()) as emulator:
        assert emulator.base_url.startswith("https://")
        token = minter.delegated(ALICE)
        with GraphClient(emulator.base_url, token, verify=str(authority.cert_path)) as client:
            assert client.post("/me/events", json=event()).status_code == 201


def test_app_tokens_from_the_identity_emulator_via_its_https_jwks(
    identity_emulator: IdentityEmulator, test_ca: CertAuthority, https_session: requests.Session
) -> None:
    tenant = identity_emulator.add_tenant()
    user = identity_emulator.add_user(tenant.tenant_id, "frank@contoso.onmicrosoft.com")
    app = identity_emulator.register_app(
        tenant.tenant_id, client_secret="app-secret", application_permissions=["Calendars.ReadWrite"]
    )
    token = https_session.post(
        identity_emulator.token_endpoint(tenant.tenant_id),
        data={
            "grant_type": "client_credentials",
            "client_id": app.client_id,
            "client_secret": "app-secret",
            "scope": "https://graph.microsoft.com/.default",
        },
        timeout=10,
    ).json()["access_token"]
    jwks_url = f"{identity_emulator.base_url}/{tenant.tenant_id}/discovery/v2.0/keys"
    with GraphEmulator(
        jwks=jwks_url, jwks_ca_path=str(test_ca.cert_path), time_source=identity_emulator.clock.now
    ) as graph:
        graph.add_mailbox(user.oid, upn=user.upn)
        with GraphClient(graph.base_url, token) as client:
            assert client.post(f"/users/{user.upn}/events", json=event()).status_code == 201
            identity_emulator.clock.advance(2 * 3600)  # the shared clock: the token has expired
            assert_graph_error(client.get(f"/users/{user.oid}/events"), 401, "InvalidAuthenticationToken")
