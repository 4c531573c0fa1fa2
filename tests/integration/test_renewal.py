"""The renewal timer's run, for 200 users, against Azurite, the identity emulator (real MSAL sign-ins), the
Graph emulator and the CRM emulator, over real sockets.

The run is the one the timer makes (``Container.renewal.renew_due()``), built by the same wiring with one
difference: its clock is the Graph emulator's. So when the test advances the emulator's clock by two and a
half days, the service sees the same days pass, and the subscriptions Graph is about to expire are the ones
the service finds due. A ``WebhookReceiver`` stands in for the app's public endpoints (it answers Graph's
validation handshakes).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from devkit.crm_emulator import CrmEmulator
from devkit.graph_emulator import EmulatorSettings, GraphEmulator
from devkit.graph_emulator.testkit import WebhookReceiver
from devkit.identity_emulator import IdentityEmulator, User
from devkit.jwt import SigningKey
from devkit.tls import CertAuthority
from sync_core.adapters.identity import SignInSucceeded
from sync_core.config import Settings
from sync_core.domain.state import Connection, ConnectionState
from sync_core.wiring import Container

USERS = 200
HOUR = timedelta(hours=1)
LIFETIME = timedelta(minutes=4229)  # the 4,230-minute maximum less the service's one-minute margin
API_KEY, SIGNING_SECRET = "renewal-api-key", "renewal-signing-secret"


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "input" and values.get("name"):
            self.fields[str(values["name"])] = values.get("value") or ""


def _authorize(session: requests.Session, url: str) -> dict[str, str]:
    answer = session.get(url, allow_redirects=False, timeout=10)
    if answer.status_code == 302:
        return dict(parse_qsl(urlsplit(answer.headers["Location"]).query))
    form = _Form()
    form.feed(answer.text)
    return form.fields


@dataclass
class World:
    identity: IdentityEmulator
    graph: GraphEmulator
    crm: CrmEmulator
    webhook: WebhookReceiver
    public_base_url: str  # the webhook receiver, answering Graph's handshakes as the app would
    tenant_id: str
    client_id: str
    client_secret: str


@pytest.fixture(scope="module")
def world(test_ca: CertAuthority, identity_signing_key: SigningKey) -> Iterator[World]:
    with (
        IdentityEmulator(test_ca, signing_key=identity_signing_key) as identity,
        GraphEmulator(
            jwks=identity.jwks,
            time_source=identity.clock.now,
            settings=EmulatorSettings(handshake_timeout=5.0),
        ) as graph,
        CrmEmulator(API_KEY, SIGNING_SECRET, base_path="/crm/v1") as crm,
        WebhookReceiver() as webhook,
    ):
        public = webhook.url("/api/graph/notifications").removesuffix("/api/graph/notifications")
        tenant = identity.add_tenant(domain="contoso.example")
        secret = "renewal-" + secrets.token_hex(8)
        app = identity.register_app(
            tenant.tenant_id, redirect_uris=[f"{public}/api/auth/callback"], client_secret=secret
        )
        yield World(identity, graph, crm, webhook, public, tenant.tenant_id, app.client_id, secret)


@pytest.fixture
def container(
    world: World,
    storage_connection_string: str,
    unique_prefix: str,
    https_session: requests.Session,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Container]:
    # The service's own sessions read the CA bundle from the environment, as the deployed app's do.
    assert isinstance(https_session.verify, str)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", https_session.verify)
    settings = Settings.from_env(
        {
            "AzureWebJobsStorage": storage_connection_string,
            "TABLE_NAME_PREFIX": unique_prefix,
            "SYNC_QUEUE_NAME": f"{unique_prefix}sync",
            "GRAPH_BASE_URL": world.graph.base_url,
            "AUTHORITY_HOST": world.identity.base_url,
            "TENANT_ID": world.tenant_id,
            "CLIENT_ID": world.client_id,
            "CLIENT_SECRET": world.client_secret,
            "TOKEN_ENCRYPTION_KEY": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
            "PUBLIC_BASE_URL": world.public_base_url,
            "CRM_BASE_URL": world.crm.base_url,
            "CRM_API_KEY": API_KEY,
            "CRM_SIGNING_SECRET": SIGNING_SECRET,
            "RETRY_AFTER_CAP_SECONDS": "1",
        }
    )
    built = Container(settings, clock=world.graph.now)
    yield built
    built.close()


def connect(container: Container, world: World, session: requests.Session, user: User, user_id: str) -> None:
    """What the connect service does after a sign-in: tokens, connection, subscriptions (seeded directly)."""
    flow = container.identity.start_sign_in(state="renewal-test", login_hint=user.upn)
    result = container.identity.finish_sign_in(flow, _authorize(session, flow["auth_uri"]))
    assert isinstance(result, SignInSucceeded)
    container.user_tokens.save_new(user_id, result.serialized_cache)
    connection = Connection(
        user_id,
        ConnectionState.CONNECTED,
        tenant_id=world.tenant_id,
        account_oid=user.oid,
        upn=user.upn,
        home_account_id=result.home_account_id,
        connected_since=datetime.now(UTC),
    )
    container.ready_tables().connections.put(connection)


def subscription_id(container: Container, user_id: str) -> str:
    [record] = container.ready_tables().subscriptions.list_for_user(user_id)
    return record.value.subscription_id


def test_one_run_renews_200_users_before_expiry_recreates_revokes_and_carries_on(
    world: World, container: Container, https_session: requests.Session, unique_prefix: str
) -> None:
    identity, graph = world.identity, world.graph
    users = [
        identity.add_user(world.tenant_id, f"r{index:03d}-{unique_prefix}@contoso.example")
        for index in range(USERS)
    ]
    user_ids = [f"usr-{index:03d}" for index in range(USERS)]
    removed, revoked, failing = user_ids[10], user_ids[20], user_ids[30]
    others = [(user, user_id) for user, user_id in zip(users, user_ids, strict=True) if user_id != revoked]
    with ThreadPoolExecutor(4) as pool:  # connecting 200 users, as their sign-ins would, a few at a time
        list(pool.map(lambda pair: connect(container, world, https_session, *pair), others))
        list(pool.map(container.subscriptions.create_for_user, [user_id for _, user_id in others]))
    # The revoked user's access tokens live under MSAL's refresh margin: every use asks Entra ID.
    identity.access_token_lifetime = 120
    try:
        connect(container, world, https_session, users[20], revoked)
        container.subscriptions.create_for_user(revoked)
    finally:
        identity.access_token_lifetime = 3600
    first = {user_id: subscription_id(container, user_id) for user_id in user_ids}
    assert len({s["id"] for s in graph.subscriptions()} & set(first.values())) == USERS

    # Two and a half days later: every subscription expires at Graph within 11 hours (the next run is in six).
    graph.advance_clock((LIFETIME - 11 * HOUR).total_seconds())
    graph.remove_subscription(first[removed], notify=False)  # Graph dropped one without telling
    identity.revoke_sign_in_sessions(users[20].oid)  # an admin revoked one user's sessions
    graph.inject_fault(403, count=None, method="PATCH", path_contains=first[failing])  # one renewal fails

    report = container.renewal.renew_due()

    assert report.users == USERS
    assert (report.changes.renewed, report.changes.recreated, report.changes.created) == (USERS - 3, 1, 0)
    assert report.reconnect_required == (revoked,)
    assert report.failed == (failing,)
    # Twelve hours on, every original subscription would have expired; the renewed and recreated ones live.
    graph.advance_clock((12 * HOUR).total_seconds())
    live = {s["id"]: s for s in graph.subscriptions()}
    kept = [user_id for user_id in user_ids if user_id not in (revoked, failing)]
    for user_id in kept:
        current = subscription_id(container, user_id)
        assert current in live, user_id
        assert (current == first[user_id]) == (user_id != removed)
    assert first[failing] not in live
    assert first[revoked] not in live

    tables = container.ready_tables()
    revoked_connection = tables.connections.get(revoked)
    assert revoked_connection is not None
    assert revoked_connection.value.state is ConnectionState.RECONNECT_REQUIRED
    [event] = world.crm.events("reconnect_required", revoked)
    assert event["details"]["reason"] == "token_revoked"
    # One PATCH per renewed subscription, no more.
    assert sum(1 for r in graph.request_log() if r["method"] == "PATCH" and r["status"] == 200) == USERS - 3

    # The next run: nothing is due; the failed user's subscription has expired meanwhile and is recreated.
    again = container.renewal.renew_due()
    assert (again.changes.renewed, again.changes.recreated, again.failed) == (0, 1, ())
    assert subscription_id(container, failing) in {s["id"] for s in graph.subscriptions()}


def test_a_lifetime_graph_refuses_is_retried_shorter(
    world: World, container: Container, https_session: requests.Session, unique_prefix: str
) -> None:
    graph = world.graph
    user = world.identity.add_user(world.tenant_id, f"short-{unique_prefix}@contoso.example")
    connect(container, world, https_session, user, "usr-short")
    graph.update_settings(max_lifetime_minutes={"events": 1440})  # as for rich notifications
    try:
        graph.reset_request_log()
        container.subscriptions.create_for_user("usr-short")
        [record] = container.ready_tables().subscriptions.list_for_user("usr-short")
        assert graph.now() + 23 * HOUR < record.value.expires_at <= graph.now() + 24 * HOUR
        posts = [r["status"] for r in graph.request_log() if r["method"] == "POST"]
        assert posts == [400, 201]

        graph.advance_clock((20 * HOUR).total_seconds())
        report = container.renewal.renew_due()
        assert report.changes.renewed == 1
        patches = [r["status"] for r in graph.request_log() if r["method"] == "PATCH"]
        assert patches == [400, 200]
    finally:
        graph.update_settings(max_lifetime_minutes={"events": 4230})
