"""The one exception tree of the service.

Outside failures (``azure.core.exceptions``, MSAL error dicts, ``requests`` errors) are translated into these
at the adapter that met them and never leak into services. Only the trigger decides what an error becomes
(HTTP status, log level, a platform retry).

    SyncError
    ├── SettingsError              a setting is missing or malformed (names every bad setting)
    ├── InvalidRequestError        an inbound payload failed validation (carries field errors)
    ├── StoreError                 Table Storage / queue failures
    │   ├── ConflictError          ETag mismatch, or the entity already exists
    │   ├── NotFoundError          the entity does not exist
    │   └── StoreUnavailableError  storage did not answer (transient)
    ├── LeaseHeldError             another run holds the user's lease
    ├── UserNotConnectedError      the CRM pushed a change for a user who is not connected (or never was)
    ├── TokenCacheUnreadableError  a stored token cache does not decrypt (key missing, wrong, or altered)
    ├── RemoteError                a remote service (Graph, Entra ID, the CRM) failed
    │   ├── ThrottledError         429/503 with Retry-After (``retry_after`` seconds, already capped)
    │   ├── TransientRemoteError   5xx or a network failure: safe to retry later
    │   ├── AuthenticationError    the app or the user could not be authenticated
    │   │   └── TokenRevokedError  invalid_grant: the user must reconnect
    │   ├── ItemGoneError          404 on an item: treat as deleted
    │   ├── DeltaExpiredError      410 / syncStateNotFound: restart with a full resync
    │   └── RemoteRejectedError    any other 4xx: the request itself is wrong
    └── MassDeletionError          a run would delete more than the configured share of a user's items
"""

from __future__ import annotations

from collections.abc import Mapping


class SyncError(Exception):
    """Base of every error the service raises on purpose."""


class SettingsError(SyncError):
    """One or more settings are missing or malformed; ``problems`` maps setting name to what is wrong."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(self.problems.items()))
        super().__init__(f"invalid settings: {listed}")


class InvalidRequestError(SyncError):
    """An inbound payload is invalid; ``field_errors`` maps a field path to its message."""

    def __init__(self, message: str, field_errors: Mapping[str, str] | None = None) -> None:
        self.field_errors = dict(field_errors or {})
        super().__init__(message)


class StoreError(SyncError):
    """A Table Storage or queue operation failed."""


class ConflictError(StoreError):
    """The entity changed since it was read (ETag mismatch) or already exists."""


class NotFoundError(StoreError):
    """The entity does not exist."""


class StoreUnavailableError(StoreError):
    """Storage did not answer; the operation may be retried."""


class LeaseHeldError(SyncError):
    """Another holder has the lease and it has not expired."""


class UserNotConnectedError(SyncError):
    """The CRM pushed a change for a user whose connection is ``disconnected``, or who never connected."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(f"user {user_id} is not connected")


class TokenCacheUnreadableError(SyncError):
    """The stored token cache cannot be decrypted: unknown key id, wrong key, or altered bytes."""


class RemoteError(SyncError):
    """A remote service failed. ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class ThrottledError(RemoteError):
    """The remote asked us to wait ``retry_after`` seconds (already capped by the caller's policy)."""

    def __init__(self, message: str, *, retry_after: float, status: int | None = 429) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, code="throttled")


class TransientRemoteError(RemoteError):
    """A 5xx or network failure: the same request may succeed later."""


class AuthenticationError(RemoteError):
    """The app or the user could not be authenticated."""


class TokenRevokedError(AuthenticationError):
    """The user's refresh token is no longer valid (invalid_grant): the user must reconnect."""


class ItemGoneError(RemoteError):
    """The remote item no longer exists (404)."""


class DeltaExpiredError(RemoteError):
    """The delta token expired (410 Gone / syncStateNotFound): a full resync is needed."""


class RemoteRejectedError(RemoteError):
    """The remote refused the request as wrong (a 4xx other than the ones above)."""


class MassDeletionError(SyncError):
    """A sync run would delete more than the allowed share of a user's linked items."""

    def __init__(self, would_delete: int, linked: int, max_share: float) -> None:
        self.would_delete = would_delete
        self.linked = linked
        self.max_share = max_share
        super().__init__(
            f"refusing to delete {would_delete} of {linked} linked items (limit {max_share:.0%} per run)"
        )
