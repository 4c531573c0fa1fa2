"""Helpers shared by the resource handlers: paging with ``$top``/``$skip``, ``$filter``, delta rounds."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from devkit.graph_emulator.delta import ChangeLog, DeltaState, SyncStateGoneError, Window
from devkit.graph_emulator.routing import Request, Response, collection, replace_query
from devkit.graph_emulator.util import GraphError, Json, parse_offset_datetime

if TYPE_CHECKING:
    from devkit.graph_emulator.app import GraphApp
    from devkit.graph_emulator.store import Mailbox

T = TypeVar("T")
_EQ = re.compile(r"^\s*([\w/]+)\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)
_EXT = re.compile(
    r"^\s*singleValueExtendedProperties/any\(\s*(\w+)\s*:\s*\1/id\s+eq\s+'((?:[^']|'')*)'"
    r"(?:\s+and\s+\1/value\s+eq\s+'((?:[^']|'')*)')?\s*\)\s*$",
    re.IGNORECASE,
)


def invalid_filter() -> GraphError:
    return GraphError(
        400, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes."
    )


@dataclass(frozen=True)
class Filter:
    equals: tuple[tuple[str, str], ...]
    extended: tuple[str, str | None] | None

    @classmethod
    def parse(cls, text: str | None) -> Filter:
        if not text:
            return cls((), None)
        equals: list[tuple[str, str]] = []
        extended = None
        for clause in re.split(r"\s+and\s+(?![^()]*\))", text, flags=re.IGNORECASE):
            match = _EQ.match(clause)
            ext = _EXT.match(clause)
            if match:
                equals.append((match.group(1), match.group(2).replace("''", "'")))
            elif ext:
                value = ext.group(3).replace("''", "'") if ext.group(3) is not None else None
                extended = (ext.group(2).replace("''", "'"), value)
            else:
                raise invalid_filter()
        return cls(tuple(equals), extended)

    def accepts(self, doc: Json, extended_props: Sequence[Json] = ()) -> bool:
        for name, value in self.equals:
            current: object = doc
            for part in name.split("/"):
                current = current.get(part) if isinstance(current, dict) else None
            if current is None and name.split("/")[0] not in doc:
                raise invalid_filter()
            if str(current) != value:
                return False
        if self.extended is not None:
            prop_id, prop_value = self.extended
            found = [p for p in extended_props if str(p.get("id", "")).lower() == prop_id.lower()]
            if not found or (prop_value is not None and str(found[0].get("value")) != prop_value):
                return False
        return True


def expand_extended(doc: Json, extended_props: Sequence[Json], expand: str | None) -> Json:
    """``$expand=singleValueExtendedProperties($filter=id eq '...')``: add the matching properties."""
    if not expand:
        return doc
    match = re.match(r"^\s*singleValueExtendedProperties(?:\(\$filter=(.*)\))?\s*$", expand, re.IGNORECASE)
    if not match:
        raise GraphError(
            400, "BadRequest", f"Parsing OData Select and Expand failed: unsupported $expand '{expand}'."
        )
    wanted = None
    if match.group(1):
        ids = re.findall(r"id\s+eq\s+'((?:[^']|'')*)'", match.group(1), re.IGNORECASE)
        if not ids:
            raise invalid_filter()
        wanted = {i.replace("''", "'").lower() for i in ids}
    found = [dict(p) for p in extended_props if wanted is None or str(p.get("id", "")).lower() in wanted]
    if found:
        doc["singleValueExtendedProperties"] = found
    return doc


def page_list(
    app: GraphApp, req: Request, items: Sequence[T], render: Callable[[T], Json], context: str
) -> Response:
    """One page of a collection: ``$top`` (or ``Prefer: odata.maxpagesize``), ``$skip``, a nextLink."""
    top_text, skip_text = req.q("$top"), req.q("$skip")
    try:
        top = int(top_text) if top_text else app.page_size(req)
        skip = int(skip_text) if skip_text else 0
    except ValueError as exc:
        raise GraphError(400, "BadRequest", "Invalid $top or $skip.") from exc
    top = min(max(top, 1), app.settings.max_page_size)
    page = items[skip : skip + top]
    next_link = None
    if skip + top < len(items):
        query = replace_query(req.query_string, **{"$skip": str(skip + top)})
        next_link = app.link(req, req.path[len(req.prefix) :] if req.prefix else req.path, query)
    return Response(200, collection(context, [render(item) for item in page], next_link))


def parse_window(req: Request, required: bool) -> Window:
    start, end = req.q("startDateTime"), req.q("endDateTime")
    if not start or not end:
        if required:
            raise GraphError(
                400,
                "ErrorInvalidParameter",
                "This request requires a time window specified by the query string parameters StartDateTime "
                "and EndDateTime.",
            )
        return None
    try:
        window = (parse_offset_datetime(start), parse_offset_datetime(end))
    except ValueError as exc:
        raise GraphError(
            400, "ErrorInvalidParameter", "StartDateTime and EndDateTime must be ISO 8601."
        ) from exc
    if window[1] <= window[0]:
        raise GraphError(400, "ErrorInvalidParameter", "EndDateTime must be after StartDateTime.")
    return window


@dataclass
class DeltaScope:
    """What a delta URL tracks and how to turn its references into documents."""

    scope: str
    log: ChangeLog
    members: Callable[[Window], list[Hashable]]  # every current member (initial round)
    expand: Callable[[list[Hashable], Window], list[Hashable]]  # changed references → references to report
    render: Callable[[Hashable, Window], Json | None]  # None: report as removed
    id_for: Callable[[Hashable], str]
    odata_type: str
    link_path: str  # e.g. "/calendarView/delta"
    context: str


def delta_response(
    app: GraphApp, req: Request, mailbox: Mailbox, scope: DeltaScope, window_required: bool
) -> Response:
    engine = app.delta
    size = app.page_size(req)
    skip, token = req.q("$skiptoken"), req.q("$deltatoken")
    try:
        with mailbox.lock:
            if skip:
                round_id, round_, offset = engine.read_skip_token(skip, mailbox.user_id, scope.scope)
            else:
                head = scope.log.head
                if token:
                    state = engine.read_delta_token(token, mailbox.user_id, scope.scope)
                    since = max(state.position - app.settings.delta_replay, 0)
                    refs = scope.expand(scope.log.since(since, head), state.window)
                    window = state.window
                else:
                    window = parse_window(req, window_required)
                    refs = scope.members(window)
                epoch = engine.epoch(mailbox.user_id, scope.scope)
                round_id, round_ = engine.start_round(
                    DeltaState(mailbox.user_id, scope.scope, head, epoch, window), refs
                )
                offset = 0
            window = round_.state.window
            values = []
            for ref in round_.refs[offset : offset + size]:
                doc = scope.render(ref, window)
                values.append(doc if doc is not None else removed(scope, ref))
    except SyncStateGoneError as exc:
        exc.headers["Location"] = app.link(
            req, scope.link_path, _window_query(exc.state.window if exc.state else None)
        )
        raise
    body: Json = {"@odata.context": scope.context}
    if offset + size < len(round_.refs):
        body["@odata.nextLink"] = app.link(
            req, scope.link_path, "$skiptoken=" + engine.skip_token(round_id, offset + size, round_.state)
        )
    else:
        body["@odata.deltaLink"] = app.link(
            req, scope.link_path, "$deltatoken=" + engine.delta_token(round_.state)
        )
    body["value"] = values
    return Response(200, body)


def removed(scope: DeltaScope, ref: Hashable) -> Json:
    return {"@odata.type": scope.odata_type, "id": scope.id_for(ref), "@removed": {"reason": "deleted"}}


def _window_query(window: Window) -> str:
    if window is None:
        return ""
    start, end = (w.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for w in window)
    return f"startDateTime={start}&endDateTime={end}"
