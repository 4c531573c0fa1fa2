"""What a sync run is planned from: the changes of both sides and the rules (pure).

The reconciler gathers these (outbox, delta, links, people) and hands them to ``planning.plan_sync`` as one
``SyncRequest``; the helpers below turn stored and fetched data into them. What each input must hold is
said in ``planning``'s docstring.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sync_core.config import ConflictPolicy, DescriptionPolicy, SyncDirection, SyncPolicy
from sync_core.domain.crm_mapping import crm_record_from_json
from sync_core.domain.graph_payloads import GraphEvent
from sync_core.domain.model import Activity, CrmVersion, PeopleDirectory
from sync_core.domain.series_from_graph import GraphSeries
from sync_core.domain.state import Connection, Link, OutboxEntry, OutboxOperation

# --- inputs -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphUpsert:
    """An Outlook event; for a series, ``event`` is the master and ``series`` what the master and its
    ``/instances`` hold together (``series_from_graph``): the reconciler gathers it once per series,
    whichever occurrence the delta named."""

    event: GraphEvent
    series: GraphSeries | None = None


@dataclass(frozen=True)
class GraphDeletion:
    graph_id: str  # confirmed gone (see the module docstring)


GraphChange = GraphUpsert | GraphDeletion


@dataclass(frozen=True)
class CrmUpsert:
    crm_id: str
    version: CrmVersion
    activity: Activity


@dataclass(frozen=True)
class CrmDeletion:
    crm_id: str
    version: CrmVersion


CrmChange = CrmUpsert | CrmDeletion


@dataclass(frozen=True)
class SharedMeeting:
    """A CRM activity already synced through another connected user's calendar."""

    crm_id: str
    owner_crm_user_id: str


@dataclass(frozen=True)
class SyncRules:
    """The tenant's sync policy with the user's overrides applied."""

    direction: SyncDirection
    conflict_policy: ConflictPolicy
    description_policy: DescriptionPolicy
    window_past_days: int
    window_future_days: int
    initial_backfill: bool
    invite_crm_contacts: bool
    mass_delete_max_share: float
    mass_delete_min_items: int

    @classmethod
    def for_user(cls, policy: SyncPolicy, connection: Connection | None = None) -> SyncRules:
        return cls(
            direction=(connection.direction_override if connection else None) or policy.direction,
            conflict_policy=(connection.conflict_policy_override if connection else None)
            or policy.conflict_policy,
            description_policy=policy.description_policy,
            window_past_days=policy.window_past_days,
            window_future_days=policy.window_future_days,
            initial_backfill=policy.initial_backfill,
            invite_crm_contacts=policy.invite_crm_contacts,
            mass_delete_max_share=policy.mass_delete_max_share,
            mass_delete_min_items=policy.mass_delete_min_items,
        )


@dataclass(frozen=True)
class SyncRequest:
    user_id: str
    now: datetime
    rules: SyncRules
    connected_at: datetime | None
    graph_changes: Sequence[GraphChange] = ()
    crm_changes: Sequence[CrmChange] = ()
    links: Sequence[Link] = ()
    linked_count: int = 0
    people: PeopleDirectory = field(default_factory=PeopleDirectory)
    shared_meetings: Mapping[str, SharedMeeting] = field(default_factory=dict)  # by iCalUId
    other_users_links: Sequence[Link] = ()
    force_deletions: bool = False  # the user (or an admin) confirmed a mass deletion
    default_time_zone: str = "UTC"  # the mailbox's zone, for all-day events the CRM gives without one
    # For linked series whose pattern, times or occurrences Outlook changed: the CRM's series as it is now, by
    # CRM id, so its exceptions survive a retime (Outlook drops them) and those outside the window are kept.
    crm_series: Mapping[str, Activity] = field(default_factory=dict)


# --- helpers for the gather step ----------------------------------------------------------------------------


def crm_change_from_outbox(entry: OutboxEntry) -> CrmChange:
    """The planner's view of an outbox entry (the payload was validated when the CRM pushed it)."""
    if entry.operation is OutboxOperation.DELETE or entry.payload_json is None:
        return CrmDeletion(entry.crm_id, entry.crm_version)
    record = crm_record_from_json(json.loads(entry.payload_json))
    return CrmUpsert(entry.crm_id, entry.crm_version, record.activity)


def emails_to_look_up(graph_changes: Iterable[GraphChange]) -> tuple[str, ...]:
    """Every attendee email of the Outlook changes, once, for the CRM's ``GET /people`` (50 per call)."""
    emails: dict[str, None] = {}
    for change in graph_changes:
        if isinstance(change, GraphUpsert):
            for attendee in change.event.raw.get("attendees") or []:
                address = attendee.get("emailAddress") if isinstance(attendee, Mapping) else None
                email = address.get("address") if isinstance(address, Mapping) else None
                if isinstance(email, str) and "@" in email:
                    emails.setdefault(email.strip().lower())
    return tuple(emails)


def is_stale_push(change: CrmChange, link: Link | None) -> bool:
    """A pushed activity older than the version its link was synced with: a late retry of a push already
    superseded (the contract: "a retry of an older push is harmless"). Deletions are never stale."""
    if not isinstance(change, CrmUpsert) or link is None or link.crm_modified_at is None:
        return False
    modified = change.activity.modified_at
    return modified is not None and modified < link.crm_modified_at
