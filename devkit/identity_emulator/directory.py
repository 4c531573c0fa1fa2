"""The directory (tenants, users, apps, managed identities, consents) and the Python control API over it."""

from __future__ import annotations

import enum
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from devkit.identity_emulator.clock import Clock
from devkit.identity_emulator.errors import _missing, _OAuthError

CONSUMER_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"

TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"

DEFAULT_DELEGATED_PERMISSIONS = ("Calendars.ReadWrite", "User.Read")

_ID_NAMESPACE = uuid.UUID("6f1c8f0e-4d7a-4b8e-9a51-3c2d1e0f9a7b")


class SignInOutcome(enum.Enum):
    """How the next browser sign-in ends."""

    SUCCESS = "success"
    CONSENT_DENIED = "consent_denied"  # the user clicked Cancel on the consent prompt
    ADMIN_APPROVAL_REQUIRED = "admin_approval_required"  # "Need admin approval"
    PERSONAL_ACCOUNT = "personal_account"  # someone signs in with an outlook.com account


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


class Directory:
    """What the emulator knows about: the directory, consents, queued sign-ins and the request log.

    The state is set up by ``IdentityEmulator.__init__``; every method here takes the lock, and the lookups
    below expect it held.
    """

    clock: Clock
    _lock: threading.RLock
    _tenants: dict[str, Tenant]
    _users: dict[str, User]
    _tokens_valid_from: dict[str, float]
    _apps: dict[str, App]
    _managed_identities: dict[str, ManagedIdentity]
    _user_consents: dict[tuple[str, str], frozenset[str]]
    _admin_consents: dict[tuple[str, str], frozenset[str]]
    _pending: deque[_PendingSignIn]
    _log: list[RequestRecord]

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

    def _registered_app(self, client_id: str | None, authority: _Authority) -> App:
        """The app a browser or token request names; Entra's error when it names none or an unknown one."""
        if not client_id:
            raise _missing("client_id")
        app = self._apps.get(client_id)
        if app is None:
            raise _OAuthError(
                "unauthorized_client", 700016, client_id, authority.tenant_id or authority.segment
            )
        return app

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
