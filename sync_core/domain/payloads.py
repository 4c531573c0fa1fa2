"""Inbound JSON payloads: parse a body into a pydantic model, or fail with the contract's field errors.

Field paths follow docs/crm-contract.md §1: dotted, array indices as numbers, ``(body)`` for the body as a
whole. Messages are pydantic's, shortened; they never echo the rejected value (it may hold personal data).
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from sync_core.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)

# Unknown fields are rejected (contract §1); JSON names are camelCase.
STRICT_MODEL = ConfigDict(
    extra="forbid", strict=True, frozen=True, alias_generator=to_camel, validate_by_alias=True
)

# Ids (crmUserId, crmId, ...): 1-128 characters from A-Z a-z 0-9 . _ : @ - (contract §1).
_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
BODY = "(body)"


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; an empty body counts as ``{}``. Anything else → ``InvalidRequestError``."""
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequestError("the body is not valid JSON", {BODY: "must be a JSON object"}) from None
    if not isinstance(parsed, dict):
        raise InvalidRequestError("the body is not a JSON object", {BODY: "must be a JSON object"})
    return parsed


def validated(model: type[M], data: object, *, message: str = "the request is invalid") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidRequestError(message, field_errors(error)) from None


def field_errors(error: ValidationError) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in error.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in item["loc"]) or BODY
        found.setdefault(path, _message(item["type"], item["msg"]))
    return found


def _message(kind: str, text: str) -> str:
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "missing":
        return "is required"
    return text[0].lower() + text[1:] if text else "is invalid"


def check_id(value: str, field: str) -> str:
    """An id from a path or body: 1-128 of ``A-Z a-z 0-9 . _ : @ -``; else a field error on ``field``."""
    if not _ID.match(value):
        raise InvalidRequestError(
            f"{field} is not a valid id", {field: "must be 1-128 characters of A-Z a-z 0-9 . _ : @ -"}
        )
    return value
