"""Entra ID through MSAL: the app's credential, the user sign-in (auth code + PKCE), and each user's token
cache, encrypted at rest and guarded by ETags.

Terminology
-----------
app credential
    How the app proves itself at the token endpoint, chosen by settings: a client secret, a certificate
    (``{"private_key", "thumbprint"}``), or a *federated credential*: a token of the Function's managed
    identity for ``api://AzureADTokenExchange``, sent as the client assertion (no secret exists in Azure).
token cache
    MSAL's ``SerializableTokenCache`` of one CRM user (account, refresh token, access tokens), serialized,
    encrypted with ``TokenCipher`` (bound to the user id) and stored in the ``tokens`` table.
silent acquisition
    ``acquire_token_silent``: an access token from the cache, or a refresh with the cached refresh token.
    ``invalid_grant`` (revoked, expired after inactivity) means the user has to connect again.

MSAL answers with dicts rather than exceptions; they are translated here, once, into ``sync_core.errors``
(``invalid_grant`` → ``TokenRevokedError``, ``temporarily_unavailable``, 5xx and network failures →
``TransientRemoteError``, anything else → ``AuthenticationError``). Messages carry Entra's error name and
AADSTS codes only: never an error description (it can name the user), a code, a token or a secret.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import msal
import requests
from azure.core.exceptions import AzureError
from azure.identity import ManagedIdentityCredential
from msal.authority import WELL_KNOWN_AUTHORITY_HOSTS
from msal.exceptions import MsalServiceError

from sync_core.adapters.tables import TokenStore
from sync_core.adapters.token_cipher import TokenCipher
from sync_core.config import AppCredentialKind, Settings
from sync_core.domain.connect import aadsts_codes
from sync_core.errors import (
    AuthenticationError,
    ConflictError,
    RemoteError,
    SettingsError,
    TokenRevokedError,
    TransientRemoteError,
)

log = logging.getLogger(__name__)

GRAPH = "https://graph.microsoft.com"
# Delegated permissions the service asks each user for (later features add theirs here).
DELEGATED_SCOPES: tuple[str, ...] = (f"{GRAPH}/Calendars.ReadWrite", f"{GRAPH}/User.Read")
ADMIN_CONSENT_SCOPE = f"{GRAPH}/.default"  # every permission configured on the app registration
TOKEN_EXCHANGE_SCOPE = "api://AzureADTokenExchange/.default"  # noqa: S105 - a scope
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error", "service_unavailable"})
_PRIVATE_KEY_PEM = re.compile(
    r"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----.+?"
    r"-----END (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----",
    re.DOTALL,
)
_MAX_SAVE_ATTEMPTS = 5


class TimeoutSession(requests.Session):
    """A session whose requests time out unless told otherwise (MSAL passes no timeout of its own)."""

    def __init__(self, timeout: tuple[float, float] = (5.0, 30.0)) -> None:
        super().__init__()
        self._default_timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._default_timeout)
        return super().request(method, url, *args, **kwargs)


@dataclass(frozen=True)
class SignInSucceeded:
    claims: Mapping[str, Any]  # the ID token's claims (unvalidated by MSAL: see domain.connect)
    home_account_id: str | None
    serialized_cache: str  # holds the tokens: kept in memory only until encrypted

    def __repr__(self) -> str:
        return "SignInSucceeded(***)"


@dataclass(frozen=True)
class SignInFailed:
    error: str  # OAuth error name, or "invalid_response" when the answer did not fit the flow
    codes: frozenset[int]


SignInResult = SignInSucceeded | SignInFailed


def app_credential(settings: Settings) -> str | dict[str, Any]:
    """MSAL's ``client_credential`` for the configured kind. Built once per worker: no I/O here."""
    kind = settings.credential_kind
    if kind is AppCredentialKind.CLIENT_SECRET and settings.client_secret is not None:
        return settings.client_secret.value
    if kind is AppCredentialKind.CERTIFICATE and settings.client_certificate is not None:
        key = _PRIVATE_KEY_PEM.search(settings.client_certificate.value)
        if key is None or not settings.client_certificate_thumbprint:
            raise SettingsError({"CLIENT_CERTIFICATE": "must hold a PEM private key (and the certificate)"})
        return {"private_key": key.group(0), "thumbprint": settings.client_certificate_thumbprint}
    if kind is AppCredentialKind.MANAGED_IDENTITY and settings.federated_identity_client_id:
        return {"client_assertion": FederatedAssertion(settings.federated_identity_client_id)}
    raise SettingsError({"CLIENT_SECRET": "no app credential is configured"})


class FederatedAssertion:
    """A callable MSAL invokes for a client assertion: the managed identity's token for the token exchange.

    azure-identity caches the token and renews it before it expires, so MSAL always gets a live assertion.
    """

    def __init__(self, client_id: str) -> None:
        self._client_id = client_id
        self._lock = threading.Lock()
        self._credential: ManagedIdentityCredential | None = None

    def __call__(self) -> str:
        with self._lock:
            if self._credential is None:
                self._credential = ManagedIdentityCredential(client_id=self._client_id)
            credential = self._credential
        try:
            token: str = credential.get_token(TOKEN_EXCHANGE_SCOPE).token
            return token
        except AzureError as error:
            raise AuthenticationError(
                f"the managed identity gave no federated assertion ({type(error).__name__})"
            ) from error

    def __repr__(self) -> str:
        return "FederatedAssertion(***)"


class IdentityClient:
    """MSAL ``ConfidentialClientApplication`` s for one worker: one HTTP session and one ``http_cache`` shared
    by all of them, so authority discovery happens once per worker, not once per call."""

    def __init__(
        self, settings: Settings, session: requests.Session, credential: str | dict[str, Any] | None = None
    ) -> None:
        self._settings = settings
        self._session = session
        self._credential = credential if credential is not None else app_credential(settings)
        self._http_cache: dict[str, Any] = {}
        self.authority = f"{settings.authority_host.rstrip('/')}/{settings.tenant_id}"
        host = urlsplit(settings.authority_host).hostname or ""
        # Instance discovery asks login.microsoftonline.com about the authority: for Microsoft's hosts only.
        self._instance_discovery = None if host in WELL_KNOWN_AUTHORITY_HOSTS else False

    @property
    def redirect_uri(self) -> str:
        return f"{self._settings.public_base_url}/api/auth/callback"

    def application(
        self, cache: msal.SerializableTokenCache | None = None
    ) -> msal.ConfidentialClientApplication:
        try:
            return msal.ConfidentialClientApplication(
                self._settings.client_id,
                authority=self.authority,
                client_credential=self._credential,
                token_cache=cache,
                http_client=self._session,
                http_cache=self._http_cache,
                instance_discovery=self._instance_discovery,
            )
        except requests.RequestException as error:
            raise TransientRemoteError(
                f"Entra ID did not answer discovery ({type(error).__name__})"
            ) from error
        except ValueError as error:  # MSAL: "Unable to get authority configuration for …"
            raise AuthenticationError(
                "Entra ID refused the authority (check AUTHORITY_HOST/TENANT_ID)"
            ) from error

    def start_sign_in(self, *, state: str, login_hint: str | None) -> dict[str, Any]:
        """A new auth-code flow with PKCE (MSAL's dict: ``auth_uri``, verifier, nonce…); the response comes
        back as a form POST to the callback."""
        flow: dict[str, Any] = self.application().initiate_auth_code_flow(
            list(DELEGATED_SCOPES),
            redirect_uri=self.redirect_uri,
            state=state,
            login_hint=login_hint,
            response_mode="form_post",
        )
        return flow

    def admin_consent_url(self, *, state: str) -> str:
        """Entra's tenant-wide admin-consent page; its answer comes back to the callback as a query."""
        query = urlencode(
            {
                "client_id": self._settings.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": ADMIN_CONSENT_SCOPE,
                "state": state,
            }
        )
        return f"{self.authority}/v2.0/adminconsent?{query}"

    def finish_sign_in(self, flow: dict[str, Any], response: Mapping[str, str]) -> SignInResult:
        """Redeem the code in ``response`` for tokens with ``flow`` (checks state, PKCE and the nonce)."""
        cache = msal.SerializableTokenCache()
        app = self.application(cache)
        try:
            result = app.acquire_token_by_auth_code_flow(flow, dict(response))
        except requests.RequestException as error:
            raise TransientRemoteError(f"Entra ID did not answer ({type(error).__name__})") from error
        except MsalServiceError as error:
            raise TransientRemoteError("Entra ID failed (5xx)") from error
        except (ValueError, RuntimeError):
            # State or nonce mismatch, or no code/error: the answer does not belong to this flow. MSAL's
            # message quotes the values, so it is not kept.
            return SignInFailed("invalid_response", frozenset())
        if "error" in result:
            return SignInFailed(
                str(result["error"]), aadsts_codes(result.get("error_description"), result.get("error_codes"))
            )
        claims = result.get("id_token_claims") or {}
        accounts = app.get_accounts()
        home = next(
            (a["home_account_id"] for a in accounts if a.get("local_account_id") == claims.get("oid")),
            accounts[0]["home_account_id"] if accounts else None,
        )
        return SignInSucceeded(claims=dict(claims), home_account_id=home, serialized_cache=cache.serialize())


def translated(result: Mapping[str, Any], action: str) -> RemoteError:
    """The error for an MSAL error dict: name and AADSTS codes only, never the description."""
    error = str(result.get("error") or "unknown_error")
    codes = aadsts_codes(result.get("error_description"), result.get("error_codes"))
    listed = ",".join(f"AADSTS{code}" for code in sorted(codes)) or "no code"
    message = f"{action}: Entra ID answered {error} ({listed})"
    if error == "invalid_grant":
        return TokenRevokedError(message, code=error)
    if error in _TRANSIENT_ERRORS:
        return TransientRemoteError(message, code=error)
    return AuthenticationError(message, code=error)


class UserTokens:
    """Each user's MSAL token cache: encrypted in the ``tokens`` table, written only when it changed, and
    never over another instance's write (ETags: a conflict means someone refreshed first; theirs is kept)."""

    def __init__(self, identity: IdentityClient, store: TokenStore, cipher: TokenCipher) -> None:
        self._identity = identity
        self._store = store
        self._cipher = cipher

    def save_new(self, user_id: str, serialized_cache: str) -> None:
        """Store the cache of a fresh sign-in, replacing whatever the user had (a new sign-in wins)."""
        blob = self._cipher.encrypt(serialized_cache.encode("utf-8"), user_id=user_id)
        for _attempt in range(_MAX_SAVE_ATTEMPTS):
            current = self._store.get(user_id)
            try:
                self._store.put(user_id, blob, etag=None if current is None else current.etag)
                return
            except ConflictError:
                continue  # a refresh of the old cache landed meanwhile: replace that one
        raise ConflictError(f"tokens: user {user_id} kept changing while a sign-in was saved")

    def delete(self, user_id: str) -> None:
        self._store.delete(user_id)

    def access_token(self, user_id: str, home_account_id: str | None, *, force_refresh: bool = False) -> str:
        """A live Graph access token for the user, refreshed silently when needed (``force_refresh``: even
        when the cached one looks valid, e.g. after Graph refused it with 401).

        No cache, no account in it, or ``invalid_grant`` → ``TokenRevokedError``; an unreadable cache →
        ``TokenCacheUnreadableError``. A cache written under an older key is re-encrypted with the current.
        """
        for _attempt in range(_MAX_SAVE_ATTEMPTS):
            stored = self._store.get(user_id)
            if stored is None:
                raise TokenRevokedError(f"tokens: user {user_id} has no stored tokens", code="no_tokens")
            cache = msal.SerializableTokenCache()
            cache.deserialize(self._cipher.decrypt(stored.value, user_id=user_id).decode("utf-8"))
            app = self._identity.application(cache)
            account = next(
                (a for a in app.get_accounts() if home_account_id in (None, a.get("home_account_id"))), None
            )
            if account is None:
                raise TokenRevokedError(
                    f"tokens: user {user_id} has no account in the cache", code="no_account"
                )
            try:
                result = app.acquire_token_silent_with_error(
                    list(DELEGATED_SCOPES), account, force_refresh=force_refresh
                )
            except requests.RequestException as error:
                raise TransientRemoteError(f"Entra ID did not answer ({type(error).__name__})") from error
            except MsalServiceError as error:
                raise TransientRemoteError("Entra ID failed (5xx)") from error
            if result is None:
                raise TokenRevokedError(
                    f"tokens: user {user_id} has no usable refresh token", code="no_grant"
                )
            if "access_token" not in result:
                raise translated(result, f"tokens: refreshing user {user_id}")
            stale_key = self._cipher.key_id_of(stored.value) != self._cipher.current_key_id
            if cache.has_state_changed or stale_key:
                blob = self._cipher.encrypt(cache.serialize().encode("utf-8"), user_id=user_id)
                try:
                    self._store.put(user_id, blob, etag=stored.etag)
                except ConflictError:
                    # Another instance refreshed (or the user reconnected) meanwhile: keep theirs, read it
                    # again and take the token from it; ours is dropped, never written over theirs.
                    log.info("tokens: user %s was refreshed elsewhere meanwhile; reloading", user_id)
                    continue
            token: str = result["access_token"]
            return token
        raise ConflictError(f"tokens: user {user_id} kept changing while refreshing")


AccessTokenProvider = Callable[[], str]
