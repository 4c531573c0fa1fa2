"""Pure expansion of Graph recurrence (patternedRecurrence) into occurrence dates and instants.

Pattern types (recurrencePattern): ``daily``, ``weekly``, ``absoluteMonthly``, ``relativeMonthly``,
``absoluteYearly``, ``relativeYearly``. Range types (recurrenceRange): ``endDate``, ``noEnd``, ``numbered``.
Dates are local dates in the recurrence time zone; an occurrence keeps the series' local start time, so a
weekly 09:00 meeting stays at 09:00 across a DST change (its UTC instant moves).

Outlook's rules kept here: weeks start on ``firstDayOfWeek`` (default sunday) and an ``interval`` of weeks is
counted from the week holding ``range.startDate``; a day of month past the month's end falls on its last day;
``relativeMonthly``/``relativeYearly`` with several days pick the ``index``-th matching day of the month (so
``first`` of Monday..Friday is the first weekday); ``numbered`` counts every occurrence from the start date.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from devkit.graph_emulator import timezones

PATTERN_TYPES = ("daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly")
RANGE_TYPES = ("endDate", "noEnd", "numbered")
DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
INDEXES = ("first", "second", "third", "fourth", "last")
NO_DATE = "0001-01-01"
# Guards against patterns that can never produce a date (e.g. 30 February is clamped, so none today).
_MAX_EMPTY_PERIODS = 10_000


class RecurrenceError(ValueError):
    """The recurrence JSON is not a valid Graph patternedRecurrence."""


@dataclass(frozen=True)
class Pattern:
    type: str
    interval: int
    days_of_week: tuple[int, ...] = ()
    day_of_month: int = 0
    month: int = 0
    index: str = "first"
    first_day_of_week: int = 6  # sunday


@dataclass(frozen=True)
class Range:
    type: str
    start_date: dt.date
    end_date: dt.date | None = None
    number_of_occurrences: int = 0
    time_zone: str | None = None


@dataclass(frozen=True)
class Recurrence:
    pattern: Pattern
    range: Range

    @classmethod
    def parse(cls, data: Any) -> Recurrence:
        if not isinstance(data, Mapping):
            raise RecurrenceError("recurrence must be an object with pattern and range")
        return cls(_parse_pattern(data.get("pattern")), _parse_range(data.get("range")))

    def to_graph(self, default_time_zone: str) -> dict[str, Any]:
        """The normalized form Graph returns (every property present, lower-case day names)."""
        pattern = self.pattern
        range_ = self.range
        return {
            "pattern": {
                "type": pattern.type,
                "interval": pattern.interval,
                "month": pattern.month,
                "dayOfMonth": pattern.day_of_month,
                "daysOfWeek": [DAY_NAMES[day] for day in pattern.days_of_week],
                "firstDayOfWeek": DAY_NAMES[pattern.first_day_of_week],
                "index": pattern.index,
            },
            "range": {
                "type": range_.type,
                "startDate": range_.start_date.isoformat(),
                "endDate": range_.end_date.isoformat() if range_.end_date else NO_DATE,
                "recurrenceTimeZone": range_.time_zone or default_time_zone,
                "numberOfOccurrences": range_.number_of_occurrences,
            },
        }


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RecurrenceError(f"{name} must be an integer from {low} to {high}")
    return value


def _day(value: Any) -> int:
    if not isinstance(value, str) or value.lower() not in DAY_NAMES:
        raise RecurrenceError(f"unknown day of week: {value!r}")
    return DAY_NAMES.index(value.lower())


def _parse_pattern(data: Any) -> Pattern:
    if not isinstance(data, Mapping):
        raise RecurrenceError("recurrence.pattern is required")
    kind = data.get("type")
    if kind not in PATTERN_TYPES:
        raise RecurrenceError(f"recurrence.pattern.type must be one of {', '.join(PATTERN_TYPES)}")
    interval = _int(data.get("interval", 1), "pattern.interval", 1, 999)
    raw_days = data.get("daysOfWeek") or []
    if not isinstance(raw_days, list):
        raise RecurrenceError("pattern.daysOfWeek must be an array")
    days = tuple(sorted({_day(day) for day in raw_days}))
    first_day = _day(data.get("firstDayOfWeek") or "sunday")
    index = str(data.get("index") or "first").lower()
    if index not in INDEXES:
        raise RecurrenceError(f"pattern.index must be one of {', '.join(INDEXES)}")
    month, day_of_month = 0, 0
    if kind in ("weekly", "relativeMonthly", "relativeYearly") and not days:
        raise RecurrenceError(f"pattern.daysOfWeek is required for a {kind} pattern")
    if kind in ("absoluteMonthly", "absoluteYearly"):
        day_of_month = _int(data.get("dayOfMonth"), "pattern.dayOfMonth", 1, 31)
    if kind in ("absoluteYearly", "relativeYearly"):
        month = _int(data.get("month"), "pattern.month", 1, 12)
    if kind in ("daily", "absoluteMonthly", "absoluteYearly"):
        days = ()
    if kind not in ("relativeMonthly", "relativeYearly"):
        index = "first"
    return Pattern(kind, interval, days, day_of_month, month, index, first_day)


def _date(value: Any, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as exc:
        raise RecurrenceError(f"{name} must be a date (yyyy-mm-dd)") from exc


def _parse_range(data: Any) -> Range:
    if not isinstance(data, Mapping):
        raise RecurrenceError("recurrence.range is required")
    kind = data.get("type")
    if kind not in RANGE_TYPES:
        raise RecurrenceError(f"recurrence.range.type must be one of {', '.join(RANGE_TYPES)}")
    start = _date(data.get("startDate"), "range.startDate")
    time_zone = data.get("recurrenceTimeZone") or None
    if time_zone is not None:
        if not isinstance(time_zone, str):
            raise RecurrenceError("range.recurrenceTimeZone must be a string")
        timezones.resolve(time_zone)
    if kind == "endDate":
        end = _date(data.get("endDate"), "range.endDate")
        if end < start:
            raise RecurrenceError("range.endDate must not be before range.startDate")
        return Range(kind, start, end, 0, time_zone)
    if kind == "numbered":
        count = _int(data.get("numberOfOccurrences"), "range.numberOfOccurrences", 1, 999)
        return Range(kind, start, None, count, time_zone)
    return Range(kind, start, None, 0, time_zone)


# --- expansion --------------------------------------------------------------------------------------------


def _clamped(year: int, month: int, day: int) -> dt.date:
    return dt.date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _add_months(year: int, month: int, count: int) -> tuple[int, int]:
    total = year * 12 + (month - 1) + count
    return total // 12, total % 12 + 1


def _relative_day(year: int, month: int, days: tuple[int, ...], index: str) -> dt.date:
    last = calendar.monthrange(year, month)[1]
    matches = [
        dt.date(year, month, day) for day in range(1, last + 1) if dt.date(year, month, day).weekday() in days
    ]
    return matches[-1] if index == "last" else matches[INDEXES.index(index)]


def _candidates(pattern: Pattern, start: dt.date) -> Iterator[dt.date]:
    """Dates that fit the pattern, ascending, from the period that holds ``start`` (some may be earlier)."""
    step = pattern.interval
    if pattern.type == "daily":
        day = start
        while True:
            yield day
            day += dt.timedelta(days=step)
    elif pattern.type == "weekly":
        week = start - dt.timedelta(days=(start.weekday() - pattern.first_day_of_week) % 7)
        order = sorted(pattern.days_of_week, key=lambda d: (d - pattern.first_day_of_week) % 7)
        while True:
            for weekday in order:
                yield week + dt.timedelta(days=(weekday - pattern.first_day_of_week) % 7)
            week += dt.timedelta(weeks=step)
    elif pattern.type in ("absoluteMonthly", "relativeMonthly"):
        count = 0
        while True:
            year, month = _add_months(start.year, start.month, count)
            if pattern.type == "absoluteMonthly":
                yield _clamped(year, month, pattern.day_of_month)
            else:
                yield _relative_day(year, month, pattern.days_of_week, pattern.index)
            count += step
    else:
        year = start.year
        while True:
            if pattern.type == "absoluteYearly":
                yield _clamped(year, pattern.month, pattern.day_of_month)
            else:
                yield _relative_day(year, pattern.month, pattern.days_of_week, pattern.index)
            year += step


def occurrence_dates(recurrence: Recurrence, *, until: dt.date | None = None) -> Iterator[dt.date]:
    """Every occurrence date of the series in order, stopping at the range's end or after ``until``."""
    range_ = recurrence.range
    produced = 0
    skipped = 0
    for day in _candidates(recurrence.pattern, range_.start_date):
        if day < range_.start_date:
            skipped += 1
            if skipped > _MAX_EMPTY_PERIODS:
                return
            continue
        if range_.type == "endDate" and range_.end_date is not None and day > range_.end_date:
            return
        if until is not None and day > until:
            return
        yield day
        produced += 1
        if range_.type == "numbered" and produced >= range_.number_of_occurrences:
            return


def occurrence_starts(
    recurrence: Recurrence, *, start_time: dt.time, zone: dt.tzinfo, until: dt.datetime | None = None
) -> Iterator[dt.datetime]:
    """UTC start instants: each occurrence date at the series' local ``start_time`` in ``zone``."""
    until_date = until.astimezone(zone).date() + dt.timedelta(days=1) if until is not None else None
    for day in occurrence_dates(recurrence, until=until_date):
        instant = timezones.to_utc(dt.datetime.combine(day, start_time), zone)
        if until is not None and instant > until:
            return
        yield instant
