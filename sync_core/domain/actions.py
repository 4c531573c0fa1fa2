"""What a sync run does, as frozen values: ``planning.plan_sync`` returns them, the reconciler performs them.

Every action names its *item* (``item``: a key shared by all actions about one calendar item in one plan).
Within an item the writes come first, then the conflict record, then link changes; a ``SaveLink`` is
completed with what that item's writes returned (``SaveLink.to_link``): the new Graph id and changeKey of
a created or updated event, the new CRM id and version of a created or updated activity. That is what makes
our own writes never echo back: the next delta of the item hashes equal to the saved base, and its changeKey
equals the saved one.

Writes carry what makes a retry safe: ``CreateInGraph.transaction_id`` (Graph returns the first event for a
repeated transactionId), and an ``idempotency_key`` on every CRM write, derived from the request itself, so
a retried write with the same body replays and a different body never reuses a key (the CRM answers 409).
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sync_core.config import ConflictPolicy, DescriptionPolicy
from sync_core.domain.crm_mapping import crm_activity_json
from sync_core.domain.hashing import Base
from sync_core.domain.mapping import graph_event_body
from sync_core.domain.model import Activity, CrmVersion, Field, Side
from sync_core.domain.series_to_graph import graph_series_body
from sync_core.domain.state import Link

Json = dict[str, Any]
TRANSACTION_PREFIX = "crmsync."
_INSTANCE_FIELDS = frozenset(
    {Field.OCCURRENCE_OVERRIDES, Field.CANCELLED_OCCURRENCES, Field.START_END, Field.RECURRENCE}
)


def digest(*parts: object) -> str:
    """A short stable digest of the parts (for ids and keys, never for secrets)."""
    text = json.dumps([str(part) for part in parts], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def transaction_id(user_id: str, crm_id: str, predecessor_graph_id: str | None) -> str:
    """The Graph ``transactionId`` of creating CRM activity ``crm_id`` in ``user_id``'s calendar.

    The same create, retried, gets the same id (Graph then returns the first event). Re-creating after the
    event was deleted names the deleted event (``predecessor_graph_id``), so it is a new create. The CRM id
    is readable in it (``crm_id_of_transaction``): an event we created whose link was never saved (a crash
    between the two) is recognised in the next delta instead of being copied back as a new activity.
    """
    return f"{TRANSACTION_PREFIX}{digest(user_id, crm_id, predecessor_graph_id or '')[:16]}.{crm_id}"


def crm_id_of_transaction(value: object) -> str | None:
    if not isinstance(value, str) or not value.startswith(TRANSACTION_PREFIX):
        return None
    parts = value.split(".", 2)
    return parts[2] if len(parts) == 3 and parts[2] else None


@dataclass(frozen=True)
class GraphWriteOptions:
    """What shapes a Graph body beside the Activity: the clock and the tenant's policy."""

    now: datetime
    description_policy: DescriptionPolicy
    invite_crm_contacts: bool
    default_time_zone: str = "UTC"


# --- writes to Outlook --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateInGraph:
    """Create the event for CRM activity ``crm_id`` in ``user_id``'s calendar (``POST …/events``)."""

    item: str
    user_id: str
    crm_id: str
    activity: Activity
    transaction_id: str
    options: GraphWriteOptions

    def body(self) -> Json:
        # A series is one create of its master (no invitation per occurrence); its overrides and
        # cancellations follow as instance operations (``series_to_graph``).
        return _body_of(self.activity)(
            self.activity,
            for_create=True,
            now=self.options.now,
            description_policy=self.options.description_policy,
            invite_crm_contacts=self.options.invite_crm_contacts,
            transaction_id=self.transaction_id,
            default_time_zone=self.options.default_time_zone,
        )


@dataclass(frozen=True)
class UpdateGraph:
    """PATCH ``fields`` of the event from ``activity``; ``already_invited`` is who the event has now."""

    item: str
    user_id: str
    graph_id: str
    crm_id: str
    fields: frozenset[Field]
    activity: Activity
    already_invited: frozenset[str]
    options: GraphWriteOptions

    @property
    def writes_instances(self) -> bool:
        """Whether the series' occurrences must be brought to the activity after the master's PATCH: its
        overrides or cancellations changed, or its times or pattern did (Outlook then drops exceptions)."""
        return self.activity.is_recurring and bool(self.fields & _INSTANCE_FIELDS)

    def body(self) -> Json:
        """The PATCH of the event (for a series, of its master; empty when only occurrences change)."""
        return _body_of(self.activity)(
            self.activity,
            for_create=False,
            fields=self.fields,
            now=self.options.now,
            description_policy=self.options.description_policy,
            invite_crm_contacts=self.options.invite_crm_contacts,
            already_invited=self.already_invited,
            default_time_zone=self.options.default_time_zone,
        )


@dataclass(frozen=True)
class DeleteInGraph:
    """Delete the event from ``user_id``'s calendar; a 404 means done. ``reassigned``: the activity moved to
    another owner's calendar (not a loss; the mass-deletion guard does not count it)."""

    item: str
    user_id: str
    graph_id: str
    crm_id: str | None
    reassigned: bool = False


# --- writes to the CRM --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateInCrm:
    """``POST /activities`` for the Outlook event ``graph_id``."""

    item: str
    graph_id: str
    activity: Activity

    def body(self) -> Json:
        return crm_activity_json(self.activity)

    @property
    def idempotency_key(self) -> str:
        return f"create-{digest(self.graph_id, _canonical(self.body()))}"


@dataclass(frozen=True)
class UpdateCrm:
    """``PATCH /activities/{crm_id}`` with ``fields`` from ``activity``. ``if_match`` is the version the
    plan is based on; None (a link adopted without one) means: read the activity's version first. A 412
    means the CRM changed meanwhile: re-plan with the new version, never force."""

    item: str
    crm_id: str
    graph_id: str
    fields: frozenset[Field]
    activity: Activity
    if_match: CrmVersion | None

    def body(self) -> Json:
        return crm_activity_json(self.activity, fields=sorted(self.fields, key=lambda f: f.value))

    @property
    def idempotency_key(self) -> str:
        return f"update-{digest(self.crm_id, self.if_match, _canonical(self.body()))}"


@dataclass(frozen=True)
class DeleteInCrm:
    """``DELETE /activities/{crm_id}`` with ``If-Match`` (a CRM edit we have not seen yet must win: 412)."""

    item: str
    crm_id: str
    graph_id: str | None
    if_match: CrmVersion | None

    @property
    def idempotency_key(self) -> str:
        return f"delete-{digest(self.crm_id, self.if_match)}"


def _canonical(body: Json) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- links --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphWriteResult:
    """What a Graph create or update returned."""

    graph_id: str
    change_key: str | None
    ical_uid: str | None = None


@dataclass(frozen=True)
class CrmWriteResult:
    """What a CRM create or update returned."""

    crm_id: str
    version: CrmVersion
    modified_at: datetime | None = None  # the CRM's modifiedAt after the write


@dataclass(frozen=True)
class SaveLink:
    """Save the item's link (replacing the stored link of the same CRM id, if any) with the new base.

    Ids and versions a write of this item will return are None here: complete them with ``to_link``.
    """

    item: str
    user_id: str
    crm_id: str | None
    graph_id: str | None
    ical_uid: str | None
    change_key: str | None
    crm_version: CrmVersion | None
    base: Base
    crm_owner_id: str | None = None

    def to_link(self, *, graph: GraphWriteResult | None = None, crm: CrmWriteResult | None = None) -> Link:
        crm_id = crm.crm_id if crm is not None else self.crm_id
        graph_id = graph.graph_id if graph is not None else self.graph_id
        if crm_id is None or graph_id is None:
            raise ValueError(f"link of item {self.item}: the write that returns its ids has not run")
        return Link(
            user_id=self.user_id,
            crm_id=crm_id,
            graph_id=graph_id,
            ical_uid=(graph.ical_uid if graph is not None and graph.ical_uid else None) or self.ical_uid,
            change_key=graph.change_key if graph is not None else self.change_key,
            crm_version=crm.version if crm is not None else self.crm_version,
            base_hashes=self.base.stored_hashes(),
            base_attendees=self.base.stored_attendees(),
            base_occurrences=self.base.stored_occurrences(),
            crm_owner_id=self.crm_owner_id,
        )


@dataclass(frozen=True)
class DropLink:
    """Delete the stored link (the item is gone on a side, or no longer this user's)."""

    item: str
    link: Link


# --- what people see ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordConflict:
    """Fields changed on both sides to different values; ``winner``'s values were kept. Goes to the user's
    sync log and, as a ``conflict`` event, to the CRM."""

    item: str
    crm_id: str
    graph_id: str
    fields: tuple[Field, ...]
    policy: ConflictPolicy
    winner: Side

    @property
    def crm_field_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(key for field_ in self.fields for key in field_.crm_keys))


class SkipReason(enum.Enum):
    """Why an item was left alone; ``logged`` reasons go to the user's sync log (kind ``skipped``)."""

    INCOMPLETE_EVENT = "incomplete_event"  # an Outlook event without start or end, a master without instances
    DUPLICATE = "duplicate"  # another event already holds this CRM activity
    OWNED_BY_OTHER_USER = "owned_by_other_user"  # a CRM push for an activity another user owns
    OUTSIDE_WINDOW = "outside_window"  # starts outside the sync window (not created; never deleted)
    PRE_EXISTING = "pre_existing"  # existed before the user connected and not edited since (no backfill)
    TYPE_NOT_SYNCED = "type_not_synced"  # a CRM call or task
    CANCELLED = "cancelled"  # an Outlook meeting the organizer cancelled, never synced

    @property
    def logged(self) -> bool:
        return self in _LOGGED

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_LOGGED = frozenset(
    {
        SkipReason.INCOMPLETE_EVENT,
        SkipReason.DUPLICATE,
        SkipReason.OWNED_BY_OTHER_USER,
    }
)
_MESSAGES = {
    SkipReason.INCOMPLETE_EVENT: "the Outlook event has no start or end (or its series could not be read)",
    SkipReason.DUPLICATE: "another event is already synced with this CRM activity",
    SkipReason.OWNED_BY_OTHER_USER: "the activity belongs to another user",
    SkipReason.OUTSIDE_WINDOW: "outside the sync window",
    SkipReason.PRE_EXISTING: "existed before connecting and not edited since",
    SkipReason.TYPE_NOT_SYNCED: "calls and tasks are not synced yet",
    SkipReason.CANCELLED: "the meeting was cancelled",
}


@dataclass(frozen=True)
class Skip:
    item: str
    reason: SkipReason
    crm_id: str | None = None
    graph_id: str | None = None  # for a series: the series master's id (one entry per series)


Action = (
    CreateInGraph
    | UpdateGraph
    | DeleteInGraph
    | CreateInCrm
    | UpdateCrm
    | DeleteInCrm
    | SaveLink
    | DropLink
    | RecordConflict
    | Skip
)


class _BodyBuilder(Protocol):
    """What ``graph_event_body`` and ``graph_series_body`` both take."""

    def __call__(
        self,
        activity: Activity,
        /,
        *,
        for_create: bool,
        now: datetime,
        description_policy: DescriptionPolicy,
        invite_crm_contacts: bool,
        fields: Collection[Field] = ...,
        transaction_id: str | None = None,
        already_invited: Collection[str] = (),
        default_time_zone: str = "UTC",
    ) -> Json: ...


def _body_of(activity: Activity) -> _BodyBuilder:
    """The Graph body builder for ``activity``: a series master's, or a single event's."""
    return graph_series_body if activity.is_recurring else graph_event_body
