"""Graph emulator: the control API over HTTP (/_devkit/...) and the command line entry point."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.graph_emulator import GraphEmulator
from devkit.graph_emulator.testkit import GraphClient, TokenMinter, WebhookReceiver

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "graph-reference" / "fixtures"
REPO = Path(__file__).resolve().parents[2]
USER = "c0a7c0a7-0000-4000-8000-000000000001"
UPN = "erin@contoso.onmicrosoft.com"
WINDOW = {"startDateTime": "2017-04-01T00:00:00Z", "endDateTime": "2017-05-01T00:00:00Z"}


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture
def emulator(minter: TokenMinter) -> Iterator[GraphEmulator]:
    with GraphEmulator(jwks=minter.jwks()) as em:
        yield em


@pytest.fixture
def control(emulator: GraphEmulator) -> Iterator[GraphClient]:
    with GraphClient(emulator.control_url, None) as client:
        yield client


def ok(response: requests.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def test_control_api_end_to_end(emulator: GraphEmulator, control: GraphClient, minter: TokenMinter) -> None:
    profile = ok(
        control.post("/mailboxes", json={"id": USER, "userPrincipalName": UPN, "displayName": "Erin"}), 201
    )
    assert profile["id"] == USER
    assert [m["userPrincipalName"] for m in ok(control.get("/mailboxes"))["value"]] == [UPN]

    with GraphClient(emulator.base_url, minter.delegated(USER, UPN)) as app:
        first = ok(app.get("/me/calendarView/delta", params=WINDOW))
        assert first["value"] == []

        # The user, in Outlook, creates the documented payload as given; the app sees it in delta.
        raw = json.loads((FIXTURES / "event_with_online_meeting_create_request.json").read_text())
        prefer = {"Prefer": 'outlook.timezone="Pacific Standard Time"'}
        created = ok(control.post(f"/mailboxes/{UPN}/outlook/events", json=raw, headers=prefer), 201)
        assert created["start"] == {
            "dateTime": "2017-04-15T12:00:00.0000000",
            "timeZone": "Pacific Standard Time",
        }
        assert created["onlineMeeting"]["joinUrl"].startswith("https://teams.microsoft.com/")
        ok(control.patch(f"/mailboxes/{USER}/outlook/events/{created['id']}", json={"subject": "Brunch"}))
        delta = ok(app.get(first["@odata.deltaLink"]))
        assert [(e["id"], e["subject"]) for e in delta["value"]] == [(created["id"], "Brunch")]
        assert ok(app.get("/me/events"))["value"][0]["subject"] == "Brunch"
        bad = control.post(f"/mailboxes/{UPN}/outlook/events", json={"subject": "no times"})
        assert bad.status_code == 400

        ok(control.delete(f"/mailboxes/{UPN}/outlook/events/{created['id']}"), 204)
        assert ok(app.get(delta["@odata.deltaLink"]))["value"][0]["@removed"] == {"reason": "deleted"}

        # Delta tokens expire on demand.
        ok(control.post("/delta/expire", json={"user": UPN, "resource": "events"}), 204)
        assert app.get(delta["@odata.deltaLink"]).status_code == 410

        # Faults, settings, clock.
        assert ok(control.post("/faults", json={"status": 503, "count": 1, "retryAfter": 5}), 201)["id"]
        assert [f["status"] for f in ok(control.get("/faults"))["value"]] == [503]
        failed = app.get("/me")
        assert (failed.status_code, failed.headers["Retry-After"]) == (503, "5")
        ok(control.post("/faults", json={"status": 429, "count": None}), 201)
        ok(control.delete("/faults"), 204)
        assert app.get("/me").status_code == 200
        settings = ok(control.patch("/settings", json={"mailboxConcurrencyLimit": 4, "deltaReplay": 1}))
        assert (settings["mailbox_concurrency_limit"], settings["delta_replay"]) == (4, 1)
        before = emulator.now()
        clock = ok(control.post("/clock/advance", json={"seconds": 3600}))
        assert clock["offsetSeconds"] == 3600
        assert emulator.now() - before >= dt.timedelta(hours=1)

        # Counters and the request log (no query strings, no tokens).
        counters = ok(control.get("/counters"))["mailboxes"][USER]
        assert counters["requests"] >= 6
        assert counters["byStatus"]["503"] == 1
        log = ok(control.get("/requests", params={"user": UPN}))["value"]
        assert all("?" not in e["path"] and "token" not in json.dumps(e).lower() for e in log)
        ok(control.delete("/requests"), 204)
        assert ok(control.get("/requests"))["value"] == []


def test_control_api_subscriptions_lifecycle_and_deliveries(
    emulator: GraphEmulator, control: GraphClient, minter: TokenMinter
) -> None:
    ok(control.post("/mailboxes", json={"id": USER, "userPrincipalName": UPN}), 201)
    with WebhookReceiver() as webhook, GraphClient(emulator.base_url, minter.delegated(USER, UPN)) as app:
        body = {
            "changeType": "created",
            "notificationUrl": webhook.url("/n"),
            "lifecycleNotificationUrl": webhook.url("/life"),
            "resource": f"users/{USER}/events",
            "expirationDateTime": (emulator.now() + dt.timedelta(hours=2)).isoformat(),
            "clientState": "cs",
        }
        sub = ok(app.post("/subscriptions", json=body), 201)
        assert [s["id"] for s in ok(control.get("/subscriptions"))["value"]] == [sub["id"]]
        assert ok(control.post(f"/subscriptions/{sub['id']}/lifecycle", json={"lifecycleEvent": "missed"}))[
            "sent"
        ]
        assert webhook.wait_for(1, "/life")[0]["lifecycleEvent"] == "missed"
        deliveries = ok(control.get("/deliveries", params={"subscriptionId": sub["id"]}))["value"]
        assert deliveries
        assert deliveries[0]["lifecycle"] is True
        ok(control.delete(f"/subscriptions/{sub['id']}", params={"notify": "false"}), 204)
        assert ok(control.get("/subscriptions"))["value"] == []
        assert len(webhook.notifications("/life")) == 1  # removed without a lifecycle notification


def test_unknown_control_routes_and_users(control: GraphClient) -> None:
    assert control.get("/nothing-here").status_code == 404
    assert control.post("/mailboxes/nobody@x.io/outlook/events", json={}).status_code == 404
    assert ok(control.get("/health"))["status"] == "ok"


def test_command_line_runs_the_emulator_alone(minter: TokenMinter, tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": minter.jwks()}))
    command = [
        sys.executable,
        "-m",
        "devkit.graph_emulator",
        "--jwks-file",
        str(jwks),
        "--mailbox",
        f"{UPN}={USER}",
    ]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().strip().split("base_url=", 1)[1]
            control_url = process.stdout.readline().strip().split("control_url=", 1)[1]
            with GraphClient(base_url, minter.delegated(USER, UPN)) as app:
                assert ok(app.get("/me"))["userPrincipalName"] == UPN
            assert requests.get(control_url + "/health", timeout=5).json()["status"] == "ok"
        finally:
            process.terminate()
            assert process.wait(timeout=10) == 0
