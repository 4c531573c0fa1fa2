"""Conformance: for every documented response in ../shared/graph-reference/fixtures that the emulator can
produce, make the emulator answer an equivalent request and check that every key path of the fixture exists in
the answer with the same JSON type. Documented examples are shortened, so the answer may have more keys, never
fewer. Arrays are compared element-wise against the union of the answer's elements.

Every fixture file is classified below (produced / request body / not emulated), so a new fixture cannot slip
through unchecked; every skipped path says why.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.graph_emulator import EmulatorSettings, GraphEmulator
from devkit.graph_emulator.testkit import GraphClient, TokenMinter, WebhookReceiver

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "graph-reference" / "fixtures"
SAM = "d2b0f0a4-5a77-4b5a-9c37-5a3a17b00001"
SAM_UPN = "samanthab@contoso.onmicrosoft.com"
Path_ = tuple[str, ...]
DECEMBER_2016 = "startDateTime=2016-12-01T00:00:00Z&endDateTime=2016-12-30T00:00:00Z"

# Request bodies (inputs: used below as given, not answers to compare).
REQUESTS = {
    "batch_request.json": "the $batch request body (its answer: batch_response.json)",
    "batch_request_dependson.json": "a $batch request body with dependsOn (behaviour: the batch tests)",
    "event_recurring_create_request.json": "a create request, posted as given for event_series_master.json",
    "event_with_online_meeting_create_request.json": "a create request, posted as given (online meeting)",
    "subscription_create_request.json": "a request; its equivalent produces subscription_create_response",
    "subscription_create_with_lifecycle_url_request.json": "a request with lifecycleNotificationUrl",
    "subscription_renew_request.json": "a renew request; its equivalent produces subscription_renew_response",
    "recurrence_examples.json": "recurrence fragments (inputs), expanded by the recurrence unit tests",
}
# Responses the emulator does not produce, and why.
NOT_EMULATED = {
    "notification_with_resource_data.json": "rich notifications (includeResourceData, encryptedContent) are "
    "not emulated: subscriptions asking for them get 400",
    "notification_decrypted_message_resource_data.json": "the decrypted content of a rich notification",
    "subscription_create_response_outlook_with_resource_data.json": "a subscription with includeResourceData "
    "and an encryption certificate (rich notifications are not emulated)",
}
# Paths (prefixes) of a produced fixture that are not compared, with the reason.
SKIPPED_PATHS: dict[str, dict[Path_, str]] = {
    "error_response.json": {
        (
            "error",
            "innerError",
            "requestId",
        ): "the 2021 docs' spelling; Graph sends innerError 'request-id' (and the emulator does)",
    },
    "message_delta_next_round_with_removed.json": {
        (
            "value",
            "[]",
            "isRead",
        ): 'documented quirk: "isRead": "true" is a string in the docs; Graph sends a boolean',
    },
    "subscription_create_response.json": {
        ("notificationContentType",): "fixtures disagree: this one has 'application/json', "
        "subscription_create_response_outlook_basic.json has null (the emulator sends null)",
    },
    "subscription_create_response_outlook_basic.json": {
        ("includeResourceData",): "fixtures disagree: null here, false in subscription_renew_response.json "
        "(the emulator sends false)",
    },
    "subscription_renew_response.json": {
        (
            "notificationContentType",
        ): "fixtures disagree on null vs 'application/json' (the emulator sends null)",
        (
            "encryptionCertificate",
        ): "fixtures disagree: '' here, null in the create responses (the emulator: null)",
        (
            "encryptionCertificateId",
        ): "fixtures disagree: '' here, null in the create responses (the emulator: null)",
    },
    "batch_response.json": {
        ("responses", "[]", "headers", "x-ms-resource-unit"): "a directory-API header; the emulated Outlook "
        "requests do not carry it",
        (
            "responses",
            "[]",
            "headers",
            "X-ProxyCluster",
        ): "a Planner-specific header (Planner is not emulated)",
        (
            "responses",
            "[]",
            "headers",
            "X-OfficeCluster",
        ): "a Planner-specific header (Planner is not emulated)",
        ("responses", "[]", "headers", "X-Tasks-CorrelationId"): "a Planner-specific header",
        (
            "responses",
            "[]",
            "body",
            "value",
            "[]",
        ): "the documented batch reads directory roles and users; the "
        "emulator's batch reads events (their shape is checked by the event fixtures)",
        ("responses", "[]", "body", "@odata.count"): "$count on /users (directory, not emulated)",
    },
}
HTTP_HEADERS_IGNORED = {"content-length"}


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def shape_paths(value: Any) -> dict[Path_, set[str]]:
    """Every key path of a JSON value with the JSON types seen there; array elements share the path ``[]``."""
    shapes: dict[Path_, set[str]] = defaultdict(set)

    def walk(node: Any, path: Path_) -> None:
        shapes[path].add(json_type(node))
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, (*path, key))
        elif isinstance(node, list):
            for child in node:
                walk(child, (*path, "[]"))

    walk(value, ())
    return dict(shapes)


def shape_mismatches(fixture: Any, answer: Any, skipped: dict[Path_, str]) -> list[str]:
    expected, actual = shape_paths(fixture), shape_paths(answer)
    problems = []
    for path, types in sorted(expected.items()):
        if any(path[: len(prefix)] == prefix for prefix in skipped):
            continue
        shown = "/".join(path) or "(root)"
        if path not in actual:
            problems.append(f"missing {shown}")
        elif not types <= actual[path]:
            problems.append(f"{shown}: fixture {sorted(types)} but emulator {sorted(actual[path])}")
    return problems


def test_shape_paths_helper() -> None:
    assert shape_paths({"a": [{"b": 1}, {"b": None, "c": "x"}]}) == {
        (): {"object"},
        ("a",): {"array"},
        ("a", "[]"): {"object"},
        ("a", "[]", "b"): {"number", "null"},
        ("a", "[]", "c"): {"string"},
    }
    assert shape_mismatches({"a": {"b": True}}, {"a": {"b": "yes", "c": 1}}, {}) == [
        "a/b: fixture ['boolean'] but emulator ['string']"
    ]
    assert shape_mismatches({"a": [{"d": 1}]}, {"a": []}, {}) == ["missing a/[]", "missing a/[]/d"]


# --- producing the answers ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def answer(response: requests.Response) -> Answer:
    assert response.status_code < 500, response.text
    return Answer(response.status_code, dict(response.headers), response.json() if response.content else None)


def _seed_event(item: dict[str, Any]) -> dict[str, Any]:
    keep = ("subject", "body", "start", "end", "location", "attendees", "hideAttendees")
    return {key: item[key] for key in keep if key in item}


class Producer:
    def __init__(self, emulator: GraphEmulator, app: GraphClient, webhook: WebhookReceiver) -> None:
        self.emulator, self.app, self.webhook = emulator, app, webhook
        self.answers: dict[str, Answer] = {}

    def events_delta(self) -> None:
        for page in (
            "event_delta_page1.json",
            "event_delta_page2.json",
            "event_delta_page3_final_deltalink.json",
        ):
            for item in fixture(page)["value"]:
                self.emulator.user_create_event(SAM, _seed_event(item))
        prefer = {"Prefer": "odata.maxpagesize=2"}
        window = "startdatetime=2016-12-01T00:00:00Z&enddatetime=2016-12-30T00:00:00Z"
        response = self.app.get(f"/me/calendarView/delta?{window}", headers=prefer)
        pages = [answer(response)]
        while "@odata.nextLink" in pages[-1].body:
            pages.append(answer(self.app.get(pages[-1].body["@odata.nextLink"], headers=prefer)))
        assert len(pages) == 3
        self.answers["event_delta_page1.json"] = pages[0]
        self.answers["event_delta_page2.json"] = pages[1]
        self.answers["event_delta_api_example_placeholders.json"] = pages[0]
        self.answers["event_delta_page3_final_deltalink.json"] = pages[2]
        self.answers["calendarview_minimal.json"] = answer(self.app.get(f"/me/calendarView?{window}"))
        next_round = fixture("event_delta_next_round_with_removed.json")["value"]
        self.app.delete(f"/me/events/{pages[0].body['value'][0]['id']}")
        self.emulator.user_create_event(SAM, _seed_event(next_round[1]))
        self.answers["event_delta_next_round_with_removed.json"] = answer(
            self.app.get(pages[2].body["@odata.deltaLink"])
        )

    def events(self) -> None:
        seeded = self.emulator.user_create_event(SAM, _seed_event(fixture("event_get_prefer_timezone.json")))
        prefer = {"Prefer": 'outlook.timezone="Pacific Standard Time"'}
        self.answers["event_get_prefer_timezone.json"] = answer(
            self.app.get(f"/me/events/{seeded['id']}", headers=prefer)
        )
        master = answer(self.app.post("/me/events", json=fixture("event_recurring_create_request.json")))
        self.answers["event_series_master.json"] = master
        window = "startDateTime=2017-09-01T00:00:00Z&endDateTime=2017-10-01T00:00:00Z"
        instances = self.app.get(f"/me/events/{master.body['id']}/instances?{window}").json()["value"]
        self.app.patch(f"/me/events/{instances[1]['id']}", json={"subject": "Moved to Tuesday"})
        self.answers["event_instances_occurrences_and_exception.json"] = answer(
            self.app.get(f"/me/events/{master.body['id']}/instances?{window}")
        )
        online = fixture("event_with_online_meeting_create_request.json")
        self.answers["event_with_online_meeting.json"] = answer(
            self.app.post("/me/events", json=online, headers=prefer)
        )
        self.answers["error_response.json"] = answer(
            self.app.get("/me/events/AAMkAGAAAAAAAAAAAAAAAAAAAAAAA=")
        )
        self.emulator.inject_fault(429, count=1)
        self.answers["throttled_429_response.json"] = answer(self.app.get("/me/events"))

    def batch(self) -> None:
        body = {
            "requests": [
                {
                    "id": "1",
                    "method": "GET",
                    "url": f"/me/calendarView?{DECEMBER_2016}&$top=1",
                },
                {"id": "2", "method": "GET", "url": "/me/events/AAMkAGAAAAAAAAAAAAAAAAAAAAAAA="},
                {"id": "3", "method": "DELETE", "url": "/me/events/not-an-id"},
                {
                    "id": "4",
                    "method": "POST",
                    "url": "/me/events",
                    "body": {},
                    "headers": {"Content-Type": "application/json"},
                },
                {
                    "id": "5",
                    "method": "GET",
                    "url": "me/events?$select=subject",
                    "headers": {"ConsistencyLevel": "eventual"},
                },
            ]
        }
        self.answers["batch_response.json"] = answer(self.app.post("/$batch", json=body))

    def subscriptions_and_notifications(self) -> None:
        expires = (self.emulator.now() + dt.timedelta(hours=1)).isoformat()
        request = fixture("subscription_create_request.json")
        request.update({"notificationUrl": self.webhook.url("/n"), "expirationDateTime": expires})
        created = answer(self.app.post("/subscriptions", json=request))
        self.answers["subscription_create_response.json"] = created
        self.answers["subscription_create_response_outlook_basic.json"] = created
        with_lifecycle = fixture("subscription_create_with_lifecycle_url_request.json")
        with_lifecycle.update(
            {
                "notificationUrl": self.webhook.url("/n2"),
                "lifecycleNotificationUrl": self.webhook.url("/life"),
                "resource": f"/users/{SAM}/messages",
                "expirationDateTime": expires,
            }
        )
        sub = self.app.post("/subscriptions", json=with_lifecycle).json()
        renewal = {"expirationDateTime": (self.emulator.now() + dt.timedelta(hours=2)).isoformat()}
        self.answers["subscription_renew_response.json"] = answer(
            self.app.patch(f"/subscriptions/{sub['id']}", json=renewal)
        )

        self.emulator.deliver_message(
            SAM, {"subject": "Hello", "from": {"emailAddress": {"address": "dana@x.io"}}}
        )
        assert self.webhook.wait_for(1, "/n")
        post = next(r for r in self.webhook.received if r.path == "/n")
        self.answers["notification_created.json"] = Answer(200, post.headers, post.body)
        self.answers["notification_without_resource_data_outlook.json"] = Answer(200, post.headers, post.body)
        for event in ("reauthorizationRequired", "missed", "subscriptionRemoved"):
            assert self.emulator.send_lifecycle(sub["id"], event)
        self.webhook.wait_for(3, "/life")
        posts = [r for r in self.webhook.received if r.path == "/life"]  # one POST may carry several items
        lifecycle = {item["lifecycleEvent"]: (post, item) for post in posts for item in post.body["value"]}
        for event, name in (
            ("reauthorizationRequired", "lifecycle_reauthorization_required.json"),
            ("missed", "lifecycle_missed.json"),
            ("subscriptionRemoved", "lifecycle_subscription_removed.json"),
        ):
            post, item = lifecycle[event]
            self.answers[name] = Answer(200, post.headers, {**post.body, "value": [item]})

    def contacts(self) -> None:
        for name in ("Ada", "Grace"):
            contact = {
                "givenName": name,
                "surname": "Test",
                "initials": name[0],
                "birthday": "1990-12-10T00:00:00Z",
            }
            self.app.post("/me/contacts", json=contact)
        folder = self.app.get("/me/contactFolders").json()["value"][0]["id"]
        prefer = {"Prefer": "odata.maxpagesize=1"}
        self.answers["contact_delta.json"] = answer(
            self.app.get(f"/me/contactfolders/{folder}/contacts/delta", headers=prefer)
        )

    def messages(self) -> None:
        sender = {"emailAddress": {"name": "Dana Swope", "address": "danas@contoso.onmicrosoft.com"}}
        ids = [
            self.emulator.deliver_message(
                SAM, {"subject": s, "sender": sender, "body": {"contentType": "text", "content": s}}
            )["id"]
            for s in ("Holiday hours update", "Holiday promotion sale")
        ]
        prefer = {"Prefer": "odata.maxpagesize=1"}
        first = answer(self.app.get("/me/mailFolders('Inbox')/messages/delta", headers=prefer))
        self.answers["message_delta.json"] = first
        self.answers["message_delta_page1.json"] = first
        link = first.body["@odata.nextLink"]
        while "@odata.nextLink" in (page := self.app.get(link, headers=prefer).json()):
            link = page["@odata.nextLink"]
        self.app.delete(f"/me/messages/{ids[0]}")
        self.app.patch(f"/me/messages/{ids[1]}", json={"isRead": True})
        self.answers["message_delta_next_round_with_removed.json"] = answer(
            self.app.get(page["@odata.deltaLink"])
        )

    def todo(self) -> None:
        lists = self.app.get("/me/todo/lists").json()["value"]
        tasks = f"/me/todo/lists/{lists[0]['id']}/tasks"
        task = fixture("todotask.json")
        created = self.app.post(
            tasks, json={k: task[k] for k in ("title", "importance", "categories", "dueDateTime")}
        )
        self.answers["todotask.json"] = answer(self.app.get(f"{tasks}/{created.json()['id']}"))
        linked = fixture("todotask_created_with_linked_resources.json")
        payload = {
            "title": linked["title"],
            "linkedResources": [{k: v for k, v in r.items() if k != "id"} for r in linked["linkedResources"]],
        }
        self.answers["todotask_created_with_linked_resources.json"] = answer(
            self.app.post(tasks, json=payload)
        )
        self.answers["todotask_delta.json"] = answer(self.app.get(f"{tasks}/delta"))


@pytest.fixture(scope="module")
def answers() -> Iterator[dict[str, Answer]]:
    minter = TokenMinter()
    settings = EmulatorSettings(notification_retry_delays=(0.1,), batch_shuffle_responses=True)
    with GraphEmulator(jwks=minter.jwks(), settings=settings) as emulator, WebhookReceiver() as webhook:
        emulator.add_mailbox(SAM, upn=SAM_UPN, display_name="Samantha Booth")
        with GraphClient(emulator.base_url, minter.delegated(SAM, SAM_UPN)) as app:
            producer = Producer(emulator, app, webhook)
            producer.events_delta()
            producer.events()
            producer.batch()
            producer.subscriptions_and_notifications()
            producer.contacts()
            producer.messages()
            producer.todo()
            yield producer.answers


PRODUCED = sorted(
    p.name for p in FIXTURES.glob("*.json") if p.name not in REQUESTS and p.name not in NOT_EMULATED
)


def test_every_fixture_is_classified(answers: dict[str, Answer]) -> None:
    every = {p.name for p in FIXTURES.glob("*.json")}
    assert every == set(answers) | set(REQUESTS) | set(NOT_EMULATED)
    assert set(SKIPPED_PATHS) <= set(answers)


@pytest.mark.parametrize("name", PRODUCED)
def test_answer_has_the_fixture_shape(answers: dict[str, Answer], name: str) -> None:
    problems = shape_mismatches(fixture(name), answers[name].body, SKIPPED_PATHS.get(name, {}))
    assert problems == [], f"{name}: {problems}"


def _http_fixture(name: str) -> tuple[int, dict[str, str]]:
    lines = (FIXTURES / "http" / name).read_text().splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if not line.strip() or line.lstrip().startswith("{"):
            break
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers


HTTP_RESPONSES = sorted(
    p.name
    for p in (FIXTURES / "http").glob("*.http")
    if p.read_text().startswith("HTTP/") and p.stem + ".json" in PRODUCED
)


@pytest.mark.parametrize("name", HTTP_RESPONSES)
def test_status_and_headers_match_the_documented_http_exchange(answers: dict[str, Answer], name: str) -> None:
    status, headers = _http_fixture(name)
    got = answers[name.replace(".http", ".json")]
    assert got.status == status
    present = {k.lower(): v for k, v in got.headers.items()}
    for header, value in headers.items():
        if header in HTTP_HEADERS_IGNORED:
            continue
        assert header in present, f"{name}: header {header} missing"
        if header == "preference-applied":
            assert present[header] == value
        if header == "content-type":
            assert present[header].startswith("application/json")
