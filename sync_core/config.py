"""Settings: the only reader of the environment.

``Settings.from_env`` parses every setting the service reads, checks each one, and raises one
``SettingsError`` naming every setting that is missing or malformed, so a bad deployment fails at start with a
message that says what to fix. Secrets are held as ``Secret`` so they never show in a repr or a log line.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from sync_core.errors import SettingsError

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)


class SyncDirection(enum.Enum):
    BOTH = "both"
    CRM_TO_M365 = "crm_to_m365"
    M365_TO_CRM = "m365_to_crm"


class ConflictPolicy(enum.Enum):
    CRM_WINS = "crm_wins"
    M365_WINS = "m365_wins"
    LATEST_WINS = "latest_wins"


class DescriptionPolicy(enum.Enum):
    ALWAYS = "always"
    ON_CREATE = "on_create"


class AppCredentialKind(enum.Enum):
    """How the app proves itself to Entra ID."""

    CLIENT_SECRET = "client_secret"
    CERTIFICATE = "certificate"
    MANAGED_IDENTITY = (
        "managed_identity"  # federated credential: a managed-identity token as client assertion
    )


@dataclass(frozen=True)
class Secret:
    """A secret value that does not print itself."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


@dataclass(frozen=True)
class StorageSettings:
    """Where Table Storage and queues live: a connection string, or service URIs with managed identity."""

    connection_string: Secret | None
    table_service_uri: str | None
    queue_service_uri: str | None
    managed_identity_client_id: str | None
    table_prefix: str

    @property
    def uses_identity(self) -> bool:
        return self.connection_string is None


@dataclass(frozen=True)
class EncryptionKey:
    key_id: str
    key: Secret  # base64 of 32 raw bytes (AES-256-GCM)

    def raw(self) -> bytes:
        return base64.b64decode(self.key.value)


@dataclass(frozen=True)
class SyncPolicy:
    direction: SyncDirection
    conflict_policy: ConflictPolicy
    description_policy: DescriptionPolicy
    window_past_days: int
    window_future_days: int
    initial_backfill: bool
    invite_crm_contacts: bool
    mass_delete_max_share: float
    mass_delete_min_items: int
    max_occurrences_per_series: int


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings
    graph_base_url: str
    authority_host: str
    tenant_id: str
    client_id: str
    credential_kind: AppCredentialKind
    client_secret: Secret | None
    client_certificate: Secret | None  # PEM: private key + certificate
    client_certificate_thumbprint: str | None
    federated_identity_client_id: str | None
    token_encryption_keys: tuple[EncryptionKey, ...]  # first one encrypts; all decrypt
    public_base_url: str
    crm_base_url: str
    crm_api_key: Secret
    crm_signing_secret: Secret
    crm_return_url_origin: str
    sync: SyncPolicy
    sync_queue_name: str
    subscription_max_lifetime_minutes: int
    renewal_schedule: str
    sweep_schedule: str
    sweep_age_minutes: int
    lease_seconds: int
    oauth_state_ttl_seconds: int
    retry_after_cap_seconds: float
    max_request_bytes: int

    @property
    def single_tenant(self) -> bool:
        return self.tenant_id not in {"organizations", "common"}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return _Reader(env).settings()

    @classmethod
    def from_process_env(cls) -> Settings:
        """The app's settings: this is the one place the process environment is read."""
        return cls.from_env(os.environ)


# Every setting name in one place: the sample settings, README and Bicep template are checked against it.
REQUIRED_SETTINGS: tuple[str, ...] = (
    "TENANT_ID",
    "CLIENT_ID",
    "TOKEN_ENCRYPTION_KEY",
    "PUBLIC_BASE_URL",
    "CRM_BASE_URL",
    "CRM_API_KEY",
    "CRM_SIGNING_SECRET",
)
OPTIONAL_SETTINGS: tuple[str, ...] = (
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__clientId",
    "AzureWebJobsStorage__credential",
    "TABLE_NAME_PREFIX",
    "GRAPH_BASE_URL",
    "AUTHORITY_HOST",
    "CLIENT_SECRET",
    "CLIENT_CERTIFICATE",
    "CLIENT_CERTIFICATE_THUMBPRINT",
    "FEDERATED_IDENTITY_CLIENT_ID",
    "CRM_RETURN_URL_ORIGIN",
    "SYNC_DIRECTION",
    "CONFLICT_POLICY",
    "DESCRIPTION_POLICY",
    "SYNC_WINDOW_PAST_DAYS",
    "SYNC_WINDOW_FUTURE_DAYS",
    "INITIAL_BACKFILL",
    "INVITE_CRM_CONTACTS",
    "MASS_DELETE_MAX_SHARE",
    "MASS_DELETE_MIN_ITEMS",
    "MAX_OCCURRENCES_PER_SERIES",
    "SYNC_QUEUE_NAME",
    "SUBSCRIPTION_MAX_LIFETIME_MINUTES",
    "RENEWAL_SCHEDULE",
    "SWEEP_SCHEDULE",
    "SWEEP_AGE_MINUTES",
    "LEASE_SECONDS",
    "OAUTH_STATE_TTL_SECONDS",
    "RETRY_AFTER_CAP_SECONDS",
    "MAX_REQUEST_BYTES",
)
ALL_SETTINGS: tuple[str, ...] = REQUIRED_SETTINGS + OPTIONAL_SETTINGS

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NAME_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,19}$|^$")
_QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]$")
_MAX_SYNC_QUEUE_NAME = 63 - len("-poison")
_NCRONTAB_FIELDS = 6


class _Reader:
    """Collects every problem before raising, so one start-up shows them all."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._problems: dict[str, str] = {}

    def _raw(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def required(self, name: str) -> str:
        value = self._raw(name)
        if value is None:
            self._problems[name] = "is required but not set"
            return ""
        return value

    def optional(self, name: str) -> str | None:
        return self._raw(name)

    def parsed(self, name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
        value = self._raw(name)
        if value is None:
            return default
        try:
            return parse(value)
        except (ValueError, TypeError):
            self._problems[name] = f"must be {expected}, got {value!r}"
            return default

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        def parse(text: str) -> int:
            number = int(text)
            if not minimum <= number <= maximum:
                raise ValueError(text)
            return number

        return self.parsed(name, default, parse, f"a whole number from {minimum} to {maximum}")

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        def parse(text: str) -> float:
            number = float(text)
            if not minimum <= number <= maximum:
                raise ValueError(text)
            return number

        return self.parsed(name, default, parse, f"a number from {minimum:g} to {maximum:g}")

    def boolean(self, name: str, default: bool) -> bool:
        def parse(text: str) -> bool:
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(text)

        return self.parsed(name, default, parse, "true or false")

    def choice(self, name: str, default: E, enum_type: type[E]) -> E:
        options = ", ".join(str(member.value) for member in enum_type)
        return self.parsed(name, default, enum_type, f"one of {options}")

    def url(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.required(name) if required else (self._raw(name) or default or "")
        if not value:
            return ""
        parts = urlsplit(value)
        local = parts.hostname in {"localhost", "127.0.0.1", "::1"}
        if (
            parts.scheme not in {"https", "http"}
            or not parts.netloc
            or (parts.scheme == "http" and not local)
        ):
            self._problems[name] = f"must be an https URL (http only for localhost), got {value!r}"
            return ""
        return value.rstrip("/")

    def schedule(self, name: str, default: str) -> str:
        value = self._raw(name) or default
        if len(value.split()) != _NCRONTAB_FIELDS:
            self._problems[name] = f"must be a six-field NCRONTAB expression (seconds first), got {value!r}"
        return value

    def settings(self) -> Settings:
        storage = self._storage()
        credential_kind = self._credential_kind()
        keys = self._encryption_keys()
        crm_base_url = self.url("CRM_BASE_URL", required=True)
        crm_origin_default = _origin(crm_base_url) if crm_base_url else ""
        crm_return_url_origin = self.url("CRM_RETURN_URL_ORIGIN", crm_origin_default)
        queue_name = self._raw("SYNC_QUEUE_NAME") or "sync"
        # The full queue name (no prefix is added); its poison queue is ``{name}-poison``: that must fit too.
        if not _QUEUE_NAME.match(queue_name) or len(queue_name) > _MAX_SYNC_QUEUE_NAME:
            self._problems["SYNC_QUEUE_NAME"] = (
                f"must be a valid queue name of 3-{_MAX_SYNC_QUEUE_NAME} lowercase letters, digits and "
                f"single hyphens ('-poison' is appended for its poison queue), got {queue_name!r}"
            )
        tenant_id = self.required("TENANT_ID")
        if tenant_id and tenant_id.lower() == "consumers":
            self._problems["TENANT_ID"] = (
                "must be a tenant id or 'organizations': personal accounts are not served"
            )

        sync = SyncPolicy(
            direction=self.choice("SYNC_DIRECTION", SyncDirection.BOTH, SyncDirection),
            conflict_policy=self.choice("CONFLICT_POLICY", ConflictPolicy.LATEST_WINS, ConflictPolicy),
            description_policy=self.choice("DESCRIPTION_POLICY", DescriptionPolicy.ALWAYS, DescriptionPolicy),
            window_past_days=self.integer("SYNC_WINDOW_PAST_DAYS", 60, minimum=0, maximum=3650),
            window_future_days=self.integer("SYNC_WINDOW_FUTURE_DAYS", 365, minimum=1, maximum=3650),
            initial_backfill=self.boolean("INITIAL_BACKFILL", False),
            invite_crm_contacts=self.boolean("INVITE_CRM_CONTACTS", False),
            mass_delete_max_share=self.number("MASS_DELETE_MAX_SHARE", 0.5, minimum=0.0, maximum=1.0),
            mass_delete_min_items=self.integer("MASS_DELETE_MIN_ITEMS", 10, minimum=0, maximum=1_000_000),
            max_occurrences_per_series=self.integer(
                "MAX_OCCURRENCES_PER_SERIES", 500, minimum=1, maximum=10_000
            ),
        )
        settings = Settings(
            storage=storage,
            graph_base_url=self.url("GRAPH_BASE_URL", "https://graph.microsoft.com/v1.0"),
            authority_host=self.url("AUTHORITY_HOST", "https://login.microsoftonline.com"),
            tenant_id=tenant_id,
            client_id=self.required("CLIENT_ID"),
            credential_kind=credential_kind,
            client_secret=self._secret("CLIENT_SECRET"),
            client_certificate=self._secret("CLIENT_CERTIFICATE"),
            client_certificate_thumbprint=self.optional("CLIENT_CERTIFICATE_THUMBPRINT"),
            federated_identity_client_id=self.optional("FEDERATED_IDENTITY_CLIENT_ID"),
            token_encryption_keys=keys,
            public_base_url=self.url("PUBLIC_BASE_URL", required=True),
            crm_base_url=crm_base_url,
            crm_api_key=Secret(self.required("CRM_API_KEY")),
            crm_signing_secret=Secret(self.required("CRM_SIGNING_SECRET")),
            crm_return_url_origin=crm_return_url_origin,
            sync=sync,
            sync_queue_name=queue_name,
            subscription_max_lifetime_minutes=self.integer(
                "SUBSCRIPTION_MAX_LIFETIME_MINUTES", 4230, minimum=45, maximum=43200
            ),
            renewal_schedule=self.schedule("RENEWAL_SCHEDULE", "0 0 */6 * * *"),
            sweep_schedule=self.schedule("SWEEP_SCHEDULE", "0 */5 * * * *"),
            sweep_age_minutes=self.integer("SWEEP_AGE_MINUTES", 30, minimum=1, maximum=10080),
            lease_seconds=self.integer("LEASE_SECONDS", 120, minimum=5, maximum=3600),
            oauth_state_ttl_seconds=self.integer("OAUTH_STATE_TTL_SECONDS", 600, minimum=30, maximum=3600),
            retry_after_cap_seconds=self.number("RETRY_AFTER_CAP_SECONDS", 60.0, minimum=0.0, maximum=600.0),
            max_request_bytes=self.integer("MAX_REQUEST_BYTES", 1_048_576, minimum=1024, maximum=104_857_600),
        )
        if self._problems:
            raise SettingsError(self._problems)
        return settings

    def _secret(self, name: str) -> Secret | None:
        value = self._raw(name)
        return Secret(value) if value is not None else None

    def _storage(self) -> StorageSettings:
        connection = self._raw("AzureWebJobsStorage")
        table_uri = self._raw("AzureWebJobsStorage__tableServiceUri")
        queue_uri = self._raw("AzureWebJobsStorage__queueServiceUri")
        prefix = (self._raw("TABLE_NAME_PREFIX") or "").lower()
        if not _NAME_PREFIX.match(prefix):
            self._problems["TABLE_NAME_PREFIX"] = (
                "must be up to 20 lowercase letters and digits, starting with a letter"
            )
        if connection is None:
            for name, value in (
                ("AzureWebJobsStorage__tableServiceUri", table_uri),
                ("AzureWebJobsStorage__queueServiceUri", queue_uri),
            ):
                if value is None:
                    self._problems[name] = (
                        "is required when AzureWebJobsStorage (a connection string) is not set"
                    )
                elif (
                    not value.startswith("https://") and "127.0.0.1" not in value and "localhost" not in value
                ):
                    self._problems[name] = f"must be an https URL, got {value!r}"
        elif "AccountName=" not in connection and "UseDevelopmentStorage=true" not in connection:
            self._problems["AzureWebJobsStorage"] = "must be a storage connection string"
        return StorageSettings(
            connection_string=Secret(connection) if connection is not None else None,
            table_service_uri=table_uri,
            queue_service_uri=queue_uri,
            managed_identity_client_id=self._raw("AzureWebJobsStorage__clientId"),
            table_prefix=prefix,
        )

    def _credential_kind(self) -> AppCredentialKind:
        given = [
            kind
            for name, kind in (
                ("CLIENT_SECRET", AppCredentialKind.CLIENT_SECRET),
                ("CLIENT_CERTIFICATE", AppCredentialKind.CERTIFICATE),
                ("FEDERATED_IDENTITY_CLIENT_ID", AppCredentialKind.MANAGED_IDENTITY),
            )
            if self._raw(name) is not None
        ]
        if len(given) != 1:
            self._problems["CLIENT_SECRET"] = (
                "exactly one of CLIENT_SECRET, CLIENT_CERTIFICATE or FEDERATED_IDENTITY_CLIENT_ID must be set"
                f" (found {len(given)})"
            )
            return AppCredentialKind.CLIENT_SECRET
        if given[0] is AppCredentialKind.CERTIFICATE and self._raw("CLIENT_CERTIFICATE_THUMBPRINT") is None:
            self._problems["CLIENT_CERTIFICATE_THUMBPRINT"] = "is required with CLIENT_CERTIFICATE"
        return given[0]

    def _encryption_keys(self) -> tuple[EncryptionKey, ...]:
        """``TOKEN_ENCRYPTION_KEY`` is ``kid:base64key[,kid:base64key…]``; the first encrypts, all decrypt."""
        raw = self.required("TOKEN_ENCRYPTION_KEY")
        if not raw:
            return ()
        keys: list[EncryptionKey] = []
        for part in raw.split(","):
            key_id, sep, material = part.strip().partition(":")
            try:
                ok = bool(sep) and bool(key_id) and len(base64.b64decode(material, validate=True)) == 32
            except (binascii.Error, ValueError):
                ok = False
            if not ok:
                # Never echo the value: it is key material.
                self._problems["TOKEN_ENCRYPTION_KEY"] = (
                    "must be 'keyid:base64-of-32-bytes', comma-separated for rotation (newest first)"
                )
                return ()
            keys.append(EncryptionKey(key_id=key_id, key=Secret(material)))
        if len({key.key_id for key in keys}) != len(keys):
            self._problems["TOKEN_ENCRYPTION_KEY"] = "key ids must be unique"
        return tuple(keys)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
