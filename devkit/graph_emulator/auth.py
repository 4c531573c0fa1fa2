"""Bearer tokens: only access tokens signed by the identity emulator, for Graph, unexpired, with scopes.

The emulator is given a JWKS source: a list of JWK dicts, a callable returning one, or an HTTPS URL (fetched
with ``requests``, trusting ``ca_path``) that is fetched again when a token names an unknown key id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from devkit import jwt
from devkit.graph_emulator.util import GraphError

GRAPH_AUDIENCES = ("https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000")
WWW_AUTHENTICATE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'client_id="00000003-0000-0000-c000-000000000000"'
)
JwksSource = Callable[[], Sequence[Mapping[str, str]]] | Sequence[Mapping[str, str]] | str


class JwksProvider:
    def __init__(
        self, source: JwksSource, *, ca_path: str | None = None, refetch_interval: float = 2.0
    ) -> None:
        self._source = source
        self._ca_path = ca_path
        self._refetch_interval = refetch_interval
        self._cached: list[Mapping[str, str]] | None = None
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def keys(self, *, refresh: bool = False) -> list[Mapping[str, str]]:
        if not isinstance(self._source, str):
            keys = self._source() if callable(self._source) else self._source
            return list(keys)
        with self._lock:
            stale = refresh and time.monotonic() - self._fetched_at > self._refetch_interval
            if self._cached is None or stale:
                self._cached = self._fetch(self._source)
                self._fetched_at = time.monotonic()
            return list(self._cached)

    def _fetch(self, url: str) -> list[Mapping[str, str]]:
        with requests.Session() as session:
            response = session.get(url, timeout=10, verify=self._ca_path or True)
            response.raise_for_status()
            data = response.json()
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, list):
            raise ValueError(f"{url} is not a JWK set")
        return keys


@dataclass(frozen=True)
class Principal:
    """Who calls: the user (``oid``) for delegated tokens, the application for app-only tokens."""

    object_id: str
    tenant_id: str
    app_id: str
    scopes: frozenset[str]
    roles: frozenset[str]
    upn: str | None
    name: str | None

    @property
    def is_app(self) -> bool:
        return not self.scopes and bool(self.roles)

    def has_any(self, permissions: Sequence[str]) -> bool:
        granted = self.roles if self.is_app else self.scopes
        return any(permission in granted for permission in permissions)


def unauthorized(message: str) -> GraphError:
    return GraphError(
        401, "InvalidAuthenticationToken", message, headers={"WWW-Authenticate": WWW_AUTHENTICATE}
    )


def forbidden() -> GraphError:
    return GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")


class Authenticator:
    def __init__(
        self,
        jwks: JwksProvider | None,
        *,
        audiences: Sequence[str] = GRAPH_AUDIENCES,
        verify: bool = True,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._now = now
        self._jwks = jwks
        self._audiences = tuple(audiences)
        self._verify = verify

    def authenticate(self, authorization: str | None) -> Principal:
        if (
            not authorization
            or not authorization.lower().startswith("bearer ")
            or not authorization[7:].strip()
        ):
            raise unauthorized("Access token is empty.")
        token = authorization[7:].strip()
        claims = self._claims(token)
        scopes = frozenset(str(claims.get("scp", "")).split())
        roles_claim = claims.get("roles") or []
        roles = frozenset(str(role) for role in roles_claim) if isinstance(roles_claim, list) else frozenset()
        if not scopes and not roles:
            raise unauthorized("The token contains no permissions, or permissions can not be understood.")
        object_id = str(claims.get("oid") or claims.get("sub") or "")
        return Principal(
            object_id=object_id.lower(),
            tenant_id=str(claims.get("tid", "")),
            app_id=str(claims.get("appid") or claims.get("azp") or ""),
            scopes=scopes,
            roles=roles,
            upn=claims.get("upn") or claims.get("preferred_username"),
            name=claims.get("name"),
        )

    def _claims(self, token: str) -> dict[str, Any]:
        if not self._verify:
            try:
                return jwt.unverified_claims(token)
            except jwt.InvalidTokenError as exc:
                raise unauthorized("IDX14100: JWT is not well formed.") from exc
        if self._jwks is None:
            raise unauthorized("Access token validation failure. No signing keys are configured.")
        try:
            return jwt.verify(token, self._jwks.keys(), audiences=self._audiences, now=self._now())
        except jwt.InvalidTokenError as exc:
            if str(exc) == "unknown signing key":
                try:
                    keys = self._jwks.keys(refresh=True)
                    return jwt.verify(token, keys, audiences=self._audiences, now=self._now())
                except jwt.InvalidTokenError as again:
                    exc = again
            raise unauthorized(_message(str(exc))) from exc


def _message(reason: str) -> str:
    return {
        "token expired": "Lifetime validation failed, the token is expired.",
        "token not yet valid": "Lifetime validation failed, the token is not yet valid.",
        "wrong audience": "Access token validation failure. Invalid audience.",
        "bad signature": "Access token validation failure. Signature validation failed.",
        "unknown signing key": "Access token validation failure. The signing key was not found.",
    }.get(reason, "Access token validation failure. Invalid token.")
