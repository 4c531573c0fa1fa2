"""Graph handlers for ``/subscriptions`` (create, list, get, renew, delete, reauthorize)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from devkit.graph_emulator.routing import Request, Response, Router

if TYPE_CHECKING:
    from devkit.graph_emulator.app import GraphApp


def register(router: Router) -> None:
    router.add("POST", "/subscriptions", create, mailbox=False)
    router.add("GET", "/subscriptions", list_all, mailbox=False)
    router.add("GET", "/subscriptions/{sid}", get, mailbox=False)
    router.add("PATCH", "/subscriptions/{sid}", renew, mailbox=False)
    router.add("DELETE", "/subscriptions/{sid}", delete, mailbox=False)
    router.add("POST", "/subscriptions/{sid}/reauthorize", reauthorize, mailbox=False)


def create(app: GraphApp, req: Request) -> Response:
    assert req.principal is not None
    body = req.json()
    subscription = app.subscriptions.create(req.principal, body, app.resolve_mailbox, app.immutable(req))
    return Response(201, subscription.as_json(app.base_url))


def list_all(app: GraphApp, req: Request) -> Response:
    values = [s.as_json(app.base_url) for s in app.subscriptions.all(req.principal)]
    for value in values:
        value.pop("@odata.context", None)
    return Response(200, {"@odata.context": app.context_url("subscriptions"), "value": values})


def get(app: GraphApp, req: Request, sid: str) -> Response:
    return Response(200, app.subscriptions.get(req.principal, sid).as_json(app.base_url))


def renew(app: GraphApp, req: Request, sid: str) -> Response:
    assert req.principal is not None
    return Response(200, app.subscriptions.update(req.principal, sid, req.json()).as_json(app.base_url))


def delete(app: GraphApp, req: Request, sid: str) -> Response:
    app.subscriptions.delete(req.principal, sid)
    return Response(204)


def reauthorize(app: GraphApp, req: Request, sid: str) -> Response:
    assert req.principal is not None
    app.subscriptions.reauthorize(req.principal, sid)
    return Response(204)
