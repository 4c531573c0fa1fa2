"""``IdentityEmulator``: the directory and every endpoint, served over HTTPS (``/msi/token`` over HTTP)."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

from devkit.identity_emulator.clock import Clock
from devkit.identity_emulator.control import _CONTROL_ROUTES, ControlApi
from devkit.identity_emulator.directory import (
    CONSUMER_TENANT_ID,
    App,
    ManagedIdentity,
    RequestRecord,
    Tenant,
    User,
    _PendingSignIn,
)
from devkit.identity_emulator.errors import _ControlError, _OAuthError
from devkit.identity_emulator.grants import _AuthCode, _RefreshGrant
from devkit.identity_emulator.managed_identity import ManagedIdentityEndpoint
from devkit.identity_emulator.server import _Handler, _json, _Request, _Response, _Server
from devkit.identity_emulator.sign_in import BrowserSignIn
from devkit.identity_emulator.tokens import TokenEndpoint
from devkit.jwt import SigningKey
from devkit.tls import CertAuthority

logger = logging.getLogger(__name__)

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


class IdentityEmulator(BrowserSignIn, TokenEndpoint, ManagedIdentityEndpoint, ControlApi):
    """An Entra ID tenant directory with OAuth2/OIDC endpoints on ``base_url`` (HTTPS, trusted via ``ca``).

    Use as a context manager, or ``start()``/``stop()``. Every control is a Python method (tests run the
    emulator in-process) and an HTTP endpoint under ``/_devkit/`` (for the demo and other processes).

    The endpoints come from the base classes, a module each (``sign_in``, ``tokens``, ``managed_identity``,
    ``control``); the state they share is declared on ``Directory`` and ``Issuer`` and set up here.
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


_TENANT = r"(?P<tenant>[^/_][^/]*)"
_PROTOCOL_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("GET", re.compile(rf"^/{_TENANT}/v2\.0/\.well-known/openid-configuration$"), "_discovery"),
    ("GET", re.compile(rf"^/{_TENANT}/discovery/v2\.0/keys$"), "_keys"),
    ("GET", re.compile(rf"^/{_TENANT}/oauth2/v2\.0/authorize$"), "_authorize"),
    ("POST", re.compile(rf"^/{_TENANT}/oauth2/v2\.0/authorize$"), "_authorize"),
    ("POST", re.compile(rf"^/{_TENANT}/oauth2/v2\.0/token$"), "_token"),
    ("GET", re.compile(rf"^/{_TENANT}/v2\.0/adminconsent$"), "_admin_consent"),
)
