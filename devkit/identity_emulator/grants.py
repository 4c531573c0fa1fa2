"""What a sign-in grants: the scopes asked for, authorization codes and refresh grants (kept by digest)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from devkit.identity_emulator.directory import App
from devkit.identity_emulator.errors import _OAuthError, _RedirectError

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})


@dataclass(frozen=True)
class _Scopes:
    """A parsed ``scope`` parameter: OIDC scopes, Graph permissions, and whether ``.default`` was asked."""

    raw: tuple[str, ...]
    oidc: frozenset[str]
    permissions: frozenset[str]
    default: bool

    def resolve(self, app: App) -> frozenset[str]:
        return self.permissions | (frozenset(app.delegated_permissions) if self.default else frozenset())

    def echo(self, app: App) -> str:
        """The ``scope`` of a token response: as asked (MSAL caches by it), ``.default`` expanded."""
        words: list[str] = []
        for word in self.raw:
            if word.endswith("/.default"):
                words.extend(sorted(app.delegated_permissions))
            elif word != "offline_access":
                words.append(word)
        return " ".join(dict.fromkeys(words))


@dataclass
class _AuthCode:
    client_id: str
    redirect_uri: str
    code_challenge: str
    user_oid: str
    tenant_id: str
    scopes: _Scopes
    permissions: frozenset[str]
    nonce: str | None
    issued_at: float
    redeemed: bool = False


@dataclass(frozen=True)
class _RefreshGrant:
    client_id: str
    user_oid: str
    tenant_id: str
    auth_time: float  # the sign-in the grant came from; revocation compares this
    issued_at: float  # this token's own issue time; inactivity counts from it


def _parse_scopes(text: str | None, *, redirect: bool = False) -> _Scopes:
    """Split a scope string; only Microsoft Graph is a known resource (plain names mean Graph)."""
    raw = tuple(dict.fromkeys((text or "").split()))
    oidc: set[str] = set()
    permissions: set[str] = set()
    default = False
    for word in raw:
        if word in OIDC_SCOPES:
            oidc.add(word)
            continue
        resource, slash, name = word.rpartition("/")
        if not slash:
            resource, name = GRAPH_RESOURCE, word
        if resource.rstrip("/") not in (GRAPH_RESOURCE, GRAPH_APP_ID) or not name:
            raise (_RedirectError if redirect else _OAuthError)("invalid_scope", 70011, word)
        if name == ".default":
            default = True
        else:
            permissions.add(name)
    return _Scopes(raw, frozenset(oidc), frozenset(permissions), default)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
