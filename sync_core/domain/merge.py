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
- A series' overrides and cancellations merge occurrence by occurrence (keyed by original start, using
  the states kept in ``Base.occurrences``): an occurrence changed on one side takes that side's override or
  cancellation; changed on both sides differently, the conflict policy decides for that occurrence only
  (a conflict on its field), except that a cancellation loses to any other change of the occurrence (a
  modification beats a deletion). A link without per-occurrence states (written before they were kept),
  one side not reported, or a series retimed on a side (its occurrences' keys moved) merges the two fields
  whole, as any field.
- ``DescriptionPolicy.ON_CREATE``: the description is not merged after creation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime

from sync_core.config import ConflictPolicy, DescriptionPolicy, SyncDirection
from sync_core.domain.hashing import (
    HASHED_FIELDS,
    AttendeeBase,
    Base,
    OccurrenceBase,
    field_hash,
    occurrence_hashes,
    sorted_attendees,
)
from sync_core.domain.mapping import may_invite
from sync_core.domain.model import (
    SERIES_FIELDS,
    Activity,
    Attendee,
    AttendeeKind,
    AttendeeResponse,
    Field,
    OccurrenceOverride,
    Side,
    When,
)
from sync_core.domain.series_values import occurrence_entries


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
    # A series merged occurrence by occurrence: the series as the CRM and as Outlook should hold it, for
    # their overrides and cancellations (None: the two fields merged whole, each from one side).
    occurrence_targets: tuple[Activity, Activity] | None = None


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
    by_occurrence = _merge_occurrences(base, crm, m365, m365_known, rules, winner) if series else None
    for field_ in (*HASHED_FIELDS, *SERIES_FIELDS) if series else HASHED_FIELDS:
        if by_occurrence is not None and field_ in _OCCURRENCE_FIELDS:
            continue
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
    if by_occurrence is not None:
        conflicts.extend(by_occurrence.conflicts)
        hashes.update(by_occurrence.hashes)
        to_m365.update(by_occurrence.to_m365)
        to_crm.update(by_occurrence.to_crm)
        occurrences: OccurrenceBase | None = by_occurrence.base
    else:
        occurrences = _occurrences_after(base, crm, m365, to_crm, to_m365) if series else None
    return ItemMerge(
        to_m365=frozenset(to_m365),
        to_crm=frozenset(to_crm),
        # Values written to Outlook come from the CRM's side and the other way round; a write of attendees
        # alone (an Outlook response reaching the CRM) may have only the other side's Activity to hold it.
        m365_target=_target(crm or m365, attendees.base.m365) if to_m365 else None,
        crm_target=_target(m365 or crm, attendees.base.crm) if to_crm else None,
        conflicts=tuple(conflicts),
        winner=winner if conflicts else None,
        base=Base(hashes=hashes, attendees=attendees.base, occurrences=occurrences),
        already_invited=frozenset(a.email for a in attendees.m365_before),
        occurrence_targets=(
            (by_occurrence.crm, by_occurrence.m365)
            if by_occurrence is not None and (by_occurrence.to_crm or by_occurrence.to_m365)
            else None
        ),
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


# --- a series' occurrences ---------------------------------------------------------------------------------

_OCCURRENCE_FIELDS = (Field.OCCURRENCE_OVERRIDES, Field.CANCELLED_OCCURRENCES)
_RETIMING_FIELDS = (Field.RECURRENCE, Field.START_END)

OccurrenceEntry = OccurrenceOverride | datetime | date  # an override, or a cancelled occurrence's start


@dataclass(frozen=True)
class _OccurrenceMerge:
    crm: Activity  # the CRM's series with the merged overrides and cancellations
    m365: Activity  # Outlook's, the same
    to_crm: frozenset[Field]  # which of the two fields the CRM must be written (its list changes)
    to_m365: frozenset[Field]
    conflicts: tuple[Field, ...]
    hashes: Mapping[tuple[Side, Field], str]  # both sides' hashes of the two fields after the merge
    base: OccurrenceBase


def _merge_occurrences(
    base: Base,
    crm: Activity | None,
    m365: Activity | None,
    m365_known: frozenset[Field],
    rules: MergeRules,
    winner: Side | None,
) -> _OccurrenceMerge | None:
    """The overrides and cancellations merged occurrence by occurrence; None where they merge whole (see the
    module docstring)."""
    if base.occurrences is None or crm is None or m365 is None:
        return None
    if not crm.is_recurring or not m365.is_recurring or not set(_OCCURRENCE_FIELDS) <= m365_known:
        return None
    for side, activity in ((Side.CRM, crm), (Side.M365, m365)):
        if any(base.hash_of(side, f) not in (None, field_hash(f, activity)) for f in _RETIMING_FIELDS):
            return None  # case: retimed on a side: its occurrences' keys moved, compare the fields whole
    crm_now, m365_now = occurrence_entries(crm), occurrence_entries(m365)
    crm_states, m365_states = occurrence_hashes(crm), occurrence_hashes(m365)
    crm_edits = _occurrence_edits(base.occurrences.crm, crm_states) if rules.takes(Side.CRM) else set()
    m365_edits = _occurrence_edits(base.occurrences.m365, m365_states) if rules.takes(Side.M365) else set()
    crm_result: dict[str, OccurrenceEntry] = {}
    m365_result: dict[str, OccurrenceEntry] = {}
    conflicts: list[Field] = []
    for key in sorted(crm_now.keys() | m365_now.keys() | crm_edits | m365_edits):
        source: Side | None = None
        if key in crm_edits and key in m365_edits:
            if crm_states.get(key) == m365_states.get(key):
                source = None  # changed on both sides to the same: each keeps its own
            elif _is_cancelled(crm_now.get(key)) != _is_cancelled(m365_now.get(key)):
                # case: cancelled on one side, moved or restored on the other: the modification wins
                source = Side.M365 if _is_cancelled(crm_now.get(key)) else Side.CRM
            else:  # moved (or otherwise changed) differently on both sides: the policy decides
                if Field.OCCURRENCE_OVERRIDES not in conflicts:
                    conflicts.append(Field.OCCURRENCE_OVERRIDES)
                source = Side.M365 if winner is Side.M365 else Side.CRM
        elif key in crm_edits:
            source = Side.CRM
        elif key in m365_edits:
            source = Side.M365
        if source is None:
            crm_entry, m365_entry = crm_now.get(key), m365_now.get(key)
        else:
            crm_entry = m365_entry = (crm_now if source is Side.CRM else m365_now).get(key)
        if crm_entry is not None:
            crm_result[key] = crm_entry
        if m365_entry is not None:
            m365_result[key] = m365_entry
    crm_final, m365_final = _with_entries(crm, crm_result), _with_entries(m365, m365_result)
    hashes = {
        (side, field_): field_hash(field_, activity)
        for side, activity in ((Side.CRM, crm_final), (Side.M365, m365_final))
        for field_ in _OCCURRENCE_FIELDS
    }
    return _OccurrenceMerge(
        crm=crm_final,
        m365=m365_final,
        to_crm=frozenset(f for f in _OCCURRENCE_FIELDS if hashes[(Side.CRM, f)] != field_hash(f, crm)),
        to_m365=frozenset(f for f in _OCCURRENCE_FIELDS if hashes[(Side.M365, f)] != field_hash(f, m365)),
        conflicts=tuple(conflicts),
        hashes=hashes,
        base=OccurrenceBase(occurrence_hashes(crm_final), occurrence_hashes(m365_final)),
    )


def _occurrence_edits(before: Mapping[str, str], now: Mapping[str, str]) -> set[str]:
    """The occurrences whose state changed since the base (touched, changed, or restored)."""
    return {key for key in before.keys() | now.keys() if before.get(key) != now.get(key)}


def _is_cancelled(entry: OccurrenceEntry | None) -> bool:
    return entry is not None and not isinstance(entry, OccurrenceOverride)


def _with_entries(series: Activity, entries: Mapping[str, OccurrenceEntry]) -> Activity:
    return replace(
        series,
        occurrence_overrides=tuple(e for e in entries.values() if isinstance(e, OccurrenceOverride)),
        cancelled_occurrences=tuple(e for e in entries.values() if not isinstance(e, OccurrenceOverride)),
    )


def _occurrences_after(
    base: Base, crm: Activity | None, m365: Activity | None, to_crm: set[Field], to_m365: set[Field]
) -> OccurrenceBase | None:
    """The per-occurrence base after a merge of the two fields whole: each side's occurrences as it holds
    them after the writes (a written field takes the other side's list, as ``planning`` composes targets);
    a side neither reported nor written keeps its base (unknown on a link without one)."""
    crm_after = _side_after(crm, m365, to_crm, base.occurrences.crm if base.occurrences else None)
    m365_after = _side_after(m365, crm, to_m365, base.occurrences.m365 if base.occurrences else None)
    if crm_after is None or m365_after is None:
        return None
    return OccurrenceBase(crm_after, m365_after)


def _side_after(
    mine: Activity | None, theirs: Activity | None, written: set[Field], before: Mapping[str, str] | None
) -> Mapping[str, str] | None:
    template = mine or theirs
    if template is None or (mine is None and not written & set(_OCCURRENCE_FIELDS)):
        return before
    overrides_from = (theirs if Field.OCCURRENCE_OVERRIDES in written else mine) or template
    cancelled_from = (theirs if Field.CANCELLED_OCCURRENCES in written else mine) or template
    return occurrence_hashes(
        replace(
            template,
            occurrence_overrides=overrides_from.occurrence_overrides,
            cancelled_occurrences=cancelled_from.cancelled_occurrences,
        )
    )


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
