"""Requests and responses as the emulator sees them, JSON bodies, and the route tables shared by both APIs."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from urllib.parse import unquote

from devkit.crm_emulator.errors import ContractError
from devkit.crm_emulator.payloads import Json


@dataclass(frozen=True)
class _Request:
    method: str
    target: str  # path-with-query exactly as in the request line
    path: str
    query: str
    headers: Message
    body: bytes

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else str(value)


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    replayed: bool = False
    injected: bool = False


def _json_response(status: int, payload: object, headers: Sequence[tuple[str, str]] = ()) -> _Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return _Response(status, body, (("Content-Type", "application/json; charset=utf-8"), *headers))


def _error_response(exc: ContractError) -> _Response:
    body = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
    return _json_response(exc.status, body, tuple(exc.headers.items()))


def _reject_constant(name: str) -> object:
    raise ValueError(name)


def _json_object(request: _Request) -> Json:
    if not request.body:
        raise ContractError(400, "invalid_json", "the body must be a JSON object")
    media_type = (request.header("Content-Type") or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ContractError(415, "unsupported_media_type", "the body must be application/json")
    try:
        data = json.loads(request.body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        raise ContractError(400, "invalid_json", "the body is not valid UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise ContractError(400, "invalid_json", "the body must be a JSON object")
    return data


@dataclass(frozen=True)
class _Route:
    method: str
    template: str
    pattern: re.Pattern[str]


def _routes(table: Sequence[tuple[str, str]]) -> tuple[_Route, ...]:
    def compile_template(template: str) -> re.Pattern[str]:
        # Templates hold only letters, '/', '_' and {params}: nothing else needs escaping.
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")

    return tuple(_Route(method, template, compile_template(template)) for method, template in table)


def _match(routes: Sequence[_Route], method: str, path: str) -> tuple[str, dict[str, str]]:
    """The matching template and its (decoded) parameters; 404 / 405 otherwise."""
    allowed: list[str] = []
    for route in routes:
        found = route.pattern.match(path)
        if found is None:
            continue
        if route.method == method:
            return route.template, {name: unquote(value) for name, value in found.groupdict().items()}
        allowed.append(route.method)
    if allowed:
        raise ContractError(
            405, "method_not_allowed", f"{method} is not allowed here", headers={"Allow": ", ".join(allowed)}
        )
    raise ContractError(404, "route_not_found", "no such path (check the base URL): this is not a deletion")


def _if_match_version(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    return value
