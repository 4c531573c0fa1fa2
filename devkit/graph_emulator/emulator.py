"""``GraphEmulator``: the in-process Python API (tests run it in a background thread) over the same operations
the control API (``/_devkit/...``) exposes over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from types import TracebackType
from typing import Any

from devkit.graph_emulator import control
from devkit.graph_emulator.app import GraphApp
from devkit.graph_emulator.auth import GRAPH_AUDIENCES, Authenticator, JwksProvider, JwksSource
from devkit.graph_emulator.events import clean_payload
from devkit.graph_emulator.routing import Response
from devkit.graph_emulator.server import ServerThread
from devkit.graph_emulator.settings import Clock, EmulatorSettings
from devkit.graph_emulator.store import Mailbox
from devkit.graph_emulator.throttling import FaultRule
from devkit.graph_emulator.util import GraphError, Json
from devkit.tls import ServerCertificate


class OutlookError(RuntimeError):
    """An "act as the user in Outlook" call that Graph would have refused (e.g. an invalid payload)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {json.dumps(body)[:500]}")
        self.status = status
        self.body = body


class GraphEmulator:
    """A stateful Microsoft Graph v1.0 emulator over real HTTP(S).

    ``jwks``: the identity emulator's signing keys (a JWKS URL fetched over HTTPS with ``jwks_ca_path``, a
    list of JWK dicts, or a callable returning one). ``verify_tokens=False`` accepts any well-formed JWT (for
    manual poking only). ``certificate`` serves HTTPS. ``time_source`` (epoch seconds, e.g. the identity
    emulator's ``clock.now``) is the base of this emulator's clock and judges token lifetimes;
    ``advance_clock`` adds to it. Use as a context manager or ``start()``/``stop()``.
    """

    def __init__(
        self,
        *,
        jwks: JwksSource | None = None,
        jwks_ca_path: str | None = None,
        audiences: Sequence[str] = GRAPH_AUDIENCES,
        settings: EmulatorSettings | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        certificate: ServerCertificate | None = None,
        verify_tokens: bool = True,
        time_source: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings or EmulatorSettings()
        self.clock = Clock(time_source or time.time)
        provider = JwksProvider(jwks, ca_path=jwks_ca_path) if jwks is not None else None
        # Token lifetimes are judged by the base time source (the identity emulator's clock when shared),
        # not by this emulator's own advances, which only move Graph's state (subscriptions, retries...).
        auth = Authenticator(provider, audiences=audiences, verify=verify_tokens, now=self.clock.base)
        self.app = GraphApp(self.settings, self.clock, auth)
        self._host, self._port, self._certificate = host, port, certificate
        self._server: ServerThread | None = None

    # --- lifecycle ---

    def start(self) -> GraphEmulator:
        context = self._certificate.ssl_context() if self._certificate else None
        self._server = ServerThread(self._host, self._port, self._dispatch, context)
        scheme = "https" if context else "http"
        self.root_url = f"{scheme}://{self._host}:{self._server.port}"
        self.app.base_url = self.root_url + "/v1.0"
        self.app.subscriptions.notifier.start()
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self.app.subscriptions.notifier.stop()

    def __enter__(self) -> GraphEmulator:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1.0``: what the product uses as ``GRAPH_BASE_URL``."""
        return self.app.base_url

    @property
    def control_url(self) -> str:
        return self.root_url + "/_devkit"

    def _dispatch(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        if target.startswith("/_devkit"):
            return control.handle(self, method, target, headers, body)
        return self.app.handle(method, target, headers, body)

    # --- mailboxes and the user's own actions ---

    def add_mailbox(
        self,
        user_id: str | None = None,
        *,
        upn: str | None = None,
        display_name: str | None = None,
        mail: str | None = None,
        tenant_id: str | None = None,
        time_zone: str = "UTC",
    ) -> Json:
        mailbox = self.app.store.add(
            user_id=user_id,
            upn=upn,
            display_name=display_name,
            mail=mail,
            tenant_id=tenant_id,
            time_zone=time_zone,
        )
        return mailbox.profile()

    def mailbox(self, user: str) -> Mailbox:
        return self.app.store.get(user)

    def outlook(
        self, user: str, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        """Act as the user in Outlook: ``path`` is relative to the mailbox (e.g. ``/events/{id}``).

        The change does not come through the app's API: no token, no throttling, no request counters, but it
        lands in delta and triggers notifications like any change.
        """
        mailbox = self.app.store.get(user)
        payload = b"" if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        target = "/me" + (path if path.startswith("/") else "/" + path)
        response = self.app.handle(
            method, target, list(all_headers.items()), payload, outlook_mailbox=mailbox
        )
        parsed = response.body if isinstance(response.body, dict) or response.body is None else None
        return response.status, parsed

    def _outlook_ok(self, user: str, method: str, path: str, body: Any = None, **headers: str) -> Any:
        status, parsed = self.outlook(user, method, path, body, headers or None)
        if status >= 400:
            raise OutlookError(status, parsed)
        return parsed

    def user_create_event(self, user: str, event: Mapping[str, Any]) -> Json:
        """Create an event as the user would in Outlook (the Graph JSON is taken as given)."""
        return dict(self._outlook_ok(user, "POST", "/events", dict(event)))

    def user_update_event(self, user: str, event_id: str, changes: Mapping[str, Any]) -> Json:
        return dict(self._outlook_ok(user, "PATCH", f"/events/{event_id}", dict(changes)))

    def user_delete_event(self, user: str, event_id: str) -> None:
        self._outlook_ok(user, "DELETE", f"/events/{event_id}")

    def seed_events(self, user: str, events: Iterable[Mapping[str, Any]]) -> int:
        """Put events straight into the user's calendar, as if they had always been there (bulk set-up, e.g.
        a mailbox of 10,000 events for a benchmark): each is checked as a create is, but no change
        notification is sent and no request is logged. Returns how many were added."""
        mailbox = self.app.store.get(user)
        added = 0
        with mailbox.lock:
            for event in events:
                mailbox.calendar.create(clean_payload(dict(event), creating=True))
                added += 1
        return added

    def deliver_message(self, user: str, message: Mapping[str, Any], folder: str = "inbox") -> Json:
        """Mail arriving in a folder (``created`` notifications, message delta)."""
        return dict(self._outlook_ok(user, "POST", f"/mailFolders/{folder}/messages", dict(message)))

    # --- clock, delta ---

    def now(self) -> dt.datetime:
        return self.clock.now()

    def advance_clock(self, seconds: float) -> dt.datetime:
        """Move the emulator's clock forward (subscription expiry, retry schedules, timestamps)."""
        return self.clock.advance(seconds)

    def expire_delta_tokens(self, user: str, resource: str | None = None) -> None:
        """Make the mailbox's delta tokens (of one kind: events, contacts, tasks, messages...) answer 410."""
        self.app.delta.expire(self.app.store.get(user).user_id, resource)

    # --- subscriptions and notifications ---

    def subscriptions(self) -> list[Json]:
        return [s.as_json(self.base_url) for s in self.app.subscriptions.all(None)]

    def send_lifecycle(self, subscription_id: str, event: str) -> bool:
        """Post a lifecycle notification (``reauthorizationRequired``, ``subscriptionRemoved``, ``missed``).

        Returns False when the subscription has no lifecycleNotificationUrl (nothing is sent).
        """
        return self.app.subscriptions.send_lifecycle(subscription_id, event)

    def remove_subscription(self, subscription_id: str, *, notify: bool = True) -> None:
        """Drop a subscription as Graph may; ``notify`` sends ``subscriptionRemoved`` to its lifecycle URL."""
        self.app.subscriptions.remove(subscription_id, notify=notify)

    def deliveries(self, subscription_id: str | None = None) -> list[Json]:
        result = [d.as_json() for d in self.app.subscriptions.notifier.deliveries()]
        if subscription_id:
            result = [d for d in result if subscription_id in d["subscriptionIds"]]
        return result

    def wait_for_deliveries(
        self,
        predicate: Callable[[list[Json]], bool],
        *,
        timeout: float = 10.0,
        subscription_id: str | None = None,
    ) -> list[Json]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.deliveries(subscription_id)
            if predicate(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    # --- throttling and faults ---

    def inject_fault(
        self,
        status: int | None = 429,
        *,
        count: int | None = 1,
        retry_after: float | None = 2.128,
        latency: float = 0.0,
        user: str | None = None,
        method: str | None = None,
        path_contains: str | None = None,
        in_batch: bool | None = None,
    ) -> int:
        """Answer the next ``count`` matching requests with ``status`` and/or delay them ``latency`` s."""
        rule = FaultRule(status, count, retry_after, latency, user, method, path_contains, in_batch)
        return self.app.throttler.add_fault(rule).id

    def clear_faults(self) -> None:
        self.app.throttler.clear_faults()

    def set_mailbox_concurrency(self, limit: int | None = 4) -> None:
        """Answer 429 ``MailboxConcurrency`` beyond ``limit`` concurrent requests per app and mailbox."""
        self.settings.mailbox_concurrency_limit = limit

    def update_settings(self, **changes: Any) -> None:
        names = {f.name for f in fields(EmulatorSettings)}
        for name, value in changes.items():
            if name not in names:
                raise GraphError(400, "BadRequest", f"Unknown setting '{name}'.")
            current = getattr(self.settings, name)
            setattr(
                self.settings,
                name,
                tuple(value) if isinstance(current, tuple) and value is not None else value,
            )

    # --- counters ---

    def request_counters(self) -> dict[str, Any]:
        """Per mailbox: requests (HTTP), batchInner, throttled, byMethod, byStatus."""
        return self.app.request_log.counters()

    def request_log(self, user: str | None = None) -> list[Json]:
        mailbox = self.app.store.get(user).user_id if user else None
        return self.app.request_log.entries(mailbox)

    def reset_request_log(self) -> None:
        self.app.request_log.reset()
