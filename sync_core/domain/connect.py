"""Decisions of the connect flow (pure): which return URLs are allowed, what the OAuth ``state`` carries, and
how a sign-in's outcome becomes the reason the CRM is shown.

Terminology
-----------
state ticket
    What the ``state`` parameter sent to Entra ID carries, sealed (encrypted and authenticated) by the
    service: the state id, what kind of trip it is, the CRM user and the return URL. The ticket lets a late
    or replayed callback still go back to the right CRM page; the stored state row (keyed by the id, deleted
    on first use) is what makes the trip single-use and binds the PKCE verifier.
flow
    MSAL's auth-code flow dict (PKCE verifier, nonce, redirect URI, scopes); stored encrypted in the row.
consumer tenant
    ``9188040d-6c67-4c5b-b112-36a304b66dad``: personal Microsoft accounts (outlook.com, …). Never served.
AADSTS code
    Entra ID's numeric error code, found in ``error_codes`` or as ``AADSTS<n>`` in an error description.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, Field

from sync_core.domain.payloads import STRICT_MODEL
from sync_core.errors import InvalidRequestError

CONSUMER_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"
MAX_RETURN_URL_LENGTH = 2048
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_AADSTS = re.compile(r"AADSTS(\d+)")
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
# Whitespace, control characters and backslashes (which browsers read as '/') have no place in a return URL.
_UNSAFE_URL_CHARACTERS = re.compile(r"[\s\x00-\x1f\x7f\\]")


class ConnectFailure(enum.Enum):
    """Why a connect (or admin consent) did not succeed: the ``reason`` added to the return URL."""

    CONSENT_DENIED = "consent_denied"
    ADMIN_APPROVAL_REQUIRED = "admin_approval_required"
    PERSONAL_ACCOUNT = "personal_account"
    WRONG_TENANT = "wrong_tenant"
    STATE_INVALID = "state_invalid"
    INTERNAL = "internal"


class TripKind(enum.Enum):
    """Which browser trip a state belongs to."""

    SIGN_IN = "sign_in"
    ADMIN_CONSENT = "admin_consent"


# --- inbound bodies ---------------------------------------------------------------------------------------


class ConnectBody(BaseModel):
    model_config = STRICT_MODEL
    return_url: str = Field(min_length=1, max_length=MAX_RETURN_URL_LENGTH)
    login_hint: str | None = Field(default=None, min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")


class DisconnectBody(BaseModel):
    model_config = STRICT_MODEL
    purge: bool = False


# --- return URLs ------------------------------------------------------------------------------------------


def check_return_url(url: str, allowed_origin: str, field: str = "returnUrl") -> str:
    """``url`` when it lies under ``allowed_origin`` (same scheme, host and port; under its path if it has
    one), is https (http only for loopback) and carries no credentials; else a field error on ``field``."""
    problem = _return_url_problem(url, allowed_origin)
    if problem is not None:
        raise InvalidRequestError("the return URL is not allowed", {field: problem})
    return url


def _return_url_problem(url: str, allowed_origin: str) -> str | None:
    if len(url) > MAX_RETURN_URL_LENGTH or _UNSAFE_URL_CHARACTERS.search(url):
        return "must be an absolute URL without spaces or backslashes"
    try:
        parts, allowed = urlsplit(url), urlsplit(allowed_origin)
        port, allowed_port = parts.port, allowed.port
    except ValueError:
        return "must be an absolute URL"
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        return "must be an absolute https URL"
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        return "must be https (http only for localhost)"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    same_origin = (
        parts.scheme == allowed.scheme.lower()
        and parts.hostname == (allowed.hostname or "").lower()
        and (port or _default_port(parts.scheme)) == (allowed_port or _default_port(allowed.scheme))
    )
    base_path = allowed.path.rstrip("/")
    if not same_origin or (
        base_path and not (parts.path == base_path or parts.path.startswith(base_path + "/"))
    ):
        return f"must be under the CRM origin {allowed_origin}"
    return None


def _default_port(scheme: str) -> int:
    return 443 if scheme.lower() == "https" else 80


def url_with_outcome(return_url: str, failure: ConnectFailure | None, *, success: str = "connected") -> str:
    """``return_url`` with ``status=<success>`` or ``status=error&reason=…`` added to its query."""
    parts = urlsplit(return_url)
    added = [("status", success)] if failure is None else [("status", "error"), ("reason", failure.value)]
    kept = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True)]
    kept = [(name, value) for name, value in kept if name not in {"status", "reason"}]
    return urlunsplit(parts._replace(query=urlencode(kept + added)))


# --- the state ticket -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateTicket:
    state_id: str
    kind: TripKind
    crm_user_id: str | None  # None for admin consent
    return_url: str | None  # None: admin consent started without one (a page is shown at the end)

    def to_bytes(self) -> bytes:
        fields = {"i": self.state_id, "k": self.kind.value, "u": self.crm_user_id, "r": self.return_url}
        return json.dumps(fields, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> StateTicket:
        """The ticket ``to_bytes`` wrote; ``ValueError`` for anything else."""
        try:
            fields = json.loads(data.decode("utf-8"))
            ticket = cls(
                state_id=str(fields["i"]),
                kind=TripKind(fields["k"]),
                crm_user_id=None if fields["u"] is None else str(fields["u"]),
                return_url=None if fields["r"] is None else str(fields["r"]),
            )
        except (KeyError, TypeError, ValueError) as error:  # ValueError: bad UTF-8, JSON or kind
            raise ValueError("not a state ticket") from error
        return ticket


# --- classifying outcomes ---------------------------------------------------------------------------------


def aadsts_codes(description: str | None, error_codes: object = None) -> frozenset[int]:
    """Entra's error codes, from ``error_codes`` when the token endpoint sent them, else the description."""
    found: set[int] = set()
    if isinstance(error_codes, Iterable) and not isinstance(error_codes, str | bytes):
        found.update(code for code in error_codes if isinstance(code, int))
    if description:
        found.update(int(code) for code in _AADSTS.findall(description))
    return frozenset(found)


# AADSTS65004: the user declined consent. 90094/90095: the grant needs an administrator ("Need admin
# approval"). 65001: no consent and the user may not give it (what a consent_required answer carries).
_DECLINED = frozenset({65004})
_NEEDS_ADMIN = frozenset({90094, 90095, 65001})


def classify_authorize_error(error: str, codes: frozenset[int], subcode: str | None) -> ConnectFailure:
    """The reason for an error Entra sent back to the callback instead of a code."""
    if codes & _DECLINED or subcode == "cancel":
        return ConnectFailure.CONSENT_DENIED
    if codes & _NEEDS_ADMIN or error == "consent_required":
        return ConnectFailure.ADMIN_APPROVAL_REQUIRED
    if error == "access_denied":
        return ConnectFailure.CONSENT_DENIED
    return ConnectFailure.INTERNAL


def classify_redemption_error(error: str, codes: frozenset[int]) -> ConnectFailure:
    """The reason for a code that could not be redeemed.

    ``invalid_grant`` on a code means the code does not belong to this state's flow (PKCE verifier, redirect
    URI), was used already (54005) or expired (70008): the trip is not a valid one, so ``state_invalid``.
    """
    if codes & _NEEDS_ADMIN or error == "consent_required":
        return ConnectFailure.ADMIN_APPROVAL_REQUIRED
    if error == "invalid_grant":
        return ConnectFailure.STATE_INVALID
    return ConnectFailure.INTERNAL


def expected_tenant_id(tenant_setting: str, single_tenant: bool) -> str | None:
    """The tenant every account must come from: ``TENANT_ID`` when it is a tenant id in a single-tenant
    deployment. A verified domain as ``TENANT_ID`` is enforced by the tenant authority itself."""
    if single_tenant and _GUID.match(tenant_setting):
        return tenant_setting.lower()
    return None


def classify_account(tenant_id: str, expected: str | None) -> ConnectFailure | None:
    """None when an account of ``tenant_id`` may connect; else why not."""
    if tenant_id.lower() == CONSUMER_TENANT_ID:
        return ConnectFailure.PERSONAL_ACCOUNT
    if expected is not None and tenant_id.lower() != expected:
        return ConnectFailure.WRONG_TENANT
    return None


@dataclass(frozen=True)
class SignedInAccount:
    """The Microsoft 365 account a sign-in produced (from the ID token, checked)."""

    tenant_id: str
    object_id: str
    upn: str
    home_account_id: str  # MSAL's "{oid}.{home tid}": the account's key in the token cache


def account_from_id_token(
    claims: Mapping[str, object], client_id: str, home_account_id: str | None
) -> SignedInAccount | None:
    """The account named by ID token ``claims``, or None when they are not for this app or incomplete.

    MSAL no longer validates ID tokens (1.38+): the token came straight from the token endpoint over TLS in
    exchange for our code and client credential, so the issuer is trusted; what is left to check is that it
    was issued to us and names a tenant and an object.
    """
    tenant_id, object_id = claims.get("tid"), claims.get("oid")
    issuer, audience = claims.get("iss"), claims.get("aud")
    upn = claims.get("preferred_username") or claims.get("upn") or claims.get("email")
    if audience != client_id or not isinstance(tenant_id, str) or not isinstance(object_id, str):
        return None
    if not isinstance(issuer, str) or not issuer.rstrip("/").endswith(f"/{tenant_id}/v2.0"):
        return None
    return SignedInAccount(
        tenant_id=tenant_id,
        object_id=object_id,
        upn=str(upn or ""),
        home_account_id=home_account_id or f"{object_id}.{tenant_id}",
    )


@dataclass(frozen=True)
class AdminConsent:
    """A tenant-wide admin consent, as its callback reported it: later users of the tenant get no prompt."""

    tenant_id: str
    granted_at: datetime
    scopes: tuple[str, ...]


# --- where the browser lands ------------------------------------------------------------------------------


class Page(enum.Enum):
    """The service's own pages, for trips that cannot (or need not) end at a CRM page. Fixed texts only."""

    LINK_INVALID = (400, "This sign-in link is not valid", "Start connecting again from the CRM.")
    ADMIN_CONSENT_GRANTED = (200, "Consent granted", "Users of your organization can now connect.")
    ADMIN_CONSENT_FAILED = (400, "Consent was not granted", "Nothing was changed. You can close this window.")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def title(self) -> str:
        return self.value[1]

    @property
    def text(self) -> str:
        return self.value[2]


@dataclass(frozen=True)
class BrowserOutcome:
    """The end of a browser trip: a redirect to a CRM page (``redirect_url``) or one of our pages."""

    redirect_url: str | None = None
    page: Page | None = None
    reason: ConnectFailure | None = None  # shown on the page when there is no CRM page to carry it
