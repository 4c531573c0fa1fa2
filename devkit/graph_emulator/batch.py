"""JSON batching: ``POST /$batch`` with up to 20 requests, ``dependsOn`` ordering, 424 on failed dependencies.

Inner requests run through the same pipeline as HTTP requests (auth from the outer request, per-request
throttling and injected faults, so an inner request can answer 429). Independent requests run in the order
given; responses come back in an order that may differ from the request order (as Graph warns).
"""

from __future__ import annotations

import base64
import json
import random
from typing import TYPE_CHECKING, Any

from devkit.graph_emulator.routing import Headers, Request, Response, Router
from devkit.graph_emulator.util import GraphError, Json, error_body

if TYPE_CHECKING:
    from devkit.graph_emulator.app import GraphApp


def register(router: Router) -> None:
    router.add("POST", "/\\$batch", run_batch, mailbox=False)


def _bad(message: str) -> GraphError:
    return GraphError(400, "BadRequest", message)


def _validate(body: Any, limit: int) -> list[Json]:
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise _bad("Invalid batch payload format.")
    if len(requests) > limit:
        raise _bad(f"Number of batch request steps exceeds the maximum of {limit}.")
    ids = [str(r.get("id", "")) if isinstance(r, dict) else "" for r in requests]
    if any(not i for i in ids) or len(set(ids)) != len(ids):
        raise _bad("Batch request ids must be present and unique.")
    known = set(ids)
    for request in requests:
        if not isinstance(request.get("method"), str) or not isinstance(request.get("url"), str):
            raise _bad(f"Request '{request['id']}' needs a method and a url.")
        depends = request.get("dependsOn") or []
        if not isinstance(depends, list) or any(
            str(d) not in known or str(d) == str(request["id"]) for d in depends
        ):
            raise _bad(f"Request '{request['id']}' depends on an unknown request.")
    return requests


def _order(requests: list[Json]) -> list[Json]:
    """Requests in an order that honours dependsOn (the given order otherwise); 400 on a cycle."""
    done: set[str] = set()
    ordered: list[Json] = []
    pending = list(requests)
    while pending:
        ready = [r for r in pending if all(str(d) in done for d in r.get("dependsOn") or [])]
        if not ready:
            raise _bad("The dependsOn chain has a cycle.")
        for request in ready:
            ordered.append(request)
            done.add(str(request["id"]))
            pending.remove(request)
    return ordered


def run_batch(app: GraphApp, req: Request) -> Response:
    requests = _order(_validate(req.json(), app.settings.batch_max_requests))
    outer_headers = {k: v for k, v in req.headers.items() if k in ("authorization", "client-request-id")}
    statuses: dict[str, int] = {}
    responses: list[Json] = []
    for inner in requests:
        inner_id = str(inner["id"])
        failed = [str(d) for d in inner.get("dependsOn") or [] if not 200 <= statuses[str(d)] < 300]
        if failed:
            statuses[inner_id] = 424
            message = f"Request failed because it depends on a failed request: {', '.join(failed)}."
            ids = {"request_id": req.request_id, "client_request_id": req.client_request_id}
            body = error_body("FailedDependency", message, now=app.clock.now(), **ids)
            responses.append(
                {"id": inner_id, "status": 424, "headers": {"Content-Type": "application/json"}, "body": body}
            )
            continue
        response = _run_one(app, inner, outer_headers)
        statuses[inner_id] = response.status
        responses.append(_describe(inner_id, response))
    if app.settings.batch_shuffle_responses:
        random.shuffle(responses)
    return Response(200, {"responses": responses})


def _run_one(app: GraphApp, inner: Json, outer_headers: dict[str, str]) -> Response:
    headers = {str(k): str(v) for k, v in (inner.get("headers") or {}).items()}
    body = b""
    if "body" in inner:
        if not any(k.lower() == "content-type" for k in headers):
            missing = _bad("A request with a body needs a Content-Type header.")
            return app.error_response(Request("POST", "", {}, Headers()), missing)
        value = inner["body"]
        if isinstance(value, str) and not any(
            "json" in v.lower() for k, v in headers.items() if k.lower() == "content-type"
        ):
            body = base64.b64decode(value)
        else:
            body = json.dumps(value).encode()
    url = str(inner["url"])
    target = url if url.startswith("/") else "/" + url
    merged = {**outer_headers, **headers}
    return app.handle(str(inner["method"]).upper(), target, list(merged.items()), body, in_batch=True)


def _describe(inner_id: str, response: Response) -> Json:
    headers = {
        k: v for k, v in response.headers.items() if k.lower() not in ("request-id", "client-request-id")
    }
    result: Json = {"id": inner_id, "status": response.status, "headers": headers}
    if response.body is not None and response.body != b"":
        result["body"] = (
            response.body if isinstance(response.body, dict) else base64.b64encode(response.body).decode()
        )
    return result
