"""``ContractError``: every answer other than success, as the contract words it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ContractError(Exception):
    """An answer other than success, as the contract words it; the Python methods raise it too."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})


def _invalid(fields: Mapping[str, str], message: str = "the request is invalid") -> ContractError:
    return ContractError(400, "invalid_request", message, {"fields": dict(fields)})
