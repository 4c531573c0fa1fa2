"""Change-notification subscriptions: the validation handshake, lifetimes, renewal, lifecycle events, fan-out.

Creating (or re-pointing) a subscription POSTs ``{notificationUrl}?validationToken=...`` (and the same to
``lifecycleNotificationUrl``) with ``Content-Type: text/plain; charset=utf-8``; the endpoint must answer 200,
``text/plain``, with the URL-decoded token, within ``handshake_timeout`` (10 s), or the request fails with 400
and no subscription exists. The token contains spaces and colons, so echoing the raw query string fails.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from devkit.graph_emulator.auth import Principal, forbidden
from devkit.graph_emulator.calendar import Calendar
from devkit.graph_emulator.notifier import Notifier, Pending
from devkit.graph_emulator.routing import normalize_path
from devkit.graph_emulator.settings import Clock, EmulatorSettings
from devkit.graph_emulator.store import Mailbox
from devkit.graph_emulator.util import (
    Change,
    GraphError,
    Json,
    fmt_local,
    fmt_utc,
    new_guid,
    parse_offset_datetime,
    render_id,
)

CHANGE_TYPES = ("created", "updated", "deleted")
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
PERMISSIONS = {
    "events": ("Calendars.Read", "Calendars.ReadWrite", "Calendars.ReadBasic"),
    "contacts": ("Contacts.Read", "Contacts.ReadWrite"),
    "messages": ("Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic", "Mail.ReadBasic.All"),
    "todoTask": ("Tasks.Read", "Tasks.ReadWrite"),
}
PERMISSIONS_APP = {
    "events": ("Calendars.Read", "Calendars.ReadWrite", "Calendars.ReadBasic.All"),
    "contacts": ("Contacts.Read", "Contacts.ReadWrite"),
    "messages": ("Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic.All"),
    "todoTask": ("Tasks.Read.All", "Tasks.ReadWrite.All"),
}
RESOURCE_PATTERNS = (
    (re.compile(r"^(?:calendar/|calendars/[^/]+/)?events$", re.I), "events", None),
    (re.compile(r"^contacts$", re.I), "contacts", "contacts"),
    (re.compile(r"^contactFolders/([^/]+)/contacts$", re.I), "contacts", 1),
    (re.compile(r"^messages$", re.I), "messages", None),
    (re.compile(r"^mailFolders/([^/]+)/messages$", re.I), "messages", 1),
    (re.compile(r"^todo/lists/([^/]+)/tasks$", re.I), "todoTask", 1),
)
ODATA_TYPES = {"events": "Event", "contacts": "Contact", "messages": "Message", "todoTask": "TodoTask"}


@dataclass
class Subscription:
    id: str
    resource: str
    kind: str
    mailbox_id: str
    container: bytes | None
    change_types: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    expiration: dt.datetime
    client_state: str | None
    app_id: str
    creator_id: str
    tenant_id: str
    immutable: bool
    tls_version: str
    reauthorization_asked: dt.datetime | None = None

    def as_json(self, base_url: str) -> Json:
        return {
            "@odata.context": f"{base_url}/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.app_id,
            "changeType": ",".join(self.change_types),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "notificationContentType": None,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": fmt_utc(self.expiration),
            "creatorId": self.creator_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": self.tls_version,
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


def _offset_time(value: dt.datetime) -> str:
    return fmt_local(value) + "+00:00"


NOT_200 = (
    "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation "
    "request."
)
NOT_TEXT = "Subscription validation request failed. Response must have Content-Type text/plain."
NOT_TOKEN = (
    "Subscription validation request failed. Response must exactly match validationToken query parameter."
)


def handshake(url: str, timeout: float, verify: str | bool) -> str | None:
    """Run the validation handshake against ``url``; ``None`` when it passed, else why it failed."""
    token = f"Validation: Testing client application reachability for subscription Request-Id: {new_guid()}"
    target = url + ("&" if "?" in url else "?") + "validationToken=" + urllib.parse.quote_plus(token)
    started = time.monotonic()
    try:
        with requests.Session() as session:
            response = session.post(
                target,
                data=b"",
                headers={"Content-Type": "text/plain; charset=utf-8"},
                timeout=timeout,
                verify=verify,
            )
    except requests.RequestException:
        return NOT_200
    if time.monotonic() - started > timeout:
        return "Subscription validation request timed out."
    if response.status_code != 200:
        return NOT_200
    content_type = response.headers.get("Content-Type", "")
    if not content_type.lower().startswith("text/plain"):
        return NOT_TEXT
    if response.content.decode("utf-8", "replace") != token:
        return NOT_TOKEN
    return None


MailboxResolver = Callable[[Principal, str | None], Mailbox]


class SubscriptionManager:
    def __init__(
        self, settings: EmulatorSettings, clock: Clock, notifier_factory: Callable[..., Notifier]
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._subs: dict[str, Subscription] = {}
        self._lock = threading.Lock()
        self.notifier = notifier_factory(on_dropped=self._missed)

    # --- the Graph API ---

    def create(
        self, principal: Principal, body: Any, resolve: MailboxResolver, immutable: bool
    ) -> Subscription:
        if not isinstance(body, dict):
            raise GraphError(400, "BadRequest", "The request body must be a JSON object.")
        for required in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if not body.get(required):
                raise GraphError(400, "InvalidRequest", f"The property '{required}' is required.")
        if body.get("includeResourceData"):
            raise GraphError(
                400, "InvalidRequest", "includeResourceData (rich notifications) is not emulated."
            )
        change_types = tuple(part.strip() for part in str(body["changeType"]).split(","))
        if not change_types or any(part not in CHANGE_TYPES for part in change_types):
            raise GraphError(400, "InvalidRequest", f"Invalid changeType '{body['changeType']}'.")
        client_state = body.get("clientState")
        if client_state is not None and (not isinstance(client_state, str) or len(client_state) > 128):
            raise GraphError(400, "InvalidRequest", "clientState must be a string of at most 128 characters.")
        selector, kind, container_ident = self._parse_resource(str(body["resource"]))
        mailbox = resolve(principal, selector)
        if not principal.has_any((PERMISSIONS_APP if principal.is_app else PERMISSIONS)[kind]):
            raise forbidden()
        container = self._container(mailbox, kind, container_ident)
        expiration = self._expiration(body["expirationDateTime"], kind)
        urls = [self._check_url(body["notificationUrl"], "notificationUrl")]
        lifecycle = body.get("lifecycleNotificationUrl")
        if lifecycle:
            urls.append(self._check_url(lifecycle, "lifecycleNotificationUrl"))
        with self._lock:
            count = sum(1 for s in self._subs.values() if s.mailbox_id == mailbox.user_id)
        if count >= self._settings.max_subscriptions_per_mailbox:
            raise GraphError(403, "ExtensionError", "Subscription limit reached for this mailbox.")
        for url in urls:
            self._validate(url)
        subscription = Subscription(
            new_guid(), str(body["resource"]), kind, mailbox.user_id, container, change_types, urls[0],
            lifecycle or None, expiration, client_state, principal.app_id, principal.object_id,
            mailbox.owner.tenant_id, immutable, str(body.get("latestSupportedTlsVersion") or "v1_2"),
        )  # fmt: skip
        with self._lock:
            self._subs[subscription.id] = subscription
        return subscription

    def get(self, principal: Principal | None, subscription_id: str) -> Subscription:
        self._purge_expired()
        with self._lock:
            subscription = self._subs.get(subscription_id)
        if subscription is None or (principal is not None and subscription.app_id != principal.app_id):
            raise GraphError(
                404, "ResourceNotFound", f"The object was not found: subscription '{subscription_id}'."
            )
        return subscription

    def all(self, principal: Principal | None) -> list[Subscription]:
        self._purge_expired()
        with self._lock:
            return [s for s in self._subs.values() if principal is None or s.app_id == principal.app_id]

    def update(self, principal: Principal, subscription_id: str, body: Any) -> Subscription:
        subscription = self.get(principal, subscription_id)
        if not isinstance(body, dict):
            raise GraphError(400, "BadRequest", "The request body must be a JSON object.")
        unknown = set(body) - {"expirationDateTime", "notificationUrl", "@odata.type"}
        if unknown:
            raise GraphError(
                400,
                "InvalidRequest",
                f"Only expirationDateTime and notificationUrl can be updated: {sorted(unknown)}",
            )
        expiration = (
            self._expiration(body["expirationDateTime"], subscription.kind)
            if "expirationDateTime" in body
            else None
        )
        if body.get("notificationUrl") and body["notificationUrl"] != subscription.notification_url:
            url = self._check_url(body["notificationUrl"], "notificationUrl")
            self._validate(url)
            subscription.notification_url = url
        if expiration is not None:
            subscription.expiration = expiration
        subscription.reauthorization_asked = None  # a PATCH reauthorizes as well as renews
        return subscription

    def reauthorize(self, principal: Principal, subscription_id: str) -> None:
        self.get(principal, subscription_id).reauthorization_asked = None

    def delete(self, principal: Principal | None, subscription_id: str) -> Subscription:
        subscription = self.get(principal, subscription_id)
        with self._lock:
            self._subs.pop(subscription_id, None)
        return subscription

    # --- lifecycle (control API) ---

    def send_lifecycle(self, subscription_id: str, event: str) -> bool:
        """Post a lifecycle notification; False when the subscription has no lifecycleNotificationUrl."""
        if event not in LIFECYCLE_EVENTS:
            raise GraphError(
                400, "BadRequest", f"lifecycleEvent must be one of {', '.join(LIFECYCLE_EVENTS)}."
            )
        subscription = self.get(None, subscription_id)
        if event == "reauthorizationRequired":
            subscription.reauthorization_asked = self._clock.now()
        if event == "subscriptionRemoved":
            with self._lock:
                self._subs.pop(subscription_id, None)
        if not subscription.lifecycle_url:
            return False
        item = {
            "subscriptionId": subscription.id,
            "subscriptionExpirationDateTime": _offset_time(subscription.expiration),
            "tenantId": subscription.tenant_id,
            "clientState": subscription.client_state,
            "lifecycleEvent": event,
        }
        self.notifier.enqueue(subscription.lifecycle_url, item, subscription.id, lifecycle=True)
        return True

    def remove(self, subscription_id: str, *, notify: bool) -> None:
        if notify:
            self.send_lifecycle(subscription_id, "subscriptionRemoved")
        else:
            self.delete(None, subscription_id)

    def _missed(self, dropped: list[Pending]) -> None:
        if not self._settings.send_missed_on_drop:
            return
        for subscription_id in dict.fromkeys(p.subscription_id for p in dropped):
            try:
                self.send_lifecycle(subscription_id, "missed")
            except GraphError:
                continue  # the subscription is gone meanwhile

    # --- fan-out ---

    def publish(self, mailbox: Mailbox, changes: list[Change]) -> None:
        if not changes:
            return
        self._purge_expired()
        now = self._clock.now()
        grace = dt.timedelta(seconds=self._settings.reauthorization_grace_seconds)
        with self._lock:
            subs = [s for s in self._subs.values() if s.mailbox_id == mailbox.user_id]
        outbox: list[tuple[str, Json, str]] = []
        for subscription in subs:
            if subscription.reauthorization_asked and now - subscription.reauthorization_asked > grace:
                continue  # nobody reauthorized: Graph pauses delivery and these changes are lost
            for change in changes:
                if change.kind != subscription.kind or change.change_type not in subscription.change_types:
                    continue
                if subscription.container is not None and change.parent != subscription.container:
                    continue
                outbox.append(
                    (
                        subscription.notification_url,
                        self._item(subscription, mailbox, change),
                        subscription.id,
                    )
                )
        for url, item, subscription_id in outbox:
            self.notifier.enqueue(url, item, subscription_id)

    def _item(self, subscription: Subscription, mailbox: Mailbox, change: Change) -> Json:
        if change.kind == "events":
            item_id = Calendar.id_for(change.ref, subscription.immutable)
        else:
            item_id = render_id(change.ref[1], subscription.immutable)
        name = ODATA_TYPES[subscription.kind]
        path = f"Users/{mailbox.user_id}/{name}s/{item_id}"
        resource_data: Json = {"@odata.type": f"#Microsoft.Graph.{name}", "@odata.id": path}
        if change.etag and change.change_type != "deleted":
            resource_data["@odata.etag"] = change.etag
        resource_data["id"] = item_id
        return {
            "id": new_guid().replace("-", "")[:16],
            "subscriptionId": subscription.id,
            "subscriptionExpirationDateTime": _offset_time(subscription.expiration),
            "changeType": change.change_type,
            "resource": path,
            "resourceData": resource_data,
            "clientState": subscription.client_state,
            "tenantId": subscription.tenant_id,
        }

    # --- helpers ---

    def _purge_expired(self) -> None:
        now = self._clock.now()
        with self._lock:
            for subscription_id in [k for k, s in self._subs.items() if s.expiration <= now]:
                del self._subs[subscription_id]

    def _parse_resource(self, resource: str) -> tuple[str | None, str, str | None]:
        path = normalize_path(resource.split("?", 1)[0]).strip("/")
        selector: str | None
        if path.lower().startswith("me/"):
            selector, rest = None, path[3:]
        elif path.lower().startswith("users/") and path.count("/") >= 2:
            _, selector, rest = path.split("/", 2)
            selector = selector.split("@", 1)[0] if selector.count("@") > 1 else selector
        else:
            raise GraphError(400, "InvalidRequest", f"Unsupported resource '{resource}'.")
        for pattern, kind, container in RESOURCE_PATTERNS:
            match = pattern.match(rest)
            if match:
                ident = match.group(container) if isinstance(container, int) else container
                return selector, kind, ident
        raise GraphError(400, "InvalidRequest", f"Unsupported resource '{resource}'.")

    def _container(self, mailbox: Mailbox, kind: str, ident: str | None) -> bytes | None:
        if ident is None:
            return None
        store = {"contacts": mailbox.contacts, "messages": mailbox.messages, "todoTask": mailbox.tasks}[kind]
        return store.container(ident).key

    def _expiration(self, value: Any, kind: str) -> dt.datetime:
        try:
            expiration = parse_offset_datetime(str(value))
        except ValueError as exc:
            raise GraphError(400, "InvalidRequest", f"Invalid expirationDateTime '{value}'.") from exc
        now = self._clock.now()
        limit = self._settings.max_lifetime_minutes.get(kind, 4230)
        if expiration <= now:
            raise GraphError(400, "InvalidRequest", "Subscription expiration must be in the future.")
        if expiration - now > dt.timedelta(minutes=limit):
            raise GraphError(
                400,
                "ExtensionError",
                "Operation: Create; Exception: [Status Code: BadRequest; Reason: Subscription expiration can "
                f"only be {limit} minutes in the future.]",
            )
        return expiration

    def _check_url(self, value: Any, name: str) -> str:
        parsed = urllib.parse.urlsplit(str(value))
        schemes = ("https",) if self._settings.require_https_webhooks else ("https", "http")
        if parsed.scheme not in schemes or not parsed.netloc:
            raise GraphError(400, "InvalidRequest", f"The {name} must be an absolute https URL.")
        return str(value)

    def _validate(self, url: str) -> None:
        problem = handshake(url, self._settings.handshake_timeout, self._settings.webhook_ca_path or True)
        if problem is not None:
            raise GraphError(400, "ValidationError", problem)
