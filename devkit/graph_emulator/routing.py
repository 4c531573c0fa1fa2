"""Requests, responses and the route table shared by the HTTP server, ``$batch`` and the control API."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from devkit.graph_emulator.util import GraphError, Json, Preferences

if TYPE_CHECKING:
    from devkit.graph_emulator.auth import Principal
    from devkit.graph_emulator.store import Mailbox

_PAREN_SEGMENT = re.compile(r"^([^(]+)\('([^']*)'\)$|^([^(]+)\(([^)']*)\)$")


class Headers(dict[str, str]):
    """Case-insensitive header lookups (keys are stored lower-case)."""

    @classmethod
    def of(cls, items: Mapping[str, str] | list[tuple[str, str]]) -> Headers:
        headers = cls()
        pairs = items.items() if isinstance(items, Mapping) else items
        for name, value in pairs:
            lowered = name.lower()
            headers[lowered] = f"{headers[lowered]}, {value}" if lowered in headers else value
        return headers

    def value(self, name: str) -> str | None:
        return self.get(name.lower())


@dataclass
class Request:
    method: str
    path: str  # after /v1.0, segments decoded, "name('x')" rewritten to "name/x"
    query: dict[str, str]  # keys lower-cased (Graph query parameters are case-insensitive)
    headers: Headers
    body: bytes = b""
    request_id: str = ""
    in_batch: bool = False
    outlook: bool = False  # the user acting in Outlook (control API): no auth, no throttling
    principal: Principal | None = None
    mailbox: Mailbox | None = None
    prefix: str = ""  # "/me" or "/users/{id}" as requested, for building links
    prefs: Preferences = field(default_factory=Preferences)
    query_string: str = ""

    def json(self) -> Any:
        if not self.body.strip():
            raise GraphError(400, "BadRequest", "Empty Payload. JSON content expected.")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise GraphError(400, "BadRequest", "Unable to read JSON request payload.") from exc

    def q(self, name: str) -> str | None:
        return self.query.get(name.lower())

    @property
    def client_request_id(self) -> str:
        return self.headers.value("client-request-id") or self.request_id


@dataclass
class Response:
    status: int
    body: Json | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def split_target(target: str) -> tuple[str, str]:
    """A request target into (path, query string)."""
    path, _, query = target.partition("?")
    return path, query


def normalize_path(raw_path: str) -> str:
    segments = []
    for raw in raw_path.split("/"):
        if not raw:
            continue
        segment = urllib.parse.unquote(raw)
        match = _PAREN_SEGMENT.match(segment)
        if match and not segment.startswith("$"):
            name = match.group(1) or match.group(3)
            value = match.group(2) if match.group(1) else match.group(4)
            segments.extend([name, value])
        else:
            segments.append(segment)
    return "/" + "/".join(segments)


def parse_query(query: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        result.setdefault(name.lower(), value)
    return result


Handler = Callable[..., Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    mailbox: bool
    permissions: tuple[str, ...]


class Router:
    """Routes match the path after ``/me`` or ``/users/{id}`` (mailbox routes) or the whole path."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(
        self,
        method: str,
        pattern: str,
        handler: Handler,
        *,
        mailbox: bool = True,
        permissions: tuple[str, ...] = (),
    ) -> None:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$", re.IGNORECASE)
        self.routes.append(Route(method, regex, handler, mailbox, permissions))

    def match(self, method: str, path: str, *, mailbox: bool) -> tuple[Route, dict[str, str]]:
        allowed = False
        for route in self.routes:
            if route.mailbox != mailbox:
                continue
            found = route.pattern.match(path)
            if found:
                if route.method == method:
                    return route, found.groupdict()
                allowed = True
        if allowed:
            raise GraphError(
                405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target."
            )
        raise GraphError(
            400,
            "BadRequest",
            f"Resource not found for the segment '{path.strip('/').split('/')[-1] or path}'.",
        )


def json_response(status: int, body: Json, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, body, dict(headers or {}))


def collection(context: str, values: list[Json], next_link: str | None = None, **extra: Any) -> Json:
    body: Json = {"@odata.context": context}
    body.update(extra)
    if next_link:
        body["@odata.nextLink"] = next_link
    body["value"] = values
    return body


def replace_query(query_string: str, **changes: str | None) -> str:
    """The query string with some parameters set (or removed when ``None``), the others kept in order."""
    pairs = [(k, v) for k, v in urllib.parse.parse_qsl(query_string, keep_blank_values=True)]
    lowered = {name.lower(): name for name in changes}
    kept = [(k, v) for k, v in pairs if k.lower() not in lowered]
    kept.extend((name, value) for name, value in changes.items() if value is not None)
    return urllib.parse.urlencode(kept, safe="$,:'()", quote_via=urllib.parse.quote)
