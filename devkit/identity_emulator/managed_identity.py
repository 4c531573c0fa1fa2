"""The App Service / Functions managed identity endpoint (``IDENTITY_ENDPOINT``), on plain HTTP."""

from __future__ import annotations

import hmac
import secrets

from devkit.identity_emulator.issuer import Issuer
from devkit.identity_emulator.server import _json, _Request, _Response

MANAGED_IDENTITY_TOKEN_LIFETIME = 24 * 3600


class ManagedIdentityEndpoint(Issuer):
    """``GET /msi/token``: a token for one of the directory's managed identities."""

    # -- the App Service managed identity endpoint (plain HTTP, like the platform's local one)

    def _managed_identity_token(self, request: _Request) -> _Response:
        def refuse(status: int, message: str) -> _Response:
            return _json(status, {"statusCode": status, "message": message}, error="managed_identity_refused")

        presented = request.headers.get("x-identity-header", "")
        if not hmac.compare_digest(presented.encode(), self._identity_header.encode()):
            return refuse(401, "The X-IDENTITY-HEADER header is missing or wrong.")
        if request.query.get("api-version") != "2019-08-01":
            return refuse(400, "api-version 2019-08-01 is required.")
        resource = request.query.get("resource")
        if not resource:
            return refuse(400, "The resource parameter is required.")
        with self._lock:
            wanted_client = request.query.get("client_id")
            wanted_object = request.query.get("object_id") or request.query.get("principal_id")
            identities = list(self._managed_identities.values())
            if wanted_client:
                identity = next((i for i in identities if i.client_id == wanted_client), None)
            elif wanted_object:
                identity = next((i for i in identities if i.principal_id == wanted_object), None)
            else:
                identity = next((i for i in identities if i.system_assigned), None)
            if identity is None:
                return refuse(400, "No managed identity matches the request.")
            issued = int(self.clock.now())
            expires = issued + MANAGED_IDENTITY_TOKEN_LIFETIME
            token = self._signing_key.sign(
                {
                    "aud": resource,
                    "iss": self.issuer(identity.tenant_id),
                    "iat": issued,
                    "nbf": issued,
                    "exp": expires,
                    "sub": identity.principal_id,
                    "oid": identity.principal_id,
                    "tid": identity.tenant_id,
                    "appid": identity.client_id,
                    "azp": identity.client_id,
                    "idtyp": "app",
                    "ver": "2.0",
                    "uti": secrets.token_urlsafe(16),
                }
            )
        return _json(
            200,
            {
                "access_token": token,
                "expires_on": str(expires),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": identity.client_id,
            },
        )
