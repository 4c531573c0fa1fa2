"""Contacts (in contact folders), To Do tasks (in lists) and messages (in mail folders): CRUD and delta.

Each is an ``ItemStore``: containers (folders or lists) holding items, a change log per container for item
delta, and one for the containers themselves. What differs per kind (defaults, writable properties, rendering)
lives in an ``ItemKind``.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from devkit.graph_emulator.delta import ChangeLog
from devkit.graph_emulator.settings import Clock
from devkit.graph_emulator.util import (
    Change,
    ChangeKeys,
    GraphError,
    Json,
    body_preview,
    etag,
    fmt_local,
    fmt_utc,
    new_guid,
    new_record_key,
    parse_id,
    render_id,
)


@dataclass
class Item:
    key: bytes
    parent: bytes
    props: Json
    change_key: str
    created: dt.datetime
    modified: dt.datetime


@dataclass
class Container:
    key: bytes
    props: Json
    change_key: str
    well_known: str | None = None
    log: ChangeLog = field(default_factory=ChangeLog)


@dataclass(frozen=True)
class ItemKind:
    name: str  # resource kind for subscriptions: contacts / todoTask / messages
    odata_type: str
    container_odata_type: str
    writable: frozenset[str]
    container_writable: frozenset[str]
    defaults: Callable[[Json, dt.datetime], Json]
    render: Callable[[Item, str, str, Json], Json]  # item, id, parent id, base doc -> doc
    render_container: Callable[[Container, str], Json]


def _ensure_writable(payload: Any, allowed: frozenset[str], type_name: str) -> Json:
    if not isinstance(payload, Mapping):
        raise GraphError(400, "RequestBodyRead", "The request body must be a JSON object.")
    cleaned: Json = {}
    for name, value in payload.items():
        if "@odata." in name or name in ("id", "changeKey", "createdDateTime", "lastModifiedDateTime"):
            continue
        if name not in allowed:
            raise GraphError(
                400, "RequestBodyRead", f"The property '{name}' does not exist on type '{type_name}'."
            )
        cleaned[name] = copy.deepcopy(value)
    return cleaned


class ItemStore:
    def __init__(self, kind: ItemKind, clock: Clock, change_keys: ChangeKeys) -> None:
        self.kind = kind
        self.containers: dict[bytes, Container] = {}
        self.items: dict[bytes, Item] = {}
        self.container_log = ChangeLog()
        self._clock = clock
        self._keys = change_keys

    # --- containers ---

    def add_container(self, props: Json, well_known: str | None = None) -> Container:
        cleaned = _ensure_writable(props, self.kind.container_writable, self.kind.container_odata_type)
        if not isinstance(cleaned.get("displayName"), str) or not cleaned["displayName"]:
            raise GraphError(400, "ErrorInvalidRequest", "displayName is required.")
        container = Container(new_record_key(), cleaned, self._keys.next(), well_known)
        self.containers[container.key] = container
        self.container_log.append(("f", container.key))
        return container

    def container(self, ident: str) -> Container:
        lowered = ident.lower()
        for container in self.containers.values():
            if container.well_known and container.well_known.lower() == lowered:
                return container
        key = parse_id(ident)
        found = self.containers.get(key)
        if found is None:
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return found

    def default_container(self) -> Container:
        return next(iter(self.containers.values()))

    def update_container(self, container: Container, payload: Any) -> None:
        cleaned = _ensure_writable(payload, self.kind.container_writable, self.kind.container_odata_type)
        container.props.update(cleaned)
        container.change_key = self._keys.next()
        self.container_log.append(("f", container.key))

    def delete_container(self, container: Container) -> list[Change]:
        if container.well_known:
            raise GraphError(
                403, "ErrorDeleteDistinguishedFolder", "Distinguished folders cannot be deleted."
            )
        changes = [self.delete(item) for item in list(self.items.values()) if item.parent == container.key]
        del self.containers[container.key]
        self.container_log.append(("f", container.key))
        return changes

    def render_container(self, container: Container, immutable: bool) -> Json:
        doc = {"@odata.etag": etag(container.change_key), "id": render_id(container.key, immutable)}
        doc.update(self.kind.render_container(container, render_id(container.key, immutable)))
        return doc

    # --- items ---

    def get(self, ident: str, container: Container | None = None) -> Item:
        item = self.items.get(parse_id(ident))
        if item is None or (container is not None and item.parent != container.key):
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return item

    def in_container(self, container: Container) -> list[Item]:
        return [item for item in self.items.values() if item.parent == container.key]

    def create(self, container: Container, payload: Any) -> tuple[Item, Change]:
        cleaned = _ensure_writable(payload, self.kind.writable, self.kind.odata_type)
        now = self._clock.now()
        props = self.kind.defaults(cleaned, now)
        item = Item(new_record_key(), container.key, props, self._keys.next(), now, now)
        self.items[item.key] = item
        container.log.append(("i", item.key))
        return item, Change("created", ("i", item.key), etag(item.change_key), self.kind.name, container.key)

    def update(self, item: Item, payload: Any) -> Change:
        cleaned = _ensure_writable(payload, self.kind.writable, self.kind.odata_type)
        now = self._clock.now()
        merged = {**item.props, **cleaned}
        if (
            self.kind.name == "todoTask"
            and cleaned.get("status") == "completed"
            and not cleaned.get("completedDateTime")
        ):
            merged["completedDateTime"] = {"dateTime": fmt_local(now), "timeZone": "UTC"}
        item.props = self.kind.defaults(merged, item.created)
        item.change_key = self._keys.next()
        item.modified = now
        self.containers[item.parent].log.append(("i", item.key))
        return Change("updated", ("i", item.key), etag(item.change_key), self.kind.name, item.parent)

    def delete(self, item: Item) -> Change:
        del self.items[item.key]
        container = self.containers.get(item.parent)
        if container is not None:
            container.log.append(("i", item.key))
        return Change("deleted", ("i", item.key), None, self.kind.name, item.parent)

    def render(self, item: Item, immutable: bool) -> Json:
        item_id = render_id(item.key, immutable)
        base: Json = {
            "@odata.etag": etag(item.change_key),
            "id": item_id,
            "createdDateTime": fmt_utc(item.created),
            "lastModifiedDateTime": fmt_utc(item.modified),
        }
        return self.kind.render(item, item_id, render_id(item.parent, immutable), base)


# --- contacts ---------------------------------------------------------------------------------------------

CONTACT_STRINGS = [
    "fileAs",
    "displayName",
    "givenName",
    "initials",
    "middleName",
    "nickName",
    "surname",
    "title",
    "yomiGivenName",
    "yomiSurname",
    "yomiCompanyName",
    "generation",
    "jobTitle",
    "companyName",
    "department",
    "officeLocation",
    "profession",
    "businessHomePage",
    "assistantName",
    "manager",
    "mobilePhone",
    "spouseName",
    "personalNotes",
]
CONTACT_LISTS = ("imAddresses", "homePhones", "businessPhones", "children", "emailAddresses", "categories")
CONTACT_ADDRESSES = ("homeAddress", "businessAddress", "otherAddress")


def _contact_defaults(props: Json, _now: dt.datetime) -> Json:
    result: Json = {name: props.get(name) for name in CONTACT_STRINGS}
    result.update({name: list(props.get(name) or []) for name in CONTACT_LISTS})
    result.update({name: dict(props.get(name) or {}) for name in CONTACT_ADDRESSES})
    result["birthday"] = props.get("birthday")
    if "singleValueExtendedProperties" in props:
        result["singleValueExtendedProperties"] = props["singleValueExtendedProperties"]
    if not result["displayName"]:
        parts = [result.get("givenName"), result.get("middleName"), result.get("surname")]
        result["displayName"] = " ".join(str(part) for part in parts if part) or None
    if not result["fileAs"]:
        result["fileAs"] = result["displayName"] or ""
    return result


def _render_contact(item: Item, _item_id: str, parent_id: str, base: Json) -> Json:
    doc = dict(base)
    doc["changeKey"] = item.change_key
    doc["categories"] = list(item.props.get("categories") or [])
    doc["parentFolderId"] = parent_id
    doc.update({k: copy.deepcopy(v) for k, v in item.props.items() if k not in ("categories",)})
    doc.pop("singleValueExtendedProperties", None)
    return doc


CONTACTS = ItemKind(
    name="contacts",
    odata_type="microsoft.graph.contact",
    container_odata_type="microsoft.graph.contactFolder",
    writable=frozenset(CONTACT_STRINGS)
    | frozenset(CONTACT_LISTS)
    | frozenset(CONTACT_ADDRESSES)
    | {"birthday", "singleValueExtendedProperties"},
    container_writable=frozenset({"displayName", "parentFolderId"}),
    defaults=_contact_defaults,
    render=_render_contact,
    render_container=lambda c, _id: {"displayName": c.props["displayName"], "parentFolderId": None},
)

# --- To Do ------------------------------------------------------------------------------------------------

TASK_STATUSES = ("notStarted", "inProgress", "completed", "waitingOnOthers", "deferred")
TASK_OPTIONAL = ("dueDateTime", "startDateTime", "reminderDateTime", "completedDateTime", "recurrence")


def _task_defaults(props: Json, _now: dt.datetime) -> Json:
    if not isinstance(props.get("title", ""), str):
        raise GraphError(400, "RequestBodyRead", "Property 'title' must be a string.")
    status = props.get("status", "notStarted")
    if status not in TASK_STATUSES:
        raise GraphError(400, "RequestBodyRead", f"Cannot convert the literal '{status}' to 'taskStatus'.")
    importance = props.get("importance", "normal")
    if importance not in ("low", "normal", "high"):
        raise GraphError(
            400, "RequestBodyRead", f"Cannot convert the literal '{importance}' to 'importance'."
        )
    body = props.get("body") or {}
    result: Json = {
        "importance": importance,
        "isReminderOn": bool(props.get("isReminderOn", False)),
        "status": status,
        "title": props.get("title", ""),
        "categories": list(props.get("categories") or []),
        "body": {
            "content": str(body.get("content", "")),
            "contentType": str(body.get("contentType", "text")).lower(),
        },
    }
    for name in TASK_OPTIONAL:
        if props.get(name) is not None:
            result[name] = copy.deepcopy(props[name])
    if props.get("linkedResources"):
        result["linkedResources"] = [
            {"id": resource.get("id") or new_guid(), **{k: v for k, v in resource.items() if k != "id"}}
            for resource in props["linkedResources"]
        ]
    return result


def _render_task(item: Item, _item_id: str, _parent_id: str, base: Json) -> Json:
    doc = {"@odata.etag": base["@odata.etag"]}
    props = item.props
    doc.update({k: props[k] for k in ("importance", "isReminderOn", "status", "title")})
    doc.update(
        {"createdDateTime": base["createdDateTime"], "lastModifiedDateTime": base["lastModifiedDateTime"]}
    )
    doc.update({"hasAttachments": False, "categories": list(props["categories"]), "id": base["id"]})
    doc["body"] = dict(props["body"])
    doc["bodyLastModifiedDateTime"] = base["lastModifiedDateTime"]
    for name in (*TASK_OPTIONAL, "linkedResources"):
        if name in props:
            doc[name] = copy.deepcopy(props[name])
    return doc


TASKS = ItemKind(
    name="todoTask",
    odata_type="microsoft.graph.todoTask",
    container_odata_type="microsoft.graph.todoTaskList",
    writable=frozenset(
        {
            "title",
            "body",
            "importance",
            "status",
            "categories",
            "isReminderOn",
            "linkedResources",
            *TASK_OPTIONAL,
        }
    ),
    container_writable=frozenset({"displayName"}),
    defaults=_task_defaults,
    render=_render_task,
    render_container=lambda c, _id: {
        "displayName": c.props["displayName"],
        "isOwner": True,
        "isShared": False,
        "wellknownListName": c.well_known or "none",
    },
)

# --- messages ---------------------------------------------------------------------------------------------

RECIPIENT_LISTS = ("toRecipients", "ccRecipients", "bccRecipients", "replyTo")


def _recipient(value: Any) -> Any:
    """Graph fills a recipient's name with its address when none was given."""
    if not isinstance(value, Mapping) or not isinstance(value.get("emailAddress"), Mapping):
        return copy.deepcopy(value)
    email = dict(value["emailAddress"])
    email.setdefault("name", email.get("address", ""))
    return {**value, "emailAddress": {"name": email["name"], "address": email.get("address", "")}}


def _message_defaults(props: Json, now: dt.datetime) -> Json:
    body = props.get("body") or {}
    content_type = str(body.get("contentType", "html")).lower()
    result: Json = {
        "subject": props.get("subject") or "",
        "body": {"contentType": content_type, "content": str(body.get("content", ""))},
        "importance": props.get("importance", "normal"),
        "isRead": bool(props.get("isRead", False)),
        "isDraft": bool(props.get("isDraft", True)),
        "categories": list(props.get("categories") or []),
        "receivedDateTime": props.get("receivedDateTime") or now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sentDateTime": props.get("sentDateTime")
        or props.get("receivedDateTime")
        or now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "internetMessageId": props.get("internetMessageId") or f"<{new_guid()}@emulator.local>",
        "conversationId": props.get("conversationId") or render_id(new_record_key(), False),
        "inferenceClassification": props.get("inferenceClassification", "focused"),
        "flag": props.get("flag") or {"flagStatus": "notFlagged"},
    }
    for name in RECIPIENT_LISTS:
        result[name] = [_recipient(r) for r in props.get(name) or []]
    for name in ("from", "sender"):
        result[name] = _recipient(props.get(name) or props.get("from") or props.get("sender"))
    return result


def _render_message(item: Item, item_id: str, parent_id: str, base: Json) -> Json:
    props = item.props
    doc = dict(base)
    doc["changeKey"] = item.change_key
    doc["categories"] = list(props["categories"])
    doc.update({k: props[k] for k in ("receivedDateTime", "sentDateTime")})
    doc.update(
        {
            "hasAttachments": False,
            "internetMessageId": props["internetMessageId"],
            "subject": props["subject"],
        }
    )
    doc["bodyPreview"] = body_preview(props["body"]["content"], props["body"]["contentType"])
    doc.update({"importance": props["importance"], "parentFolderId": parent_id})
    doc.update({"conversationId": props["conversationId"], "isDeliveryReceiptRequested": False})
    doc.update({"isReadReceiptRequested": False, "isRead": props["isRead"], "isDraft": props["isDraft"]})
    doc["webLink"] = (
        f"https://outlook.office365.com/owa/?ItemID={item_id}&exvsurl=1&viewmodel=ReadMessageItem"
    )
    doc["inferenceClassification"] = props["inferenceClassification"]
    doc["body"] = dict(props["body"])
    doc.update({name: copy.deepcopy(props[name]) for name in ("sender", "from", *RECIPIENT_LISTS)})
    doc["flag"] = dict(props["flag"])
    return doc


MESSAGES = ItemKind(
    name="messages",
    odata_type="microsoft.graph.message",
    container_odata_type="microsoft.graph.mailFolder",
    writable=frozenset(
        {
            "subject",
            "body",
            "importance",
            "isRead",
            "isDraft",
            "categories",
            "receivedDateTime",
            "sentDateTime",
        }
        | {"internetMessageId", "conversationId", "inferenceClassification", "flag", "from", "sender"}
        | set(RECIPIENT_LISTS)
    ),
    container_writable=frozenset({"displayName", "isHidden"}),
    defaults=_message_defaults,
    render=_render_message,
    render_container=lambda c, _id: {
        "displayName": c.props["displayName"],
        "parentFolderId": None,
        "childFolderCount": 0,
        "isHidden": bool(c.props.get("isHidden", False)),
    },
)

WELL_KNOWN_MAIL_FOLDERS: tuple[tuple[str, str], ...] = (
    ("inbox", "Inbox"),
    ("drafts", "Drafts"),
    ("sentitems", "Sent Items"),
    ("deleteditems", "Deleted Items"),
    ("archive", "Archive"),
)
