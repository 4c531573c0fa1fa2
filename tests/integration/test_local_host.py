"""The local Functions host (devkit/host.py) over real sockets: a host process per app, Azurite for queues.

The sample app (sample_app/function_app.py, with its own host.json: batchSize 4, newBatchThreshold 2,
visibilityTimeout 1 s, maxDequeueCount 3, base64) records what it did on a records queue, which is how these
tests see inside the host process. The pure parts (NCRONTAB, route templates, host.json) are tested directly.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from devkit.azurite import AzuriteEndpoints
from devkit.host_config import HostConfig, HostConfigError, load_host_json, resolve_references
from devkit.host_process import REPO_ROOT, HostLauncher, HostProcess, loopback_session
from devkit.host_routes import MethodNotAllowed, RouteError, RouteMatch, RouteTable, parse_route
from devkit.ncrontab import NcrontabError, next_occurrences

SAMPLE_APP = Path(__file__).parent / "sample_app" / "function_app.py"
REAL_APP = REPO_ROOT / "function_app.py"
KEY = "x-functions-key"
NEVER = "0 0 0 1 1 *"  # once a year: the sample timer only runs when a test fires it

T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, timeout: float = 15.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def http(method: str, url: str, **options: Any) -> requests.Response:
    with loopback_session() as session:
        return session.request(method, url, timeout=10, **options)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- NCRONTAB -----------------------------------------------------------------------------------------------


def test_every_six_hours_fires_at_0_6_12_and_18_each_day() -> None:
    times = next_occurrences("0 0 */6 * * *", utc(2025, 3, 1, 0, 0, 0), 8)

    assert [moment.strftime("%d %H:%M:%S") for moment in times] == [
        "01 06:00:00",
        "01 12:00:00",
        "01 18:00:00",
        "02 00:00:00",
        "02 06:00:00",
        "02 12:00:00",
        "02 18:00:00",
        "03 00:00:00",
    ]
    assert all(moment.tzinfo == UTC for moment in times)


def test_every_five_minutes_on_the_minute() -> None:
    times = next_occurrences("0 */5 * * * *", utc(2025, 3, 1, 10, 2, 30), 3)

    assert times == (utc(2025, 3, 1, 10, 5, 0), utc(2025, 3, 1, 10, 10, 0), utc(2025, 3, 1, 10, 15, 0))


def test_seconds_come_first_and_weekdays_are_one_to_five() -> None:
    # Friday 2025-03-07 after 10:15:30 → Monday, Tuesday, Wednesday at 10:15:30.
    times = next_occurrences("30 15 10 * * 1-5", utc(2025, 3, 7, 10, 15, 30), 3)

    assert times == (utc(2025, 3, 10, 10, 15, 30), utc(2025, 3, 11, 10, 15, 30), utc(2025, 3, 12, 10, 15, 30))


def test_names_lists_and_steps() -> None:
    assert next_occurrences("0 0 9 * Jan-Mar Mon,wed", utc(2025, 1, 1), 3) == (
        utc(2025, 1, 1, 9),
        utc(2025, 1, 6, 9),
        utc(2025, 1, 8, 9),
    )
    assert next_occurrences("*/20 * * * * *", utc(2025, 1, 1, 12), 3) == (
        utc(2025, 1, 1, 12, 0, 20),
        utc(2025, 1, 1, 12, 0, 40),
        utc(2025, 1, 1, 12, 1, 0),
    )


def test_day_of_month_and_day_of_week_must_both_match_as_in_ncrontab() -> None:
    fridays_the_13th = next_occurrences("0 0 0 13 * Fri", utc(2025, 1, 1), 2)

    assert fridays_the_13th == (utc(2025, 6, 13), utc(2026, 2, 13))


def test_a_five_field_cron_expression_is_rejected_with_a_hint() -> None:
    with pytest.raises(
        NcrontabError, match=r"5 fields; NCRONTAB needs 6.*seconds first.*'0 0 \*/6 \* \* \*'"
    ):
        next_occurrences("0 */6 * * *", utc(2025, 1, 1), 1)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 0 0 * * * *", "7 fields"),
        ("0 60 * * * *", "minute value 60 is out of range 0-59"),
        ("0 0 24 * * *", "hour value 24"),
        ("0 0 0 * * 7", "day-of-week value 7 is out of range 0-6"),
        ("0 0 0 * Smarch *", "not a known name"),
        ("0 0 0 5-1 * *", "runs backwards"),
        ("0 */0 * * * *", "step after '/' must be a positive number"),
        ("0 0 0 30 2 *", "never occurs"),
    ],
)
def test_bad_schedules_are_rejected_naming_the_problem(expression: str, message: str) -> None:
    with pytest.raises(NcrontabError, match=message):
        next_occurrences(expression, utc(2025, 1, 1), 1)


# --- routes and host.json -----------------------------------------------------------------------------------


def test_route_templates_match_like_the_functions_host() -> None:
    connect = parse_route("users/{crmUserId}/connect")
    items = parse_route("items/{id:int}/{label?}")
    files = parse_route("files/{*path}")

    assert connect.match("/users/a%20b/connect") == {"crmUserId": "a b"}
    assert connect.match("/Users/x/CONNECT/") == {"crmUserId": "x"}  # literals are case-insensitive
    assert connect.match("/users/x/disconnect") is None
    assert items.match("/items/42") == {"id": "42"}
    assert items.match("/items/42/red") == {"id": "42", "label": "red"}
    assert items.match("/items/red") is None
    assert items.match("/items/99999999999") is None  # int is 32-bit
    assert files.match("/files/a/b.txt") == {"path": "a/b.txt"}
    assert parse_route("f/{name}.{ext}").match("/f/report.v2.pdf") == {"name": "report.v2", "ext": "pdf"}


def test_the_most_specific_route_wins_and_a_wrong_method_lists_the_allowed_ones() -> None:
    table: RouteTable[str] = RouteTable()
    table.add(parse_route("users/{id}"), ["GET"], "by-id")
    table.add(parse_route("users/me"), ["GET"], "me")
    table.add(parse_route("users/{id:int}"), ["DELETE"], "delete")

    assert table.resolve("GET", "/users/me") == RouteMatch("me", {})
    assert table.resolve("GET", "/users/7") == RouteMatch("by-id", {"id": "7"})
    assert table.resolve("PUT", "/users/7") == MethodNotAllowed(("DELETE", "GET"))
    assert table.resolve("GET", "/groups/7") is None


@pytest.mark.parametrize("template", ["a/{x?}/b", "a/{*x}/b", "a/{x:nope}", "a/{x}{y}", "a/{x}/{X}", "a/{x"])
def test_unusable_route_templates_are_refused(template: str) -> None:
    with pytest.raises(RouteError):
        parse_route(template)


def test_host_json_queue_options_are_read_from_beside_the_app() -> None:
    config = load_host_json(SAMPLE_APP.parent / "host.json")

    assert config.route_prefix == "api"
    assert config.queues.batch_size == 4
    assert config.queues.new_batch_threshold == 2
    assert config.queues.max_polling_interval == 0.25
    assert config.queues.visibility_timeout == 1.0
    assert config.queues.max_dequeue_count == 3
    assert config.queues.base64
    assert config.function_timeout == 60.0
    assert HostConfig.from_json({}).queues.max_dequeue_count == 5  # the extension's default


def test_setting_references_are_resolved_or_named_when_missing() -> None:
    assert resolve_references("%QUEUE%-x", {"QUEUE": "sync"}, what="q") == "sync-x"
    with pytest.raises(HostConfigError, match="%MISSING%"):
        resolve_references("%MISSING%", {}, what="function f")


# --- the sample app in one host, shared by the module -------------------------------------------------------


class Records:
    """What the sample app recorded, read (and removed) from its records queue."""

    def __init__(self, client: QueueClient) -> None:
        self._client = client
        self._events: list[dict[str, Any]] = []

    def all(self) -> list[dict[str, Any]]:
        while True:
            page = next(
                self._client.receive_messages(messages_per_page=32, visibility_timeout=60).by_page(), None
            )
            messages = list(page) if page is not None else []
            if not messages:
                return list(self._events)
            for message in messages:
                self._events.append(json.loads(message.content))
                self._client.delete_message(message)

    def where(self, **fields: object) -> list[dict[str, Any]]:
        """Matching events in the order they happened."""
        matching = [event for event in self.all() if all(event.get(k) == v for k, v in fields.items())]
        return sorted(matching, key=lambda event: float(event["at"]))


@dataclass
class Sample:
    host: HostProcess
    storage: str
    queue: str
    outbox: str
    records: Records

    def queue_client(self, name: str) -> QueueClient:
        return QueueClient.from_connection_string(self.storage, name)

    def enqueue(self, body: str) -> None:
        with self.queue_client(self.queue) as client:
            client.send_message(base64.b64encode(body.encode()).decode())  # the wire format is ours to write

    def queue_length(self, name: str) -> int:
        with self.queue_client(name) as client:
            return client.get_queue_properties().approximate_message_count or 0

    def peek(self, name: str) -> list[str]:
        with self.queue_client(name) as client:
            try:
                return [str(message.content) for message in client.peek_messages(max_messages=32)]
            except ResourceNotFoundError:  # the poison queue appears with its first message
                return []


def sample_settings(suffix: str) -> dict[str, str]:
    return {
        "SAMPLE_QUEUE": f"work-{suffix}",
        "SAMPLE_OUTBOX_QUEUE": f"outbox-{suffix}",
        "SAMPLE_RECORDS_QUEUE": f"records-{suffix}",
        "SAMPLE_SCHEDULE": NEVER,
        "SAMPLE_STARTUP_SCHEDULE": NEVER,
        "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": "65536",
    }


def records_for(storage: str, settings: dict[str, str]) -> QueueClient:
    client = QueueClient.from_connection_string(storage, settings["SAMPLE_RECORDS_QUEUE"])
    client.create_queue()
    return client


@pytest.fixture(scope="module")
def sample(local_hosts: HostLauncher, azurite: AzuriteEndpoints) -> Iterator[Sample]:
    settings = sample_settings(uuid.uuid4().hex[:10])
    with records_for(azurite.connection_string, settings) as records_client:
        host = local_hosts.start(SAMPLE_APP, settings)
        try:
            yield Sample(
                host=host,
                storage=azurite.connection_string,
                queue=settings["SAMPLE_QUEUE"],
                outbox=settings["SAMPLE_OUTBOX_QUEUE"],
                records=Records(records_client),
            )
        finally:
            host.stop()


def test_function_key_opens_a_function_level_route_in_the_header_or_code_query(sample: Sample) -> None:
    host = sample.host
    by_header = http("GET", host.url("/api/users/u-1/greet?x=1&x=2"), headers={KEY: host.function_key})
    by_query = http("POST", host.url(f"/api/users/u%202/greet?code={host.function_key}"), data=b"abc")
    by_master = http("GET", host.url("/api/users/u-3/greet"), headers={KEY: host.master_key})

    assert by_header.status_code == 200
    assert by_header.json() | {"invocationId": "-"} == {
        "userId": "u-1",
        "method": "GET",
        "params": {"x": "1"},
        "bodyBytes": 0,
        "url": f"{host.base_url}/api/users/u-1/greet?x=1&x=2",
        "functionName": "greet",
        "invocationId": "-",
    }
    assert by_query.status_code == 200
    assert by_query.json()["userId"] == "u 2"
    assert by_query.json()["bodyBytes"] == 3
    assert by_master.status_code == 200


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/users/u/greet", {}),
        ("/api/users/u/greet", {KEY: "wrong"}),
        ("/api/users/u/greet?code=wrong", {}),
        ("/api/users/u/greet", {KEY: "ünïcode"}),
    ],
)
def test_a_missing_or_wrong_key_is_401(sample: Sample, path: str, headers: dict[str, str]) -> None:
    response = http("GET", sample.host.url(path), headers=headers)

    assert response.status_code == 401


def test_an_admin_level_function_takes_only_the_master_key(sample: Sample) -> None:
    host = sample.host
    url = host.url("/api/operator/reset")

    assert http("POST", url, headers={KEY: host.function_key}).status_code == 401
    assert http("POST", url, headers={KEY: host.master_key}).status_code == 200


def test_anonymous_routes_constraints_optional_parameters_and_the_default_route(sample: Sample) -> None:
    host = sample.host

    assert http("GET", host.url("/api/ping")).text == "pong"
    assert http("GET", host.url("/api/items/5")).json() == {"id": "5"}
    assert http("GET", host.url("/api/items/5/red")).json() == {"id": "5", "label": "red"}
    assert http("GET", host.url("/api/items/five")).status_code == 404  # {id:int}
    assert http("GET", host.url("/api/whoami")).json() == {"route": "default"}


def test_a_wrong_method_is_405_with_allow_and_an_unknown_route_404(sample: Sample) -> None:
    host = sample.host
    wrong_method = http("DELETE", host.url("/api/ping"))

    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "GET"
    assert http("GET", host.url("/api/no/such/route")).status_code == 404
    assert http("GET", host.url("/ping")).status_code == 404  # outside the route prefix


def test_an_unhandled_exception_is_a_500_without_the_traceback(sample: Sample) -> None:
    response = http("GET", sample.host.url("/api/explode"))

    assert response.status_code == 500
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "InternalServerError"
    assert "do-not-leak-this-detail" not in response.text
    assert "Traceback" not in response.text
    log = sample.host.log_text()
    assert "Traceback" in log
    assert "do-not-leak-this-detail" in log  # the traceback is in the host's log instead


def test_async_functions_run_and_their_response_is_mapped(sample: Sample) -> None:
    response = http("POST", sample.host.url("/api/echo"), data=b"\x00\x01binary")
    chunked = http("POST", sample.host.url("/api/echo"), data=iter([b"chunk-1;", b"chunk-2"]))

    assert response.status_code == 201
    assert response.headers["X-Echo"] == "yes"
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.content == b"\x00\x01binary"
    assert chunked.request.headers["Transfer-Encoding"] == "chunked"
    assert chunked.content == b"chunk-1;chunk-2"


def test_a_body_over_the_size_limit_is_413_and_the_connection_stays_usable(sample: Sample) -> None:
    with loopback_session() as session:
        too_big = session.post(sample.host.url("/api/echo"), data=b"x" * 70_000, timeout=10)
        after = session.post(sample.host.url("/api/echo"), data=b"ok", timeout=10)

    assert too_big.status_code == 413
    assert after.status_code == 201


def test_a_successful_message_is_processed_once_and_deleted(sample: Sample) -> None:
    body = f"hello-{uuid.uuid4().hex}"
    sample.enqueue(body)

    done = wait_for(lambda: sample.records.where(body=body, outcome="done"), "the message to be processed")
    wait_for(lambda: sample.queue_length(sample.queue) == 0, "the queue to be empty")

    assert [event["dequeueCount"] for event in sample.records.where(body=body)] == [1]
    assert done[0]["id"]


def test_a_failed_message_comes_back_after_the_visibility_timeout(sample: Sample) -> None:
    body = f"fail-once-{uuid.uuid4().hex}"
    sample.enqueue(body)

    wait_for(lambda: sample.records.where(body=body, outcome="done"), "the second try")
    wait_for(lambda: sample.queue_length(sample.queue) == 0, "the queue to be empty")

    first, second = sample.records.where(body=body)
    assert (first["dequeueCount"], first["outcome"]) == (1, "failed")
    assert (second["dequeueCount"], second["outcome"]) == (2, "done")
    assert second["at"] - first["at"] >= 0.8  # visibilityTimeout 00:00:01 (whole seconds on the service)


def test_a_message_that_always_fails_lands_in_poison_after_max_dequeue_count_tries(sample: Sample) -> None:
    body = f"fail-always-{uuid.uuid4().hex}"
    sample.enqueue(body)
    with sample.queue_client(sample.queue) as client:
        client.send_message("not base64 at all!")  # cannot be decoded: fails without reaching the function
    encoded = base64.b64encode(body.encode()).decode()
    poison = f"{sample.queue}-poison"

    wait_for(lambda: {encoded, "not base64 at all!"} <= set(sample.peek(poison)), "both messages in poison")
    wait_for(lambda: sample.queue_length(sample.queue) == 0, "the queue to be empty")

    tries = sample.records.where(body=body)
    assert [event["dequeueCount"] for event in tries] == [1, 2, 3]  # maxDequeueCount 3 in host.json
    assert {event["outcome"] for event in tries} == {"failed"}
    assert sample.peek(poison).count(encoded) == 1  # copied once, with its encoding unchanged
    assert "has reached MaxDequeueCount of 3" in sample.host.log_text()


def test_a_batch_runs_concurrently_within_batch_size_plus_threshold(sample: Sample) -> None:
    stem = f"slow-{uuid.uuid4().hex}"
    for number in range(4):
        sample.enqueue(f"{stem}-{number}")

    wait_for(
        lambda: len([e for e in sample.records.all() if str(e.get("body", "")).startswith(stem)]) == 4,
        "four slow messages",
    )

    running = [e["running"] for e in sample.records.all() if str(e.get("body", "")).startswith(stem)]
    assert 2 <= max(running) <= 4 + 2


def test_a_queue_output_binding_sends_base64_to_its_queue(sample: Sample) -> None:
    body = f"out-{uuid.uuid4().hex}"

    response = http("POST", sample.host.url("/api/enqueue"), data=body.encode())

    assert response.status_code == 202
    assert base64.b64encode(body.encode()).decode() in sample.peek(sample.outbox)


def test_a_timer_fires_on_demand_through_the_admin_endpoint(sample: Sample) -> None:
    before = len(sample.records.where(event="tick"))

    sample.host.fire("tick")

    ticks = wait_for(lambda: sample.records.where(event="tick")[before:], "the timer to run")
    assert ticks == [{"event": "tick", "pastDue": False, "at": ticks[0]["at"]}]


def test_a_run_on_startup_timer_ran_once_when_the_host_started(sample: Sample) -> None:
    startups = wait_for(lambda: sample.records.where(event="startup"), "the start-up run")

    assert [event["pastDue"] for event in startups] == [False]


def test_the_admin_api_takes_only_the_master_key(sample: Sample) -> None:
    host = sample.host
    fire = host.url("/admin/functions/tick")

    assert http("POST", fire, json={"input": ""}, headers={KEY: host.function_key}).status_code == 401
    assert http("GET", host.url("/admin/host/status")).status_code == 401
    missing = http("POST", host.url("/admin/functions/nope"), json={}, headers={KEY: host.master_key})
    assert missing.status_code == 404


def test_status_shows_the_resolved_queue_name_and_schedule(sample: Sample) -> None:
    status = sample.host.status()
    functions = {function["name"]: function for function in status["functions"]}

    assert status["state"] == "Running"
    assert status["errors"] == {}
    assert functions["work"]["queueName"] == sample.queue
    assert functions["tick"]["schedule"] == NEVER
    assert functions["tick"]["nextRun"] == f"{datetime.now(UTC).year + 1}-01-01T00:00:00+00:00"
    assert functions["enqueue"]["queueOutputs"] == [sample.outbox]


def test_the_host_log_has_one_line_per_invocation_and_no_keys(sample: Sample) -> None:
    host = sample.host
    http("GET", host.url("/api/users/log-check/greet"), headers={KEY: host.function_key})

    log = host.log_text()

    assert "Executed 'Functions.greet' (Succeeded, Id=" in log
    assert "trigger=httpTrigger" in log
    assert host.function_key not in log
    assert host.master_key not in log


# --- hosts of their own -------------------------------------------------------------------------------------


def test_sigterm_lets_an_in_flight_request_finish_then_exits_0(
    local_host: HostLauncher, azurite: AzuriteEndpoints
) -> None:
    settings = sample_settings(uuid.uuid4().hex[:10])
    with records_for(azurite.connection_string, settings) as records_client:
        records = Records(records_client)
        host = local_host.start(SAMPLE_APP, settings)
        answers: list[tuple[int, str] | Exception] = []

        def call_slow() -> None:
            try:
                response = http("GET", host.url("/api/slow?seconds=1"))
                answers.append((response.status_code, response.text))
            except requests.RequestException as error:
                answers.append(error)

        request = threading.Thread(target=call_slow)
        request.start()
        wait_for(lambda: records.where(event="slow-started"), "the slow request to start")

        code = host.stop()
        request.join(30)

    assert code == 0
    assert answers == [(200, "finished")]
    log = host.log_text()
    assert "devkit host stopped" in log
    assert "ResourceWarning" not in log


def test_a_timer_fires_on_its_schedule(local_host: HostLauncher, azurite: AzuriteEndpoints) -> None:
    settings = sample_settings(uuid.uuid4().hex[:10])
    settings["SAMPLE_SCHEDULE"] = "* * * * * *"  # every second
    with records_for(azurite.connection_string, settings) as records_client:
        records = Records(records_client)
        host = local_host.start(SAMPLE_APP, settings)

        def first_two_ticks() -> list[dict[str, Any]]:
            ticks = records.where(event="tick")
            return ticks[:2] if len(ticks) >= 2 else []

        ticks = wait_for(first_two_ticks, "two ticks")
        host.stop()

    first, second = ticks
    assert 0.5 <= second["at"] - first["at"] <= 2.0
    assert not first["pastDue"]


def test_functions_with_bad_bindings_are_reported_and_the_rest_still_run(
    local_host: HostLauncher, azurite: AzuriteEndpoints
) -> None:
    settings = sample_settings(uuid.uuid4().hex[:10])
    settings["SAMPLE_SCHEDULE"] = "0 */5 * * *"  # five fields: cron, not NCRONTAB
    del settings["SAMPLE_OUTBOX_QUEUE"]

    host = local_host.start(SAMPLE_APP, settings)
    errors = host.status()["errors"]

    assert set(errors) == {"tick", "enqueue"}
    assert "NCRONTAB needs 6" in errors["tick"]
    assert "%SAMPLE_OUTBOX_QUEUE%" in errors["enqueue"]
    assert http("GET", host.url("/api/ping")).text == "pong"


def test_a_host_that_cannot_start_exits_1_and_says_why(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devkit", "host", "--app", str(tmp_path / "missing.py"), "--port", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert "no app file at" in result.stderr


# --- the real app -------------------------------------------------------------------------------------------


def real_app_settings(storage: str) -> dict[str, str]:
    """The sample settings, on this session's Azurite, with names of this test's own and timers parked."""
    document = json.loads((REPO_ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))
    suffix = uuid.uuid4().hex[:10]
    return {
        **document["Values"],
        "AzureWebJobsStorage": storage,
        "SYNC_QUEUE_NAME": f"sync-{suffix}",
        "TABLE_NAME_PREFIX": f"t{suffix}",
        "RENEWAL_SCHEDULE": NEVER,
        "SWEEP_SCHEDULE": NEVER,
    }


@pytest.mark.skipif(not REAL_APP.exists(), reason="function_app.py is not written yet")
def test_the_real_function_app_loads_and_answers_health(
    local_host: HostLauncher, azurite: AzuriteEndpoints
) -> None:
    host = local_host.start(REAL_APP, real_app_settings(azurite.connection_string))

    response = http("GET", host.url("/api/health"))

    assert response.status_code == 200
    assert host.status()["errors"] == {}
