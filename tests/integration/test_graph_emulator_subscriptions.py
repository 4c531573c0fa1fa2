"""Graph emulator: subscriptions (validation handshake, lifetimes, renew, reauthorize, delete), change
notifications (clientState, batching, retries) and lifecycle notifications."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from devkit.graph_emulator import EmulatorSettings, GraphEmulator
from devkit.graph_emulator.testkit import GraphClient, TokenMinter, WebhookBehaviour, WebhookReceiver

ALICE = "c0ffee00-0000-4000-8000-0000000a11ce"


def settings() -> EmulatorSettings:
    return EmulatorSettings(
        handshake_timeout=1.0,
        notification_timeout=0.5,
        notification_retry_delays=(0.1, 0.2),
        notification_coalesce_seconds=0.05,
    )


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture
def emulator(minter: TokenMinter) -> Iterator[GraphEmulator]:
    with GraphEmulator(jwks=minter.jwks(), settings=settings()) as em:
        em.add_mailbox(ALICE, upn="alice@contoso.onmicrosoft.com")
        yield em


@pytest.fixture
def alice(emulator: GraphEmulator, minter: TokenMinter) -> Iterator[GraphClient]:
    with GraphClient(emulator.base_url, minter.delegated(ALICE)) as client:
        yield client


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def expiry(emulator: GraphEmulator, minutes: float = 60) -> str:
    return (emulator.now() + dt.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def subscription(emulator: GraphEmulator, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "changeType": "created,updated,deleted",
        "notificationUrl": url,
        "resource": "/me/events",
        "expirationDateTime": expiry(emulator),
        "clientState": "s3cret-state",
        **extra,
    }


def event(subject: str = "Planning") -> dict[str, Any]:
    return {
        "subject": subject,
        "start": {"dateTime": "2026-06-01T09:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-06-01T10:00:00", "timeZone": "UTC"},
    }


def test_handshake_success_creates_the_subscription(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver
) -> None:
    url = webhook.url("/api/graph/notifications?code=fn-key")
    response = alice.post("/subscriptions", json=subscription(emulator, url))
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["clientState"] == "s3cret-state"
    assert created["changeType"] == "created,updated,deleted"
    assert created["expirationDateTime"].endswith("Z")
    handshake = webhook.handshakes[-1]
    assert handshake.headers["content-type"] == "text/plain; charset=utf-8"
    assert handshake.query["code"] == ["fn-key"]  # the notificationUrl's own query string is kept
    assert " " in handshake.query["validationToken"][0]  # the token must be URL-decoded to be echoed right
    listed = alice.get("/subscriptions").json()["value"]
    assert [s["id"] for s in listed] == [created["id"]]


@pytest.mark.parametrize(
    "behaviour",
    [
        WebhookBehaviour(mode="encoded"),
        WebhookBehaviour(mode="wrong-content-type"),
        WebhookBehaviour(mode="error"),
        WebhookBehaviour(handshake_delay=1.5),  # the test's handshake_timeout is 1 s (Graph's: 10 s)
    ],
    ids=["encoded-token", "wrong-content-type", "http-500", "too-slow"],
)
def test_a_wrong_handshake_answer_fails_with_400_and_no_subscription(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver, behaviour: WebhookBehaviour
) -> None:
    response = alice.post("/subscriptions", json=subscription(emulator, webhook.url("/bad", behaviour)))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "ValidationError"
    assert alice.get("/subscriptions").json()["value"] == []


def test_the_lifecycle_url_is_validated_too(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver
) -> None:
    body = subscription(
        emulator,
        webhook.url("/ok"),
        lifecycleNotificationUrl=webhook.url("/life", WebhookBehaviour(mode="encoded")),
    )
    assert alice.post("/subscriptions", json=body).status_code == 400
    assert {h.path for h in webhook.handshakes} == {"/ok", "/life"}


def test_notifications_carry_client_state_and_cover_api_and_outlook_changes(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver
) -> None:
    sub = alice.post("/subscriptions", json=subscription(emulator, webhook.url("/n"))).json()
    created = alice.post("/me/events", json=event()).json()
    emulator.user_update_event(ALICE, created["id"], {"subject": "Planning (moved)"})
    alice.delete(f"/me/events/{created['id']}")
    items = webhook.wait_for(3, "/n")
    assert [i["changeType"] for i in items] == ["created", "updated", "deleted"]
    for item in items:
        assert item["clientState"] == "s3cret-state"
        assert item["subscriptionId"] == sub["id"]
        assert item["tenantId"]
        assert item["resource"] == f"Users/{ALICE}/Events/{created['id']}"
        assert item["resourceData"]["id"] == created["id"]
        assert item["resourceData"]["@odata.type"] == "#Microsoft.Graph.Event"
    assert items[0]["resourceData"]["@odata.etag"] == created["@odata.etag"]


def test_one_post_batches_items_of_several_subscriptions(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver
) -> None:
    emulator.update_settings(notification_coalesce_seconds=0.3)  # room for both items, even on a busy machine
    url = webhook.url("/shared")
    first = alice.post("/subscriptions", json=subscription(emulator, url, clientState="one")).json()
    second = alice.post(
        "/subscriptions", json=subscription(emulator, url, changeType="created", clientState="two")
    ).json()
    alice.post("/me/events", json=event())
    items = webhook.wait_for(2, "/shared")
    assert len(webhook.received) == 1
    assert {(i["subscriptionId"], i["clientState"]) for i in items} == {
        (first["id"], "one"),
        (second["id"], "two"),
    }


def test_a_failing_webhook_is_retried_until_it_accepts(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver
) -> None:
    url = webhook.url("/flaky", WebhookBehaviour(fail_first=2))
    sub = alice.post("/subscriptions", json=subscription(emulator, url)).json()
    alice.post("/me/events", json=event())
    items = webhook.wait_for(1, "/flaky")
    assert [i["changeType"] for i in items] == ["created"]
    attempts = emulator.wait_for_deliveries(lambda d: len(d) >= 3, subscription_id=sub["id"])
    assert [(d["attempt"], d["outcome"]) for d in attempts] == [
        (1, "failed"),
        (2, "failed"),
        (3, "delivered"),
    ]


def test_a_slow_webhook_times_out_is_retried_then_dropped_with_a_missed_lifecycle_event(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver
) -> None:
    slow = webhook.url("/slow", WebhookBehaviour(delay=0.8))  # the test's notification timeout is 0.5 s
    life = webhook.url("/life")
    sub = alice.post(
        "/subscriptions", json=subscription(emulator, slow, lifecycleNotificationUrl=life)
    ).json()
    alice.post("/me/events", json=event())
    deliveries = emulator.wait_for_deliveries(
        lambda d: any(x["outcome"] == "dropped" for x in d), subscription_id=sub["id"], timeout=15
    )
    outcomes = [d["outcome"] for d in deliveries if not d["lifecycle"]]
    assert outcomes == ["timeout", "timeout", "timeout", "dropped"]
    missed = webhook.wait_for(1, "/life")
    assert missed[0]["lifecycleEvent"] == "missed"
    assert missed[0]["subscriptionId"] == sub["id"]


def test_lifetime_limits_renewal_reauthorize_and_delete(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver
) -> None:
    too_long = alice.post(
        "/subscriptions",
        json=subscription(emulator, webhook.url(), expirationDateTime=expiry(emulator, 4231)),
    )
    assert too_long.status_code == 400
    assert "4230 minutes" in too_long.json()["error"]["message"]
    sub = alice.post(
        "/subscriptions",
        json=subscription(emulator, webhook.url(), expirationDateTime=expiry(emulator, 4229)),
    ).json()
    renewed = alice.patch(f"/subscriptions/{sub['id']}", json={"expirationDateTime": expiry(emulator, 4000)})
    assert renewed.status_code == 200
    assert renewed.json()["expirationDateTime"] != sub["expirationDateTime"]
    assert (
        alice.patch(
            f"/subscriptions/{sub['id']}", json={"expirationDateTime": expiry(emulator, 5000)}
        ).status_code
        == 400
    )
    assert alice.post(f"/subscriptions/{sub['id']}/reauthorize").status_code == 204
    assert alice.delete(f"/subscriptions/{sub['id']}").status_code == 204
    assert alice.get(f"/subscriptions/{sub['id']}").status_code == 404

    emulator.update_settings(max_lifetime_minutes={"events": 60})
    assert (
        alice.post(
            "/subscriptions",
            json=subscription(emulator, webhook.url(), expirationDateTime=expiry(emulator, 61)),
        ).status_code
        == 400
    )


def test_subscriptions_expire_with_the_emulator_clock(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver
) -> None:
    sub = alice.post("/subscriptions", json=subscription(emulator, webhook.url("/exp"))).json()
    emulator.advance_clock(61 * 60)
    assert alice.get(f"/subscriptions/{sub['id']}").status_code == 404
    alice.post("/me/events", json=event())
    emulator.app.subscriptions.notifier.wait_idle()
    assert webhook.notifications("/exp") == []


def test_lifecycle_notifications_on_demand(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver
) -> None:
    body = subscription(emulator, webhook.url("/n"), lifecycleNotificationUrl=webhook.url("/life"))
    sub = alice.post("/subscriptions", json=body).json()
    emulator.update_settings(reauthorization_grace_seconds=60)
    assert emulator.send_lifecycle(sub["id"], "reauthorizationRequired")
    emulator.advance_clock(120)  # past the reauthorization grace: changes are no longer delivered
    alice.patch(
        f"/subscriptions/{sub['id']}", json={"expirationDateTime": expiry(emulator, 60)}
    )  # renews + reauthorizes
    alice.post("/me/events", json=event("after renewal"))
    assert webhook.wait_for(1, "/n")[0]["changeType"] == "created"
    emulator.remove_subscription(sub["id"], notify=True)
    lifecycle = webhook.wait_for(2, "/life")
    assert [i["lifecycleEvent"] for i in lifecycle] == ["reauthorizationRequired", "subscriptionRemoved"]
    assert all(i["clientState"] == "s3cret-state" and "resource" not in i for i in lifecycle)
    assert alice.get(f"/subscriptions/{sub['id']}").status_code == 404


def test_without_reauthorization_changes_are_lost(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver
) -> None:
    sub = alice.post("/subscriptions", json=subscription(emulator, webhook.url("/n"))).json()
    emulator.update_settings(reauthorization_grace_seconds=60)
    emulator.send_lifecycle(sub["id"], "reauthorizationRequired")  # no lifecycle URL: nothing is posted
    emulator.advance_clock(120)
    alice.post("/me/events", json=event("lost"))
    emulator.app.subscriptions.notifier.wait_idle()
    assert webhook.notifications("/n") == []
    assert alice.post(f"/subscriptions/{sub['id']}/reauthorize").status_code == 204
    alice.post("/me/events", json=event("seen"))
    assert len(webhook.wait_for(1, "/n")) == 1


def test_immutable_id_subscriptions_notify_immutable_ids(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver
) -> None:
    prefer = {"Prefer": 'IdType="ImmutableId"'}
    alice.post("/subscriptions", json=subscription(emulator, webhook.url("/imm")), headers=prefer)
    created = alice.post("/me/events", json=event(), headers=prefer).json()
    assert webhook.wait_for(1, "/imm")[0]["resourceData"]["id"] == created["id"]


def test_subscription_requests_graph_refuses(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver
) -> None:
    for broken in (
        {"changeType": "created"},
        subscription(emulator, webhook.url(), changeType="moved"),
        subscription(emulator, webhook.url(), resource="/me/planner/tasks"),
        subscription(emulator, webhook.url(), clientState="x" * 129),
        subscription(emulator, webhook.url(), expirationDateTime="2001-01-01T00:00:00Z"),
    ):
        assert alice.post("/subscriptions", json=broken).status_code == 400, broken


def test_slow_endpoints_are_delayed_then_dropped(
    emulator: GraphEmulator, alice: GraphClient, webhook: WebhookReceiver
) -> None:
    # Scaled-down figures: 3 answers make a sample, >50 ms is slow (Graph: 100 answers, 2.9 s).
    emulator.update_settings(
        slow_min_sample=3, slow_response_seconds=0.05, slow_drop_ratio=1.01, slow_window_seconds=3600
    )
    alice.post(
        "/subscriptions", json=subscription(emulator, webhook.url("/slowish", WebhookBehaviour(delay=0.1)))
    )
    for index in range(3):  # three separate POSTs, each answered slowly
        alice.post("/me/events", json=event(f"slow {index}"))
        webhook.wait_for(index + 1, "/slowish")
    alice.post("/me/events", json=event("delayed"))
    emulator.app.subscriptions.notifier.wait_idle()
    assert len(webhook.notifications("/slowish")) == 3  # held back by the 10-minute penalty
    emulator.advance_clock(601)
    assert len(webhook.wait_for(4, "/slowish")) == 4

    emulator.update_settings(slow_drop_ratio=0.15)
    alice.post("/me/events", json=event("dropped"))
    dropped = emulator.wait_for_deliveries(lambda d: bool(d) and d[-1]["outcome"] == "dropped")
    assert dropped[-1]["payload"]["reason"] == "dropped: endpoint too slow"
    assert len(webhook.notifications("/slowish")) == 4
