"""The control API under ``/_devkit/``: thin, each endpoint calls the Python method of the same meaning."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any

from devkit.identity_emulator.directory import (
    DEFAULT_DELEGATED_PERMISSIONS,
    TOKEN_EXCHANGE_AUDIENCE,
    App,
    FederatedCredential,
    ManagedIdentity,
    RequestRecord,
    SignInOutcome,
    Tenant,
    User,
)
from devkit.identity_emulator.errors import _ControlError
from devkit.identity_emulator.issuer import Issuer
from devkit.identity_emulator.server import _json, _Request, _Response


class ControlApi(Issuer):
    """The ``/_devkit/`` endpoints (routed by ``_CONTROL_ROUTES``)."""

    def _control_body(self, request: _Request) -> dict[str, Any]:
        if not request.body:
            return {}
        try:
            body = json.loads(request.body)
        except json.JSONDecodeError as error:
            raise _ControlError(f"the body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise _ControlError("the body must be a JSON object")
        return body

    def _control_state(self, request: _Request, match: re.Match[str]) -> _Response:
        with self._lock:
            return _json(
                200,
                {
                    "base_url": self.base_url,
                    "managed_identity_endpoint": self.managed_identity_endpoint,
                    "clock": {"now": self.clock.now(), "offset": self.clock.offset},
                    "access_token_lifetime": self.access_token_lifetime,
                    "tenants": [_public(t) for t in self._tenants.values()],
                    "users": [_public(u) for u in self._users.values()],
                    "apps": [_public_app(a) for a in self._apps.values()],
                    "managed_identities": [_public(i) for i in self._managed_identities.values()],
                    "admin_consents": [
                        {"tenant_id": t, "client_id": c, "permissions": sorted(p)}
                        for (t, c), p in self._admin_consents.items()
                    ],
                    "pending_sign_ins": len(self._pending),
                },
            )

    def _control_requests(self, request: _Request, match: re.Match[str]) -> _Response:
        return _json(200, {"requests": [_public(r) for r in self.request_log()]})

    def _control_add_tenant(self, request: _Request, match: re.Match[str]) -> _Response:
        body = self._control_body(request)
        tenant = self.add_tenant(
            body.get("tenant_id"),
            domain=body.get("domain"),
            display_name=body.get("display_name"),
            require_admin_consent=bool(body.get("require_admin_consent", False)),
        )
        return _json(201, _public(tenant))

    def _control_tenant_settings(self, request: _Request, match: re.Match[str]) -> _Response:
        body = self._control_body(request)
        tenant = self.set_require_admin_consent(match["tenant"], bool(body["require_admin_consent"]))
        return _json(200, _public(tenant))

    def _control_admin_consent(self, request: _Request, match: re.Match[str]) -> _Response:
        body = self._control_body(request)
        self.grant_admin_consent(match["tenant"], body["client_id"], body.get("permissions"))
        return _Response(204)

    def _control_add_user(self, request: _Request, match: re.Match[str]) -> _Response:
        body = self._control_body(request)
        if body.get("personal"):
            user = self.add_personal_account(body["upn"], display_name=body.get("display_name"))
        else:
            user = self.add_user(
                body["tenant_id"],
                body["upn"],
                display_name=body.get("display_name"),
                oid=body.get("oid"),
                is_admin=bool(body.get("is_admin", False)),
            )
        return _json(201, _public(user))

    def _control_revoke(self, request: _Request, match: re.Match[str]) -> _Response:
        self.revoke_sign_in_sessions(match["oid"])
        return _Response(204)

    def _control_register_app(self, request: _Request, match: re.Match[str]) -> _Response:
        body = self._control_body(request)
        app = self.register_app(
            body["home_tenant_id"],
            client_id=body.get("client_id"),
            display_name=body.get("display_name", "CRM sync (devkit)"),
            redirect_uris=body.get("redirect_uris", ()),
            client_secret=body.get("client_secret"),
            certificates=body.get("certificates", ()),
            federated_credentials=[
                FederatedCredential(
                    c["issuer"], c["subject"], tuple(c.get("audiences", (TOKEN_EXCHANGE_AUDIENCE,)))
                )
                for c in body.get("federated_credentials", ())
            ],
            delegated_permissions=body.get("delegated_permissions", DEFAULT_DELEGATED_PERMISSIONS),
            application_permissions=body.get("application_permissions", ()),
        )
        return _json(201, _public_app(app))

    def _control_add_managed_identity(self, request: _Request, match: re.Match[str]) -> _Response:
        body = self._control_body(request)
        identity = self.add_managed_identity(
            body["tenant_id"],
            client_id=body.get("client_id"),
            principal_id=body.get("principal_id"),
            system_assigned=bool(body.get("system_assigned", False)),
        )
        return _json(201, _public(identity))

    def _control_next_sign_in(self, request: _Request, match: re.Match[str]) -> _Response:
        body = self._control_body(request)
        self.queue_sign_in(body.get("user"), SignInOutcome(body.get("outcome", "success")))
        return _Response(204)

    def _control_clock_advance(self, request: _Request, match: re.Match[str]) -> _Response:
        body = self._control_body(request)
        now = self.clock.advance(float(body["seconds"]))
        return _json(200, {"now": now, "offset": self.clock.offset})

    def _control_settings(self, request: _Request, match: re.Match[str]) -> _Response:
        body = self._control_body(request)
        if "access_token_lifetime" in body:
            lifetime = int(body["access_token_lifetime"])
            if not 1 <= lifetime <= 86400:
                raise _ControlError("access_token_lifetime must be 1..86400 seconds")
            self.access_token_lifetime = lifetime
        return _json(200, {"access_token_lifetime": self.access_token_lifetime})


def _public(record: Tenant | User | ManagedIdentity | RequestRecord) -> dict[str, Any]:
    """A record as JSON (none of these types holds a secret)."""
    return asdict(record)


def _public_app(app: App) -> dict[str, Any]:
    return {
        "client_id": app.client_id,
        "home_tenant_id": app.home_tenant_id,
        "display_name": app.display_name,
        "redirect_uris": list(app.redirect_uris),
        "has_client_secret": bool(app.client_secrets),
        "certificate_thumbprints": [c.sha1_thumbprint for c in app.certificates],
        "federated_credentials": [
            {"issuer": c.issuer, "subject": c.subject, "audiences": list(c.audiences)}
            for c in app.federated_credentials
        ],
        "delegated_permissions": list(app.delegated_permissions),
        "application_permissions": list(app.application_permissions),
    }


_CONTROL_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("GET", re.compile(r"^/_devkit/state$"), "_control_state"),
    ("GET", re.compile(r"^/_devkit/requests$"), "_control_requests"),
    ("POST", re.compile(r"^/_devkit/tenants$"), "_control_add_tenant"),
    ("POST", re.compile(r"^/_devkit/tenants/(?P<tenant>[^/]+)/settings$"), "_control_tenant_settings"),
    ("POST", re.compile(r"^/_devkit/tenants/(?P<tenant>[^/]+)/admin-consent$"), "_control_admin_consent"),
    ("POST", re.compile(r"^/_devkit/users$"), "_control_add_user"),
    ("POST", re.compile(r"^/_devkit/users/(?P<oid>[^/]+)/revoke$"), "_control_revoke"),
    ("POST", re.compile(r"^/_devkit/apps$"), "_control_register_app"),
    ("POST", re.compile(r"^/_devkit/managed-identities$"), "_control_add_managed_identity"),
    ("POST", re.compile(r"^/_devkit/next-sign-in$"), "_control_next_sign_in"),
    ("POST", re.compile(r"^/_devkit/clock/advance$"), "_control_clock_advance"),
    ("POST", re.compile(r"^/_devkit/settings$"), "_control_settings"),
)
