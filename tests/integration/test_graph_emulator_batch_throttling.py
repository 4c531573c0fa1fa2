"""Graph emulator: JSON $batch (dependsOn, 424, inner 429s), throttling and faults on demand, counters."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devkit.graph_emulator import EmulatorSettings, GraphEmulator
from devkit.graph_emulator.testkit import GraphClient, TokenMinter

ALICE = "ba7c0000-0000-4000-8000-00000000a11c"
WINDOW = "startDateTime=2026-06-01T00:00:00Z&endDateTime=2026-06-30T00:00:00Z"


def event(subject: str) -> dict[str, Any]:
    return {
        "subject": subject,
        "start": {"dateTime": "2026-06-02T09:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-06-02T10:00:00", "timeZone": "UTC"},
    }


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture
def emulator(minter: TokenMinter) -> Iterator[GraphEmulator]:
    with GraphEmulator(jwks=minter.jwks(), settings=EmulatorSettings()) as em:
        em.add_mailbox(ALICE, upn="alice@contoso.onmicrosoft.com")
        yield em


@pytest.fixture
def alice(emulator: GraphEmulator, minter: TokenMinter) -> Iterator[GraphClient]:
    with GraphClient(emulator.base_url, minter.delegated(ALICE)) as client:
        yield client


def by_id(response: Any) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text
    return {r["id"]: r for r in response.json()["responses"]}


def test_batch_runs_inner_requests_and_answers_each_by_id(alice: GraphClient) -> None:
    body = {
        "requests": [
            {
                "id": "1",
                "method": "POST",
                "url": "/me/events",
                "body": event("batched"),
                "headers": {"Content-Type": "application/json"},
            },
            {"id": "2", "method": "GET", "url": f"/me/calendarView?{WINDOW}", "dependsOn": ["1"]},
            {"id": "3", "method": "GET", "url": "me"},
            {"id": "4", "method": "POST", "url": "/me/events", "body": event("no content type")},
        ]
    }
    answers = by_id(alice.post("/$batch", json=body))
    assert answers["1"]["status"] == 201
    assert answers["1"]["body"]["subject"] == "batched"
    assert [e["subject"] for e in answers["2"]["body"]["value"]] == ["batched"]
    assert answers["3"]["body"]["id"] == ALICE
    assert answers["4"]["status"] == 400
    assert answers["2"]["headers"]["Content-Type"].startswith("application/json")


def test_a_failed_dependency_answers_424_down_the_chain(alice: GraphClient) -> None:
    body = {
        "requests": [
            {"id": "1", "method": "GET", "url": "/me/events/AAMkAGAAAAAAAAAAAAAAAAAAAAAAA="},
            {"id": "2", "method": "GET", "url": "/me", "dependsOn": ["1"]},
            {"id": "4", "method": "GET", "url": "/me", "dependsOn": ["2"]},
            {"id": "3", "method": "GET", "url": "/me"},
        ]
    }
    answers = by_id(alice.post("/$batch", json=body))
    assert answers["1"]["status"] == 404
    assert (answers["2"]["status"], answers["4"]["status"], answers["3"]["status"]) == (424, 424, 200)
    assert answers["2"]["body"]["error"]["code"] == "FailedDependency"


def test_batch_limits(alice: GraphClient) -> None:
    too_many = {"requests": [{"id": str(i), "method": "GET", "url": "/me"} for i in range(21)]}
    assert alice.post("/$batch", json=too_many).status_code == 400
    duplicate = {
        "requests": [{"id": "1", "method": "GET", "url": "/me"}, {"id": "1", "method": "GET", "url": "/me"}]
    }
    assert alice.post("/$batch", json=duplicate).status_code == 400
    unknown = {"requests": [{"id": "1", "method": "GET", "url": "/me", "dependsOn": ["9"]}]}
    assert alice.post("/$batch", json=unknown).status_code == 400


def test_inner_requests_can_be_throttled_on_their_own(emulator: GraphEmulator, alice: GraphClient) -> None:
    emulator.inject_fault(429, count=2, retry_after=3, in_batch=True, path_contains="/events")
    body = {"requests": [{"id": str(i), "method": "GET", "url": "/me/events"} for i in range(1, 5)]}
    answers = by_id(alice.post("/$batch", json=body))
    throttled = [a for a in answers.values() if a["status"] == 429]
    assert len(throttled) == 2
    assert throttled[0]["headers"]["Retry-After"] == "3"
    assert throttled[0]["body"]["error"]["code"] == "TooManyRequests"
    assert sorted(a["status"] for a in answers.values()) == [200, 200, 429, 429]


def test_injected_faults_and_latency(emulator: GraphEmulator, alice: GraphClient) -> None:
    emulator.inject_fault(429, count=1)
    throttled = alice.get("/me/events")
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "2.128"
    error = throttled.json()["error"]
    assert (error["code"], error["innerError"]["status"], error["innerError"]["code"]) == (
        "TooManyRequests",
        "429",
        "429",
    )
    assert alice.get("/me/events").status_code == 200  # count=1: only the next request

    emulator.inject_fault(503, count=1, retry_after=None, method="POST")
    assert alice.get("/me/events").status_code == 200
    unavailable = alice.post("/me/events", json=event("x"))
    assert unavailable.status_code == 503
    assert "Retry-After" not in unavailable.headers

    emulator.inject_fault(None, count=1, latency=0.3)
    started = time.monotonic()
    assert alice.get("/me/events").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_mailbox_concurrency_limit(emulator: GraphEmulator, minter: TokenMinter) -> None:
    emulator.set_mailbox_concurrency(4)
    emulator.inject_fault(None, count=None, latency=0.4)
    token = minter.delegated(ALICE)

    def call(_: int) -> Any:
        with GraphClient(emulator.base_url, token) as client:
            return client.get("/me/events")

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(call, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 4
    assert statuses.count(429) >= 1
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["message"] == "Application is over its MailboxConcurrency limit."
    assert "Retry-After" in refused.headers


def test_mailbox_request_rate_limit_follows_the_emulator_clock(
    emulator: GraphEmulator, alice: GraphClient
) -> None:
    emulator.update_settings(mailbox_rate_limit=(5, 600.0))
    assert [alice.get("/me").status_code for _ in range(6)] == [200] * 5 + [429]
    emulator.advance_clock(601)
    assert alice.get("/me").status_code == 200


def test_request_counters_and_log(emulator: GraphEmulator, alice: GraphClient) -> None:
    alice.post("/me/events", json=event("counted"))
    alice.get("/me/calendarView?" + WINDOW)
    alice.post("/$batch", json={"requests": [{"id": "1", "method": "GET", "url": "/me/events"}]})
    counters = emulator.request_counters()[ALICE]
    assert counters["requests"] == 2
    assert counters["batchInner"] == 1
    assert counters["byMethod"] == {"POST": 1, "GET": 2}
    log = emulator.request_log(ALICE)
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("POST", "/me/events", 201),
        ("GET", "/me/calendarView", 200),
        ("GET", "/me/events", 200),
    ]
    assert all(e["latencyMs"] >= 0 and "startDateTime" not in e["path"] for e in log)
    emulator.reset_request_log()
    assert emulator.request_counters() == {}
