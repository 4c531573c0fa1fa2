"""The control API under ``/_devkit`` (no auth): what tests and the devkit do to the emulated Microsoft 365.

See docs/devkit.md ("Graph emulator") for the table of routes; each maps to a ``GraphEmulator`` method.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from devkit.graph_emulator.routing import Headers, Response, parse_query, split_target
from devkit.graph_emulator.util import GraphError, Json

if TYPE_CHECKING:
    from devkit.graph_emulator.emulator import GraphEmulator

Handler = Callable[["GraphEmulator", dict[str, str], Any, dict[str, str]], Response]
_ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        regex = re.compile("^/_devkit" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        _ROUTES.append((method, regex, handler))
        return handler

    return register


def handle(
    emulator: GraphEmulator, method: str, target: str, headers: list[tuple[str, str]], body: bytes
) -> Response:
    path, query_string = split_target(target)
    path = path.rstrip("/")
    outlook = re.match(r"^/_devkit/mailboxes/([^/]+)/outlook(/.*)$", path)
    if outlook:  # act as the user in Outlook: any mailbox-relative Graph path
        return _outlook(
            emulator,
            method,
            urllib.parse.unquote(outlook.group(1)),
            outlook.group(2),
            query_string,
            headers,
            body,
        )
    try:
        payload = json.loads(body) if body.strip() else None
    except ValueError:
        return _error(GraphError(400, "BadRequest", "Unable to read JSON request payload."))
    for route_method, regex, handler in _ROUTES:
        match = regex.match(path)
        if match and route_method == method:
            try:
                params = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items()}
                return handler(emulator, params, payload, parse_query(query_string))
            except GraphError as exc:
                return _error(exc)
            except (KeyError, TypeError, ValueError) as exc:
                return _error(GraphError(400, "BadRequest", f"Invalid control request: {exc}"))
    return _error(GraphError(404, "NotFound", f"No control route {method} {path}."))


def _error(exc: GraphError) -> Response:
    return Response(exc.status, {"error": {"code": exc.code, "message": exc.message}}, dict(exc.headers))


def _outlook(
    emulator: GraphEmulator,
    method: str,
    user: str,
    rest: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> Response:
    try:
        mailbox = emulator.mailbox(user)
    except GraphError as exc:
        return _error(exc)
    passed = [(k, v) for k, v in Headers.of(headers).items() if k in ("content-type", "prefer", "if-match")]
    target = "/me" + rest + (f"?{query}" if query else "")
    return emulator.app.handle(method, target, passed, body, outlook_mailbox=mailbox)


def ok(body: Json | None = None, status: int = 200) -> Response:
    return Response(status if body is not None or status != 200 else 204, body)


# --- routes ---


@route("GET", "/health")
def health(emulator: GraphEmulator, _p: dict[str, str], _b: Any, _q: dict[str, str]) -> Response:
    return ok({"status": "ok", "baseUrl": emulator.base_url, "now": emulator.now().isoformat()})


@route("GET", "/mailboxes")
def list_mailboxes(emulator: GraphEmulator, _p: dict[str, str], _b: Any, _q: dict[str, str]) -> Response:
    return ok({"value": [m.profile() for m in emulator.app.store.all()]})


@route("POST", "/mailboxes")
def create_mailbox(emulator: GraphEmulator, _p: dict[str, str], body: Any, _q: dict[str, str]) -> Response:
    body = body or {}
    profile = emulator.add_mailbox(
        body.get("id"),
        upn=body.get("userPrincipalName"),
        display_name=body.get("displayName"),
        mail=body.get("mail"),
        tenant_id=body.get("tenantId"),
        time_zone=body.get("timeZone", "UTC"),
    )
    return ok(profile, 201)


@route("GET", "/clock")
def get_clock(emulator: GraphEmulator, _p: dict[str, str], _b: Any, _q: dict[str, str]) -> Response:
    return ok({"now": emulator.now().isoformat(), "offsetSeconds": emulator.clock.offset_seconds})


@route("POST", "/clock/advance")
def advance_clock(emulator: GraphEmulator, _p: dict[str, str], body: Any, _q: dict[str, str]) -> Response:
    now = emulator.advance_clock(float(body["seconds"]))
    return ok({"now": now.isoformat(), "offsetSeconds": emulator.clock.offset_seconds})


@route("POST", "/delta/expire")
def expire_delta(emulator: GraphEmulator, _p: dict[str, str], body: Any, _q: dict[str, str]) -> Response:
    emulator.expire_delta_tokens(body["user"], body.get("resource"))
    return ok()


@route("GET", "/subscriptions")
def list_subscriptions(emulator: GraphEmulator, _p: dict[str, str], _b: Any, _q: dict[str, str]) -> Response:
    return ok({"value": emulator.subscriptions()})


@route("POST", "/subscriptions/{sid}/lifecycle")
def lifecycle(emulator: GraphEmulator, p: dict[str, str], body: Any, _q: dict[str, str]) -> Response:
    sent = emulator.send_lifecycle(p["sid"], body["lifecycleEvent"])
    return ok({"sent": sent})


@route("DELETE", "/subscriptions/{sid}")
def remove_subscription(emulator: GraphEmulator, p: dict[str, str], _b: Any, q: dict[str, str]) -> Response:
    emulator.remove_subscription(p["sid"], notify=q.get("notify", "true").lower() != "false")
    return ok()


@route("GET", "/deliveries")
def deliveries(emulator: GraphEmulator, _p: dict[str, str], _b: Any, q: dict[str, str]) -> Response:
    return ok({"value": emulator.deliveries(q.get("subscriptionid"))})


@route("GET", "/faults")
def list_faults(emulator: GraphEmulator, _p: dict[str, str], _b: Any, _q: dict[str, str]) -> Response:
    return ok({"value": [rule.describe() for rule in emulator.app.throttler.faults()]})


@route("POST", "/faults")
def add_fault(emulator: GraphEmulator, _p: dict[str, str], body: Any, _q: dict[str, str]) -> Response:
    body = body or {}
    fault_id = emulator.inject_fault(
        body.get("status", 429),
        count=body.get("count", 1),
        retry_after=body.get("retryAfter", 2.128),
        latency=float(body.get("latency", 0.0)),
        user=body.get("user"),
        method=body.get("method"),
        path_contains=body.get("pathContains"),
        in_batch=body.get("inBatch"),
    )
    return ok({"id": fault_id}, 201)


@route("DELETE", "/faults")
def clear_faults(emulator: GraphEmulator, _p: dict[str, str], _b: Any, _q: dict[str, str]) -> Response:
    emulator.clear_faults()
    return ok()


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@route("GET", "/settings")
def get_settings(emulator: GraphEmulator, _p: dict[str, str], _b: Any, _q: dict[str, str]) -> Response:
    from dataclasses import asdict

    return ok(asdict(emulator.settings))


@route("PATCH", "/settings")
def patch_settings(emulator: GraphEmulator, _p: dict[str, str], body: Any, _q: dict[str, str]) -> Response:
    emulator.update_settings(**{_snake(k): v for k, v in (body or {}).items()})
    return get_settings(emulator, {}, None, {})


@route("GET", "/counters")
def counters(emulator: GraphEmulator, _p: dict[str, str], _b: Any, _q: dict[str, str]) -> Response:
    return ok({"mailboxes": emulator.request_counters()})


@route("GET", "/requests")
def requests_log(emulator: GraphEmulator, _p: dict[str, str], _b: Any, q: dict[str, str]) -> Response:
    return ok({"value": emulator.request_log(q.get("user"))})


@route("DELETE", "/requests")
def reset_requests(emulator: GraphEmulator, _p: dict[str, str], _b: Any, _q: dict[str, str]) -> Response:
    emulator.reset_request_log()
    return ok()
