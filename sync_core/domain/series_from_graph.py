"""Outlook → Activity for a series (pure): a series master and its ``/instances`` make one Activity.

Graph lists a series as its master (``type: seriesMaster``, with ``recurrence``) and, through
``GET /events/{master}/instances?startDateTime=…&endDateTime=…``, its occurrences in a window: unchanged
ones (``occurrence``) and changed ones (``exception``), each with ``originalStart`` where the pattern put it.
Cancelled occurrences are not listed at all (graph-facts.md): an occurrence the pattern puts in the window
that the listing lacks was cancelled. The master's ``cancelledOccurrences`` (``OID.{masterId}.{date}``),
when Graph returns it, names them too, and so does ``isCancelled`` on an instance (in an attendee's calendar,
an occurrence the organizer cancelled stays listed until the attendee removes it).

The reconciler should ``$select`` ``originalStart`` on ``/instances``; when an exception comes without it
(documented examples select it away), it is paired with the nearest occurrence nobody else accounts for,
and only when that is unambiguous.

What the listing cannot tell: an exception moved out of the window is missing from it like a cancelled
occurrence. ``margin`` narrows the part of the window where absence is read as cancellation: list with a
window ``margin`` wider on each side than the one you judge, and an exception moved by less than
``margin`` is never mistaken for a cancellation. The Activity keeps only the overrides and cancellations of
occurrences in the judged window (``series.within``): what lies beyond was not read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import Any

from sync_core.domain.graph_payloads import EventType, GraphEvent, parse_event
from sync_core.domain.mapping import activity_from_graph, graph_fields_present
from sync_core.domain.model import (
    Activity,
    AllDay,
    Attendee,
    Field,
    OccurrenceOverride,
    canonical_description,
)
from sync_core.domain.recurrence import (
    OccurrenceKey,
    Window,
    expand_series,
    occurrence_key,
    occurrence_times,
    series_zone,
)
from sync_core.domain.series import occurs_within, within
from sync_core.domain.timezones import zone
from sync_core.errors import InvalidRequestError

_INSTANCE_TYPES = frozenset({EventType.OCCURRENCE, EventType.EXCEPTION})


@dataclass(frozen=True)
class InstanceIndex:
    """A series' listed instances by original start; ``unmatched``: instances no occurrence accounts for
    (not an occurrence or exception, a second instance for one original start, an exception without
    ``originalStart`` that could not be paired)."""

    by_key: Mapping[OccurrenceKey, GraphEvent]
    unmatched: tuple[GraphEvent, ...] = ()


@dataclass(frozen=True)
class GraphSeries:
    """A series read from Outlook: the Activity, the instance id of each listed occurrence (for
    ``series_to_graph``), the ids of instances that fit no occurrence, and whether ``max_occurrences`` cut
    the expansion (then occurrences past the cut were not judged); ``window``: where its overrides and
    cancellations were judged (compare the other side's over the same span: ``series.within``)."""

    activity: Activity
    instance_ids: Mapping[OccurrenceKey, str] = field(default_factory=lambda: MappingProxyType({}))
    unmatched: tuple[str, ...] = ()
    truncated: bool = False
    window: Window | None = None


def series_from_graph(
    master: GraphEvent | Mapping[str, Any],
    instances: Iterable[GraphEvent | Mapping[str, Any]],
    *,
    window: Window,
    max_occurrences: int,
    margin: timedelta = timedelta(0),
    complete: bool = True,
) -> GraphSeries:
    """The Activity a series master and its instances listed in ``window`` hold.

    ``complete``: the listing holds every instance in the window (False when some items were unreadable or a
    page failed: then no occurrence is read as cancelled for being absent). Raises ``InvalidRequestError``
    when ``master`` is not a readable series master.
    """
    master_event = master if isinstance(master, GraphEvent) else parse_event(master)
    series = activity_from_graph(master_event)
    if series.recurrence is None:
        raise InvalidRequestError("not a series master", {"recurrence": "is required"})
    listed = [item if isinstance(item, GraphEvent) else parse_event(item) for item in instances]
    expansion = expand_series(series, window=window, max_occurrences=max_occurrences)
    index = index_instances(series, listed, expected=expansion.keys)
    judged = window.shrunk(margin)

    cancelled: set[OccurrenceKey] = set(_named_cancellations(series, master_event))
    # An attendee's copy keeps an occurrence the organizer cancelled, marked isCancelled, until it is removed.
    cancelled.update(key for key, instance in index.by_key.items() if instance.is_cancelled)
    if complete:
        cancelled.update(
            occurrence.original_start
            for occurrence in expansion.occurrences
            if occurrence.original_start not in index.by_key
            and occurs_within(series, occurrence.original_start, judged)
        )
    overrides = [
        override
        for key, instance in index.by_key.items()
        if instance.type is EventType.EXCEPTION
        and key not in cancelled
        and (override := exception_override(series, key, instance)) is not None
    ]
    activity = replace(series, occurrence_overrides=tuple(overrides), cancelled_occurrences=tuple(cancelled))
    return GraphSeries(
        activity=within(activity, judged),
        instance_ids=MappingProxyType({key: instance.id for key, instance in index.by_key.items()}),
        unmatched=tuple(instance.id for instance in index.unmatched),
        truncated=expansion.truncated,
        window=judged,
    )


def index_instances(
    series: Activity, instances: Iterable[GraphEvent], *, expected: Sequence[OccurrenceKey]
) -> InstanceIndex:
    """Key each listed instance by its original start (``expected``: the occurrences the listing's window
    should hold, used to read all-day original starts and to pair exceptions that lack one)."""
    expected_keys = set(expected)
    by_key: dict[OccurrenceKey, GraphEvent] = {}
    unmatched: list[GraphEvent] = []
    unkeyed: list[GraphEvent] = []
    for instance in instances:
        if instance.type not in _INSTANCE_TYPES:
            unmatched.append(instance)
            continue
        key = _listed_key(series, instance, expected_keys)
        if key is None:
            unkeyed.append(instance)
        elif key in by_key:
            unmatched.append(instance)
        else:
            by_key[key] = instance
    free = [key for key in expected if key not in by_key]
    for instance in unkeyed:
        key = _nearest(series, instance, free)
        if key is None:
            unmatched.append(instance)
        else:
            by_key[key] = instance
            free.remove(key)
    return InstanceIndex(MappingProxyType(by_key), tuple(unmatched))


def exception_override(
    series: Activity, key: OccurrenceKey, instance: GraphEvent
) -> OccurrenceOverride | None:
    """What the exception ``instance`` changes against the series, or None when it changes nothing we sync.
    Properties the payload does not carry are taken as unchanged."""
    try:
        seen = activity_from_graph(instance)
    except InvalidRequestError:
        return None
    present = graph_fields_present(instance)
    changes: dict[str, Any] = {}
    if Field.START_END in present and seen.is_all_day == series.is_all_day:
        expected = occurrence_times(series, key)
        moved = (seen.when.start, seen.when.end)
        if moved != expected:
            changes["start"], changes["end"] = moved
    if Field.SUBJECT in present and seen.subject.strip() != series.subject.strip():
        changes["subject"] = seen.subject
    if Field.DESCRIPTION in present and canonical_description(seen.description) != canonical_description(
        series.description
    ):
        changes["description"] = seen.description or ""
    if Field.LOCATION in present and (seen.location or "") != (series.location or ""):
        changes["location"] = seen.location or ""
    if Field.ATTENDEES in present and _pairs(seen.attendees) != _pairs(series.attendees):
        changes["attendees"] = seen.attendees
    return OccurrenceOverride(original_start=key, **changes) if changes else None


# --- helpers ------------------------------------------------------------------------------------------------


def _listed_key(series: Activity, instance: GraphEvent, expected: set[OccurrenceKey]) -> OccurrenceKey | None:
    if instance.original_start is not None:
        key = occurrence_key(series, instance.original_start)
        if series.is_all_day and key not in expected:
            # Graph may give an all-day occurrence's originalStart as midnight UTC rather than in its zone.
            utc_day = instance.original_start.astimezone(UTC).date()
            return utc_day if utc_day in expected else key
        return key
    if instance.type is EventType.OCCURRENCE and instance.start is not None:
        return _start_key(series, instance)  # an unchanged occurrence is where the pattern put it
    return None


def _start_key(series: Activity, instance: GraphEvent) -> OccurrenceKey:
    assert instance.start is not None
    if series.is_all_day:
        return instance.start.date()  # all-day times are wall-clock midnights in whatever zone was asked for
    return instance.start.astimezone(UTC)


def _nearest(series: Activity, instance: GraphEvent, free: Sequence[OccurrenceKey]) -> OccurrenceKey | None:
    """The free occurrence nearest the exception's start, when exactly one is nearest."""
    if instance.start is None or not free:
        return None
    start = _start_key(series, instance)
    distances = sorted((_distance(start, key), index) for index, key in enumerate(free))
    if len(distances) > 1 and distances[0][0] == distances[1][0]:
        return None
    return free[distances[0][1]]


def _distance(one: OccurrenceKey, other: OccurrenceKey) -> timedelta:
    if isinstance(one, datetime) and isinstance(other, datetime):
        return abs(one - other)
    first = one.date() if isinstance(one, datetime) else one
    second = other.date() if isinstance(other, datetime) else other
    return abs(first - second)


def _named_cancellations(series: Activity, master: GraphEvent) -> list[OccurrenceKey]:
    """The master's ``cancelledOccurrences``: ``OID.{masterId}.{yyyy-mm-dd}``, the occurrence's local date."""
    names = master.raw.get("cancelledOccurrences")
    if not isinstance(names, list):
        return []
    keys: list[OccurrenceKey] = []
    for name in names:
        day = _oid_date(name)
        if day is None:
            continue
        when = series.when
        if isinstance(when, AllDay):
            keys.append(day)
            continue
        series_tz = zone(series_zone(series))
        local_start = when.start.astimezone(series_tz).time()
        keys.append(
            occurrence_key(series, datetime.combine(day, local_start).replace(tzinfo=series_tz, fold=0))
        )
    return keys


def _oid_date(name: object) -> date | None:
    if not isinstance(name, str):
        return None
    try:
        return date.fromisoformat(name.rsplit(".", 1)[-1])
    except ValueError:
        return None


def _pairs(attendees: tuple[Attendee, ...]) -> set[tuple[str, str]]:
    return {(attendee.email, attendee.type.value) for attendee in attendees}
