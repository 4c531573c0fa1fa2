"""The request pipeline shared by HTTP, ``$batch`` and the control API's "act as the user in Outlook".

auth → mailbox (``/me`` is the token's ``oid``; ``/users/{id|upn}``) → throttling (rate, concurrency, injected
faults) → route → error shape → request log. Responses carry ``request-id`` / ``client-request-id`` and, when
a ``Prefer`` was honoured, ``Preference-Applied``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from devkit.graph_emulator import api_calendar, api_items, api_subscriptions, batch, timezones
from devkit.graph_emulator.auth import Authenticator, Principal, forbidden
from devkit.graph_emulator.calendar import RenderContext
from devkit.graph_emulator.delta import DeltaEngine
from devkit.graph_emulator.events import RenderOptions
from devkit.graph_emulator.notifier import Notifier
from devkit.graph_emulator.routing import (
    Headers,
    Request,
    Response,
    Router,
    normalize_path,
    parse_query,
    split_target,
)
from devkit.graph_emulator.settings import Clock, EmulatorSettings
from devkit.graph_emulator.store import Mailbox, Store
from devkit.graph_emulator.subscriptions import SubscriptionManager
from devkit.graph_emulator.throttling import FAULT_CODES, RequestLog, Throttler
from devkit.graph_emulator.util import GraphError, Json, Preferences, error_body, new_guid, throttled_body

JSON_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
)


class GraphApp:
    def __init__(self, settings: EmulatorSettings, clock: Clock, authenticator: Authenticator) -> None:
        self.settings = settings
        self.clock = clock
        self.auth = authenticator
        self.store = Store(clock, settings)
        self.delta = DeltaEngine(settings.delta_round_cache)
        self.throttler = Throttler(settings, clock)
        self.request_log = RequestLog(settings.request_log_size)
        self.subscriptions = SubscriptionManager(
            settings, clock, lambda on_dropped: Notifier(settings, clock, on_dropped)
        )
        self.base_url = "http://127.0.0.1/v1.0"
        self.router = Router()
        api_calendar.register(self.router)
        api_items.register(self.router)
        api_subscriptions.register(self.router)
        batch.register(self.router)

    # --- entry points ---

    def handle(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | list[tuple[str, str]],
        body: bytes = b"",
        *,
        in_batch: bool = False,
        outlook_mailbox: Mailbox | None = None,
    ) -> Response:
        started = time.monotonic()
        raw_path, query_string = split_target(target)
        req = Request(method.upper(), "", parse_query(query_string), Headers.of(headers), body)
        req.request_id, req.in_batch, req.query_string = new_guid(), in_batch, query_string
        req.outlook = outlook_mailbox is not None
        try:
            response = self._handle(req, raw_path, outlook_mailbox)
        except GraphError as exc:
            response = self.error_response(req, exc)
        response.headers.setdefault("request-id", req.request_id)
        response.headers.setdefault("client-request-id", req.client_request_id)
        response.headers.setdefault("Cache-Control", "no-cache")
        if req.prefs.applied:
            response.headers["Preference-Applied"] = ",".join(req.prefs.applied)
        if isinstance(response.body, dict):
            response.headers.setdefault("Content-Type", JSON_TYPE)
            response.headers.setdefault("OData-Version", "4.0")
        if not req.outlook:
            self.request_log.record(
                {
                    "time": self.clock.now().isoformat(),
                    "method": req.method,
                    "path": req.path or normalize_path(raw_path),
                    "status": response.status,
                    "latencyMs": round((time.monotonic() - started) * 1000, 3),
                    "mailbox": req.mailbox.user_id if req.mailbox else None,
                    "appId": req.principal.app_id if req.principal else None,
                    "batch": in_batch,
                    "requestId": req.request_id,
                }
            )
        return response

    def error_response(self, req: Request, exc: GraphError) -> Response:
        now = self.clock.now()
        if exc.status == 429:
            body = throttled_body(exc.code, exc.message, request_id=req.request_id, now=now)
        else:
            body = error_body(
                exc.code,
                exc.message,
                request_id=req.request_id,
                client_request_id=req.client_request_id,
                now=now,
            )
        return Response(exc.status, body, dict(exc.headers))

    # --- the pipeline ---

    def _handle(self, req: Request, raw_path: str, outlook_mailbox: Mailbox | None) -> Response:
        path = raw_path
        if path.lower().startswith("/v1.0"):
            path = path[5:]
        elif path.lower().startswith("/beta"):
            raise GraphError(400, "BadRequest", "The emulator speaks Graph v1.0 only.")
        req.path = normalize_path(path)
        prefer = req.headers.value("prefer")
        req.prefs = Preferences.parse([prefer] if prefer else [])
        if outlook_mailbox is None:
            req.principal = self.auth.authenticate(req.headers.value("authorization"))
        selector, rest = self._split_mailbox(req.path)
        if rest is None:
            route, params = self.router.match(req.method, req.path, mailbox=False)
            self._check_permissions(req, route.permissions)
            return self._throttled(req, lambda: route.handler(self, req, **params), mailbox=None)
        req.prefix = req.path[: len(req.path) - len(rest)] if rest else req.path
        if outlook_mailbox is not None:
            req.mailbox = outlook_mailbox
        else:
            assert req.principal is not None
            req.mailbox = self.resolve_mailbox(req.principal, selector)
        route, params = self.router.match(req.method, rest or "/", mailbox=True)
        self._check_permissions(req, route.permissions)
        return self._throttled(req, lambda: route.handler(self, req, **params), mailbox=req.mailbox)

    @staticmethod
    def _split_mailbox(path: str) -> tuple[str | None, str | None]:
        lowered = path.lower()
        if lowered == "/me" or lowered.startswith("/me/"):
            return None, path[3:]
        parts = path.split("/", 3)
        if len(parts) >= 3 and parts[1].lower() == "users" and parts[2]:
            return parts[2], "/" + parts[3] if len(parts) > 3 else ""
        return None, None

    def _check_permissions(self, req: Request, permissions: tuple[str, ...]) -> None:
        if req.principal is None or not permissions:
            return
        wanted = permissions
        if req.principal.is_app:  # application permissions are the ".All" forms or the same names
            wanted = tuple(p for p in permissions) + tuple(f"{p}.All" for p in permissions)
        if not req.principal.has_any(wanted):
            raise forbidden()

    def _throttled(self, req: Request, call: Any, *, mailbox: Mailbox | None) -> Response:
        if req.outlook:
            result: Response = call()
            return result
        assert req.principal is not None
        app_id = req.principal.app_id
        if mailbox is not None:
            wait = self.throttler.over_rate(app_id, mailbox.user_id)
            if wait is not None:
                raise GraphError(
                    429, "ApplicationThrottled", "Application is over its MailboxRequests limit.",
                    headers={"Retry-After": str(int(wait) + 1)},
                )  # fmt: skip
            if not self.throttler.acquire(app_id, mailbox.user_id):
                raise GraphError(
                    429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.",
                    headers={"Retry-After": "1"},
                )  # fmt: skip
        try:
            keys = (mailbox.user_id, mailbox.upn.lower()) if mailbox else ()
            rule = self.throttler.take_fault(req.method, req.path, keys, req.in_batch)
            if rule is not None:
                if rule.latency > 0:
                    time.sleep(rule.latency)
                if rule.status is not None:
                    code, message = FAULT_CODES.get(rule.status, ("UnknownError", "Injected failure."))
                    headers = {"Retry-After": f"{rule.retry_after:g}"} if rule.retry_after is not None else {}
                    raise GraphError(rule.status, rule.code or code, rule.message or message, headers=headers)
            result = call()
            return result
        finally:
            if mailbox is not None:
                self.throttler.release(app_id, mailbox.user_id)

    def resolve_mailbox(self, principal: Principal, selector: str | None) -> Mailbox:
        if selector is None:
            if principal.is_app:
                raise GraphError(
                    400, "BadRequest", "/me request is only valid with delegated authentication flow."
                )
            return self._own_mailbox(principal)
        mailbox = self.store.find(selector)
        if mailbox is None:
            own = selector.lower() in (principal.object_id, (principal.upn or "").lower())
            if principal.is_app or not own:
                raise GraphError(404, "ErrorInvalidUser", f"The requested user '{selector}' is invalid.")
            return self._own_mailbox(principal)
        if not principal.is_app and mailbox.user_id != principal.object_id:
            raise forbidden()
        return mailbox

    def _own_mailbox(self, principal: Principal) -> Mailbox:
        mailbox = self.store.find(principal.object_id)
        if mailbox is not None:
            return mailbox
        if not self.settings.auto_create_mailboxes or not principal.object_id:
            raise GraphError(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        try:
            return self.store.add(
                user_id=principal.object_id,
                upn=principal.upn,
                display_name=principal.name,
                tenant_id=principal.tenant_id,
            )
        except GraphError:  # created concurrently
            return self.store.get(principal.object_id)

    # --- helpers for handlers ---

    def render_context(self, req: Request) -> RenderContext:
        zone = req.prefs.time_zone
        if zone:
            timezones.resolve(zone)
            req.prefs.apply(f'outlook.timezone="{zone}"')
        if req.prefs.body_content_type:
            req.prefs.apply(f'outlook.body-content-type="{req.prefs.body_content_type}"')
        return RenderContext(RenderOptions(zone, req.prefs.body_content_type), self.immutable(req))

    def immutable(self, req: Request) -> bool:
        if req.prefs.immutable_ids:
            req.prefs.apply('IdType="ImmutableId"')
        return req.prefs.immutable_ids

    def link(self, req: Request, path: str, query: str = "") -> str:
        return f"{self.base_url}{req.prefix}{path}" + (f"?{query}" if query else "")

    def context_url(self, fragment: str) -> str:
        return f"{self.base_url}/$metadata#{fragment}"

    def publish(self, mailbox: Mailbox, changes: list[Any]) -> None:
        self.subscriptions.publish(mailbox, changes)

    def page_size(self, req: Request) -> int:
        size = req.prefs.max_page_size
        if size:
            size = min(max(size, 1), self.settings.max_page_size)
            req.prefs.apply(f"odata.maxpagesize={size}")
            return size
        return self.settings.default_page_size

    @staticmethod
    def json_body(req: Request) -> Json:
        body = req.json()
        if not isinstance(body, dict):
            raise GraphError(400, "BadRequest", "The request body must be a JSON object.")
        return body
