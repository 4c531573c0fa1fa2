"""Graph handlers for contacts / contactFolders, To Do lists / tasks, messages / mailFolders: CRUD, delta."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from devkit.graph_emulator.api_common import DeltaScope, Filter, delta_response, expand_extended, page_list
from devkit.graph_emulator.delta import Window
from devkit.graph_emulator.events import select
from devkit.graph_emulator.items import Container, Item, ItemStore
from devkit.graph_emulator.routing import Request, Response, Router
from devkit.graph_emulator.util import GraphError, Json, etag, render_id

if TYPE_CHECKING:
    from devkit.graph_emulator.app import GraphApp
    from devkit.graph_emulator.store import Mailbox


@dataclass(frozen=True)
class Family:
    """How one item kind is laid out in Graph's URL space."""

    attr: str  # the Mailbox attribute holding the ItemStore
    containers: str  # URL segment of the containers (contactFolders, todo/lists, mailFolders)
    items: str  # URL segment of the items inside a container (contacts, tasks, messages)
    shortcut: str | None  # items of the default container (or of all, for messages) without a container
    context_name: str
    read: tuple[str, ...]
    write: tuple[str, ...]


CONTACTS = Family(
    "contacts", "contactFolders", "contacts", "contacts", "contact",
    ("Contacts.Read", "Contacts.ReadWrite"), ("Contacts.ReadWrite",),
)  # fmt: skip
TASKS = Family(
    "tasks", "todo/lists", "tasks", None, "todoTask",
    ("Tasks.Read", "Tasks.ReadWrite", "Tasks.Read.All", "Tasks.ReadWrite.All"),
    ("Tasks.ReadWrite", "Tasks.ReadWrite.All"),
)  # fmt: skip
MESSAGES = Family(
    "messages", "mailFolders", "messages", "messages", "message",
    ("Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic"), ("Mail.ReadWrite",),
)  # fmt: skip


def register(router: Router) -> None:
    for family in (CONTACTS, TASKS, MESSAGES):
        _register_family(router, family)


def _register_family(router: Router, f: Family) -> None:
    def bind(handler: Callable[..., Response], **fixed: Any) -> Callable[..., Response]:
        return lambda app, req, **params: handler(app, req, f, **fixed, **params)

    c, i = f.containers, f.items
    router.add("GET", f"/{c}", bind(list_containers), permissions=f.read)
    router.add("POST", f"/{c}", bind(create_container), permissions=f.write)
    router.add("GET", f"/{c}/delta", bind(containers_delta), permissions=f.read)
    router.add("GET", f"/{c}/{{container}}", bind(get_container), permissions=f.read)
    router.add("PATCH", f"/{c}/{{container}}", bind(update_container), permissions=f.write)
    router.add("DELETE", f"/{c}/{{container}}", bind(delete_container), permissions=f.write)
    router.add("GET", f"/{c}/{{container}}/{i}", bind(list_items), permissions=f.read)
    router.add("POST", f"/{c}/{{container}}/{i}", bind(create_item), permissions=f.write)
    router.add("GET", f"/{c}/{{container}}/{i}/delta", bind(items_delta), permissions=f.read)
    router.add("GET", f"/{c}/{{container}}/{i}/{{item}}", bind(get_item), permissions=f.read)
    router.add("PATCH", f"/{c}/{{container}}/{i}/{{item}}", bind(update_item), permissions=f.write)
    router.add("DELETE", f"/{c}/{{container}}/{i}/{{item}}", bind(delete_item), permissions=f.write)
    if f.shortcut:
        s = f.shortcut
        router.add("GET", f"/{s}", bind(list_items, container=None), permissions=f.read)
        router.add("POST", f"/{s}", bind(create_item, container=None), permissions=f.write)
        if f is CONTACTS:
            router.add("GET", f"/{s}/delta", bind(items_delta, container=None), permissions=f.read)
        router.add("GET", f"/{s}/{{item}}", bind(get_item, container=None), permissions=f.read)
        router.add("PATCH", f"/{s}/{{item}}", bind(update_item, container=None), permissions=f.write)
        router.add("DELETE", f"/{s}/{{item}}", bind(delete_item, container=None), permissions=f.write)


def _store(req: Request, f: Family) -> tuple[Mailbox, ItemStore]:
    assert req.mailbox is not None
    store: ItemStore = getattr(req.mailbox, f.attr)
    return req.mailbox, store


def _container(store: ItemStore, f: Family, ident: str | None) -> Container | None:
    """The container named in the URL; for the shortcut URL the default one (messages: none, all folders)."""
    if ident is not None:
        return store.container(ident)
    return None if f is MESSAGES else store.default_container()


def _doc(store: ItemStore, item: Item, req: Request, immutable: bool) -> Json:
    doc = store.render(item, immutable)
    doc = expand_extended(doc, item.props.get("singleValueExtendedProperties") or [], req.q("$expand"))
    return select(doc, _selected(req))


def _selected(req: Request) -> list[str] | None:
    text = req.q("$select")
    return text.split(",") if text else None


def _context(app: GraphApp, mailbox: Mailbox, f: Family, entity: bool = False) -> str:
    suffix = f"{f.items}/$entity" if entity else f.items
    return app.context_url(f"users('{mailbox.user_id}')/{suffix}")


# --- containers ---


def list_containers(app: GraphApp, req: Request, f: Family) -> Response:
    mailbox, store = _store(req, f)
    immutable = app.immutable(req)
    with mailbox.lock:
        containers = list(store.containers.values())
        context = app.context_url(f"users('{mailbox.user_id}')/{f.containers}")
        return page_list(app, req, containers, lambda c: store.render_container(c, immutable), context)


def create_container(app: GraphApp, req: Request, f: Family) -> Response:
    mailbox, store = _store(req, f)
    body = app.json_body(req)
    with mailbox.lock:
        container = store.add_container(body)
        return Response(201, store.render_container(container, app.immutable(req)))


def get_container(app: GraphApp, req: Request, f: Family, container: str) -> Response:
    mailbox, store = _store(req, f)
    with mailbox.lock:
        return Response(200, store.render_container(store.container(container), app.immutable(req)))


def update_container(app: GraphApp, req: Request, f: Family, container: str) -> Response:
    mailbox, store = _store(req, f)
    body = app.json_body(req)
    with mailbox.lock:
        found = store.container(container)
        store.update_container(found, body)
        return Response(200, store.render_container(found, app.immutable(req)))


def delete_container(app: GraphApp, req: Request, f: Family, container: str) -> Response:
    mailbox, store = _store(req, f)
    with mailbox.lock:
        changes = store.delete_container(store.container(container))
    app.publish(mailbox, changes)
    return Response(204)


def containers_delta(app: GraphApp, req: Request, f: Family) -> Response:
    mailbox, store = _store(req, f)
    immutable = app.immutable(req)

    def render(ref: Hashable, _window: Window) -> Json | None:
        assert isinstance(ref, tuple)
        found = store.containers.get(ref[1])
        return store.render_container(found, immutable) if found else None

    scope = DeltaScope(
        scope={"contacts": "contactFolders", "tasks": "todoLists", "messages": "messages:folders"}[f.attr],
        log=store.container_log,
        members=lambda _window: [("f", key) for key in store.containers],
        expand=lambda refs, _window: refs,
        render=render,
        id_for=lambda ref: render_id(ref[1], immutable) if isinstance(ref, tuple) else "",
        odata_type=f"#microsoft.graph.{store.kind.container_odata_type.split('.')[-1]}",
        link_path=f"/{f.containers}/delta",
        context=app.context_url(f"Collection({store.kind.container_odata_type.split('.')[-1]})"),
    )
    return delta_response(app, req, mailbox, scope, window_required=False)


# --- items ---


def list_items(app: GraphApp, req: Request, f: Family, container: str | None, **_: str) -> Response:
    mailbox, store = _store(req, f)
    immutable = app.immutable(req)
    filter_ = Filter.parse(req.q("$filter"))
    with mailbox.lock:
        holder = _container(store, f, container)
        items = store.in_container(holder) if holder else list(store.items.values())
        if filter_.equals or filter_.extended:
            items = [
                i
                for i in items
                if filter_.accepts(
                    store.render(i, immutable), i.props.get("singleValueExtendedProperties") or []
                )
            ]
        return page_list(app, req, items, lambda i: _doc(store, i, req, immutable), _context(app, mailbox, f))


def create_item(app: GraphApp, req: Request, f: Family, container: str | None) -> Response:
    mailbox, store = _store(req, f)
    body = app.json_body(req)
    with mailbox.lock:
        holder = _container(store, f, container) or store.container("drafts")
        if f is MESSAGES:  # the app writes drafts; mail "arriving" through the control API is not one
            body = {**body, "isDraft": True} if not req.outlook else {"isDraft": False, **body}
        item, change = store.create(holder, body)
        doc = store.render(item, app.immutable(req))
    app.publish(mailbox, [change])
    return Response(201, {"@odata.context": _context(app, mailbox, f, entity=True), **doc})


def _find(store: ItemStore, f: Family, container: str | None, item: str) -> Item:
    holder = store.container(container) if container is not None else None
    return store.get(item, holder)


def get_item(app: GraphApp, req: Request, f: Family, container: str | None, item: str) -> Response:
    mailbox, store = _store(req, f)
    with mailbox.lock:
        found = _find(store, f, container, item)
        doc = _doc(store, found, req, app.immutable(req))
    return Response(200, {"@odata.context": _context(app, mailbox, f, entity=True), **doc})


def _check_if_match(req: Request, found: Item) -> None:
    wanted = req.headers.value("if-match")
    if wanted and wanted.strip() not in ("*", etag(found.change_key)):
        raise GraphError(
            412,
            "ErrorIrresolvableConflict",
            "The change key passed in the request does not match the current change key for the item.",
        )


def update_item(app: GraphApp, req: Request, f: Family, container: str | None, item: str) -> Response:
    mailbox, store = _store(req, f)
    body = app.json_body(req)
    with mailbox.lock:
        found = _find(store, f, container, item)
        _check_if_match(req, found)
        change = store.update(found, body)
        doc = store.render(found, app.immutable(req))
    app.publish(mailbox, [change])
    return Response(200, {"@odata.context": _context(app, mailbox, f, entity=True), **doc})


def delete_item(app: GraphApp, req: Request, f: Family, container: str | None, item: str) -> Response:
    mailbox, store = _store(req, f)
    with mailbox.lock:
        found = _find(store, f, container, item)
        _check_if_match(req, found)
        change = store.delete(found)
    app.publish(mailbox, [change])
    return Response(204)


def items_delta(app: GraphApp, req: Request, f: Family, container: str | None) -> Response:
    mailbox, store = _store(req, f)
    immutable = app.immutable(req)
    with mailbox.lock:
        holder = _container(store, f, container)
    if holder is None:
        raise GraphError(
            400, "BadRequest", "Delta for messages needs a mail folder: /mailFolders/{id}/messages/delta."
        )

    def render(ref: Hashable, _window: Window) -> Json | None:
        assert isinstance(ref, tuple)
        found = store.items.get(ref[1])
        if found is None or found.parent != holder.key:
            return None
        return {"@odata.type": f"#{store.kind.odata_type}", **store.render(found, immutable)}

    scope = DeltaScope(
        scope=f"{f.attr}:{holder.key.hex()}",
        log=holder.log,
        members=lambda _window: [("i", item.key) for item in store.in_container(holder)],
        expand=lambda refs, _window: refs,
        render=render,
        id_for=lambda ref: render_id(ref[1], immutable) if isinstance(ref, tuple) else "",
        odata_type=f"#{store.kind.odata_type}",
        link_path=req.path[len(req.prefix) :],
        context=app.context_url(f"Collection({f.context_name})"),
    )
    return delta_response(app, req, mailbox, scope, window_required=False)
