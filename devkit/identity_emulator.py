"""An Entra ID (Microsoft identity platform v2.0) emulator over HTTPS, so real MSAL and azure-identity run.

Terminology
-----------
tenant segment   the first path segment of an authority URL: a tenant id, a tenant's domain, or one of
                 ``common``, ``organizations``, ``consumers``.
consumer tenant  ``9188040d-6c67-4c5b-b112-36a304b66dad``, where personal Microsoft accounts live; their
                 tokens carry it as ``tid``.
permission       a Microsoft Graph delegated scope (``Calendars.ReadWrite``) or app role (``roles``).
grant            what a refresh token stands for: one user, one app, one sign-in.
outcome          how the (simulated) browser sign-in ends. Nobody types a password here: ``/authorize``
                 decides at once and redirects. Success unless a queued sign-in or the consent state says
                 otherwise.
FIC              federated identity credential: an (issuer, subject, audience) an app trusts, so that a
                 managed identity's token stands in for a client secret.

What it serves (the paths login.microsoftonline.com serves, so MSAL needs only the authority URL):

    GET  /{tenant}/v2.0/.well-known/openid-configuration
    GET  /{tenant}/discovery/v2.0/keys
    GET  /{tenant}/oauth2/v2.0/authorize       auth code + PKCE (S256 required), response_mode query|form_post
    POST /{tenant}/oauth2/v2.0/token           authorization_code, refresh_token, client_credentials;
                                               client secret (body or Basic), certificate or federated
                                               client assertion
    GET  /{tenant}/v2.0/adminconsent           tenant-wide admin consent
    GET  /msi/token                            (plain HTTP, separate port) the App Service / Functions
                                               managed identity endpoint, for IDENTITY_ENDPOINT
    /_devkit/...                               control API (see ``_CONTROL_ROUTES``)

Choices, where Entra leaves room:
- Refresh tokens rotate (each use returns a new one) and the old one stays valid, as in Entra, until the
  user's sessions are revoked (``AADSTS50173``) or it sits unused for 90 days on the emulator clock
  (``AADSTS700082``). MSAL may race two refreshes; neither loses.
- ``/authorize`` errors that Entra shows on its own page (unknown tenant/client, bad redirect URI, a user
  from the wrong tenant or a personal account on ``organizations``) are HTTP 400 with the JSON error body;
  the rest are redirected to the app, as RFC 6749 §4.1.2.1 says.
- A personal account signs in only where Entra lets it: ``common`` or ``consumers``.
- The emulator clock (``Clock``) ages codes, access and refresh tokens. MSAL's cache only knows the wall
  clock, so to make MSAL refresh silently lower ``access_token_lifetime`` below MSAL's 5-minute margin (or
  use ``force_refresh``); share the ``Clock`` with the Graph emulator so both see the same time.
- Client assertions are minted on the caller's (wall) clock: one valid at the wall clock or the emulator
  clock is accepted.
- Where no well-known AADSTS code exists for a case, ``AADSTS9002313`` (malformed request) or
  ``AADSTS70000`` (invalid grant) is used, with a ``(devkit: …)`` note saying what was wrong.

Secrets (codes, tokens, secrets, assertions) are never logged: the request log keeps the path, the client
id, the grant type, the status and the error code only. Codes and refresh tokens are stored by digest.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import enum
import hashlib
import hmac
import html
import json
import logging
import re
import secrets
import signal
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from devkit.jwt import InvalidTokenError, SigningKey, b64url, b64url_decode, verify
from devkit.tls import CertAuthority

logger = logging.getLogger(__name__)

CONSUMER_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"
GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
DEFAULT_DELEGATED_PERMISSIONS = ("Calendars.ReadWrite", "User.Read")

AUTH_CODE_LIFETIME = 600
ID_TOKEN_LIFETIME = 3600
REFRESH_TOKEN_MAX_INACTIVE = 90 * 24 * 3600
MANAGED_IDENTITY_TOKEN_LIFETIME = 24 * 3600
ASSERTION_SKEW = 300
MAX_BODY_BYTES = 1_048_576
_ID_NAMESPACE = uuid.UUID("6f1c8f0e-4d7a-4b8e-9a51-3c2d1e0f9a7b")
_AUTH_METHODS = ["client_secret_post", "private_key_jwt", "client_secret_basic"]
_CLAIMS = [
    "sub",
    "iss",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "preferred_username",
    "name",
    "tid",
    "ver",
    "email",
    "oid",
]


class SignInOutcome(enum.Enum):
    """How the next browser sign-in ends."""

    SUCCESS = "success"
    CONSENT_DENIED = "consent_denied"  # the user clicked Cancel on the consent prompt
    ADMIN_APPROVAL_REQUIRED = "admin_approval_required"  # "Need admin approval"
    PERSONAL_ACCOUNT = "personal_account"  # someone signs in with an outlook.com account


class Clock:
    """Wall time plus an offset that tests move forward; share one between emulators."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds
        return self.now()

    @property
    def offset(self) -> float:
        with self._lock:
            return self._offset


# --- directory records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    domain: str
    display_name: str
    require_admin_consent: bool = False  # users may not consent to apps themselves


@dataclass(frozen=True)
class User:
    oid: str
    tenant_id: str
    upn: str
    display_name: str
    is_admin: bool = False

    @property
    def personal(self) -> bool:
        return self.tenant_id == CONSUMER_TENANT_ID


@dataclass(frozen=True)
class FederatedCredential:
    issuer: str
    subject: str
    audiences: tuple[str, ...] = (TOKEN_EXCHANGE_AUDIENCE,)


@dataclass(frozen=True)
class ClientCertificate:
    sha1_thumbprint: str  # lower-case hex, as MSAL's ``thumbprint`` (x5t)
    sha256_thumbprint: str  # x5t#S256
    public_key: rsa.RSAPublicKey = field(repr=False)

    @classmethod
    def from_pem(cls, pem: bytes | str) -> ClientCertificate:
        cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("client certificates must hold an RSA key (MSAL signs RS256/PS256)")
        return cls(
            cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 - x5t is SHA-1 by definition (RFC 7515)
            cert.fingerprint(hashes.SHA256()).hex(),
            key,
        )


@dataclass(frozen=True)
class App:
    client_id: str
    home_tenant_id: str
    display_name: str
    redirect_uris: tuple[str, ...]
    client_secrets: tuple[str, ...] = field(default=(), repr=False)
    certificates: tuple[ClientCertificate, ...] = ()
    federated_credentials: tuple[FederatedCredential, ...] = ()
    delegated_permissions: tuple[str, ...] = DEFAULT_DELEGATED_PERMISSIONS
    application_permissions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ManagedIdentity:
    client_id: str
    principal_id: str  # the object id: ``sub`` and ``oid`` of its tokens, the FIC subject
    tenant_id: str
    system_assigned: bool = False


@dataclass(frozen=True)
class RequestRecord:
    """One request as the log keeps it: no query string, body, token, code or secret."""

    at: float
    method: str
    path: str
    status: int
    client_id: str | None
    grant_type: str | None
    error: str | None
    error_code: int | None


@dataclass(frozen=True)
class _PendingSignIn:
    user: User | None
    outcome: SignInOutcome


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


@dataclass(frozen=True)
class _Authority:
    segment: str
    kind: Literal["tenant", "common", "organizations", "consumers"]
    tenant_id: str | None  # None for common / organizations

    def admits(self, user: User) -> bool:
        if self.kind == "organizations":
            return not user.personal
        if self.kind == "common":
            return True
        return user.tenant_id == self.tenant_id


# --- errors as Entra words them ------------------------------------------------------------------------

_MESSAGES: dict[int, str] = {
    50011: "The redirect URI '{0}' specified in the request does not match the redirect URIs configured for "
    "the application '{1}'. Make sure the redirect URI sent in the request matches one added to your "
    "application in the Azure portal. Navigate to https://aka.ms/redirectUriMismatchError to learn more "
    "about how to fix this.",
    50020: "User account '{0}' from identity provider '{1}' does not exist in tenant '{2}' and cannot access "
    "the application '{3}' in that tenant.",
    50027: "JWT token is invalid or malformed.",
    50034: "The user account {0} does not exist in the '{1}' directory. To sign into this application, the "
    "account must be added to the directory.",
    50059: "No tenant-identifying information found in either the request or implied by any provided "
    "credentials.",
    50173: "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user "
    "might have changed or reset their password. The grant was issued on '{0}' and the TokensValidFrom date "
    "(before which tokens are not valid) for this user is '{1}'.",
    54005: "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an "
    "existing refresh token.",
    65001: "The user or administrator has not consented to use the application with ID '{0}' named '{1}'. "
    "Send an interactive authorization request for this user and resource.",
    65004: "User declined to consent to access the app.",
    70000: "Provided grant is invalid or malformed.",
    70003: "The app requested an unsupported grant type '{0}'.",
    70008: "The provided authorization code or refresh token has expired due to inactivity. Send a new "
    "interactive authorization request for this user and resource.",
    70011: "The provided value for the input parameter 'scope' is not valid. The scope {0} is not valid.",
    90002: "Tenant '{0}' not found. Check to make sure you have the correct tenant ID and are signing into "
    "the correct cloud.",
    90094: "The grant requires admin permission.",
    500011: "The resource principal named {0} was not found in the tenant named {1}. This can happen if the "
    "application has not been installed by the administrator of the tenant or consented to by any user in "
    "the tenant. You might have sent your authentication request to the wrong tenant.",
    501481: "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
    501491: "Invalid size of Code_Challenge parameter.",
    700016: "Application with identifier '{0}' was not found in the directory '{1}'. This can happen if the "
    "application has not been installed by the administrator of the tenant or consented to by any user in "
    "the tenant. You may have sent your authentication request to the wrong tenant.",
    700021: "Client assertion application identifier doesn't match 'client_id' parameter.",
    700024: "Client assertion is not within its valid time range. Current time: {0}, assertion valid from "
    "{1}, expiry time of assertion {2}.",
    700027: "Client assertion failed signature validation.",
    700054: "response_type '{0}' is not enabled for the application.",
    700082: "The refresh token has expired due to inactivity. The token was issued on {0} and was inactive "
    "for 90.00:00:00.",
    700211: "No matching federated identity record found for presented assertion issuer '{0}'. Please check "
    "your federated identity credential Subject, Audience and Issuer against the presented assertion.",
    700212: "No matching federated identity record found for presented assertion audience '{0}'. Please "
    "check your federated identity credential Subject, Audience and Issuer against the presented assertion.",
    700213: "No matching federated identity record found for presented assertion subject '{0}'. Please check "
    "your federated identity credential Subject, Audience and Issuer against the presented assertion.",
    900144: "The request body must contain the following parameter: '{0}'.",
    1002012: "The provided value for scope {0} is not valid. Client credential flows must have a scope value "
    "with /.default suffixed to the resource identifier (application ID URI).",
    7000215: "Invalid client secret provided. Ensure the secret being sent in the request is the client "
    "secret value, not the client secret ID, for a secret added to app '{0}'.",
    7000218: "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    9002313: "Invalid request. Request is malformed or invalid.",
}


class _OAuthError(Exception):
    """An error answered as Entra does: JSON body on the token endpoint, or Entra's own error page."""

    def __init__(
        self,
        error: str,
        code: int,
        *args: object,
        status: int = 400,
        detail: str | None = None,
        suberror: str | None = None,
        subcode: str | None = None,
    ) -> None:
        message = _MESSAGES[code].format(*args)
        if detail:
            message += f" (devkit: {detail})"
        super().__init__(f"AADSTS{code}: {message}")
        self.error = error
        self.code = code
        self.status = status
        self.suberror = suberror
        self.subcode = subcode


class _RedirectError(_OAuthError):
    """An ``/authorize`` error that goes back to the app's redirect URI rather than to a page."""


class _ControlError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _missing(name: str, redirect: bool = False) -> _OAuthError:
    kind = _RedirectError if redirect else _OAuthError
    return kind("invalid_request", 900144, name)


# --- HTTP plumbing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: Mapping[str, str]
    form: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    error: str | None = None  # for the request log
    error_code: int | None = None


def _json(status: int, payload: object, **kwargs: Any) -> _Response:
    return _Response(status, json.dumps(payload).encode(), **kwargs)


def _first_values(pairs: Mapping[str, list[str]]) -> dict[str, str]:
    return {name: values[0] for name, values in pairs.items() if values}


def _timestamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _s256(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Header, claims, signing input and signature of a JWS; ``ValueError`` if it is not one."""
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(b64url_decode(header_b64))
    claims = json.loads(b64url_decode(payload_b64))
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("not a JWT")
    return header, claims, f"{header_b64}.{payload_b64}".encode("ascii"), b64url_decode(signature_b64)


def _signature_valid(
    algorithm: object, public_key: rsa.RSAPublicKey, signing_input: bytes, signature: bytes
) -> bool:
    if algorithm == "RS256":
        scheme: padding.AsymmetricPadding = padding.PKCS1v15()
    elif algorithm == "PS256":  # MSAL signs with PS256 when given the certificate instead of a thumbprint
        scheme = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
    else:
        return False
    try:
        public_key.verify(signature, signing_input, scheme, hashes.SHA256())
    except InvalidSignature:
        return False
    return True


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


def _pairwise_subject(oid: str, client_id: str) -> str:
    return b64url(hashlib.sha256(f"{oid}|{client_id}".encode()).digest())


def _client_info(user: User) -> str:
    return b64url(json.dumps({"uid": user.oid, "utid": user.tenant_id}).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that does not trust the CA, or hangs up, is not the emulator's failure.
        logger.debug("connection from %s failed: %r", client_address, sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    emulator: ClassVar[IdentityEmulator]
    channel: ClassVar[str]  # "tls" (everything) or "msi" (the plain-HTTP managed identity endpoint)
    server_version = "devkit-identity"
    sys_version = ""
    timeout = 15

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):  # handshake here, in the request's own thread
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._write(_json(413, {"error": "request_too_large"}))
            return
        body = self.rfile.read(length) if length else b""
        form: dict[str, str] = {}
        if "application/x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
            form = _first_values(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))
        request = _Request(
            method=self.command,
            path=parts.path,
            query=_first_values(parse_qs(parts.query, keep_blank_values=True)),
            form=form,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        self._write(self.emulator._handle(request, self.channel))

    def _write(self, response: _Response) -> None:
        self.close_connection = True
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Connection", "close")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: ``IdentityEmulator.handle`` logs one masked line per request."""


# --- the emulator ------------------------------------------------------------------------------------


class IdentityEmulator:
    """An Entra ID tenant directory with OAuth2/OIDC endpoints on ``base_url`` (HTTPS, trusted via ``ca``).

    Use as a context manager, or ``start()``/``stop()``. Every control is a Python method (tests run the
    emulator in-process) and an HTTP endpoint under ``/_devkit/`` (for the demo and other processes).
    """

    def __init__(
        self,
        ca: CertAuthority,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        signing_key: SigningKey | None = None,
        access_token_lifetime: int = 3600,
    ) -> None:
        self._ca = ca
        self._host = host
        self._port = port
        self.clock = clock or Clock()
        self._signing_key = signing_key or SigningKey.generate("devkit-" + secrets.token_hex(4))
        self.access_token_lifetime = access_token_lifetime
        self._identity_header = secrets.token_urlsafe(24)
        self._lock = threading.RLock()
        self._tenants: dict[str, Tenant] = {}
        self._users: dict[str, User] = {}
        self._tokens_valid_from: dict[str, float] = {}
        self._apps: dict[str, App] = {}
        self._managed_identities: dict[str, ManagedIdentity] = {}
        self._user_consents: dict[tuple[str, str], frozenset[str]] = {}
        self._admin_consents: dict[tuple[str, str], frozenset[str]] = {}
        self._codes: dict[str, _AuthCode] = {}
        self._refresh_tokens: dict[str, _RefreshGrant] = {}
        self._pending: deque[_PendingSignIn] = deque()
        self._log: list[RequestRecord] = []
        self._servers: list[tuple[_Server, threading.Thread]] = []
        self._base_url: str | None = None
        self._msi_url: str | None = None
        self.add_tenant(CONSUMER_TENANT_ID, domain="live.com", display_name="Microsoft Accounts")

    # -- lifecycle

    def start(self) -> IdentityEmulator:
        if self._servers:
            raise RuntimeError("the identity emulator is already running")
        certificate = self._ca.issue_server_certificate(
            name="identity-emulator-" + secrets.token_hex(4), hosts=("localhost", "127.0.0.1")
        )
        tls = self._serve_in_thread(self._port, "tls")
        context = certificate.ssl_context()
        tls.socket = context.wrap_socket(tls.socket, server_side=True, do_handshake_on_connect=False)
        msi = self._serve_in_thread(0, "msi")
        self._base_url = f"https://{self._host}:{tls.server_address[1]}"
        self._msi_url = f"http://{self._host}:{msi.server_address[1]}/msi/token"
        for _server, thread in self._servers:
            thread.start()
        logger.info("identity emulator listening on %s", self._base_url)
        return self

    def _serve_in_thread(self, port: int, channel: str) -> _Server:
        handler = type("Handler", (_Handler,), {"emulator": self, "channel": channel})
        server = _Server((self._host, port), handler)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"identity-emulator-{channel}",
            daemon=True,
        )
        self._servers.append((server, thread))
        return server

    def stop(self) -> None:
        servers, self._servers = self._servers, []
        # shutdown() waits up to a poll interval; both servers wait at once.
        stoppers = [threading.Thread(target=s.shutdown) for s, thread in servers if thread.is_alive()]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for server, thread in servers:
            thread.join()
            server.server_close()

    def __enter__(self) -> IdentityEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

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

    # -- directory (Python control API)

    def add_tenant(
        self,
        tenant_id: str | None = None,
        *,
        domain: str | None = None,
        display_name: str | None = None,
        require_admin_consent: bool = False,
    ) -> Tenant:
        tenant_id = tenant_id or str(uuid.uuid4())
        tenant = Tenant(
            tenant_id=tenant_id,
            domain=(domain or f"t{tenant_id[:8]}.onmicrosoft.com").lower(),
            display_name=display_name or f"Tenant {tenant_id[:8]}",
            require_admin_consent=require_admin_consent,
        )
        with self._lock:
            if tenant_id in self._tenants:
                raise ValueError(f"tenant {tenant_id} exists")
            self._tenants[tenant_id] = tenant
        return tenant

    def set_require_admin_consent(self, tenant_id: str, required: bool) -> Tenant:
        with self._lock:
            tenant = replace(self._tenant(tenant_id), require_admin_consent=required)
            self._tenants[tenant_id] = tenant
        return tenant

    def add_user(
        self,
        tenant_id: str,
        upn: str,
        *,
        display_name: str | None = None,
        oid: str | None = None,
        is_admin: bool = False,
    ) -> User:
        with self._lock:
            self._tenant(tenant_id)
            if self._find_user(upn) is not None:
                raise ValueError(f"user {upn} exists")
            user = User(
                oid=oid or str(uuid.uuid4()),
                tenant_id=tenant_id,
                upn=upn,
                display_name=display_name or upn.split("@")[0].replace(".", " ").title(),
                is_admin=is_admin,
            )
            self._users[user.oid] = user
        return user

    def add_personal_account(self, upn: str, *, display_name: str | None = None) -> User:
        """A personal Microsoft account (outlook.com, hotmail.com…): a user of the consumer tenant."""
        oid = "00000000-0000-0000-" + secrets.token_hex(2) + "-" + secrets.token_hex(6)
        return self.add_user(CONSUMER_TENANT_ID, upn, display_name=display_name, oid=oid)

    def register_app(
        self,
        home_tenant_id: str,
        *,
        client_id: str | None = None,
        display_name: str = "CRM sync (devkit)",
        redirect_uris: Sequence[str] = (),
        client_secret: str | None = None,
        certificates: Sequence[bytes | str] = (),
        federated_credentials: Sequence[FederatedCredential] = (),
        delegated_permissions: Sequence[str] = DEFAULT_DELEGATED_PERMISSIONS,
        application_permissions: Sequence[str] = (),
    ) -> App:
        """Register an app; its application permissions count as granted in its home tenant."""
        app = App(
            client_id=client_id or str(uuid.uuid4()),
            home_tenant_id=home_tenant_id,
            display_name=display_name,
            redirect_uris=tuple(redirect_uris),
            client_secrets=(client_secret,) if client_secret else (),
            certificates=tuple(ClientCertificate.from_pem(pem) for pem in certificates),
            federated_credentials=tuple(federated_credentials),
            delegated_permissions=tuple(delegated_permissions),
            application_permissions=tuple(application_permissions),
        )
        with self._lock:
            self._tenant(home_tenant_id)
            if app.client_id in self._apps:
                raise ValueError(f"app {app.client_id} exists")
            self._apps[app.client_id] = app
        return app

    def add_managed_identity(
        self,
        tenant_id: str,
        *,
        client_id: str | None = None,
        principal_id: str | None = None,
        system_assigned: bool = False,
    ) -> ManagedIdentity:
        identity = ManagedIdentity(
            client_id=client_id or str(uuid.uuid4()),
            principal_id=principal_id or str(uuid.uuid4()),
            tenant_id=tenant_id,
            system_assigned=system_assigned,
        )
        with self._lock:
            self._tenant(tenant_id)
            self._managed_identities[identity.client_id] = identity
        return identity

    def queue_sign_in(self, user: str | None = None, outcome: SignInOutcome = SignInOutcome.SUCCESS) -> None:
        """Decide how the next ``/authorize`` (or ``/adminconsent``) ends; ``user`` is a UPN or object id."""
        with self._lock:
            found = None
            if user is not None:
                found = self._find_user(user)
                if found is None:
                    raise ValueError(f"no user {user}")
            self._pending.append(_PendingSignIn(found, outcome))

    def grant_admin_consent(
        self, tenant_id: str, client_id: str, permissions: Iterable[str] | None = None
    ) -> None:
        """What an admin's trip through ``/adminconsent`` records (default: all the app's permissions)."""
        with self._lock:
            self._tenant(tenant_id)
            app = self._app(client_id)
            granted = frozenset(app.delegated_permissions if permissions is None else permissions)
            key = (tenant_id, client_id)
            self._admin_consents[key] = self._admin_consents.get(key, frozenset()) | granted

    def revoke_sign_in_sessions(self, oid: str) -> None:
        """As Graph's ``revokeSignInSessions``: every refresh token the user holds stops working."""
        with self._lock:
            if oid not in self._users:
                raise KeyError(oid)
            self._tokens_valid_from[oid] = self.clock.now()

    def request_log(self) -> tuple[RequestRecord, ...]:
        with self._lock:
            return tuple(self._log)

    def users(self) -> tuple[User, ...]:
        with self._lock:
            return tuple(self._users.values())

    # -- lookups (lock held)

    def _tenant(self, tenant_id: str) -> Tenant:
        try:
            return self._tenants[tenant_id]
        except KeyError:
            raise KeyError(f"no tenant {tenant_id}") from None

    def _app(self, client_id: str) -> App:
        try:
            return self._apps[client_id]
        except KeyError:
            raise KeyError(f"no app {client_id}") from None

    def _find_user(self, upn_or_oid: str) -> User | None:
        if upn_or_oid in self._users:
            return self._users[upn_or_oid]
        wanted = upn_or_oid.lower()
        return next((u for u in self._users.values() if u.upn.lower() == wanted), None)

    def _resolve_authority(self, segment: str) -> _Authority:
        lowered = segment.lower()
        if lowered in ("common", "organizations"):
            return _Authority(segment, "common" if lowered == "common" else "organizations", None)
        if lowered == "consumers":
            return _Authority(segment, "consumers", CONSUMER_TENANT_ID)
        tenant = self._tenants.get(lowered) or next(
            (t for t in self._tenants.values() if t.domain == lowered), None
        )
        if tenant is None:
            raise _OAuthError("invalid_request", 90002, segment)
        return _Authority(segment, "tenant", tenant.tenant_id)

    def _consented(self, user: User, app: App) -> frozenset[str]:
        return self._user_consents.get((user.oid, app.client_id), frozenset()) | self._admin_consents.get(
            (user.tenant_id, app.client_id), frozenset()
        )

    # -- request handling

    def _handle(self, request: _Request, channel: str) -> _Response:
        """Answer one request (called by the HTTP servers' threads) and log it, masked."""
        correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
        try:
            response = self._route(request, channel)
        except _OAuthError as error:
            response = self._error_response(error, correlation_id)
        except _ControlError as error:
            response = _json(error.status, {"error": "bad_request", "message": str(error)})
        except Exception:  # an emulator bug: answer 500 (MSAL raises on it) rather than drop the line
            logger.exception("%s %s failed", request.method, request.path)
            response = _json(500, {"error": "server_error"}, error="server_error")
        with self._lock:
            self._log.append(
                RequestRecord(
                    at=self.clock.now(),
                    method=request.method,
                    path=request.path,
                    status=response.status,
                    client_id=request.form.get("client_id") or request.query.get("client_id"),
                    grant_type=request.form.get("grant_type"),
                    error=response.error,
                    error_code=response.error_code,
                )
            )
        logger.info(
            "%s %s -> %s%s",
            request.method,
            request.path,
            response.status,
            f" {response.error} AADSTS{response.error_code}" if response.error_code else "",
        )
        return response

    def _route(self, request: _Request, channel: str) -> _Response:
        if channel == "msi":
            if request.path == "/msi/token" and request.method == "GET":
                return self._managed_identity_token(request)
            return _json(404, {"statusCode": 404, "message": "not found"})
        if request.path.startswith("/_devkit/"):
            try:
                return self._dispatch(_CONTROL_ROUTES, request)
            except (KeyError, ValueError, TypeError) as error:  # unknown id, missing field, bad value
                raise _ControlError(str(error).strip("'\"")) from None
        return self._dispatch(_PROTOCOL_ROUTES, request)

    def _dispatch(self, routes: tuple[tuple[str, re.Pattern[str], str], ...], request: _Request) -> _Response:
        allowed = False
        for method, pattern, name in routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            if method == request.method:
                endpoint: Callable[[IdentityEmulator, _Request, re.Match[str]], _Response] = getattr(
                    IdentityEmulator, name
                )
                return endpoint(self, request, match)
            allowed = True
        if allowed:
            return _json(405, {"error": "method_not_allowed"})
        return _json(404, {"error": "not_found", "message": f"no such endpoint: {request.path}"})

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

    # -- discovery

    def _discovery(self, request: _Request, match: re.Match[str]) -> _Response:
        with self._lock:
            authority = self._resolve_authority(match["tenant"])
        segment = match["tenant"]
        base = self.base_url
        issuer_tenant = authority.tenant_id if authority.tenant_id else "{tenantid}"
        return _json(
            200,
            {
                "token_endpoint": f"{base}/{segment}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": _AUTH_METHODS,
                "jwks_uri": f"{base}/{segment}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/{issuer_tenant}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
                "authorization_endpoint": f"{base}/{segment}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/{segment}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/{segment}/oauth2/v2.0/logout",
                "claims_supported": _CLAIMS,
                "code_challenge_methods_supported": ["S256"],
                "tenant_region_scope": None,
                "cloud_instance_name": urlsplit(base).netloc,
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
            },
        )

    def _keys(self, request: _Request, match: re.Match[str]) -> _Response:
        with self._lock:
            self._resolve_authority(match["tenant"])
        return _json(200, {"keys": self.jwks()})

    # -- /authorize

    def _authorize(self, request: _Request, match: re.Match[str]) -> _Response:
        params = {**request.query, **request.form}
        with self._lock:
            authority = self._resolve_authority(match["tenant"])
            app = self._app_for_browser(params.get("client_id"), authority)
            redirect_uri = params.get("redirect_uri")
            if not redirect_uri:
                raise _missing("redirect_uri")
            if redirect_uri not in app.redirect_uris:
                raise _OAuthError("invalid_request", 50011, redirect_uri, app.client_id)
            reply = _Reply(redirect_uri, params.get("state"), params.get("response_mode") or "query")
            try:
                answer = self._sign_in(authority, app, params, redirect_uri)
            except _RedirectError as error:
                correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
                return reply.send(self._redirect_error_params(error, correlation_id), error)
        return reply.send(answer)

    def _app_for_browser(self, client_id: str | None, authority: _Authority) -> App:
        if not client_id:
            raise _missing("client_id")
        app = self._apps.get(client_id)
        if app is None:
            raise _OAuthError(
                "unauthorized_client", 700016, client_id, authority.tenant_id or authority.segment
            )
        return app

    def _redirect_error_params(self, error: _OAuthError, correlation_id: str) -> dict[str, str]:
        body = self._error_body(error, correlation_id)
        params = {"error": error.error, "error_description": body["error_description"]}
        if error.subcode:
            params["error_subcode"] = error.subcode
        params["error_uri"] = body["error_uri"]
        return params

    def _sign_in(
        self, authority: _Authority, app: App, params: Mapping[str, str], redirect_uri: str
    ) -> dict[str, str]:
        """Validate the request, pick the user and the outcome, and return the success parameters."""
        response_type = params.get("response_type")
        if not response_type:
            raise _missing("response_type", redirect=True)
        if response_type != "code":
            raise _RedirectError("unsupported_response_type", 700054, response_type)
        challenge = params.get("code_challenge")
        if not challenge:
            raise _missing("code_challenge", redirect=True)
        if params.get("code_challenge_method") != "S256":
            raise _RedirectError(
                "invalid_request", 9002313, detail="code_challenge_method must be S256 (PKCE is required)"
            )
        if len(challenge) != 43:
            raise _RedirectError("invalid_request", 501491)
        if not params.get("scope"):
            raise _missing("scope", redirect=True)
        scopes = _parse_scopes(params.get("scope"), redirect=True)

        pending = self._pending.popleft() if self._pending else None
        outcome = pending.outcome if pending else SignInOutcome.SUCCESS
        user = self._choose_user(authority, params.get("login_hint"), pending)
        if not authority.admits(user):
            idp = "live.com" if user.personal else "sts.windows.net"
            raise _OAuthError(
                "invalid_request",
                50020,
                user.upn,
                idp,
                authority.tenant_id or authority.segment,
                app.client_id,
            )
        if outcome is SignInOutcome.CONSENT_DENIED:
            raise _RedirectError("access_denied", 65004, subcode="cancel")
        if outcome is SignInOutcome.ADMIN_APPROVAL_REQUIRED:
            raise _RedirectError("access_denied", 90094)

        wanted = scopes.resolve(app)
        missing = wanted - self._consented(user, app)
        if missing or params.get("prompt") == "consent":
            if self._tenants[user.tenant_id].require_admin_consent and missing:
                raise _RedirectError("access_denied", 90094)
            if params.get("prompt") == "none":
                raise _RedirectError("consent_required", 65001, app.client_id, app.display_name)
            key = (user.oid, app.client_id)  # the user accepts the consent prompt
            self._user_consents[key] = self._user_consents.get(key, frozenset()) | wanted

        code = secrets.token_urlsafe(48)
        self._codes[_digest(code)] = _AuthCode(
            client_id=app.client_id,
            redirect_uri=redirect_uri,
            code_challenge=challenge,
            user_oid=user.oid,
            tenant_id=user.tenant_id,
            scopes=scopes,
            permissions=wanted,
            nonce=params.get("nonce"),
            issued_at=self.clock.now(),
        )
        return {"code": code, "session_state": str(uuid.uuid5(_ID_NAMESPACE, f"session:{user.oid}"))}

    def _choose_user(
        self, authority: _Authority, login_hint: str | None, pending: _PendingSignIn | None
    ) -> User:
        """Queued user, else login_hint, else the authority's first user; a personal outcome needs an MSA."""
        user = pending.user if pending else None
        if user is None and login_hint:
            user = self._find_user(login_hint)
            if user is None:
                raise _OAuthError("invalid_request", 50034, login_hint, authority.segment)
        personal = pending is not None and pending.outcome is SignInOutcome.PERSONAL_ACCOUNT
        if personal and (user is None or not user.personal):
            user = self._default_user(CONSUMER_TENANT_ID)
        if user is None:
            if authority.tenant_id is not None:
                user = self._default_user(authority.tenant_id)
            else:
                user = next((u for u in self._users.values() if not u.personal), None)
        if user is None:
            raise _OAuthError("invalid_request", 50034, login_hint or "(none)", authority.segment)
        return user

    def _default_user(self, tenant_id: str) -> User:
        found = next((u for u in self._users.values() if u.tenant_id == tenant_id), None)
        if found is not None:
            return found
        if tenant_id == CONSUMER_TENANT_ID:
            return self.add_personal_account("personal.account@outlook.com", display_name="Personal Account")
        raise _OAuthError("invalid_request", 50034, "(none)", tenant_id)

    # -- /adminconsent

    def _admin_consent(self, request: _Request, match: re.Match[str]) -> _Response:
        params = request.query
        with self._lock:
            authority = self._resolve_authority(match["tenant"])
            app = self._app_for_browser(params.get("client_id"), authority)
            redirect_uri = params.get("redirect_uri")
            if not redirect_uri:
                raise _missing("redirect_uri")
            if redirect_uri not in app.redirect_uris:
                raise _OAuthError("invalid_request", 50011, redirect_uri, app.client_id)
            reply = _Reply(redirect_uri, params.get("state"), "query")
            correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
            try:
                answer = self._record_admin_consent(authority, app, params)
            except _RedirectError as error:
                return reply.send(self._redirect_error_params(error, correlation_id), error)
        return reply.send(answer)

    def _record_admin_consent(
        self, authority: _Authority, app: App, params: Mapping[str, str]
    ) -> dict[str, str]:
        scopes = _parse_scopes(params.get("scope") or f"{GRAPH_RESOURCE}/.default", redirect=True)
        pending = self._pending.popleft() if self._pending else None
        admin = pending.user if pending else None
        if admin is None and authority.tenant_id is not None:
            admin = next(
                (u for u in self._users.values() if u.tenant_id == authority.tenant_id and u.is_admin), None
            )
        if admin is None:
            raise _OAuthError("invalid_request", 50034, "(an administrator)", authority.segment)
        if admin.personal or not authority.admits(admin):
            idp = "live.com" if admin.personal else "sts.windows.net"
            raise _OAuthError("invalid_request", 50020, admin.upn, idp, authority.segment, app.client_id)
        if pending is not None and pending.outcome is SignInOutcome.CONSENT_DENIED:
            raise _RedirectError("access_denied", 65004, subcode="cancel")
        if not admin.is_admin or (pending and pending.outcome is SignInOutcome.ADMIN_APPROVAL_REQUIRED):
            raise _RedirectError("access_denied", 90094)
        granted = scopes.resolve(app)
        key = (admin.tenant_id, app.client_id)
        self._admin_consents[key] = self._admin_consents.get(key, frozenset()) | granted
        return {
            "admin_consent": "True",
            "tenant": admin.tenant_id,
            "scope": " ".join(f"{GRAPH_RESOURCE}/{name}" for name in sorted(granted)),
        }

    # -- /token

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

    def _authenticate_client(
        self, authority: _Authority, form: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[App, str]:
        """The calling app and how it proved itself: "secret", "certificate" or "federated"."""
        client_id = form.get("client_id")
        secret = form.get("client_secret")
        basic = headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(basic[6:].strip(), validate=True).decode()
            except ValueError:
                raise _OAuthError("invalid_client", 9002313, status=401, detail="bad Basic header") from None
            basic_id, _, basic_secret = decoded.partition(":")
            if client_id and client_id != unquote_plus(basic_id):
                raise _OAuthError(
                    "invalid_client", 9002313, status=401, detail="client_id differs from the Basic header's"
                )
            client_id, secret = unquote_plus(basic_id), unquote_plus(basic_secret)
        if not client_id:
            raise _missing("client_id")
        app = self._apps.get(client_id)
        if app is None:
            raise _OAuthError(
                "unauthorized_client", 700016, client_id, authority.tenant_id or authority.segment
            )
        assertion = form.get("client_assertion")
        if assertion:
            if form.get("client_assertion_type") != JWT_BEARER:
                raise _missing("client_assertion_type")
            return app, self._verify_client_assertion(authority, app, assertion)
        if secret:
            if not any(hmac.compare_digest(secret.encode(), s.encode()) for s in app.client_secrets):
                raise _OAuthError("invalid_client", 7000215, app.client_id, status=401)
            return app, "secret"
        raise _OAuthError("invalid_client", 7000218, status=401)

    def _verify_client_assertion(self, authority: _Authority, app: App, assertion: str) -> str:
        try:
            header, claims, signing_input, signature = _decode_jwt(assertion)
        except ValueError:
            raise _OAuthError("invalid_client", 50027, status=401) from None
        if claims.get("iss") == app.client_id:
            self._check_certificate_assertion(authority, app, header, claims, signing_input, signature)
            method = "certificate"
        else:
            self._check_federated_assertion(app, header, claims, signing_input, signature)
            method = "federated"
        self._check_assertion_time(claims)
        return method

    def _check_certificate_assertion(
        self,
        authority: _Authority,
        app: App,
        header: Mapping[str, Any],
        claims: Mapping[str, Any],
        signing_input: bytes,
        signature: bytes,
    ) -> None:
        if claims.get("sub") != app.client_id:
            raise _OAuthError("invalid_client", 700021, status=401)
        thumbprint = _thumbprint_hex(header.get("x5t#S256")) or _thumbprint_hex(header.get("x5t"))
        certificate = next(
            (c for c in app.certificates if thumbprint in (c.sha1_thumbprint, c.sha256_thumbprint)), None
        )
        if certificate is None:
            raise _OAuthError(
                "invalid_client",
                700027,
                status=401,
                detail=f"no certificate with thumbprint {thumbprint or '(none)'} is registered on the app",
            )
        if not _signature_valid(header.get("alg"), certificate.public_key, signing_input, signature):
            raise _OAuthError("invalid_client", 700027, status=401)
        tenant = self._tenants.get(authority.tenant_id or "")
        audiences = {self.token_endpoint(authority.segment)}
        if tenant is not None:
            audiences |= {self.token_endpoint(tenant.tenant_id), self.token_endpoint(tenant.domain)}
        audience = claims.get("aud")
        if not isinstance(audience, str) or audience not in audiences:
            raise _OAuthError(
                "invalid_client", 700027, status=401, detail="the assertion's aud is not this token endpoint"
            )

    def _check_federated_assertion(
        self,
        app: App,
        header: Mapping[str, Any],
        claims: Mapping[str, Any],
        signing_input: bytes,
        signature: bytes,
    ) -> None:
        issuer = str(claims.get("iss"))
        candidates = [c for c in app.federated_credentials if c.issuer == issuer]
        if not candidates:
            raise _OAuthError("invalid_client", 700211, issuer, status=401)
        # Only this emulator's own tokens (its managed identities) can be verified offline.
        own = issuer.startswith(self.base_url + "/") and header.get("kid") == self._signing_key.kid
        public_key = self._signing_key.private_key.public_key()
        if not own or not _signature_valid(header.get("alg"), public_key, signing_input, signature):
            raise _OAuthError("invalid_client", 700027, status=401)
        subject = str(claims.get("sub"))
        candidates = [c for c in candidates if c.subject == subject]
        if not candidates:
            raise _OAuthError("invalid_client", 700213, subject, status=401)
        audience = claims.get("aud")
        presented = {str(a) for a in audience} if isinstance(audience, list) else {str(audience)}
        if not any(presented & set(c.audiences) for c in candidates):
            raise _OAuthError("invalid_client", 700212, audience, status=401)

    def _check_assertion_time(self, claims: Mapping[str, Any]) -> None:
        expires, not_before = claims.get("exp"), claims.get("nbf", claims.get("iat", 0))
        if not isinstance(expires, int | float) or not isinstance(not_before, int | float):
            raise _OAuthError("invalid_client", 50027, status=401)
        for now in (time.time(), self.clock.now()):  # the caller's wall clock, or ours
            if not_before - ASSERTION_SKEW <= now <= expires + ASSERTION_SKEW:
                return
        raise _OAuthError(
            "invalid_client",
            700024,
            _timestamp(self.clock.now()),
            _timestamp(not_before),
            _timestamp(expires),
            status=401,
        )

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
                "appid": app.client_id,
                "azp": app.client_id,
                "appidacr": "1" if method == "secret" else "2",
                "azpacr": "1" if method == "secret" else "2",
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
            "appid": app.client_id,
            "azp": app.client_id,
            "appidacr": "1" if method == "secret" else "2",
            "azpacr": "1" if method == "secret" else "2",
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

    # -- control API over HTTP (thin: each calls the Python method of the same meaning)

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


def _thumbprint_hex(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return b64url_decode(value).hex()
    except ValueError:
        return None


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


@dataclass(frozen=True)
class _Reply:
    """Where ``/authorize`` answers: the app's redirect URI, as a query string or an auto-posting form."""

    redirect_uri: str
    state: str | None
    response_mode: str

    def send(self, params: Mapping[str, str], error: _OAuthError | None = None) -> _Response:
        values = dict(params)
        if self.state is not None:
            values["state"] = self.state
        error_name, error_code = (error.error, error.code) if error else (None, None)
        if self.response_mode == "form_post":
            fields = "".join(
                f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}"/>'
                for k, v in values.items()
            )
            page = (
                "<html><head><title>Working...</title></head><body>"
                f'<form method="POST" name="hiddenform" action="{html.escape(self.redirect_uri)}">{fields}'
                "<noscript><p>Script is disabled. Click Submit to continue.</p>"
                '<input type="submit" value="Submit"/></noscript></form>'
                "<script>document.forms[0].submit();</script></body></html>"
            )
            return _Response(200, page.encode(), "text/html; charset=utf-8", (), error_name, error_code)
        separator = "&" if urlsplit(self.redirect_uri).query else "?"
        location = self.redirect_uri + separator + urlencode(values)
        return _Response(
            302, b"", "text/html; charset=utf-8", (("Location", location),), error_name, error_code
        )


_TENANT = r"(?P<tenant>[^/_][^/]*)"
_PROTOCOL_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("GET", re.compile(rf"^/{_TENANT}/v2\.0/\.well-known/openid-configuration$"), "_discovery"),
    ("GET", re.compile(rf"^/{_TENANT}/discovery/v2\.0/keys$"), "_keys"),
    ("GET", re.compile(rf"^/{_TENANT}/oauth2/v2\.0/authorize$"), "_authorize"),
    ("POST", re.compile(rf"^/{_TENANT}/oauth2/v2\.0/authorize$"), "_authorize"),
    ("POST", re.compile(rf"^/{_TENANT}/oauth2/v2\.0/token$"), "_token"),
    ("GET", re.compile(rf"^/{_TENANT}/v2\.0/adminconsent$"), "_admin_consent"),
)
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


# --- running it alone --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoDirectory:
    tenant: Tenant
    users: tuple[User, ...]
    personal_account: User
    app: App
    client_secret: str = field(repr=False)
    managed_identity: ManagedIdentity


def seed_demo_directory(
    emulator: IdentityEmulator,
    *,
    tenant_id: str | None = None,
    client_id: str | None = None,
    redirect_uris: Sequence[str] = ("http://localhost:7071/api/auth/callback",),
) -> DemoDirectory:
    """A tenant with an admin and a user, a personal account, and the sync app (secret and FIC)."""
    tenant = emulator.add_tenant(tenant_id, domain="contoso.onmicrosoft.com", display_name="Contoso")
    admin = emulator.add_user(
        tenant.tenant_id, "admin@contoso.onmicrosoft.com", display_name="Contoso Admin", is_admin=True
    )
    user = emulator.add_user(
        tenant.tenant_id, "adele.vance@contoso.onmicrosoft.com", display_name="Adele Vance"
    )
    personal = emulator.add_personal_account("pat.personal@outlook.com", display_name="Pat Personal")
    identity = emulator.add_managed_identity(tenant.tenant_id)
    secret = secrets.token_urlsafe(32)
    app = emulator.register_app(
        tenant.tenant_id,
        client_id=client_id,
        redirect_uris=redirect_uris,
        client_secret=secret,
        federated_credentials=[
            FederatedCredential(emulator.issuer(tenant.tenant_id), identity.principal_id),
        ],
        application_permissions=("Calendars.ReadWrite",),
    )
    return DemoDirectory(tenant, (admin, user), personal, app, secret, identity)


def serve(emulator: IdentityEmulator, stop: threading.Event | None = None) -> None:
    """Block until ``stop`` is set or the process gets SIGINT/SIGTERM (the emulator must be started)."""
    stop = stop or threading.Event()
    if threading.current_thread() is not threading.main_thread():
        stop.wait()
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``identity`` command's options (``python -m devkit identity``)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="HTTPS port (default: a free one)")
    parser.add_argument(
        "--state-dir", type=Path, default=Path(".devkit/identity"), help="CA and identity.json go here"
    )
    parser.add_argument("--tenant-id", default=None, help="the demo tenant's id (default: a new GUID)")
    parser.add_argument("--client-id", default=None, help="the demo app's id (default: a new GUID)")
    parser.add_argument(
        "--redirect-uri",
        action="append",
        dest="redirect_uris",
        default=None,
        help="a redirect URI of the demo app (repeatable; default: the local host's /api/auth/callback)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the emulator with a demo directory until SIGINT/SIGTERM.

    Prints one JSON line (addresses and ids, no secret) to stdout; the client secret and the managed
    identity header go to ``<state-dir>/identity.json`` (mode 0600).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    state_dir: Path = args.state_dir
    ca = CertAuthority(state_dir / "ca")
    with IdentityEmulator(ca, host=args.host, port=args.port) as emulator:
        demo = seed_demo_directory(
            emulator,
            tenant_id=args.tenant_id,
            client_id=args.client_id,
            redirect_uris=args.redirect_uris or ("http://localhost:7071/api/auth/callback",),
        )
        config_path = state_dir / "identity.json"
        summary = {
            "base_url": emulator.base_url,
            "authority": emulator.authority(demo.tenant.tenant_id),
            "ca_cert": str(ca.cert_path),
            "tenant_id": demo.tenant.tenant_id,
            "client_id": demo.app.client_id,
            "users": [u.upn for u in (*demo.users, demo.personal_account)],
            "managed_identity_client_id": demo.managed_identity.client_id,
            "managed_identity_endpoint": emulator.managed_identity_endpoint,
            "config": str(config_path),
        }
        config_path.touch(mode=0o600)
        config_path.chmod(0o600)
        secrets_too = {"client_secret": demo.client_secret, **emulator.managed_identity_environment()}
        config_path.write_text(json.dumps({**summary, **secrets_too}, indent=2))
        print(json.dumps(summary), flush=True)  # the one line a caller reads
        serve(emulator)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the identity emulator alone: ``python -c 'from devkit.identity_emulator import main; main()'``."""
    parser = argparse.ArgumentParser(prog="python -m devkit identity", description=run.__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
