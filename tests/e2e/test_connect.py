"""Connecting and disconnecting users, end to end through the local Functions host.

The CRM emulator calls the service (function key + signature), a browser made of ``requests`` follows Entra's
redirects and auto-posted forms, the identity emulator signs users in, the Graph emulator holds their
subscriptions (and runs the validation handshake against the host), and Azurite holds the state.

Done-means of the issue, and where each is shown:
1. ``test_connect_succeeds_status_is_connected_and_the_crm_is_told``
2. ``test_a_failed_sign_in_ends_at_the_return_url_and_stores_nothing`` (consent denied, admin approval,
   wrong tenant) and ``test_multi_tenant_federated_deployment_refuses_personal_accounts`` (personal account)
3. ``test_replayed_expired_forged_and_other_user_states_are_refused`` and
   ``test_return_urls_outside_the_crm_origin_are_refused_at_connect``
4. ``test_the_token_entity_is_encrypted_and_key_rotation_keeps_users_working``
5. ``test_silent_refresh_then_a_revoked_grant_requires_reconnect``
6. ``test_disconnect_removes_subscriptions_and_tokens_and_is_idempotent``
7. ``test_no_log_line_holds_a_token_code_or_secret`` (runs last; checks every host's and this process's log)
Admin consent: ``test_admin_consent_lets_users_of_a_locked_tenant_connect_without_a_prompt``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from azure.data.tables import TableClient, UpdateMode

from devkit.azurite import AzuriteEndpoints
from devkit.crm_emulator import CrmEmulator, CrmServiceClient, ServiceResponse
from devkit.graph_emulator import EmulatorSettings, GraphEmulator
from devkit.host_process import HostLauncher, HostProcess, loopback_session
from devkit.identity_emulator import FederatedCredential, IdentityEmulator, SignInOutcome
from devkit.jwt import SigningKey
from devkit.tls import CertAuthority
from sync_core.adapters.tables import TableStorage
from sync_core.adapters.token_cipher import TokenCipher
from sync_core.config import EncryptionKey
from sync_core.domain.state import ConnectionState
from sync_core.errors import TokenCacheUnreadableError
from tests.e2e.kit import (
    CLIENT_SECRET,
    CRM_API_KEY,
    CRM_ORIGIN,
    CRM_SIGNING_SECRET,
    RETURN_URL,
    Browser,
    Landing,
    LogCollector,
    World,
    key_setting,
    new_key,
    repo_path,
    storage_for,
    unique_prefix,
    wait_until,
)
from tests.e2e.relay import Relay

APP = repo_path("function_app.py")
USERS = ("alice", "bob", "carol", "dave", "erin", "gina", "hank", "ivan", "judy", "kim", "liam", "mia")


@dataclass
class Stack:
    """One running host with its public address, storage, key, and the CRM's and a browser's view of it."""

    world: World
    host: HostProcess
    relay: Relay
    prefix: str
    key: EncryptionKey
    storage: TableStorage
    browser: Browser
    crm_client: CrmServiceClient
    connection_string: str
    extra_hosts: list[HostProcess] = field(default_factory=list)

    def connect(self, user_id: str, upn: str | None = None, return_url: str = RETURN_URL) -> ServiceResponse:
        return self.crm_client.connect(user_id, return_url, login_hint=upn)

    def authorize_url(self, user_id: str, upn: str | None = None, return_url: str = RETURN_URL) -> str:
        answer = self.connect(user_id, upn, return_url)
        assert answer.status == 200, answer.body
        url: str = answer.body["authorizeUrl"]
        return url

    def sign_in(self, user_id: str, name: str) -> Landing:
        return self.browser.sign_in(self.authorize_url(user_id, self.world.users[name].upn))

    def assert_nothing_stored(self, user_id: str) -> None:
        assert self.storage.tokens.get(user_id) is None
        assert self.storage.connections.get(user_id) is None
        assert self.storage.subscriptions.list_for_user(user_id) == []
        assert self.world.crm.events(crm_user_id=user_id) == []

    def cache_of(self, user_id: str, key: EncryptionKey | None = None) -> dict[str, Any]:
        stored = self.storage.tokens.get(user_id)
        assert stored is not None
        for candidate in [key] if key is not None else [self.key, *self.world.keys]:
            try:
                plain = TokenCipher([candidate]).decrypt(stored.value, user_id=user_id)
            except TokenCacheUnreadableError:
                continue
            cache: dict[str, Any] = json.loads(plain)
            return cache
        raise TokenCacheUnreadableError(f"no key of this test reads the cache of {user_id}")

    def fire_sync(self, host: HostProcess, user_id: str) -> None:
        host.fire("reconcile", json.dumps({"user": user_id, "reason": "test"}))


# --- the world ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logs() -> Iterator[LogCollector]:
    yield from LogCollector().install()


@pytest.fixture(scope="module")
def relays() -> Iterator[dict[str, Relay]]:
    with Relay() as main, Relay() as multi:
        yield {"main": main, "multi": multi}


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, relays: dict[str, Relay], logs: LogCollector
) -> Iterator[World]:
    ca = CertAuthority(Path(tmp_path_factory.mktemp("e2e-ca")))
    identity = IdentityEmulator(ca, signing_key=SigningKey.generate("e2e-key"))
    graph = GraphEmulator(
        jwks=identity.jwks,
        time_source=identity.clock.now,
        certificate=ca.issue_server_certificate(name="graph-e2e-" + secrets.token_hex(4)),
        settings=EmulatorSettings(notification_retry_delays=(0.1, 0.2)),
    )
    crm = CrmEmulator(CRM_API_KEY, CRM_SIGNING_SECRET, base_path="/crm/v1")
    with identity, graph, crm:
        contoso = identity.add_tenant(domain="contoso.example", display_name="Contoso")
        fabrikam = identity.add_tenant(domain="fabrikam.example", display_name="Fabrikam")
        users = {name: identity.add_user(contoso.tenant_id, f"{name}@contoso.example") for name in USERS}
        users["admin"] = identity.add_user(contoso.tenant_id, "admin@contoso.example", is_admin=True)
        users["frank"] = identity.add_user(fabrikam.tenant_id, "frank@fabrikam.example")
        managed_identity = identity.add_managed_identity(contoso.tenant_id)
        app = identity.register_app(
            contoso.tenant_id,
            redirect_uris=[f"{relay.url}/api/auth/callback" for relay in relays.values()],
            client_secret=CLIENT_SECRET,
            federated_credentials=[
                FederatedCredential(identity.issuer(contoso.tenant_id), managed_identity.principal_id)
            ],
        )
        yield World(
            ca=ca,
            identity=identity,
            graph=graph,
            crm=crm,
            tenant_id=contoso.tenant_id,
            client_id=app.client_id,
            users=users,
            managed_identity_client_id=managed_identity.client_id,
        )


def _stack(
    world: World,
    launcher: HostLauncher,
    relay: Relay,
    azurite: AzuriteEndpoints,
    *,
    prefix: str | None = None,
    key: EncryptionKey | None = None,
    overrides: dict[str, str] | None = None,
) -> Stack:
    prefix = prefix or unique_prefix()
    key = key or new_key("k1")
    host = launcher.start(APP, world.host_settings(relay.url, prefix, key, **(overrides or {})))
    relay.point_at(host.base_url)
    world.secrets_seen.update({host.function_key, host.master_key})
    storage = storage_for(azurite.connection_string, prefix)
    return Stack(
        world=world,
        host=host,
        relay=relay,
        prefix=prefix,
        key=key,
        storage=storage,
        browser=Browser(world.ca, world.secrets_seen),
        crm_client=world.crm.service_client(relay.url, host.function_key),
        connection_string=azurite.connection_string,
    )


@pytest.fixture(scope="module")
def launcher(local_hosts: HostLauncher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostLauncher]:
    module_launcher = HostLauncher(
        work_root=tmp_path_factory.mktemp("e2e-hosts"),
        base_settings=local_hosts.base_settings,
        env=local_hosts.env,
    )
    try:
        yield module_launcher
    finally:
        module_launcher.stop_all()


@pytest.fixture(scope="module")
def stack(
    world: World, launcher: HostLauncher, relays: dict[str, Relay], azurite: AzuriteEndpoints
) -> Iterator[Stack]:
    """The main deployment: single-tenant (Contoso), client secret."""
    built = _stack(world, launcher, relays["main"], azurite)
    yield built
    built.browser.close()
    built.crm_client.close()
    built.storage.close()


@pytest.fixture(scope="module")
def multi(
    world: World, launcher: HostLauncher, relays: dict[str, Relay], azurite: AzuriteEndpoints
) -> Iterator[Stack]:
    """A multi-tenant deployment (``TENANT_ID=common``) whose app credential is the managed identity's
    federated assertion: no client secret configured at all."""
    overrides = {
        "TENANT_ID": "common",
        "CLIENT_SECRET": "",
        "FEDERATED_IDENTITY_CLIENT_ID": world.managed_identity_client_id,
        **world.identity.managed_identity_environment(),
    }
    built = _stack(world, launcher, relays["multi"], azurite, overrides=overrides)
    yield built
    built.browser.close()
    built.crm_client.close()
    built.storage.close()


# --- 1. connect ---------------------------------------------------------------------------------------------


def test_connect_succeeds_status_is_connected_and_the_crm_is_told(stack: Stack) -> None:
    alice = stack.world.users["alice"]
    landing = stack.sign_in("usr-alice", "alice")

    assert landing.status == 303
    assert landing.location is not None
    assert landing.location.startswith(f"{CRM_ORIGIN}/settings/microsoft-365?")
    assert parse_qs(urlsplit(landing.location).query)["tab"] == ["connection"]  # the CRM's own query stays
    assert landing.outcome == {"status": "connected"}

    status = stack.crm_client.status("usr-alice")
    assert status.status == 200
    assert status.body["state"] == "connected"
    assert status.body["account"] == {"upn": alice.upn, "tenantId": stack.world.tenant_id}
    assert status.body["connectedSince"] is not None
    assert status.body["lastError"] is None
    assert [(s["resource"], s["state"]) for s in status.body["subscriptions"]] == [("calendar", "active")]
    spec = json.loads(repo_path("docs", "crm-contract.openapi.json").read_text(encoding="utf-8"))
    assert set(status.body) == set(spec["components"]["schemas"]["UserStatus"]["required"])
    text = json.dumps(status.body)
    assert "token" not in text.lower()
    assert "eyJ" not in text

    [event] = stack.world.crm.events("connected", "usr-alice")
    assert event["details"]["account"] == {"upn": alice.upn, "tenantId": stack.world.tenant_id}

    # The subscription exists at Graph and points at the service's webhook; only its clientState hash is kept.
    [record] = stack.storage.subscriptions.list_for_user("usr-alice")
    [subscription] = [s for s in stack.world.graph.subscriptions() if s["id"] == record.value.subscription_id]
    assert subscription["resource"] == f"/users/{alice.oid}/events"
    assert subscription["notificationUrl"] == f"{stack.relay.url}/api/graph/notifications"
    assert subscription["lifecycleNotificationUrl"] == f"{stack.relay.url}/api/graph/lifecycle"
    expected_hash = hashlib.sha256(subscription["clientState"].encode()).hexdigest()
    assert record.value.client_state_hash == expected_hash

    # The first sync is queued for the user, on the queue the reconcile trigger listens on, which runs it.
    wait_until(
        lambda: "sync: run for user usr-alice (reason connected" in stack.host.log_text(),
        what="the first sync run",
    )


# --- 2. failed sign-ins -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["consent_denied", "admin_approval_required", "wrong_tenant"])
def test_a_failed_sign_in_ends_at_the_return_url_and_stores_nothing(stack: Stack, reason: str) -> None:
    world, user_id = stack.world, f"usr-fail-{reason.replace('_', '-')}"
    url = stack.authorize_url(user_id, world.users["bob"].upn)
    if reason == "wrong_tenant":
        # An account of another tenant reaches the callback only when the sign-in went through another
        # authority (an edited URL, or an app registration open to other tenants): the service checks itself.
        world.identity.queue_sign_in(world.users["frank"].upn)
        url = url.replace(f"/{world.tenant_id}/oauth2/", "/organizations/oauth2/")
    else:
        world.identity.queue_sign_in(world.users["bob"].upn, SignInOutcome(reason))

    landing = stack.browser.sign_in(url)

    assert landing.status == 303
    assert landing.outcome == {"status": "error", "reason": reason}
    stack.assert_nothing_stored(user_id)


def test_multi_tenant_federated_deployment_refuses_personal_accounts(multi: Stack) -> None:
    world = multi.world
    world.identity.queue_sign_in(outcome=SignInOutcome.PERSONAL_ACCOUNT)
    landing = multi.browser.sign_in(multi.authorize_url("usr-personal"))
    assert landing.outcome == {"status": "error", "reason": "personal_account"}
    multi.assert_nothing_stored("usr-personal")

    # A work account connects through the same deployment: the code was redeemed with the managed identity's
    # federated assertion (this host has no client secret), and its Graph subscription exists.
    landing = multi.sign_in("usr-dave", "dave")
    assert landing.outcome == {"status": "connected"}
    assert multi.crm_client.status("usr-dave").body["state"] == "connected"
    assert len(multi.storage.subscriptions.list_for_user("usr-dave")) == 1
    redemptions = [
        r for r in world.identity.request_log() if r.grant_type == "authorization_code" and r.status == 200
    ]
    assert redemptions
    assert redemptions[-1].path == "/common/oauth2/v2.0/token"
    assert any(r.path == "/msi/token" and r.status == 200 for r in world.identity.request_log())


# --- 3. state attacks and return URLs -----------------------------------------------------------------------


def test_return_urls_outside_the_crm_origin_are_refused_at_connect(stack: Stack) -> None:
    for bad in (
        "https://crm.example.test.evil.example/settings",
        "https://evil.example/?next=https://crm.example.test/",
        "http://crm.example.test/settings",
        "https://user@crm.example.test/settings",
        "https://crm.example.test:8443/settings",
        "javascript:alert(1)",
        "/settings/relative",
        "https://crm.example.test\\@evil.example/",
    ):
        answer = stack.connect("usr-origin", return_url=bad)
        assert answer.status == 400, bad
        assert answer.error_code == "invalid_request"
        assert "returnUrl" in answer.body["error"]["details"]["fields"], bad
    states = _state_rows(stack, "usr-origin")
    assert states == []


def test_replayed_expired_forged_and_other_user_states_are_refused(stack: Stack) -> None:
    world, browser = stack.world, stack.browser

    # Replayed: a callback that already connected the user, delivered again, changes nothing.
    arrival = browser.visit_entra(stack.authorize_url("usr-erin", world.users["erin"].upn))
    assert browser.deliver(arrival).outcome == {"status": "connected"}
    tokens_before = stack.storage.tokens.get("usr-erin")
    replay = browser.deliver(arrival)
    assert replay.outcome == {"status": "error", "reason": "state_invalid"}
    assert stack.storage.tokens.get("usr-erin") == tokens_before
    assert len(world.crm.events("connected", "usr-erin")) == 1

    # Expired: the state row's time ran out before the browser came back.
    arrival = browser.visit_entra(stack.authorize_url("usr-expired", world.users["kim"].upn))
    _expire_states(stack, "usr-expired")
    assert browser.deliver(arrival).outcome == {"status": "error", "reason": "state_invalid"}
    stack.assert_nothing_stored("usr-expired")

    # Forged: a state the service never issued gets a plain error page, and no redirect anywhere.
    arrival = browser.visit_entra(stack.authorize_url("usr-forged", world.users["liam"].upn))
    for forged in (secrets.token_urlsafe(96), arrival.fields["state"][:-4] + "AAAA", ""):
        landing = browser.deliver(arrival, {**arrival.fields, "state": forged})
        assert (landing.status, landing.location) == (400, None)
        assert "not valid" in landing.text
        assert "Traceback" not in landing.text
    stack.assert_nothing_stored("usr-forged")

    # Another user's state: A's sign-in answer carrying B's state is refused (B's PKCE verifier does not fit
    # A's code); nothing is stored for either, and the browser lands on B's page, not A's.
    url_a = stack.authorize_url("usr-a", world.users["mia"].upn, return_url=f"{CRM_ORIGIN}/a")
    url_b = stack.authorize_url("usr-b", world.users["mia"].upn, return_url=f"{CRM_ORIGIN}/b")
    arrival_a = browser.visit_entra(url_a)
    state_b = parse_qs(urlsplit(url_b).query)["state"][0]
    landing = browser.deliver(arrival_a, {**arrival_a.fields, "state": state_b})
    assert landing.location is not None
    assert landing.location.startswith(f"{CRM_ORIGIN}/b?")
    assert landing.outcome == {"status": "error", "reason": "state_invalid"}
    stack.assert_nothing_stored("usr-a")
    stack.assert_nothing_stored("usr-b")


def _state_table(stack: Stack) -> TableClient:
    return TableClient.from_connection_string(stack.connection_string, f"{stack.prefix}oauthstate")


def _state_rows(stack: Stack, user_id: str) -> list[dict[str, Any]]:
    with _state_table(stack) as table:
        return list(table.query_entities("CrmUserId eq @user", parameters={"user": user_id}))


def _expire_states(stack: Stack, user_id: str) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    with _state_table(stack) as table:
        for row in table.query_entities("CrmUserId eq @user", parameters={"user": user_id}):
            patch = {"PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"], "ExpiresAt": past}
            table.update_entity(patch, mode=UpdateMode.MERGE)


# --- 4. tokens at rest --------------------------------------------------------------------------------------


def test_the_token_entity_is_encrypted_and_key_rotation_keeps_users_working(
    stack: Stack, launcher: HostLauncher
) -> None:
    assert stack.sign_in("usr-gina", "gina").outcome == {"status": "connected"}

    with TableClient.from_connection_string(stack.connection_string, f"{stack.prefix}tokens") as table:
        entity = table.get_entity("usr-gina", "msal")
    raw = repr(dict(entity)).encode() + b"".join(v for v in entity.values() if isinstance(v, bytes))
    for readable in (b"refresh_token", b"access_token", b"eyJ", b"RefreshToken", b"secret"):
        assert readable not in raw
    cache = stack.cache_of("usr-gina")
    assert cache["RefreshToken"]
    assert cache["AccessToken"]
    stored = stack.storage.tokens.get("usr-gina")
    assert stored is not None
    with pytest.raises(TokenCacheUnreadableError):
        TokenCipher([EncryptionKey("k1", new_key("k1").key)]).decrypt(stored.value, user_id="usr-gina")
    with pytest.raises(TokenCacheUnreadableError):  # bound to its user: another user's row cannot use it
        TokenCipher([stack.key]).decrypt(stored.value, user_id="usr-alice")

    # Rotation: a deployment with a new first key (the old one still listed) keeps the user working, and the
    # user's cache moves to the new key on that use.
    new = new_key("k2")
    rotated = launcher.start(
        APP,
        stack.world.host_settings(
            stack.relay.url, stack.prefix, new, TOKEN_ENCRYPTION_KEY=key_setting(new, stack.key)
        ),
    )
    stack.extra_hosts.append(rotated)
    stack.world.secrets_seen.update({rotated.function_key, rotated.master_key})
    stack.world.keys.append(new)
    cipher = TokenCipher([new, stack.key])
    stack.fire_sync(rotated, "usr-gina")

    def moved() -> bool:
        current = stack.storage.tokens.get("usr-gina")
        return current is not None and cipher.key_id_of(current.value) == "k2"

    wait_until(moved, what="the cache to be re-encrypted with k2")
    assert stack.cache_of("usr-gina", new)["RefreshToken"]
    connection = stack.storage.connections.get("usr-gina")
    assert connection is not None
    assert connection.value.state is ConnectionState.CONNECTED


# --- 5. silent refresh and revocation -----------------------------------------------------------------------


def test_silent_refresh_then_a_revoked_grant_requires_reconnect(stack: Stack) -> None:
    world = stack.world
    world.identity.access_token_lifetime = 120  # under MSAL's 5-minute margin: every use refreshes
    try:
        assert stack.sign_in("usr-hank", "hank").outcome == {"status": "connected"}
        before = stack.storage.tokens.get("usr-hank")
        assert before is not None
        refreshes = _refresh_count(world)

        stack.fire_sync(stack.host, "usr-hank")
        wait_until(
            lambda: (
                (current := stack.storage.tokens.get("usr-hank")) is not None and current.etag != before.etag
            ),
            what="the refreshed cache to be saved",
        )
        assert _refresh_count(world) > refreshes
        connection = stack.storage.connections.get("usr-hank")
        assert connection is not None
        assert connection.value.state is ConnectionState.CONNECTED

        world.identity.revoke_sign_in_sessions(world.users["hank"].oid)
        stack.fire_sync(stack.host, "usr-hank")
        wait_until(lambda: world.crm.events("reconnect_required", "usr-hank"), what="the reconnect event")
    finally:
        world.identity.access_token_lifetime = 3600

    [event] = world.crm.events("reconnect_required", "usr-hank")
    assert event["details"]["reason"] == "token_revoked"
    status = stack.crm_client.status("usr-hank").body
    assert status["state"] == "reconnect_required"
    assert status["lastError"]["reason"] == "token_revoked"

    # Telling once is enough: another run finds the user waiting to reconnect and leaves it at that.
    stack.fire_sync(stack.host, "usr-hank")
    wait_until(lambda: "user usr-hank is not connected" in stack.host.log_text(), what="the third run")
    assert stack.crm_client.status("usr-hank").body["state"] == "reconnect_required"
    assert len(world.crm.events("reconnect_required", "usr-hank")) == 1


def _refresh_count(world: World) -> int:
    return sum(1 for r in world.identity.request_log() if r.grant_type == "refresh_token" and r.status == 200)


# --- 6. disconnect ------------------------------------------------------------------------------------------


def test_disconnect_removes_subscriptions_and_tokens_and_is_idempotent(stack: Stack) -> None:
    world = stack.world
    assert stack.sign_in("usr-ivan", "ivan").outcome == {"status": "connected"}
    [record] = stack.storage.subscriptions.list_for_user("usr-ivan")
    subscription_id = record.value.subscription_id
    assert subscription_id in {s["id"] for s in world.graph.subscriptions()}

    first = stack.crm_client.disconnect("usr-ivan")
    assert first.status == 204
    assert subscription_id not in {s["id"] for s in world.graph.subscriptions()}
    assert stack.storage.tokens.get("usr-ivan") is None
    assert stack.storage.subscriptions.list_for_user("usr-ivan") == []
    status = stack.crm_client.status("usr-ivan").body
    assert (status["state"], status["account"], status["subscriptions"]) == ("disconnected", None, [])

    again = stack.crm_client.disconnect("usr-ivan", purge=True)
    assert again.status == 204
    assert stack.storage.connections.get("usr-ivan") is None
    assert stack.crm_client.disconnect("usr-ivan").status == 204
    [event] = world.crm.events("disconnected", "usr-ivan")  # told once, when the connection ended
    assert event["details"] == {"reason": "crm_request", "purged": False}
    assert stack.crm_client.status("usr-never-seen").body["state"] == "disconnected"


# --- admin consent ------------------------------------------------------------------------------------------


def test_admin_consent_lets_users_of_a_locked_tenant_connect_without_a_prompt(stack: Stack) -> None:
    world = stack.world
    world.identity.set_require_admin_consent(world.tenant_id, True)
    try:
        refused = stack.sign_in("usr-judy", "judy")
        assert refused.outcome == {"status": "error", "reason": "admin_approval_required"}

        start = stack.browser.open(
            f"{stack.relay.url}/api/admin/consent?{urlencode({'returnUrl': f'{CRM_ORIGIN}/admin'})}"
        )
        assert start.status_code == 303
        assert start.headers["Location"].startswith(
            f"{world.identity.base_url}/{world.tenant_id}/v2.0/adminconsent?"
        )
        landing = stack.browser.deliver(stack.browser.visit_entra(start.headers["Location"]))
        assert landing.location is not None
        assert landing.location.startswith(f"{CRM_ORIGIN}/admin?")
        assert landing.outcome == {"status": "consented"}
        recorded = stack.storage.admin_consents.get(world.tenant_id)
        assert recorded is not None
        assert recorded.value.scopes

        assert stack.sign_in("usr-judy", "judy").outcome == {"status": "connected"}

        # Without a return URL the trip ends on the service's own page; a refusal says why.
        page = stack.browser.deliver(
            stack.browser.visit_entra(
                stack.browser.open(f"{stack.relay.url}/api/admin/consent").headers["Location"]
            )
        )
        assert (page.status, page.location) == (200, None)
        assert "Consent granted" in page.text
        world.identity.queue_sign_in(world.users["admin"].upn, SignInOutcome.CONSENT_DENIED)
        denied = stack.browser.deliver(
            stack.browser.visit_entra(
                stack.browser.open(f"{stack.relay.url}/api/admin/consent").headers["Location"]
            )
        )
        assert (denied.status, denied.location) == (400, None)
        assert "consent_denied" in denied.text
        outside = stack.browser.open(f"{stack.relay.url}/api/admin/consent?returnUrl=https://evil.example/")
        assert outside.status_code == 400
    finally:
        world.identity.set_require_admin_consent(world.tenant_id, False)


def test_graph_validation_handshake_and_signature_checks(stack: Stack) -> None:
    token = "Validation: Testing client application reachability for subscription Request-Id: 42"
    with loopback_session() as session:
        for route in ("notifications", "lifecycle"):
            answer = session.post(
                f"{stack.relay.url}/api/graph/{route}?{urlencode({'validationToken': token})}", timeout=10
            )
            assert (answer.status_code, answer.text) == (200, token)
            assert answer.headers["Content-Type"].startswith("text/plain")

        # The CRM routes need the function key and a signature; a resent request is a replay.
        unsigned = session.get(
            f"{stack.relay.url}/api/users/usr-alice/status",
            headers={"x-functions-key": stack.host.function_key},
        )
        assert (unsigned.status_code, unsigned.json()["error"]["code"]) == (401, "missing_signature")
        signed = stack.crm_client.status("usr-alice")
        assert signed.status == 200


# --- 7. logs ------------------------------------------------------------------------------------------------


def test_no_log_line_holds_a_token_code_or_secret(stack: Stack, multi: Stack, logs: LogCollector) -> None:
    secrets_seen = set(stack.world.secrets_seen)
    for deployment in (stack, multi):
        deployment.storage.ensure_tables()  # a deployment that served nothing has not created them yet
        for row in TableClient.from_connection_string(
            deployment.connection_string, f"{deployment.prefix}tokens"
        ).list_entities(select=["PartitionKey"]):
            cache = deployment.cache_of(row["PartitionKey"])
            for section in ("AccessToken", "RefreshToken", "IdToken"):
                secrets_seen.update(item["secret"] for item in cache.get(section, {}).values())
    assert any(len(value) > 20 for value in secrets_seen)
    hosts = [stack.host, multi.host, *stack.extra_hosts]
    texts = {f"host {host.work_dir.name}": host.log_text() for host in hosts}
    texts["test process"] = "\n".join(logs.lines)
    assert all(texts.values())
    for where, text in texts.items():
        leaked = [value[:6] + "…" for value in secrets_seen if value and value in text]
        assert leaked == [], f"{where} logged a secret"
        assert "eyJ" not in text, f"{where} logged something JWT-shaped"
        for word in ("refresh_token", "access_token", "client_secret", "code_verifier", "Traceback"):
            assert word not in text, f"{where} logged {word!r}"
