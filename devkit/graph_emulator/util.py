"""Wire formats shared by the emulator: Graph date-times, opaque ids, change keys, errors, Prefer headers.

Terminology used across the package:
- *record key*: the emulator's internal identity of a stored item (bytes); never shown to clients.
- *id*: the Graph id a client sees. The same record renders as a regular id (``AAMkAG…``) or, under
  ``Prefer: IdType="ImmutableId"``, as an immutable id (``AAkALg…``); both forms are accepted on input.
- *changeKey*: a version stamp that changes on every write; ``@odata.etag`` is ``W/"<changeKey>"``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import itertools
import os
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

UTC = dt.UTC
GRAPH_ROOT = "https://graph.microsoft.com"

REGULAR_PREFIX = "AAMkAG"
IMMUTABLE_PREFIX = "AAkALg"
ZERO_TIME = "0001-01-01T00:00:00Z"

Json = dict[str, Any]


class GraphError(Exception):
    """An error answer in Graph's shape: ``{"error": {"code", "message", "innerError"}}``."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def bad_request(message: str, code: str = "BadRequest") -> GraphError:
    return GraphError(400, code, message)


def not_found(message: str = "The specified object was not found in the store.") -> GraphError:
    return GraphError(404, "ErrorItemNotFound", message)


def error_body(code: str, message: str, *, request_id: str, client_request_id: str, now: dt.datetime) -> Json:
    inner: Json = {"date": now.strftime("%Y-%m-%dT%H:%M:%S"), "request-id": request_id}
    inner["client-request-id"] = client_request_id
    return {"error": {"code": code, "message": message, "innerError": inner}}


def throttled_body(code: str, message: str, *, request_id: str, now: dt.datetime) -> Json:
    """The 429 body as in throttled_429_response.json (innerError carries code/status as strings)."""
    return {
        "error": {
            "code": code,
            "innerError": {
                "code": "429",
                "date": now.strftime("%Y-%m-%dT%H:%M:%S"),
                "message": "Please retry after",
                "request-id": request_id,
                "status": "429",
            },
            "message": message,
        }
    }


@dataclass(frozen=True)
class Change:
    """A change subscriptions hear about: ``created`` / ``updated`` / ``deleted`` of a stored item.

    ``kind`` is the resource kind (``events``, ``contacts``, ``messages``, ``todoTask``); ``parent`` is the
    key of the folder or list holding the item, when it has one.
    """

    change_type: str
    ref: tuple[Any, ...]
    etag: str | None
    kind: str = "events"
    parent: bytes | None = None


# --- date-times -------------------------------------------------------------------------------------------


def fmt_local(value: dt.datetime) -> str:
    """``2017-04-21T10:00:00.0000000``: Graph's dateTimeTimeZone.dateTime, 7 fractional digits, no offset."""
    return value.replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0"


def fmt_utc(value: dt.datetime) -> str:
    """``2017-10-07T04:59:12.9698856Z``: Graph's DateTimeOffset as Outlook writes it."""
    return fmt_local(value.astimezone(UTC)) + "Z"


def parse_offset_datetime(text: str) -> dt.datetime:
    """An ISO 8601 date-time; a value without an offset is taken as UTC."""
    if not isinstance(text, str) or not text:
        raise ValueError("not a date-time")
    value = dt.datetime.fromisoformat(text.strip().replace(" ", "+"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# --- ids and change keys ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def new_record_key() -> bytes:
    return b"\x00" + os.urandom(16)


def render_id(key: bytes, immutable: bool) -> str:
    return (IMMUTABLE_PREFIX if immutable else REGULAR_PREFIX) + _b64(key)


def parse_id(text: str) -> bytes:
    """The record key inside an id in either form; raises ``GraphError`` 400 for malformed ids."""
    for prefix in (REGULAR_PREFIX, IMMUTABLE_PREFIX):
        if text.startswith(prefix):
            payload = text[len(prefix) :]
            try:
                return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            except (binascii.Error, ValueError):
                break
    raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")


class ChangeKeys:
    """Change keys shaped like Outlook's (base64 of a per-emulator prefix and a counter)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(16)
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            number = next(self._counter)
        return base64.b64encode(self._prefix + number.to_bytes(6, "big")).decode("ascii")


def etag(change_key: str) -> str:
    return f'W/"{change_key}"'


def new_guid() -> str:
    return str(uuid.uuid4())


# --- Prefer headers --------------------------------------------------------------------------------------

_PREFER_ITEM = re.compile(r'\s*([A-Za-z][\w.\-]*)\s*(?:=\s*("(?:[^"]*)"|[^,;]*))?\s*')


@dataclass
class Preferences:
    """The ``Prefer`` values the emulator honours, and the ones it applied (for ``Preference-Applied``)."""

    time_zone: str | None = None
    max_page_size: int | None = None
    immutable_ids: bool = False
    body_content_type: str | None = None
    applied: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, values: list[str]) -> Preferences:
        prefs = cls()
        for header in values:
            for raw in header.split(","):
                match = _PREFER_ITEM.fullmatch(raw)
                if not match:
                    continue
                name, value = match.group(1).lower(), (match.group(2) or "").strip()
                unquoted = value[1:-1] if value.startswith('"') and value.endswith('"') else value
                if name == "outlook.timezone":
                    prefs.time_zone = unquoted
                elif name == "odata.maxpagesize" and unquoted.isdigit():
                    prefs.max_page_size = int(unquoted)
                elif name == "idtype" and unquoted.lower() == "immutableid":
                    prefs.immutable_ids = True
                elif name == "outlook.body-content-type" and unquoted.lower() in ("text", "html"):
                    prefs.body_content_type = unquoted.lower()
        return prefs

    def apply(self, text: str) -> None:
        if text not in self.applied:
            self.applied.append(text)


def html_to_text(html: str) -> str:
    text = re.sub(r"(?is)<(script|style|head)[^>]*>.*?</\1>", "", html)
    text = re.sub(r"(?i)<br\s*/?>|</p>|</div>", "\n", text)
    text = re.sub(r"<[^>]+>", "", text)
    for entity, char in (("&nbsp;", " "), ("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&amp;", "&")):
        text = text.replace(entity, char)
    return re.sub(r"[ \t\r\f\v]+", " ", re.sub(r"\n\s*\n+", "\n", text)).strip()


def body_preview(content: str, content_type: str) -> str:
    text = html_to_text(content) if content_type == "html" else content.strip()
    return re.sub(r"\s+", " ", text)[:255]


def utc_now() -> dt.datetime:
    return dt.datetime.now(UTC)
