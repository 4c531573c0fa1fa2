"""The control API under ``/_devkit``: each route calls the ``CrmEmulator`` method of the same meaning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from devkit.crm_emulator.errors import ContractError
from devkit.crm_emulator.payloads import _FailureInput, _validate
from devkit.crm_emulator.routing import (
    _error_response,
    _json_object,
    _json_response,
    _match,
    _Request,
    _Response,
)

if TYPE_CHECKING:
    from devkit.crm_emulator.emulator import CrmEmulator

DEVKIT_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", "/_devkit/reset"),
    ("POST", "/_devkit/seed"),
    ("GET", "/_devkit/people"),
    ("GET", "/_devkit/activities"),
    ("POST", "/_devkit/activities"),
    ("GET", "/_devkit/activities/{crmId}"),
    ("PATCH", "/_devkit/activities/{crmId}"),
    ("DELETE", "/_devkit/activities/{crmId}"),
    ("GET", "/_devkit/events"),
    ("GET", "/_devkit/requests"),
    ("POST", "/_devkit/failures"),
)


def handle(emulator: CrmEmulator, request: _Request) -> _Response:
    """Answer one ``/_devkit`` request (no authentication: the control API listens on loopback only)."""
    try:
        template, params = _match(emulator._devkit_routes, request.method, request.path)
        return _answer(emulator, template, params, request)
    except ContractError as exc:
        return _error_response(exc)


def _answer(emulator: CrmEmulator, template: str, params: Mapping[str, str], request: _Request) -> _Response:
    query = {name: values[-1] for name, values in parse_qs(request.query).items()}
    method = request.method
    if template == "/_devkit/reset":
        emulator.reset()
        return _Response(204)
    if template == "/_devkit/seed":
        return _json_response(201, emulator.seed(_json_object(request)))
    if template == "/_devkit/people":
        return _json_response(200, emulator.people())
    if template == "/_devkit/activities":
        if method == "POST":
            return _json_response(201, emulator.create_as_user(_json_object(request)))
        return _json_response(200, {"activities": emulator.activities(query.get("ownerCrmUserId"))})
    if template == "/_devkit/activities/{crmId}":
        crm_id = params["crmId"]
        if method == "PATCH":
            return _json_response(200, emulator.edit_as_user(crm_id, _json_object(request)))
        if method == "DELETE":
            emulator.delete_as_user(crm_id)
            return _Response(204)
        found = emulator.activity(crm_id)
        if found is None:
            raise ContractError(404, "activity_not_found", "the activity does not exist")
        return _json_response(200, found)
    if template == "/_devkit/events":
        return _json_response(200, {"events": emulator.events(query.get("type"), query.get("crmUserId"))})
    if template == "/_devkit/requests":
        return _json_response(200, {"requests": emulator.request_log()})
    failure = _validate(_FailureInput, _json_object(request))  # POST /_devkit/failures
    assert isinstance(failure, _FailureInput)
    emulator._add_failure(failure)
    return _Response(204)
