"""The contract's outbound API as the service calls it: authentication, failures, idempotency, the routes."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from urllib.parse import quote

from devkit.crm_emulator.errors import ContractError
from devkit.crm_emulator.payloads import _FIXED_AFTER_CREATE
from devkit.crm_emulator.routing import (
    _error_response,
    _if_match_version,
    _json_object,
    _json_response,
    _match,
    _Request,
    _Response,
    _Route,
)
from devkit.crm_emulator.signing import SignatureVerifier
from devkit.crm_emulator.store import _INJECTABLE, CrmStore, _StoredResponse

# (method, path template relative to the base URL): every outbound route of the contract. The router is built
# from this table, and the tests check it against docs/crm-contract.openapi.json.
CONTRACT_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", "/activities"),
    ("GET", "/activities/{crmId}"),
    ("PATCH", "/activities/{crmId}"),
    ("DELETE", "/activities/{crmId}"),
    ("GET", "/people"),
    ("POST", "/events"),
)


_WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class ContractApi(CrmStore):
    """Serves the contract routes; ``CrmEmulator.__init__`` sets up key, base path and verifier."""

    _api_key: str
    _base_path: str
    _verifier: SignatureVerifier
    _contract_routes: tuple[_Route, ...]

    def _serve_contract(self, request: _Request) -> _Response:
        with self._lock:
            request_id = f"req-{next(self._sequence)}"
            try:
                self._authenticate(request)
                relative = self._relative_path(request.path)
                injected = None if relative is None else self._injected_failure(request.method, relative)
                if injected is not None:
                    response = injected
                else:
                    template, params = _match(self._contract_routes, request.method, relative or "")
                    if request.method in _WRITE_METHODS:
                        response = self._idempotent(
                            request, lambda: self._dispatch(template, params, request)
                        )
                    else:
                        response = self._dispatch(template, params, request)
            except ContractError as exc:
                response = _error_response(exc)
            # Per request, also on a replayed response: it names this request in both sides' logs.
            response = dataclasses.replace(
                response, headers=(*response.headers, ("X-Request-Id", request_id))
            )
            self._record(request_id, request, response)
            return response

    def _relative_path(self, path: str) -> str | None:
        """The path relative to the base URL; None when it lies outside (no route can match)."""
        if not self._base_path:
            return path
        return path[len(self._base_path) :] if path.startswith(self._base_path + "/") else None

    def _authenticate(self, request: _Request) -> None:
        authorization = request.header("Authorization")
        scheme, _, credential = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise ContractError(401, "missing_api_key", "Authorization: Bearer <api key> is required")
        if not hmac.compare_digest(credential.strip().encode("utf-8"), self._api_key.encode("utf-8")):
            raise ContractError(401, "invalid_api_key", "the API key is not valid")
        self._verifier.verify(
            method=request.method,
            path_with_query=request.target,
            body=request.body,
            timestamp=request.header("X-Sync-Timestamp"),
            nonce=request.header("X-Sync-Nonce"),
            signature=request.header("X-Sync-Signature"),
        )

    def _injected_failure(self, method: str, relative_path: str) -> _Response | None:
        for failure in self._failures:
            if failure.applies(method, relative_path):
                failure.remaining -= 1
                headers: dict[str, str] = {}
                if failure.status == 429 or failure.retry_after is not None:
                    headers["Retry-After"] = str(
                        failure.retry_after if failure.retry_after is not None else 1
                    )
                error = ContractError(
                    failure.status, _INJECTABLE[failure.status], "injected failure", headers=headers
                )
                response = _error_response(error)
                self._failures = [f for f in self._failures if f.remaining > 0]
                return _Response(response.status, response.body, response.headers, injected=True)
        return None

    def _idempotent(self, request: _Request, execute: Callable[[], _Response]) -> _Response:
        key = request.header("Idempotency-Key")
        if key is None:
            raise ContractError(400, "missing_idempotency_key", "writes need an Idempotency-Key header")
        if not _IDEMPOTENCY_KEY.match(key):
            raise ContractError(
                400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 visible ASCII characters"
            )
        fingerprint = "\n".join(
            (
                request.method,
                request.target,
                request.header("If-Match") or "",
                hashlib.sha256(request.body).hexdigest(),
            )
        )
        stored = self._idempotency.get(key)
        if stored is not None:
            if stored.fingerprint != fingerprint:
                raise ContractError(
                    409, "idempotency_key_reused", "this Idempotency-Key was used for another request"
                )
            original = stored.response
            return _Response(
                original.status,
                original.body,
                (*original.headers, ("Idempotent-Replayed", "true")),
                replayed=True,
            )
        response = execute()
        if 200 <= response.status < 300:
            self._idempotency[key] = _StoredResponse(fingerprint, response)
        return response

    def _dispatch(self, template: str, params: Mapping[str, str], request: _Request) -> _Response:
        method = request.method
        if template == "/activities":
            created = self._create_activity(_json_object(request))
            location = f"{self._base_path}/activities/{quote(created['crmId'], safe='')}"
            return _json_response(201, created, (("Location", location), ("ETag", f'"{created["version"]}"')))
        if template == "/activities/{crmId}":
            crm_id = params["crmId"]
            if method == "GET":
                found = self._existing_activity(crm_id)
                return _json_response(200, found, (("ETag", f'"{found["version"]}"'),))
            if_match = _if_match_version(request.header("If-Match"))
            if method == "PATCH":
                if if_match is None:
                    raise ContractError(428, "precondition_required", "PATCH needs If-Match with the version")
                current = self._existing_activity(crm_id)
                self._check_version(current, if_match)
                updated = self._update_activity(current, _json_object(request), fixed=_FIXED_AFTER_CREATE)
                return _json_response(200, updated, (("ETag", f'"{updated["version"]}"'),))
            current = self._existing_activity(crm_id)  # DELETE
            if if_match is not None:
                self._check_version(current, if_match)
            del self._activities[crm_id]
            return _Response(204)
        if template == "/people":
            return _json_response(200, self._look_up_people(request.query))
        self._record_event(_json_object(request), request.header("Idempotency-Key"))  # POST /events
        return _Response(204)
