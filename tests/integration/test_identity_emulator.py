"""The Entra ID emulator, driven by the real MSAL and azure-identity over HTTPS with the test CA.

Nothing is mocked: MSAL discovers the authority, follows its own auth-code + PKCE flow, redeems codes and
refresh tokens, and signs client assertions; the browser's part is a ``GET`` of the authorize URL.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import msal
import pytest
import requests
from azure.identity import ManagedIdentityCredential
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from devkit.graph_emulator import GraphEmulator
from devkit.graph_emulator.auth import Authenticator, JwksProvider
from devkit.graph_emulator.util import GraphError
from devkit.identity_emulator import (
    CONSUMER_TENANT_ID,
    GRAPH_RESOURCE,
    TOKEN_EXCHANGE_AUDIENCE,
    FederatedCredential,
    IdentityEmulator,
    SignInOutcome,
)
from devkit.jwt import InvalidTokenError, SigningKey, b64url, b64url_decode, unverified_claims, verify
from devkit.tls import CertAuthority

REDIRECT_URI = "http://localhost:7071/api/auth/callback"
GRAPH_DEFAULT = f"{GRAPH_RESOURCE}/.default"
CALENDAR_SCOPES = ["Calendars.ReadWrite", "User.Read"]
SECRET = "s3cret-value-for-tests"


@dataclass(frozen=True)
class Certificate:
    private_key_pem: str
    certificate_pem: str
    sha1_thumbprint: str


@dataclass(frozen=True)
class Directory:
    tenant_id: str
    user_upn: str
    user_oid: str
    admin_upn: str
    client_id: str


@pytest.fixture(scope="module")
def certificate() -> Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crm-sync test client")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return Certificate(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 - MSAL's "thumbprint" is SHA-1 by definition
    )


@pytest.fixture(scope="module")
def stranger_key() -> SigningKey:
    """A key the emulator under test does not know (RSA key generation is slow: one for the module)."""
    return SigningKey.generate("a-stranger")


@pytest.fixture
def directory(identity_emulator: IdentityEmulator, certificate: Certificate) -> Directory:
    tenant = identity_emulator.add_tenant(domain="contoso.onmicrosoft.com", display_name="Contoso")
    user = identity_emulator.add_user(tenant.tenant_id, "adele@contoso.onmicrosoft.com")
    admin = identity_emulator.add_user(tenant.tenant_id, "admin@contoso.onmicrosoft.com", is_admin=True)
    app = identity_emulator.register_app(
        tenant.tenant_id,
        redirect_uris=[REDIRECT_URI],
        client_secret=SECRET,
        certificates=[certificate.certificate_pem],
        application_permissions=["Calendars.ReadWrite"],
    )
    return Directory(tenant.tenant_id, user.upn, user.oid, admin.upn, app.client_id)


def confidential_app(
    emulator: IdentityEmulator,
    session: requests.Session,
    client_id: str,
    tenant: str,
    credential: Any = SECRET,
) -> msal.ConfidentialClientApplication:
    """MSAL exactly as the service builds it, but for the authority URL and the CA-trusting session."""
    return msal.ConfidentialClientApplication(
        client_id,
        authority=emulator.authority(tenant),
        client_credential=credential,
        http_client=session,
        instance_discovery=False,
    )


class _AutoPostForm(HTMLParser):
    """Reads the self-submitting form Entra answers with for ``response_mode=form_post``."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form":
            self.action = values.get("action")
        elif tag == "input" and values.get("type") == "hidden" and values.get("name"):
            self.fields[str(values["name"])] = values.get("value") or ""


def browse(session: requests.Session, url: str) -> dict[str, str]:
    """The browser's part: visit the URL and return what reaches the app's redirect URI.

    That is the auto-posted form (``form_post``, what MSAL recommends) or the redirect's query string.
    """
    response = session.get(url, allow_redirects=False)
    if response.status_code == 302:
        location = response.headers["Location"]
        assert location.startswith(REDIRECT_URI + "?")
        return dict(parse_qsl(urlsplit(location).query))
    assert response.status_code == 200, response.text
    form = _AutoPostForm()
    form.feed(response.text)
    assert form.action == REDIRECT_URI
    return form.fields


def start_flow(app: msal.ConfidentialClientApplication, **kwargs: Any) -> dict[str, Any]:
    flow: dict[str, Any] = app.initiate_auth_code_flow(
        CALENDAR_SCOPES, redirect_uri=REDIRECT_URI, response_mode="form_post", **kwargs
    )
    return flow


def sign_in(
    app: msal.ConfidentialClientApplication,
    session: requests.Session,
    login_hint: str | None = None,
    scopes: list[str] = CALENDAR_SCOPES,
) -> dict[str, Any]:
    flow = app.initiate_auth_code_flow(
        scopes, redirect_uri=REDIRECT_URI, login_hint=login_hint, response_mode="form_post"
    )
    result: dict[str, Any] = app.acquire_token_by_auth_code_flow(flow, browse(session, flow["auth_uri"]))
    return result


def fetch_jwks(session: requests.Session, emulator: IdentityEmulator, tenant: str) -> list[dict[str, str]]:
    config = session.get(f"{emulator.authority(tenant)}/v2.0/.well-known/openid-configuration").json()
    keys: list[dict[str, str]] = session.get(config["jwks_uri"]).json()["keys"]
    return keys


# --- user sign-in: auth code + PKCE, refresh, revocation ---------------------------------------------------


def test_discovery_document_points_at_the_emulator(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    base = identity_emulator.base_url
    config = https_session.get(f"{base}/{directory.tenant_id}/v2.0/.well-known/openid-configuration").json()
    assert config["issuer"] == f"{base}/{directory.tenant_id}/v2.0"
    assert config["token_endpoint"] == f"{base}/{directory.tenant_id}/oauth2/v2.0/token"
    assert config["authorization_endpoint"] == f"{base}/{directory.tenant_id}/oauth2/v2.0/authorize"
    by_domain = https_session.get(f"{base}/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration")
    assert by_domain.json()["issuer"] == config["issuer"]
    common = https_session.get(f"{base}/organizations/v2.0/.well-known/openid-configuration").json()
    assert common["issuer"] == f"{base}/{{tenantid}}/v2.0"

    unknown = https_session.get(f"{base}/nonexistent-tenant/v2.0/.well-known/openid-configuration")
    assert unknown.status_code == 400
    assert unknown.json()["error_codes"] == [90002]
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        confidential_app(identity_emulator, https_session, directory.client_id, "nonexistent-tenant")


def test_msal_auth_code_flow_with_pkce_signs_the_user_in(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    flow = start_flow(app, login_hint=directory.user_upn)
    query = dict(parse_qsl(urlsplit(flow["auth_uri"]).query))
    assert query["code_challenge_method"] == "S256"

    redirect = browse(https_session, flow["auth_uri"])
    assert redirect["state"] == flow["state"]
    assert redirect["session_state"]
    result = app.acquire_token_by_auth_code_flow(flow, redirect)

    assert "error" not in result, result
    claims = result["id_token_claims"]
    assert claims["tid"] == directory.tenant_id
    assert claims["oid"] == directory.user_oid
    assert claims["preferred_username"] == directory.user_upn
    assert claims["aud"] == directory.client_id
    assert claims["iss"] == f"{identity_emulator.base_url}/{directory.tenant_id}/v2.0"
    assert "refresh_token" in result
    [account] = app.get_accounts()
    assert account["username"] == directory.user_upn
    assert account["home_account_id"] == f"{directory.user_oid}.{directory.tenant_id}"

    access = verify(
        result["access_token"],
        fetch_jwks(https_session, identity_emulator, directory.tenant_id),
        audiences=[GRAPH_RESOURCE],
    )
    assert access["scp"].split() == sorted(["Calendars.ReadWrite", "User.Read", "openid", "profile"])
    assert access["appid"] == access["azp"] == directory.client_id
    assert (access["tid"], access["oid"], access["preferred_username"]) == (
        directory.tenant_id,
        directory.user_oid,
        directory.user_upn,
    )
    assert access["iss"] == f"{identity_emulator.base_url}/{directory.tenant_id}/v2.0"
    cached = app.acquire_token_silent(CALENDAR_SCOPES, account)
    assert cached is not None
    assert cached["access_token"] == result["access_token"]


def test_short_lived_access_tokens_make_msal_refresh_silently_with_rotation(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    # MSAL treats a token with less than 5 minutes left as expired, on its own (wall) clock.
    identity_emulator.access_token_lifetime = 240
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    first = sign_in(app, https_session, directory.user_upn)
    [account] = app.get_accounts()

    refreshed = app.acquire_token_silent(CALENDAR_SCOPES, account)

    assert refreshed is not None
    assert "error" not in refreshed
    assert refreshed["access_token"] != first["access_token"]
    assert refreshed["token_source"] == "identity_provider"
    grants = [r.grant_type for r in identity_emulator.request_log() if r.grant_type]
    assert grants == ["authorization_code", "refresh_token"]
    [cached_rt] = app.token_cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN)
    assert cached_rt["secret"] != first["refresh_token"]  # rotated
    # Entra keeps the previous refresh token valid (a racing second refresh must not fail).
    again = app.acquire_token_by_refresh_token(first["refresh_token"], CALENDAR_SCOPES)
    assert "access_token" in again, again


def test_advancing_the_clock_expires_access_tokens_and_codes(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    first = sign_in(app, https_session, directory.user_upn)
    [account] = app.get_accounts()
    identity_emulator.verify_access_token(first["access_token"])

    identity_emulator.clock.advance(3600 + 60)

    with pytest.raises(InvalidTokenError, match="expired"):
        identity_emulator.verify_access_token(first["access_token"])
    fresh = app.acquire_token_silent(CALENDAR_SCOPES, account, force_refresh=True)
    assert fresh is not None
    assert "error" not in fresh
    assert identity_emulator.verify_access_token(fresh["access_token"])["oid"] == directory.user_oid

    flow = start_flow(app)
    redirect = browse(https_session, flow["auth_uri"])
    identity_emulator.clock.advance(601)
    late = app.acquire_token_by_auth_code_flow(flow, redirect)
    assert late["error"] == "invalid_grant"
    assert late["error_codes"] == [70008]


def test_revoked_sessions_make_refresh_fail_with_invalid_grant(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    sign_in(app, https_session, directory.user_upn)
    [account] = app.get_accounts()

    identity_emulator.revoke_sign_in_sessions(directory.user_oid)

    failed = app.acquire_token_silent_with_error(CALENDAR_SCOPES, account, force_refresh=True)
    assert failed is not None
    assert failed["error"] == "invalid_grant"
    assert failed["error_codes"] == [50173]
    assert failed["error_description"].startswith("AADSTS50173: The provided grant has expired")
    assert {"timestamp", "trace_id", "correlation_id"} <= failed.keys()
    assert app.acquire_token_silent(CALENDAR_SCOPES, account, force_refresh=True) is None
    # Signing in again after the revocation works.
    assert "access_token" in sign_in(app, https_session, directory.user_upn)


def test_refresh_token_unused_for_90_days_expires(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    first = sign_in(app, https_session, directory.user_upn)
    identity_emulator.clock.advance(91 * 24 * 3600)
    result = app.acquire_token_by_refresh_token(first["refresh_token"], CALENDAR_SCOPES)
    assert result["error"] == "invalid_grant"
    assert result["error_codes"] == [700082]


def test_pkce_mismatch_and_code_replay_are_invalid_grant(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    flow = start_flow(app)
    redirect = browse(https_session, flow["auth_uri"])
    tampered = dict(flow, code_verifier=flow["code_verifier"][::-1])
    mismatch = app.acquire_token_by_auth_code_flow(tampered, redirect)
    assert mismatch["error"] == "invalid_grant"
    assert mismatch["error_codes"] == [501481]

    flow = start_flow(app)
    redirect = browse(https_session, flow["auth_uri"])
    assert "access_token" in app.acquire_token_by_auth_code_flow(dict(flow), redirect)
    replay = app.acquire_token_by_auth_code_flow(flow, redirect)
    assert replay["error"] == "invalid_grant"
    assert replay["error_codes"] == [54005]


def test_default_scope_grants_the_apps_configured_permissions(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    result = sign_in(app, https_session, directory.user_upn, scopes=[GRAPH_DEFAULT])
    assert "error" not in result, result
    assert set(result["scope"].split()) == {"Calendars.ReadWrite", "User.Read", "openid", "profile"}
    scp = identity_emulator.verify_access_token(result["access_token"])["scp"].split()
    assert {"Calendars.ReadWrite", "User.Read"} <= set(scp)


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
def test_query_response_mode_redirects_with_code_and_state(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    flow = app.initiate_auth_code_flow(CALENDAR_SCOPES, redirect_uri=REDIRECT_URI)
    response = https_session.get(flow["auth_uri"], allow_redirects=False)
    assert response.status_code == 302
    redirect = browse(https_session, flow["auth_uri"])
    assert set(redirect) == {"code", "state", "session_state"}
    assert "access_token" in app.acquire_token_by_auth_code_flow(flow, redirect)


# --- outcomes on demand -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "code", "subcode"),
    [(SignInOutcome.CONSENT_DENIED, 65004, "cancel"), (SignInOutcome.ADMIN_APPROVAL_REQUIRED, 90094, None)],
)
def test_queued_outcomes_come_back_as_redirect_errors(
    identity_emulator: IdentityEmulator,
    https_session: requests.Session,
    directory: Directory,
    outcome: SignInOutcome,
    code: int,
    subcode: str | None,
) -> None:
    identity_emulator.queue_sign_in(directory.user_upn, outcome)
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    flow = start_flow(app)
    redirect = browse(https_session, flow["auth_uri"])

    assert redirect["error"] == "access_denied"
    assert redirect["error_description"].startswith(f"AADSTS{code}: ")
    assert redirect.get("error_subcode") == subcode
    assert redirect["state"] == flow["state"]
    result = app.acquire_token_by_auth_code_flow(flow, redirect)
    assert result["error"] == "access_denied"
    # The queue is one-shot: the next sign-in succeeds.
    assert "access_token" in sign_in(app, https_session, directory.user_upn)


def test_admin_consent_lifts_the_tenant_admin_approval_requirement(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    identity_emulator.set_require_admin_consent(directory.tenant_id, True)
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    flow = start_flow(app)
    blocked = browse(https_session, flow["auth_uri"])
    assert blocked["error"] == "access_denied"
    assert blocked["error_description"].startswith("AADSTS90094: The grant requires admin permission.")

    identity_emulator.queue_sign_in(directory.admin_upn, SignInOutcome.CONSENT_DENIED)
    consent_url = f"{identity_emulator.base_url}/organizations/v2.0/adminconsent?" + urlencode(
        {
            "client_id": directory.client_id,
            "scope": GRAPH_DEFAULT,
            "redirect_uri": REDIRECT_URI,
            "state": "s1",
        }
    )
    declined = browse(https_session, consent_url)
    assert (declined["error"], declined["state"]) == ("access_denied", "s1")
    assert declined["error_description"].startswith("AADSTS65004: ")

    identity_emulator.queue_sign_in(directory.admin_upn)
    granted = browse(https_session, consent_url)
    assert granted["admin_consent"] == "True"
    assert granted["tenant"] == directory.tenant_id
    assert granted["state"] == "s1"
    assert set(granted["scope"].split()) == {
        f"{GRAPH_RESOURCE}/Calendars.ReadWrite",
        f"{GRAPH_RESOURCE}/User.Read",
    }

    flow = start_flow(app, prompt="none")
    assert "access_token" in app.acquire_token_by_auth_code_flow(
        flow, browse(https_session, flow["auth_uri"])
    )


def test_non_admin_cannot_grant_admin_consent(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    identity_emulator.queue_sign_in(directory.user_upn)
    url = f"{identity_emulator.base_url}/{directory.tenant_id}/v2.0/adminconsent?" + urlencode(
        {"client_id": directory.client_id, "scope": GRAPH_DEFAULT, "redirect_uri": REDIRECT_URI}
    )
    answer = browse(https_session, url)
    assert answer["error"] == "access_denied"
    assert answer["error_description"].startswith("AADSTS90094")


def test_prompt_none_without_consent_is_consent_required(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    flow = start_flow(app, prompt="none")
    redirect = browse(https_session, flow["auth_uri"])
    assert redirect["error"] == "consent_required"
    assert redirect["error_description"].startswith("AADSTS65001")


def test_personal_account_signs_in_on_common_with_the_consumer_tenant(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    identity_emulator.queue_sign_in(outcome=SignInOutcome.PERSONAL_ACCOUNT)
    app = confidential_app(identity_emulator, https_session, directory.client_id, "common")
    result = sign_in(app, https_session)

    assert "error" not in result, result
    assert result["id_token_claims"]["tid"] == CONSUMER_TENANT_ID
    assert result["id_token_claims"]["iss"] == f"{identity_emulator.base_url}/{CONSUMER_TENANT_ID}/v2.0"
    assert result["id_token_claims"]["preferred_username"].endswith("@outlook.com")

    # Entra refuses personal accounts on "organizations" on its own page; no redirect reaches the app.
    identity_emulator.queue_sign_in(outcome=SignInOutcome.PERSONAL_ACCOUNT)
    orgs = confidential_app(identity_emulator, https_session, directory.client_id, "organizations")
    flow = start_flow(orgs)
    page = https_session.get(flow["auth_uri"], allow_redirects=False)
    assert page.status_code == 400
    assert page.json()["error_codes"] == [50020]


def test_login_hint_picks_the_user_on_organizations(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    other = identity_emulator.add_tenant(display_name="Fabrikam")
    megan = identity_emulator.add_user(other.tenant_id, "megan@fabrikam.example")
    app = confidential_app(identity_emulator, https_session, directory.client_id, "organizations")
    result = sign_in(app, https_session, login_hint="Megan@Fabrikam.example")
    assert (result["id_token_claims"]["tid"], result["id_token_claims"]["oid"]) == (
        other.tenant_id,
        megan.oid,
    )

    # A tenant-specific authority does not let another tenant's user in.
    pinned = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    flow = start_flow(pinned, login_hint=megan.upn)
    page = https_session.get(flow["auth_uri"], allow_redirects=False)
    assert page.status_code == 400
    assert page.json()["error_codes"] == [50020]


def test_authorize_validates_client_redirect_uri_and_pkce(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    authorize = f"{identity_emulator.base_url}/{directory.tenant_id}/oauth2/v2.0/authorize"
    good = {
        "client_id": directory.client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": "openid offline_access Calendars.ReadWrite",
        "state": "xyz",
        "code_challenge": b64url(b"\x01" * 32),
        "code_challenge_method": "S256",
    }

    def visit(**changes: str | None) -> requests.Response:
        params = {k: v for k, v in {**good, **changes}.items() if v is not None}
        return https_session.get(authorize + "?" + urlencode(params), allow_redirects=False)

    # Shown on Entra's own page: nothing goes to an unverified redirect URI.
    assert visit(redirect_uri="https://evil.example/cb").json()["error_codes"] == [50011]
    assert visit(client_id="00000000-0000-0000-0000-000000000000").json()["error_codes"] == [700016]
    # Redirected to the app, per RFC 6749 §4.1.2.1.
    for changes, error in (
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "https://management.azure.com/.default"}, "invalid_scope"),
    ):
        response = visit(**changes)
        assert response.status_code == 302, changes
        answer = dict(parse_qsl(urlsplit(response.headers["Location"]).query))
        assert (answer["error"], answer["state"]) == (error, "xyz"), changes
    posted = visit(response_mode="form_post")
    assert posted.status_code == 200
    assert f'action="{REDIRECT_URI}"' in posted.text
    assert 'name="code"' in posted.text


# --- the app's own tokens: client credentials -------------------------------------------------------------


def test_client_credentials_with_a_secret(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    result = app.acquire_token_for_client([GRAPH_DEFAULT])
    assert "error" not in result, result
    claims = verify(
        result["access_token"],
        fetch_jwks(https_session, identity_emulator, directory.tenant_id),
        audiences=[GRAPH_RESOURCE],
    )
    assert claims["roles"] == ["Calendars.ReadWrite"]
    assert claims["idtyp"] == "app"
    assert "scp" not in claims
    assert (claims["tid"], claims["appid"], claims["appidacr"]) == (
        directory.tenant_id,
        directory.client_id,
        "1",
    )
    assert app.acquire_token_for_client([GRAPH_DEFAULT])["token_source"] == "cache"


@pytest.mark.parametrize("form", ["thumbprint", "public_certificate"])
def test_client_credentials_with_a_certificate(
    identity_emulator: IdentityEmulator,
    https_session: requests.Session,
    directory: Directory,
    certificate: Certificate,
    form: str,
) -> None:
    # With a thumbprint MSAL signs RS256 + x5t; with the certificate itself PS256 + x5t#S256.
    credential = {"private_key": certificate.private_key_pem}
    if form == "thumbprint":
        credential["thumbprint"] = certificate.sha1_thumbprint
    else:
        credential["public_certificate"] = certificate.certificate_pem
    app = confidential_app(
        identity_emulator, https_session, directory.client_id, directory.tenant_id, credential
    )
    result = app.acquire_token_for_client([GRAPH_DEFAULT])
    assert "error" not in result, result
    claims = identity_emulator.verify_access_token(result["access_token"])
    assert (claims["appid"], claims["appidacr"]) == (directory.client_id, "2")


def test_certificate_assertion_signed_by_another_key_is_refused(
    identity_emulator: IdentityEmulator,
    https_session: requests.Session,
    directory: Directory,
    certificate: Certificate,
    stranger_key: SigningKey,
) -> None:
    pem = stranger_key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    credential = {"private_key": pem, "thumbprint": certificate.sha1_thumbprint}
    app = confidential_app(
        identity_emulator, https_session, directory.client_id, directory.tenant_id, credential
    )
    result = app.acquire_token_for_client([GRAPH_DEFAULT])
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [700027]


def test_client_credentials_with_a_managed_identity_federated_assertion(
    identity_emulator: IdentityEmulator,
    https_session: requests.Session,
    directory: Directory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    identity = identity_emulator.add_managed_identity(directory.tenant_id)
    federated_app = identity_emulator.register_app(
        directory.tenant_id,
        federated_credentials=[
            FederatedCredential(identity_emulator.issuer(directory.tenant_id), identity.principal_id)
        ],
        application_permissions=["Calendars.ReadWrite"],
    )
    for name, value in identity_emulator.managed_identity_environment().items():
        monkeypatch.setenv(name, value)  # restored when the test ends

    with ManagedIdentityCredential(client_id=identity.client_id) as managed_identity:

        def assertion() -> str:
            token: str = managed_identity.get_token(f"{TOKEN_EXCHANGE_AUDIENCE}/.default").token
            return token

        mi_claims = unverified_claims(assertion())
        assert (mi_claims["aud"], mi_claims["sub"]) == (TOKEN_EXCHANGE_AUDIENCE, identity.principal_id)
        app = confidential_app(
            identity_emulator,
            https_session,
            federated_app.client_id,
            directory.tenant_id,
            {"client_assertion": assertion},
        )
        result = app.acquire_token_for_client([GRAPH_DEFAULT])

    assert "error" not in result, result
    claims = identity_emulator.verify_access_token(result["access_token"])
    assert (claims["appid"], claims["roles"]) == (federated_app.client_id, ["Calendars.ReadWrite"])

    # The same managed identity token is no credential for an app that does not trust it.
    stranger = confidential_app(
        identity_emulator,
        https_session,
        directory.client_id,
        directory.tenant_id,
        {"client_assertion": lambda: result_token(identity_emulator, identity.client_id, https_session)},
    )
    refused = stranger.acquire_token_for_client([GRAPH_DEFAULT])
    assert refused["error"] == "invalid_client"
    assert refused["error_codes"] == [700211]


def result_token(emulator: IdentityEmulator, client_id: str, session: requests.Session) -> str:
    """A managed identity token fetched by hand, as App Service's endpoint serves it."""
    environment = emulator.managed_identity_environment()
    response = session.get(
        environment["IDENTITY_ENDPOINT"],
        params={"api-version": "2019-08-01", "resource": TOKEN_EXCHANGE_AUDIENCE, "client_id": client_id},
        headers={"X-IDENTITY-HEADER": environment["IDENTITY_HEADER"]},
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    token: str = body["access_token"]
    return token


def test_managed_identity_endpoint_requires_its_header(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    identity_emulator.add_managed_identity(directory.tenant_id, system_assigned=True)
    endpoint = identity_emulator.managed_identity_environment()["IDENTITY_ENDPOINT"]
    params = {"api-version": "2019-08-01", "resource": TOKEN_EXCHANGE_AUDIENCE}
    assert https_session.get(endpoint, params=params).status_code == 401
    assert (
        https_session.get(endpoint, params=params, headers={"X-IDENTITY-HEADER": "wrong"}).status_code == 401
    )


def test_wrong_client_secret_is_401_invalid_client(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    app = confidential_app(
        identity_emulator, https_session, directory.client_id, directory.tenant_id, "not-the-secret"
    )
    result = app.acquire_token_for_client([GRAPH_DEFAULT])
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]

    token_url = identity_emulator.token_endpoint(directory.tenant_id)
    form = {"grant_type": "client_credentials", "scope": GRAPH_DEFAULT}
    basic = https_session.post(token_url, data=form, auth=(directory.client_id, "not-the-secret"))
    assert basic.status_code == 401
    assert basic.json()["error"] == "invalid_client"
    good = https_session.post(token_url, data=form, auth=(directory.client_id, SECRET))
    assert good.status_code == 200
    assert good.json()["token_type"] == "Bearer"
    anonymous = https_session.post(token_url, data={**form, "client_id": directory.client_id})
    assert anonymous.status_code == 401
    assert anonymous.json()["error_codes"] == [7000218]


def test_client_credentials_needs_a_tenant_and_a_default_scope(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: Directory
) -> None:
    on_common = confidential_app(identity_emulator, https_session, directory.client_id, "organizations")
    with pytest.warns(DeprecationWarning, match="specific tenant"):  # MSAL agrees
        assert on_common.acquire_token_for_client([GRAPH_DEFAULT])["error_codes"] == [50059]
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    assert app.acquire_token_for_client([f"{GRAPH_RESOURCE}/Calendars.Read"])["error_codes"] == [1002012]
    # A tenant that never consented to the multi-tenant app does not know it.
    elsewhere = identity_emulator.add_tenant()
    foreign = confidential_app(identity_emulator, https_session, directory.client_id, elsewhere.tenant_id)
    assert foreign.acquire_token_for_client([GRAPH_DEFAULT])["error_codes"] == [700016]
    identity_emulator.grant_admin_consent(elsewhere.tenant_id, directory.client_id)
    # A new MSAL app: MSAL replays an identical request's HTTP 400 from its own cache for 60 s.
    consented = confidential_app(identity_emulator, https_session, directory.client_id, elsewhere.tenant_id)
    assert "access_token" in consented.acquire_token_for_client([GRAPH_DEFAULT])


# --- the tokens as the Graph emulator sees them -----------------------------------------------------------


def test_tampered_expired_or_wrong_audience_tokens_fail_verification(
    identity_emulator: IdentityEmulator,
    https_session: requests.Session,
    directory: Directory,
    stranger_key: SigningKey,
) -> None:
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    token = app.acquire_token_for_client([GRAPH_DEFAULT])["access_token"]
    jwks = fetch_jwks(https_session, identity_emulator, directory.tenant_id)
    claims = verify(token, jwks, audiences=[GRAPH_RESOURCE])

    header, payload, signature = token.split(".")
    forged = json.loads(b64url_decode(payload)) | {"roles": ["Mail.ReadWrite"]}
    tampered = ".".join([header, b64url(json.dumps(forged).encode()), signature])
    with pytest.raises(InvalidTokenError, match="bad signature"):
        verify(tampered, jwks, audiences=[GRAPH_RESOURCE])
    with pytest.raises(InvalidTokenError, match="expired"):
        verify(token, jwks, audiences=[GRAPH_RESOURCE], now=claims["exp"] + 3600)
    with pytest.raises(InvalidTokenError, match="wrong audience"):
        verify(token, jwks, audiences=["https://outlook.office.com"])
    with pytest.raises(InvalidTokenError, match="unknown signing key"):
        verify(token, [stranger_key.jwk()], audiences=[GRAPH_RESOURCE])


def test_user_and_app_tokens_pass_the_graph_emulators_check(
    identity_emulator: IdentityEmulator,
    https_session: requests.Session,
    directory: Directory,
    test_ca: CertAuthority,
    stranger_key: SigningKey,
) -> None:
    keys_url = f"{identity_emulator.authority(directory.tenant_id)}/discovery/v2.0/keys"
    graph = Authenticator(JwksProvider(keys_url, ca_path=str(test_ca.cert_path)))
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)

    user = graph.authenticate("Bearer " + sign_in(app, https_session, directory.user_upn)["access_token"])
    assert (user.object_id, user.tenant_id, user.upn) == (
        directory.user_oid,
        directory.tenant_id,
        directory.user_upn,
    )
    assert user.has_any(["Calendars.ReadWrite"])
    assert not user.is_app
    daemon = graph.authenticate("Bearer " + app.acquire_token_for_client([GRAPH_DEFAULT])["access_token"])
    assert daemon.is_app
    assert daemon.roles == {"Calendars.ReadWrite"}

    other = IdentityEmulator(test_ca, signing_key=stranger_key)
    with other:
        stranger_tenant = other.add_tenant()
        stranger_app = other.register_app(stranger_tenant.tenant_id, client_secret=SECRET)
        foreign = confidential_app(other, https_session, stranger_app.client_id, stranger_tenant.tenant_id)
        forged = foreign.acquire_token_for_client([GRAPH_DEFAULT])["access_token"]
    with pytest.raises(GraphError) as refused:
        graph.authenticate(f"Bearer {forged}")
    assert refused.value.status == 401


# --- control API over HTTP, logging, and running alone ------------------------------------------------------


def test_http_control_api_drives_a_sign_in_and_logs_no_secrets(
    identity_emulator: IdentityEmulator, https_session: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="devkit.identity_emulator")
    control = f"{identity_emulator.base_url}/_devkit"

    def post(path: str, body: dict[str, Any]) -> requests.Response:
        response = https_session.post(control + path, json=body)
        assert response.status_code < 300, response.text
        return response

    tenant = post("/tenants", {"display_name": "Northwind"}).json()
    user = post("/users", {"tenant_id": tenant["tenant_id"], "upn": "nina@northwind.example"}).json()
    app_info = post(
        "/apps",
        {"home_tenant_id": tenant["tenant_id"], "redirect_uris": [REDIRECT_URI], "client_secret": SECRET},
    ).json()
    assert "client_secret" not in app_info
    assert app_info["has_client_secret"] is True
    post("/next-sign-in", {"user": user["upn"], "outcome": "success"})
    assert https_session.post(control + "/next-sign-in", json={"outcome": "nope"}).status_code == 400
    assert https_session.post(control + "/users/unknown/revoke").status_code == 400

    app = confidential_app(identity_emulator, https_session, app_info["client_id"], tenant["tenant_id"])
    result = sign_in(app, https_session)
    assert result["id_token_claims"]["oid"] == user["oid"]
    post(f"/users/{user['oid']}/revoke", {})
    assert post("/clock/advance", {"seconds": 30}).json()["offset"] == 30
    assert post("/settings", {"access_token_lifetime": 120}).json() == {"access_token_lifetime": 120}
    state = https_session.get(control + "/state").json()
    assert [u["upn"] for u in state["users"] if u["tenant_id"] == tenant["tenant_id"]] == [user["upn"]]

    log_text = json.dumps(https_session.get(control + "/requests").json()) + caplog.text
    for secret in (SECRET, result["access_token"], result["refresh_token"], result["id_token"]):
        assert secret not in log_text
    assert "authorization_code" in log_text


def test_main_runs_the_emulator_alone(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from devkit.identity_emulator import main; sys.exit(main(sys.argv[1:]))",
            "--state-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        summary = json.loads(process.stdout.readline())
        config = json.loads(Path(summary["config"]).read_text())
        assert Path(summary["config"]).stat().st_mode & 0o077 == 0
        with requests.Session() as session:
            session.trust_env = False  # else REQUESTS_CA_BUNDLE would override verify
            session.verify = summary["ca_cert"]
            app = msal.ConfidentialClientApplication(
                summary["client_id"],
                authority=summary["authority"],
                client_credential=config["client_secret"],
                http_client=session,
                instance_discovery=False,
            )
            assert "access_token" in app.acquire_token_for_client([GRAPH_DEFAULT])
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert config["client_secret"] not in stderr


def test_msal_user_token_works_at_the_graph_emulator_and_bad_tokens_get_401(
    identity_emulator: IdentityEmulator,
    https_session: requests.Session,
    directory: Directory,
    test_ca: CertAuthority,
    stranger_key: SigningKey,
) -> None:
    """End to end over HTTPS: real MSAL signs a user in (auth code + PKCE) and calls the Graph emulator."""
    app = confidential_app(identity_emulator, https_session, directory.client_id, directory.tenant_id)
    token = sign_in(app, https_session, directory.user_upn)["access_token"]
    keys_url = f"{identity_emulator.authority(directory.tenant_id)}/discovery/v2.0/keys"
    certificate = test_ca.issue_server_certificate("graph-emulator")
    with GraphEmulator(
        jwks=keys_url,
        jwks_ca_path=str(test_ca.cert_path),
        certificate=certificate,
        time_source=identity_emulator.clock.now,
    ) as graph:
        graph.add_mailbox(directory.user_oid, upn=directory.user_upn)
        events_url = f"{graph.base_url}/me/events"

        def call(bearer: str) -> requests.Response:
            return https_session.get(events_url, headers={"Authorization": f"Bearer {bearer}"}, timeout=10)

        assert call(token).status_code == 200
        header, payload, signature = token.split(".")
        widened = json.loads(b64url_decode(payload)) | {"scp": "Calendars.ReadWrite Mail.ReadWrite"}
        tampered = ".".join([header, b64url(json.dumps(widened).encode()), signature])
        wrong_audience = stranger_key.sign(json.loads(b64url_decode(payload)) | {"aud": "api://elsewhere"})
        for bad in (tampered, wrong_audience):
            refused = call(bad)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "InvalidAuthenticationToken"
        identity_emulator.clock.advance(2 * 3600)  # the clock both emulators share: the token has expired
        assert call(token).status_code == 401
