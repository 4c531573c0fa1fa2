"""The CRM's activity push, decided (pure: no I/O): what a ``PUT``/``DELETE`` of
``/api/users/{crmUserId}/activities/{crmId}`` asks the outbox to keep, and what the CRM is answered.

Terminology:
    push        the CRM telling the service that one activity changed (``PUT``, the full Activity) or was
                deleted (``DELETE …?version=``); docs/crm-contract.md §5
    outbox      the user's durable list of pushed changes waiting for their next sync run, one row per
                activity (``OutboxEntry``); the newest change of an activity wins (``OutboxEntry.supersedes``)
    superseded  the push was ignored because the outbox already holds a later change of the activity (a later
                ``modifiedAt``, or its deletion)

The checks are the contract's: the body is an Activity (``crm_record_from_json``, every field error at once),
its ``crmId`` and ``ownerCrmUserId`` are the path's, ``version`` and ``modifiedAt`` are present; a deletion
names the ``version`` the CRM last held. A user can receive pushes unless their connection is
``disconnected`` or there is none: pushes for ``pending``, ``reconnect_required`` and ``error`` users wait in
the outbox until the user syncs again.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sync_core.domain.crm_mapping import crm_record_from_json
from sync_core.domain.state import Connection, ConnectionState, Link, OutboxEntry, OutboxOperation
from sync_core.errors import InvalidRequestError

# Ids (crmUserId, crmId): 1-128 characters from A-Z a-z 0-9 . _ : @ - (contract §1).
_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_ID_RULE = "must be 1-128 characters of A-Z a-z 0-9 . _ : @ -"
# As long as the Activity's own ``version`` may be (crm_mapping's model).
_MAX_VERSION_LENGTH = 64


class PushStatus(enum.Enum):
    QUEUED = "queued"  # the outbox holds this change
    SUPERSEDED = "superseded"  # the outbox holds a later change of the activity; this one is ignored


@dataclass(frozen=True)
class PushReceipt:
    """The 202 answer: which activity, the version the CRM pushed, and whether it is the one kept."""

    crm_id: str
    version: str
    status: PushStatus

    def as_json(self) -> dict[str, str]:
        return {"crmId": self.crm_id, "version": self.version, "status": self.status.value}


def upsert_entry(user_id: str, crm_id: str, body: Mapping[str, Any], received_at: datetime) -> OutboxEntry:
    """The outbox entry a ``PUT`` asks for; ``InvalidRequestError`` naming every bad field otherwise.

    The payload kept is the validated body re-serialised as compact JSON: the same document the CRM sent
    (same names and values, in the same order), without its whitespace.
    """
    errors = _path_errors(user_id, crm_id)
    try:
        record = crm_record_from_json(body)
    except InvalidRequestError as invalid:
        errors = {**invalid.field_errors, **errors}
        record = None
    for field, expected, what in (
        ("crmId", crm_id, "the crmId in the path"),
        ("ownerCrmUserId", user_id, "the crmUserId in the path (push under the owner)"),
    ):
        value = body.get(field)
        if field not in errors and isinstance(value, str) and value != expected:
            errors[field] = f"must equal {what}"
    if errors or record is None:
        raise InvalidRequestError("the activity is invalid", errors)
    return OutboxEntry(
        user_id=user_id,
        crm_id=crm_id,
        operation=OutboxOperation.UPSERT,
        payload_json=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        crm_version=record.version,
        received_at=received_at,
        crm_modified_at=record.activity.modified_at,
    )


def delete_entry(user_id: str, crm_id: str, version: str | None, received_at: datetime) -> OutboxEntry:
    """The outbox entry a ``DELETE …?version=`` asks for; ``InvalidRequestError`` naming every bad part."""
    errors = _path_errors(user_id, crm_id)
    if not version:
        errors["version"] = "is required (the last version the CRM held)"
    elif len(version) > _MAX_VERSION_LENGTH:
        errors["version"] = f"must be at most {_MAX_VERSION_LENGTH} characters"
    if errors or version is None:
        raise InvalidRequestError("the deletion is invalid", errors)
    return OutboxEntry(
        user_id=user_id,
        crm_id=crm_id,
        operation=OutboxOperation.DELETE,
        payload_json=None,
        crm_version=version,
        received_at=received_at,
    )


def accepts_pushes(connection: Connection | None) -> bool:
    """True unless the user never connected or disconnected: other states queue the change for later."""
    return connection is not None and accepts_pushes_in(connection.state)


def accepts_pushes_in(state: ConnectionState) -> bool:
    """``accepts_pushes`` for a connection in ``state``."""
    return state is not ConnectionState.DISCONNECTED


def push_status(sent: OutboxEntry, kept: OutboxEntry) -> PushStatus:
    """``queued`` when the outbox keeps the change the CRM sent, ``superseded`` when it kept another one."""
    if sent.operation is OutboxOperation.DELETE:
        # Nothing replaces a waiting deletion, so what is kept is this deletion or an earlier one of the same
        # activity: either way the activity will be deleted.
        return PushStatus.QUEUED
    if kept == sent:
        return PushStatus.QUEUED
    if kept.operation is OutboxOperation.UPSERT and kept.crm_version == sent.crm_version:
        # A retried push of the change already waiting (versions change on every write): it is queued.
        return PushStatus.QUEUED
    return PushStatus.SUPERSEDED


def _path_errors(user_id: str, crm_id: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not _ID.fullmatch(user_id):
        errors["crmUserId"] = _ID_RULE
    if not _ID.fullmatch(crm_id):
        errors["crmId"] = _ID_RULE
    return errors


def may_be_older_than_synced(entry: OutboxEntry) -> bool:
    """Whether ``older_than_synced`` could say yes for some link: when not (a deletion, or no CRM
    ``modifiedAt``), the push needs no look at its link (a Table read spared)."""
    return entry.operation is OutboxOperation.UPSERT and entry.crm_modified_at is not None


def older_than_synced(entry: OutboxEntry, link: Link | None) -> bool:
    """A pushed change older than the version already synced (its link's CRM ``modifiedAt``): a late retry,
    answered ``superseded`` and never applied. Deletions are never older."""
    if entry.operation is not OutboxOperation.UPSERT or link is None:
        return False
    if entry.crm_modified_at is None or link.crm_modified_at is None:
        return False
    return entry.crm_modified_at < link.crm_modified_at
