"""The emulator as a token issuer: its signing key, the addresses it serves on, and its error bodies."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from devkit.identity_emulator.directory import Directory
from devkit.identity_emulator.errors import _OAuthError, _timestamp
from devkit.identity_emulator.grants import GRAPH_RESOURCE, _AuthCode, _RefreshGrant
from devkit.identity_emulator.server import _json, _Response
from devkit.jwt import InvalidTokenError, SigningKey, verify
from devkit.tls import CertAuthority


class Issuer(Directory):
    """What every endpoint shares beyond the directory; ``IdentityEmulator.__init__`` sets it up."""

    _ca: CertAuthority
    _signing_key: SigningKey
    access_token_lifetime: int
    _identity_header: str
    _codes: dict[str, _AuthCode]
    _refresh_tokens: dict[str, _RefreshGrant]
    _base_url: str | None
    _msi_url: str | None

    # -- addresses

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the identity emulator is not running")
        return self._base_url

    @property
    def ca_cert_path(self) -> Path:
        return self._ca.cert_path

    def authority(self, tenant: str) -> str:
        """The ``authority`` to give MSAL: a tenant id, domain, or common/organizations/consumers."""
        return f"{self.base_url}/{tenant}"

    def issuer(self, tenant_id: str) -> str:
        return f"{self.base_url}/{tenant_id}/v2.0"

    def token_endpoint(self, tenant: str) -> str:
        return f"{self.base_url}/{tenant}/oauth2/v2.0/token"

    @property
    def managed_identity_endpoint(self) -> str:
        if self._msi_url is None:
            raise RuntimeError("the identity emulator is not running")
        return self._msi_url

    def managed_identity_environment(self) -> dict[str, str]:
        """The ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` pair App Service sets, for azure-identity."""
        return {"IDENTITY_ENDPOINT": self.managed_identity_endpoint, "IDENTITY_HEADER": self._identity_header}

    def jwks(self) -> list[dict[str, str]]:
        """The signing keys, in the shape ``devkit.jwt.verify`` takes (the HTTP form wraps them in "keys")."""
        return [self._signing_key.jwk()]

    def verify_access_token(self, token: str, audience: str = GRAPH_RESOURCE) -> dict[str, Any]:
        """Claims of a token this emulator issued, checked on its clock; ``InvalidTokenError`` otherwise."""
        claims = verify(token, self.jwks(), audiences=[audience], now=self.clock.now())
        issuer = str(claims.get("iss", ""))
        if not (issuer.startswith(self.base_url + "/") and issuer.endswith("/v2.0")):
            raise InvalidTokenError("wrong issuer")
        return claims

    def _error_body(self, error: _OAuthError, correlation_id: str) -> dict[str, Any]:
        now = self.clock.now()
        trace_id = str(uuid.uuid4())
        stamp = _timestamp(now)
        body: dict[str, Any] = {
            "error": error.error,
            "error_description": f"{error}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}"
            f"\r\nTimestamp: {stamp}",
            "error_codes": [error.code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.base_url}/error?code={error.code}",
        }
        if error.suberror:
            body["suberror"] = error.suberror
        return body

    def _error_response(self, error: _OAuthError, correlation_id: str) -> _Response:
        return _json(
            error.status,
            self._error_body(error, correlation_id),
            error=error.error,
            error_code=error.code,
        )
