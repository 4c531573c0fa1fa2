"""The adapters the connect flow stands on, each against the real thing on real sockets: the nonce store on
Azurite, the CRM client against the CRM emulator, the Graph client against the Graph emulator, and the
per-user token cache with MSAL against the identity emulator and Azurite."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from devkit.crm_emulator import CrmEmulator
from devkit.graph_emulator import EmulatorSettings, GraphEmulator
from devkit.graph_emulator.testkit import TokenMinter, WebhookReceiver
from devkit.identity_emulator import IdentityEmulator
from sync_core.adapters.crm import CrmClient
from sync_core.adapters.graph import GraphClient
from sync_core.adapters.identity import IdentityClient, SignInFailed, SignInSucceeded, UserTokens
from sync_core.adapters.tables import TableStorage, TokenStore
from sync_core.adapters.token_cipher import TokenCipher
from sync_core.config import EncryptionKey, Secret, Settings, StorageSettings
from sync_core.domain.connection_view import connected_event
from sync_core.domain.retry_policy import RetryPolicy
from sync_core.domain.state import Versioned
from sync_core.errors import (
    AuthenticationError,
    ConflictError,
    ItemGoneError,
    RemoteRejectedError,
    ThrottledError,
    TokenRevokedError,
    TransientRemoteError,
)

NOW = dt.datetime(2026, 3, 14, 9, 0, tzinfo=dt.UTC)
API_KEY, SIGNING_SECRET = "adapter-api-key", "adapter-signing-secret"
KEY = EncryptionKey("k1", Secret(base64.b64encode(bytes(range(32))).decode()))
POLICY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, retry_after_cap=5.0)


@pytest.fixture
def storage(storage_connection_string: str, unique_prefix: str) -> Iterator[TableStorage]:
    tables = TableStorage(StorageSettings(Secret(storage_connection_string), None, None, None, unique_prefix))
    tables.ensure_tables()
    yield tables
    tables.close()


def loopback() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


# --- nonces -------------------------------------------------------------------------------------------------


def test_a_nonce_is_accepted_once_while_remembered_then_may_return(storage: TableStorage) -> None:
    nonces, keep = storage.nonces, dt.timedelta(seconds=600)
    assert nonces.remember("n" * 32, NOW, keep) is True
    assert nonces.remember("n" * 32, NOW + dt.timedelta(seconds=599), keep) is False
    assert nonces.remember("n" * 32, NOW + dt.timedelta(seconds=601), keep) is True  # expired row taken over
    assert nonces.remember("n" * 32, NOW + dt.timedelta(seconds=602), keep) is False
    assert nonces.purge_expired(NOW + dt.timedelta(days=1)) == 1
    assert nonces.remember("n" * 32, NOW + dt.timedelta(days=1), keep) is True


def test_racing_requests_with_one_nonce_have_exactly_one_winner(storage: TableStorage) -> None:
    barrier, results = threading.Barrier(6), []

    def race() -> None:
        barrier.wait()
        results.append(storage.nonces.remember("racing-nonce-0123456789", NOW, dt.timedelta(seconds=600)))

    threads = [threading.Thread(target=race) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 5 + [True]


# --- the CRM client -----------------------------------------------------------------------------------------


@pytest.fixture
def crm() -> Iterator[CrmEmulator]:
    with CrmEmulator(API_KEY, SIGNING_SECRET, base_path="/crm/v1") as emulator:
        yield emulator


def crm_client(base_url: str, sleeps: list[float], api_key: str = API_KEY) -> CrmClient:
    return CrmClient(
        base_url, Secret(api_key), Secret(SIGNING_SECRET), loopback(), POLICY, sleep=sleeps.append
    )


def test_events_are_signed_over_the_full_path_and_retries_keep_the_idempotency_key(crm: CrmEmulator) -> None:
    sleeps: list[float] = []
    crm.fail_next(1, status=429, retry_after=1)
    crm.fail_next(1, status=502)
    client = crm_client(crm.base_url, sleeps)
    client.notify(connected_event("usr-1", "jo@contoso.com", "tid-1", NOW))

    [event] = crm.events("connected", "usr-1")
    assert event["details"]["account"] == {"upn": "jo@contoso.com", "tenantId": "tid-1"}
    attempts = [r for r in crm.request_log() if r["target"] == "/crm/v1/events"]
    assert [a["status"] for a in attempts] == [429, 502, 204]
    assert len({a["idempotencyKey"] for a in attempts}) == 1  # every attempt re-signed (no replayed_nonce)
    assert sleeps == [1.0, 0.02]  # Retry-After first, then the back-off of the second attempt

    client.notify(connected_event("usr-1", "jo@contoso.com", "tid-1", NOW))  # the same event again
    assert len(crm.events("connected", "usr-1")) == 1
    assert crm.request_log()[-1]["replayed"] is True


def test_crm_errors_are_typed_and_only_safe_requests_are_retried(crm: CrmEmulator) -> None:
    sleeps: list[float] = []
    with pytest.raises(AuthenticationError):
        crm_client(crm.base_url, sleeps, api_key="wrong").notify(connected_event("usr-2", "u", "t", NOW))
    with pytest.raises(RemoteRejectedError) as caught:  # a wrong base URL is a configuration error
        crm_client(crm.origin + "/elsewhere", sleeps).notify(connected_event("usr-2", "u", "t", NOW))
    assert (caught.value.status, caught.value.code) == (404, "route_not_found")
    assert not isinstance(caught.value, ItemGoneError)

    crm.fail_next(1, status=429, retry_after=30)  # longer than the cap: handed back, not slept through
    with pytest.raises(ThrottledError) as throttled:
        crm_client(crm.base_url, sleeps).notify(connected_event("usr-2", "u", "t", NOW))
    assert throttled.value.retry_after == POLICY.retry_after_cap
    crm.fail_next(3, status=500)
    with pytest.raises(TransientRemoteError):
        crm_client(crm.base_url, sleeps).notify(connected_event("usr-2", "u", "t", NOW))
    assert sleeps == [0.01, 0.02]
    assert crm.events(crm_user_id="usr-2") == []


# --- the Graph client ---------------------------------------------------------------------------------------


def test_graph_subscriptions_with_retries_and_typed_errors() -> None:
    minter = TokenMinter()
    sleeps: list[float] = []
    settings = EmulatorSettings(handshake_timeout=2.0)
    with GraphEmulator(jwks=minter.jwks(), settings=settings) as graph, WebhookReceiver() as webhook:
        client = GraphClient(graph.base_url, loopback(), POLICY, sleep=sleeps.append)
        token = minter.delegated("0b0e1c2d-0000-4000-8000-000000000001")
        body = {
            "changeType": "created,updated,deleted",
            "notificationUrl": webhook.url(),
            "resource": "/me/events",
            "expirationDateTime": (graph.now() + dt.timedelta(hours=1)).isoformat(),
            "clientState": "client-state",
        }
        graph.inject_fault(429, retry_after=0.5, method="POST", path_contains="/subscriptions")
        created = client.create_subscription(lambda: token, body)
        assert sleeps == [0.5]
        assert created.id in {s["id"] for s in graph.subscriptions()}

        graph.inject_fault(500, method="POST", path_contains="/subscriptions")
        with pytest.raises(TransientRemoteError):  # a create that may have happened is not sent twice
            client.create_subscription(lambda: token, body)
        assert len(graph.subscriptions()) == 1

        graph.inject_fault(503, retry_after=0.25, method="DELETE")
        assert client.delete_subscription(lambda: token, created.id) is True
        assert client.delete_subscription(lambda: token, created.id) is False  # gone already: done
        assert graph.subscriptions() == []

        with pytest.raises(AuthenticationError):
            client.create_subscription(lambda: "not-a-token", body)
        graph.inject_fault(429, retry_after=60, method="POST")
        with pytest.raises(ThrottledError) as throttled:
            client.create_subscription(lambda: token, body)
        assert throttled.value.retry_after == POLICY.retry_after_cap
        with pytest.raises(RemoteRejectedError) as rejected:
            client.create_subscription(lambda: token, {**body, "clientState": "x" * 200})
        assert rejected.value.status == 400


# --- MSAL and the encrypted per-user token cache ------------------------------------------------------------

REDIRECT = "https://sync.example.test/api/auth/callback"


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "input" and values.get("name"):
            self.fields[str(values["name"])] = values.get("value") or ""


def browse(session: requests.Session, url: str) -> dict[str, str]:
    answer = session.get(url, allow_redirects=False)
    if answer.status_code == 302:
        return dict(parse_qsl(urlsplit(answer.headers["Location"]).query))
    form = _Form()
    form.feed(answer.text)
    return form.fields


def certificate_pair() -> tuple[str, str, str]:
    """A self-signed RSA certificate: (PEM private key + certificate, certificate PEM, SHA-1 thumbprint)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sync app")])
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
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return key_pem + cert_pem, cert_pem, cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - x5t is SHA-1


@pytest.fixture
def directory(identity_emulator: IdentityEmulator) -> dict[str, Any]:
    tenant = identity_emulator.add_tenant(domain="contoso.example")
    user = identity_emulator.add_user(tenant.tenant_id, "jo@contoso.example")
    other = identity_emulator.add_user(tenant.tenant_id, "ann@contoso.example")
    combined, cert_pem, thumbprint = certificate_pair()
    app = identity_emulator.register_app(
        tenant.tenant_id, redirect_uris=[REDIRECT], client_secret="app-secret", certificates=[cert_pem]
    )
    return {
        "tenant": tenant.tenant_id,
        "user": user,
        "other": other,
        "client_id": app.client_id,
        "certificate": combined,
        "thumbprint": thumbprint,
    }


def settings_for(emulator: IdentityEmulator, directory: dict[str, Any], **credential: str) -> Settings:
    return Settings.from_env(
        {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "AUTHORITY_HOST": emulator.base_url,
            "TENANT_ID": directory["tenant"],
            "CLIENT_ID": directory["client_id"],
            **(credential or {"CLIENT_SECRET": "app-secret"}),
            "TOKEN_ENCRYPTION_KEY": f"{KEY.key_id}:{KEY.key.value}",
            "PUBLIC_BASE_URL": "https://sync.example.test",
            "CRM_BASE_URL": "https://crm.example.test",
            "CRM_API_KEY": "k",
            "CRM_SIGNING_SECRET": "s",
        }
    )


def signed_in(identity: IdentityClient, session: requests.Session, upn: str) -> SignInSucceeded:
    flow = identity.start_sign_in(state="state-1", login_hint=upn)
    assert "code_challenge=" in flow["auth_uri"]
    assert "response_mode=form_post" in flow["auth_uri"]
    result = identity.finish_sign_in(flow, browse(session, flow["auth_uri"]))
    assert isinstance(result, SignInSucceeded)
    return result


def test_sign_in_with_a_certificate_credential_and_a_replayed_answer_fails(
    identity_emulator: IdentityEmulator, https_session: requests.Session, directory: dict[str, Any]
) -> None:
    settings = settings_for(
        identity_emulator,
        directory,
        CLIENT_CERTIFICATE=directory["certificate"],
        CLIENT_CERTIFICATE_THUMBPRINT=directory["thumbprint"],
    )
    identity = IdentityClient(settings, https_session)
    flow = identity.start_sign_in(state="state-2", login_hint=directory["user"].upn)
    answer = browse(https_session, flow["auth_uri"])
    result = identity.finish_sign_in(dict(flow), answer)
    assert isinstance(result, SignInSucceeded)
    assert (result.claims["tid"], result.claims["oid"]) == (directory["tenant"], directory["user"].oid)
    assert repr(result) == "SignInSucceeded(***)"
    again = identity.finish_sign_in(dict(flow), answer)  # the code is single-use
    assert isinstance(again, SignInFailed)
    assert again.error == "invalid_grant"
    assert 54005 in again.codes
    mismatch = identity.finish_sign_in(dict(flow), {**answer, "state": "other"})
    assert mismatch == SignInFailed("invalid_response", frozenset())


class RacingTokenStore(TokenStore):
    """The token store of an instance that loses a race: right before its first write, another instance
    (``rival``) refreshes the same user and saves. Real rows on Azurite; only the timing is arranged."""

    def __init__(self, store: TokenStore, rival: UserTokens, user_id: str) -> None:
        super().__init__(store._table)
        self._rival, self._user_id, self.lost = rival, user_id, 0
        self.rival_etag: str | None = None

    def put(self, user_id: str, blob: bytes, *, etag: str | None = None) -> Versioned[bytes]:
        if self.rival_etag is None:
            self._rival.access_token(self._user_id, None)
            current = super().get(self._user_id)
            assert current is not None
            self.rival_etag = current.etag
        try:
            return super().put(user_id, blob, etag=etag)
        except ConflictError:
            self.lost += 1
            raise


def test_token_cache_is_saved_only_when_changed_and_never_over_a_concurrent_refresh(
    identity_emulator: IdentityEmulator,
    https_session: requests.Session,
    directory: dict[str, Any],
    storage: TableStorage,
) -> None:
    identity = IdentityClient(settings_for(identity_emulator, directory), https_session)
    cipher = TokenCipher([KEY])
    tokens = UserTokens(identity, storage.tokens, cipher)
    result = signed_in(identity, https_session, directory["user"].upn)
    tokens.save_new("usr-1", result.serialized_cache)
    saved = storage.tokens.get("usr-1")
    assert saved is not None
    assert b"refresh_token" not in saved.value

    token = tokens.access_token("usr-1", result.home_account_id)  # a cached, live token: nothing to write
    assert identity_emulator.verify_access_token(token)["oid"] == directory["user"].oid
    assert storage.tokens.get("usr-1") == saved

    # A second user whose access token lives under MSAL's 5-minute margin, so its next use refreshes (and the
    # refreshed tokens live an hour).
    identity_emulator.access_token_lifetime = 120
    second = signed_in(identity, https_session, directory["other"].upn)
    tokens.save_new("usr-2", second.serialized_cache)
    identity_emulator.access_token_lifetime = 3600
    rival = UserTokens(identity, storage.tokens, cipher)
    racing = RacingTokenStore(storage.tokens, rival, "usr-2")
    loser = UserTokens(identity, racing, cipher)
    refreshed = loser.access_token("usr-2", second.home_account_id)
    current = storage.tokens.get("usr-2")
    assert current is not None
    assert racing.lost == 1
    # The rival's save stands; the loser read it again and took the token from it (its own refresh was
    # dropped, never written over the rival's).
    assert current.etag == racing.rival_etag
    cache = json.loads(cipher.decrypt(current.value, user_id="usr-2"))
    assert refreshed in {item["secret"] for item in cache["AccessToken"].values()}

    # A revoked grant shows at the next refresh: invalid_grant, translated with its AADSTS code only.
    identity_emulator.access_token_lifetime = 120
    third = signed_in(identity, https_session, directory["other"].upn)
    tokens.save_new("usr-3", third.serialized_cache)
    identity_emulator.revoke_sign_in_sessions(directory["other"].oid)
    with pytest.raises(TokenRevokedError) as revoked:
        tokens.access_token("usr-3", third.home_account_id)
    assert revoked.value.code == "invalid_grant"
    assert "AADSTS50173" in str(revoked.value)
    with pytest.raises(TokenRevokedError):
        tokens.access_token("usr-unknown", None)
