"""One user's sync run, decided: (CRM changes, Outlook changes, links) → a tuple of actions (pure).

Terminology
-----------
outbox
    The CRM changes pushed to the service and not yet synced, one per activity (newest wins): here as
    ``CrmUpsert`` / ``CrmDeletion`` (``crm_change_from_outbox``).
delta
    The Outlook changes since the saved deltaLink: here as ``GraphUpsert`` (a full event) / ``GraphDeletion``.
link
    ``state.Link``: one CRM activity and the Outlook event it is synced with, plus the *base*.
base
    What both sides held after the last sync, per field (``hashing.Base``); the three-way merge compares
    each side against it (``merge.merge_item``).
echo
    A change we made ourselves coming back (in the next delta, or pushed back by the CRM). It hashes equal to
    the base we saved after the write, so it plans no write: only a ``SaveLink`` when its changeKey or
    version is new.
item
    One calendar item in one plan: the actions about it share ``item``.

What the gather step must hand over (``SyncRequest``):

- ``GraphDeletion`` only for a *confirmed* deletion. Event delta reports ``@removed`` also for events that
  merely left the calendarView window (graph-facts.md), and an item outside the window is never deleted:
  confirm a removal of a linked event with a GET (404 → ``GraphDeletion``; 200 → ``GraphUpsert`` with the
  event). Removals of unlinked events need no confirmation: they are ignored.
- Whole events (delta items usually are; an item without start or end is skipped as incomplete).
- A series as one ``GraphUpsert`` of its master with ``series`` (master + ``/instances``, read over the
  sync window and judged over ``series.judged_window``), never its occurrences one by one: an occurrence
  or exception change handed in alone is left for its series.
- ``crm_series``: for a linked series whose pattern, times or occurrences Outlook changed, the CRM's
  series now.
- ``links``: the user's links for every CRM id and Graph id in the changes; ``linked_count``: how many
  links the user has in all (the mass-deletion guard's measure).
- ``people``: the CRM's ``GET /people`` answer for ``emails_to_look_up(graph_changes)``.
- ``shared_meetings``: for iCalUIds of the Outlook changes, the CRM activity another connected user's link
  already holds (one meeting in two connected calendars is one activity).
- ``other_users_links``: links other users hold for the CRM ids pushed (owner reassignment, or a deletion
  of an activity reassigned before the new owner's run).

Decisions where the design is silent are written where they are made, as ``case`` comments.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sync_core.domain.actions import (
    Action,
    CreateInCrm,
    CreateInGraph,
    DeleteInCrm,
    DeleteInGraph,
    DropLink,
    GraphWriteOptions,
    RecordConflict,
    SaveLink,
    Skip,
    SkipReason,
    UpdateCrm,
    UpdateGraph,
    crm_id_of_transaction,
    transaction_id,
)
from sync_core.domain.changes import (
    CrmChange,
    CrmDeletion,
    CrmUpsert,
    GraphChange,
    GraphDeletion,
    GraphUpsert,
    SharedMeeting,
    SyncRequest,
    SyncRules,
    crm_change_from_outbox,
    emails_to_look_up,
)
from sync_core.domain.graph_payloads import EventType, GraphEvent
from sync_core.domain.hashing import Base, field_hash, value_hash
from sync_core.domain.mapping import (
    activity_for_crm,
    activity_from_graph,
    attendees_for_outlook,
    graph_fields_present,
    with_people,
)
from sync_core.domain.merge import ItemMerge, MergeRules, changed_fields, merge_item
from sync_core.domain.model import ALL_FIELDS, SERIES_FIELDS, Activity, AttendeeResponse, Field, Side
from sync_core.domain.recurrence import Window
from sync_core.domain.series import judged_window, overlaps_window, rekeyed, within
from sync_core.domain.state import Link
from sync_core.errors import InvalidRequestError, MassDeletionError

# The inputs live in ``changes``; they are importable from here too, so the reconciler needs one module.
__all__ = [
    "CrmChange",
    "CrmDeletion",
    "CrmUpsert",
    "GraphChange",
    "GraphDeletion",
    "GraphUpsert",
    "SharedMeeting",
    "SyncRequest",
    "SyncRules",
    "crm_change_from_outbox",
    "emails_to_look_up",
    "plan_sync",
]

# --- planning -----------------------------------------------------------------------------------------------


def plan_sync(request: SyncRequest) -> tuple[Action, ...]:
    """Decide one user's sync run (design §5). Raises ``MassDeletionError`` when the deletions planned
    exceed ``mass_delete_max_share`` of the user's links (and the user has at least
    ``mass_delete_min_items``), unless ``force_deletions``: nothing of such a run may be applied.

    Every change handed in is handled by the plan (acted on, or deliberately left alone), so the caller
    may clear the outbox entries and save the deltaLink once the actions are applied.
    """
    actions = _Planner(request).plan()
    _guard_mass_deletion(request, actions)
    return actions


def _guard_mass_deletion(request: SyncRequest, actions: tuple[Action, ...]) -> None:
    deletions = sum(
        1
        for action in actions
        if isinstance(action, DeleteInCrm) or (isinstance(action, DeleteInGraph) and not action.reassigned)
    )
    rules = request.rules
    linked = max(request.linked_count, len(request.links))
    if (
        not request.force_deletions
        and linked >= rules.mass_delete_min_items
        and deletions > rules.mass_delete_max_share * linked
    ):
        raise MassDeletionError(deletions, linked, rules.mass_delete_max_share)


@dataclass
class _Item:
    """Everything one plan knows about one calendar item."""

    key: str
    link: Link | None = None
    crm: CrmChange | None = None
    graph: GraphChange | None = None
    adopted: bool = False  # the link was made in this plan (our own event, or a shared meeting)


class _Planner:
    def __init__(self, request: SyncRequest) -> None:
        self.request = request
        self.rules = request.rules
        self.user_id = request.user_id
        self.merge_rules = MergeRules(
            conflict_policy=self.rules.conflict_policy,
            description_policy=self.rules.description_policy,
            direction=self.rules.direction,
            invite_crm_contacts=self.rules.invite_crm_contacts,
            now=request.now,
        )
        self.options = GraphWriteOptions(
            now=request.now,
            description_policy=self.rules.description_policy,
            invite_crm_contacts=self.rules.invite_crm_contacts,
            default_time_zone=request.default_time_zone,
        )
        self.links_by_crm = {link.crm_id: link for link in request.links if link.user_id == self.user_id}
        self.links_by_graph = {link.graph_id: link for link in self.links_by_crm.values()}

    def plan(self) -> tuple[Action, ...]:
        items: dict[str, _Item] = {}
        actions: list[Action] = []
        for crm_change in _latest_crm_changes(self.request.crm_changes):
            link = self.links_by_crm.get(crm_change.crm_id)
            key = f"crm:{crm_change.crm_id}"
            items[key] = _Item(key, link=link, crm=crm_change)
        for graph_change in _latest_graph_changes(self.request.graph_changes):
            item = self._graph_item(graph_change, items, actions)
            if item is not None:
                items[item.key] = item
        for key in sorted(items):
            actions.extend(self._plan_item(items[key]))
        return tuple(actions)

    # -- joining the two sides -------------------------------------------------------------------------------

    def _graph_item(
        self, change: GraphChange, items: dict[str, _Item], actions: list[Action]
    ) -> _Item | None:
        graph_id = change.event.id if isinstance(change, GraphUpsert) else change.graph_id
        link = self.links_by_graph.get(graph_id)
        if isinstance(change, GraphUpsert) and change.event.type in _INSTANCE_TYPES:
            return None  # case: an occurrence alone is never planned: its series is (handed in as the master)
        if (
            isinstance(change, GraphUpsert)
            and change.event.type is EventType.SERIES_MASTER
            and change.series is None
        ):
            # case: a series master without its instances: not half-synced (the reconciler reads them).
            actions.append(
                Skip(f"m365:{graph_id}", SkipReason.INCOMPLETE_EVENT, link.crm_id if link else None, graph_id)
            )
            if link is not None:
                items.pop(f"crm:{link.crm_id}", None)
            return None
        if link is None and isinstance(change, GraphUpsert):
            adopted = self._adopted_link(change)
            if adopted is None:
                return _Item(f"m365:{graph_id}", graph=change)
            item = items.get(f"crm:{adopted.crm_id}") or _Item(f"crm:{adopted.crm_id}")
            if self._recreated_from_link(change.event, adopted.crm_id, item):
                # case: our re-creation of the linked event after it was deleted in Outlook (the CRM's edit
                # won), by a run that died before saving the new link: the link still names the deleted
                # event. No duplicate: the deletion and the CRM change plan the same create again (same
                # transactionId, so Graph answers with this event) and the link moves to it.
                return None
            if adopted.crm_id in self.links_by_crm or item.graph is not None:
                # case: the activity is already synced with another event of this user (or claimed by one
                # earlier in this delta): never a second link, never a second activity.
                actions.append(Skip(f"m365:{graph_id}", SkipReason.DUPLICATE, adopted.crm_id, graph_id))
                return None
            return replace(item, link=adopted, graph=change, adopted=True)
        if link is None:
            return None  # case: a removal of an event we never synced: nothing to do
        item = items.get(f"crm:{link.crm_id}") or _Item(f"crm:{link.crm_id}", link=link)
        return replace(item, graph=change)

    def _recreated_from_link(self, event: GraphEvent, crm_id: str, item: _Item) -> bool:
        """Whether ``event`` is the create this user's link of ``crm_id`` plans when its event is deleted
        (its ``transactionId`` names the linked event as the predecessor)."""
        link = self.links_by_crm.get(crm_id)
        if link is None or isinstance(item.graph, GraphUpsert):
            return False
        return event.raw.get("transactionId") == transaction_id(self.user_id, crm_id, link.graph_id)

    def _adopted_link(self, change: GraphUpsert) -> Link | None:
        """A link for an unlinked Outlook event that is already known by another name, or None."""
        event = change.event
        ours = crm_id_of_transaction(event.raw.get("transactionId"))
        shared = self.request.shared_meetings.get(event.ical_uid) if event.ical_uid else None
        crm_id = ours or (shared.crm_id if shared is not None else None)
        if crm_id is None:
            return None
        seen = self._outlook_view(change)
        if seen is None:
            return None
        # case: our own create whose link was not saved (a crash between the two), or the same meeting in
        # another connected user's calendar (iCalUId): link to the activity, assuming it holds what Outlook
        # holds; a CRM change to it in this run is merged against that (for a series: with the occurrences
        # Outlook holds, so the CRM's overrides a crash left unwritten are written now).
        owner = shared.owner_crm_user_id if ours is None and shared is not None else self.user_id
        return Link(
            user_id=self.user_id,
            crm_id=crm_id,
            graph_id=event.id,
            ical_uid=event.ical_uid,
            change_key=None,
            base_hashes=Base.of_synced(seen, seen).stored_hashes(),
            base_attendees=Base.of_synced(seen, seen).stored_attendees(),
            base_occurrences=Base.of_synced(seen, seen).stored_occurrences(),
            crm_owner_id=owner if owner != self.user_id else None,
        )

    # -- one item --------------------------------------------------------------------------------------------

    def _plan_item(self, item: _Item) -> list[Action]:
        if item.link is None:
            if isinstance(item.crm, CrmUpsert):
                return self._new_from_crm(item, item.crm)
            if isinstance(item.graph, GraphUpsert):
                return self._new_from_outlook(item, item.graph.event)
            if isinstance(item.crm, CrmDeletion):
                return self._deleted_in_transit(item, item.crm)
            return []  # case: a deletion of something never synced
        if item.link.crm_owner_id is not None:
            return self._shared_copy(item, item.link)
        return self._linked(item, item.link)

    def _linked(self, item: _Item, link: Link) -> list[Action]:
        crm, graph = item.crm, item.graph
        if isinstance(crm, CrmUpsert) and crm.activity.owner_crm_user_id not in (None, self.user_id):
            # case: reassigned to another user: it leaves this calendar (the new owner's run creates it).
            return [
                DeleteInGraph(item.key, self.user_id, link.graph_id, link.crm_id, reassigned=True),
                DropLink(item.key, link),
            ]
        m365_gone = isinstance(graph, GraphDeletion) or (
            isinstance(graph, GraphUpsert) and graph.event.is_cancelled
        )
        if isinstance(crm, CrmDeletion) or m365_gone:
            return self._deleted(item, link, crm_gone=isinstance(crm, CrmDeletion), m365_gone=m365_gone)
        base = Base.from_link(link)
        judged = graph.series.window if isinstance(graph, GraphUpsert) and graph.series else None
        crm_activity = self._judged(crm.activity, judged) if isinstance(crm, CrmUpsert) else None
        seen = self._outlook_view(graph)
        if isinstance(graph, GraphUpsert) and seen is None:
            return [Skip(item.key, SkipReason.INCOMPLETE_EVENT, link.crm_id, link.graph_id)]
        known = self._known(graph)
        series = _is_series(base, crm_activity, seen)
        read = seen
        if series and seen is not None:
            seen = self._outlook_retime_kept(base, link, seen, crm_activity)
        merged = merge_item(
            base, crm=crm_activity, m365=seen, m365_known=known, rules=self.merge_rules, series=series
        )
        if series:
            merged = _series_targets(merged, crm_activity, seen)
        if seen is not read and seen is not None:
            merged = _exceptions_rewritten(merged, seen)
        if series:
            full = crm.activity if isinstance(crm, CrmUpsert) else self.request.crm_series.get(link.crm_id)
            merged = _outside_kept(merged, full, judged or self._window)
        version = crm.version if isinstance(crm, CrmUpsert) else link.crm_version
        actions: list[Action] = []
        if merged.to_m365 and merged.m365_target is not None:
            actions.append(
                UpdateGraph(
                    item.key,
                    self.user_id,
                    link.graph_id,
                    link.crm_id,
                    merged.to_m365,
                    merged.m365_target,
                    merged.already_invited,
                    self.options,
                )
            )
        if merged.to_crm and merged.crm_target is not None:
            actions.append(
                UpdateCrm(item.key, link.crm_id, link.graph_id, merged.to_crm, merged.crm_target, version)
            )
        if merged.conflicts and merged.winner is not None:
            actions.append(
                RecordConflict(
                    item.key,
                    link.crm_id,
                    link.graph_id,
                    merged.conflicts,
                    self.rules.conflict_policy,
                    merged.winner,
                )
            )
        change_key = graph.event.change_key if isinstance(graph, GraphUpsert) else link.change_key
        save = SaveLink(
            item.key,
            self.user_id,
            link.crm_id,
            link.graph_id,
            link.ical_uid or (graph.event.ical_uid if isinstance(graph, GraphUpsert) else None),
            change_key,
            version,
            merged.base,
        )
        if actions or item.adopted or save.to_link() != link:
            # case: a changeKey or version that moved with equal content is no change, but is remembered.
            actions.append(save)
        return actions

    def _deleted(self, item: _Item, link: Link, *, crm_gone: bool, m365_gone: bool) -> list[Action]:
        drop = DropLink(item.key, link)
        if crm_gone and m365_gone:
            return [drop]
        base = Base.from_link(link)
        if crm_gone:
            if not self.rules_take(Side.CRM):
                return [drop]  # case: m365_to_crm ignores CRM deletions; the event stays, unlinked
            seen = self._outlook_view(item.graph)
            if seen is not None and self.rules_take(Side.M365) and self._edited(base, seen, Side.M365, item):
                # case: deleted in the CRM, edited in Outlook: the edit wins; the activity comes back.
                return self._recreate_in_crm(item, link, seen)
            return [DeleteInGraph(item.key, self.user_id, link.graph_id, link.crm_id), drop]
        if not self.rules_take(Side.M365):
            # case: crm_to_m365 ignores Outlook deletions; unlinked, the next CRM change creates it again.
            return [drop]
        crm = item.crm
        edited = isinstance(crm, CrmUpsert) and changed_fields(
            base, crm.activity, Side.CRM, frozenset(ALL_FIELDS)
        )
        if isinstance(crm, CrmUpsert) and edited and self.rules_take(Side.CRM):
            # case: deleted in Outlook, edited in the CRM: the edit wins; the event comes back.
            return self._create_in_outlook(item, crm, predecessor=link)
        version = crm.version if isinstance(crm, CrmUpsert) else link.crm_version
        return [DeleteInCrm(item.key, link.crm_id, link.graph_id, version), drop]

    def _deleted_in_transit(self, item: _Item, change: CrmDeletion) -> list[Action]:
        """A deletion of an activity this user has no link for: nothing, unless another user's calendar
        still holds it."""
        actions: list[Action] = []
        for previous in self.request.other_users_links:
            if (
                previous.crm_id == change.crm_id
                and previous.user_id != self.user_id
                and previous.crm_owner_id is None
            ):
                # case: reassigned to this user and deleted before this user's run (the CRM pushed the
                # deletion to the new owner): the event leaves the previous owner's calendar, which still
                # holds it, linked. A deletion like any other (the mass-deletion guard counts it); under
                # m365_to_crm the event stays, unlinked.
                if self.rules_take(Side.CRM):
                    actions.append(
                        DeleteInGraph(item.key, previous.user_id, previous.graph_id, previous.crm_id)
                    )
                actions.append(DropLink(item.key, previous))
        return actions

    def _edited(self, base: Base, seen: Activity, side: Side, item: _Item) -> bool:
        assert isinstance(item.graph, GraphUpsert)
        return bool(changed_fields(base, seen, side, graph_fields_present(item.graph.event)))

    def _shared_copy(self, item: _Item, link: Link) -> list[Action]:
        """This user's copy of a meeting another user's link keeps in sync: observed, never written."""
        if isinstance(item.crm, CrmDeletion) or isinstance(item.graph, GraphDeletion):
            return [DropLink(item.key, link)]
        seen = self._outlook_view(item.graph)
        if seen is None or not isinstance(item.graph, GraphUpsert):
            return []
        if item.graph.event.is_cancelled:
            return [DropLink(item.key, link)]
        save = SaveLink(
            item.key,
            self.user_id,
            link.crm_id,
            link.graph_id,
            link.ical_uid or item.graph.event.ical_uid,
            item.graph.event.change_key,
            link.crm_version,
            Base.of_synced(seen, seen),
            crm_owner_id=link.crm_owner_id,
        )
        return [save] if item.adopted or save.to_link() != link else []

    # -- creations -------------------------------------------------------------------------------------------

    def _new_from_crm(self, item: _Item, change: CrmUpsert) -> list[Action]:
        activity = change.activity
        if activity.owner_crm_user_id not in (None, self.user_id):
            return [Skip(item.key, SkipReason.OWNED_BY_OTHER_USER, change.crm_id)]
        if not self.rules_take(Side.CRM):
            return []  # case: m365_to_crm: a CRM activity never becomes an Outlook event
        if activity.activity_type is not None and not activity.activity_type.is_synced:
            return [Skip(item.key, SkipReason.TYPE_NOT_SYNCED, change.crm_id)]
        actions: list[Action] = []
        for previous in self.request.other_users_links:
            if (
                previous.crm_id == change.crm_id
                and previous.user_id != self.user_id
                and previous.crm_owner_id is None
            ):
                # case: owner reassignment: the event leaves the previous owner's calendar …
                actions.append(
                    DeleteInGraph(
                        item.key, previous.user_id, previous.graph_id, previous.crm_id, reassigned=True
                    )
                )
                actions.append(DropLink(item.key, previous))
        skip = self._creation_blocker(
            activity, activity.created_at, activity.modified_at, recurring=activity.is_recurring
        )
        if skip is not None:
            return [*actions, Skip(item.key, skip, change.crm_id)]
        # … and is created in the new owner's, like any new activity.
        return [*actions, *self._create_in_outlook(item, change, predecessor=None)]

    def _create_in_outlook(self, item: _Item, change: CrmUpsert, *, predecessor: Link | None) -> list[Action]:
        activity = change.activity
        expected = self._as_outlook_will_hold(activity)
        return [
            CreateInGraph(
                item.key,
                self.user_id,
                change.crm_id,
                activity,
                transaction_id(self.user_id, change.crm_id, predecessor.graph_id if predecessor else None),
                self.options,
            ),
            SaveLink(
                item.key,
                self.user_id,
                change.crm_id,
                None,
                None,
                None,
                change.version,
                Base.of_synced(self._judged(activity), self._judged(expected)),
            ),
        ]

    def _as_outlook_will_hold(self, activity: Activity) -> Activity:
        """The event a create from ``activity`` leaves in Outlook, as the base: the invitable attendees, not
        yet answered. The M365-owned fields keep the CRM's values: their base is what the CRM was told, so
        the join URL Teams makes (or the organizer the event really has) reaches the CRM with the next delta,
        and a stale one the CRM still holds is cleared."""
        invited = attendees_for_outlook(
            activity.attendees,
            already_invited=(),
            invite_crm_contacts=self.rules.invite_crm_contacts,
            ended=activity.has_ended(self.request.now),
        )
        return replace(
            activity, attendees=tuple(replace(a, response=AttendeeResponse.NONE) for a in invited or ())
        )

    def _new_from_outlook(self, item: _Item, event: GraphEvent) -> list[Action]:
        if event.is_cancelled:
            return [Skip(item.key, SkipReason.CANCELLED, None, event.id)]
        seen = self._outlook_view(item.graph)
        if seen is None:
            return [Skip(item.key, SkipReason.INCOMPLETE_EVENT, None, event.id)]
        skip = self._creation_blocker(seen, seen.created_at, seen.modified_at, recurring=seen.is_recurring)
        if skip is not None:
            return [Skip(item.key, skip, None, event.id)]
        if not self.rules_take(Side.M365):
            return []  # case: crm_to_m365: an Outlook event never becomes a CRM activity
        activity = activity_for_crm(seen, people=self.request.people, owner_crm_user_id=self.user_id)
        return [
            CreateInCrm(item.key, event.id, activity),
            SaveLink(
                item.key,
                self.user_id,
                None,
                event.id,
                event.ical_uid,
                event.change_key,
                None,
                Base.of_synced(activity, seen),
            ),
        ]

    def _recreate_in_crm(self, item: _Item, link: Link, seen: Activity) -> list[Action]:
        assert isinstance(item.graph, GraphUpsert)
        event = item.graph.event
        activity = activity_for_crm(seen, people=self.request.people, owner_crm_user_id=self.user_id)
        return [
            CreateInCrm(item.key, event.id, activity),
            DropLink(item.key, link),
            SaveLink(
                item.key,
                self.user_id,
                None,
                event.id,
                event.ical_uid or link.ical_uid,
                event.change_key,
                None,
                Base.of_synced(activity, seen),
            ),
        ]

    def _creation_blocker(
        self, activity: Activity, created: datetime | None, modified: datetime | None, *, recurring: bool
    ) -> SkipReason | None:
        # case: the window gates creation only. A linked item keeps syncing wherever an edit moves it (the
        # move is the edit), and an item that leaves the window is never deleted for it.
        now, rules = self.request.now, self.rules
        start = activity.starts_at
        if recurring:
            # case: a series is in the window when one of its occurrences is (a weekly meeting that began
            # years ago still runs).
            if not overlaps_window(activity, self._window):
                return SkipReason.OUTSIDE_WINDOW
        elif (
            not now - timedelta(days=rules.window_past_days)
            <= start
            <= now + timedelta(days=rules.window_future_days)
        ):
            return SkipReason.OUTSIDE_WINDOW
        if self._pre_existing(created, modified):
            return SkipReason.PRE_EXISTING
        return None

    def _pre_existing(self, created: datetime | None, modified: datetime | None) -> bool:
        """case: without initial backfill, an item that existed before the user connected syncs only once it
        is edited: created before ``connected_at`` and not modified after it. With neither time known the
        item counts as new (a shortened payload must not hide an edit)."""
        connected_at = self.request.connected_at
        if self.rules.initial_backfill or connected_at is None:
            return False
        if created is not None and created >= connected_at:
            return False
        if modified is not None:
            return modified <= connected_at
        return created is not None

    # -- small things ----------------------------------------------------------------------------------------

    def rules_take(self, side: Side) -> bool:
        return self.merge_rules.takes(side)

    def _outlook_view(self, change: GraphChange | None) -> Activity | None:
        if not isinstance(change, GraphUpsert):
            return None
        if change.series is not None:
            return with_people(change.series.activity, self.request.people)
        try:
            return with_people(activity_from_graph(change.event), self.request.people)
        except InvalidRequestError:
            return None

    def _known(self, change: GraphChange | None) -> frozenset[Field]:
        """The fields an Outlook change tells (a gathered series tells its series fields too)."""
        if not isinstance(change, GraphUpsert):
            return frozenset()
        present = graph_fields_present(change.event)
        return present | frozenset(SERIES_FIELDS) if change.series is not None else present

    @property
    def _window(self) -> Window:
        return judged_window(self.request.now, self.rules.window_past_days, self.rules.window_future_days)

    def _judged(self, activity: Activity, window: Window | None = None) -> Activity:
        """A CRM series as far as Outlook's instances are read: its overrides and cancellations in the window
        (``window``: where Outlook's read of this series judged them; the others are never compared, and
        never written from an Outlook read)."""
        return within(activity, window or self._window) if activity.is_recurring else activity

    def _outlook_retime_kept(
        self, base: Base, link: Link, seen: Activity, crm_activity: Activity | None
    ) -> Activity:
        """case: Outlook retimed the whole series (pattern or times) and dropped its exceptions, as Outlook
        does: the CRM's overrides and cancellations are carried over to the new series' occurrences on the
        same dates (``series.rekeyed``), so the exception survives on both sides (the merge writes them back
        to Outlook as the CRM's)."""
        retimed = any(
            base.hash_of(Side.M365, field_) not in (None, field_hash(field_, seen))
            for field_ in (Field.RECURRENCE, Field.START_END)
        )
        previous = crm_activity or self.request.crm_series.get(link.crm_id)
        if not retimed or previous is None or not previous.is_recurring or not seen.is_recurring:
            return seen
        if seen.occurrence_overrides or seen.cancelled_occurrences:
            return seen  # Outlook kept (or was given) exceptions of its own: they are what it holds
        return self._judged(rekeyed(seen, self._judged(previous)))


_INSTANCE_TYPES = frozenset({EventType.OCCURRENCE, EventType.EXCEPTION})


def _is_series(base: Base, crm: Activity | None, m365: Activity | None) -> bool:
    """A series on either side now, or when last synced (a series that became a single item still merges
    its series fields, so the change reaches the other side)."""
    if (crm is not None and crm.is_recurring) or (m365 is not None and m365.is_recurring):
        return True
    single = value_hash(None)
    return any(base.hash_of(side, Field.RECURRENCE) not in (None, single) for side in (Side.CRM, Side.M365))


def _series_targets(merged: ItemMerge, crm: Activity | None, m365: Activity | None) -> ItemMerge:
    """Each target with the series fields of the side whose value each field takes: one Activity holds the
    writes to one side, and a field of a series may come from either side (the CRM's new subject, Outlook's
    moved occurrence)."""

    def composed(target: Activity | None, fields: frozenset[Field], source: Activity | None,
                 other: Activity | None) -> Activity | None:  # fmt: skip
        if target is None:
            return None
        overrides_from = source if Field.OCCURRENCE_OVERRIDES in fields else other
        cancelled_from = source if Field.CANCELLED_OCCURRENCES in fields else other
        return replace(
            target,
            occurrence_overrides=(overrides_from or target).occurrence_overrides,
            cancelled_occurrences=(cancelled_from or target).cancelled_occurrences,
        )

    if merged.occurrence_targets is not None:
        # case: merged occurrence by occurrence: each side gets its merged lists whole
        crm_merged, m365_merged = merged.occurrence_targets
        return replace(
            merged,
            m365_target=composed(merged.m365_target, frozenset(SERIES_FIELDS[1:]), m365_merged, None),
            crm_target=composed(merged.crm_target, frozenset(SERIES_FIELDS[1:]), crm_merged, None),
        )
    return replace(
        merged,
        m365_target=composed(merged.m365_target, merged.to_m365, crm, m365),
        crm_target=composed(merged.crm_target, merged.to_crm, m365, crm),
    )


def _exceptions_rewritten(merged: ItemMerge, kept: Activity) -> ItemMerge:
    """The merge, plus writing ``kept``'s overrides and cancellations back to Outlook (which dropped them
    when the series was retimed there)."""
    target = merged.m365_target or kept
    return replace(
        merged,
        to_m365=merged.to_m365 | {Field.OCCURRENCE_OVERRIDES, Field.CANCELLED_OCCURRENCES},
        m365_target=replace(
            target,
            occurrence_overrides=kept.occurrence_overrides,
            cancelled_occurrences=kept.cancelled_occurrences,
        ),
    )


def _outside_kept(merged: ItemMerge, crm_series: Activity | None, window: Window) -> ItemMerge:
    """case: Outlook's overrides and cancellations reach the CRM for the window they were read in; the CRM's
    entries outside it (an exception months ago) are kept, not erased by a PATCH that replaces the whole
    list. After a retime they move to the new series' occurrence on their date (``series.rekeyed``)."""
    target = merged.crm_target
    occurrence_fields = {Field.OCCURRENCE_OVERRIDES, Field.CANCELLED_OCCURRENCES}
    if target is None or crm_series is None or not crm_series.is_recurring or not target.is_recurring:
        return merged
    if not merged.to_crm & occurrence_fields:
        return merged
    inside = within(crm_series, window)
    outside = replace(
        crm_series,
        occurrence_overrides=tuple(
            o for o in crm_series.occurrence_overrides if o not in inside.occurrence_overrides
        ),
        cancelled_occurrences=tuple(
            c for c in crm_series.cancelled_occurrences if c not in inside.cancelled_occurrences
        ),
    )
    if not outside.occurrence_overrides and not outside.cancelled_occurrences:
        return merged
    carried = rekeyed(target, outside)
    return replace(
        merged,
        to_crm=merged.to_crm | occurrence_fields,
        crm_target=replace(
            target,
            occurrence_overrides=(*target.occurrence_overrides, *carried.occurrence_overrides),
            cancelled_occurrences=(*target.cancelled_occurrences, *carried.cancelled_occurrences),
        ),
    )


def _latest_crm_changes(changes: Iterable[CrmChange]) -> list[CrmChange]:
    latest: dict[str, CrmChange] = {}
    for change in changes:
        latest[change.crm_id] = change  # the outbox keeps one per activity; a repeat here: the later wins
    return list(latest.values())


def _latest_graph_changes(changes: Iterable[GraphChange]) -> list[GraphChange]:
    """Delta may repeat an item and does not promise an order: a confirmed deletion beats an upsert, and of
    two upserts the later modification wins (the one seen last when a time is missing)."""
    latest: dict[str, GraphChange] = {}
    for change in changes:
        graph_id = change.event.id if isinstance(change, GraphUpsert) else change.graph_id
        held = latest.get(graph_id)
        replaces = isinstance(held, GraphUpsert) and _not_older(change, held)
        if held is None or isinstance(change, GraphDeletion) or replaces:
            latest[graph_id] = change
    return list(latest.values())


def _not_older(one: GraphChange, other: GraphUpsert) -> bool:
    if (
        not isinstance(one, GraphUpsert)
        or one.event.last_modified is None
        or other.event.last_modified is None
    ):
        return True
    return one.event.last_modified >= other.event.last_modified
