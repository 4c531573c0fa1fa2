"""A function app for the devkit host's tests: one of each trigger and binding the host runs.

It records what happened as JSON messages on the queue named by SAMPLE_RECORDS_QUEUE (plain text, not base64),
so the tests can observe invocations from outside the host process. Clients are built per call: no I/O at
import time.
"""

from __future__ import annotations

import json
import os
import threading
import time

import azure.functions as func
from azure.storage.queue import QueueClient

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

_running = 0
_running_lock = threading.Lock()


def _record(event: dict[str, object]) -> None:
    connection_string = os.environ["AzureWebJobsStorage"]  # noqa: SIM112 - the Functions setting's real name
    with QueueClient.from_connection_string(connection_string, os.environ["SAMPLE_RECORDS_QUEUE"]) as records:
        records.send_message(json.dumps({**event, "at": time.time()}))


def _json(payload: object, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(payload), status_code=status, mimetype="application/json")


@app.route(route="users/{userId}/greet", methods=["GET", "POST"])
def greet(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return _json(
        {
            "userId": req.route_params.get("userId"),
            "method": req.method,
            "params": dict(req.params),
            "bodyBytes": len(req.get_body()),
            "url": req.url,
            "functionName": context.function_name,
            "invocationId": context.invocation_id,
        }
    )


@app.route(route="ping", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def ping(req: func.HttpRequest) -> str:
    return "pong"


@app.route(auth_level=func.AuthLevel.ANONYMOUS)
def whoami(req: func.HttpRequest) -> func.HttpResponse:
    # No route: it answers at /api/whoami, its function name.
    return _json({"route": "default"})


@app.route(route="items/{id:int}/{label?}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def item(req: func.HttpRequest) -> func.HttpResponse:
    return _json(dict(req.route_params))


@app.route(route="explode", auth_level=func.AuthLevel.ANONYMOUS)
def explode(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("sample failure carrying do-not-leak-this-detail")


@app.route(route="operator/reset", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
def operator_reset(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("reset", status_code=200)


@app.route(route="echo", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def echo(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        req.get_body(),
        status_code=201,
        headers={"X-Echo": "yes"},
        mimetype="application/octet-stream",
    )


@app.route(route="slow", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def slow(req: func.HttpRequest) -> func.HttpResponse:
    _record({"event": "slow-started"})
    time.sleep(float(req.params.get("seconds", "1")))
    return func.HttpResponse("finished")


@app.route(route="enqueue", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@app.queue_output(arg_name="outbox", queue_name="%SAMPLE_OUTBOX_QUEUE%", connection="AzureWebJobsStorage")
def enqueue(req: func.HttpRequest, outbox: func.Out[str]) -> func.HttpResponse:
    outbox.set(req.get_body().decode("utf-8"))
    return func.HttpResponse(status_code=202)


@app.queue_trigger(arg_name="msg", queue_name="%SAMPLE_QUEUE%", connection="AzureWebJobsStorage")
def work(msg: func.QueueMessage) -> None:
    global _running
    body = msg.get_body().decode("utf-8")
    with _running_lock:
        _running += 1
        running = _running
    try:
        failing = body.startswith("fail-always") or (body.startswith("fail-once") and msg.dequeue_count == 1)
        _record(
            {
                "event": "work",
                "body": body,
                "id": msg.id,
                "dequeueCount": msg.dequeue_count,
                "running": running,
                "outcome": "failed" if failing else "done",
            }
        )
        if failing:
            raise RuntimeError("the message asked to fail")
        if body.startswith("slow"):
            time.sleep(0.5)
    finally:
        with _running_lock:
            _running -= 1


@app.timer_trigger(arg_name="timer", schedule="%SAMPLE_SCHEDULE%", run_on_startup=False)
def tick(timer: func.TimerRequest) -> None:
    _record({"event": "tick", "pastDue": timer.past_due})


@app.timer_trigger(arg_name="timer", schedule="%SAMPLE_STARTUP_SCHEDULE%", run_on_startup=True)
def warm_up(timer: func.TimerRequest) -> None:
    _record({"event": "startup", "pastDue": timer.past_due})
