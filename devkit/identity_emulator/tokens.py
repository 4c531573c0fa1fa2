"""The ``/token`` endpoint: codes and refresh tokens redeemed, client credentials, and the tokens minted."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

from devkit.identity_emulator.client_auth import ClientAuthentication
from devkit.identity_emulator.directory import _ID_NAMESPACE, App, User, _Authority
from devkit.identity_emulator.errors import _missing, _OAuthError, _timestamp
from devkit.identity_emulator.grants import (
    GRAPH_APP_ID,
    GRAPH_RESOURCE,
    _digest,
    _parse_scopes,
    _RefreshGrant,
    _Scopes,
)
from devkit.identity_emulator.server import _json, _Request, _Response
from devkit.jwt import b64url

AUTH_CODE_LIFETIME = 600
ID_TOKEN_LIFETIME = 3600
REFRESH_TOKEN_MAX_INACTIVE = 90 * 24 * 3600


class TokenEndpoint(ClientAuthentication):
    """``POST /{tenant}/oauth2/v2.0/token``: authorization_code, refresh_token and client_credentials."""

    def _token(self, request: _Request, match: re.Match[str]) -> _Response:
        form = request.form
        with self._lock:
            authority = self._resolve_authority(match["tenant"])
            app, method = self._authenticate_client(authority, form, request.headers)
            grant_type = form.get("grant_type")
            if not grant_type:
                raise _missing("grant_type")
            if grant_type == "authorization_code":
                payload = self._redeem_code(app, form, method)
            elif grant_type == "refresh_token":
                payload = self._redeem_refresh_token(authority, app, form, method)
            elif grant_type == "client_credentials":
                payload = self._client_credentials(authority, app, form, method)
            else:
                raise _OAuthError("unsupported_grant_type", 70003, grant_type)
        return _json(200, payload, headers=(("Pragma", "no-cache"),))

    def _redeem_code(self, app: App, form: Mapping[str, str], method: str) -> dict[str, Any]:
        code = form.get("code")
        if not code:
            raise _missing("code")
        record = self._codes.get(_digest(code))
        if record is None:
            raise _OAuthError("invalid_grant", 9002313, detail="unknown authorization code")
        if record.redeemed:
            raise _OAuthError("invalid_grant", 54005)
        record.redeemed = True  # any redemption attempt uses the code up
        now = self.clock.now()
        if now - record.issued_at > AUTH_CODE_LIFETIME:
            raise _OAuthError("invalid_grant", 70008)
        if record.client_id != app.client_id:
            raise _OAuthError("invalid_grant", 70000, detail="the code was issued to another client")
        if form.get("redirect_uri") != record.redirect_uri:
            raise _OAuthError(
                "invalid_grant", 70000, detail="redirect_uri differs from the authorization request's"
            )
        verifier = form.get("code_verifier")
        if not verifier or not hmac.compare_digest(_s256(verifier), record.code_challenge):
            raise _OAuthError("invalid_grant", 501481)
        user = self._users[record.user_oid]
        self._check_not_revoked(user, record.issued_at)
        return self._user_tokens(
            app, user, record.scopes, record.permissions, method, record.issued_at, form, record.nonce
        )

    def _redeem_refresh_token(
        self, authority: _Authority, app: App, form: Mapping[str, str], method: str
    ) -> dict[str, Any]:
        token = form.get("refresh_token")
        if not token:
            raise _missing("refresh_token")
        grant = self._refresh_tokens.get(_digest(token))
        if grant is None:
            raise _OAuthError("invalid_grant", 9002313, detail="unknown refresh token")
        if grant.client_id != app.client_id:
            raise _OAuthError("invalid_grant", 70000, detail="the refresh token was issued to another client")
        user = self._users[grant.user_oid]
        if not authority.admits(user):
            raise _OAuthError("invalid_grant", 70000, detail="the refresh token belongs to another tenant")
        self._check_not_revoked(user, grant.auth_time)
        now = self.clock.now()
        if now - grant.issued_at > REFRESH_TOKEN_MAX_INACTIVE:
            raise _OAuthError("invalid_grant", 700082, _timestamp(grant.issued_at))
        scopes = _parse_scopes(form.get("scope") or "openid profile offline_access")
        wanted = scopes.resolve(app) or self._consented(user, app)
        if wanted - self._consented(user, app):
            raise _OAuthError(
                "invalid_grant", 65001, app.client_id, app.display_name, suberror="consent_required"
            )
        return self._user_tokens(app, user, scopes, wanted, method, grant.auth_time, form, None)

    def _check_not_revoked(self, user: User, auth_time: float) -> None:
        valid_from = self._tokens_valid_from.get(user.oid)
        if valid_from is not None and auth_time < valid_from:
            raise _OAuthError("invalid_grant", 50173, _timestamp(auth_time), _timestamp(valid_from))

    def _user_tokens(
        self,
        app: App,
        user: User,
        scopes: _Scopes,
        permissions: frozenset[str],
        method: str,
        auth_time: float,
        form: Mapping[str, str],
        nonce: str | None,
    ) -> dict[str, Any]:
        now = self.clock.now()
        issued = int(now)
        issuer = self.issuer(user.tenant_id)
        scp = " ".join(sorted(permissions | (scopes.oidc - {"offline_access"})))
        access_token = self._signing_key.sign(
            {
                "aud": GRAPH_RESOURCE,
                "iss": issuer,
                "iat": issued,
                "nbf": issued,
                "exp": issued + self.access_token_lifetime,
                "tid": user.tenant_id,
                "oid": user.oid,
                "sub": _pairwise_subject(user.oid, app.client_id),
                "upn": user.upn,
                "preferred_username": user.upn,
                "unique_name": user.upn,
                "name": user.display_name,
                "scp": scp,
                **_caller_claims(app, method),
                "idtyp": "user",
                "ver": "2.0",
                "uti": secrets.token_urlsafe(16),
            }
        )
        payload: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": scopes.echo(app) or scp,
            "expires_in": self.access_token_lifetime,
            "ext_expires_in": self.access_token_lifetime,
            "access_token": access_token,
        }
        if "offline_access" in scopes.oidc:
            refresh_token = secrets.token_urlsafe(64)
            self._refresh_tokens[_digest(refresh_token)] = _RefreshGrant(
                app.client_id, user.oid, user.tenant_id, auth_time, now
            )
            payload["refresh_token"] = refresh_token
        if "openid" in scopes.oidc:
            id_claims: dict[str, Any] = {
                "aud": app.client_id,
                "iss": issuer,
                "iat": issued,
                "nbf": issued,
                "exp": issued + ID_TOKEN_LIFETIME,
                "auth_time": int(auth_time),
                "name": user.display_name,
                "oid": user.oid,
                "preferred_username": user.upn,
                "sub": _pairwise_subject(user.oid, app.client_id),
                "tid": user.tenant_id,
                "ver": "2.0",
                "uti": secrets.token_urlsafe(16),
            }
            if "email" in scopes.oidc:
                id_claims["email"] = user.upn
            if nonce is not None:
                id_claims["nonce"] = nonce
            payload["id_token"] = self._signing_key.sign(id_claims)
        if form.get("client_info") == "1":
            payload["client_info"] = _client_info(user)
        return payload

    def _client_credentials(
        self, authority: _Authority, app: App, form: Mapping[str, str], method: str
    ) -> dict[str, Any]:
        if authority.kind != "tenant" or authority.tenant_id is None:
            raise _OAuthError("invalid_request", 50059)
        tenant = self._tenant(authority.tenant_id)
        scope = form.get("scope")
        if not scope:
            raise _missing("scope")
        words = scope.split()
        if len(words) != 1 or not words[0].endswith("/.default"):
            raise _OAuthError("invalid_scope", 1002012, scope)
        resource = words[0].removesuffix("/.default")
        if resource.rstrip("/") not in (GRAPH_RESOURCE, GRAPH_APP_ID):
            raise _OAuthError("invalid_resource", 500011, resource, tenant.display_name)
        consented = (tenant.tenant_id, app.client_id) in self._admin_consents
        if tenant.tenant_id != app.home_tenant_id and not consented:
            raise _OAuthError("unauthorized_client", 700016, app.client_id, tenant.display_name)
        issued = int(self.clock.now())
        service_principal = str(uuid.uuid5(_ID_NAMESPACE, f"sp:{app.client_id}:{tenant.tenant_id}"))
        claims: dict[str, Any] = {
            "aud": GRAPH_RESOURCE,
            "iss": self.issuer(tenant.tenant_id),
            "iat": issued,
            "nbf": issued,
            "exp": issued + self.access_token_lifetime,
            "tid": tenant.tenant_id,
            "oid": service_principal,
            "sub": service_principal,
            **_caller_claims(app, method),
            "idtyp": "app",
            "ver": "2.0",
            "uti": secrets.token_urlsafe(16),
        }
        if app.application_permissions:
            claims["roles"] = sorted(app.application_permissions)
        return {
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime,
            "ext_expires_in": self.access_token_lifetime,
            "access_token": self._signing_key.sign(claims),
        }


def _s256(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _pairwise_subject(oid: str, client_id: str) -> str:
    return b64url(hashlib.sha256(f"{oid}|{client_id}".encode()).digest())


def _client_info(user: User) -> str:
    return b64url(json.dumps({"uid": user.oid, "utid": user.tenant_id}).encode())


def _caller_claims(app: App, method: str) -> dict[str, str]:
    """Which app asked for the token and how it proved itself (1: a secret, 2: a certificate or assertion)."""
    acr = "1" if method == "secret" else "2"
    return {"appid": app.client_id, "azp": app.client_id, "appidacr": acr, "azpacr": acr}
