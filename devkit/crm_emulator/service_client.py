"""The CRM's side of the inbound contract: calling the service's HTTP triggers, signed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import requests

from devkit.crm_emulator.payloads import Json
from devkit.crm_emulator.signing import signature_headers


@dataclass(frozen=True)
class ServiceResponse:
    status: int
    body: Any  # parsed JSON, or None for an empty or non-JSON body
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = self.body["error"].get("code")
            return code if isinstance(code, str) else None
        return None


class CrmServiceClient:
    """Calls the service's inbound triggers as the CRM: ``x-functions-key`` plus a v1 signature per request.

    ``base_url`` is the function app's base (``PUBLIC_BASE_URL``, without ``/api``). Answers come back as
    ``ServiceResponse`` whatever their status, so tests can look at errors too.
    """

    def __init__(
        self,
        base_url: str,
        function_key: str,
        signing_secret: str,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._function_key = function_key
        self._signing_secret = signing_secret
        self._clock = clock
        self._timeout = timeout
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()

    def connect(self, crm_user_id: str, return_url: str, *, login_hint: str | None = None) -> ServiceResponse:
        body: Json = {"returnUrl": return_url}
        if login_hint is not None:
            body["loginHint"] = login_hint
        return self._call("POST", f"/api/users/{_segment(crm_user_id)}/connect", body=body)

    def disconnect(self, crm_user_id: str, *, purge: bool = False) -> ServiceResponse:
        return self._call("POST", f"/api/users/{_segment(crm_user_id)}/disconnect", body={"purge": purge})

    def status(self, crm_user_id: str) -> ServiceResponse:
        return self._call("GET", f"/api/users/{_segment(crm_user_id)}/status")

    def put_activity(
        self, crm_user_id: str, activity: Mapping[str, Any], *, crm_id: str | None = None
    ) -> ServiceResponse:
        """Push an activity as the CRM holds it (e.g. ``CrmEmulator.activity(crm_id)``), to the path of its
        own ``crmId`` unless ``crm_id`` names another one (a test of the path/body check)."""
        target = str(activity["crmId"]) if crm_id is None else crm_id
        path = f"/api/users/{_segment(crm_user_id)}/activities/{_segment(target)}"
        return self._call("PUT", path, body=dict(activity))

    def delete_activity(self, crm_user_id: str, crm_id: str, version: str | None) -> ServiceResponse:
        """Push a deletion; ``version`` None sends none (which the service refuses)."""
        path = f"/api/users/{_segment(crm_user_id)}/activities/{_segment(crm_id)}"
        return self._call("DELETE", path, query=None if version is None else {"version": version})

    def health(self) -> ServiceResponse:
        return self._call("GET", "/api/health")

    def _call(
        self, method: str, path: str, *, body: Json | None = None, query: Mapping[str, str] | None = None
    ) -> ServiceResponse:
        url = self._base_url + path + (f"?{urlencode(query)}" if query else "")
        data = b"" if body is None else json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"x-functions-key": self._function_key, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        prepared = self._session.prepare_request(
            requests.Request(method, url, data=data or None, headers=headers)
        )
        # Sign exactly what goes on the wire: the prepared request target and body bytes.
        prepared.headers.update(
            signature_headers(self._signing_secret, method, prepared.path_url, data, now=self._clock())
        )
        answer = self._session.send(prepared, timeout=self._timeout)
        try:
            parsed: Any = answer.json() if answer.content else None
        except ValueError:
            parsed = None
        return ServiceResponse(answer.status_code, parsed, answer.headers)

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def __enter__(self) -> CrmServiceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _segment(value: str) -> str:
    return quote(value, safe="")
