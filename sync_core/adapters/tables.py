"""Table Storage stores (azure-data-tables): one store per table, every change guarded by an ETag.

Terminology
-----------
ETag
    The version stamp Table Storage gives a row on every write. A change that passes back the ETag it read
    (``MatchConditions.IfNotModified``) fails with ``ConflictError`` when anyone wrote the row since.
partition
    The rows sharing a PartitionKey. One entity-group transaction changes up to 100 rows of one partition of
    one table, all or nothing; so a user's rows share a partition (PartitionKey = user id) wherever they can.
link
    A CRM activity and the Graph item synced with it (``Link``), kept per user under both ids.
base
    Per-field hashes of what both sides held after the last sync; the three-way merge compares against it.
cursor, delta link
    Graph's ``@odata.deltaLink`` saved per user and resource kind: where the next delta query resumes.
outbox
    CRM changes accepted (202) but not yet applied: one row per activity, the newest change wins.
lease
    A row saying which run may sync a user until when; one holder at a time across all instances.

Conventions shared by the stores
--------------------------------
- ``get…`` returns ``Versioned[T]`` or ``None`` when the row is absent; absence is a normal answer.
- ``put(value, etag=None)`` creates the row when ``etag`` is None (``ConflictError`` if it exists), otherwise
  replaces it only if it still has that ETag (``ConflictError`` if it changed or vanished since it was read).
- Ids of any shape are welcome: keys are escaped (``encode_key``) because Table keys forbid ``/ \\ # ?`` and
  control characters. A key over 1 KiB, or a row over 1 MiB, is refused with ``StoreError`` before sending.
- Values bigger than one property (64 KiB) are split into numbered binary chunk properties and joined on read.
- Every ``azure.core`` error is translated into ``sync_core.errors`` by ``translated_errors``, in one place.
- Nothing is built or called at import time; ``TableStorage`` builds its client on first use, and
  ``ensure_tables`` (called by wiring or tests, never at import) creates the tables.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import (
    EntityProperty,
    TableClient,
    TableEntity,
    TableServiceClient,
    UpdateMode,
)
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from sync_core.config import ConflictPolicy, StorageSettings, SyncDirection
from sync_core.domain.connect import AdminConsent
from sync_core.domain.state import (
    Connection,
    ConnectionState,
    Cursor,
    ErrorRecord,
    Lease,
    Link,
    OAuthState,
    OutboxEntry,
    OutboxOperation,
    SubscriptionRecord,
    SyncLogEntry,
    SyncLogKind,
    Versioned,
)
from sync_core.errors import (
    ConflictError,
    LeaseHeldError,
    NotFoundError,
    SettingsError,
    StoreError,
    StoreUnavailableError,
    UserNotConnectedError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Entity = dict[str, Any]
Operation = tuple[str, Entity, dict[str, Any]]

# Base table names; the deployed name is ``settings.table_prefix + base``.
CONNECTIONS = "connections"
TOKENS = "tokens"
OAUTH_STATE = "oauthstate"
SUBSCRIPTIONS = "subscriptions"
LINKS = "links"
CURSORS = "cursors"
OUTBOX = "outbox"
LEASES = "leases"
NONCES = "nonces"
ADMIN_CONSENTS = "adminconsents"
SYNC_LOG = "synclog"
ITEM_INDEX = "itemindex"
TABLES: tuple[str, ...] = (
    CONNECTIONS,
    TOKENS,
    OAUTH_STATE,
    SUBSCRIPTIONS,
    LINKS,
    CURSORS,
    OUTBOX,
    LEASES,
    NONCES,
    ADMIN_CONSENTS,
    SYNC_LOG,
    ITEM_INDEX,
)

# Table Storage limits (https://learn.microsoft.com/rest/api/storageservices/understanding-the-table-service-data-model).
MAX_PROPERTY_BYTES = 64 * 1024
MAX_ENTITY_BYTES = 1024 * 1024
MAX_KEY_BYTES = 1024
MAX_TRANSACTION_OPERATIONS = 100
# A transaction's request is at most 4 MiB; entities travel as JSON (binary as base64), so budget half of it.
_TRANSACTION_BYTES_BUDGET = 2 * 1024 * 1024

# How often a read-modify-write is retried when another writer keeps winning the ETag race.
_MAX_ATTEMPTS = 5
_PK = "PartitionKey"
_RK = "RowKey"
_IN_PARTITION = "PartitionKey eq @pk"


# --- errors: the one place azure.core exceptions become sync_core.errors ------------------------------------

_UNAVAILABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_CHANGED_CODES = frozenset({"ConditionNotMet", "UpdateConditionNotSatisfied"})
_MISSING_CONTAINER_CODES = frozenset({"TableNotFound", "QueueNotFound"})


@contextlib.contextmanager
def translated_errors(action: str, *, missing: type[StoreError] = NotFoundError) -> Iterator[None]:
    """Translate storage failures raised inside the block into ``sync_core.errors``.

    ``action`` names what was attempted ("replace links row"); messages carry it, the status and the service's
    error code, never the service's message text. ``missing`` is what a 404 on a row becomes: by default
    ``NotFoundError``; ``ConflictError`` for guarded writes, where a row that vanished since it was read is a
    change.
    Shared by the queue client (``sync_core.adapters.queues``).
    """
    try:
        yield
    except ClientAuthenticationError as error:
        # Also the credential's own failures (no managed identity here, RBAC role missing): not transient.
        raise StoreError(f"{action}: storage refused the credentials ({type(error).__name__})") from error
    except HttpResponseError as error:
        raise _translated_http_error(action, error, missing) from error
    except (ServiceRequestError, ServiceResponseError) as error:
        # Connection refused or reset, DNS, timeouts (the *TimeoutError subclasses): storage did not answer.
        raise StoreUnavailableError(f"{action}: storage did not answer ({type(error).__name__})") from error
    except AzureError as error:
        raise StoreError(f"{action}: storage failed ({type(error).__name__})") from error


def _translated_http_error(action: str, error: HttpResponseError, missing: type[StoreError]) -> StoreError:
    status = error.status_code
    raw_code = getattr(error, "error_code", None)
    code = str(getattr(raw_code, "value", raw_code) or "")
    what = f"{action}: HTTP {status} {code}".rstrip()
    if status == 412 or code in _CHANGED_CODES:
        return ConflictError(f"{what} (changed since it was read)")
    if status == 409:
        return ConflictError(f"{what} (already exists)")
    if status == 404 and code in _MISSING_CONTAINER_CODES:
        return StoreError(f"{what} (not created yet: ensure_tables / ensure_queue)")
    if status == 404:
        return missing(f"{what} (not found)")
    if status in _UNAVAILABLE_STATUSES:
        return StoreUnavailableError(f"{what} (storage busy or failing)")
    if status == 413:
        return StoreError(f"{what} (request too large)")
    return StoreError(f"{what} (rejected)")


# --- keys ---------------------------------------------------------------------------------------------------

# '%' is escaped too, so decoding is exact: every '%' in an encoded key starts an escape.
_KEY_UNSAFE = re.compile(r"[%/\\#?\x00-\x1f\x7f-\x9f]")
_KEY_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def encode_key(identifier: str) -> str:
    """Escape an id for use in a PartitionKey or RowKey: forbidden characters become ``%XX``; reversible."""
    return _KEY_UNSAFE.sub(lambda match: f"%{ord(match.group()):02X}", identifier)


def decode_key(key: str) -> str:
    """The id ``encode_key`` was given."""
    return _KEY_ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), key)


def _key(prefix: str, identifier: str) -> str:
    key = prefix + encode_key(identifier)
    if _utf16_size(key) > MAX_KEY_BYTES:
        raise StoreError(f"an id of {len(identifier)} characters is too long for a Table key (1 KiB at most)")
    return key


def _utf16_size(text: str) -> int:
    # Table Storage measures strings in UTF-16; surrogatepass so a malformed id is measured, not crashed on.
    return len(text.encode("utf-16-le", "surrogatepass"))


# --- property codecs ----------------------------------------------------------------------------------------


def _large(name: str, value: bytes | str | None) -> Entity:
    """Properties holding ``value``: itself when it fits in one property, else ``{name}0…`` binary chunks.

    Chunks are never truncated; ``{name}Chunks`` says how many to join. Entities are always written with
    ``UpdateMode.REPLACE``, so a value that shrinks leaves no stale chunks behind.
    """
    if value is None:
        return {}
    if isinstance(value, str):
        if _utf16_size(value) <= MAX_PROPERTY_BYTES:
            return {name: value}
        data = value.encode("utf-8")
    else:
        if len(value) <= MAX_PROPERTY_BYTES:
            return {name: value}
        data = value
    chunks = [data[start : start + MAX_PROPERTY_BYTES] for start in range(0, len(data), MAX_PROPERTY_BYTES)]
    properties: Entity = {f"{name}Chunks": len(chunks)}
    properties.update({f"{name}{index}": chunk for index, chunk in enumerate(chunks)})
    return properties


def _read_large_bytes(entity: Mapping[str, Any], name: str) -> bytes | None:
    whole = entity.get(name)
    if isinstance(whole, bytes):
        return whole
    count = entity.get(f"{name}Chunks")
    if count is None:
        return None
    return b"".join(entity[f"{name}{index}"] for index in range(int(count)))


def _read_large_text(entity: Mapping[str, Any], name: str) -> str | None:
    whole = entity.get(name)
    if isinstance(whole, str):
        return whole
    data = _read_large_bytes(entity, name)
    return None if data is None else data.decode("utf-8")


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError("stored times must be timezone-aware (UTC)")
    return moment.astimezone(UTC)


def _read_time(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    # The SDK hands back its own datetime subclass; keep plain datetimes in the domain.
    return datetime.combine(value.date(), value.time(), tzinfo=UTC)


def _required_time(entity: Mapping[str, Any], name: str) -> datetime:
    moment = _read_time(entity.get(name))
    if moment is None:
        raise KeyError(name)
    return moment


def _read_version(value: object) -> str | None:
    """A CRM version (opaque text); rows written before versions were text hold an Int64."""
    number = value if isinstance(value, str) else _read_int(value)
    return None if number is None else str(number)


def _read_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, EntityProperty):
        return int(value.value)
    if isinstance(value, int):
        return value
    raise TypeError(f"expected an integer, got {type(value).__name__}")


def _entity_size(entity: Mapping[str, Any]) -> int:
    """Table Storage's own size formula for an entity (keys, names and values), to refuse >1 MiB up front."""
    size = 4
    for name, value in entity.items():
        if name in (_PK, _RK):
            size += _utf16_size(str(value)) + 2
            continue
        size += 8 + _utf16_size(name)
        if isinstance(value, EntityProperty):
            value = value.value
        if isinstance(value, bytes):
            size += len(value) + 4
        elif isinstance(value, str):
            size += _utf16_size(value) + 4
        elif isinstance(value, bool):
            size += 1
        else:  # int64, double, datetime
            size += 8
    return size


def _without_none(entity: Entity) -> Entity:
    return {name: value for name, value in entity.items() if value is not None}


def _decoded(table: str, decode: Callable[[TableEntity], T], entity: TableEntity) -> T:
    try:
        return decode(entity)
    except (KeyError, ValueError, TypeError) as error:
        # A row written by hand or by a newer version we do not understand: say which table, never the values.
        raise StoreError(f"{table}: a stored row could not be read ({type(error).__name__})") from error


def _etag_of(metadata: Mapping[str, Any]) -> str:
    etag = metadata.get("etag")
    if not isinstance(etag, str):
        raise StoreError("storage did not return an ETag")
    return etag


# --- one table ----------------------------------------------------------------------------------------------


class _Table:
    """A TableClient whose every call is translated and size-checked; the stores speak only to this."""

    def __init__(self, client: TableClient, name: str) -> None:
        self._client = client
        self.name = name

    def get(
        self, partition_key: str, row_key: str, select: Sequence[str] | None = None
    ) -> TableEntity | None:
        """The row (only the ``select``ed properties, when given), or None when absent."""
        with translated_errors(f"read {self.name} row"):
            try:
                if select is not None:
                    return self._client.get_entity(partition_key, row_key, select=list(select))
                return self._client.get_entity(partition_key, row_key)
            except ResourceNotFoundError as error:
                if _is_missing_table(error):
                    raise
                return None

    def create(self, entity: Entity) -> str:
        self._check_size(entity)
        with translated_errors(f"create {self.name} row"):
            return _etag_of(self._client.create_entity(entity))

    def replace(self, entity: Entity, etag: str) -> str:
        """Replace the row only if it still has ``etag``; changed or vanished since → ``ConflictError``."""
        self._check_size(entity)
        with translated_errors(f"replace {self.name} row", missing=ConflictError):
            return _etag_of(
                self._client.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
            )

    def merge(self, entity: Entity, etag: str) -> str:
        """Set the given properties (the others stay) if the row still has ``etag``; else ConflictError."""
        self._check_size(entity)
        with translated_errors(f"merge {self.name} row", missing=ConflictError):
            return _etag_of(
                self._client.update_entity(
                    entity, mode=UpdateMode.MERGE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
            )

    def upsert(self, entity: Entity) -> str:
        self._check_size(entity)
        with translated_errors(f"upsert {self.name} row"):
            return _etag_of(self._client.upsert_entity(entity, mode=UpdateMode.REPLACE))

    def delete(self, partition_key: str, row_key: str, etag: str | None = None) -> None:
        """Delete the row (only if it still has ``etag`` when one is given); a row already gone is fine."""
        condition = MatchConditions.IfNotModified if etag is not None else MatchConditions.Unconditionally
        with translated_errors(f"delete {self.name} row"):
            self._client.delete_entity(partition_key, row_key, etag=etag, match_condition=condition)

    def delete_exactly(self, partition_key: str, row_key: str, etag: str) -> None:
        """Delete the row with ``etag`` and tell whether *this* call deleted it.

        ``delete_entity`` treats 404 as success, which cannot tell two racing deleters apart; a one-operation
        transaction reports the 404. Gone → ``NotFoundError``; changed → ``ConflictError``.
        """
        self.transact(
            [
                (
                    "delete",
                    {_PK: partition_key, _RK: row_key},
                    {"etag": etag, "match_condition": MatchConditions.IfNotModified},
                )
            ],
            missing=NotFoundError,
        )

    def query(
        self,
        query_filter: str | None,
        parameters: Mapping[str, Any] | None = None,
        select: Sequence[str] | None = None,
        page_size: int | None = None,
    ) -> Iterator[TableEntity]:
        """Rows matching ``query_filter`` (None: the whole table), paged lazily."""
        with translated_errors(f"query {self.name}"):
            if query_filter is None:
                pages = self._client.list_entities(
                    select=list(select) if select else None, results_per_page=page_size
                )
            else:
                pages = self._client.query_entities(
                    query_filter,
                    parameters=dict(parameters or {}),
                    select=list(select) if select else None,
                    results_per_page=page_size,
                )
            yield from pages

    def transact(
        self, operations: Sequence[Operation], *, missing: type[StoreError] = ConflictError
    ) -> list[str]:
        """Run up to 100 operations on one partition as one entity-group transaction: all happen, or none.

        Returns the new ETag of each operation (empty for deletes). Any failed operation fails the whole
        transaction: ``ConflictError`` for a changed, existing or (by default) vanished row.
        """
        if not operations:
            return []
        if len(operations) > MAX_TRANSACTION_OPERATIONS:
            raise ValueError(f"a transaction holds at most {MAX_TRANSACTION_OPERATIONS} operations")
        for _kind, entity, _options in operations:
            self._check_size(entity)
        with translated_errors(f"transaction on {self.name} ({len(operations)} operations)", missing=missing):
            results = self._client.submit_transaction(list(operations))
        return [str(result.get("etag") or "") for result in results]

    def delete_partition(self, partition_key: str) -> int:
        """Delete every row of one partition, 100 per transaction; rows deleted meanwhile are fine."""
        rows = [
            (entity[_PK], entity[_RK])
            for entity in self.query(_IN_PARTITION, {"pk": partition_key}, select=(_PK, _RK))
        ]
        deleted = 0
        for start in range(0, len(rows), MAX_TRANSACTION_OPERATIONS):
            chunk = rows[start : start + MAX_TRANSACTION_OPERATIONS]
            try:
                self.transact([("delete", {_PK: pk, _RK: rk}, {}) for pk, rk in chunk])
            except (ConflictError, NotFoundError):
                # Someone deleted one of them meanwhile: the whole transaction failed; go one by one instead.
                for pk, rk in chunk:
                    self.delete(pk, rk)
            deleted += len(chunk)
        return deleted

    def _check_size(self, entity: Mapping[str, Any]) -> None:
        size = _entity_size(entity)
        if size > MAX_ENTITY_BYTES:
            raise StoreError(
                f"{self.name}: a row of {size} bytes is over the {MAX_ENTITY_BYTES}-byte entity limit"
            )


def _is_missing_table(error: ResourceNotFoundError) -> bool:
    raw_code = getattr(error, "error_code", None)
    return str(getattr(raw_code, "value", raw_code)) in _MISSING_CONTAINER_CODES


def _put(table: _Table, entity: Entity, etag: str | None) -> str:
    return table.create(entity) if etag is None else table.replace(entity, etag)


def _prefix_filter(column: str, prefix: str) -> tuple[str, dict[str, str]]:
    """Keys starting with ``prefix`` (which ends in '|'): '}' is the character right after '|'."""
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return f"{column} ge @low and {column} lt @high", {"low": prefix, "high": upper}


# --- the storage account ------------------------------------------------------------------------------------

# Storage clients do not read proxy settings from the environment: ``requests`` would scan the whole
# environment (every app setting is a variable) on every call, about a third of a point read's CPU, and the
# Functions host reaches its storage account directly. Applies to the queue client too.
STORAGE_USES_ENV_SETTINGS = False


def storage_credential(settings: StorageSettings) -> TokenCredential:
    """The identity used without a connection string: the user-assigned identity if a client id is set."""
    if settings.managed_identity_client_id:
        return ManagedIdentityCredential(client_id=settings.managed_identity_client_id)
    return DefaultAzureCredential()


class TableStorage:
    """Every store over one storage account. The client is built on first use: no I/O until then."""

    def __init__(self, settings: StorageSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._service: TableServiceClient | None = None

    def table_name(self, base: str) -> str:
        return self._settings.table_prefix + base

    def ensure_tables(self) -> None:
        """Create every table that does not exist yet (idempotent)."""
        service = self._client()
        for base in TABLES:
            with translated_errors(f"create table {self.table_name(base)}"):
                service.create_table_if_not_exists(self.table_name(base))

    def close(self) -> None:
        with self._lock:
            service, self._service = self._service, None
        if service is not None:
            service.close()

    @cached_property
    def connections(self) -> ConnectionStore:
        return ConnectionStore(self._table(CONNECTIONS))

    @cached_property
    def tokens(self) -> TokenStore:
        return TokenStore(self._table(TOKENS))

    @cached_property
    def oauth_states(self) -> OAuthStateStore:
        return OAuthStateStore(self._table(OAUTH_STATE))

    @cached_property
    def subscriptions(self) -> SubscriptionStore:
        return SubscriptionStore(self._table(SUBSCRIPTIONS))

    @cached_property
    def links(self) -> LinkStore:
        return LinkStore(self._table(LINKS))

    # Cursors and leases live in the connections table, in each user's partition (their own tables held
    # nothing since): see ``ConnectionStore.begin_run``.
    @cached_property
    def cursors(self) -> CursorStore:
        return CursorStore(self._table(CONNECTIONS))

    @cached_property
    def outbox(self) -> OutboxStore:
        return OutboxStore(self._table(OUTBOX))

    @cached_property
    def leases(self) -> LeaseStore:
        return LeaseStore(self._table(CONNECTIONS))

    @cached_property
    def nonces(self) -> NonceStore:
        return NonceStore(self._table(NONCES))

    @cached_property
    def admin_consents(self) -> AdminConsentStore:
        return AdminConsentStore(self._table(ADMIN_CONSENTS))

    @cached_property
    def sync_log(self) -> SyncLogStore:
        return SyncLogStore(self._table(SYNC_LOG))

    @cached_property
    def item_index(self) -> ItemIndexStore:
        return ItemIndexStore(self._table(ITEM_INDEX))

    def _table(self, base: str) -> _Table:
        name = self.table_name(base)
        return _Table(self._client().get_table_client(name), name)

    def _client(self) -> TableServiceClient:
        with self._lock:
            if self._service is None:
                self._service = self._build_client()
            return self._service

    def _build_client(self) -> TableServiceClient:
        settings = self._settings
        if settings.connection_string is not None:
            return TableServiceClient.from_connection_string(
                settings.connection_string.value, use_env_settings=STORAGE_USES_ENV_SETTINGS
            )
        if not settings.table_service_uri:
            raise SettingsError(
                {"AzureWebJobsStorage__tableServiceUri": "is required when AzureWebJobsStorage is not set"}
            )
        return TableServiceClient(
            endpoint=settings.table_service_uri,
            credential=storage_credential(settings),
            use_env_settings=STORAGE_USES_ENV_SETTINGS,
        )


# --- connections: PK = user, RK = "connection" --------------------------------------------------------------

_CONNECTION_ROW = "connection"
# ``RunningUntil`` once a run has ended (a merge cannot remove a property; a past time reads as "no run").
_NO_RUN = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RunStart:
    """What ``ConnectionStore.begin_run`` took and read: the run's lease, the connection as its first round
    starts (None: the user has no connection), and the saved cursor (None: none yet)."""

    lease: Versioned[Lease]
    connection: Versioned[Connection] | None
    cursor: Versioned[Cursor] | None


@dataclass(frozen=True)
class RoundEnd:
    """What ``ConnectionStore.end_round`` found and wrote."""

    dirty: bool  # marked during the round: the caller runs another
    next_round: Versioned[Connection] | None = None  # the connection as the next round starts (when asked)
    cursor: Versioned[Cursor] | None = None  # the cursor saved
    released: bool = False  # the run ended here and its lease is given up (or had passed on already)


class ConnectionStore:
    """One row per connected (or once connected) CRM user."""

    def __init__(self, table: _Table) -> None:
        self._table = table

    def get(self, user_id: str) -> Versioned[Connection] | None:
        entity = self._table.get(_key("", user_id), _CONNECTION_ROW)
        return None if entity is None else _decoded(self._table.name, _connection_from, entity)

    def put(self, connection: Connection, *, etag: str | None = None) -> Versioned[Connection]:
        return Versioned(connection, _put(self._table, _connection_entity(connection), etag))

    def mark_dirty(
        self,
        user_id: str,
        now: datetime,
        *,
        accepts: Callable[[ConnectionState], bool] | None = None,
    ) -> bool:
        """Flag the user as needing a run; True when the caller must queue one: the user was clean and no
        run is going on. False: no connection, already dirty, or a run is on (it looks at the flag before it
        ends, and once more after letting go).

        The notification path calls this: when the flag is already set it costs one read and no write. It
        reads and writes only the flag's properties (a merge under the row's ETag).

        ``accepts``: the connection's state must pass it, else (or without a connection) nothing is written
        and ``UserNotConnectedError`` is raised: the CRM's push checks its user with this same read.
        """
        partition_key = _key("", user_id)
        for _attempt in range(_MAX_ATTEMPTS):
            current = self._table.get(
                partition_key, _CONNECTION_ROW, select=("Dirty", "RunningUntil", "State")
            )
            if accepts is not None and (current is None or not accepts(ConnectionState(current["State"]))):
                raise UserNotConnectedError(user_id)
            if current is None:
                return False
            if current.get("Dirty"):
                return False
            flag: Entity = {_PK: partition_key, _RK: _CONNECTION_ROW, "Dirty": True, "DirtySince": _utc(now)}
            try:
                self._table.merge(flag, _etag_of(current.metadata))
            except ConflictError:
                continue  # someone else changed the row meanwhile: read it again
            running_until = _read_time(current.get("RunningUntil"))
            return running_until is None or running_until <= now
        raise ConflictError(f"connections: user {user_id} kept changing while being marked dirty")

    def start_round(self, user_id: str, running_until: datetime) -> Versioned[Connection] | None:
        """A run's round begins: clear the dirty flag (what was marked so far is handled by this round) and
        say a run is on until ``running_until``. Returns the connection as the round starts, or None."""
        for _attempt in range(_MAX_ATTEMPTS):
            current = self.get(user_id)
            if current is None:
                return None
            started = replace(current.value, dirty=False, running_until=running_until)
            change: Entity = {
                _PK: _key("", user_id),
                _RK: _CONNECTION_ROW,
                "Dirty": False,
                "RunningUntil": _utc(running_until),
            }
            try:
                return Versioned(started, self._table.merge(change, current.etag))
            except ConflictError:
                continue
        raise ConflictError(f"connections: user {user_id} kept changing while a round started")

    def begin_run(
        self, user_id: str, holder: str, now: datetime, duration: timedelta, resource: str
    ) -> RunStart:
        """Take the user's lease until ``now + duration`` and start the run's first round (``start_round``);
        with the cursor of ``resource``. One query (the partition holds the connection, lease and cursor
        rows) and one entity-group transaction (lease and connection), instead of a lease write, a
        connection read and write and a cursor read.

        Another holder's live lease → ``LeaseHeldError``, and nothing is written; an expired lease is taken
        over. The lease is created or replaced under the ETag read, in the same transaction as the
        connection's change, so of two racing runs exactly one gets through.
        """
        partition_key = _key("", user_id)
        lease = Lease(user_id=user_id, holder=holder, expires_at=now + duration)
        for _attempt in range(_MAX_ATTEMPTS):
            rows = {entity[_RK]: entity for entity in self._table.query(_IN_PARTITION, {"pk": partition_key})}
            held = rows.get(_LEASE_ROW)
            operations: list[Operation] = []
            if held is None:
                operations.append(("create", _lease_entity(lease), {}))
            else:
                current_lease = _decoded(self._table.name, _lease_from, held)
                if current_lease.value.is_live(now) and current_lease.value.holder != holder:
                    raise LeaseHeldError(
                        f"leases: user {user_id} is leased until {current_lease.value.expires_at.isoformat()}"
                    )
                if current_lease.value.holder != holder:
                    log.info("leases: %s takes over the expired lease of user %s", holder, user_id)
                operations.append(("update", _lease_entity(lease), _guarded(current_lease.etag)))
            found = rows.get(_CONNECTION_ROW)
            connection = None if found is None else _decoded(self._table.name, _connection_from, found)
            if connection is not None:
                started: Entity = {
                    _PK: partition_key,
                    _RK: _CONNECTION_ROW,
                    "Dirty": False,
                    "RunningUntil": _utc(lease.expires_at),
                }
                operations.append(
                    (
                        "update",
                        started,
                        {"mode": UpdateMode.MERGE, "etag": connection.etag, **_if_unchanged()},
                    )
                )
            try:
                etags = self._table.transact(operations)
            except ConflictError:
                continue  # a racing run took the lease (seen as held next time), or the user was marked
            cursor_row = rows.get(_key(_CURSOR_PREFIX, resource))
            return RunStart(
                lease=Versioned(lease, etags[0]),
                connection=None
                if connection is None
                else Versioned(
                    replace(connection.value, dirty=False, running_until=lease.expires_at), etags[1]
                ),
                cursor=None if cursor_row is None else _decoded(self._table.name, _cursor_from, cursor_row),
            )
        raise LeaseHeldError(f"leases: user {user_id} kept changing while its run started")

    def end_round(
        self,
        user_id: str,
        change: Callable[[Connection], Connection | None],
        *,
        next_round_until: datetime | None = None,
        cursor: Cursor | None = None,
        lease: Versioned[Lease] | None = None,
    ) -> RoundEnd:
        """A round is over: record it (``change`` returns the connection to store, or None to keep it) and,
        unless the user was marked dirty meanwhile, end the run (no run is on any more) in the same write.
        Returns whether the user is dirty (the caller then runs another round). One read, one write.

        ``next_round_until``: the caller runs another round if the user is dirty; then the same write also
        starts it, as ``start_round`` does (clears the flag, a run is on until then), and the connection as
        that round starts is returned: a round costs one read and one write, not two of each.
        ``cursor``: saved in the same transaction (the round's new deltaLink). ``lease``: the run's, given up
        in the same transaction when the run ends here (then ``released``).
        """
        partition_key = _key("", user_id)
        for _attempt in range(_MAX_ATTEMPTS):
            if cursor is None and lease is None:
                found = self._table.get(partition_key, _CONNECTION_ROW)
                rows: dict[str, TableEntity] = {} if found is None else {_CONNECTION_ROW: found}
            else:
                # The partition's rows: the connection, and the cursor and lease to write under their ETags.
                rows = {
                    entity[_RK]: entity for entity in self._table.query(_IN_PARTITION, {"pk": partition_key})
                }
            found = rows.get(_CONNECTION_ROW)
            current = None if found is None else _decoded(self._table.name, _connection_from, found)
            operations: list[Operation] = []
            dirty = False
            next_round: Connection | None = None
            if current is not None:
                updated = change(current.value) or current.value
                dirty = current.value.dirty
                if not dirty:
                    updated = replace(updated, running_until=_NO_RUN)
                elif next_round_until is not None:
                    updated = replace(updated, dirty=False, running_until=next_round_until)
                    next_round = updated
                if updated != current.value:
                    operations.append(("update", _connection_entity(updated), _guarded(current.etag)))
            if cursor is not None:
                stored = rows.get(_key(_CURSOR_PREFIX, cursor.resource))
                # case: another run saved a cursor meanwhile (a lease that expired under a slow run): ours is
                # as good, so it replaces what is there now rather than failing the round.
                operations.append(
                    ("create", _cursor_entity(cursor), {})
                    if stored is None
                    else ("update", _cursor_entity(cursor), _guarded(_etag_of(stored.metadata)))
                )
            released = False
            if lease is not None and not dirty:
                released = True
                held = rows.get(_LEASE_ROW)
                stored_lease = None if held is None else _decoded(self._table.name, _lease_from, held)
                # Holders are unique per run: a lease with ours is still ours.
                if stored_lease is not None and stored_lease.value.holder == lease.value.holder:
                    operations.append(
                        (
                            "delete",
                            {_PK: partition_key, _RK: _LEASE_ROW},
                            {"etag": stored_lease.etag, **_if_unchanged()},
                        )
                    )
                else:
                    log.info("leases: lease of user %s had passed to another run before release", user_id)
            try:
                etags = self._table.transact(operations)
            except ConflictError:
                continue
            written = dict(zip((operation[1][_RK] for operation in operations), etags, strict=True))
            started = None
            if next_round is not None:
                assert current is not None
                started = Versioned(next_round, written.get(_CONNECTION_ROW, current.etag))
            saved = None
            if cursor is not None:
                saved = Versioned(cursor, written[_key(_CURSOR_PREFIX, cursor.resource)])
            return RoundEnd(dirty=dirty, next_round=started, cursor=saved, released=released)
        raise ConflictError(f"connections: user {user_id} kept changing while its round ended")

    def end_run(self, user_id: str) -> bool:
        """The run is over (called before the lease is let go): no run is on any more. Returns whether the
        user is dirty now."""
        partition_key = _key("", user_id)
        for _attempt in range(_MAX_ATTEMPTS):
            current = self._table.get(partition_key, _CONNECTION_ROW, select=("Dirty", "RunningUntil"))
            if current is None:
                return False
            if current.get("RunningUntil") is not None and _read_time(current.get("RunningUntil")) != _NO_RUN:
                change: Entity = {_PK: partition_key, _RK: _CONNECTION_ROW, "RunningUntil": _utc(_NO_RUN)}
                try:
                    self._table.merge(change, _etag_of(current.metadata))
                except ConflictError:
                    continue
            return bool(current.get("Dirty"))
        raise ConflictError(f"connections: user {user_id} kept changing while its run ended")

    def is_dirty(self, user_id: str) -> bool:
        current = self._table.get(_key("", user_id), _CONNECTION_ROW, select=("Dirty",))
        return current is not None and bool(current.get("Dirty"))

    def unmark_dirty(self, user_id: str, since: datetime) -> bool:
        """Undo our own ``mark_dirty(user_id, since)`` when its work could not be queued, so a retry of the
        same request marks (and queues) again. Anyone else's later marking or clearing stays; True if undone.
        """

        def undone(current: Connection | None) -> Connection | None:
            if current is None or not current.dirty or current.dirty_since is None:
                return None
            # Table Storage keeps times to 100 ns and Python to 1 µs: equal within a millisecond is ours.
            if abs(current.dirty_since - since) > timedelta(milliseconds=1):
                return None
            return replace(current, dirty=False, dirty_since=None)

        return self.update(user_id, undone) is not None

    def update(
        self, user_id: str, change: Callable[[Connection | None], Connection | None]
    ) -> Versioned[Connection] | None:
        """Read-modify-write under the row's ETag: ``change`` gets the current connection (None: no row) and
        returns the new one, or None to leave it. Retried when someone else wrote meanwhile."""
        for _attempt in range(_MAX_ATTEMPTS):
            current = self.get(user_id)
            updated = change(None if current is None else current.value)
            if updated is None:
                return None
            try:
                return self.put(updated, etag=None if current is None else current.etag)
            except ConflictError:
                continue
        raise ConflictError(f"connections: user {user_id} kept changing")

    def delete(self, user_id: str, *, etag: str | None = None) -> None:
        self._table.delete(_key("", user_id), _CONNECTION_ROW, etag)

    def list_all(self) -> Iterator[Versioned[Connection]]:
        """Every connection (a table scan: for timers only, never on a per-request path). The table also
        holds each user's lease and cursor rows: only connection rows are read."""
        for entity in self._table.query("RowKey eq @row", {"row": _CONNECTION_ROW}):
            yield _decoded(self._table.name, _connection_from, entity)


def _connection_entity(connection: Connection) -> Entity:
    error = connection.last_error
    return _without_none(
        {
            _PK: _key("", connection.user_id),
            _RK: _CONNECTION_ROW,
            "State": connection.state.value,
            "TenantId": connection.tenant_id,
            "AccountOid": connection.account_oid,
            "Upn": connection.upn,
            "HomeAccountId": connection.home_account_id,
            "ConnectedSince": _utc(connection.connected_since),
            "LastSyncAt": _utc(connection.last_sync_at),
            "LastGoodSyncAt": _utc(connection.last_good_sync_at),
            "LastErrorAt": _utc(error.at) if error else None,
            "LastErrorCode": error.code if error else None,
            "LastErrorMessage": error.message if error else None,
            "LastErrorItemId": error.item_id if error else None,
            "Dirty": connection.dirty,
            "DirtySince": _utc(connection.dirty_since),
            "RunningUntil": _utc(connection.running_until),
            "DirectionOverride": connection.direction_override.value
            if connection.direction_override
            else None,
            "ConflictPolicyOverride": (
                connection.conflict_policy_override.value if connection.conflict_policy_override else None
            ),
        }
    )


def _connection_from(entity: TableEntity) -> Versioned[Connection]:
    error_at = _read_time(entity.get("LastErrorAt"))
    direction = entity.get("DirectionOverride")
    policy = entity.get("ConflictPolicyOverride")
    connection = Connection(
        user_id=decode_key(entity[_PK]),
        state=ConnectionState(entity["State"]),
        tenant_id=entity.get("TenantId"),
        account_oid=entity.get("AccountOid"),
        upn=entity.get("Upn"),
        home_account_id=entity.get("HomeAccountId"),
        connected_since=_read_time(entity.get("ConnectedSince")),
        last_sync_at=_read_time(entity.get("LastSyncAt")),
        last_good_sync_at=_read_time(entity.get("LastGoodSyncAt")),
        last_error=(
            ErrorRecord(
                at=error_at,
                code=entity.get("LastErrorCode", ""),
                message=entity.get("LastErrorMessage", ""),
                item_id=entity.get("LastErrorItemId"),
            )
            if error_at is not None
            else None
        ),
        dirty=bool(entity.get("Dirty", False)),
        dirty_since=_read_time(entity.get("DirtySince")),
        running_until=_read_time(entity.get("RunningUntil")),
        direction_override=SyncDirection(direction) if direction else None,
        conflict_policy_override=ConflictPolicy(policy) if policy else None,
    )
    return Versioned(connection, _etag_of(entity.metadata))


# --- tokens: PK = user, RK = "msal"; an opaque encrypted blob -----------------------------------------------

_TOKEN_ROW = "msal"  # noqa: S105 - a row key, not a secret
_TOKEN_BLOB = "Blob"  # noqa: S105 - a property name


class TokenStore:
    """The user's encrypted MSAL token cache, stored as opaque bytes (chunked when over 64 KiB)."""

    def __init__(self, table: _Table) -> None:
        self._table = table

    def get(self, user_id: str) -> Versioned[bytes] | None:
        entity = self._table.get(_key("", user_id), _TOKEN_ROW)
        return None if entity is None else _decoded(self._table.name, _token_from, entity)

    def put(self, user_id: str, blob: bytes, *, etag: str | None = None) -> Versioned[bytes]:
        """Create the cache (``etag`` None) or replace the one read with ``etag``; call it on changes only."""
        entity: Entity = {
            _PK: _key("", user_id),
            _RK: _TOKEN_ROW,
            "Size": len(blob),
            **_large(_TOKEN_BLOB, blob),
        }
        return Versioned(blob, _put(self._table, entity, etag))

    def delete(self, user_id: str, *, etag: str | None = None) -> None:
        self._table.delete(_key("", user_id), _TOKEN_ROW, etag)


def _token_from(entity: TableEntity) -> Versioned[bytes]:
    blob = _read_large_bytes(entity, _TOKEN_BLOB)
    if blob is None:
        # An empty value is stored as an empty binary property, which the service may drop.
        blob = b""
    if len(blob) != int(entity.get("Size", len(blob))):
        raise ValueError("token cache chunks are incomplete")
    return Versioned(blob, _etag_of(entity.metadata))


# --- oauthstate: PK = state id, RK = "state"; single-use, expiring ------------------------------------------

_OAUTH_ROW = "state"


class OAuthStateStore:
    """Pending sign-ins, keyed by the ``state`` sent to Entra ID; each is consumed once, before it expires."""

    def __init__(self, table: _Table) -> None:
        self._table = table

    def put(self, state: OAuthState) -> Versioned[OAuthState]:
        """Store a new state; a state id already in use → ``ConflictError``."""
        entity = _without_none(
            {
                _PK: _key("", state.state_id),
                _RK: _OAUTH_ROW,
                "CrmUserId": state.crm_user_id,
                "ReturnUrl": state.return_url,
                "FlowSize": len(state.flow),
                **_large("Flow", state.flow),
                "CreatedAt": _utc(state.created_at),
                "ExpiresAt": _utc(state.expires_at),
            }
        )
        return Versioned(state, self._table.create(entity))

    def consume(self, state_id: str, now: datetime) -> OAuthState:
        """Return the state and delete it, once: unknown, expired or already consumed → ``NotFoundError``.

        The delete is conditional on the ETag read, so of two callbacks racing with the same state exactly one
        gets it. An expired state met here is deleted.
        """
        partition_key = _key("", state_id)
        entity = self._table.get(partition_key, _OAUTH_ROW)
        if entity is None:
            raise NotFoundError("oauthstate: unknown or already used")
        stored = _decoded(self._table.name, _oauth_state_from, entity)
        if stored.value.is_expired(now):
            with contextlib.suppress(ConflictError):
                self._table.delete(partition_key, _OAUTH_ROW, stored.etag)
            raise NotFoundError("oauthstate: expired")
        try:
            self._table.delete_exactly(partition_key, _OAUTH_ROW, stored.etag)
        except (ConflictError, NotFoundError) as error:
            raise NotFoundError("oauthstate: already used") from error
        return stored.value

    def purge_expired(self, now: datetime) -> int:
        """Delete states that expired unused (a table scan: for a timer). Returns how many went."""
        expired = [
            (entity[_PK], entity[_RK], _etag_of(entity.metadata))
            for entity in self._table.query("ExpiresAt lt @now", {"now": _utc(now)}, select=(_PK, _RK))
        ]
        for partition_key, row_key, etag in expired:
            with contextlib.suppress(ConflictError):
                self._table.delete(partition_key, row_key, etag)
        return len(expired)


def _oauth_state_from(entity: TableEntity) -> Versioned[OAuthState]:
    flow = _read_large_bytes(entity, "Flow") or b""
    if len(flow) != int(entity.get("FlowSize", len(flow))):
        raise ValueError("flow chunks are incomplete")
    state = OAuthState(
        state_id=decode_key(entity[_PK]),
        crm_user_id=entity["CrmUserId"],
        return_url=entity["ReturnUrl"],
        flow=flow,
        created_at=_required_time(entity, "CreatedAt"),
        expires_at=_required_time(entity, "ExpiresAt"),
    )
    return Versioned(state, _etag_of(entity.metadata))


# --- subscriptions: primary row PK = "s|" + id; index row PK = "u|" + user, RK = id ------------------------

_SUBSCRIPTION_PREFIX = "s|"
_SUBSCRIPTION_USER_PREFIX = "u|"
_SUBSCRIPTION_ROW = "subscription"


class SubscriptionStore:
    """Graph subscriptions: found by id without a scan (webhook), by user (disconnect), and all (renewal).

    Two rows per subscription in one table: the primary row (partition ``s|{id}``) and a per-user index row
    (partition ``u|{user}``, row key = id). They sit in different partitions, so no transaction spans them;
    instead the order keeps one invariant, *every primary row has an index row*: create writes the index
    first, delete removes the primary first. A crash in between leaves at most an index row pointing at
    nothing, which readers skip.
    """

    def __init__(self, table: _Table) -> None:
        self._table = table

    def get(self, subscription_id: str) -> Versioned[SubscriptionRecord] | None:
        entity = self._table.get(_key(_SUBSCRIPTION_PREFIX, subscription_id), _SUBSCRIPTION_ROW)
        return None if entity is None else _decoded(self._table.name, _subscription_from, entity)

    def put(self, record: SubscriptionRecord, *, etag: str | None = None) -> Versioned[SubscriptionRecord]:
        """Create (``etag`` None) or replace a subscription; a record never moves to another user."""
        if etag is None:
            self._table.upsert(self._index_entity(record.user_id, record.subscription_id))
        return Versioned(record, _put(self._table, _subscription_entity(record), etag))

    def delete(self, record: SubscriptionRecord, *, etag: str | None = None) -> None:
        """Delete the primary row (only if unchanged when ``etag`` is given), then the index row."""
        self._table.delete(_key(_SUBSCRIPTION_PREFIX, record.subscription_id), _SUBSCRIPTION_ROW, etag)
        index = self._index_entity(record.user_id, record.subscription_id)
        self._table.delete(index[_PK], index[_RK])

    def list_for_user(self, user_id: str) -> list[Versioned[SubscriptionRecord]]:
        """The user's subscriptions: one partition query, then a point read per subscription."""
        found: list[Versioned[SubscriptionRecord]] = []
        rows = self._table.query(
            _IN_PARTITION, {"pk": _key(_SUBSCRIPTION_USER_PREFIX, user_id)}, select=(_RK,)
        )
        for row in list(rows):
            subscription_id = decode_key(row[_RK])
            record = self.get(subscription_id)
            if record is None or record.value.user_id != user_id:
                # Index row of a create that did not finish, or a delete that did not: skip it.
                log.debug(
                    "subscriptions: index row %s of user %s has no primary row", subscription_id, user_id
                )
                continue
            found.append(record)
        return found

    def list_all(self) -> Iterator[Versioned[SubscriptionRecord]]:
        """Every subscription (a key-range scan over primary rows: for the renewal timer)."""
        query_filter, parameters = _prefix_filter(_PK, _SUBSCRIPTION_PREFIX)
        for entity in self._table.query(query_filter, parameters):
            yield _decoded(self._table.name, _subscription_from, entity)

    @staticmethod
    def _index_entity(user_id: str, subscription_id: str) -> Entity:
        return {_PK: _key(_SUBSCRIPTION_USER_PREFIX, user_id), _RK: _key("", subscription_id)}


def _subscription_entity(record: SubscriptionRecord) -> Entity:
    return {
        _PK: _key(_SUBSCRIPTION_PREFIX, record.subscription_id),
        _RK: _SUBSCRIPTION_ROW,
        "UserId": record.user_id,
        "Resource": record.resource,
        "ChangeTypes": ",".join(record.change_types),
        "ExpiresAt": _utc(record.expires_at),
        "ClientStateHash": record.client_state_hash,
    }


def _subscription_from(entity: TableEntity) -> Versioned[SubscriptionRecord]:
    change_types = entity.get("ChangeTypes", "")
    record = SubscriptionRecord(
        subscription_id=decode_key(entity[_PK][len(_SUBSCRIPTION_PREFIX) :]),
        user_id=entity["UserId"],
        resource=entity["Resource"],
        change_types=tuple(change_types.split(",")) if change_types else (),
        expires_at=_required_time(entity, "ExpiresAt"),
        client_state_hash=entity["ClientStateHash"],
    )
    return Versioned(record, _etag_of(entity.metadata))


# --- links: PK = user; "c|{crm id}" holds the link, "g|{graph id}" points back to the crm id ---------------

_CRM_PREFIX = "c|"
_GRAPH_PREFIX = "g|"
# Table Storage allows 15 comparisons in one filter: the partition and 14 row keys. Keys are also capped in
# characters per query, so that a query of long ids stays a short URL.
_KEYS_PER_QUERY = 14
_KEY_CHARS_PER_QUERY = 3000


@dataclass(frozen=True)
class LinkWrite:
    """A link to save. ``previous`` is the stored version it replaces, or None for a new link."""

    link: Link
    previous: Versioned[Link] | None = None


class LinkStore:
    """A user's links, findable by CRM id and by Graph id; both rows of a link change in one transaction."""

    def __init__(self, table: _Table) -> None:
        self._table = table

    def get_by_crm_id(self, user_id: str, crm_id: str) -> Versioned[Link] | None:
        entity = self._table.get(_key("", user_id), _key(_CRM_PREFIX, crm_id))
        return None if entity is None else _decoded(self._table.name, _link_from, entity)

    def get_by_graph_id(self, user_id: str, graph_id: str) -> Versioned[Link] | None:
        index = self._table.get(_key("", user_id), _key(_GRAPH_PREFIX, graph_id))
        if index is None:
            return None
        link = self.get_by_crm_id(user_id, index["CrmId"])
        if link is None or link.value.graph_id != graph_id:
            return None  # cannot happen while rows change in transactions; be safe if someone edited by hand
        return link

    def find_by_crm_ids(self, user_id: str, crm_ids: Iterable[str]) -> dict[str, Versioned[Link]]:
        """The stored links among ``crm_ids``, by CRM id (absent ones are left out).

        One query per 14 ids instead of a point read each: a delta round looks up every item of a page, and
        this is what its Table transactions went on (``bench.sync_costs``)."""
        rows = self._rows_with_keys(user_id, [_key(_CRM_PREFIX, crm_id) for crm_id in crm_ids])
        found = (_decoded(self._table.name, _link_from, entity) for entity in rows)
        return {link.value.crm_id: link for link in found}

    def find_by_graph_ids(self, user_id: str, graph_ids: Iterable[str]) -> dict[str, Versioned[Link]]:
        """The stored links among ``graph_ids``, by Graph id: a query for the index rows, one for the links
        (per 14 ids each), instead of two point reads per id."""
        index_rows = self._rows_with_keys(
            user_id, [_key(_GRAPH_PREFIX, graph_id) for graph_id in graph_ids], select=(_RK, "CrmId")
        )
        crm_ids = {decode_key(row[_RK][len(_GRAPH_PREFIX) :]): str(row["CrmId"]) for row in index_rows}
        links = self.find_by_crm_ids(user_id, set(crm_ids.values()))
        return {
            graph_id: links[crm_id]
            for graph_id, crm_id in crm_ids.items()
            # Both rows change in one transaction, so they agree; be safe if someone edited one by hand.
            if crm_id in links and links[crm_id].value.graph_id == graph_id
        }

    def _rows_with_keys(
        self, user_id: str, row_keys: Iterable[str], select: Sequence[str] | None = None
    ) -> Iterator[TableEntity]:
        """The rows of the user's partition with these row keys, ``_KEYS_PER_QUERY`` per query."""
        keys = sorted(set(row_keys))
        chunk: list[str] = []
        size = 0
        for key in keys:
            chunk.append(key)
            size += len(key)
            if len(chunk) == _KEYS_PER_QUERY or size >= _KEY_CHARS_PER_QUERY:
                yield from self._rows_in(user_id, chunk, select)
                chunk, size = [], 0
        if chunk:
            yield from self._rows_in(user_id, chunk, select)

    def _rows_in(
        self, user_id: str, row_keys: Sequence[str], select: Sequence[str] | None
    ) -> Iterator[TableEntity]:
        parameters: dict[str, Any] = {"pk": _key("", user_id)}
        parameters.update({f"k{index}": key for index, key in enumerate(row_keys)})
        keys = " or ".join(f"RowKey eq @k{index}" for index in range(len(row_keys)))
        # The SDK substitutes ``@name`` only in words split on spaces: the parentheses stand apart.
        return self._table.query(f"PartitionKey eq @pk and ( {keys} )", parameters, select=select)

    def list_for_user(self, user_id: str) -> Iterator[Versioned[Link]]:
        """Every link of the user (one partition query)."""
        query_filter, parameters = _prefix_filter(_RK, _CRM_PREFIX)
        parameters["pk"] = _key("", user_id)
        for entity in self._table.query(f"PartitionKey eq @pk and {query_filter}", parameters):
            yield _decoded(self._table.name, _link_from, entity)

    def count_for_user(self, user_id: str) -> int:
        """How many links the user has (a key-only partition query: the mass-deletion guard's measure)."""
        query_filter, parameters = _prefix_filter(_RK, _CRM_PREFIX)
        parameters["pk"] = _key("", user_id)
        return sum(
            1 for _ in self._table.query(f"PartitionKey eq @pk and {query_filter}", parameters, select=(_RK,))
        )

    def write(
        self, user_id: str, saves: Sequence[LinkWrite] = (), deletes: Sequence[Versioned[Link]] = ()
    ) -> list[Versioned[Link]]:
        """Save and delete links of one user together, returning the saved links (in order) with new ETags.

        A new link that exists, a saved link whose ``previous`` ETag is stale, or a deleted link that changed
        → ``ConflictError``, and nothing of that transaction is written. Up to 100 row operations go in one
        transaction (a save or delete is 2-3); a larger set is split between transactions, each atomic, and
        the rows of one link always stay in the same one.
        """
        plan = _RowOperations()
        for save in saves:
            link = save.link
            if link.user_id != user_id:
                raise ValueError("links: every link must belong to the user written")
            plan.start_group()
            previous = save.previous
            if previous is None:
                plan.add(("create", _link_entity(link), {}))
                plan.add(("create", _graph_index_entity(link), {}))
            else:
                if previous.value.crm_id != link.crm_id:
                    raise ValueError("links: a save replaces the link of the same CRM id")
                plan.add(("update", _link_entity(link), _guarded(previous.etag)))
                if previous.value.graph_id != link.graph_id:
                    plan.add(("delete", _graph_index_entity(previous.value), {}))
                    plan.add(("create", _graph_index_entity(link), {}))
        for deleted in deletes:
            if deleted.value.user_id != user_id:
                raise ValueError("links: every link must belong to the user written")
            plan.start_group()
            plan.add(
                ("delete", _crm_row_key_entity(deleted.value), {"etag": deleted.etag, **_if_unchanged()})
            )
            plan.add(("delete", _graph_index_entity(deleted.value), {}))

        etags: dict[str, str] = {}
        for batch in plan.batches():
            etags.update(self._commit(batch))
        log.debug("links: user %s saved %d and deleted %d links", user_id, len(saves), len(deletes))
        return [Versioned(save.link, etags[_key(_CRM_PREFIX, save.link.crm_id)]) for save in saves]

    def purge_user(self, user_id: str) -> int:
        """Delete every link row of the user (disconnect with purge). Returns how many rows went."""
        return self._table.delete_partition(_key("", user_id))

    def _commit(self, batch: list[Operation]) -> dict[str, str]:
        etags = self._table.transact(batch)
        return {operation[1][_RK]: etag for operation, etag in zip(batch, etags, strict=True)}


class _RowOperations:
    """Row operations grouped per link, packed into transactions without ever splitting a group.

    A transaction may touch a row only once. The one legitimate repeat is a Graph index row that one link
    gives up and another takes in the same call (say, two links swap Graph ids): its delete and create become
    one upsert, placed with the later of the two.
    """

    def __init__(self) -> None:
        self._groups: list[list[Operation | None]] = []
        self._placed: dict[str, tuple[int, int]] = {}  # row key → (group, index)

    def start_group(self) -> None:
        self._groups.append([])

    def add(self, operation: Operation) -> None:
        row_key = operation[1][_RK]
        earlier = self._placed.get(row_key)
        if earlier is not None:
            group_index, index = earlier
            earlier_operation = self._groups[group_index][index]
            if (
                earlier_operation is None
                or not row_key.startswith(_GRAPH_PREFIX)
                or {operation[0], earlier_operation[0]} != {"delete", "create"}
            ):
                raise ValueError(f"links: row {row_key} is written twice in one call")
            created = operation if operation[0] == "create" else earlier_operation
            self._groups[group_index][index] = None
            operation = ("upsert", created[1], {"mode": UpdateMode.REPLACE})
        group = self._groups[-1]
        self._placed[row_key] = (len(self._groups) - 1, len(group))
        group.append(operation)

    def batches(self) -> Iterator[list[Operation]]:
        batch: list[Operation] = []
        batch_bytes = 0
        for group in self._groups:
            operations = [operation for operation in group if operation is not None]
            group_bytes = sum(_entity_size(operation[1]) for operation in operations)
            if batch and (
                len(batch) + len(operations) > MAX_TRANSACTION_OPERATIONS
                or batch_bytes + group_bytes > _TRANSACTION_BYTES_BUDGET
            ):
                yield batch
                batch, batch_bytes = [], 0
            batch.extend(operations)
            batch_bytes += group_bytes
        if batch:
            yield batch


def _if_unchanged() -> dict[str, Any]:
    return {"match_condition": MatchConditions.IfNotModified}


def _guarded(etag: str) -> dict[str, Any]:
    return {"mode": UpdateMode.REPLACE, "etag": etag, **_if_unchanged()}


def _crm_row_key_entity(link: Link) -> Entity:
    return {_PK: _key("", link.user_id), _RK: _key(_CRM_PREFIX, link.crm_id)}


def _graph_index_entity(link: Link) -> Entity:
    return {_PK: _key("", link.user_id), _RK: _key(_GRAPH_PREFIX, link.graph_id), "CrmId": link.crm_id}


def _link_entity(link: Link) -> Entity:
    return _without_none(
        {
            **_crm_row_key_entity(link),
            "GraphId": link.graph_id,
            "ICalUId": link.ical_uid,
            "ChangeKey": link.change_key,
            "CrmVersion": link.crm_version,
            **_large("BaseHashes", json.dumps(link.base_hashes, sort_keys=True, separators=(",", ":"))),
            **_large("BaseAttendees", link.base_attendees),
            **_large("BaseOccurrences", link.base_occurrences),
            "SeriesMasterId": link.series_master_id,
            "CrmOwnerId": link.crm_owner_id,
            "CrmModifiedAt": _utc(link.crm_modified_at),
        }
    )


def _link_from(entity: TableEntity) -> Versioned[Link]:
    hashes = json.loads(_read_large_text(entity, "BaseHashes") or "{}")
    if not isinstance(hashes, dict):
        raise TypeError("base hashes are not a JSON object")
    link = Link(
        user_id=decode_key(entity[_PK]),
        crm_id=decode_key(entity[_RK][len(_CRM_PREFIX) :]),
        graph_id=entity["GraphId"],
        ical_uid=entity.get("ICalUId"),
        change_key=entity.get("ChangeKey"),
        crm_version=_read_version(entity.get("CrmVersion")),
        base_hashes={str(name): str(value) for name, value in hashes.items()},
        series_master_id=entity.get("SeriesMasterId"),
        base_attendees=_read_large_text(entity, "BaseAttendees"),
        base_occurrences=_read_large_text(entity, "BaseOccurrences"),
        crm_owner_id=entity.get("CrmOwnerId"),
        crm_modified_at=_read_time(entity.get("CrmModifiedAt")),
    )
    return Versioned(link, _etag_of(entity.metadata))


# --- cursors: in the connections table, PK = user, RK = "cursor|{resource kind}" --------------------------

_CURSOR_PREFIX = "cursor|"


class CursorStore:
    """Per user and resource kind, the delta link the next delta query starts from.

    The rows sit in the user's partition of the connections table, beside the connection and lease rows,
    so that a run reads all three with one query and saves the cursor with the end of its round in one
    entity-group transaction (``ConnectionStore.begin_run`` / ``end_round``)."""

    def __init__(self, table: _Table) -> None:
        self._table = table

    def get(self, user_id: str, resource: str) -> Versioned[Cursor] | None:
        entity = self._table.get(_key("", user_id), _key(_CURSOR_PREFIX, resource))
        return None if entity is None else _decoded(self._table.name, _cursor_from, entity)

    def put(self, cursor: Cursor, *, etag: str | None = None) -> Versioned[Cursor]:
        return Versioned(cursor, _put(self._table, _cursor_entity(cursor), etag))

    def delete(self, user_id: str, resource: str, *, etag: str | None = None) -> None:
        self._table.delete(_key("", user_id), _key(_CURSOR_PREFIX, resource), etag)

    def purge_user(self, user_id: str) -> int:
        """Delete every cursor of the user (disconnect with purge). Returns how many rows went."""
        query_filter, parameters = _prefix_filter(_RK, _CURSOR_PREFIX)
        parameters["pk"] = _key("", user_id)
        rows = [
            entity[_RK]
            for entity in self._table.query(
                f"PartitionKey eq @pk and {query_filter}", parameters, select=(_RK,)
            )
        ]
        for row_key in rows:
            self._table.delete(_key("", user_id), row_key)
        return len(rows)


def _cursor_entity(cursor: Cursor) -> Entity:
    return {
        _PK: _key("", cursor.user_id),
        _RK: _key(_CURSOR_PREFIX, cursor.resource),
        **_large("DeltaLink", cursor.delta_link),
    }


def _cursor_from(entity: TableEntity) -> Versioned[Cursor]:
    delta_link = _read_large_text(entity, "DeltaLink")
    if delta_link is None:
        raise KeyError("DeltaLink")
    resource = decode_key(entity[_RK][len(_CURSOR_PREFIX) :])
    cursor = Cursor(user_id=decode_key(entity[_PK]), resource=resource, delta_link=delta_link)
    return Versioned(cursor, _etag_of(entity.metadata))


# --- outbox: PK = user, RK = crm id; the newest change of an activity wins ----------------------------------


class OutboxStore:
    """CRM changes waiting for the user's next run, one row per activity."""

    def __init__(self, table: _Table) -> None:
        self._table = table

    def put(self, entry: OutboxEntry) -> Versioned[OutboxEntry]:
        """Keep ``entry`` unless a newer change of the same activity is already waiting; return what is kept.

        The common case (nothing waiting) is one create; otherwise the waiting row is replaced, guarded by its
        ETag, when ``entry.supersedes`` it.
        """
        entity = _outbox_entity(entry)
        for _attempt in range(_MAX_ATTEMPTS):
            try:
                return Versioned(entry, self._table.create(entity))
            except ConflictError:
                pass  # a change of this activity is already waiting
            current = self._table.get(entity[_PK], entity[_RK])
            if current is None:
                continue  # handled and deleted meanwhile: create again
            waiting = _decoded(self._table.name, _outbox_from, current)
            if not entry.supersedes(waiting.value):
                log.info("outbox: kept newer change of %s for user %s", entry.crm_id, entry.user_id)
                return waiting
            try:
                return Versioned(entry, self._table.replace(entity, waiting.etag))
            except ConflictError:
                continue  # changed or handled meanwhile: decide again
        raise ConflictError(f"outbox: activity {entry.crm_id} of user {entry.user_id} kept changing")

    def list_for_user(self, user_id: str) -> list[Versioned[OutboxEntry]]:
        return [
            _decoded(self._table.name, _outbox_from, entity)
            for entity in self._table.query(_IN_PARTITION, {"pk": _key("", user_id)})
        ]

    def get(self, user_id: str, crm_id: str) -> Versioned[OutboxEntry] | None:
        """The change of one activity waiting for the user, if any (one point read)."""
        entity = self._table.get(_key("", user_id), _key("", crm_id))
        return None if entity is None else _decoded(self._table.name, _outbox_from, entity)

    def has_pending(self, user_id: str) -> bool:
        """True when at least one change waits (reads at most one key, no values)."""
        rows = self._table.query(_IN_PARTITION, {"pk": _key("", user_id)}, select=(_RK,), page_size=1)
        return next(rows, None) is not None

    def delete_handled(self, entry: Versioned[OutboxEntry]) -> bool:
        """Remove a change the run applied, unless a newer one replaced it since (then it stays: False)."""
        try:
            self._table.delete(_key("", entry.value.user_id), _key("", entry.value.crm_id), entry.etag)
        except ConflictError:
            log.info("outbox: newer change of %s for user %s stays", entry.value.crm_id, entry.value.user_id)
            return False
        return True

    def delete_all_handled(self, entries: Sequence[Versioned[OutboxEntry]]) -> int:
        """Remove the changes a run applied, as ``delete_handled`` does, in one transaction per user and 100
        rows (a round handles all its user's rows at once) instead of one delete each. Returns how many went.

        Each delete stays guarded by the ETag read: when one of them changed (a newer change replaced it) or
        went, the whole transaction fails and that chunk goes one by one, so the newer change stays."""
        by_user: dict[str, list[Versioned[OutboxEntry]]] = {}
        for entry in entries:
            by_user.setdefault(entry.value.user_id, []).append(entry)
        deleted = 0
        for user_id, handled in by_user.items():
            for first in range(0, len(handled), MAX_TRANSACTION_OPERATIONS):
                chunk = handled[first : first + MAX_TRANSACTION_OPERATIONS]
                operations: list[Operation] = [
                    (
                        "delete",
                        {_PK: _key("", user_id), _RK: _key("", entry.value.crm_id)},
                        {"etag": entry.etag, **_if_unchanged()},
                    )
                    for entry in chunk
                ]
                try:
                    self._table.transact(operations)
                    deleted += len(chunk)
                except ConflictError:
                    deleted += sum(1 for entry in chunk if self.delete_handled(entry))
        return deleted

    def users_with_pending(self) -> Iterator[str]:
        """Users with at least one waiting change (a table scan of keys: for the sweep timer)."""
        previous: str | None = None
        for entity in self._table.query(None, select=(_PK,)):
            partition_key = entity[_PK]
            if partition_key != previous:  # rows come ordered by partition
                previous = partition_key
                yield decode_key(partition_key)

    def purge_user(self, user_id: str) -> int:
        """Delete every row of the user (disconnect with purge). Returns how many rows went."""
        return self._table.delete_partition(_key("", user_id))


def _outbox_entity(entry: OutboxEntry) -> Entity:
    return _without_none(
        {
            _PK: _key("", entry.user_id),
            _RK: _key("", entry.crm_id),
            "Operation": entry.operation.value,
            **_large("Payload", entry.payload_json),
            "CrmVersion": entry.crm_version,
            "CrmModifiedAt": _utc(entry.crm_modified_at),
            "ReceivedAt": _utc(entry.received_at),
        }
    )


def _outbox_from(entity: TableEntity) -> Versioned[OutboxEntry]:
    version = _read_version(entity.get("CrmVersion"))
    if version is None:
        raise KeyError("CrmVersion")
    entry = OutboxEntry(
        user_id=decode_key(entity[_PK]),
        crm_id=decode_key(entity[_RK]),
        operation=OutboxOperation(entity["Operation"]),
        payload_json=_read_large_text(entity, "Payload"),
        crm_version=version,
        received_at=_required_time(entity, "ReceivedAt"),
        crm_modified_at=_read_time(entity.get("CrmModifiedAt")),
    )
    return Versioned(entry, _etag_of(entity.metadata))


# --- sync log: PK = user, RK = newest-first time key + sequence --------------------------------------------

# Row keys sort ascending; counting down from this many microseconds makes the newest entry come first.
_LOG_EPOCH_LIMIT = 10**17
SYNC_LOG_SHOWN = 50


class SyncLogStore:
    """Per user, what the runs want people to see (conflicts, skipped items, item errors), newest first."""

    def __init__(self, table: _Table) -> None:
        self._table = table

    def add(self, user_id: str, entries: Sequence[SyncLogEntry]) -> None:
        """Append entries (one transaction per 100)."""
        operations: list[Operation] = []
        for sequence, entry in enumerate(entries):
            if entry.user_id != user_id:
                raise ValueError("sync log: every entry must belong to the user written")
            operations.append(("create", _sync_log_entity(entry, sequence), {}))
        for first in range(0, len(operations), 100):
            self._table.transact(operations[first : first + 100])

    def recent(self, user_id: str, limit: int = SYNC_LOG_SHOWN) -> list[SyncLogEntry]:
        rows = self._table.query(_IN_PARTITION, {"pk": _key("", user_id)}, page_size=limit)
        entries: list[SyncLogEntry] = []
        for entity in rows:
            entries.append(_sync_log_from(entity))
            if len(entries) >= limit:
                break
        return entries

    def trim(self, user_id: str, keep: int = 4 * SYNC_LOG_SHOWN) -> int:
        """Delete all but the newest ``keep`` entries of the user (the sweep calls this). Returns how many."""
        keys = [
            entity[_RK]
            for entity in self._table.query(_IN_PARTITION, {"pk": _key("", user_id)}, select=(_RK,))
        ]
        stale = keys[keep:]
        for first in range(0, len(stale), 100):
            self._table.transact(
                [("delete", {_PK: _key("", user_id), _RK: key}, {}) for key in stale[first : first + 100]]
            )
        return len(stale)

    def purge_user(self, user_id: str) -> int:
        return self._table.delete_partition(_key("", user_id))


def _sync_log_entity(entry: SyncLogEntry, sequence: int) -> Entity:
    micros = int(entry.at.timestamp() * 1_000_000)
    row_key = f"{_LOG_EPOCH_LIMIT - micros:017d}-{999 - sequence % 1000:03d}-{secrets.token_hex(4)}"
    return _without_none(
        {
            _PK: _key("", entry.user_id),
            _RK: row_key,
            "At": _utc(entry.at),
            "Kind": entry.kind.value,
            "Reason": entry.reason,
            "CrmId": entry.crm_id,
            "GraphId": entry.graph_id,
            "Fields": json.dumps(list(entry.fields)) if entry.fields is not None else None,
            "Resolution": entry.resolution,
            "Message": entry.message,
        }
    )


def _sync_log_from(entity: TableEntity) -> SyncLogEntry:
    fields = entity.get("Fields")
    return SyncLogEntry(
        user_id=decode_key(entity[_PK]),
        at=_required_time(entity, "At"),
        kind=SyncLogKind(entity["Kind"]),
        reason=entity["Reason"],
        crm_id=entity.get("CrmId"),
        graph_id=entity.get("GraphId"),
        fields=tuple(json.loads(fields)) if fields else None,
        resolution=entity.get("Resolution"),
        message=entity.get("Message"),
    )


# --- the cross-user index: meetings by iCalUId, and who holds a link to an activity ------------------------
#
# PK "m|{sha256(iCalUId)}", RK "claim": which user's link owns the CRM activity of a meeting (one meeting seen
#   in several connected calendars is one activity). Created before the activity is: the create is the claim.
# PK "a|{crm id}", RK user: the users whose links hold the activity (owner reassignment finds the old owner).
# Rows live outside the users' partitions, so they are written beside the links, not in their transactions:
# readers treat them as hints and check the link they point at.

_CLAIM_ROW = "claim"


@dataclass(frozen=True)
class MeetingClaim:
    owner: str  # the CRM user whose link owns the activity
    crm_id: str | None  # None until the owner's create returned
    claimed_at: datetime


def _meeting_key(ical_uid: str) -> str:
    return "m|" + hashlib.sha256(ical_uid.encode("utf-8")).hexdigest()


class ItemIndexStore:
    def __init__(self, table: _Table) -> None:
        self._table = table

    def meeting(self, ical_uid: str) -> Versioned[MeetingClaim] | None:
        entity = self._table.get(_meeting_key(ical_uid), _CLAIM_ROW)
        return None if entity is None else _decoded(self._table.name, _claim_from, entity)

    def claim_meeting(self, ical_uid: str, user_id: str, now: datetime) -> Versioned[MeetingClaim]:
        """Claim the meeting for ``user_id``; the existing claim when someone (maybe us) was first."""
        claim = MeetingClaim(user_id, None, now)
        entity = _claim_entity(ical_uid, claim)
        for _attempt in range(_MAX_ATTEMPTS):
            try:
                return Versioned(claim, self._table.create(entity))
            except ConflictError:
                existing = self.meeting(ical_uid)
                if existing is not None:
                    return existing
        raise ConflictError("item index: a meeting claim kept changing")

    def take_over_meeting(
        self, ical_uid: str, stale: Versioned[MeetingClaim], user_id: str, now: datetime
    ) -> Versioned[MeetingClaim] | None:
        """Take a claim whose owner never finished (its run died); None when it changed meanwhile."""
        claim = MeetingClaim(user_id, None, now)
        try:
            return Versioned(claim, self._table.replace(_claim_entity(ical_uid, claim), stale.etag))
        except ConflictError:
            return None

    def settle_meeting(
        self,
        ical_uid: str,
        user_id: str,
        crm_id: str,
        now: datetime,
        claimed: Versioned[MeetingClaim] | None = None,
    ) -> None:
        """Record that ``user_id``'s link holds the meeting's activity ``crm_id``. ``claimed``: the claim this
        run made (one write); otherwise the meeting is claimed with the activity in one go when unclaimed."""
        settled = MeetingClaim(user_id, crm_id, now)
        if claimed is None:
            try:
                self._table.create(_claim_entity(ical_uid, settled))
                return
            except ConflictError:
                claimed = self.meeting(ical_uid)
        if claimed is None or claimed.value.owner != user_id or claimed.value.crm_id == crm_id:
            return
        settled = MeetingClaim(user_id, crm_id, claimed.value.claimed_at)
        with contextlib.suppress(ConflictError):
            self._table.replace(_claim_entity(ical_uid, settled), claimed.etag)

    def holders(self, crm_id: str) -> list[str]:
        rows = self._table.query(_IN_PARTITION, {"pk": _key("a|", crm_id)}, select=(_RK,))
        return [decode_key(entity[_RK]) for entity in rows]

    def add_holder(self, crm_id: str, user_id: str) -> None:
        self._table.upsert({_PK: _key("a|", crm_id), _RK: _key("", user_id)})

    def remove_holder(self, crm_id: str, user_id: str) -> None:
        with contextlib.suppress(NotFoundError):
            self._table.delete(_key("a|", crm_id), _key("", user_id))


def _claim_entity(ical_uid: str, claim: MeetingClaim) -> Entity:
    return _without_none(
        {
            _PK: _meeting_key(ical_uid),
            _RK: _CLAIM_ROW,
            "Owner": claim.owner,
            "CrmId": claim.crm_id,
            "ClaimedAt": _utc(claim.claimed_at),
        }
    )


def _claim_from(entity: TableEntity) -> Versioned[MeetingClaim]:
    claim = MeetingClaim(
        owner=entity["Owner"], crm_id=entity.get("CrmId"), claimed_at=_required_time(entity, "ClaimedAt")
    )
    return Versioned(claim, _etag_of(entity.metadata))


# --- leases: PK = user, RK = "lease" ------------------------------------------------------------------------

_LEASE_ROW = "lease"


class LeaseStore:
    """One sync run per user at a time, across every instance: whoever holds the live lease row runs.

    Every change is conditional (create, or replace/delete with the ETag read), so when two callers race for
    the same row storage lets exactly one through. Times come from the caller's clock (``now``).
    """

    def __init__(self, table: _Table) -> None:
        self._table = table

    def get(self, user_id: str) -> Versioned[Lease] | None:
        entity = self._table.get(_key("", user_id), _LEASE_ROW)
        return None if entity is None else _decoded(self._table.name, _lease_from, entity)

    def acquire(self, user_id: str, holder: str, now: datetime, duration: timedelta) -> Versioned[Lease]:
        """Take the user's lease until ``now + duration``; another holder's live lease → ``LeaseHeldError``.

        An expired lease is taken over. Losing any race (creation or takeover) is also ``LeaseHeldError``.
        """
        lease = Lease(user_id=user_id, holder=holder, expires_at=now + duration)
        entity = _lease_entity(lease)
        try:
            return Versioned(lease, self._table.create(entity))  # the common case: nobody holds it
        except ConflictError:
            pass
        current = self.get(user_id)
        if current is None:
            try:
                return Versioned(lease, self._table.create(entity))
            except ConflictError as error:
                raise LeaseHeldError(f"leases: user {user_id} was just leased by another run") from error
        if current.value.is_live(now) and current.value.holder != holder:
            raise LeaseHeldError(
                f"leases: user {user_id} is leased until {current.value.expires_at.isoformat()}"
            )
        try:
            etag = self._table.replace(entity, current.etag)
        except ConflictError as error:
            raise LeaseHeldError(f"leases: user {user_id} was just taken over by another run") from error
        if current.value.holder != holder:
            log.info("leases: %s took over the expired lease of user %s", holder, user_id)
        return Versioned(lease, etag)

    def renew(self, lease: Versioned[Lease], now: datetime, duration: timedelta) -> Versioned[Lease]:
        """Extend a lease we hold to ``now + duration``; taken over or released → ``LeaseHeldError``."""
        renewed = Lease(user_id=lease.value.user_id, holder=lease.value.holder, expires_at=now + duration)
        try:
            return Versioned(renewed, self._table.replace(_lease_entity(renewed), lease.etag))
        except ConflictError as error:
            raise LeaseHeldError(f"leases: user {lease.value.user_id} is no longer leased by us") from error

    def release(self, lease: Versioned[Lease]) -> None:
        """Give the lease up. Already gone, or taken over after it expired: nothing of ours to release."""
        try:
            self._table.delete(_key("", lease.value.user_id), _LEASE_ROW, lease.etag)
        except ConflictError:
            log.info("leases: lease of user %s had passed to another run before release", lease.value.user_id)


def _lease_entity(lease: Lease) -> Entity:
    return {
        _PK: _key("", lease.user_id),
        _RK: _LEASE_ROW,
        "Holder": lease.holder,
        "ExpiresAt": _utc(lease.expires_at),
    }


def _lease_from(entity: TableEntity) -> Versioned[Lease]:
    lease = Lease(
        user_id=decode_key(entity[_PK]),
        holder=entity["Holder"],
        expires_at=_required_time(entity, "ExpiresAt"),
    )
    return Versioned(lease, _etag_of(entity.metadata))


# --- nonces: PK = nonce, RK = "nonce"; insert-if-absent with an expiry -------------------------------------

_NONCE_ROW = "nonce"


class NonceStore:
    """Nonces of signed inbound requests, shared by every instance: each is accepted once while remembered.

    ``remember`` is one insert when the nonce is new (the common case). A row whose expiry has passed is taken
    over (guarded by its ETag), so correctness needs no cleanup; ``purge_expired`` keeps the table small.
    """

    def __init__(self, table: _Table) -> None:
        self._table = table

    def remember(self, nonce: str, now: datetime, keep_for: timedelta) -> bool:
        """True when ``nonce`` was unused and is now remembered until ``now + keep_for``; False: a replay."""
        entity: Entity = {_PK: _key("", nonce), _RK: _NONCE_ROW, "ExpiresAt": _utc(now + keep_for)}
        for _attempt in range(_MAX_ATTEMPTS):
            try:
                self._table.create(entity)
                return True
            except ConflictError:
                pass
            current = self._table.get(entity[_PK], _NONCE_ROW)
            if current is None:
                continue  # purged meanwhile: insert again
            if _decoded(self._table.name, lambda row: _required_time(row, "ExpiresAt"), current) > now:
                return False
            try:
                self._table.replace(entity, _etag_of(current.metadata))
                return True
            except ConflictError:
                return False  # another request took the expired nonce over at this very moment
        raise ConflictError("nonces: a nonce row kept changing")

    def purge_expired(self, now: datetime) -> int:
        """Delete nonces past their expiry (a table scan: for a timer). Returns how many went."""
        expired = [
            (entity[_PK], entity[_RK], _etag_of(entity.metadata))
            for entity in self._table.query("ExpiresAt lt @now", {"now": _utc(now)}, select=(_PK, _RK))
        ]
        for partition_key, row_key, etag in expired:
            with contextlib.suppress(ConflictError):
                self._table.delete(partition_key, row_key, etag)
        return len(expired)


# --- admin consents: PK = tenant id, RK = "adminconsent" ----------------------------------------------------

_ADMIN_CONSENT_ROW = "adminconsent"


class AdminConsentStore:
    """Tenant-wide admin consents recorded by the admin-consent callback (the latest one per tenant)."""

    def __init__(self, table: _Table) -> None:
        self._table = table

    def get(self, tenant_id: str) -> Versioned[AdminConsent] | None:
        entity = self._table.get(_key("", tenant_id.lower()), _ADMIN_CONSENT_ROW)
        return None if entity is None else _decoded(self._table.name, _admin_consent_from, entity)

    def record(self, consent: AdminConsent) -> Versioned[AdminConsent]:
        """Keep ``consent`` as the tenant's latest (an upsert: the newest grant is what counts)."""
        entity: Entity = {
            _PK: _key("", consent.tenant_id.lower()),
            _RK: _ADMIN_CONSENT_ROW,
            "GrantedAt": _utc(consent.granted_at),
            "Scopes": " ".join(consent.scopes),
        }
        return Versioned(consent, self._table.upsert(entity))


def _admin_consent_from(entity: TableEntity) -> Versioned[AdminConsent]:
    consent = AdminConsent(
        tenant_id=decode_key(entity[_PK]),
        granted_at=_required_time(entity, "GrantedAt"),
        scopes=tuple(str(entity.get("Scopes", "")).split()),
    )
    return Versioned(consent, _etag_of(entity.metadata))
