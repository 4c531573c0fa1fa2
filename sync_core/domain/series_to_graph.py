"""Activity → Graph for a series (pure): the master's body, and the instance operations that bring
Outlook's occurrences to the Activity's overrides and cancellations.

A series reaches Outlook in two steps. The master is created (``POST /events``, with ``recurrence``) or
updated (``PATCH /events/{master}``) from ``graph_series_body``; a PATCH that changes the times carries the
recurrence too, since Graph checks ``range.startDate`` against the start. Then, from the master's
``/instances`` in a window, ``plan_instance_operations`` lists what to do per occurrence: ``PatchInstance``
for one whose subject, description, times, location or attendees differ from what the Activity wants
(an override, or the series' values where an Outlook exception is to be undone), ``DeleteInstance`` for
one the Activity cancels. Only what differs is sent: every write to an occurrence of a meeting mails its
attendees. Nobody is added to an occurrence that has ended (``mapping.attendees_for_outlook``).

Graph cannot bring back a deleted occurrence: an override for an occurrence Outlook does not list in the
window is reported in ``InstancePlan.missing`` for the caller to decide (Outlook cancelled it, or the
listing was cut).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sync_core.config import DescriptionPolicy
from sync_core.domain.graph_payloads import GraphEvent, parse_event
from sync_core.domain.hashing import canonical_value
from sync_core.domain.mapping import (
    activity_from_graph,
    attendees_for_outlook,
    graph_event_body,
    graph_fields_present,
    graph_recurrence,
)
from sync_core.domain.model import ALL_FIELDS, Activity, Attendee, Field, OccurrenceOverride
from sync_core.domain.recurrence import OccurrenceKey, Window, expand_series, occurrence_key, series_has_ended
from sync_core.domain.series import is_cancelled, occurrence_activity, occurs_within, override_of
from sync_core.domain.series_from_graph import index_instances
from sync_core.errors import InvalidRequestError

Json = dict[str, Any]
# The fields an occurrence can have of its own (``model.OccurrenceOverride``), in the order they are checked.
_OCCURRENCE_FIELDS = (Field.SUBJECT, Field.DESCRIPTION, Field.START_END, Field.LOCATION)


@dataclass(frozen=True)
class PatchInstance:
    """``PATCH /events/{instance_id}`` with ``body``: the occurrence originally at ``original_start``."""

    instance_id: str
    original_start: OccurrenceKey
    body: Mapping[str, Any] = field(hash=False)

    def body_json(self) -> Json:
        return dict(self.body)


@dataclass(frozen=True)
class DeleteInstance:
    """``DELETE /events/{instance_id}``: cancel the occurrence originally at ``original_start`` (a 404
    means done)."""

    instance_id: str
    original_start: OccurrenceKey


InstanceOperation = PatchInstance | DeleteInstance


@dataclass(frozen=True)
class InstancePlan:
    """The operations in original-start order; ``missing``: overrides for occurrences in the window that
    Outlook does not list; ``unmatched``: ids of listed instances no occurrence accounts for (left alone)."""

    operations: tuple[InstanceOperation, ...]
    missing: tuple[OccurrenceKey, ...] = ()
    unmatched: tuple[str, ...] = ()


def graph_series_body(
    series: Activity,
    *,
    for_create: bool,
    now: datetime,
    description_policy: DescriptionPolicy,
    invite_crm_contacts: bool,
    fields: Collection[Field] = ALL_FIELDS,
    transaction_id: str | None = None,
    already_invited: Collection[str] = (),
    default_time_zone: str = "UTC",
) -> Json:
    """The body to create (``for_create``) or PATCH a series master from ``series``; as
    ``mapping.graph_event_body``, plus: the series counts as ended only after its last occurrence (so a
    running series started long ago still gets its attendees), and a PATCH carries ``recurrence`` when
    ``fields`` names ``RECURRENCE`` or ``START_END``. Overrides and cancellations are not in it: they are
    instance operations. Raises ``ValueError`` for a single item."""
    if series.recurrence is None:
        raise ValueError("graph_series_body needs a series")
    wanted = set(ALL_FIELDS if for_create else fields)
    body = graph_event_body(
        series,
        for_create=for_create,
        now=now,
        description_policy=description_policy,
        invite_crm_contacts=invite_crm_contacts,
        fields=[field_ for field_ in wanted if not field_.series_only],
        transaction_id=transaction_id,
        already_invited=already_invited,
        default_time_zone=default_time_zone,
        ended=series_has_ended(series, now),
    )
    if not for_create and wanted & {Field.RECURRENCE, Field.START_END}:
        body["recurrence"] = graph_recurrence(series.recurrence)
    return body


def plan_instance_operations(
    series: Activity,
    instances: Iterable[GraphEvent | Mapping[str, Any]],
    *,
    window: Window,
    now: datetime,
    description_policy: DescriptionPolicy,
    invite_crm_contacts: bool,
    max_occurrences: int,
    default_time_zone: str = "UTC",
    series_created: bool = False,
) -> InstancePlan:
    """The operations that make the instances Outlook lists in ``window`` match ``series``.

    ``series_created``: the master was just created by us, so an override's description is written even
    under ``DescriptionPolicy.ON_CREATE`` (it is part of the creation)."""
    if series.recurrence is None:
        raise ValueError("plan_instance_operations needs a series")
    listed = [item if isinstance(item, GraphEvent) else parse_event(item) for item in instances]
    expected = expand_series(series, window=window, max_occurrences=max_occurrences).keys
    index = index_instances(series, listed, expected=expected)
    policy = DescriptionPolicy.ALWAYS if series_created else description_policy
    operations: list[InstanceOperation] = []
    for key in sorted(index.by_key, key=_order):
        instance = index.by_key[key]
        if is_cancelled(series, key):
            operations.append(DeleteInstance(instance.id, key))
            continue
        body = _instance_patch(
            series, key, instance, now=now, policy=policy, invite_crm_contacts=invite_crm_contacts,
            default_time_zone=default_time_zone,
        )  # fmt: skip
        if body:
            operations.append(PatchInstance(instance.id, key, MappingProxyType(body)))
    missing = tuple(
        override.original_start
        for override in series.occurrence_overrides
        if not is_cancelled(series, override.original_start)
        and not _listed(series, index.by_key, override.original_start)
        and occurs_within(series, override.original_start, window)
    )
    return InstancePlan(tuple(operations), missing, tuple(instance.id for instance in index.unmatched))


def _instance_patch(
    series: Activity,
    key: OccurrenceKey,
    instance: GraphEvent,
    *,
    now: datetime,
    policy: DescriptionPolicy,
    invite_crm_contacts: bool,
    default_time_zone: str,
) -> Json:
    """The PATCH body taking ``instance`` to what ``series`` wants for the occurrence (empty: nothing)."""
    wanted = occurrence_activity(series, key)
    override = override_of(series, key)
    try:
        current: Activity | None = activity_from_graph(instance)
        present = graph_fields_present(instance)
    except InvalidRequestError:
        current, present = None, frozenset()
    fields: set[Field] = set()
    for field_ in _OCCURRENCE_FIELDS:
        if current is not None and field_ in present:
            if canonical_value(field_, wanted) != canonical_value(field_, current):
                fields.add(field_)
        elif override is not None and _sets(override, field_):
            fields.add(field_)  # not in the payload: send what the override says rather than guess
    invited = (
        [attendee.email for attendee in current.attendees] if current and Field.ATTENDEES in present else []
    )
    attendees = attendees_for_outlook(
        wanted.attendees,
        already_invited=invited,
        invite_crm_contacts=invite_crm_contacts,
        ended=wanted.has_ended(now),
    )
    if attendees is not None:
        if current is not None and Field.ATTENDEES in present:
            if _pairs(attendees) != _pairs(current.attendees):
                fields.add(Field.ATTENDEES)
        elif override is not None and override.attendees is not None:
            fields.add(Field.ATTENDEES)
    if not fields:
        return {}
    return graph_event_body(
        wanted,
        for_create=False,
        fields=fields,
        now=now,
        description_policy=policy,
        invite_crm_contacts=invite_crm_contacts,
        already_invited=invited,
        default_time_zone=default_time_zone,
    )


def _sets(override: OccurrenceOverride, field_: Field) -> bool:
    if field_ is Field.SUBJECT:
        return override.subject is not None
    if field_ is Field.DESCRIPTION:
        return override.description is not None
    if field_ is Field.LOCATION:
        return override.location is not None
    return override.start is not None or override.end is not None


def _listed(series: Activity, by_key: Mapping[OccurrenceKey, GraphEvent], moment: OccurrenceKey) -> bool:
    return occurrence_key(series, moment) in by_key


def _pairs(attendees: Iterable[Attendee]) -> set[tuple[str, str]]:
    return {(attendee.email, attendee.type.value) for attendee in attendees}


def _order(key: OccurrenceKey) -> str:
    return key.isoformat()
