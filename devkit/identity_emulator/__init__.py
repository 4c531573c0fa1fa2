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
    /_devkit/...                               control API (see ``control.py``)

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

Modules
-------
directory         tenants, users, apps, managed identities, consents; the Python control API over them
grants            scopes, authorization codes and refresh grants
issuer            the signing key, the addresses served, Entra's error bodies
sign_in           ``/authorize`` and ``/adminconsent``
client_auth       client secret, certificate and federated assertions at ``/token``
tokens            ``/token``: the grants redeemed and the tokens minted
managed_identity  ``/msi/token``
control           the ``/_devkit/`` control API
server            requests, responses, the threaded HTTP(S) servers
emulator          ``IdentityEmulator``: all of the above, started and stopped
cli               ``python -m devkit identity``: a demo directory, run until stopped
errors, clock     AADSTS errors; the emulator clock
"""

from __future__ import annotations

from devkit.identity_emulator.cli import DemoDirectory, add_arguments, main, run, seed_demo_directory, serve
from devkit.identity_emulator.client_auth import ASSERTION_SKEW, JWT_BEARER
from devkit.identity_emulator.clock import Clock
from devkit.identity_emulator.directory import (
    CONSUMER_TENANT_ID,
    DEFAULT_DELEGATED_PERMISSIONS,
    TOKEN_EXCHANGE_AUDIENCE,
    App,
    ClientCertificate,
    FederatedCredential,
    ManagedIdentity,
    RequestRecord,
    SignInOutcome,
    Tenant,
    User,
)
from devkit.identity_emulator.emulator import IdentityEmulator
from devkit.identity_emulator.grants import GRAPH_APP_ID, GRAPH_RESOURCE, OIDC_SCOPES
from devkit.identity_emulator.managed_identity import MANAGED_IDENTITY_TOKEN_LIFETIME
from devkit.identity_emulator.server import MAX_BODY_BYTES
from devkit.identity_emulator.tokens import AUTH_CODE_LIFETIME, ID_TOKEN_LIFETIME, REFRESH_TOKEN_MAX_INACTIVE

__all__ = [
    "ASSERTION_SKEW",
    "AUTH_CODE_LIFETIME",
    "CONSUMER_TENANT_ID",
    "DEFAULT_DELEGATED_PERMISSIONS",
    "GRAPH_APP_ID",
    "GRAPH_RESOURCE",
    "ID_TOKEN_LIFETIME",
    "JWT_BEARER",
    "MANAGED_IDENTITY_TOKEN_LIFETIME",
    "MAX_BODY_BYTES",
    "OIDC_SCOPES",
    "REFRESH_TOKEN_MAX_INACTIVE",
    "TOKEN_EXCHANGE_AUDIENCE",
    "App",
    "ClientCertificate",
    "Clock",
    "DemoDirectory",
    "FederatedCredential",
    "IdentityEmulator",
    "ManagedIdentity",
    "RequestRecord",
    "SignInOutcome",
    "Tenant",
    "User",
    "add_arguments",
    "main",
    "run",
    "seed_demo_directory",
    "serve",
]
