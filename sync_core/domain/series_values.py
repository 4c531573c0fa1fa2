"""The canonical values of a series' three fields, as ``hashing`` hashes them (pure).

- ``RECURRENCE``: the pattern with only the properties its type uses (``firstDayOfWeek`` only where it
  can move an occurrence: weekly with an interval above 1), days in week order, the range with only what
  its type uses, and the series' zone by its UTC offsets through the first year (so ``Europe/Vienna``
  written and ``W. Europe Standard Time`` read back is no change, as for ``START_END``).
- ``OCCURRENCE_OVERRIDES``: per original start, only what the override changes against the series (an
  override repeating the series' subject, or moving an occurrence to where it already is, changes nothing);
  overrides of cancelled occurrences do not count.
- ``CANCELLED_OCCURRENCES``: the original starts, sorted.

Original starts and moved times are UTC instants to the second for a timed series, dates for an all-day one.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sync_core.domain.graph_payloads import PatternType, RangeType
from sync_core.domain.model import Activity, Attendee, OccurrenceOverride, canonical_description
from sync_core.domain.recurrence import (
    DAYS_OF_WEEK,
    OccurrenceKey,
    occurrence_key,
    occurrence_times,
    series_zone,
)
from sync_core.domain.timezones import zone

JsonValue = None | bool | int | str | list["JsonValue"] | dict[str, "JsonValue"]

CANCELLED = "cancelled"  # an occurrence's state in ``occurrence_values`` when it is cancelled
_WITH_DAYS = frozenset({PatternType.WEEKLY, PatternType.RELATIVE_MONTHLY, PatternType.RELATIVE_YEARLY})
_WITH_INDEX = frozenset({PatternType.RELATIVE_MONTHLY, PatternType.RELATIVE_YEARLY})
_WITH_DAY_OF_MONTH = frozenset({PatternType.ABSOLUTE_MONTHLY, PatternType.ABSOLUTE_YEARLY})
_WITH_MONTH = frozenset({PatternType.ABSOLUTE_YEARLY, PatternType.RELATIVE_YEARLY})


def canonical_recurrence(activity: Activity) -> JsonValue:
    recurrence = activity.recurrence
    if recurrence is None:
        return None
    pattern, span = recurrence.pattern, recurrence.range
    kind = pattern.type
    canonical_pattern: dict[str, JsonValue] = {"type": kind.value, "interval": pattern.interval}
    if kind in _WITH_DAYS:
        canonical_pattern["daysOfWeek"] = [day for day in DAYS_OF_WEEK if day in pattern.days_of_week]
    if kind is PatternType.WEEKLY and pattern.interval > 1:
        canonical_pattern["firstDayOfWeek"] = pattern.first_day_of_week
    if kind in _WITH_INDEX:
        canonical_pattern["index"] = pattern.index
    if kind in _WITH_DAY_OF_MONTH:
        canonical_pattern["dayOfMonth"] = pattern.day_of_month
    if kind in _WITH_MONTH:
        canonical_pattern["month"] = pattern.month
    canonical_range: dict[str, JsonValue] = {
        "type": span.type.value,
        "startDate": span.start_date.isoformat(),
    }
    if span.type is RangeType.END_DATE:
        canonical_range["endDate"] = span.end_date.isoformat() if span.end_date else None
    if span.type is RangeType.NUMBERED:
        canonical_range["numberOfOccurrences"] = span.number_of_occurrences
    return {
        "pattern": canonical_pattern,
        "range": canonical_range,
        "zoneOffsets": _zone_offsets(series_zone(activity), span.start_date),
    }


def canonical_overrides(activity: Activity) -> JsonValue:
    if activity.recurrence is None:
        return []
    cancelled = {_key_text(activity, moment) for moment in activity.cancelled_occurrences}
    entries: list[JsonValue] = []
    for override in activity.occurrence_overrides:
        key = _key_text(activity, override.original_start)
        changes = _changes(activity, override) if key not in cancelled else {}
        if changes:
            entries.append([key, changes])
    return sorted(entries, key=lambda entry: str(entry[0]) if isinstance(entry, list) else "")


def canonical_cancellations(activity: Activity) -> JsonValue:
    if activity.recurrence is None:
        return []
    return [key for key in sorted({_key_text(activity, moment) for moment in activity.cancelled_occurrences})]


def occurrence_values(activity: Activity) -> dict[str, JsonValue]:
    """Each touched occurrence's state by its key (as ``canonical_overrides`` writes keys): ``"cancelled"``,
    or what its override changes; an occurrence the series holds as the pattern puts it is absent. The
    per-occurrence merge compares these (a cancellation and an override of one occurrence are one state)."""
    if activity.recurrence is None:
        return {}
    states: dict[str, JsonValue] = {}
    for override in activity.occurrence_overrides:
        changes = _changes(activity, override)
        if changes:
            states[_key_text(activity, override.original_start)] = changes
    for moment in activity.cancelled_occurrences:
        states[_key_text(activity, moment)] = CANCELLED
    return states


def occurrence_entries(activity: Activity) -> dict[str, OccurrenceOverride | datetime | date]:
    """The entries behind ``occurrence_values``, by the same keys: the override, or the cancelled moment."""
    states = occurrence_values(activity)
    entries: dict[str, OccurrenceOverride | datetime | date] = {}
    for override in activity.occurrence_overrides:
        key = _key_text(activity, override.original_start)
        if key in states and states[key] != CANCELLED:
            entries[key] = override
    for moment in activity.cancelled_occurrences:
        entries[_key_text(activity, moment)] = moment
    return entries


def _changes(series: Activity, override: OccurrenceOverride) -> dict[str, JsonValue]:
    changes: dict[str, JsonValue] = {}
    if override.subject is not None and override.subject.strip() != series.subject.strip():
        changes["subject"] = override.subject.strip()
    description = canonical_description(override.description)
    if override.description is not None and description != canonical_description(series.description):
        changes["description"] = description
    if override.location is not None and override.location.strip() != (series.location or "").strip():
        changes["location"] = override.location.strip()
    if override.start is not None or override.end is not None:
        try:
            expected = occurrence_times(series, occurrence_key(series, override.original_start))
        except ValueError:
            expected = (override.original_start, override.original_start)  # a key of the wrong kind
        start = override.start if override.start is not None else expected[0]
        end = override.end if override.end is not None else expected[1]
        if (_moment_text(start), _moment_text(end)) != tuple(_moment_text(moment) for moment in expected):
            changes["start"], changes["end"] = _moment_text(start), _moment_text(end)
    if override.attendees is not None and _pairs(override.attendees) != _pairs(series.attendees):
        changes["attendees"] = [list(pair) for pair in _pairs(override.attendees)]
    return changes


def _key_text(series: Activity, moment: datetime | date) -> str:
    try:
        key: OccurrenceKey = occurrence_key(series, moment)
    except ValueError:
        key = moment  # a date keying a timed series: kept apart, it matches no occurrence
    return _moment_text(key)


def _moment_text(moment: datetime | date) -> str:
    if isinstance(moment, datetime):
        return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.isoformat()


def _pairs(attendees: tuple[Attendee, ...]) -> list[tuple[str, str]]:
    return sorted({(attendee.email, attendee.type.value) for attendee in attendees})


def _zone_offsets(zone_name: str, start: date) -> list[JsonValue]:
    """The zone's UTC offsets (minutes) at noon on four days a quarter apart from the series' start."""
    series_zone = zone(zone_name)
    offsets: list[JsonValue] = []
    for quarter in range(4):
        noon = datetime.combine(start + timedelta(days=91 * quarter), time(12), tzinfo=series_zone)
        offset = noon.utcoffset()
        offsets.append(0 if offset is None else int(offset.total_seconds() // 60))
    return offsets
