"""Azure Functions triggers (v2 programming model). Each trigger parses its binding, makes one call into
sync_core, and maps the outcome to a response; no Graph, storage or mapping logic lives here."""

from __future__ import annotations

import logging

import azure.functions as func

from sync_core import inbound, wiring
from sync_core.responses import json_response
from sync_core.services.activity_push import ActivityPushes
from sync_core.services.connect import ConnectService
from sync_core.services.health import check_health

log = logging.getLogger(__name__)

# Fail at start, naming every missing or malformed setting. Reading settings is the only work done at import.
wiring.check_settings()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _connect() -> ConnectService:
    return wiring.container().connect_service


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    report = check_health(wiring.container().health_probes())
    return json_response(report.as_json(), status=200 if report.healthy else 503)


# --- the CRM: connect, disconnect, status (function key + request signature) ----------------------------


@app.function_name("connect")
@app.route(route="users/{crmUserId}/connect", methods=["POST"])
def connect(req: func.HttpRequest) -> func.HttpResponse:
    return inbound.crm_call(req, "connect", lambda user, body: _connect().start(user, body).as_json())


@app.function_name("disconnect")
@app.route(route="users/{crmUserId}/disconnect", methods=["POST"])
def disconnect(req: func.HttpRequest) -> func.HttpResponse:
    return inbound.crm_call(req, "disconnect", lambda user, body: _connect().disconnect(user, body))


@app.function_name("status")
@app.route(route="users/{crmUserId}/status", methods=["GET"])
def status(req: func.HttpRequest) -> func.HttpResponse:
    return inbound.crm_call(req, "status", lambda user, _body: _connect().status(user))


# --- the CRM: an activity changed or was deleted (function key + signature; 202 once in the outbox) -----


def _pushes() -> ActivityPushes:
    return wiring.container().activity_pushes


@app.function_name("activity_push")
@app.route(route="users/{crmUserId}/activities/{crmId}", methods=["PUT"])
def activity_push(req: func.HttpRequest) -> func.HttpResponse:
    crm_id = req.route_params.get("crmId", "")
    return inbound.crm_call(
        req, "activity_push", lambda user, body: _pushes().upsert(user, crm_id, body).as_json(), status=202
    )


@app.function_name("activity_delete")
@app.route(route="users/{crmUserId}/activities/{crmId}", methods=["DELETE"])
def activity_delete(req: func.HttpRequest) -> func.HttpResponse:
    crm_id, version = req.route_params.get("crmId", ""), req.params.get("version")
    return inbound.crm_call(
        req,
        "activity_delete",
        lambda user, _body: _pushes().delete(user, crm_id, version).as_json(),
        status=202,
    )


# --- the browser: the OAuth callback (form_post POST, or GET with a query) and admin consent ---------------


@app.function_name("auth_callback")
@app.route(route="auth/callback", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def auth_callback(req: func.HttpRequest) -> func.HttpResponse:
    return inbound.browser_call(req, "auth_callback", lambda params: _connect().finish(params))


@app.function_name("admin_consent")
@app.route(route="admin/consent", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def admin_consent(req: func.HttpRequest) -> func.HttpResponse:
    return inbound.browser_call(req, "admin_consent", lambda params: _connect().start_admin_consent(params))


# --- Microsoft Graph: webhook and lifecycle endpoints (anonymous: notifications carry a clientState) ---


@app.function_name("graph_notifications")
@app.route(route="graph/notifications", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def graph_notifications(req: func.HttpRequest) -> func.HttpResponse:
    return inbound.graph_call(req, "graph_notifications")


@app.function_name("graph_lifecycle")
@app.route(route="graph/lifecycle", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def graph_lifecycle(req: func.HttpRequest) -> func.HttpResponse:
    return inbound.graph_call(req, "graph_lifecycle")


# --- queued work: one sync run per message; messages that keep failing are parked and recorded ------------


@app.function_name("reconcile")
@app.queue_trigger(arg_name="msg", queue_name="%SYNC_QUEUE_NAME%", connection="AzureWebJobsStorage")
def reconcile(msg: func.QueueMessage) -> None:
    # Lifecycle repairs, then the grant check; the reconcile feature runs the sync itself after that check.
    wiring.container().sync_runner.run(
        inbound.sync_message(msg.get_body()), dequeue_count=msg.dequeue_count or 1
    )


@app.function_name("sync_poison")
@app.queue_trigger(arg_name="msg", queue_name="%SYNC_QUEUE_NAME%-poison", connection="AzureWebJobsStorage")
def sync_poison(msg: func.QueueMessage) -> None:
    message = inbound.parked_sync_message(msg.get_body(), msg.id or "")
    if message is not None:
        wiring.container().poison.record(message, msg.id or "", msg.insertion_time)


# --- timers (schedules from settings; safe to run on several instances at once) ---------------------------


@app.function_name("renew_subscriptions")
@app.timer_trigger(arg_name="timer", schedule="%RENEWAL_SCHEDULE%")
def renew_subscriptions(timer: func.TimerRequest) -> None:
    wiring.container().renewal.renew_due(inbound.next_run(timer))


@app.function_name("sweep")
@app.timer_trigger(arg_name="timer", schedule="%SWEEP_SCHEDULE%")
def sweep(timer: func.TimerRequest) -> None:
    wiring.container().sweep.run()
