"""The three-way merge of one linked item, field by field (design §5). Pure; ``planning`` turns the outcome
into actions.

Inputs are the item's base (what both sides held after the last sync) and each side's current Activity when
that side reported a change (None: unchanged since the base, so the base describes it).

- A side changed a field when its hash differs from *that side's* base hash. A field changed on one side
  is copied to the other. Changed on both sides to equal values: nothing to do. To different values: a
  conflict, settled by the conflict policy, and recorded.
- Attendees merge attendee by attendee, using the lists kept in the base: an attendee the CRM added is
  invited in Outlook when ``mapping.may_invite`` allows (else withheld: the CRM keeps it, Outlook never
  sees it); one Outlook added or removed is added to or removed from the CRM's list; responses travel from
  Outlook to the CRM; both sides changing the same attendee differently is a conflict on ``ATTENDEES``.
  Nobody's attendees change in Outlook once the event has ended.
- Direction: with ``crm_to_m365`` Outlook's changes are not taken (its bases follow what it holds, so they
  are not taken later either); with ``m365_to_crm`` the CRM's are not.
- ``DescriptionPolicy.ON_CREATE``: the description is not merged after creation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from sync_core.config import ConflictPolicy, DescriptionPolicy, SyncDirection
from sync_core.domain.hashing import HASHED_FIELDS, AttendeeBase, Base, field_hash, sorted_attendees
from sync_core.domain.mapping import may_invite
from sync_core.domain.model import (
    SERIES_FIELDS,
    Activity,
    Attendee,
    AttendeeKind,
    AttendeeResponse,
    Field,
    Side,
    When,
)


@dataclass(frozen=True)
class MergeRules:
    conflict_policy: ConflictPolicy
    description_policy: DescriptionPolicy
    direction: SyncDirection
    invite_crm_contacts: bool
    now: datetime

    def takes(self, side: Side) -> bool:
        """Whether changes made on ``side`` are copied to the other side."""
        if side is Side.CRM:
            return self.direction is not SyncDirection.M365_TO_CRM
        return self.direction is not SyncDirection.CRM_TO_M365


@dataclass(frozen=True)
class ItemMerge:
    """What to write where, and the base once written."""

    to_m365: frozenset[Field]
    to_crm: frozenset[Field]
    m365_target: (
        Activity | None
    )  # the values to write to Outlook (``to_m365``), attendees as Outlook gets them
    crm_target: (
        Activity | None
    )  # the values to write to the CRM (``to_crm``), attendees as the CRM keeps them
    conflicts: tuple[Field, ...]
    winner: Side | None  # who won the conflicts (one policy decision per item)
    base: Base
    already_invited: frozenset[str] = field(default_factory=frozenset)  # emails Outlook holds before writing


def conflict_winner(policy: ConflictPolicy, crm: Activity, m365: Activity) -> Side:
    """``latest_wins`` compares the sides' modification times; a tie or a missing time goes to the CRM,
    the system of record (the same for every field of the item, so the item never ends up half one way)."""
    if policy is ConflictPolicy.CRM_WINS:
        return Side.CRM
    if policy is ConflictPolicy.M365_WINS:
        return Side.M365
    if crm.modified_at is not None and m365.modified_at is not None and m365.modified_at > crm.modified_at:
        return Side.M365
    if crm.modified_at is None and m365.modified_at is not None:
        return Side.M365
    return Side.CRM


def changed_fields(base: Base, activity: Activity, side: Side, known: frozenset[Field]) -> frozenset[Field]:
    """The fields ``side`` edited since the base (M365-owned ones and attendee responses do not count: they
    are Outlook's bookkeeping, not a person's edit). Used where a modification must beat a deletion."""
    changed = {
        field_
        for field_ in HASHED_FIELDS
        if field_ in known
        and not field_.m365_owned
        and base.hash_of(side, field_) is not None
        and field_hash(field_, activity) != base.hash_of(side, field_)
    }
    if Field.ATTENDEES in known and base.attendees is not None:
        before = base.attendees.crm if side is Side.CRM else base.attendees.m365
        if _pairs(before) != _pairs(activity.attendees):
            changed.add(Field.ATTENDEES)
    return frozenset(changed)


def merge_item(
    base: Base,
    *,
    crm: Activity | None,
    m365: Activity | None,
    m365_known: frozenset[Field],
    rules: MergeRules,
    series: bool = False,
) -> ItemMerge:
    """Merge one linked item. ``m365`` should already carry the CRM's knowledge of its attendees
    (``mapping.with_people``) so that attendees Outlook added reach the CRM with their kind. ``series``:
    the item is a series (on either side, or in the base), so the series fields are merged too; both
    Activities then hold only the overrides and cancellations of the window they were compared in."""
    winner = (
        conflict_winner(rules.conflict_policy, crm, m365) if crm is not None and m365 is not None else None
    )
    hashes = dict(base.hashes)
    to_m365: set[Field] = set()
    to_crm: set[Field] = set()
    conflicts: list[Field] = []
    for field_ in (*HASHED_FIELDS, *SERIES_FIELDS) if series else HASHED_FIELDS:
        source = _scalar_source(field_, base, crm, m365, m365_known, rules, winner, conflicts)
        crm_hash = field_hash(field_, crm) if crm is not None and not field_.m365_owned else None
        m365_hash = field_hash(field_, m365) if m365 is not None and field_ in m365_known else None
        if source is Side.CRM and crm_hash is not None:
            to_m365.add(field_)
            hashes[(Side.CRM, field_)] = hashes[(Side.M365, field_)] = crm_hash
        elif source is Side.M365 and m365_hash is not None:
            to_crm.add(field_)
            hashes[(Side.M365, field_)] = m365_hash
            if not field_.m365_owned:
                hashes[(Side.CRM, field_)] = m365_hash
        else:  # nothing to copy: each side's base follows what that side holds
            if crm_hash is not None:
                hashes[(Side.CRM, field_)] = crm_hash
            if m365_hash is not None:
                hashes[(Side.M365, field_)] = m365_hash

    when = _final_when(crm, m365, to_m365, to_crm)
    ended = when is not None and _has_ended(when, crm or m365, rules.now)
    graph_attendees = m365.attendees if m365 is not None and Field.ATTENDEES in m365_known else None
    attendees = _merge_attendees(
        base.attendees, crm.attendees if crm else None, graph_attendees, rules, winner, ended=ended
    )
    if attendees.conflict:
        conflicts.append(Field.ATTENDEES)
    if attendees.write_m365:
        to_m365.add(Field.ATTENDEES)
    if attendees.write_crm:
        to_crm.add(Field.ATTENDEES)
    return ItemMerge(
        to_m365=frozenset(to_m365),
        to_crm=frozenset(to_crm),
        # Values written to Outlook come from the CRM's side and the other way round; a write of attendees
        # alone (an Outlook response reaching the CRM) may have only the other side's Activity to hold it.
        m365_target=_target(crm or m365, attendees.base.m365) if to_m365 else None,
        crm_target=_target(m365 or crm, attendees.base.crm) if to_crm else None,
        conflicts=tuple(conflicts),
        winner=winner if conflicts else None,
        base=Base(hashes=hashes, attendees=attendees.base),
        already_invited=frozenset(a.email for a in attendees.m365_before),
    )


def _target(template: Activity | None, attendees: tuple[Attendee, ...]) -> Activity:
    assert template is not None  # a write is only planned from a side that reported the item
    return replace(template, attendees=attendees)


def _scalar_source(
    field_: Field,
    base: Base,
    crm: Activity | None,
    m365: Activity | None,
    m365_known: frozenset[Field],
    rules: MergeRules,
    winner: Side | None,
    conflicts: list[Field],
) -> Side | None:
    """Whose value of ``field_`` both sides should hold after this sync (None: leave both as they are)."""
    if field_ is Field.DESCRIPTION and rules.description_policy is DescriptionPolicy.ON_CREATE:
        return None
    crm_changed = (
        crm is not None
        and not field_.m365_owned
        and rules.takes(Side.CRM)
        and _differs(base.hash_of(Side.CRM, field_), field_hash(field_, crm))
    )
    m365_changed = (
        m365 is not None
        and field_ in m365_known
        and rules.takes(Side.M365)
        and _differs(base.hash_of(Side.M365, field_), field_hash(field_, m365))
    )
    if crm_changed and m365_changed:
        assert crm is not None
        assert m365 is not None
        if field_hash(field_, crm) == field_hash(field_, m365):
            return None  # changed on both sides to the same value: nothing to copy
        conflicts.append(field_)
        return winner
    if crm_changed:
        return Side.CRM
    if m365_changed:
        return Side.M365
    return None


def _differs(base_hash: str | None, current: str) -> bool:
    # An unknown base (a link older than the field) is no evidence of a change: the side's value becomes it.
    return base_hash is not None and base_hash != current


def _final_when(
    crm: Activity | None, m365: Activity | None, to_m365: set[Field], to_crm: set[Field]
) -> When | None:
    if Field.START_END in to_m365 and crm is not None:
        return crm.when
    if Field.START_END in to_crm and m365 is not None:
        return m365.when
    known = crm or m365
    return known.when if known is not None else None


def _has_ended(when: When, template: Activity | None, now: datetime) -> bool:
    assert template is not None
    return replace(template, when=when).has_ended(now)


# --- attendees ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _AttendeeMerge:
    base: AttendeeBase  # the lists after this sync: the CRM's, and Outlook's
    m365_before: tuple[Attendee, ...]
    write_crm: bool
    write_m365: bool
    conflict: bool


def _pairs(attendees: tuple[Attendee, ...]) -> set[tuple[str, str]]:
    return {(attendee.email, attendee.type.value) for attendee in attendees}


def _merge_attendees(
    base: AttendeeBase | None,
    crm_now: tuple[Attendee, ...] | None,
    m365_now: tuple[Attendee, ...] | None,
    rules: MergeRules,
    winner: Side | None,
    *,
    ended: bool,
) -> _AttendeeMerge:
    if base is None:
        # An older link without attendee lists: take what the sides hold as the base, write nothing.
        crm_list = crm_now if crm_now is not None else (m365_now or ())
        m365_list = m365_now if m365_now is not None else crm_list
        return _AttendeeMerge(AttendeeBase(crm_list, m365_list), m365_list, False, False, False)
    crm_list = crm_now if crm_now is not None else base.crm
    m365_list = m365_now if m365_now is not None else base.m365
    crm_before = _by_email(base.crm)
    m365_before = _by_email(base.m365)
    crm_current = _by_email(crm_list)
    m365_current = _by_email(m365_list)
    crm_edits = _edits(crm_before, crm_current) if rules.takes(Side.CRM) else {}
    m365_edits = _edits(m365_before, m365_current) if rules.takes(Side.M365) else {}

    crm_result: dict[str, Attendee] = {}
    m365_result: dict[str, Attendee] = {}
    conflict = False
    for email in sorted(crm_before.keys() | m365_before.keys() | crm_current.keys() | m365_current.keys()):
        crm_wants, m365_wants = email in crm_edits, email in m365_edits
        if crm_wants and m365_wants and not _same_edit(crm_edits[email], m365_edits[email]):
            conflict = True
            crm_wants, m365_wants = winner is not Side.M365, winner is Side.M365
        if m365_wants:
            # Outlook added, removed or changed this attendee: the CRM follows.
            theirs = m365_edits[email]
            if theirs is not None:
                crm_result[email] = _crm_view(theirs, crm_current.get(email) or crm_before.get(email))
            if theirs is not None and email in m365_current:
                m365_result[email] = m365_current[email]
            continue
        if crm_wants:
            # The CRM added, removed or changed this attendee: Outlook follows where it may.
            ours = crm_edits[email]
            if ours is not None:
                crm_result[email] = ours
            outlook = m365_current.get(email)
            if ended:
                if outlook is not None:
                    m365_result[email] = outlook
            elif ours is not None and (
                outlook is not None or may_invite(ours, invite_crm_contacts=rules.invite_crm_contacts)
            ):
                m365_result[email] = replace(
                    outlook or ours,
                    type=ours.type,
                    response=outlook.response if outlook is not None else AttendeeResponse.NONE,
                )
            continue
        # Neither side's edit to take: each keeps what it has; Outlook's response reaches the CRM.
        if email in crm_current:
            mine = crm_current[email]
            outlook = m365_current.get(email)
            if outlook is not None and rules.takes(Side.M365):
                mine = replace(mine, response=outlook.response)
            crm_result[email] = mine
        if email in m365_current:
            m365_result[email] = m365_current[email]

    new_crm = sorted_attendees(crm_result.values())
    new_m365 = sorted_attendees(m365_result.values())
    return _AttendeeMerge(
        base=AttendeeBase(new_crm, new_m365),
        m365_before=tuple(m365_current.values()),
        write_crm=_full(new_crm) != _full(sorted_attendees(crm_list)),
        write_m365=_pairs(new_m365) != _pairs(tuple(m365_list)),
        conflict=conflict,
    )


def _by_email(attendees: tuple[Attendee, ...]) -> dict[str, Attendee]:
    return {attendee.email: attendee for attendee in attendees}


def _edits(before: Mapping[str, Attendee], current: Mapping[str, Attendee]) -> dict[str, Attendee | None]:
    """Attendees added, removed (None) or given another type since the base (responses are not edits)."""
    edits: dict[str, Attendee | None] = {}
    for email in before.keys() | current.keys():
        old, new = before.get(email), current.get(email)
        if new is None:
            edits[email] = None
        elif old is None or old.type is not new.type:
            edits[email] = new
    return edits


def _same_edit(one: Attendee | None, other: Attendee | None) -> bool:
    if one is None or other is None:
        return one is None and other is None
    return one.type is other.type


def _crm_view(outlook: Attendee, known: Attendee | None) -> Attendee:
    """An Outlook attendee as the CRM keeps it: the CRM's kind, id and name when it knows them."""
    if known is None:
        return outlook
    return replace(
        outlook,
        name=known.name or outlook.name,
        kind=known.kind if known.kind is not AttendeeKind.EXTERNAL else outlook.kind,
        crm_id=known.crm_id if known.kind is not AttendeeKind.EXTERNAL else outlook.crm_id,
    )


def _full(attendees: tuple[Attendee, ...]) -> list[tuple[object, ...]]:
    return [(a.email, a.name, a.kind, a.type, a.response, a.crm_id) for a in attendees]
