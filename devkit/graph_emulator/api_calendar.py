"""Graph handlers for the user, the primary calendar and its events (under ``/me`` or ``/users/{id}``)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from devkit.graph_emulator import invitations
from devkit.graph_emulator.api_common import (
    DeltaScope,
    Filter,
    delta_response,
    expand_extended,
    page_list,
    parse_window,
)
from devkit.graph_emulator.calendar import Calendar, Instance, RenderContext
from devkit.graph_emulator.delta import Window
from devkit.graph_emulator.events import EventRecord, clean_payload, select
from devkit.graph_emulator.routing import Request, Response, Router
from devkit.graph_emulator.util import GraphError, Json

if TYPE_CHECKING:
    from devkit.graph_emulator.app import GraphApp
    from devkit.graph_emulator.store import Mailbox

READ = ("Calendars.Read", "Calendars.ReadWrite", "Calendars.ReadBasic")
WRITE = ("Calendars.ReadWrite",)
CALENDAR_PREFIXES = ("", "/calendar", "/calendars/{calendar_id}")
ORDERINGS = {"start/datetime": "start", "createddatetime": "created", "lastmodifieddatetime": "modified"}


def register(router: Router) -> None:
    router.add(
        "GET", "/?", get_profile, permissions=("User.Read", "User.ReadBasic.All", "User.Read.All", *READ)
    )
    router.add("GET", "/mailboxSettings", get_mailbox_settings, permissions=("MailboxSettings.Read", *READ))
    router.add("GET", "/calendar", get_calendar, permissions=READ)
    router.add("GET", "/calendars", list_calendars, permissions=READ)
    for prefix in CALENDAR_PREFIXES:
        router.add("GET", f"{prefix}/events", list_events, permissions=READ)
        router.add("POST", f"{prefix}/events", create_event, permissions=WRITE)
        router.add("GET", f"{prefix}/events/{{event_id}}", get_event, permissions=READ)
        router.add("PATCH", f"{prefix}/events/{{event_id}}", update_event, permissions=WRITE)
        router.add("DELETE", f"{prefix}/events/{{event_id}}", delete_event, permissions=WRITE)
        router.add("GET", f"{prefix}/events/{{event_id}}/instances", list_instances, permissions=READ)
        router.add("GET", f"{prefix}/calendarView", calendar_view, permissions=READ)
        router.add("GET", f"{prefix}/calendarView/delta", calendar_view_delta, permissions=READ)


def _mailbox(req: Request) -> Mailbox:
    assert req.mailbox is not None
    return req.mailbox


def _check_calendar(req: Request, calendar_id: str | None) -> Calendar:
    mailbox = _mailbox(req)
    if calendar_id is not None and calendar_id != calendar_doc(mailbox)["id"]:
        raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
    return mailbox.calendar


def get_profile(app: GraphApp, req: Request) -> Response:
    return Response(200, {"@odata.context": app.context_url("users/$entity"), **_mailbox(req).profile()})


def get_mailbox_settings(app: GraphApp, req: Request) -> Response:
    mailbox = _mailbox(req)
    body = {
        "@odata.context": app.context_url(f"users('{mailbox.user_id}')/mailboxSettings"),
        "timeZone": mailbox.time_zone,
        "language": {"locale": "en-US", "displayName": "English (United States)"},
        "dateFormat": "M/d/yyyy",
        "timeFormat": "h:mm tt",
        "workingHours": {
            "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
            "startTime": "08:00:00.0000000",
            "endTime": "17:00:00.0000000",
            "timeZone": {"name": mailbox.time_zone},
        },
    }
    return Response(200, body)


def calendar_doc(mailbox: Mailbox) -> Json:
    owner = mailbox.owner
    return {
        "id": "AAMkAGCal" + mailbox.user_id.replace("-", "")[:24] + "AAA=",
        "name": "Calendar",
        "color": "auto",
        "hexColor": "",
        "isDefaultCalendar": True,
        "changeKey": "DxYSthXJXEWwAQSYQnXvIgAAAAAAAA==",
        "canShare": True,
        "canViewPrivateItems": True,
        "canEdit": True,
        "allowedOnlineMeetingProviders": ["teamsForBusiness"],
        "defaultOnlineMeetingProvider": "teamsForBusiness",
        "isTallyingResponses": True,
        "isRemovable": False,
        "owner": {"name": owner.display_name, "address": owner.address},
    }


def get_calendar(app: GraphApp, req: Request) -> Response:
    mailbox = _mailbox(req)
    context = app.context_url(f"users('{mailbox.user_id}')/calendars/$entity")
    return Response(200, {"@odata.context": context, **calendar_doc(mailbox)})


def list_calendars(app: GraphApp, req: Request) -> Response:
    mailbox = _mailbox(req)
    return Response(
        200,
        {
            "@odata.context": app.context_url(f"users('{mailbox.user_id}')/calendars"),
            "value": [calendar_doc(mailbox)],
        },
    )


def _selected(req: Request) -> list[str] | None:
    text = req.q("$select")
    return text.split(",") if text else None


def _record_doc(calendar: Calendar, record: EventRecord, ctx: RenderContext, req: Request) -> Json:
    doc = calendar.render_record(record, ctx)
    doc = expand_extended(doc, record.props.get("singleValueExtendedProperties") or [], req.q("$expand"))
    return select(doc, _selected(req))


def _instance_doc(calendar: Calendar, inst: Instance, ctx: RenderContext, req: Request) -> Json:
    doc = calendar.render(inst, ctx)
    doc = expand_extended(doc, inst.record.props.get("singleValueExtendedProperties") or [], req.q("$expand"))
    return select(doc, _selected(req))


def _order(req: Request, default: str) -> tuple[str, bool]:
    text = (req.q("$orderby") or "").strip()
    if not text:
        return default, False
    name, _, direction = text.partition(" ")
    key = ORDERINGS.get(name.lower())
    if key is None or direction.strip().lower() not in ("", "asc", "desc"):
        raise GraphError(400, "BadRequest", f"The $orderby '{text}' is not supported by the emulator.")
    return key, direction.strip().lower() == "desc"


def list_events(app: GraphApp, req: Request, calendar_id: str | None = None) -> Response:
    calendar = _check_calendar(req, calendar_id)
    ctx = app.render_context(req)
    filter_ = Filter.parse(req.q("$filter"))
    key, descending = _order(req, "created")
    with _mailbox(req).lock:
        records = []
        for record in calendar.records():
            doc = calendar.render_record(record, ctx)
            if filter_.accepts(doc, record.props.get("singleValueExtendedProperties") or []):
                records.append(record)
        records.sort(key=lambda r: r.start.utc if key == "start" else getattr(r, key), reverse=descending)
        context = app.context_url(f"users('{_mailbox(req).user_id}')/events")
        return page_list(app, req, records, lambda r: _record_doc(calendar, r, ctx, req), context)


def create_event(app: GraphApp, req: Request, calendar_id: str | None = None) -> Response:
    calendar = _check_calendar(req, calendar_id)
    cleaned = clean_payload(app.json_body(req), creating=True)
    if not req.outlook:  # the app creates in the user's calendar: the user organizes it
        cleaned.pop("organizer", None)
    ctx = app.render_context(req)
    mailbox = _mailbox(req)
    with mailbox.lock:
        record, changes = calendar.create(cleaned)
        doc = calendar.render_record(record, ctx)
        invites = invitations.prepare(app, mailbox, record) if changes else []  # none for a retry
    app.publish(mailbox, changes)
    invitations.deliver(app, invites)
    doc = {"@odata.context": app.context_url(f"users('{mailbox.user_id}')/events/$entity"), **doc}
    return Response(201, doc)


def get_event(app: GraphApp, req: Request, event_id: str, calendar_id: str | None = None) -> Response:
    calendar = _check_calendar(req, calendar_id)
    ctx = app.render_context(req)
    ref = calendar.ref_for(event_id)
    with _mailbox(req).lock:
        if ref[0] == "o":
            inst = calendar.instance(ref)
            if inst is None:
                raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            doc = _instance_doc(calendar, inst, ctx, req)
        else:
            doc = _record_doc(calendar, calendar.record(ref[1]), ctx, req)
    context = app.context_url(f"users('{_mailbox(req).user_id}')/events/$entity")
    return Response(200, {"@odata.context": context, **doc})


def _check_if_match(req: Request, calendar: Calendar, ref: tuple[object, ...]) -> None:
    wanted = req.headers.value("if-match")
    if wanted and wanted.strip() != "*" and wanted.strip() != calendar.current_etag(ref):
        raise GraphError(
            412,
            "ErrorIrresolvableConflict",
            "The send or update operation could not be performed because the change key passed in the "
            "request does not match the current change key for the item.",
        )


def update_event(app: GraphApp, req: Request, event_id: str, calendar_id: str | None = None) -> Response:
    calendar = _check_calendar(req, calendar_id)
    cleaned = clean_payload(app.json_body(req), creating=False)
    ctx = app.render_context(req)
    ref = calendar.ref_for(event_id)
    mailbox = _mailbox(req)
    with mailbox.lock:
        _check_if_match(req, calendar, ref)
        changes = calendar.update(ref, cleaned)
        if ref[0] == "o":
            inst = calendar.instance(ref)
            assert inst is not None
            doc = calendar.render(inst, ctx)
        else:
            doc = calendar.render_record(calendar.record(ref[1]), ctx)
        invites = invitations.prepare(app, mailbox, calendar.record(ref[1]))
    app.publish(mailbox, changes)
    invitations.deliver(app, invites)
    return Response(
        200, {"@odata.context": app.context_url(f"users('{mailbox.user_id}')/events/$entity"), **doc}
    )


def delete_event(app: GraphApp, req: Request, event_id: str, calendar_id: str | None = None) -> Response:
    calendar = _check_calendar(req, calendar_id)
    ref = calendar.ref_for(event_id)
    mailbox = _mailbox(req)
    with mailbox.lock:
        _check_if_match(req, calendar, ref)
        record = calendar.record(ref[1])
        changes = calendar.delete(ref)
        invites = invitations.prepare(app, mailbox, record, deleted=ref[0] == "e")
    app.publish(mailbox, changes)
    invitations.deliver(app, invites)
    return Response(204)


def list_instances(app: GraphApp, req: Request, event_id: str, calendar_id: str | None = None) -> Response:
    calendar = _check_calendar(req, calendar_id)
    window = parse_window(req, required=True)
    ctx = app.render_context(req)
    ref = calendar.ref_for(event_id)
    mailbox = _mailbox(req)
    with mailbox.lock:
        record = calendar.record(ref[1])
        instances = calendar.series_instances(record, window) if record.recurrence and ref[0] == "e" else []
        context = app.context_url(f"users('{mailbox.user_id}')/events('{event_id}')/instances")
        return page_list(app, req, instances, lambda inst: _instance_doc(calendar, inst, ctx, req), context)


def calendar_view(app: GraphApp, req: Request, calendar_id: str | None = None) -> Response:
    calendar = _check_calendar(req, calendar_id)
    window = parse_window(req, required=True)
    ctx = app.render_context(req)
    filter_ = Filter.parse(req.q("$filter"))
    mailbox = _mailbox(req)
    with mailbox.lock:
        instances = calendar.view(window)
        if filter_.equals or filter_.extended:
            instances = [
                inst
                for inst in instances
                if filter_.accepts(
                    calendar.render(inst, ctx), inst.record.props.get("singleValueExtendedProperties") or []
                )
            ]
        key, descending = _order(req, "start")
        if key != "start" or descending:
            instances.sort(
                key=lambda i: i.start.utc if key == "start" else getattr(i.record, key), reverse=descending
            )
        context = app.context_url(f"users('{mailbox.user_id}')/calendarView")
        return page_list(app, req, instances, lambda inst: _instance_doc(calendar, inst, ctx, req), context)


def calendar_view_delta(app: GraphApp, req: Request, calendar_id: str | None = None) -> Response:
    calendar = _check_calendar(req, calendar_id)
    if req.q("$select") or req.q("$filter") or req.q("$orderby") or req.q("$expand") or req.q("$search"):
        raise GraphError(
            400,
            "BadRequest",
            "calendarView delta does not support $select, $filter, $orderby, $expand, $search.",
        )
    ctx = app.render_context(req)

    def render(ref: Hashable, window: Window) -> Json | None:
        assert isinstance(ref, tuple)
        inst = calendar.instance(ref)
        if inst is None or not inst.overlaps(window):
            return None  # deleted, or (Graph's rule) changed outside the window: @removed
        return {"@odata.type": "#microsoft.graph.event", **calendar.render(inst, ctx)}

    scope = DeltaScope(
        scope="events",
        log=calendar.log,
        members=lambda window: [inst.ref for inst in calendar.view(window)],
        expand=calendar.expand,
        render=render,
        id_for=lambda ref: calendar.id_for(ref, ctx.immutable) if isinstance(ref, tuple) else "",
        odata_type="#microsoft.graph.event",
        link_path="/calendarView/delta",
        context=app.context_url("Collection(event)"),
    )
    return delta_response(app, req, _mailbox(req), scope, window_required=True)
